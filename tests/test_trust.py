"""The trust rules (manifests/trust.py: BundleTrust, each rule, its order) and the host's trust folder and state
file (importer/images/hoststate.py)."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manifests.bundle import canonical_json
from manifests.errors import (ExpiredBundleError, KeyError_, ManifestFormatError, PlanMismatchError, RollbackError,
                              SignatureError, StateError)
from manifests.limits import LIMITS
from manifests.signing import key_id, public_pem
from manifests.trust import Accepted, BundleTrust, TrustOrderError, acceptance, last_accepted

from importer.images.hoststate import HostState, load_trusted

NOW = datetime(2026, 7, 1, 12, 0, 0, tzinfo=timezone.utc)
CFG, LAYER, MAN = "sha256:" + "1" * 64, "sha256:" + "2" * 64, "sha256:" + "3" * 64


def manifest_dict(kid: str, **over) -> dict:
    d = {
        "format": "overleaf-airgap-bundle", "schema": 2, "bundle_id": "b1b1b1b1", "tool_version": "t",
        "product": "overleaf", "edition": "ce", "from_version": "5.5.3", "to_version": "5.5.4",
        "created": "2026-06-01T00:00:00Z", "expires": "2026-08-01T00:00:00Z", "sequence": 5, "key_id": kid,
        "platform": "linux/amd64",
        "plan": {"schema": 1, "from": "5.5.3", "to": "5.5.4", "edition": "ce", "steps": [
            {"id": "01-app-5.5.4", "kind": "app", "description": "d", "images": ["mongo:8.0"]}], "images": ["mongo:8.0"]},
        "images": [{"ref": "mongo:8.0", "id": CFG, "diff_ids": [LAYER], "layers": [LAYER], "platform": "linux/amd64",
                    "manifest_digest": MAN, "upstream_digest": None, "index_entry": None, "exact": False,
                    "source": "local", "size": 3}],
        "blobs": [{"digest": MAN, "kind": "manifest", "media_type": "application/vnd.oci.image.manifest.v1+json",
                   "size": 1, "encoding": "none", "stored_size": 1},
                  {"digest": CFG, "kind": "config", "media_type": "application/vnd.oci.image.config.v1+json",
                   "size": 1, "encoding": "none", "stored_size": 1},
                  {"digest": LAYER, "kind": "layer", "media_type": "application/vnd.oci.image.layer.v1.tar",
                   "size": 1, "encoding": "zstd", "stored_size": 1}],
        "parts": [{"name": "payload.000", "size": 10, "sha256": "0" * 64, "segments": ["0" * 64]}],
        "payload_size": 10, "max_part_size": 10, "segment_size": 4 * 1024 * 1024,
    }
    d.update(over)
    return d


class Signer:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.pub = self.key.public_key()
        self.id = key_id(self.pub)

    def signed(self, **over) -> tuple[bytes, bytes]:
        data = canonical_json(manifest_dict(self.id, **over))
        return data, self.key.sign(data)


@pytest.fixture
def a() -> Signer:
    return Signer()


def no_plan_check(manifest) -> None:
    """The plan rule's stand-in for the pure tests (the importer passes importer.images.plan_check.check_plan)."""


def verify_manifest(data, sig, keys, *, now, accepted=None, allow_expired=False, allow_downgrade=False):
    """All rules through BundleTrust, with ``accepted`` as the host's record for this product (any key)."""
    record = {"overleaf-ce": {"": accepted}} if accepted is not None else {}
    t = BundleTrust(data, sig, keys, now, record=record).verify(plan_check=no_plan_check, allow_expired=allow_expired,
                                                               allow_downgrade=allow_downgrade)
    return t.manifest, list(t.warnings)


def test_good_signature_gives_the_manifest(a):
    data, sig = a.signed()
    m, warnings = verify_manifest(data, sig, {a.id: a.pub}, now=NOW)
    assert m.sequence == 5 and m.product_key == "overleaf-ce" and warnings == []


def test_changed_byte_or_untrusted_key_is_refused(a):
    data, sig = a.signed()
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(data.replace(b'"sequence":5', b'"sequence":6'), sig, {a.id: a.pub}, now=NOW)
    b = Signer()
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(data, sig, {b.id: b.pub}, now=NOW)


def test_signature_is_checked_before_the_json_is_read(a):
    junk = b"{not json at all"
    with pytest.raises(SignatureError):  # not ManifestFormatError: unsigned bytes are never parsed
        verify_manifest(junk, a.key.sign(b"other"), {a.id: a.pub}, now=NOW)
    with pytest.raises(ManifestFormatError):  # signed junk: parsed only after the signature checked out
        verify_manifest(junk, a.key.sign(junk), {a.id: a.pub}, now=NOW)


def test_missing_short_or_no_keys(a):
    data, sig = a.signed()
    with pytest.raises(SignatureError, match="missing"):
        verify_manifest(data, None, {a.id: a.pub}, now=NOW)
    with pytest.raises(SignatureError, match="64 bytes"):
        verify_manifest(data, sig[:63], {a.id: a.pub}, now=NOW)
    with pytest.raises(SignatureError, match="no trusted public keys"):
        verify_manifest(data, sig, {}, now=NOW)


def test_manifest_must_name_the_key_that_signed_it(a):
    b = Signer()
    data = canonical_json(manifest_dict(b.id))  # names b, signed by a; both trusted
    with pytest.raises(SignatureError, match="names key"):
        verify_manifest(data, a.key.sign(data), {a.id: a.pub, b.id: b.pub}, now=NOW)


@pytest.mark.parametrize("over, needle", [
    ({"parts": [{"name": "../payload.000", "size": 10, "sha256": "0" * 64}]}, "not allowed"),
    ({"images": [{"ref": "mongo:8.0 && reboot", "id": CFG, "diff_ids": [LAYER], "platform": "linux/amd64",
                  "upstream_digest": None, "source": "local", "size": 2}]}, "not a valid image reference"),
    ({"schema": 3}, "not supported"),
    ({"expires": "2026-05-01T00:00:00Z"}, "after created"),
    ({"payload_size": 11}, "add up"),
])
def test_signed_but_invalid_manifest_is_refused(a, over, needle):
    data, sig = a.signed(**over)
    with pytest.raises(ManifestFormatError, match=needle):
        verify_manifest(data, sig, {a.id: a.pub}, now=NOW)


def test_expiry_and_clock_warnings(a):
    data, sig = a.signed()
    later = datetime(2026, 8, 1, tzinfo=timezone.utc)
    with pytest.raises(ExpiredBundleError, match="expired on 2026-08-01"):
        verify_manifest(data, sig, {a.id: a.pub}, now=later)
    _, warnings = verify_manifest(data, sig, {a.id: a.pub}, now=later, allow_expired=True)
    assert "--allow-expired" in warnings[0]
    _, warnings = verify_manifest(data, sig, {a.id: a.pub}, now=datetime(2026, 5, 1, tzinfo=timezone.utc))
    assert "check the clock" in warnings[0]


def test_anti_rollback(a):
    data, sig = a.signed()
    same = acceptance(data, verify_manifest(data, sig, {a.id: a.pub}, now=NOW)[0], NOW)
    assert same.manifest_sha256 == hashlib.sha256(data).hexdigest() and same.sequence == 5
    verify_manifest(data, sig, {a.id: a.pub}, now=NOW, accepted=same)  # the very same bundle again: fine
    newer = Accepted(6, "b-2", "f" * 64, "2026-06-02T00:00:00Z")
    with pytest.raises(RollbackError, match="older than"):
        verify_manifest(data, sig, {a.id: a.pub}, now=NOW, accepted=newer)
    twin = Accepted(5, "b-x", "f" * 64, "2026-06-02T00:00:00Z")
    with pytest.raises(RollbackError, match="same sequence"):
        verify_manifest(data, sig, {a.id: a.pub}, now=NOW, accepted=twin)
    _, warnings = verify_manifest(data, sig, {a.id: a.pub}, now=NOW, accepted=newer, allow_downgrade=True)
    assert "--allow-downgrade" in warnings[0]
    older = Accepted(4, "b-0", "e" * 64, "2026-05-02T00:00:00Z")
    assert verify_manifest(data, sig, {a.id: a.pub}, now=NOW, accepted=older)[1] == []


# --- BundleTrust: one object, ordered steps -------------------------------------------------------
def test_steps_refuse_to_run_out_of_order(a):
    data, sig = a.signed()
    t = BundleTrust(data, sig, {a.id: a.pub}, NOW)
    with pytest.raises(TrustOrderError, match="'parse' cannot run before 'size'"):
        t.parse()
    with pytest.raises(TrustOrderError, match="before"):
        _ = t.manifest  # nothing parsed before the signature verified
    t.check_size()
    with pytest.raises(TrustOrderError, match="'sequence' cannot run before 'signature'"):
        t.check_sequence()
    with pytest.raises(TrustOrderError, match="has run already"):
        t.check_size()
    assert t.check_signature() == a.id
    with pytest.raises(TrustOrderError, match="'plan' cannot run before 'parse'"):
        t.check_plan(no_plan_check)
    assert t.parse().sequence == 5
    with pytest.raises(TrustOrderError, match="'sequence' cannot run before 'expiry'"):
        t.check_sequence()
    t.check_expiry()
    with pytest.raises(TrustOrderError, match="'sequence' cannot run before 'plan'"):
        t.check_sequence()
    t.check_plan(no_plan_check)
    acc = t.check_sequence()
    assert t.done == list(BundleTrust.STEPS)
    assert acc == acceptance(data, t.manifest, NOW) and acc.key_id == a.id


def test_a_failed_step_blocks_every_later_one(a):
    data, sig = a.signed()
    t = BundleTrust(data + b" ", sig, {a.id: a.pub}, NOW)
    t.check_size()
    with pytest.raises(SignatureError):
        t.check_signature()
    with pytest.raises(TrustOrderError):  # a caller that swallowed the error still cannot go on
        t.parse()


def test_size_cap_comes_first(a):
    big = b" " * (LIMITS.manifest + 1)
    with pytest.raises(ManifestFormatError, match="more than"):  # not even hashed, so no SignatureError
        BundleTrust(big, b"x" * 64, {a.id: a.pub}, NOW).check_size()
    data, _ = a.signed()
    with pytest.raises(SignatureError, match="more than"):
        BundleTrust(data, b"x" * (LIMITS.signature + 1), {a.id: a.pub}, NOW).check_size()


def test_plan_check_runs_after_expiry_and_before_anti_rollback(a):
    data, sig = a.signed()
    seen = []

    def refuse(manifest):
        seen.append(manifest.bundle_id)
        raise PlanMismatchError("the bundle's plan is not mine")

    newer = {"overleaf-ce": {a.id: Accepted(9, "b9", "f" * 64, "t", a.id)}}
    with pytest.raises(PlanMismatchError):  # not RollbackError: the plan rule comes first
        BundleTrust(data, sig, {a.id: a.pub}, NOW, record=newer).verify(plan_check=refuse)
    assert seen == ["b1b1b1b1"]
    with pytest.raises(ExpiredBundleError):  # expiry before the plan: the checker is never called
        BundleTrust(data, sig, {a.id: a.pub}, datetime(2027, 1, 1, tzinfo=timezone.utc)).verify(plan_check=refuse)
    assert seen == ["b1b1b1b1"]
    with pytest.raises(RollbackError):
        BundleTrust(data, sig, {a.id: a.pub}, NOW, record=newer).verify(plan_check=no_plan_check)


def test_record_is_per_signing_key_with_legacy_floor(a):
    data, sig = a.signed()
    other_key = {"overleaf-ce": {"ed25519:other": Accepted(9, "b9", "f" * 64, "t", "ed25519:other")}}
    assert BundleTrust(data, sig, {a.id: a.pub}, NOW, record=other_key).verify(plan_check=no_plan_check)
    legacy = {"overleaf-ce": {"": Accepted(9, "b9", "f" * 64, "t")}}
    with pytest.raises(RollbackError):
        BundleTrust(data, sig, {a.id: a.pub}, NOW, record=legacy).verify(plan_check=no_plan_check)
    assert last_accepted(other_key, "overleaf-ce").sequence == 9
    assert last_accepted(other_key, "overleaf-ce", a.id) is None


_SIGNER = Signer()
_DATA, _SIG = _SIGNER.signed()
_KEYS = {_SIGNER.id: _SIGNER.pub}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pos=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255), in_sig=st.booleans())
def test_any_changed_byte_is_a_signature_error(pos, flip, in_sig):
    target = bytearray(_SIG if in_sig else _DATA)
    target[pos % len(target)] ^= flip
    data, sig = (_DATA, bytes(target)) if in_sig else (bytes(target), _SIG)
    t = BundleTrust(data, sig, _KEYS, NOW)
    t.check_size()
    with pytest.raises(SignatureError):
        t.check_signature()


@settings(max_examples=150, deadline=None)
@given(seconds=st.integers(min_value=-400 * 86400, max_value=400 * 86400), allow=st.booleans())
def test_expiry_is_exactly_now_before_expires(seconds, allow):
    from datetime import timedelta
    expires = datetime(2026, 8, 1, tzinfo=timezone.utc)
    now = expires + timedelta(seconds=seconds)
    t = BundleTrust(_DATA, _SIG, _KEYS, now)
    if now >= expires and not allow:
        with pytest.raises(ExpiredBundleError):
            t.verify(plan_check=no_plan_check)
    else:
        got = t.verify(plan_check=no_plan_check, allow_expired=allow)
        assert any("--allow-expired" in w for w in got.warnings) == (now >= expires)


@settings(max_examples=150, deadline=None)
@given(last=st.integers(min_value=0, max_value=2**63 - 1), same_digest=st.booleans(), allow=st.booleans())
def test_anti_rollback_over_sequences(last, same_digest, allow):
    digest = hashlib.sha256(_DATA).hexdigest() if same_digest else "f" * 64
    record = {"overleaf-ce": {_SIGNER.id: Accepted(last, "bx", digest, "t", _SIGNER.id)}}
    rolls_back = 5 < last or (5 == last and not same_digest)
    t = BundleTrust(_DATA, _SIG, _KEYS, NOW, record=record)
    if rolls_back and not allow:
        with pytest.raises(RollbackError):
            t.verify(plan_check=no_plan_check)
    else:
        got = t.verify(plan_check=no_plan_check, allow_downgrade=allow)
        assert got.accepted.sequence == 5 and bool(got.warnings) == rolls_back


def test_verify_bundle_parses_the_manifest_once(a, tmp_path, monkeypatch):
    """importer verify feeds BundleTrust once: BundleManifest.from_bytes runs one time per verify."""
    from manifests.bundle import BundleManifest
    from importer.images import verify as verify_mod
    from importer.images.hoststate import TrustedKeys
    data, sig = a.signed()
    (tmp_path / "manifest.json").write_bytes(data)
    (tmp_path / "manifest.json.sig").write_bytes(sig)
    calls = []
    real = BundleManifest.from_bytes.__func__

    def counting(cls, raw):
        calls.append(len(raw))
        return real(cls, raw)

    monkeypatch.setattr(BundleManifest, "from_bytes", classmethod(counting))
    monkeypatch.setattr(verify_mod, "check_plan", no_plan_check)
    state = HostState(tmp_path / "state.json")
    with pytest.raises(verify_mod.IntegrityError):  # the payload is absent: the trust rules passed first
        verify_mod.verify_bundle(verify_mod.BundleFolders(tmp_path), TrustedKeys({a.id: a.pub}), state,
                                 now=NOW)
    assert calls == [len(data)]


# --- the host's files --------------------------------------------------------------------------------
def test_state_file_records_atomically_and_never_lowers(tmp_path):
    path = tmp_path / "var" / "state.json"
    state = HostState.load(path)
    assert state.accepted == {}
    assert state.record("overleaf-ce", Accepted(5, "b5", "a" * 64, "t5"))
    assert not state.record("overleaf-ce", Accepted(3, "b3", "b" * 64, "t3"))  # lower: kept at 5
    assert not state.record("overleaf-ce", Accepted(5, "b5", "a" * 64, "t5b"))
    assert state.record("overleaf-pro", Accepted(1, "p1", "c" * 64, "t1"))
    assert HostState.load(path).get("overleaf-ce").sequence == 5
    other = HostState.load(path)  # a second run that loaded before the first wrote a higher one
    assert state.record("overleaf-ce", Accepted(9, "b9", "d" * 64, "t9"))
    assert not other.record("overleaf-ce", Accepted(7, "b7", "e" * 64, "t7"))
    assert json.loads(path.read_text())["accepted"]["overleaf-ce"]["sequence"] == 9
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_damaged_state_file_is_an_error_not_a_fresh_start(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{half a file")
    with pytest.raises(StateError, match="damaged"):
        HostState.load(path)
    path.write_text(json.dumps({"schema": 1, "accepted": {"overleaf-ce": {"sequence": "x"}}}))
    with pytest.raises(StateError):
        HostState.load(path)


def test_state_file_location_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERLEAF_AIRGAP_STATE", str(tmp_path / "s.json"))
    assert HostState.load().path == tmp_path / "s.json"


def test_trust_folder_and_explicit_keys(tmp_path, monkeypatch):
    a, b = Signer(), Signer()
    folder = tmp_path / "trusted.d"
    folder.mkdir()
    (folder / "a.pub").write_bytes(public_pem(a.pub))
    (folder / "broken.pub").write_text("not a key")
    (folder / "b.pem").write_bytes(public_pem(b.pub))  # not *.pub: ignored
    monkeypatch.setenv("OVERLEAF_AIRGAP_TRUST_DIR", str(folder))
    found = load_trusted([])
    assert set(found.keys) == {a.id} and found.folder == folder
    assert len(found.skipped) == 1 and "broken.pub" in found.skipped[0]
    explicit = load_trusted([folder / "b.pem"])  # --trust replaces the folder
    assert set(explicit.keys) == {b.id} and explicit.folder is None
    with pytest.raises(KeyError_, match="broken.pub"):
        load_trusted([folder / "broken.pub"])
    monkeypatch.setenv("OVERLEAF_AIRGAP_TRUST_DIR", str(tmp_path / "absent"))
    assert load_trusted([]).keys == {}


def test_accepted_round_trips():
    acc = Accepted(3, "b", "a" * 64, "2026-01-01T00:00:00Z")
    assert Accepted.from_dict(json.loads(json.dumps(acc.to_dict()))) == acc
