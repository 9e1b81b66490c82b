"""Import contracts (STYLE.md rule 3), checked on every module's source, lazy imports included.

Dependencies point inward: cli -> app -> debug -> {serving, relay} -> httpx -> {bases, oci,
metrics} -> errors; serving and relay never import each other. Third-party clients stay where
they are used: grpc in the containerd store, libp2p and trio in the libp2p router, kubernetes in
bootstrap, aiohttp.web in the HTTP-facing layers.
An AST walk (rather than import-linter) also sees imports inside functions, which is where the
heavy, lazily imported clients live.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "spegel_py"

# The packages that answer HTTP: shared answers, local serving, the peer relay, the debug page.
HTTP_PACKAGES = ("spegel_py.httpx", "spegel_py.serving", "spegel_py.relay", "spegel_py.debug")

# (rule name, modules the rule applies to, import prefixes they must not use, exempt modules)
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    ("errors imports nothing", ("spegel_py.errors",), ("spegel_py", "aiohttp", "grpc", "libp2p"), ()),
    (
        "oci is pure",
        ("spegel_py.oci",),
        ("spegel_py.store", "spegel_py.routing", *HTTP_PACKAGES, "spegel_py.app", "spegel_py.cli",
         "aiohttp", "grpc", "libp2p", "trio", "kubernetes", "prometheus_client"),
        (),
    ),
    (
        "stores know nothing of serving or routing",
        ("spegel_py.store",),
        (*HTTP_PACKAGES, "spegel_py.routing", "spegel_py.app", "spegel_py.cli", "aiohttp", "libp2p",
         "trio", "kubernetes"),
        (),
    ),
    (
        "serving, relay and debug never name a concrete store or router",
        HTTP_PACKAGES,
        ("spegel_py.store.containerd", "spegel_py.store.ocilayout", "spegel_py.routing.libp2p",
         "spegel_py.routing.bootstrap", "spegel_py.app", "spegel_py.cli", "grpc", "libp2p", "trio",
         "kubernetes"),
        (),
    ),
    (
        "routing never reaches into serving or a concrete store",
        ("spegel_py.routing",),
        (*HTTP_PACKAGES, "spegel_py.store.containerd", "spegel_py.store.ocilayout", "spegel_py.app",
         "spegel_py.cli", "grpc"),
        (),
    ),
    ("grpc only in the containerd store", ("spegel_py",), ("grpc",), ("spegel_py.store.containerd",)),
    ("libp2p and trio only in the libp2p router", ("spegel_py",), ("libp2p", "trio", "multiaddr"),
     ("spegel_py.routing.libp2p",)),
    ("kubernetes only in bootstrap", ("spegel_py",), ("kubernetes",), ("spegel_py.routing.bootstrap",)),
    ("aiohttp.web only where HTTP is served", ("spegel_py",), ("aiohttp.web",),
     (*HTTP_PACKAGES, "spegel_py.app", "spegel_py.endpoints")),
    ("local serving never imports the relay", ("spegel_py.serving",),
     ("spegel_py.relay", "spegel_py.debug"), ()),
    ("the relay never imports local serving", ("spegel_py.relay",),
     ("spegel_py.serving", "spegel_py.debug"), ()),
    ("httpx is below serving and the relay", ("spegel_py.httpx",),
     ("spegel_py.serving", "spegel_py.relay", "spegel_py.debug"), ()),
    ("only the app imports debug", ("spegel_py",), ("spegel_py.debug",),
     ("spegel_py.app", "spegel_py.debug")),
    ("only the CLI builds the app", ("spegel_py",), ("spegel_py.app",), ("spegel_py.cli",)),
    ("nothing imports the CLI", ("spegel_py",), ("spegel_py.cli",), ()),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _modules() -> dict[str, set[str]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_api" in path.parts:  # generated gRPC stubs: they import grpc by design
            continue
        module = _module_name(path)
        out[module] = _imports(path, module)
    return out


MODULES = _modules()


@pytest.mark.parametrize(("rule", "sources", "forbidden", "exempt"), RULES, ids=[r[0] for r in RULES])
def test_import_contract(
    rule: str, sources: tuple[str, ...], forbidden: tuple[str, ...], exempt: tuple[str, ...]
) -> None:
    violations = [
        f"{module} imports {name}"
        for module, names in MODULES.items()
        if any(_within(module, s) for s in sources) and not any(_within(module, e) for e in exempt)
        for name in sorted(names)
        if any(_within(name, f) for f in forbidden) and not _within(name, module)
    ]
    assert not violations, f"{rule}: " + "; ".join(violations)


def test_the_walker_sees_lazy_imports(tmp_path: Path) -> None:
    """The check must be able to fail: an import inside a function counts."""
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    import grpc\n    from .x import y\n")
    assert {"grpc", "pkg.x", "pkg.x.y"} <= _imports(source, "pkg.mod")
