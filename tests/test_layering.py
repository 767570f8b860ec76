"""The layering, enforced over the whole tree: bundler -> manifests <- importer.

``manifests/`` is the contract both sides share and imports neither; the online side (``bundler/``)
and the offline side (``importer/``) never import each other, so that the offline host runs nothing
of the online code and the other way round. Every import counts: module level, inside a function,
``from X import Y`` and ``import X.Y`` alike (relative imports resolved). Module-level imports inside
the three packages form no circle (a circle makes import order matter and hides half-made modules).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bundler", "importer", "manifests")
ALLOWED = {"bundler": {"bundler", "manifests"}, "importer": {"importer", "manifests"}, "manifests": {"manifests"}}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in ``path`` (relative ones resolved)."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    me = module_name(root, path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno, id(node) in top_level))
            # ``from pkg import mod``: the module pkg.mod is imported too, when it is one of ours
            for alias in node.names:
                if (root / Path(*target.split("."), alias.name)).with_suffix(".py").exists() or \
                        (root / Path(*target.split("."), alias.name, "__init__.py")).exists():
                    out.append((f"{target}.{alias.name}", node.lineno, id(node) in top_level))
    return out


def layering_problems(root: Path, packages: tuple[str, ...] = PACKAGES,
                      allowed: dict[str, set[str]] = ALLOWED) -> list[str]:
    """Every import that crosses the layers the wrong way, as 'file:line imports module'."""
    problems = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for target, line, _ in imports_of(root, path):
                top = target.split(".")[0]
                if top in packages and top not in allowed[package]:
                    problems.append(f"{path.relative_to(root).as_posix()}:{line} imports {target}")
    return problems


def import_circles(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[list[str]]:
    """Circles among the module-level imports of the packages' modules (each once, as a path)."""
    graph: dict[str, set[str]] = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            me = module_name(root, path)
            graph[me] = {t for t, _, top in imports_of(root, path) if top and t.split(".")[0] in packages}
    for deps in graph.values():
        deps &= set(graph)
    circles, done = [], set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            circle = stack[stack.index(node):]
            if frozenset(circle) not in done:
                done.add(frozenset(circle))
                circles.append([*circle, node])
            return
        if node in seen:
            return
        seen.add(node)
        for dep in sorted(graph[node]):
            if not node.startswith(dep + ".") and node != dep:   # a package's own __init__ is not a circle
                visit(dep, [*stack, node])

    seen: set[str] = set()
    for start in sorted(graph):
        visit(start, [])
    return circles


def test_bundler_and_importer_meet_only_in_manifests():
    assert not layering_problems(ROOT), layering_problems(ROOT)


def test_module_level_imports_form_no_circle():
    assert not import_circles(ROOT), import_circles(ROOT)


def test_the_check_catches_a_crossing_inside_a_function_and_a_circle(tmp_path):
    """Self-test on a made-up tree: a function-level import of the other side and a relative import of the
    wrong layer are both found, and a two-module circle is reported."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "bundler" / "a.py").write_text("def f():\n    from importer import b\n")
    (tmp_path / "importer" / "b.py").write_text("import manifests.c\n")
    (tmp_path / "manifests" / "c.py").write_text("from . import d\n")
    (tmp_path / "manifests" / "d.py").write_text("from .c import x\nimport bundler.a\n")
    problems = layering_problems(tmp_path)
    assert problems == ["bundler/a.py:2 imports importer", "bundler/a.py:2 imports importer.b",
                        "manifests/d.py:2 imports bundler.a"]
    assert import_circles(tmp_path) == [["manifests.c", "manifests.d", "manifests.c"]]
