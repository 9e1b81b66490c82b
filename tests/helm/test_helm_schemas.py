"""Every rendered variant of the chart checked as an API server would check it: strictly (an
unknown or misplaced field is an error, not silently dropped) against the OpenAPI schemas of each
Kubernetes minor from 1.29 to 1.34, with ``kubernetes-validate`` (PyPI), which ships those schemas
offline.

Custom resources (ServiceMonitor, GrafanaDashboard, VerticalPodAutoscaler) have no schema there;
test_helm_chart.py checks their metadata. A case that needs a newer Kubernetes (``helmcases.
MINIMUM_KUBERNETES``) is checked from that version on.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest
from helmcases import CASES, MINIMUM_KUBERNETES
from helmsupport import CUSTOM_KINDS, Rendered, full_name
from kubernetes_validate.utils import all_versions
from packaging.version import Version

KUBERNETES_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33", "1.34")


@pytest.fixture(scope="module", autouse=True)
def _parsed_schemas_kept() -> Iterator[None]:
    """kubernetes-validate parses a schema file (and the multi-MiB definitions of its version) on
    every call; keep each parsed file for this module, or the ~300 objects x 6 versions take
    minutes on a loaded machine. The package's own validation code still does the checking."""
    with pytest.MonkeyPatch.context() as patch:
        parsed = cache(kubernetes_validate.utils.schema_contents)
        patch.setattr(kubernetes_validate.utils, "schema_contents", parsed)
        yield


def _problems(objects: list[dict[str, Any]], version: str, where: str) -> list[str]:
    problems = []
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        name = f"{where}: {obj['kind']} {obj['metadata']['name']}"
        try:
            checked = kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name}: {exc.message} at {'.'.join(map(str, exc.absolute_path))}")
        else:
            # The package falls back to an older schema for a version it lacks: not good enough.
            assert checked == version, f"{name}: checked against {checked}, not {version}"
    return problems


def test_the_package_ships_every_version() -> None:
    shipped = {".".join(v.split(".")[:2]) for v in all_versions()}
    assert set(KUBERNETES_VERSIONS) <= shipped, sorted(shipped, key=Version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_variant_validates_strictly(version: str, renders: dict[str, Rendered]) -> None:
    problems = []
    for case, rendered in renders.items():
        minimum = MINIMUM_KUBERNETES.get(case)
        if minimum is None or Version(version) >= Version(minimum[0]):
            problems += _problems(rendered.objects, version, case)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_strict_validation_rejects_a_misspelt_field(version: str, renders: dict[str, Rendered]) -> None:
    daemonset = copy.deepcopy(renders["defaults"].named("DaemonSet", full_name()))
    pod = daemonset["spec"]["template"]["spec"]
    pod["containers"][0]["readinessProbe"]["periodSecond"] = 10
    assert len(_problems([daemonset], version, "misspelt")) == 1


def test_minimum_versions_name_existing_cases() -> None:
    assert set(MINIMUM_KUBERNETES) <= set(CASES)
    for version, _ in MINIMUM_KUBERNETES.values():
        assert version in KUBERNETES_VERSIONS


def test_prefer_same_node_is_unknown_to_the_oldest_version(renders: dict[str, Rendered]) -> None:
    """The reason for its MINIMUM_KUBERNETES entry, where the schemas can show it."""
    problems = _problems(renders["traffic-prefer-same-node"].objects, KUBERNETES_VERSIONS[0], "oldest")
    assert len(problems) == 1 and "trafficDistribution" in problems[0], problems
