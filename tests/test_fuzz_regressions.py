"""Every input the fuzzers (tests/fuzz, ``python3 -m tests.fuzz --seconds 60``) or the tamper review
found, as a regression test; and each harness run over its seeds and known-hostile inputs, so that
the harnesses themselves stay working without atheris.

A target may only raise its harness's ``ALLOWED`` errors (each maps to a documented exit code).
"""
from __future__ import annotations

import importlib

import pytest

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
# findings in code other helpers own, not fixed yet: they fail until importer/state.py is fixed
OPEN = {"journal"}


def _run(name: str, data: bytes) -> None:
    mod = importlib.import_module(HARNESSES[name])
    try:
        mod.target(data)
    except tuple(mod.ALLOWED):
        pass


def _checked(name: str, data: bytes, why: str) -> None:
    """Run; a crash in a harness listed in OPEN is an expected failure until its owner fixes it (then it passes)."""
    try:
        _run(name, data)
    except Exception as exc:  # noqa: BLE001
        if name in OPEN:
            pytest.xfail(f"open finding, owner: the upgrade helper (importer/state.py): {why}: "
                         f"{type(exc).__name__}: {str(exc)[:100]}")
        raise


@pytest.mark.parametrize("name", list(HARNESSES))
def test_harness_survives_its_seeds_and_hostile_inputs(name):
    mod = importlib.import_module(HARNESSES[name])
    for data in [*getattr(mod, "SEEDS", []), *HOSTILE]:
        _checked(name, data, "importer/state.py Journal.load: see FINDINGS")


@pytest.mark.parametrize("name,data,why", FINDINGS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(FINDINGS)])
def test_fuzz_finding_is_refused_cleanly(name, data, why):
    _checked(name, data, why)
