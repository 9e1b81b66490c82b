"""What the chart promises the node, with concrete values: the DaemonSet's containers, mounts and
security, the Services containerd and the peers use, the uninstall hook, and that every selector
selects what it should (a selector typo renders fine and breaks silently in a cluster).
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
from helmsupport import NAMESPACE, Rendered, full_name, pod_specs, render, spegel_command

from spegel_py.app import BASIC_AUTH_DIR
from spegel_py.cli import build_parser
from spegel_py.settings import RegistrySettings, load

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def defaults(chart: helm.Chart) -> Rendered:
    return render(chart)


def _main_pod(rendered: Rendered) -> Obj:
    spec: Obj = rendered.named("DaemonSet", full_name())["spec"]["template"]["spec"]
    return spec


def _container(pod: Obj, name: str) -> Obj:
    (found,) = [c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == name]
    return found


def _arg(container: Obj, flag: str) -> list[str]:
    return [a.split("=", 1)[1] for a in container["args"] if a.split("=", 1)[0] == flag]


def _mounts(container: Obj) -> dict[str, Obj]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def _host_paths(pod: Obj) -> dict[str, Obj]:
    return {v["name"]: v["hostPath"] for v in pod["volumes"] if "hostPath" in v}


def test_init_container_configures_containerd_for_the_node_local_mirror(defaults: Rendered) -> None:
    pod = _main_pod(defaults)
    init = _container(pod, "configuration")
    assert init["args"][0] == "configuration"
    # hostPort first (no kube-proxy hop), then the NodePort; $(NODE_IP) is expanded by the kubelet.
    assert _arg(init, "--mirror-targets") == ["http://$(NODE_IP):30021", "http://$(NODE_IP):30020"]
    assert {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}} in init["env"]
    assert _arg(init, "--containerd-registry-config-path") == ["/etc/containerd/certs.d"]
    assert _arg(init, "--mirrored-registries")[0] == "https://docker.io"
    certs_d = _mounts(init)["/etc/containerd/certs.d"]
    assert (
        not certs_d.get("readOnly") and _host_paths(pod)[certs_d["name"]]["path"] == "/etc/containerd/certs.d"
    )
    # config.toml is read through its directory, read-only, at the path the flag names.
    (config,) = _arg(init, "--containerd-config")
    config_mount = _mounts(init)[config.rsplit("/", 1)[0]]
    assert config_mount["readOnly"] is True
    assert _host_paths(pod)[config_mount["name"]]["path"] == "/etc/containerd"


def test_registry_container_serves_from_containerd_with_probes_and_identity(defaults: Rendered) -> None:
    pod = _main_pod(defaults)
    registry = _container(pod, "registry")
    assert registry["args"][0] == "registry"
    assert _arg(registry, "--registry-addr") == [":5000"]
    assert _arg(registry, "--router-addr") == [":5001"]
    assert _arg(registry, "--metrics-addr") == [":9090"]
    assert _arg(registry, "--bootstrap-kind") == ["dns"]
    assert _arg(registry, "--dns-bootstrap-domain") == [
        f"{full_name('bootstrap')}.{NAMESPACE}.svc.cluster.local."
    ]
    ports = {p["name"]: p for p in registry["ports"]}
    assert ports["registry"] == {
        "name": "registry",
        "containerPort": 5000,
        "hostPort": 30021,
        "protocol": "TCP",
    }
    assert ports["router"]["containerPort"] == 5001 and ports["metrics"]["containerPort"] == 9090
    assert registry["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "registry"}
    assert registry["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "registry"}
    assert registry["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "registry"}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in registry["env"]}
    assert env == {
        "POD_IP": "status.podIP",
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
    }
    assert registry["resources"]["limits"]["memory"] == "256Mi"
    assert "cpu" not in registry["resources"]["limits"]


# spegel.<value> -> (registry flag, a value other than the default, the flag's value for it)
TUNING = {
    "relayBuffers": ("--relay-buffers", 2_000_000, "2000000"),  # an integer, not 2e+06
    "relayBufferSize": ("--relay-buffer-size", "1MiB", "1MiB"),
    "relayHashThreads": ("--relay-hash-threads", 0, "0"),
    "reprovideInterval": ("--reprovide-interval", "18m", "18m"),
    "mirrorResolveRetries": ("--mirror-resolve-retries", 10_000_000, "10000000"),  # not 1e+07
    "maxConnections": ("--max-connections", 100_000, "100000"),
    "headerTimeout": ("--header-timeout", "2s", "2s"),
    "keepaliveTimeout": ("--keepalive-timeout", "1m", "1m"),
    "writeTimeout": ("--write-timeout", "45s", "45s"),
    "mirrorMinThroughput": ("--mirror-min-throughput", "1MiB", "1MiB"),
    "mirrorThroughputWindow": ("--mirror-throughput-window", "2s", "2s"),
    "mirrorDeadlineAllowance": ("--mirror-deadline-allowance", "1m", "1m"),
    "serveMinThroughput": ("--serve-min-throughput", "0", "0"),
    "serveInProgress": ("--serve-in-progress", False, "false"),
    "coordinatePulls": ("--coordinate-pulls", False, "false"),
    "multiPeerFetch": ("--multi-peer-fetch", False, "false"),
}


@pytest.mark.parametrize("value", TUNING)
def test_tuning_values_reach_their_registry_flags(chart: helm.Chart, value: str) -> None:
    flag, setting, arg = TUNING[value]
    registry = _container(_main_pod(render(chart, {"spegel": {value: setting}})), "registry")
    assert _arg(registry, flag) == [arg]


def test_tuning_defaults_are_the_binarys(defaults: Rendered) -> None:
    """The chart passes relay and reprovide flags explicitly; their defaults must still be the
    CLI's, so that the operator's guide (written for the binary) holds for the chart too."""
    registry = _container(_main_pod(defaults), "registry")
    args = vars(build_parser().parse_args(registry["args"]))
    from_chart, binary = load(RegistrySettings, args, {}), load(RegistrySettings, {}, {})
    fields = (
        "relay_buffers",
        "relay_buffer_size",
        "relay_hash_threads",
        "reprovide_interval",
        "max_connections",
        "header_timeout",
        "keepalive_timeout",
        "write_timeout",
        "mirror_min_throughput",
        "mirror_throughput_window",
        "mirror_deadline_allowance",
        "serve_min_throughput",
    )
    assert [getattr(from_chart, f) for f in fields] == [getattr(binary, f) for f in fields]


# flag -> (host path type, read-only in the registry container)
HOST_MOUNTS = {
    "--containerd-sock": ("Socket", False),
    "--containerd-content-path": ("Directory", True),
    "--data-dir": ("DirectoryOrCreate", False),
}


@pytest.mark.parametrize("flag", HOST_MOUNTS)
def test_registry_host_paths_match_its_flags(defaults: Rendered, flag: str) -> None:
    pod = _main_pod(defaults)
    registry = _container(pod, "registry")
    (path,) = _arg(registry, flag)
    mount = _mounts(registry)[path]
    host_path = _host_paths(pod)[mount["name"]]
    kind, read_only = HOST_MOUNTS[flag]
    assert host_path == {"path": path, "type": kind}
    assert bool(mount.get("readOnly")) is read_only


def test_containers_drop_every_capability_and_write_nothing_outside_mounts(defaults: Rendered) -> None:
    for workload, pod in pod_specs(defaults):
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            context = container["securityContext"]
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["privileged"] is False, where
            # Root only where host files owned by root are touched; cleanup-wait only probes.
            assert context["runAsUser"] == (65534 if container["name"] == "cleanup-wait" else 0), where


def test_router_psk_secret_is_mounted_read_only_at_the_flags_path(chart: helm.Chart) -> None:
    pod = _main_pod(render(chart, {"spegel": {"routerPskSecretName": "spegel-psk"}}))
    registry = _container(pod, "registry")
    (path,) = _arg(registry, "--router-psk-file")
    directory, key = path.rsplit("/", 1)
    mount = _mounts(registry)[directory]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"] == {
        "secretName": "spegel-psk",
        "defaultMode": 0o400,
        "items": [{"key": "psk", "path": key}],
    }
    # Only the registry container sees the key.
    others = [c for c in [*pod["initContainers"], *pod["containers"]] if c is not registry]
    assert all(m["name"] != mount["name"] for c in others for m in c.get("volumeMounts", []))
    assert "--router-psk-file" not in str(_main_pod(render(chart)))


def test_basic_auth_secret_is_mounted_read_only_where_the_binary_reads_it(chart: helm.Chart) -> None:
    rendered = render(
        chart,
        {
            "basicAuthSecretName": "spegel-basic-auth",
            "extraInitContainers": [{"name": "node-prep", "image": "registry.example/node-prep:1"}],
        },
    )
    main = rendered.named("DaemonSet", full_name())
    pod = main["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "spegel-basic-auth"]
    assert volume["secret"] == {"secretName": "spegel-basic-auth", "defaultMode": 0o400}
    # registry checks and forwards the credentials; configuration writes them into hosts.toml.
    mounted = {
        c["name"]: m
        for c in [*pod["initContainers"], *pod["containers"]]
        for m in c.get("volumeMounts", [])
        if m["name"] == volume["name"]
    }
    expected = {"name": volume["name"], "mountPath": BASIC_AUTH_DIR, "readOnly": True}
    assert mounted == {"configuration": expected, "registry": expected}
    # The uninstall hook's workloads never see the Secret.
    for workload, spec in pod_specs(rendered):
        if workload is not main:
            assert "spegel-basic-auth" not in str(spec), workload["metadata"]["name"]
    assert BASIC_AUTH_DIR not in str(_main_pod(render(chart)))


def test_registry_service_spreads_to_other_nodes_only_when_asked(chart: helm.Chart) -> None:
    rendered = render(chart, {"service": {"registry": {"internalTrafficLocal": False}}})
    spec = rendered.named("Service", full_name())["spec"]
    assert spec["trafficDistribution"] == "PreferSameNode"
    assert "internalTrafficPolicy" not in spec and "externalTrafficPolicy" not in spec


def test_extra_init_containers_run_before_configuration(chart: helm.Chart) -> None:
    extra = {"name": "node-prep", "image": "busybox", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}
    volume = {"name": "x", "emptyDir": {}}
    pod = _main_pod(render(chart, {"extraInitContainers": [extra], "extraVolumes": [volume]}))
    assert [c["name"] for c in pod["initContainers"]] == ["node-prep", "configuration"]
    assert pod["initContainers"][0] == extra and pod["volumes"][-1] == volume


def test_registry_service_is_a_node_local_node_port(defaults: Rendered) -> None:
    service = defaults.named("Service", full_name())
    spec = service["spec"]
    assert spec["type"] == "NodePort"
    assert spec["internalTrafficPolicy"] == "Local" and spec["externalTrafficPolicy"] == "Local"
    assert spec["ports"] == [
        {"name": "registry", "port": 5000, "targetPort": "registry", "nodePort": 30020, "protocol": "TCP"}
    ]


def test_bootstrap_service_is_headless_and_lists_unready_pods(defaults: Rendered) -> None:
    spec = defaults.named("Service", full_name("bootstrap"))["spec"]
    assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True
    assert [p["port"] for p in spec["ports"]] == [5001]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize(
    ("service", "workload"),
    [("", ""), ("bootstrap", ""), ("metrics", ""), ("cleanup", "cleanup")],
)
def test_service_selectors_pick_exactly_their_pods(defaults: Rendered, service: str, workload: str) -> None:
    selector = defaults.named("Service", full_name(service))["spec"]["selector"]
    for daemonset in defaults.of_kind("DaemonSet"):
        labels = daemonset["spec"]["template"]["metadata"]["labels"]
        assert _selects(selector, labels) is (daemonset["metadata"]["name"] == full_name(workload))
        # A DaemonSet's own selector must match its pods, and only its own.
        for other in defaults.of_kind("DaemonSet"):
            other_labels = other["spec"]["template"]["metadata"]["labels"]
            same = other is daemonset
            assert _selects(daemonset["spec"]["selector"]["matchLabels"], other_labels) is same


def test_service_monitor_and_network_policy_select_the_right_objects(chart: helm.Chart) -> None:
    rendered = render(chart, {"serviceMonitor": {"enabled": True}, "networkPolicy": {"enabled": True}})
    (monitor,) = rendered.of_kind("ServiceMonitor")
    services = [
        s
        for s in rendered.of_kind("Service")
        if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in services] == [full_name("metrics")]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (policy,) = rendered.of_kind("NetworkPolicy")
    main_labels = rendered.named("DaemonSet", full_name())["spec"]["template"]["metadata"]["labels"]
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], main_labels)
    named_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])}
    assert {"registry", "router", "metrics"} <= named_ports


def test_kubernetes_bootstrap_selector_selects_this_daemonset(chart: helm.Chart) -> None:
    rendered = render(chart, {"bootstrap": {"kind": "kubernetes"}})
    registry = _container(_main_pod(rendered), "registry")
    (selector,) = [a.split("=", 1)[1] for a in registry["args"] if a.startswith("--kubernetes-")]
    wanted = dict(term.split("=", 1) for term in selector.split(","))
    main_labels = rendered.named("DaemonSet", full_name())["spec"]["template"]["metadata"]["labels"]
    cleanup_labels = rendered.named("DaemonSet", full_name("cleanup"))["spec"]["template"]["metadata"][
        "labels"
    ]
    assert _selects(wanted, main_labels) and not _selects(wanted, cleanup_labels)


def test_cleanup_hook_waits_for_every_node_after_delete(defaults: Rendered) -> None:
    hook_objects = [o for o in defaults.objects if "helm.sh/hook" in o["metadata"].get("annotations", {})]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in hook_objects) == [
        ("DaemonSet", full_name("cleanup")),
        ("Job", full_name("cleanup-wait")),
        ("Service", full_name("cleanup")),
    ]
    weights = {}
    for obj in hook_objects:
        annotations = obj["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "post-delete"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
        weights[obj["kind"]] = int(annotations["helm.sh/hook-weight"])
    assert weights["Job"] > weights["DaemonSet"]  # the waiter starts after the cleaners
    cleanup_pod = defaults.named("DaemonSet", full_name("cleanup"))["spec"]["template"]["spec"]
    (cleanup,) = cleanup_pod["containers"]
    assert cleanup["args"][0] == "cleanup" and _arg(cleanup, "--addr") == [":8080"]
    assert cleanup["readinessProbe"]["httpGet"]["path"] == "/healthz"
    service = defaults.named("Service", full_name("cleanup"))["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    job_pod = defaults.named("Job", full_name("cleanup-wait"))["spec"]["template"]["spec"]
    (wait,) = job_pod["containers"]
    assert wait["args"][0] == "cleanup-wait"
    assert _arg(wait, "--probe-endpoint") == [f"{full_name('cleanup')}.{NAMESPACE}.svc.cluster.local.:8080"]
    # The release's ServiceAccount is gone when post-delete hooks run: the hook must not need it.
    for pod in (cleanup_pod, job_pod):
        assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("domain", ["cluster.local", "cluster.local.", "corp.example."])
def test_cluster_domain_gets_exactly_one_trailing_dot(chart: helm.Chart, domain: str) -> None:
    rendered = render(chart, {"clusterDomain": domain})
    registry = _container(_main_pod(rendered), "registry")
    (bootstrap,) = _arg(registry, "--dns-bootstrap-domain")
    assert bootstrap.endswith(".svc." + domain.rstrip(".") + ".") and not bootstrap.endswith("..")


def test_long_release_names_keep_suffixed_names_within_dns_label_limits(chart: helm.Chart) -> None:
    rendered = render(chart, {}, name="r" * 53)  # Helm's longest release name
    names = [o["metadata"]["name"] for o in rendered.objects]
    assert max(len(n) for n in names) <= 63, names
    assert len(set(names)) >= 5


@pytest.mark.process  # runs the real spegel-py configuration
def test_init_container_args_configure_a_real_certs_d(defaults: Rendered, tmp_path: Path) -> None:
    """The init container's exact args, run through the real CLI against a scratch certs.d (only
    the two host paths are moved and $(NODE_IP) expanded, as the kubelet would)."""
    init = _container(_main_pod(defaults), "configuration")
    certs_d = tmp_path / "certs.d"
    config = tmp_path / "containerd" / "config.toml"
    config.parent.mkdir()
    config.write_text(
        "version = 2\n"
        '[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd]\n  discard_unpacked_layers = false\n'
    )
    moved = {"--containerd-registry-config-path": str(certs_d), "--containerd-config": str(config)}
    args = []
    for arg in init["args"]:
        flag = arg.split("=", 1)[0]
        args.append(f"{flag}={moved[flag]}" if flag in moved else arg.replace("$(NODE_IP)", "127.0.0.1"))
    result = subprocess.run(
        [*spegel_command(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    registries = _arg(init, "--mirrored-registries")
    written = sorted(p.parent.name for p in certs_d.glob("*/hosts.toml"))
    assert written == sorted(r.split("://", 1)[1] for r in registries)
    hosts = tomllib.loads((certs_d / "docker.io" / "hosts.toml").read_text())
    assert hosts["server"] == "https://registry-1.docker.io"
    assert list(hosts["host"]) == ["http://127.0.0.1:30021", "http://127.0.0.1:30020"]
    for host in hosts["host"].values():
        assert host["capabilities"] == ["pull", "resolve"] and host["dial_timeout"] == "200ms"


def test_pods_get_no_service_link_variables(defaults: Rendered) -> None:
    """spegel-py reads settings from env vars (ADDR, PERIOD, REGISTRY_ADDR, ...); Kubernetes'
    Service-link variables must not be able to collide with them."""
    for workload, pod in pod_specs(defaults):
        assert pod["enableServiceLinks"] is False, workload["metadata"]["name"]
