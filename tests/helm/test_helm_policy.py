"""The policy scan a cluster's admission or CI would run: checkov (PyPI) over every rendered
variant of :data:`helmcases.CASES`, in one run per session.

The chart passes every check except the deliberate exceptions skipped in helm/checkov.yaml, and
those are exactly the ones justified in the chart's README: a check that starts failing, an
exception that is no longer needed and a README that drifts from the skip list each fail a test.

checkov pins much of its environment (packaging<24, importlib-metadata<8, aiohttp<3.15, exact
boto3): installed beside the test extra it would downgrade pytest, kubernetes and packaging and
cap the aiohttp spegel-py runs on. So it lives in a virtualenv of its own, ``.venv/tools/checkov``,
that ``make venv`` builds from pyproject.toml's ``policy-scan`` dependency group, and is run as a
program (offline: ``--skip-download``).

Each case is written with a namespace of its own: checkov's graph checks (a NetworkPolicy
selecting pods, a RoleBinding naming a Role) would otherwise connect objects across cases. An
object already scanned, byte for byte, in an earlier case is left out (most cases change one
object), which halves the scan; cases with objects that graph checks connect keep all of theirs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.require import missing
from helmsupport import CHART_DIR, CUSTOM_KINDS, Rendered, full_name

CONFIG = CHART_DIR.parent / "checkov.yaml"
README = CHART_DIR / "README.md"
# A deliberately bad object scanned beside the cases: proves that checks run and can fail.
CANARY = "canary-privileged"
CANARY_CHECK = "CKV_K8S_16"  # "Container should not be privileged"


def _checkov() -> str:
    for candidate in (
        os.environ.get("CHECKOV", ""),
        str(Path(sys.prefix) / "tools" / "checkov" / "bin" / "checkov"),
        shutil.which("checkov") or "",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    missing("checkov not found (run `make venv`: it builds .venv/tools/checkov)")
    raise AssertionError("unreachable")


# Kinds checkov's graph checks connect to other objects of their namespace.
_CONNECTED = {"NetworkPolicy", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def _new_objects(objects: list[dict[str, Any]], seen: set[str]) -> list[dict[str, Any]]:
    """The objects of one case that no earlier case had (all of them when a graph may connect
    them), custom resources left out: checkov has no checks for them."""
    objects = [obj for obj in objects if (obj["apiVersion"], obj["kind"]) not in CUSTOM_KINDS]
    keys = [json.dumps(obj, sort_keys=True) for obj in objects]
    connected = any(obj["kind"] in _CONNECTED for obj in objects)
    new = [obj for obj, key in zip(objects, keys, strict=True) if connected or key not in seen]
    seen.update(keys)
    return new


def _namespaced(objects: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    moved = copy.deepcopy(objects)
    for obj in moved:
        obj["metadata"]["namespace"] = namespace
    return moved


def _canary(renders: dict[str, Rendered]) -> list[dict[str, Any]]:
    objects = _namespaced(renders["defaults"].objects, CANARY)
    (daemonset,) = [o for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["name"] == full_name()]
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    return objects


@pytest.fixture(scope="module")
def failures(renders: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """check id -> ``case: Kind/name`` of every failed check, one checkov run over every case."""
    checkov = _checkov()
    directory = tmp_path_factory.mktemp("rendered")
    seen: set[str] = set()
    written = {CANARY}
    for case, rendered in renders.items():
        if new := _new_objects(rendered.objects, seen):
            (directory / f"{case}.yaml").write_text(yaml.safe_dump_all(_namespaced(new, case)))
            written.add(case)
    (directory / f"{CANARY}.yaml").write_text(yaml.safe_dump_all(_canary(renders)))
    options = ["--framework", "kubernetes", "--skip-download", "--output", "json"]
    result = subprocess.run(
        [checkov, "--directory", str(directory), *options],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    scanned = {Path(c["file_path"]).stem for c in report["results"]["passed_checks"]}
    assert scanned == written, "checkov skipped a file"
    found: dict[str, set[str]] = defaultdict(set)
    for check in report["results"]["failed_checks"]:
        kind, namespace, name = check["resource"].split(".")[:3]
        found[check["check_id"]].add(f"{namespace}: {kind}/{name}")
    return found


def _skipped() -> list[str]:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["framework"] == ["kubernetes"] and config["skip-download"] is True
    skipped: list[str] = config["skip-check"]
    return skipped


def _justified() -> list[str]:
    """Check ids of the README's exception table (rows ``| CKV_... | ...``)."""
    return re.findall(r"^\| `?(CKV2?_K8S_\d+)`? \|", README.read_text(), re.MULTILINE)


# checkov takes ~12 s of CPU for every case together; the timeout covers a machine shared by others.
@pytest.mark.timeout(900)
@pytest.mark.process  # runs checkov
def test_only_the_listed_exceptions_fail(failures: dict[str, set[str]]) -> None:
    unexpected = {
        check: sorted(where)
        for check, where in failures.items()
        if check not in _skipped() and where != {f"{CANARY}: DaemonSet/{full_name()}"}
    }
    assert not unexpected, json.dumps(unexpected, indent=1)


@pytest.mark.timeout(900)
@pytest.mark.process  # runs checkov
def test_every_exception_is_still_needed(failures: dict[str, set[str]]) -> None:
    stale = [check for check in _skipped() if check not in failures]
    assert not stale, f"skipped in {CONFIG.name} but failing nowhere: {stale}"


@pytest.mark.timeout(900)
@pytest.mark.process  # runs checkov
def test_the_scan_can_fail(failures: dict[str, set[str]]) -> None:
    assert failures[CANARY_CHECK] == {f"{CANARY}: DaemonSet/{full_name()}"}


def test_readme_justifies_exactly_the_skipped_checks() -> None:
    skipped, justified = _skipped(), _justified()
    assert len(set(skipped)) == len(skipped) and len(set(justified)) == len(justified)
    assert sorted(justified) == sorted(skipped)
