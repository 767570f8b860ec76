"""The upgrade's layout (issue 12 item 1): typed steps, modules split by phase, no import circles, no CLI below.

Pure tests: no engine.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from importer.upgrade import RunStep, describe, plan_steps, remaining_steps
from importer.upgrade.journal import Journal
from manifests.catalog import load_catalog
from manifests.errors import ManifestFormatError
from manifests.planner import PlanRequest, make_plan

IMPORTER = Path(__file__).resolve().parents[1] / "importer"
UPGRADE = IMPORTER / "upgrade"


def _short(path: Path) -> str:
    """A module's name below importer/upgrade (``runner``, ``steps.mongo``, ``steps`` = steps/__init__.py;
    ``upgrade`` = the package's public face, ``importer/upgrade/__init__.py``)."""
    parts = list(path.relative_to(UPGRADE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "upgrade"


UPGRADE_MODULES = {_short(p) for p in UPGRADE.rglob("*.py")}
"""The upgrade package's modules by short name."""
STEP_KINDS = ("backup", "app", "mongo", "redis", "migration", "config")
CLASS_LINES = 200


def _plan(frm="3.5.10", to="6.2.2", **kw):
    return make_plan(load_catalog(overlay=False), PlanRequest(frm, to, mongo="4.4", redis="6.2", **kw)).to_dict()


def test_plan_steps_are_typed_with_the_plans_ids():
    plan = _plan()
    steps = plan_steps(plan)
    assert [s.id for s in steps] == [s["id"] for s in plan["steps"]]
    assert all(isinstance(s, RunStep) for s in steps)
    mongo = next(s for s in steps if s.kind == "mongo")
    assert (mongo.from_version, mongo.version, mongo.images) == ("4.4", "5.0", ("mongo:5.0",))
    secret = next(s for s in steps if s.kind == "config" and s.variable)
    assert secret.variable == "OVERLEAF_INVITE_TOKEN_SECRET" and secret.make
    assert [s.major for s in steps if s.kind == "backup"] == [s.get("major", False) for s in plan["steps"]
                                                             if s["kind"] == "backup"]
    # describe takes a typed step or the plan's JSON of it, with the same words
    assert describe(mongo) == describe(plan["steps"][[s.id for s in steps].index(mongo.id)])


def test_remaining_steps_skip_what_the_journal_has_done(tmp_path):
    plan = _plan()
    j = Journal.new(tmp_path, "b", plan, "3.5.10")
    first = plan["steps"][0]["id"]
    j.steps[first]["status"] = "done"
    assert [s.id for s in remaining_steps(plan, j)] == [s["id"] for s in plan["steps"][1:]]


def test_a_plan_whose_images_do_not_match_its_steps_is_malformed():
    plan = _plan()
    plan["images"] = plan["images"][1:]
    with pytest.raises(ManifestFormatError, match="image list"):
        plan_steps(plan)


def _path(module: str) -> Path:
    if module == "upgrade":
        return UPGRADE / "__init__.py"
    if module in UPGRADE_MODULES:
        path = UPGRADE.joinpath(*module.split("."))
        return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return IMPORTER / f"{module}.py"


def _imports(module: str) -> set[str]:
    """Short names of the importer modules that ``module`` imports (``importer.upgrade.runner`` -> ``runner``,
    ``importer.upgrade.steps.mongo`` -> ``steps.mongo``)."""
    tree = ast.parse(_path(module).read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"relative import in {module}: use importer.<package>.<module>")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("importer."):
            parts = node.module.split(".")[1:]
            if parts == ["upgrade"]:
                out.add("upgrade")
            elif parts[0] == "upgrade":
                out.add(".".join(parts[1:]))
            else:
                out.add(parts[-1] if parts[0] != "images" else "images." + parts[-1])
    return out


def test_the_importer_is_split_into_images_and_upgrade():
    assert {p.stem for p in (IMPORTER / "images").glob("*.py")} >= {
        "verify", "load", "push", "engine", "inventory", "hoststate"}
    assert {"preflight", "backup", "rollback", "toolkit", "journal", "runner"} <= UPGRADE_MODULES
    # the images package never reaches into the upgrade machinery
    for path in (IMPORTER / "images").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not [n for n in names if n.startswith("importer.upgrade")], (path, names)


def test_the_upgrade_modules_import_no_cli_and_form_no_circle():
    graph = {m: _imports(m) for m in UPGRADE_MODULES}
    for module, deps in graph.items():
        assert not {d for d in deps if d.startswith("cli")}, (module, deps)

    def reach(start: str, seen: set[str]) -> set[str]:
        for d in graph.get(start, set()) & UPGRADE_MODULES:
            if d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen
    for module in UPGRADE_MODULES:
        assert module not in reach(module, set()), f"import circle through importer/{module}.py"
    # the phases build on the shared base, never on one another's internals (only the runner calls preflight)
    assert graph["preflight"] & {"runner", "rollback", "upgrade"} == set()
    assert graph["rollback"] & {"runner", "preflight", "upgrade"} == set()
    assert graph["runner"] & {"rollback", "upgrade"} == set()
    # each step kind builds on the steps' shared base (and the upgrade's), never on another kind or the runner
    kinds = {f"steps.{k}" for k in STEP_KINDS}
    for kind in kinds:
        assert graph[kind] & (kinds | {"runner", "preflight", "rollback", "upgrade", "steps"}) == set(), (kind, graph[kind])


def test_the_runner_is_split_by_step_kind():
    """One module a step kind under importer/upgrade/steps/, each with the class the runner dispatches to."""
    from importer.upgrade.steps import STEP_RUNNERS, StepBase
    from manifests.planner import STEP_KINDS as PLANNED
    assert set(STEP_KINDS) == set(PLANNED) == set(STEP_RUNNERS)
    for kind in STEP_KINDS:
        assert (UPGRADE / "steps" / f"{kind}.py").is_file(), kind
        runner = STEP_RUNNERS[kind]
        assert issubclass(runner, StepBase) and runner.__module__ == f"importer.upgrade.steps.{kind}", runner
        assert "run" in vars(runner), f"{runner.__name__} does not run its step"
    # the container look-up is in one place: the shared base
    defined = [p for p in UPGRADE.rglob("*.py")
               for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.FunctionDef) and n.name == "container"]
    assert defined == [UPGRADE / "steps" / "base.py"], defined


def class_sizes(root: Path) -> dict[str, int]:
    """Every class under ``root`` by ``path:Name``, with its length in lines (its decorators not counted)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                out[f"{path.relative_to(root.parent)}:{node.name}"] = node.end_lineno - node.lineno + 1
    return out


def test_no_importer_class_is_over_200_lines():
    sizes = class_sizes(IMPORTER)
    assert "importer/upgrade/runner.py:Upgrader" in sizes and "importer/upgrade/steps/mongo.py:MongoStep" in sizes
    too_long = {name: n for name, n in sizes.items() if n > CLASS_LINES}
    assert not too_long, f"classes over {CLASS_LINES} lines: split them by what they do: {too_long}"


def test_class_sizes_counts_a_long_class(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("class Long:\n" + "    x = 1\n" * 250 + "\n\nclass Short:\n    pass\n")
    assert class_sizes(pkg) == {"pkg/m.py:Long": 251, "pkg/m.py:Short": 2}


def test_the_cli_module_only_parses_and_prints():
    deps = _imports("cli_upgrade")
    assert deps <= {"upgrade", "cli_common", "options"}, deps   # cli_common: the verify/load front ends; options: shared
    text = (IMPORTER / "cli_upgrade.py").read_text()
    for orchestration in ("Journal", "ToolkitLock", "run_upgrade", "preflight(", "git"):
        assert orchestration not in text, orchestration


