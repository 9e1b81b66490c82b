"""The image's Python content, built as the Dockerfile builds it and run: ``spegel-py --help``,
the chart's subcommands, ``version``, and every module imports.

No Docker engine runs here. So the test copies exactly the files the build context holds
(.dockerignore applied), runs the builder stage's pip commands as the Dockerfile writes them
(the project's wheel, then a wheel of every dependency from PyPI, fastecdsa compiled), and then
the runtime stage's offline install (``--no-index``: only those wheels) into a fresh virtualenv.
A file, a dependency or a wheel the image would miss is missed here too. Unlike the image build,
pip's cache is used (speed), and the interpreter is this one (3.11, as the base image).
One virtualenv per session: building and installing ~90 wheels takes about a minute.
"""

from __future__ import annotations

import glob
import os
import shlex
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
from packsupport import REPO, context_files, parse, run_commands

pytestmark = pytest.mark.integration

# What the chart runs (tests/packaging/test_dockerfile.py renders it to check the same set).
CHART_SUBCOMMANDS = ("registry", "configuration", "cleanup", "cleanup-wait")
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    context: Path

    def run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=CLEAN_ENV,
            cwd=self.venv,  # not the repository: nothing may come from the source tree
        )


def _dockerfile_steps(stage: str, wheels: Path) -> list[list[str]]:
    """The stage's ``pip`` and ``spegel-py`` commands, in order, ``/wheels`` moved to ``wheels``."""
    _, stages = parse()
    (found,) = [s for s in stages if s.name == stage]
    steps = [shlex.split(c.replace("/wheels", wheels.as_posix())) for c in run_commands(found)]
    steps = [words for words in steps if words[0] in ("pip", "spegel-py")]
    assert steps, f"no pip commands in the {stage} stage"
    return steps


def _run_step(words: list[str], bin_dir: Path, cwd: Path, timeout: float) -> None:
    """One shell command of a RUN: globs expanded as the shell would, ``pip`` as ``python -m pip``
    of the interpreter in ``bin_dir``."""
    words = [
        match for word in words for match in (sorted(glob.glob(word)) or [word] if "*" in word else [word])
    ]
    program = [str(bin_dir / "python"), "-m", "pip"] if words[0] == "pip" else [str(bin_dir / words[0])]
    result = subprocess.run(
        [*program, *words[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env=CLEAN_ENV,
    )
    assert result.returncode == 0, (
        f"{' '.join(words)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("image")
    context = root / "context"
    for relative in context_files(["pyproject.toml", "README.md", "spegel_py"]):
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target)
    wheels = root / "wheels"
    for words in _dockerfile_steps("builder", wheels):
        _run_step(words, Path(sys.executable).parent, context, timeout=400)
    (wheel,) = wheels.glob("spegel_py-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    for words in _dockerfile_steps("runtime", wheels):
        _run_step(words, env_dir / "bin", root, timeout=400)
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
