"""The declared dependencies are the imported ones: each bounded on both sides, each installed in range.

Every module the shipped packages (bundler/, importer/, manifests/) import, at module level or inside
a function, is either the standard library, one of ours, or a distribution pyproject.toml declares;
every declared runtime dependency is imported somewhere (nothing carried to the offline host for
nothing); each has a lower and an upper bound (a new major of docker or typer must not arrive
unannounced), and the versions installed here satisfy them.
"""
from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
OURS = {"bundler", "importer", "manifests"}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(s) for s in PROJECT["dependencies"]]
TEST = [Requirement(s) for s in PROJECT["optional-dependencies"]["test"]]


def imported_top_levels(package_dirs: list[Path]) -> dict[str, set[str]]:
    """Top-level module name -> the files importing it (``import a.b``, ``from a import b``; no relative ones)."""
    found: dict[str, set[str]] = {}
    for folder in package_dirs:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(path.as_posix())
    return found


def distribution_of(module: str) -> str | None:
    """The installed distribution providing top-level ``module`` (canonical name), else None."""
    dists = metadata.packages_distributions().get(module)
    return canonicalize_name(dists[0]) if dists else None


IMPORTS = imported_top_levels([ROOT / p for p in sorted(OURS)])
THIRD_PARTY = {m: f for m, f in IMPORTS.items()
               if m not in OURS and m not in sys.stdlib_module_names and m != "__future__"}


def test_every_third_party_import_is_declared():
    declared = {canonicalize_name(r.name) for r in RUNTIME}
    undeclared = {m: sorted(f)[:3] for m, f in THIRD_PARTY.items() if distribution_of(m) not in declared}
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"


def test_every_declared_dependency_is_imported():
    used = {distribution_of(m) for m in THIRD_PARTY}
    unused = [r.name for r in RUNTIME if canonicalize_name(r.name) not in used]
    assert not unused, f"declared but never imported by bundler/, importer/ or manifests/: {unused}"


@pytest.mark.parametrize("req", RUNTIME + TEST, ids=lambda r: r.name)
def test_each_dependency_has_both_bounds_and_the_installed_version_fits(req):
    operators = {spec.operator for spec in req.specifier}
    assert operators & {">=", ">", "~=", "=="}, f"{req}: no lower bound"
    assert operators & {"<", "<=", "~=", "=="}, f"{req}: no upper bound"
    installed = metadata.version(req.name)
    assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} is installed: outside {req}"


def test_the_scan_sees_function_level_imports_and_known_distributions(tmp_path):
    """Self-test: an import inside a function counts, and module names map to their distributions."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("def f():\n    import yaml.constructor\n    from docker import errors\n")
    found = imported_top_levels([pkg])
    assert set(found) == {"yaml", "docker"}
    assert distribution_of("yaml") == "pyyaml" and distribution_of("docker") == "docker"
    assert distribution_of("no_such_module_here") is None
