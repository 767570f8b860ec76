"""The tamper matrix: every hostile input to `overleaf-import verify` and the exit code it gets.

Each case builds a bundle folder (a signed manifest with no parts), a trust folder and a
state file, tampers with one thing, and runs the real CLI in a subprocess (with a timeout:
a FIFO must never hang it). No case may end in exit code 1 ("unexpected error"), and no
control character from the bundle may reach the terminal. Cases that need a full bundle
(parts, segments, payload) live with the payload tests.

    MATRIX[name] == expected exit code      # the README's exit-code table lists the same codes
"""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manifests.bundle import MANIFEST_NAME, SIGNATURE_NAME, BundleManifest, canonical_json, iso, utc_now
from manifests.catalog import load_catalog
from manifests.planner import PlanRequest, make_plan
from manifests.signing import key_id, public_pem

ROOT = Path(__file__).resolve().parent.parent
PLAN = make_plan(load_catalog(overlay=False), PlanRequest(current="5.5.3", target="5.5.8", mongo="6.0",
                                                          redis="6.2")).to_dict()


def manifest_dict(kid: str, **over) -> dict:
    """A valid manifest with no images and no parts (only what verify needs)."""
    now = utc_now()
    d = {"format": "overleaf-airgap-bundle", "schema": 2, "bundle_id": "0123456789abcdef", "tool_version": "0.1.0",
         "product": "overleaf", "edition": "ce", "from_version": PLAN["from"], "to_version": PLAN["to"],
         "created": iso(now - timedelta(days=1)), "expires": iso(now + timedelta(days=30)), "sequence": 5,
         "key_id": kid, "platform": "linux/amd64", "plan": PLAN, "images": [], "blobs": [], "parts": [],
         "payload_size": 0, "max_part_size": 1024 * 1024, "segment_size": 4 * 1024 * 1024, "files": [],
         "toolkit": None, "delta": None, "catalog_overlay": None, "recompress": None}
    d.update(over)
    return d


@dataclass
class Setup:
    tmp: Path
    key: Ed25519PrivateKey
    kid: str

    @property
    def bundle(self) -> Path:
        return self.tmp / "bundle"

    @property
    def trust(self) -> Path:
        return self.tmp / "trust"

    @property
    def state(self) -> Path:
        return self.tmp / "state.json"

    def write(self, d: dict | bytes, key: Ed25519PrivateKey | None = None, folder: Path | None = None) -> bytes:
        folder = folder or self.bundle
        folder.mkdir(parents=True, exist_ok=True)
        data = d if isinstance(d, bytes) else canonical_json(d)
        (folder / MANIFEST_NAME).write_bytes(data)
        (folder / SIGNATURE_NAME).write_bytes((key or self.key).sign(data))
        return data

    def verify(self, *extra: str, folder: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "OVERLEAF_AIRGAP_STATE": str(self.state), "OVERLEAF_AIRGAP_TRUST_DIR": str(self.trust),
               "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", "importer.cli", "verify", str(folder or self.bundle), *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60, env=env,
                              stdin=subprocess.DEVNULL)


@pytest.fixture
def s(tmp_path) -> Setup:
    key = Ed25519PrivateKey.generate()
    setup = Setup(tmp_path, key, key_id(key.public_key()))
    setup.trust.mkdir()
    (setup.trust / "operator.pub").write_bytes(public_pem(key.public_key()))
    setup.write(manifest_dict(setup.kid))
    return setup


def test_the_untampered_bundle_verifies(s):
    BundleManifest.from_dict(manifest_dict(s.kid))  # the helper follows the manifest format
    r = s.verify()
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(s.state.read_text())["by_key"]["overleaf-ce"][s.kid]["sequence"] == 5


def _fifo(p: Path) -> None:
    p.unlink(missing_ok=True)
    os.mkfifo(p)


def _huge(p: Path, size: int) -> None:
    p.unlink(missing_ok=True)
    with open(p, "wb") as fh:
        fh.truncate(size)  # sparse: costs no disk


def _loop(p: Path) -> None:
    p.unlink(missing_ok=True)
    p.symlink_to(p.name)


def _deep(folder: Path, depth: int) -> None:
    """``folder/d/d/...`` ``depth`` levels deep, made one level at a time (os.makedirs recurses)."""
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)


def _rm_deep(folder: Path) -> None:
    """Remove what :func:`_deep` made, one level at a time (shutil.rmtree recurses too)."""
    while (folder / "d").exists():
        if (folder / "d" / "d").exists():
            os.rename(folder / "d" / "d", folder / "x")
            os.rmdir(folder / "d")
            os.rename(folder / "x", folder / "d")
        else:
            os.rmdir(folder / "d")
    folder.rmdir()


# name -> (tamper(s), expected exit code); tamper may return extra CLI arguments
Tamper = Callable[[Setup], "list[str] | None"]
CASES: dict[str, tuple[Tamper, int]] = {
    # --- the manifest and its signature ---------------------------------------------------
    "manifest missing": (lambda s: (s.bundle / MANIFEST_NAME).unlink(), 14),
    "manifest is a FIFO": (lambda s: _fifo(s.bundle / MANIFEST_NAME), 14),
    "manifest is a folder": (lambda s: ((s.bundle / MANIFEST_NAME).unlink(), (s.bundle / MANIFEST_NAME).mkdir()), 14),
    "manifest is 1 GiB": (lambda s: _huge(s.bundle / MANIFEST_NAME, 1024**3), 14),
    "manifest is a symlink loop": (lambda s: _loop(s.bundle / MANIFEST_NAME), 14),
    "manifest links outside the bundle": (lambda s: ((s.bundle / MANIFEST_NAME).unlink(),
                                                     (s.bundle / MANIFEST_NAME).symlink_to("/etc/hostname")), 14),
    "signature missing": (lambda s: (s.bundle / SIGNATURE_NAME).unlink(), 11),
    "signature is a FIFO": (lambda s: _fifo(s.bundle / SIGNATURE_NAME), 11),
    "signature is 1 GiB": (lambda s: _huge(s.bundle / SIGNATURE_NAME, 1024**3), 11),
    "signature is 63 bytes": (lambda s: (s.bundle / SIGNATURE_NAME).write_bytes(b"x" * 63), 11),
    "manifest changed after signing": (lambda s: (s.bundle / MANIFEST_NAME).write_bytes(
        (s.bundle / MANIFEST_NAME).read_bytes().replace(b'"sequence":5', b'"sequence":6')), 11),
    "signed by an untrusted key": (lambda s: s.write(manifest_dict(s.kid), key=Ed25519PrivateKey.generate()) and None,
                                   11),
    "signed manifest is not JSON": (lambda s: s.write(b"{not json") and None, 10),
    "signed manifest is not UTF-8": (lambda s: s.write(b'{"format":"\xff"}') and None, 10),
    "signed manifest nested 100000 deep": (lambda s: s.write(b"[" * 100000) and None, 10),
    "signed sequence NaN": (lambda s: s.write(canonical_json(manifest_dict(s.kid)).replace(
        b'"sequence":5', b'"sequence":NaN')) and None, 10),
    "signed sequence Infinity": (lambda s: s.write(canonical_json(manifest_dict(s.kid)).replace(
        b'"sequence":5', b'"sequence":Infinity')) and None, 10),
    "signed sequence of 4300 digits": (lambda s: s.write(canonical_json(manifest_dict(s.kid)).replace(
        b'"sequence":5', b'"sequence":' + b"9" * 4300)) and None, 10),
    "signed sequence 2**63": (lambda s: s.write(manifest_dict(s.kid, sequence=2**63)) and None, 10),
    "signed version with shell code": (lambda s: s.write(manifest_dict(s.kid, to_version="5.5.8$(id)")) and None, 10),
    "signed version with a newline": (lambda s: s.write(manifest_dict(s.kid, to_version="5.5.8\nX=1")) and None, 10),
    "signed string with an escape code": (lambda s: s.write(manifest_dict(
        s.kid, tool_version="0.1.0\x1b[2K\rSignature: good")) and None, 10),
    # --- trusted keys ------------------------------------------------------------------------
    "--trust key missing": (lambda s: ["--trust", str(s.tmp / "absent.pub")], 15),
    "--trust key is a FIFO": (lambda s: (_fifo(s.tmp / "k.pub"), ["--trust", str(s.tmp / "k.pub")])[1], 15),
    "--trust key is 1 GiB": (lambda s: (_huge(s.tmp / "k.pub", 1024**3), ["--trust", str(s.tmp / "k.pub")])[1], 15),
    "--trust key is not PEM": (lambda s: ((s.tmp / "k.pub").write_bytes(b"\x00" * 100),
                                          ["--trust", str(s.tmp / "k.pub")])[1], 15),
    "--trust key is a symlink loop": (lambda s: (_loop(s.tmp / "k.pub"), ["--trust", str(s.tmp / "k.pub")])[1], 15),
    "trust folder key is a FIFO (skipped: no key left)": (lambda s: _fifo(s.trust / "operator.pub"), 11),
    "trust folder key is a symlink loop (skipped)": (lambda s: _loop(s.trust / "operator.pub"), 11),
    # --- the host's state file ------------------------------------------------------------
    "state file is a FIFO": (lambda s: _fifo(s.state), 25),
    "state file is a folder": (lambda s: s.state.mkdir(), 25),
    "state file is 1 GiB": (lambda s: _huge(s.state, 1024**3), 25),
    "state file is not JSON": (lambda s: s.state.write_text("{half a file"), 25),
    "state file is not UTF-8": (lambda s: s.state.write_bytes(b"\xff\xfe"), 25),
    "state file nested 100000 deep": (lambda s: s.state.write_text("[" * 100000), 25),
    "state sequence NaN": (lambda s: s.state.write_text(_state("NaN")), 25),
    "state sequence Infinity": (lambda s: s.state.write_text(_state("Infinity")), 25),
    "state sequence of 5000 digits": (lambda s: s.state.write_text(_state("9" * 5000)), 25),
    "state sequence 2**63": (lambda s: s.state.write_text(_state(str(2**63))), 25),
    "state sequence a string": (lambda s: s.state.write_text(_state('"7"')), 25),
    "state sequence true": (lambda s: s.state.write_text(_state("true")), 25),
    "state of an unknown schema": (lambda s: s.state.write_text('{"schema": 99}'), 25),
    "state is a JSON list": (lambda s: s.state.write_text("[]"), 25),
    # --- anti-rollback ------------------------------------------------------------------------
    "older sequence than accepted": (lambda s: s.state.write_text(_state("6")), 13),
    "same sequence, other manifest": (lambda s: s.state.write_text(_state("5")), 13),
    "schema 1 state: older sequence": (lambda s: s.state.write_text(_state1("9")), 13),
    # --- files in the bundle folder ---------------------------------------------------------
    "1200-deep folder tree in the bundle": (lambda s: _deep(s.bundle / "deep", 1200), 14),
    "unlisted file in wheels/": (lambda s: ((s.bundle / "wheels").mkdir(),
                                            (s.bundle / "wheels" / "overleaf_airgap-99.0-py3-none-any.whl")
                                            .write_bytes(b"x")), 14),
    "file name with an escape code": (lambda s: (s.bundle / "x\x1b[2K\rSignature: good").write_bytes(b"x"), 14),
    "symlink loop in the bundle": (lambda s: _loop(s.bundle / "loop"), 14),
}
MATRIX = {name: code for name, (_, code) in CASES.items()}


def _state(seq: str, sha: str = "a" * 64) -> str:
    """A schema-2 state file whose entry for the test key holds ``seq`` (raw JSON text)."""
    return ('{"schema": 2, "accepted": {}, "by_key": {"overleaf-ce": {"KID": {"sequence": ' + seq +
            ', "bundle_id": "b", "manifest_sha256": "' + sha + '", "accepted_at": "t", "key_id": "KID"}}}}')


def _state1(seq: str) -> str:
    return ('{"schema": 1, "accepted": {"overleaf-ce": {"sequence": ' + seq +
            ', "bundle_id": "b", "manifest_sha256": "' + "a" * 64 + '", "accepted_at": "t"}}}')


@pytest.mark.parametrize("name", list(CASES))
def test_tamper_case_gets_its_exit_code(s, name):
    tamper, code = CASES[name]
    extra = tamper(s)
    extra = extra if isinstance(extra, list) else []
    if s.state.is_file() and b"KID" in s.state.read_bytes():
        s.state.write_bytes(s.state.read_bytes().replace(b"KID", s.kid.encode()))
    r = s.verify(*extra)
    if (s.bundle / "deep").exists():
        _rm_deep(s.bundle / "deep")
    assert r.returncode == code, f"{name}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    assert "unexpected error" not in r.stderr
    assert "\x1b" not in r.stdout + r.stderr and "\r" not in r.stdout + r.stderr  # terminal safety
    assert "\nerror: " in "\n" + r.stderr, r.stderr


def test_json_output_stays_exact(s):
    (s.bundle / "x\x1b[31m").write_bytes(b"x")
    r = s.verify("--json")
    assert r.returncode == 14
    problems = json.loads(r.stdout)["problems"]
    assert problems[0]["name"] == "x\x1b[31m"  # exact in JSON (json.dumps escapes it on the wire)
    assert "\x1b" not in r.stdout and "\\u001b" in r.stdout


def test_plan_differing_from_the_importers_own_is_refused(s):
    plan = json.loads(json.dumps(PLAN))
    plan["steps"][0]["description"] = "something else"
    s.write(manifest_dict(s.kid, plan=plan))
    r = s.verify()
    assert r.returncode == 10 and "install the importer it carries" in r.stderr, r.stderr


# --- concurrency -------------------------------------------------------------------------
def _concurrent_verify(folder: str, trust: str, state: str, barrier, results) -> None:
    os.environ["OVERLEAF_AIRGAP_STATE"] = state
    from importer.images.hoststate import HostState, load_trusted
    from importer.images.verify import BundleFolders, verify_bundle
    from manifests.errors import AirgapError

    try:
        verify_bundle(BundleFolders(Path(folder)), load_trusted([Path(trust)]), HostState.load(Path(state)),
                      now=utc_now(), on_manifest=lambda m, w: barrier.wait(timeout=30))
        results.put(("ok", folder))
    except AirgapError as err:
        results.put((err.exit_code, folder))


def test_concurrent_verifies_of_two_bundles_with_one_sequence_exactly_one_passes(s):
    """Both pass the early check before either records (the barrier makes sure); the check made again
    under the state file's lock refuses the second one."""
    other = s.tmp / "other"
    s.write(manifest_dict(s.kid, bundle_id="fedcba9876543210"), folder=other)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_concurrent_verify, args=(str(f), str(s.trust / "operator.pub"), str(s.state),
                                                          barrier, results)) for f in (s.bundle, other)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(str(results.get(timeout=5)[0]) for _ in procs)
    assert outcomes == ["13", "ok"], outcomes
    state = json.loads(s.state.read_text())
    assert state["by_key"]["overleaf-ce"][s.kid]["sequence"] == 5


def test_state_is_kept_per_signing_key(s):
    """A high sequence signed by one key does not lock out another trusted key's bundles."""
    assert s.verify().returncode == 0
    other = Ed25519PrivateKey.generate()
    (s.trust / "other.pub").write_bytes(public_pem(other.public_key()))
    s.write(manifest_dict(key_id(other.public_key()), sequence=2**63 - 1), key=other)
    assert s.verify().returncode == 0
    s.write(manifest_dict(s.kid, sequence=6))
    r = s.verify()
    assert r.returncode == 0, r.stderr
    keys = json.loads(s.state.read_text())["by_key"]["overleaf-ce"]
    assert keys[s.kid]["sequence"] == 6 and keys[key_id(other.public_key())]["sequence"] == 2**63 - 1
