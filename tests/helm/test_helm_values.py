"""values.yaml and values.schema.json: documented, strict, and neither allows what the chart
cannot render nor rejects what it can.

Every value carries a ``# --`` comment (helm-docs style, the chart's only reference for users; a
Kubernetes structure passed on whole, such as ``resources``, is documented once as a whole);
every value is read by some template (no dead knobs); the schema rejects unknown keys and values
the CLI would refuse later, on the node, where the failure is harder to see.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml
from helmsupport import CHART_DIR, NAMESPACE, RELEASE

from spegel_py.errors import ConfigurationError
from spegel_py.flagvalues import (
    parse_address,
    parse_buffer_size,
    parse_duration,
    parse_reprovide_interval,
    parse_size,
)
from spegel_py.oci.filters import parse_registry_hosts

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+):(?: |$)")


def _leaf_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def _documented_keys(text: str) -> dict[str, bool]:
    """Dotted path of every key in values.yaml -> whether a ``# --`` comment sits above it
    (directly, or as the first line of the comment block right above it)."""
    result: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        match = _KEY.match(line)
        if match is None:  # list items, blank lines and block scalars end a comment block
            if not stripped.startswith("- "):
                comment = []
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        result[".".join(k for _, k in stack)] = any(c.startswith("# --") for c in comment[:1])
        comment = []
    return result


def test_every_value_has_a_doc_comment() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    documented = _documented_keys(text)
    leaves = set(_leaf_paths(yaml.safe_load(text)))
    assert leaves <= set(documented), sorted(leaves - set(documented))
    # A Kubernetes structure passed on whole (resources, securityContext) is documented as one.
    missing = sorted(
        path
        for path in leaves
        if not any(documented.get(".".join(path.split(".")[:n])) for n in range(1, path.count(".") + 2))
    )
    assert not missing, f"values without a '# --' comment: {missing}"


def test_every_value_is_used_by_a_template() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    templates = "\n".join(p.read_text() for p in (CHART_DIR / "templates").iterdir())
    unused = []
    for path in _leaf_paths(values):
        # A value is used when its path is read, or when its parent object is passed on whole
        # (toYaml .Values.resources): walk up until something matches.
        parts = path.split(".")
        if not any(
            re.search(rf"\.Values\.{re.escape('.'.join(parts[:n]))}\b", templates)
            for n in range(len(parts), 0, -1)
        ):
            unused.append(path)
    assert not unused, f"values no template reads: {unused}"


def test_defaults_satisfy_the_schema(chart: helm.Chart) -> None:
    chart.validate_schema({})
    assert chart.schema is not None and chart.schema["additionalProperties"] is False


# Each must be rejected by the schema, so that install fails before anything reaches a node.
INVALID: dict[str, dict[str, Any]] = {
    "unknown-top-level-key": {"replicaCount": 3},
    "unknown-nested-key": {"spegel": {"mirrorResolveTimout": "20ms"}},
    "bad-bootstrap-kind": {"bootstrap": {"kind": "mdns"}},
    "static-without-peers": {"bootstrap": {"kind": "static"}},
    "http-without-url": {"bootstrap": {"kind": "http"}},
    "duration-without-unit": {"spegel": {"mirrorResolveTimeout": "20"}},
    "bad-log-level": {"spegel": {"logLevel": "TRACE"}},
    "port-out-of-range": {"service": {"registry": {"nodePort": 70000}}},
    "port-as-string": {"service": {"metrics": {"port": "9090"}}},
    "bad-pull-policy": {"image": {"pullPolicy": "Sometimes"}},
    "bad-digest": {"image": {"digest": "latest"}},
    "registry-without-scheme": {"spegel": {"mirroredRegistries": ["docker.io"]}},
    "relative-content-path": {"spegel": {"containerdContentPath": "var/lib/containerd"}},
    "bad-dashboard-mode": {"grafanaDashboard": {"mode": "Both"}},
    "toggle-not-boolean": {"serviceMonitor": {"enabled": "yes"}},
    "bad-cidr": {"networkPolicy": {"apiServerCIDRs": ["10.0.0.1"]}},
    "label-not-string": {"commonLabels": {"tier": 1}},
    "no-relay-buffers": {"spegel": {"relayBuffers": 0}},
    "negative-hash-threads": {"spegel": {"relayHashThreads": -1}},
    "hash-threads-not-integer": {"spegel": {"relayHashThreads": 1.5}},
    # Helm reads numbers as floats: 1048576 would reach the flag as 1.048576e+06.
    "buffer-size-as-number": {"spegel": {"relayBufferSize": 1048576}},
    "reprovide-without-unit": {"spegel": {"reprovideInterval": "900"}},
    "no-connections": {"spegel": {"maxConnections": 0}},
    "timeout-without-unit": {"spegel": {"headerTimeout": "10"}},
    "psk-secret-not-a-name": {"spegel": {"routerPskSecretName": "My_Secret"}},
    "basic-auth-secret-not-a-name": {"basicAuthSecretName": "basic auth"},
    # Helm reads numbers as floats: 262144 would reach the flag as 262144.0 or 1e+06.
    "throughput-as-number": {"spegel": {"mirrorMinThroughput": 262144}},
    "serve-throughput-as-number": {"spegel": {"serveMinThroughput": 262144}},
    "window-without-unit": {"spegel": {"mirrorThroughputWindow": "5"}},
    "allowance-without-unit": {"spegel": {"mirrorDeadlineAllowance": "10"}},
    "traffic-local-not-boolean": {"service": {"registry": {"internalTrafficLocal": "true"}}},
    "vpa-two-recommenders": {"verticalPodAutoscaler": {"recommenders": [{"name": "a"}, {"name": "b"}]}},
    # A bare `Off` in YAML is a boolean, which must not reach the VPA as `false`.
    "vpa-update-mode-boolean": {"verticalPodAutoscaler": {"updatePolicy": {"updateMode": False}}},
    "init-container-without-image": {"extraInitContainers": [{"name": "x"}]},
    "volume-without-name": {"extraVolumes": [{"emptyDir": {}}]},
}


@pytest.mark.parametrize("case", INVALID)
def test_schema_rejects_invalid_values(chart: helm.Chart, case: str) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(INVALID[case])
    with pytest.raises(helm.HelmError, match="schema"):
        chart.render(INVALID[case], name=RELEASE, namespace=NAMESPACE)


def test_chart_version_matches_the_package() -> None:
    import tomllib

    from spegel_py import __version__

    metadata = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    project = tomllib.loads((CHART_DIR.parents[1] / "pyproject.toml").read_text())["project"]
    assert metadata["appVersion"] == project["version"] == __version__


def _library_accepts(check: Callable[[str], object], value: str) -> bool:
    try:
        check(value)
    except (ValueError, ConfigurationError):
        return False
    return True


def _positive_duration(value: str) -> float:
    """What the CLI accepts for --header-timeout and its siblings: a duration above 0."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(value)
    return seconds


# value path -> (candidates, the code the value ends up in). The chart (its schema, or for ranges
# the schema cannot express, its templates) must accept exactly what that code accepts, or an
# install succeeds and the pod then fails on every node. (An empty registry entry, which the CLI
# skips, is refused by the schema on purpose: it is a typo.)
AGREEMENT: dict[str, tuple[list[str], Callable[[str], object]]] = {
    "spegel.mirroredRegistries": (
        [
            "https://docker.io",
            "http://127.0.0.1:5000",
            "https://ghcr.io/",
            "_default",
            "*",
            "docker.io",
            "https://docker.io/library",
            "ftp://docker.io",
            "https://user@docker.io",
            "https://x.io?q=1",
        ],
        lambda v: parse_registry_hosts([v]),
    ),
    "spegel.mirrorResolveTimeout": (
        ["20ms", "2s", "1m30s", "1.5s", ".5s", "0", "20", "ms", "-1s", "1d", "20 ms", "1µs"],
        parse_duration,
    ),
    "bootstrap.http.addr": ([":5002", "0.0.0.0:5002", "[::]:5002", "5002", "host:", "a b:1"], parse_address),
    "spegel.relayBufferSize": (
        ["768KiB", "64KiB", "65536", "65535", "1MiB", "1 MiB", "1m", "1GB", "66KB", "65KB", "64kib",
         "0768KiB", "63KiB", "0", "1Ki", "1.5MiB", "MiB", "-1MiB", "8 parsecs"],
        parse_buffer_size,
    ),
    **{
        f"spegel.{name}": (
            ["10s", "1m30s", "250ms", "0.5s", "1µs", "0", "0s", "0.0s", "0m0s", "10", "-1s"],
            _positive_duration,
        )
        # The relay floor is on by default, so its window must be above 0 too.
        for name in ("headerTimeout", "keepaliveTimeout", "writeTimeout", "mirrorThroughputWindow")
    },
    "spegel.mirrorDeadlineAllowance": (
        ["10s", "0", "0s", "1m30s", "250ms", "10", "-1s", "s"],
        parse_duration,
    ),
    **{
        f"spegel.{name}": (
            ["256KiB", "0", "1", "1MiB", "1 MiB", "1MB", "64k", "1.5MiB", "-1KiB", "1Ki", "KiB", "8 parsecs"],
            parse_size,
        )
        for name in ("mirrorMinThroughput", "serveMinThroughput")
    },
    "spegel.reprovideInterval": (
        ["15m", "1s", "250ms", "1m30s", "18m59s", "1139.5s", "0.3h", "0", "0s", "19m", "1140s", "1h",
         "15", "-1m"],
        parse_reprovide_interval,
    ),
}


@pytest.mark.parametrize("path", AGREEMENT)
def test_chart_accepts_exactly_what_the_cli_accepts(chart: helm.Chart, path: str) -> None:
    candidates, check = AGREEMENT[path]
    disagreements = []
    for candidate in candidates:
        value: Any = [candidate] if path.endswith("Registries") else candidate
        for key in reversed(path.split(".")):
            value = {key: value}
        try:
            chart.render(value, name=RELEASE, namespace=NAMESPACE)
            chart_ok = True
        except (helm.HelmValuesError, helm.HelmRenderError):
            chart_ok = False
        if chart_ok != _library_accepts(check, candidate):
            disagreements.append(
                f"{candidate!r}: chart {'accepts' if chart_ok else 'rejects'} it, CLI does not"
            )
    assert not disagreements, disagreements
