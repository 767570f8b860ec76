"""Every input the fuzzers (tests/fuzz, ``python3 -m tests.fuzz --seconds 60``) or the tamper review
found, as a regression test; and each harness run over its seeds and known-hostile inputs, so that
the harnesses themselves stay working without atheris.

A target may only raise its harness's ``ALLOWED`` errors (each maps to a documented exit code).
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from importer.upgrade.journal import Journal, state_dir
from manifests.errors import ToolkitError
from tests.fuzz import HARNESSES

HOSTILE = [
    b"", b"3", b"null", b"[]", b'"x"', b"{}", b"\xff\xfe", b"NaN", b"[Infinity]", b"[-Infinity]", b"[1e999]",
    b"9" * 5000, b"[" * 100000, b"{" * 50000, b'{"schema": 1e400}', b'{"schema": true}', b"\x00" * 64,
]

# (harness, input, why): what the fuzzers found
FINDINGS = [
    ("journal", b"3", "Journal.load: JSON that is not an object raised AttributeError (exit 1)"),
    ("journal", b'{"schema":1,"bundle_id":"b","plan":{"steps":[{"id":"00-app-5.5.4"}]},"start_version":"5.5.3",'
                b'"started":"t","steps":{"01-app-5.5.4":{"status":"pending","phases":[]}},"backups":[],'
                b'"finished":null}',
     "Journal.load accepted a plan step with no status entry; next_step() then raised KeyError (exit 1)"),
    # found by the tamper review before the fuzzers ran (now refused by manifests/safeio.py)
    ("state", b'{"schema": 1, "accepted": {"overleaf-ce": {"sequence": Infinity, "bundle_id": "b", '
              b'"manifest_sha256": "' + b"a" * 64 + b'", "accepted_at": "t"}}}', "Infinity in the state file"),
    ("state", b'{"schema": 1, "accepted": {"overleaf-ce": {"sequence": ' + b"9" * 5000 + b', "bundle_id": "b", '
              b'"manifest_sha256": "' + b"a" * 64 + b'", "accepted_at": "t"}}}', "5000-digit sequence"),
    ("manifest", b'{"format":"overleaf-airgap-bundle","schema":2,"sequence":' + b"9" * 5000 + b"}",
     "5000-digit number in the manifest"),
]


def _run(name: str, data: bytes) -> None:
    mod = importlib.import_module(HARNESSES[name])
    try:
        mod.target(data)
    except tuple(mod.ALLOWED):
        pass


@pytest.mark.parametrize("name", list(HARNESSES))
def test_harness_survives_its_seeds_and_hostile_inputs(name):
    mod = importlib.import_module(HARNESSES[name])
    for data in [*getattr(mod, "SEEDS", []), *HOSTILE]:
        _run(name, data)


@pytest.mark.parametrize("name,data,why", FINDINGS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(FINDINGS)])
def test_fuzz_finding_is_refused_cleanly(name, data, why):
    _run(name, data)


# --- the journal: a bad one is refused with exit 30 and says what is wrong ----------------------------
_GOOD_JOURNAL = {"schema": 1, "bundle_id": "b", "plan": {"from": "5.5.3", "to": "5.5.4", "steps": [
    {"id": "01-app-5.5.4", "kind": "app", "description": "d", "version": "5.5.4"}]},
    "start_version": "5.5.3", "started": "t", "steps": {"01-app-5.5.4": {"status": "pending", "phases": []}},
    "backups": [], "finished": None}


def _with(**changes):
    d = json.loads(json.dumps(_GOOD_JOURNAL))
    for key, value in changes.items():
        d[key] = value
    return json.dumps(d).encode()


@pytest.mark.parametrize("data,needle", [
    (b"3", "not a JSON object"),
    (b"[]", "not a JSON object"),
    (FINDINGS[1][1], "plan step '00-app-5.5.4' has no status entry"),
    (_with(steps={}), "plan step '01-app-5.5.4' has no status entry"),
    (_with(steps={"01-app-5.5.4": {"status": "weird", "phases": []}}), "has no valid status"),
    (_with(steps={"01-app-5.5.4": {"status": "done", "phases": 3}}), "has no list of phases"),
    (_with(schema=True), "schema True"),
    (_with(bundle_id=None), "'bundle_id' is missing"),
    (_with(backups={}), "'backups' is not a list"),
    (b'{"schema": 1, "plan": [Infinity]}', "upgrade journal"),
    (b"\xff", "not UTF-8"),
], ids=["int", "list", "fuzz-missing-status", "no-steps", "bad-status", "bad-phases", "bool-schema", "no-bundle",
        "backups", "infinity", "not-utf8"])
def test_a_bad_journal_is_refused_with_exit_30_and_a_reason(tmp_path, data, needle):
    state_dir(tmp_path).mkdir()
    (state_dir(tmp_path) / "journal.json").write_bytes(data)
    with pytest.raises(ToolkitError) as err:
        Journal.load(tmp_path)
    assert err.value.exit_code == 30 and needle in err.value.message and err.value.hint
    assert "journal" in err.value.message


def test_a_good_journal_loads_and_answers(tmp_path):
    state_dir(tmp_path).mkdir()
    (state_dir(tmp_path) / "journal.json").write_bytes(_with())
    j = Journal.load(tmp_path)
    assert j is not None and j.next_step()["id"] == "01-app-5.5.4" and j.done_count() == 0
    j.set_status("01-app-5.5.4", "done")
    again = Journal.load(tmp_path)
    assert again is not None and again.next_step() is None and again.done_count() == 1
    (state_dir(tmp_path) / "journal.json").unlink()
    assert Journal.load(tmp_path) is None


def test_status_command_with_a_bad_journal_exits_30_without_a_traceback(tmp_path):
    from tests.support.toolkit import make_toolkit
    tk = make_toolkit(tmp_path, "5.5.3", git=False)
    state_dir(tk.root).mkdir()
    (state_dir(tk.root) / "journal.json").write_bytes(b"3")
    out = subprocess.run([sys.executable, "-m", "importer.cli", "status", "--toolkit", str(tk.root)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 30, out.stdout + out.stderr
    assert "not a JSON object" in out.stderr and "Traceback" not in out.stderr


def test_manifest_harness_seed_passes_every_trust_rule():
    """The fuzzer starts from a manifest BundleTrust accepts, so it explores every rule, not just the parser."""
    from tests.fuzz import fuzz_manifest
    assert fuzz_manifest.trust(fuzz_manifest.SEEDS[0]).manifest.sequence == 2
