"""The layout's rules, read from the code's own imports: server.py -> routers/ -> core/ <- models/, routers use
model packages only through their public roots, and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "models", "routers")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports (at top level or inside functions)."""
    files = [ROOT / "server.py", *(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))]
    known = {_module(path) for path in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` uses the module pkg.sub; `from pkg import name` uses pkg itself
                subs = {f"{node.module}.{a.name}" for a in node.names} & known
                names.update(subs or {node.module})
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        graph[_module(path)] = names
    return {mod: {n for n in names if n in known and n != mod} for mod, names in graph.items()}


GRAPH = _imports()


def test_core_never_imports_models_or_routers() -> None:
    wrong = {mod: sorted(n for n in deps if n.split(".")[0] in ("models", "routers"))
             for mod, deps in GRAPH.items() if mod.startswith("core")}
    assert not {m: d for m, d in wrong.items() if d}


def test_models_never_import_routers_or_server() -> None:
    wrong = {mod: sorted(n for n in deps if n.split(".")[0] in ("routers", "server"))
             for mod, deps in GRAPH.items() if mod.startswith("models")}
    assert not {m: d for m, d in wrong.items() if d}


def test_routers_use_model_packages_only_through_their_roots() -> None:
    wrong = {mod: sorted(n for n in deps if n.startswith("models.") and n.count(".") > 1)
             for mod, deps in GRAPH.items() if mod.startswith("routers")}
    assert not {m: d for m, d in wrong.items() if d}


def test_every_category_package_exports_its_loader() -> None:
    from core.registry import LOADERS

    for category, target in LOADERS.items():
        module, attr = target.split(":")
        init = ROOT / module.replace(".", "/") / "__init__.py"
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init} says what the package serves"
        exported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert attr in exported, category


@pytest.mark.parametrize("start", sorted(GRAPH))
def test_no_import_circle(start: str) -> None:
    """No module reaches itself through the modules it imports (a package's root counts as its modules' user
    only through what it imports itself)."""
    path: list[str] = []

    def visit(mod: str, seen: set[str]) -> None:
        for dep in sorted(GRAPH.get(mod, ())):
            assert dep != start, " -> ".join([start, *path, dep])
            if dep not in seen:
                seen.add(dep)
                path.append(dep)
                visit(dep, seen)
                path.pop()

    visit(start, set())
