"""helm/spegel-py rendered by the real Helm SDK with its defaults and with every toggle.

Each case of :data:`CASES` is rendered and linted; every object must deserialize into the
kubernetes client's model *losslessly* (a misspelt field is silently dropped by the model, so the
round trip catches it), every flag the chart passes must exist in the real CLI's ``--help``, and
objects that belong to a toggle appear exactly when it is on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import kubernetes.client
import pytest
from helmsupport import (
    CHART_DIR,
    CUSTOM_KINDS,
    NAMESPACE,
    Rendered,
    containers,
    flag_names,
    full_name,
    help_env_vars,
    help_flags,
    model_name,
    render,
    to_model,
)

from spegel_py.cli import build_parser
from spegel_py.settings import RegistrySettings, load

Values = dict[str, Any]

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
    },
    "service": {"registry": {"annotations": {"r": "s"}}, "metrics": {"annotations": {"m": "n"}}},
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
    "all-on": ALL_ON,
}


@pytest.fixture(scope="module")
def api() -> Iterator[kubernetes.client.ApiClient]:
    client = kubernetes.client.ApiClient()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def renders(chart: helm.Chart) -> dict[str, Rendered]:
    return {case: render(chart, values) for case, values in CASES.items()}


@pytest.mark.parametrize("case", CASES)
def test_lint_reports_no_errors(case: str) -> None:
    report = helm.lint(CHART_DIR, CASES[case], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("case", CASES)
def test_every_object_deserializes_losslessly(
    case: str, renders: dict[str, Rendered], api: kubernetes.client.ApiClient
) -> None:
    rendered = renders[case]
    assert rendered.objects, "nothing rendered"
    for obj in rendered.objects:
        where = f"{obj['kind']} {obj['metadata']['name']}"
        assert obj["metadata"]["namespace"] == CASES[case].get("namespaceOverride", NAMESPACE), where
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            # No model exists for a custom resource: its metadata still must be valid ObjectMeta.
            meta = to_model(api, obj["metadata"], "V1ObjectMeta")
            assert api.sanitize_for_serialization(meta) == obj["metadata"], where
            assert isinstance(obj["spec"], dict), where
            continue
        model = to_model(api, obj, model_name(obj))
        assert (model.api_version, model.kind) == (obj["apiVersion"], obj["kind"]), where
        assert api.sanitize_for_serialization(model) == obj, f"{where}: fields lost in the model round trip"


@pytest.mark.process  # runs the real `spegel-py <subcommand> --help`
@pytest.mark.parametrize("case", CASES)
def test_every_flag_exists_in_the_cli(case: str, renders: dict[str, Rendered]) -> None:
    """Each container's flags, against the real ``spegel-py <subcommand> --help`` and parser."""
    problems: list[str] = []
    for workload, container in containers(renders[case]):
        where = f"{workload['metadata']['name']}/{container['name']}"
        assert "command" not in container, f"{where}: the image's ENTRYPOINT (spegel-py) must be used"
        subcommand, *args = container["args"]
        try:
            unknown = sorted(set(flag_names(args)) - help_flags(subcommand))
        except AssertionError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if unknown:
            problems.append(f"{where}: spegel-py {subcommand} has no {unknown}")
            continue
        # Every env var the chart sets is read by the CLI, or expanded by the kubelet in the args.
        expanded_vars = {v for a in args for v in re.findall(r"\$\((\w+)\)", a)}
        env = {e["name"] for e in container.get("env", [])}
        unread = sorted(env - expanded_vars - help_env_vars(subcommand))
        if unread:
            problems.append(f"{where}: spegel-py {subcommand} reads no env var {unread}")
        # The values must parse too (booleans, durations, addresses): the real parser, offline.
        expanded = [a.replace("$(NODE_IP)", "10.0.0.1") for a in args]
        try:
            parsed = vars(build_parser().parse_args([subcommand, *expanded]))
        except SystemExit:
            problems.append(f"{where}: spegel-py {subcommand} rejects {args}")
            continue
        if subcommand == "registry":
            load(RegistrySettings, parsed, {})
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES)
def test_rbac_exists_only_with_the_kubernetes_bootstrap(case: str, renders: dict[str, Rendered]) -> None:
    rendered = renders[case]
    kubernetes_bootstrap = CASES[case].get("bootstrap", {}).get("kind") == "kubernetes"
    rbac = {k for k in rendered.kinds() if k in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")}
    assert rbac == ({"Role", "RoleBinding"} if kubernetes_bootstrap else set())
    assert len(rendered.of_kind("ServiceAccount")) == 1
    main = rendered.named("DaemonSet", CASES[case].get("fullnameOverride") or full_name())
    pod = main["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is kubernetes_bootstrap
    if kubernetes_bootstrap:
        (role,) = rendered.of_kind("Role")
        assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
        (binding,) = rendered.of_kind("RoleBinding")
        assert binding["subjects"][0]["name"] == pod["serviceAccountName"]


def _enabled(values: Values, dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


@pytest.mark.parametrize("case", CASES)
def test_toggled_objects_appear_exactly_when_on(case: str, renders: dict[str, Rendered]) -> None:
    values, kinds = CASES[case], renders[case].kinds()
    assert kinds["ServiceMonitor"] == (1 if _enabled(values, "serviceMonitor.enabled") is True else 0)
    assert kinds["NetworkPolicy"] == (1 if _enabled(values, "networkPolicy.enabled") is True else 0)
    dashboard = _enabled(values, "grafanaDashboard.enabled") is True
    operator = _enabled(values, "grafanaDashboard.mode") == "GrafanaOperator"
    assert kinds["GrafanaDashboard"] == (1 if dashboard and operator else 0)
    assert kinds["ConfigMap"] == (1 if dashboard and not operator else 0)
    mirror_add = _enabled(values, "spegel.containerdMirrorAdd") is not False
    # The hook: one cleanup DaemonSet + headless Service + cleanup-wait Job, beside the main objects.
    assert kinds["Job"] == (1 if mirror_add else 0)
    assert kinds["DaemonSet"] == (2 if mirror_add else 1)
    assert kinds["Service"] == (4 if mirror_add else 3)


def test_dashboard_ships_the_json_file_unchanged(renders: dict[str, Rendered]) -> None:
    expected = json.loads((CHART_DIR / "dashboards" / "spegel-py.json").read_text())
    (config_map,) = renders["dashboard-sidecar"].of_kind("ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert [json.loads(v) for v in config_map["data"].values()] == [expected]
    (dashboard,) = renders["dashboard-operator"].of_kind("GrafanaDashboard")
    assert json.loads(dashboard["spec"]["json"]) == expected
    assert dashboard["spec"]["instanceSelector"] == {"matchLabels": {"dashboards": "grafana"}}
    assert dashboard["spec"]["folder"] == "spegel"
