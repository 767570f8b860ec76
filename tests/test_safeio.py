"""Bounded non-blocking reads and strict JSON (manifests/safeio.py); terminal-safe printing (manifests/console.py);
the per-key, locked anti-rollback state (importer/images/hoststate.py)."""
from __future__ import annotations

import json
import os

import pytest

from importer.images.hoststate import HostState
from manifests.console import safe, safe_lines
from manifests.errors import IntegrityError, RollbackError, StateError
from manifests.safeio import loads_json, read_regular
from manifests.trust import Accepted


def test_read_regular_reads_a_regular_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert read_regular(p, 3, "the file") == b"abc"
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "absent", 3, "the file")


@pytest.mark.parametrize("make,match", [
    (lambda p: os.mkfifo(p), "FIFO"),
    (lambda p: p.mkdir(), "folder"),
    (lambda p: p.write_bytes(b"x" * 11), "more than the 10 B allowed"),
    (lambda p: p.symlink_to(p.name), "symbolic link"),
    (lambda p: (p.with_name("t").write_bytes(b"x"), p.symlink_to("t")), "symbolic link"),
])
def test_read_regular_refuses_without_blocking(tmp_path, make, match):
    p = tmp_path / "f"
    make(p)
    with pytest.raises(IntegrityError, match=match) as info:
        read_regular(p, 10, "the thing")
    assert "the thing" in info.value.message and str(p) in info.value.message


def test_read_regular_follows_links_only_when_asked(tmp_path):
    (tmp_path / "t").write_bytes(b"key")
    (tmp_path / "l").symlink_to("t")
    assert read_regular(tmp_path / "l", 10, "k", follow_symlinks=True) == b"key"
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(StateError, match="symbolic link loop"):
        read_regular(tmp_path / "loop", 10, "k", StateError, follow_symlinks=True)


@pytest.mark.parametrize("data,match", [
    (b"NaN", "NaN is not allowed"), (b"[-Infinity]", "Infinity is not allowed"), (b"[1e999]", "out of range"),
    (b"1" * 20, "20-digit"), (b"[" * 100000, "nested too deeply"), (b"\xff", "not UTF-8"), (b"{", "not valid JSON"),
])
def test_loads_json_is_strict(data, match):
    with pytest.raises(StateError, match=match):
        loads_json(data, "the state file", StateError)
    assert loads_json(b'{"a": [1, 2.5, "x", null, true]}', "x", StateError) == {"a": [1, 2.5, "x", None, True]}
    assert loads_json(b"9" * 19, "x", StateError) == int("9" * 19)


def test_safe_escapes_every_control_character():
    hostile = "ok\x1b[2K\rSignature: good\n\t\x00\x7f\x9b31m\u202eevil\u200b"
    shown = safe(hostile)
    assert all(ord(c) >= 0x20 and not 0x7f <= ord(c) <= 0x9f for c in shown)
    assert shown == "ok\\x1b[2K\\rSignature: good\\n\\t\\x00\\x7f\\x9b31m\\u202eevil\\u200b"
    assert safe("Überprüfung 5.5.8 — ok") == "Überprüfung 5.5.8 — ok"
    assert safe_lines("a\nb\x1b") == "a\nb\\x1b"
    assert safe(42) == "42"


def _acc(seq: int, kid: str = "ed25519:a", sha: str = "a") -> Accepted:
    return Accepted(seq, f"b{seq}", sha * 64, "t", kid)


def test_accept_checks_and_records_under_the_lock(tmp_path):
    path = tmp_path / "state.json"
    first, second = HostState.load(path), HostState.load(path)  # both loaded before either recorded
    assert first.accept("overleaf-ce", _acc(5))
    with pytest.raises(RollbackError, match="same sequence"):
        second.accept("overleaf-ce", _acc(5, sha="b"))
    with pytest.raises(RollbackError, match="older than"):
        second.accept("overleaf-ce", _acc(4, sha="c"))
    assert not second.accept("overleaf-ce", _acc(5))  # the very same bundle again: fine, nothing to write
    assert not second.accept("overleaf-ce", _acc(3, sha="d"), allow_downgrade=True)  # allowed, never lowered
    assert second.accept("overleaf-ce", _acc(1, kid="ed25519:b"))  # another key: its own sequence
    d = json.loads(path.read_text())
    assert d["schema"] == 2 and d["accepted"]["overleaf-ce"]["sequence"] == 5
    assert set(d["by_key"]["overleaf-ce"]) == {"ed25519:a", "ed25519:b"}
    assert HostState.load(path).get("overleaf-ce", "ed25519:b").sequence == 1
    assert HostState.load(path).get("overleaf-ce").sequence == 5


def test_accept_refuses_sequences_from_2_to_the_63(tmp_path):
    from manifests.errors import ManifestFormatError

    with pytest.raises(ManifestFormatError, match="2\\*\\*63"):
        HostState.load(tmp_path / "s.json").accept("overleaf-ce", _acc(2**63))


def test_a_schema_1_state_file_is_a_floor_for_every_key(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema": 1, "accepted": {"overleaf-ce": {
        "sequence": 7, "bundle_id": "b", "manifest_sha256": "e" * 64, "accepted_at": "t"}}}))
    state = HostState.load(path)
    assert state.get("overleaf-ce", "ed25519:any").sequence == 7
    with pytest.raises(RollbackError):
        state.accept("overleaf-ce", _acc(6))
    assert state.accept("overleaf-ce", _acc(8))
    assert HostState.load(path).get("overleaf-ce", "ed25519:other").sequence == 7  # the old floor stays


@pytest.mark.parametrize("entry", [
    {"sequence": True}, {"sequence": 5.0}, {"sequence": -1}, {"sequence": 2**63}, {"manifest_sha256": "zz"},
    {"bundle_id": 5}, {"key_id": "ed25519:other"},
])
def test_damaged_state_entries_are_refused(tmp_path, entry):
    good = {"sequence": 5, "bundle_id": "b", "manifest_sha256": "a" * 64, "accepted_at": "t", "key_id": "ed25519:a"}
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema": 2, "accepted": {}, "by_key": {"overleaf-ce": {"ed25519:a": {**good, **entry}}}}))
    with pytest.raises(StateError, match="damaged"):
        HostState.load(path)


def test_manifest_and_receipt_parsers_refuse_infinite_numbers():
    """``1e999`` would become ``inf`` with plain json.loads: the bundle and receipt readers share the strict one."""
    from manifests.bundle import BundleManifest
    from manifests.errors import ManifestFormatError, ReceiptError
    from manifests.receipt import Receipt

    with pytest.raises(ManifestFormatError, match="out of range"):
        BundleManifest.from_bytes(b'{"schema": 2, "size": 1e999}')
    with pytest.raises(ReceiptError, match="out of range"):
        Receipt.parse(b'{"schema": 2, "images": [], "x": 1e999}')


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 17])
def test_sha256_file_counts_and_hashes_across_block_edges(tmp_path, size):
    """The one file hasher: size and digest equal hashlib's over the whole file, whatever the block edges;
    ``on_bytes`` sees every byte once."""
    import hashlib

    from manifests.safeio import sha256_file

    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    seen: list[int] = []
    assert sha256_file(path, seen.append, read_size=4096) == (size, hashlib.sha256(data).hexdigest())
    assert sum(seen) == size and all(0 < n <= 4096 for n in seen)
