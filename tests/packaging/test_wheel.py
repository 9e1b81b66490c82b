"""The wheel the Dockerfile's builder stage builds, installed into a fresh virtualenv (its
dependencies from PyPI, as the builder fetches them), runs: ``spegel-py --help``, the chart's
subcommands, ``version``, and every module imports.

No Docker engine runs here. The wheel is built by the builder's own command from a copy of
exactly the files the build context holds (.dockerignore applied), so a file the image would miss
is missed here too. One virtualenv per session (installing libp2p's dependencies takes a while).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packsupport import REPO, context_files

pytestmark = pytest.mark.integration

# `pip wheel --no-deps --wheel-dir <dir> .`, the builder's command (test_dockerfile checks it).
BUILD_ARGS = ["wheel", "--no-deps", "--wheel-dir", "/wheels", "."]
CONTEXT_SOURCES = ["pyproject.toml", "README.md", "spegel_py"]
# What the chart runs (tests/packaging/test_dockerfile.py renders it to check the same set).
CHART_SUBCOMMANDS = ("registry", "configuration", "cleanup", "cleanup-wait")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    context: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            cwd=self.venv,  # not the repository: nothing may be imported from the source tree
        )


def _pip(python: Path, *args: str, cwd: Path, timeout: float) -> None:
    result = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, (
        f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("wheel")
    context = root / "context"
    for relative in context_files(CONTEXT_SOURCES):
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target)
    wheels = root / "wheels"
    build = [wheels.as_posix() if arg == "/wheels" else arg for arg in BUILD_ARGS]
    _pip(Path(sys.executable), *build, cwd=context, timeout=300)
    (wheel,) = wheels.glob("spegel_py-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    _pip(env_dir / "bin" / "python", "install", str(wheel), cwd=root, timeout=600)
    yield Installed(wheel, env_dir, context)
    shutil.rmtree(root, ignore_errors=True)


def test_entrypoint_help_lists_the_chart_subcommands(installed: Installed) -> None:
    result = installed.run(installed.venv / "bin" / "spegel-py", "--help")
    assert result.returncode == 0, result.stderr
    for subcommand in CHART_SUBCOMMANDS:
        assert subcommand in result.stdout, f"{subcommand} missing from spegel-py --help"


@pytest.mark.parametrize("subcommand", CHART_SUBCOMMANDS)
def test_subcommand_help_runs(installed: Installed, subcommand: str) -> None:
    result = installed.run(installed.venv / "bin" / "spegel-py", subcommand, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: spegel-py {subcommand}")


def test_version_is_the_projects(installed: Installed) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    result = installed.run(installed.venv / "bin" / "spegel-py", "version")
    assert (result.returncode, result.stdout.strip()) == (0, project["version"]), result.stderr
    assert installed.wheel.name.startswith(f"spegel_py-{project['version']}-py3-none-any")


def test_every_module_imports_from_the_installed_wheel(installed: Installed) -> None:
    """Catches a runtime dependency missing from pyproject.toml (the dev venv has it anyway)."""
    script = (
        "import importlib, pkgutil, spegel_py\n"
        "assert '/site-packages/' in spegel_py.__file__, spegel_py.__file__\n"
        "names = [m.name for m in pkgutil.walk_packages(spegel_py.__path__, 'spegel_py.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    result = installed.run(installed.venv / "bin" / "python", "-c", script, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 20


def test_wheel_holds_every_runtime_file_of_the_package(installed: Installed) -> None:
    """A data file (an HTML template, say) left out of the wheel would be missing in the image."""
    with zipfile.ZipFile(installed.wheel) as archive:
        packaged = set(archive.namelist())
    sources = {
        p.relative_to(installed.context).as_posix()
        for p in (installed.context / "spegel_py").rglob("*")
        if p.is_file() and p.suffix != ".pyi"  # typing stubs are for mypy, not the runtime
    }
    assert sources, "empty build context"
    assert not sorted(sources - packaged), sorted(sources - packaged)
