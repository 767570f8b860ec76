"""Module docstrings show calls that exist: every name an example calls is defined where it says.

Each module of ``bundler/``, ``importer/`` and ``manifests/`` opens with what it is for and a
short example (indented lines in its docstring). This test reads those examples and checks
every call in them: a bare ``name(...)`` must be defined in (or imported into) the module or
another module of the project, a builtin, or a variable the example assigned; ``Name.attr(...)``
on a name of the module must have that attribute.
"""
from __future__ import annotations

import builtins
import importlib
import pkgutil
import re

import pytest

PACKAGES = ("bundler", "importer", "manifests")
CALL = re.compile(r"(?<![\w.'\"])([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?\(")
ASSIGNED = re.compile(r"^\s*([A-Za-z_][\w, ]*?)\s*=(?!=)|\bas\s+([A-Za-z_]\w*)|\bfor\s+([\w, ]+?)\s+in\b")
KEYWORDS = {"print", "with", "for", "if", "return", "raise", "not", "and", "or", "in", "lambda", "def", "class"}


def modules() -> list[str]:
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}.")
                  if not m.name.rsplit(".", 1)[-1].startswith("_")]
    return sorted(names)


def project_names() -> set[str]:
    """Every top-level name some module of the project defines or imports (where examples may take them from)."""
    out: set[str] = set()
    for name in modules():
        out |= set(vars(importlib.import_module(name)))
    return out


def example_lines(doc: str) -> list[str]:
    """The indented example lines of a docstring (not its ``::`` literal blocks of JSON or paths)."""
    out, literal = [], False
    for line in doc.splitlines():
        if line.rstrip().endswith("::"):
            literal = True
            continue
        if line.startswith("    ") and line.strip():
            if not literal:
                out.append(line.strip())
        elif line.strip():
            literal = False
    return out


@pytest.mark.parametrize("name", modules())
def test_module_docstring_has_an_example_whose_calls_exist(name):
    module = importlib.import_module(name)
    doc = module.__doc__ or ""
    assert doc.strip(), f"{name} has no module docstring"
    lines = example_lines(doc)
    assert lines, f"{name}'s docstring shows no example"
    local: set[str] = set()
    known = project_names()
    missing = []
    for line in lines:
        code = line.split("#", 1)[0]
        for m in ASSIGNED.finditer(code):
            local |= {v.strip() for group in m.groups() if group for v in group.split(",")}
        for first, attr in CALL.findall(code):
            if first in KEYWORDS or first in local or hasattr(builtins, first):
                continue
            target = getattr(module, first, None)
            if target is None and first in known:
                continue
            if target is None:
                missing.append(f"{first}(...)" if not attr else f"{first}.{attr}(...)")
            elif attr and not hasattr(target, attr):
                missing.append(f"{first}.{attr}(...)")
    assert not missing, f"{name}: the docstring example calls what the module does not have: {missing}"
