"""Coverage-guided fuzzing (atheris) of every parser that reads untrusted bytes.

One harness per parser, each a module here with ``ALLOWED`` (the exceptions that are a
correct refusal) and ``target(data: bytes)``. Anything else a target raises, or a hang,
is a finding: ``python3 -m tests.fuzz`` saves the input under ``tests/fuzz/crashes/``
(not committed) and every finding becomes a test in ``tests/test_fuzz_regressions.py``.

    python3 -m tests.fuzz --seconds 60            # every harness, 60 s each
    python3 -m tests.fuzz --seconds 10 manifest   # one harness

Harnesses (:data:`HARNESSES`): the manifest parser and validator, the bundle's catalog
overlay, the Toolkit config parser, the anti-rollback state file, the upgrade journal and
the inventory receipt, and the payload reader (segments, strict ustar, zstd members).
"""
from __future__ import annotations

HARNESSES: dict[str, str] = {
    "manifest": "tests.fuzz.fuzz_manifest",
    "overlay": "tests.fuzz.fuzz_overlay",
    "toolkit_config": "tests.fuzz.fuzz_toolkit_config",
    "state": "tests.fuzz.fuzz_state",
    "journal": "tests.fuzz.fuzz_journal",
    "receipt": "tests.fuzz.fuzz_receipt",
    "payload": "tests.fuzz.fuzz_payload",
}
