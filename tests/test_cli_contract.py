"""The command-line contract both tools keep: exit codes, ``--json``, usage errors, help texts.

* The README's exit-code table equals :mod:`manifests.errors` (every code there is a class's
  code and the other way round), and every code in it is exercised by a named test
  (:data:`EXERCISED`: the test must exist and assert that very code).
* Every command takes ``--json`` after its own name and prints exactly one JSON document.
* Usage errors exit 2 with a message and a hint, never 1 and never a traceback.
* Every option of both Typer apps has a help text.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from bundler.cli import app as bundle_app
from importer.cli import app as import_app
from manifests import errors
from manifests.console import CTX, emit_json, run

REPO = Path(__file__).resolve().parents[1]

# code -> "file::test" that makes a real command (or the real code path) fail with that code
EXERCISED = {
    1: "tests/test_cli_contract.py::test_unexpected_error_exits_1_with_one_json_document",
    2: "tests/test_cli_contract.py::test_usage_errors_exit_2",
    3: "tests/test_cli_plan.py::test_plan_errors_are_clean",
    4: "tests/test_cli_contract.py::test_host_files_come_from_the_isolated_folder",
    5: "tests/test_rehearse.py::test_an_unconfirmed_upgrade_off_a_terminal_exits_5_and_changes_nothing",
    10: "tests/test_load_stores.py::test_inventory_then_delta",
    11: "tests/test_import.py::test_signature_by_an_untrusted_key",
    12: "tests/test_import.py::test_expired_bundle",
    13: "tests/test_import.py::test_replayed_older_bundle",
    14: "tests/test_load_stores.py::test_missing_part",
    15: "tests/test_build.py::test_wrong_passphrase_fails_before_pulling",
    20: "tests/test_import.py::test_engine_stopped",
    21: "tests/test_build.py::test_image_missing_from_registry_names_the_step",
    22: "tests/test_build.py::test_output_device_full",
    23: "tests/test_build.py::test_force_replaces_a_previous_bundle",
    24: "tests/test_load_stores.py::test_existing_tag_is_not_moved_silently",
    25: "tests/test_cli_contract.py::test_host_files_come_from_the_isolated_folder",
    30: "tests/test_cli_plan.py::test_plan_errors_are_clean",
    31: "tests/test_upgrade.py::test_wrong_start_version_is_refused_before_any_change",
    32: "tests/test_upgrade.py::test_failed_health_check_reports_state_and_rollback_restores_bytes",
    33: "tests/test_rehearse.py::test_a_failing_migration_in_the_real_upgrade_exits_33_naming_the_step",
    34: "tests/test_estimate.py::test_a_stopped_mongodb_exits_34_and_changes_nothing",
    35: "tests/test_rehearse.py::test_a_step_failing_in_the_sandbox_exits_35_and_leaves_the_real_site_as_it_was",
    40: "tests/test_upgrade_scenarios.py::test_external_mongodb_pauses_for_its_admin_then_resume_checks",
    130: "tests/test_rehearse.py::test_ctrl_c_at_the_upgrade_question_exits_130_and_changes_nothing",
}


def readme_codes() -> dict[int, str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| (.+) \|$", section, re.M)}


def _test_source(node_id: str) -> str | None:
    """The source of the test function ``file::name`` (None when there is no such function)."""
    path, name = node_id.split("::")
    lines = (REPO / path).read_text().splitlines()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.FunctionDef) and node.name == name:   # with its decorators (parametrize)
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            return "\n".join(lines[first - 1:node.end_lineno])
    return None


# --- exit codes ------------------------------------------------------------------------------------
def test_readme_exit_codes_match_the_errors_module():
    table = readme_codes()
    classes = errors.exit_codes()
    assert set(table) == set(classes) | {errors.EXIT_OK}, (sorted(table), sorted(classes))
    assert 1 in classes and classes[1] == ["AirgapError"]


def test_every_exit_code_is_exercised_by_a_test():
    problems = []
    for code in readme_codes():
        if code == errors.EXIT_OK:
            continue
        node = EXERCISED.get(code)
        source = _test_source(node) if node else None
        if source is None:
            problems.append(f"{code}: no test named ({node})")
            continue
        names = errors.exit_codes()[code]
        if not (re.search(rf"(?<![\d.]){code}(?![\d.])", source) or any(n in source for n in names)):
            problems.append(f"{code}: {node} does not mention the code")
    assert not problems, problems


def test_errors_explain_themselves_and_are_never_changed():
    err = errors.IntegrityError("part payload.001 is damaged", "Copy it again.", details={"problems": ["x"]})
    assert err.diagnostics() == "error: part payload.001 is damaged\n  -> Copy it again."
    assert err.to_dict() == {"error": "part payload.001 is damaged", "hint": "Copy it again.", "exit_code": 14,
                             "problems": ["x"]}
    twin = err.with_hint("Undoing failed for mongo:8.0.")
    assert type(twin) is errors.IntegrityError and twin.hint == "Copy it again. Undoing failed for mongo:8.0."
    assert err.hint == "Copy it again." and twin.details == err.details and twin.details is not err.details
    for cls in errors.all_error_classes():
        assert cls.__doc__ and cls.__doc__.strip(), cls


@pytest.mark.parametrize("cls", errors.all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_exits_with_its_code(cls, capsys):
    """Through the CLIs' runner, each class gives its code, its message and hint, and one JSON document."""
    CTX.reset(json=True)

    def fail() -> None:
        raise cls(f"{cls.__name__} happened", "Do the obvious thing.", details={"k": 1})
    with pytest.raises(SystemExit) as info:
        run(fail)
    assert info.value.code == cls.exit_code
    out, err = capsys.readouterr()
    assert f"error: {cls.__name__} happened\n  -> Do the obvious thing." in err and "Traceback" not in err
    assert json.loads(out) == {"error": f"{cls.__name__} happened", "hint": "Do the obvious thing.",
                               "exit_code": cls.exit_code, "k": 1}
    CTX.reset()


def test_unexpected_error_exits_1_with_one_json_document(capsys):
    CTX.reset(json=True)

    def half_done() -> None:
        emit_json({"dry_run": True})
        raise RuntimeError("boom")
    with pytest.raises(SystemExit) as info:
        run(half_done)
    out, err = capsys.readouterr()
    assert info.value.code == 1 and "unexpected error: RuntimeError: boom" in err and "--verbose" in err
    assert json.loads(out) == {"dry_run": True}   # one document per run: the error adds no second one
    CTX.reset()


def test_interrupt_exits_130(capsys):
    def interrupted() -> None:
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as info:
        run(interrupted)
    assert info.value.code == 130 and "interrupted" in capsys.readouterr().err


# --- the real commands ---------------------------------------------------------------------------------
def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("module,args,needle", [
    ("bundler.cli", ["plan"], "--from VERSION"),
    ("bundler.cli", ["plan", "--json"], "--from VERSION"),
    ("bundler.cli", ["build", "--to", "6.2.2", "--key", "k", "--out", "o"], "--from VERSION"),
    ("bundler.cli", ["build", "--from", "5.5.4", "--key", "k", "--out", "o", "--mirror", "docker.io"], "--mirror"),
    ("importer.cli", ["verify", "/nonexistent-bundle", "--parts-from", "/nope"], "--parts-from /nope"),
    ("importer.cli", ["push", "/nonexistent-bundle", "--registry", "bad host"], "not a registry address"),
    ("importer.cli", ["verify"], "Missing argument"),
])
def test_usage_errors_exit_2(module, args, needle):
    proc = _run(module, *args)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    if "--json" in args:
        assert json.loads(proc.stdout)["exit_code"] == 2


def test_host_files_come_from_the_isolated_folder(isolated_host):
    """The autouse fixture points the overlay and the state file into a temporary folder: a broken overlay
    there fails the planner (exit 4), a damaged state file there stops verify (exit 25)."""
    overlay = isolated_host / "config" / "overleaf-airgap" / "catalog-overlay.yaml"
    overlay.parent.mkdir(parents=True)
    overlay.write_text("releases: [{version: 1}]\n")
    proc = _run("bundler.cli", "plan", "--from", "5.5.4", "--to", "latest")
    assert proc.returncode == 4 and str(overlay) in proc.stderr, (proc.returncode, proc.stderr)
    state = isolated_host / "state" / "state.json"
    state.parent.mkdir()
    state.write_text("not json")
    proc = _run("importer.cli", "verify", str(isolated_host))
    assert proc.returncode == 25 and str(state) in proc.stderr, (proc.returncode, proc.stderr)


def test_json_after_the_command_name():
    plan = _run("bundler.cli", "plan", "--from", "5.5.4", "--to", "6.2.2", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["to"] == "6.2.2"
    show = _run("bundler.cli", "catalog", "show", "--json")
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["releases"]
    failed = _run("bundler.cli", "plan", "--from", "6.2.2", "--to", "5.5.8", "--json")
    assert failed.returncode == 3 and json.loads(failed.stdout)["exit_code"] == 3   # one document, the error


def _commands(app: typer.Typer):
    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), cmd
    root = typer.main.get_command(app)
    yield "(global)", root
    yield from walk(root, [])


@pytest.mark.parametrize("tool,app", [("overleaf-bundle", bundle_app), ("overleaf-import", import_app)])
def test_every_command_takes_json_and_every_option_has_help(tool, app):
    missing, no_json = [], []
    for name, cmd in _commands(app):
        options = [p for p in cmd.params if p.param_type_name == "option"]
        bare = [p.opts[0] for p in options if not (p.help or "").strip()]
        if bare:
            missing.append(f"{tool} {name}: {bare}")
        if not any("--json" in p.opts for p in options):
            no_json.append(f"{tool} {name}")
    assert not missing and not no_json, (missing, no_json)


@pytest.mark.parametrize("tool,app", [("overleaf-bundle", bundle_app), ("overleaf-import", import_app)])
def test_every_command_runs_under_the_one_error_wrapper(tool, app):
    """Each command's callback is :func:`manifests.console.command`'s wrapper around the command's own
    function (so every failure gets its message, hint and exit code the same way), with Typer seeing the
    command's own parameters; no command keeps a hand-made ``def go(): ... run(go)`` copy."""
    from manifests import console

    for name, cmd in _commands(app):
        if name == "(global)":
            continue
        chain, fn = [], cmd.callback   # Typer's own wrapper, ours, the command's function
        while fn is not None:
            chain.append(fn)
            fn = getattr(fn, "__wrapped__", None)
        codes = [f.__code__ for f in chain]
        assert console.command(lambda: None).__code__ in codes, f"{tool} {name}: not under console.command"
        assert "json_out" in chain[-1].__code__.co_varnames, f"{tool} {name}"
    for path in ("bundler/cli.py", "bundler/cli_build.py", "importer/cli.py", "importer/cli_upgrade.py"):
        assert "run(go)" not in (REPO / path).read_text(), path
