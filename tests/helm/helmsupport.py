"""Render helm/spegel-py with the real Helm SDK (``helm-python-sdk``: Helm v4's Go code behind a C
ABI, no ``helm`` binary) and look at the result as Kubernetes objects.

The chart is rendered offline: no cluster, ``lookup`` returns nothing. Objects are plain dicts as
the YAML says; :func:`to_model` turns one into the kubernetes client's model (the same code path
the client uses for an API server's answer) so that a field the API does not know is caught.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes.client
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "spegel-py"
RELEASE = "demo"
NAMESPACE = "spegel"

# Custom resources the chart can render: the kubernetes client has no models for them.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("grafana.integreatly.org/v1beta1", "GrafanaDashboard"),
    ("autoscaling.k8s.io/v1", "VerticalPodAutoscaler"),
}

Obj = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    """Every object of one render, in template order, plus the raw manifests by template path."""

    objects: list[Obj]
    manifests: dict[str, str]

    def kinds(self) -> Counter[str]:
        return Counter(o["kind"] for o in self.objects)

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind} {name}: found {len(found)} in {sorted(self.kinds())}"
        return found[0]


def render(chart: helm.Chart, values: dict[str, Any] | None = None, *, name: str = RELEASE) -> Rendered:
    manifests = chart.render(values or {}, name=name, namespace=NAMESPACE, is_install=True)
    objects: list[Obj] = []
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(manifests[path]) if doc]
    return Rendered(objects, manifests)


def full_name(suffix: str = "") -> str:
    return f"{RELEASE}-spegel-py" + (f"-{suffix}" if suffix else "")


def model_name(obj: Obj) -> str:
    """``apps/v1`` + ``DaemonSet`` -> ``V1DaemonSet`` (the client's naming of built-in kinds)."""
    version = obj["apiVersion"].rsplit("/", 1)[-1]
    return version[:1].upper() + version[1:] + obj["kind"]


def to_model(api: kubernetes.client.ApiClient, data: Any, type_name: str) -> Any:
    """Deserialize ``data`` into the client's model ``type_name``, as for an API response."""
    text = json.dumps(data)
    if "response_text" in inspect.signature(api.deserialize).parameters:
        return api.deserialize(text, type_name, "application/json")

    class _Response:  # kubernetes < 35 reads the body from a response object
        data = text

    return api.deserialize(_Response(), type_name)


def pod_specs(rendered: Rendered) -> Iterator[tuple[Obj, Obj]]:
    """``(workload, pod spec)`` of every DaemonSet, Job and Pod."""
    for obj in rendered.objects:
        if obj["kind"] in ("DaemonSet", "Job"):
            yield obj, obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield obj, obj["spec"]


def containers(rendered: Rendered) -> Iterator[tuple[Obj, Obj]]:
    """``(workload, container)`` of every container and init container."""
    for workload, spec in pod_specs(rendered):
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield workload, container


_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def flag_names(args: list[str]) -> list[str]:
    """The ``--flag`` of every ``--flag=value`` / ``--flag`` argument."""
    return [arg.split("=", 1)[0] for arg in args if arg.startswith("--")]


def spegel_command() -> list[str]:
    script = Path(sys.executable).with_name("spegel-py")
    assert script.exists(), f"console script missing: {script} (pip install -e .)"
    return [str(script)]


@cache
def help_text(subcommand: str) -> str:
    """What the real ``spegel-py <subcommand> --help`` prints."""
    result = subprocess.run(
        [*spegel_command(), subcommand, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"spegel-py {subcommand} --help failed: {result.stderr.strip()[-500:]}"
    return result.stdout


def help_flags(subcommand: str) -> frozenset[str]:
    """Flags ``spegel-py <subcommand> --help`` documents."""
    return frozenset(_FLAG.findall(help_text(subcommand)))


def help_env_vars(subcommand: str) -> frozenset[str]:
    """Environment variables ``spegel-py <subcommand> --help`` documents (``[env NAME]``)."""
    return frozenset(re.findall(r"\[env\s+(\w+)\]", help_text(subcommand)))
