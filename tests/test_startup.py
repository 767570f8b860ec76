"""Start-up cost of ``overleaf-import``: what its help and ``verify`` do not need is not imported.

    python3 -m pytest -q tests/test_startup.py

The importer's help and ``verify`` talk to no engine and run no upgrade, so the Docker SDK, requests,
zstandard, YAML and the upgrade package must stay out of ``sys.modules`` (they cost most of the
start-up). A subprocess runs the real CLI entry point and prints what got imported; no timing is asserted.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("docker", "requests", "urllib3", "zstandard", "yaml", "importer.upgrade", "importer.images.load",
         "importer.images.push")

_PROBE = """
import json, sys
sys.argv = ["overleaf-import", *json.loads(sys.argv[1])]
from importer.cli import main
try:
    main()
except SystemExit:
    pass
sys.stdout.flush()
sys.stderr.write("MODULES=" + json.dumps(sorted(sys.modules)) + "\\n")
"""


def _imported(*args: str) -> set[str]:
    res = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(list(args))], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    line = [x for x in res.stderr.splitlines() if x.startswith("MODULES=")]
    assert line, res.stderr
    return set(json.loads(line[-1][len("MODULES="):]))


def _heavy(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("args", [["--help"], ["verify", "--help"], ["load", "--help"]])
def test_help_imports_no_heavy_module(args: list[str]) -> None:
    mods = _imported(*args)
    assert "importer.cli" in mods          # the probe really ran the CLI
    assert _heavy(mods) == []


def test_verify_of_a_missing_bundle_imports_no_engine_code(tmp_path: Path) -> None:
    mods = _imported("verify", str(tmp_path / "nothing-here"))
    assert "importer.images.verify" in mods
    assert _heavy(mods) == []


def test_probe_sees_heavy_modules_when_they_are_used() -> None:
    """The check can fail: the upgrade command's help still registers, and importing load pulls docker in."""
    res = subprocess.run([sys.executable, "-c", "import sys, importer.images.load; print('docker' in sys.modules)"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "True"
