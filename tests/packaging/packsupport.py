"""Read the Dockerfile and .dockerignore the way Docker does, as far as the tests need.

No Docker engine runs here, so the packaging tests rebuild what the Dockerfile's builder stage
builds from exactly the files Docker would send as build context, and check the file's shape.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CHART_DIR = REPO / "helm" / "spegel-py"


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    value: str  # the rest of the logical line, continuations joined


@dataclass
class Stage:
    base: str  # the FROM image with build args substituted
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.value for i in self.instructions if i.keyword == keyword]


def logical_lines(text: str) -> list[str]:
    """Instructions with ``\\`` continuations joined and comments dropped (parser directives too)."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is ignored by Docker
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return lines


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """``(global build args with defaults, stages)``."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "ARG" and not stages:
            name, _, default = value.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            words = value.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base, name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, value))
    return global_args, stages


def exec_form(value: str) -> list[str]:
    """An exec-form (JSON array) ENTRYPOINT/CMD; a shell-form one fails the assertion."""
    parsed: Any = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), value
    return parsed


def labels(stage: Stage) -> dict[str, str]:
    """``LABEL k="v" k2="v2"`` instructions of a stage, ``${VERSION}`` left as written."""
    result: dict[str, str] = {}
    for value in stage.all("LABEL"):
        for word in shlex.split(value):
            key, _, label = word.partition("=")
            result[key] = label
    return result


def stage_args(stage: Stage) -> dict[str, str]:
    return {name: default for name, _, default in (v.partition("=") for v in stage.all("ARG"))}


def run_commands(stage: Stage) -> list[str]:
    """Each ``&&``-separated command of every RUN, with ``--mount=...`` options removed."""
    commands: list[str] = []
    for value in stage.all("RUN"):
        value = re.sub(r"--mount=\S+\s*", "", value)
        commands += [c.strip() for c in value.split("&&") if c.strip()]
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
