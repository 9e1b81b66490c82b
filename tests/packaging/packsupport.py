"""Read the Dockerfile and .dockerignore the way Docker does, as far as the tests need.

No Docker engine runs here, so the packaging tests rebuild what the Dockerfile's builder stage
builds from exactly the files Docker would send as build context, and check the file's shape.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CHART_DIR = REPO / "helm" / "spegel-py"


@dataclass
class Stage:
    """One ``FROM`` and the instructions after it, as Docker's own parser read them."""

    base: str  # the FROM image with build args substituted
    name: str
    instructions: list[dockerfile.Command] = field(default_factory=list)

    def all(self, keyword: str) -> list[dockerfile.Command]:
        return [i for i in self.instructions if i.cmd == keyword]


def parse(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """``(global build args with defaults, stages)``, parsed by BuildKit's parser (PyPI
    ``dockerfile``, a binding of the Go code ``docker build`` runs)."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "ARG" and not stages:
            name, _, default = command.value[0].partition("=")
            global_args[name] = default
        elif command.cmd == "FROM":
            words = command.value
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base, name))
        else:
            assert stages, f"{command.cmd} before the first FROM"
            stages[-1].instructions.append(command)
    return global_args, stages


def labels(stage: Stage) -> dict[str, str]:
    """Every ``LABEL key="value"`` of a stage, quotes removed, ``${VERSION}`` left as written."""
    result: dict[str, str] = {}
    for command in stage.all("LABEL"):
        pairs = command.value
        for key, value in zip(pairs[::2], pairs[1::2], strict=True):
            result[key] = shlex.split(value)[0]
    return result


def stage_args(stage: Stage) -> dict[str, str]:
    return {name: default for name, _, default in (c.value[0].partition("=") for c in stage.all("ARG"))}


def run_commands(stage: Stage) -> list[str]:
    """Each ``&&``-separated shell command of every RUN of a stage (RUN flags such as ``--mount``
    are kept apart by the parser)."""
    commands: list[str] = []
    for command in stage.all("RUN"):
        assert not command.json, f"exec-form RUN not expected: {command.original}"
        commands += [" ".join(c.split()) for c in command.value[0].split("&&") if c.strip()]
    return commands


def ignore_patterns() -> list[tuple[bool, str]]:
    """``(exclude?, pattern)`` of .dockerignore, in order (the last match decides)."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((not negate, line.lstrip("!").rstrip("/")))
    return patterns


def _matches(pattern: str, path: str) -> bool:
    """Docker's matching: a pattern matching a directory matches everything below it; ``**``
    matches any number of directories."""
    regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
    regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return re.fullmatch(regex + "(?:/.*)?", path) is not None


def in_context(path: str) -> bool:
    """Does Docker send ``path`` (relative to the repository) in the build context?"""
    included = True
    for exclude, pattern in ignore_patterns():
        if _matches(pattern, path):
            included = not exclude
    return included


def context_files(sources: list[str]) -> list[str]:
    """Every file under the COPY ``sources`` that the build context holds."""
    found: list[str] = []
    for source in sources:
        root = REPO / source
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        found += [str(p.relative_to(REPO)) for p in paths if in_context(str(p.relative_to(REPO)))]
    return found
