"""The values variants every chart test renders: the defaults, each toggle on its own, and all
of them together (:data:`CASES`). Kept out of the test modules so that the rendering, schema and
policy tests share one table; :func:`uncovered_toggles` proves the table flips every toggle that
values.yaml and values.schema.json define.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Values = dict[str, Any]

VPA: Values = {
    "enabled": True,
    "recommenders": [{"name": "custom"}],
    "controlledResources": ["memory"],
    "controlledValues": "RequestsOnly",
    "maxAllowed": {"memory": "512Mi"},
    "minAllowed": {"memory": "128Mi"},
    "updatePolicy": {"minReplicas": 1, "updateMode": "Initial"},
}

EXTRA_VOLUMES: list[Values] = [
    {"name": "host-etc", "hostPath": {"path": "/etc/node-prep", "type": "DirectoryOrCreate"}}
]

# A well-behaved extra init container: the chart renders it verbatim, so the policy scan judges it.
EXTRA_INIT_CONTAINERS: list[Values] = [
    {
        "name": "node-prep",
        "image": "registry.example/node-prep@sha256:" + "cd" * 32,
        "args": ["--once"],
        "securityContext": {
            "runAsUser": 0,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        "volumeMounts": [{"name": "host-etc", "mountPath": "/host/etc/node-prep"}],
    }
]

ALL_ON: Values = {
    "serviceMonitor": {
        "enabled": True,
        "labels": {"release": "prom"},
        "relabelings": [{"action": "keep"}],
        "metricRelabelings": [{"action": "drop", "regex": "go_.*"}],
    },
    "grafanaDashboard": {"enabled": True, "labels": {"team": "infra"}, "annotations": {"folder": "Mirrors"}},
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"namespaceSelector": {}}],
        "extraIngress": [{"ports": [{"port": 9999}]}],
        "extraEgress": [{"ports": [{"port": 443}]}],
    },
    "bootstrap": {"kind": "kubernetes"},
    "commonLabels": {"cost-center": "platform"},
    "podLabels": {"tier": "node"},
    "podAnnotations": {"a": "b"},
    "imagePullSecrets": [{"name": "pull"}],
    "serviceAccount": {"annotations": {"x": "y"}},
    "daemonset": {
        "annotations": {"d": "e"},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "20%"}},
    },
    "podSecurityContext": {"fsGroup": 0},
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "spegel", "operator": "NotIn", "values": ["off"]}]}
                ]
            }
        }
    },
    "spegel": {
        "registryFilters": ["^docker.io/library/.*:latest$", "# not a comment"],
        "additionalMirrorTargets": ["https://cache.example:5000"],
        "debugWebEnabled": True,
        "relayBuffers": 16,
        "relayBufferSize": "1MiB",
        "relayHashThreads": 2,
        "reprovideInterval": "5m",
        "routerPskSecretName": "spegel-psk",
        "maxConnections": 4096,
        "headerTimeout": "5s",
        "keepaliveTimeout": "1m",
        "writeTimeout": "45s",
        "mirrorMinThroughput": "1MiB",
        "mirrorThroughputWindow": "2s",
        "mirrorDeadlineAllowance": "30s",
        "serveMinThroughput": "128KiB",
    },
    "basicAuthSecretName": "spegel-basic-auth",
    "service": {"registry": {"annotations": {"r": "s"}}, "metrics": {"annotations": {"m": "n"}}},
    "verticalPodAutoscaler": VPA,
    "extraVolumes": EXTRA_VOLUMES,
    "extraInitContainers": EXTRA_INIT_CONTAINERS,
}

# id -> values. Every toggle and every bootstrap kind, alone and all together.
CASES: dict[str, Values] = {
    "defaults": {},
    "bootstrap-dns-custom-domain": {
        "bootstrap": {"kind": "dns", "dns": {"domain": "peers.example.internal."}}
    },
    "bootstrap-kubernetes": {"bootstrap": {"kind": "kubernetes"}},
    "bootstrap-kubernetes-selector": {
        "bootstrap": {"kind": "kubernetes", "kubernetes": {"labelSelector": "app=spegel-py"}}
    },
    "bootstrap-static": {
        "bootstrap": {
            "kind": "static",
            "static": {
                "peers": ["/ip4/10.0.0.5/tcp/5001/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"]
            },
        }
    },
    "bootstrap-http": {
        "bootstrap": {"kind": "http", "http": {"addr": ":5002", "url": "http://10.0.0.5:5002/id"}}
    },
    "service-monitor": {"serviceMonitor": {"enabled": True}},
    "dashboard-sidecar": {"grafanaDashboard": {"enabled": True}},
    "dashboard-operator": {
        "grafanaDashboard": {
            "enabled": True,
            "mode": "GrafanaOperator",
            "grafanaOperator": {"matchLabels": {"dashboards": "grafana"}, "folder": "spegel"},
        }
    },
    "network-policy": {"networkPolicy": {"enabled": True}},
    "network-policy-kubernetes": {"networkPolicy": {"enabled": True}, "bootstrap": {"kind": "kubernetes"}},
    "network-policy-http": {
        "networkPolicy": {"enabled": True},
        "bootstrap": {"kind": "http", "http": {"url": "http://10.0.0.5:5002/id"}},
    },
    "no-mirror-add": {"spegel": {"containerdMirrorAdd": False}},
    "no-host-port": {"service": {"registry": {"hostPortEnabled": False}}},
    "no-liveness": {"probes": {"liveness": {"enabled": False}}},
    "no-containerd-config-check": {"spegel": {"containerdConfigPath": ""}},
    "all-registries": {"spegel": {"mirroredRegistries": []}},
    "image-digest": {"image": {"digest": "sha256:" + "ab" * 32, "pullPolicy": "Always"}},
    "names-overridden": {
        "fullnameOverride": "mirror",
        "nameOverride": "p2p",
        "namespaceOverride": "kube-system",
        "serviceAccount": {"name": "mirror-sa"},
    },
    "no-priority-class": {"priorityClassName": ""},
    "relay-hashing-on-the-loop": {"spegel": {"relayHashThreads": 0, "relayBufferSize": "64KiB"}},
    "router-psk": {"spegel": {"routerPskSecretName": "spegel-psk"}},
    "server-bounds": {
        "spegel": {
            "maxConnections": 64,
            "headerTimeout": "2s",
            "keepaliveTimeout": "5s",
            "writeTimeout": "10s",
            "mirrorMinThroughput": "64KiB",
            "mirrorThroughputWindow": "10s",
            "mirrorDeadlineAllowance": "1m",
            "serveMinThroughput": "1MB",
        }
    },
    # A throughput window of 0 is valid only with the relay floor off.
    "floors-off": {
        "spegel": {
            "mirrorMinThroughput": "0",
            "mirrorThroughputWindow": "0",
            "mirrorDeadlineAllowance": "0",
            "serveMinThroughput": "0",
        }
    },
    "swarm-off": {"spegel": {"serveInProgress": False, "coordinatePulls": False, "multiPeerFetch": False}},
    "basic-auth": {"basicAuthSecretName": "spegel-basic-auth"},
    "basic-auth-without-mirror-add": {
        "basicAuthSecretName": "spegel-basic-auth",
        "spegel": {"containerdMirrorAdd": False},
    },
    "traffic-prefer-same-node": {"service": {"registry": {"internalTrafficLocal": False}}},
    "vertical-pod-autoscaler": {"verticalPodAutoscaler": {"enabled": True}},
    "vertical-pod-autoscaler-tuned": {"verticalPodAutoscaler": VPA},
    "extra-init-containers-and-volumes": {
        "extraVolumes": EXTRA_VOLUMES,
        "extraInitContainers": EXTRA_INIT_CONTAINERS,
    },
    "extra-init-containers-without-mirror-add": {
        "extraVolumes": EXTRA_VOLUMES,
        "extraInitContainers": EXTRA_INIT_CONTAINERS,
        "spegel": {"containerdMirrorAdd": False},
    },
    "image-tag": {"image": {"tag": "0.1.0-rc1"}},
    "resolve-everything": {
        "spegel": {
            "resolveTags": False,
            "resolveLatestTag": True,
            "prependExisting": True,
            "pageCacheEviction": False,
        }
    },
    "dashboard-operator-same-namespace": {
        "grafanaDashboard": {
            "enabled": True,
            "mode": "GrafanaOperator",
            "grafanaOperator": {"allowCrossNamespaceImport": False},
        }
    },
    "all-on": ALL_ON,
}

# Cases that need a newer Kubernetes than the oldest one the chart is checked against: case -> the
# first minor version it is valid for (and why).
MINIMUM_KUBERNETES: dict[str, tuple[str, str]] = {
    "traffic-prefer-same-node": (
        "1.34",
        "Service.spec.trafficDistribution is unknown before 1.30, and its value PreferSameNode needs "
        "the PreferSameTrafficDistribution feature gate, on by default from 1.34",
    ),
}


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, node


def _get(values: Values, dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# Schema definitions of Kubernetes structures the chart passes on verbatim (securityContext,
# resources, ...): their fields are the API server's, not the chart's toggles.
_VERBATIM = {"#/definitions/object", "#/definitions/objectList", "#/definitions/stringMap"}


def _passed_through(schema: Values, dotted: str) -> bool:
    node = schema
    for part in dotted.split("."):
        if node.get("$ref") in _VERBATIM:
            return True
        node = node.get("properties", {}).get(part, {})
    return False


# Values that select a template branch: each of their schema's choices must be rendered.
BRANCHES = ("bootstrap.kind", "grafanaDashboard.mode")


def uncovered_toggles(defaults: Values, schema: Values) -> list[str]:
    """Toggles no case flips: every boolean set to its opposite, every value that is empty by
    default (an optional list, map or string) set to something, every branch choice rendered."""
    missing = []
    for path, default in _leaves(defaults):
        if _passed_through(schema, path):
            continue
        settings = [_get(values, path) for values in CASES.values()]
        if isinstance(default, bool):
            if (not default) not in settings:
                missing.append(f"{path}: never {not default}")
        elif default in ("", [], {}) and not any(s not in (None, "", [], {}) for s in settings):
            missing.append(f"{path}: never set")
    for path in BRANCHES:
        node = schema
        for part in path.split("."):
            node = node["properties"][part]
        rendered = {_get(values, path) or _get(defaults, path) for values in CASES.values()}
        missing += [f"{path}: never {choice!r}" for choice in node["enum"] if choice not in rendered]
    return missing
