"""The Dockerfile's shape, since no Docker engine runs here to build it: two stages on the same
slim Python base, a builder with the compilers fastecdsa needs, a runtime without them that
installs only the builder's wheels, the chart's command as ENTRYPOINT, and OCI labels.
"""

from __future__ import annotations

import re
import tomllib

import helm_python as helm
import pytest
import yaml
from packsupport import (
    CHART_DIR,
    DOCKERFILE,
    REPO,
    Stage,
    context_files,
    in_context,
    labels,
    parse,
    run_commands,
    stage_args,
)

# The builder's first wheel is the project's own (tests/packaging/test_wheel.py runs the
# builder's and the runtime's pip commands as this file writes them).
WHEEL_COMMAND = "pip wheel --no-deps --wheel-dir /wheels ."
BASE_IMAGE = "python:3.11-slim-bookworm"


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    _, parsed = parse(DOCKERFILE)
    return {stage.name: stage for stage in parsed}


@pytest.fixture(scope="module")
def project() -> dict[str, object]:
    data: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return data


def test_two_stages_on_the_same_slim_base(stages: dict[str, Stage]) -> None:
    assert list(stages) == ["builder", "runtime"]  # the last stage is what `docker build` outputs
    assert {s.base for s in stages.values()} == {BASE_IMAGE}


def _apt_installs(stage: Stage) -> set[str]:
    packages: set[str] = set()
    for command in run_commands(stage):
        if command.startswith("apt-get install"):
            packages |= {w for w in command.split()[2:] if not w.startswith("-")}
    return packages


def test_builder_has_the_compilers_and_the_runtime_does_not(stages: dict[str, Stage]) -> None:
    assert {"gcc", "libgmp-dev"} <= _apt_installs(stages["builder"])
    runtime = _apt_installs(stages["runtime"])
    assert runtime == {"libgmp10"}, runtime
    for stage in stages.values():  # apt lists never stay in a layer
        installs = [c for c in run_commands(stage) if c.startswith("apt-get install")]
        assert not installs or "rm -rf /var/lib/apt/lists/*" in run_commands(stage)


def test_builder_builds_the_project_wheel_then_every_dependency(stages: dict[str, Stage]) -> None:
    commands = run_commands(stages["builder"])
    assert WHEEL_COMMAND in commands
    assert commands.index(WHEEL_COMMAND) < commands.index(
        "pip wheel --wheel-dir /wheels /wheels/spegel_py-*.whl"
    )


def test_runtime_installs_only_the_builders_wheels(stages: dict[str, Stage]) -> None:
    runtime = stages["runtime"]
    assert not runtime.all("COPY") and not runtime.all("ADD"), "wheels must not become a layer"
    (install_run,) = [r for r in runtime.all("RUN") if "pip install" in r.value[0]]
    assert install_run.flags == ("--mount=type=bind,from=builder,source=/wheels,target=/wheels",)
    (install,) = [c for c in run_commands(runtime) if c.startswith("pip install")]
    assert install.split() == ["pip", "install", "--no-index", "--find-links", "/wheels", "spegel-py"]


def test_entrypoint_is_the_console_script_the_chart_runs(
    stages: dict[str, Stage], project: dict[str, object]
) -> None:
    runtime = stages["runtime"]
    (entrypoint,) = runtime.all("ENTRYPOINT")
    assert entrypoint.json and entrypoint.value == ("spegel-py",)  # exec form: no shell in between
    assert "spegel-py" in project["scripts"]  # type: ignore[operator]  # a TOML table
    assert not runtime.all("USER"), "root is needed for containerd's socket (see the Dockerfile)"
    # The chart never overrides the entrypoint; its args start with a subcommand.
    with helm.Chart.load(CHART_DIR) as chart:
        manifests = chart.render({"bootstrap": {"kind": "kubernetes"}}, name="r", namespace="n")
    subcommands = set()
    for path, text in manifests.items():
        docs = [] if path.endswith("NOTES.txt") else [d for d in yaml.safe_load_all(text) if d]
        pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("DaemonSet", "Job")]
        for container in [c for pod in pods for c in (*pod.get("initContainers", []), *pod["containers"])]:
            assert "command" not in container
            subcommands.add(container["args"][0])
    assert subcommands == {"configuration", "registry", "cleanup", "cleanup-wait"}


def test_oci_labels(stages: dict[str, Stage], project: dict[str, object]) -> None:
    runtime = stages["runtime"]
    found = labels(runtime)
    keys = {
        f"org.opencontainers.image.{k}" for k in ("source", "title", "description", "licenses", "version")
    }
    assert keys <= set(found), sorted(keys - set(found))
    assert found["org.opencontainers.image.title"] == project["name"]
    assert found["org.opencontainers.image.licenses"] == project["license"]["text"]  # type: ignore[index]
    assert found["org.opencontainers.image.description"] == project["description"]
    assert found["org.opencontainers.image.version"] == "${VERSION}"
    assert stage_args(runtime)["VERSION"] == project["version"]


def test_build_context_holds_what_the_wheel_needs_and_nothing_heavy(stages: dict[str, Stage]) -> None:
    sources = [w for copy in stages["builder"].all("COPY") for w in copy.value[:-1]]
    assert set(sources) == {"pyproject.toml", "README.md", "spegel_py"}
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources  # setuptools reads it while building the wheel
    files = context_files(sources)
    assert "spegel_py/cli.py" in files and "pyproject.toml" in files
    assert not [f for f in files if re.search(r"__pycache__|\.pyc$", f)]
    for path in (".venv/bin/python", "tests/conftest.py", ".git/HEAD", "bench/README.md", "Dockerfile"):
        assert not in_context(path), path


def test_dockerignore_matcher_follows_docker_rules() -> None:
    """The matcher the wheel test relies on: last match wins, directories match their subtree."""
    assert in_context("spegel_py/oci/digest.py")
    assert not in_context("spegel_py/oci/__pycache__/digest.cpython-311.pyc")
    assert not in_context("spegel_py/x.pyc")
    assert not in_context("helm/spegel-py/values.yaml")
