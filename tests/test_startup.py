"""Start-up cost of ``overleaf-import``: what its help and ``verify`` do not need is not imported.

    python3 -m pytest -q tests/test_startup.py

The importer's help and ``verify`` talk to no engine and run no upgrade, so the Docker SDK, requests,
zstandard and the upgrade package must stay out of ``sys.modules`` (they cost most of the start-up). What
``verify`` needs only once it has a manifest in hand (cryptography for the signature, the planner, its
catalog and YAML for the plan check) is imported then, not at start-up: a verify that stops at a missing
manifest imports none of it, and a full verify of a signed bundle imports it but still no engine code.
A subprocess runs the real CLI entry point and prints what got imported; no timing is asserted (the
README's Performance section says how start-up time is measured).

Typer 0.29 itself imports pydantic (its dependency, not ours) when it first converts a non-flag
parameter, so pydantic is not in the lists below.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from manifests.bundle import README_NAME, iso, utc_now
from manifests.catalog import load_catalog
from manifests.planner import PlanRequest, make_plan
from tests.support.signing_keys import make_key, sign

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("docker", "requests", "urllib3", "zstandard", "importer.upgrade", "importer.images.load",
         "importer.images.archive", "importer.images.uploads",
         "importer.images.push", "importer.images.engine", "tqdm")
# needed once a manifest was read (signature, plan check), so not before
LATE = ("cryptography", "yaml", "manifests.planner", "manifests.catalog", "importer.images.plan_check")

_PROBE = """
import json, sys
sys.argv = ["overleaf-import", *json.loads(sys.argv[1])]
from importer.cli import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
sys.stdout.flush()
sys.stderr.write("MODULES=" + json.dumps({"code": code, "modules": sorted(sys.modules)}) + "\\n")
"""


def _run(*args: str) -> tuple[int, set[str]]:
    """The exit code of ``overleaf-import ARGS`` and the modules it imported."""
    res = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(list(args))], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    line = [x for x in res.stderr.splitlines() if x.startswith("MODULES=")]
    assert line, res.stderr
    got = json.loads(line[-1][len("MODULES="):])
    return got["code"], set(got["modules"])


def _imported(*args: str) -> set[str]:
    return _run(*args)[1]


def _heavy(mods: set[str], heavy: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(m for m in mods if any(m == h or m.startswith(h + ".") for h in heavy))


@pytest.mark.parametrize("args", [["--help"], ["verify", "--help"], ["load", "--help"]])
def test_help_imports_no_heavy_module(args: list[str]) -> None:
    mods = _imported(*args)
    assert "importer.cli" in mods          # the probe really ran the CLI
    assert _heavy(mods) == []


def test_verify_of_a_missing_bundle_imports_no_engine_code(tmp_path: Path) -> None:
    code, mods = _run("verify", str(tmp_path / "nothing-here"))
    assert code == 14                      # IntegrityError: no manifest.json there
    assert "importer.images.verify" in mods
    assert _heavy(mods) == []
    assert _heavy(mods, LATE) == []        # no key, no plan was looked at: nothing of theirs is loaded


def _signed_file_bundle(tmp_path: Path) -> tuple[Path, Path]:
    """A signed bundle of one small file (no images, no parts) and the folder trusting its key."""
    bundle, trust = tmp_path / "bundle", tmp_path / "trust"
    bundle.mkdir()
    key = make_key(trust)
    readme = b"offline instructions\n"
    (bundle / README_NAME).write_bytes(readme)
    plan = make_plan(load_catalog(overlay=False), PlanRequest(current="5.5.3", target="5.5.8", mongo="6.0",
                                                              redis="6.2")).to_dict()
    now = utc_now()
    sign(bundle, {"format": "overleaf-airgap-bundle", "schema": 2, "bundle_id": "0123456789abcdef",
                  "tool_version": "0.1.0", "product": "overleaf", "edition": "ce", "from_version": plan["from"],
                  "to_version": plan["to"], "created": iso(now - timedelta(days=1)),
                  "expires": iso(now + timedelta(days=30)), "sequence": 5, "key_id": key.id,
                  "platform": "linux/amd64", "plan": plan, "images": [], "blobs": [], "parts": [],
                  "payload_size": 0, "max_part_size": 1024 * 1024, "segment_size": 4 * 1024 * 1024,
                  "files": [{"name": README_NAME, "size": len(readme), "sha256": hashlib.sha256(readme).hexdigest()}],
                  "toolkit": None, "delta": None, "catalog_overlay": None, "recompress": None}, key)
    return bundle, trust / "signer.pub"


def test_a_full_verify_loads_what_it_needs_and_no_engine_code(tmp_path: Path) -> None:
    """The same probe over a verify that passes: the signature and plan modules do get loaded (so the check
    above would see them), the Docker SDK, requests, zstandard, tqdm and the upgrade package still do not."""
    bundle, pub = _signed_file_bundle(tmp_path)
    code, mods = _run("--json", "verify", str(bundle), "--trust", str(pub))
    assert code == 0
    assert "importer.images.verify" in mods
    assert {"cryptography", "yaml", "manifests.planner", "importer.images.plan_check"} <= mods
    assert _heavy(mods) == []


def test_probe_sees_heavy_modules_when_they_are_used() -> None:
    """The check can fail: the upgrade command's help still registers, and importing load pulls docker in."""
    res = subprocess.run([sys.executable, "-c", "import sys, importer.images.load; print('docker' in sys.modules)"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "True"
