"""The trust rules for a bundle, pure and in one place: :class:`BundleTrust`.

In the spirit of python-tuf's ``TrustedMetadataSet``: one object is handed the raw bytes of
``manifest.json``, the signature bytes, the host's trusted keys, ``now`` and the host's
anti-rollback record (as data: no file is read here), and runs the rules as ordered steps.
Each step is a method that refuses to run before the one before it passed
(:class:`TrustOrderError`, a programming error), and each failure is its own error class:

1. **Size cap** (:meth:`BundleTrust.check_size`). The manifest is at most
   ``LIMITS.manifest`` bytes and the signature at most ``LIMITS.signature``
   (:mod:`manifests.limits`): ManifestFormatError / SignatureError.
2. **Signature** (:meth:`~BundleTrust.check_signature`). The exact bytes must carry a valid
   Ed25519 signature by one of the trusted keys. Nothing in the manifest is read before:
   SignatureError (11).
3. **Parse** (:meth:`~BundleTrust.parse`). The now-authentic bytes are parsed and validated
   strictly, once, into a :class:`BundleManifest`, whose ``key_id`` must name the key that
   verified it: ManifestFormatError (10), SignatureError (11).
4. **Expiry** (:meth:`~BundleTrust.check_expiry`). ``now`` must be before ``expires``
   (a warning when ``created`` is more than a day ahead of ``now``): ExpiredBundleError (12),
   unless the admin allows a stale bundle, with a warning.
5. **Plan check** (:meth:`~BundleTrust.check_plan`). The signed plan must be the plan the
   caller makes itself (the importer passes :func:`importer.images.plan_check.check_plan`):
   PlanMismatchError (10).
6. **Sequence / anti-rollback** (:meth:`~BundleTrust.check_sequence`). ``sequence`` is below
   2**63; for the same product key and signing key, a bundle whose ``sequence`` is lower than
   the last one this host accepted is refused, and the same sequence is accepted again only for
   the very same bundle (same manifest sha256): RollbackError (13), unless allowed. The host
   applies :func:`rollback_problem` a second time, under its state file's lock, when it records
   the bundle (importer/images/hoststate.py), so two concurrent runs cannot both pass.

:meth:`BundleTrust.verify` runs all six and returns a :class:`TrustedBundle`. The contents
(every part and file against the sizes and hashes listed) are checked afterwards by the
caller while reading (:func:`importer.images.verify.check_contents`, and for blobs
:mod:`importer.images.blobs`).

    trusted = BundleTrust(data, sig, {kid: pub}, utc_now(), record={}).verify(plan_check=lambda m: None)
    trusted.manifest.sequence, trusted.warnings, trusted.accepted
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .bundle import BundleManifest, iso, parse_iso
from .errors import ExpiredBundleError, ManifestFormatError, RollbackError, SignatureError
from .limits import LIMITS
from .signing import verify

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

CLOCK_SKEW = timedelta(hours=24)


SEQUENCE_LIMIT = 2**63  # sequences are below this: a signed 10**4299 cannot lock a host out for ever
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Accepted:
    """The last bundle a host accepted for one product key and signing key (kept in its state file).

    ``key_id`` is empty for entries written before the state was kept per signing key.
    """

    sequence: int
    bundle_id: str
    manifest_sha256: str
    accepted_at: str
    key_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        if not self.key_id:
            d.pop("key_id")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Accepted":
        """Strict: raises ValueError (or KeyError/TypeError) for anything this tool would not write."""
        if not isinstance(d, Mapping):
            raise TypeError(f"an accepted-bundle entry must be an object, not {type(d).__name__}")
        seq = d["sequence"]
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < SEQUENCE_LIMIT:
            raise ValueError(f"sequence {str(seq)[:40]!r} is not an integer from 0 to 2**63-1")
        for name in ("bundle_id", "manifest_sha256", "accepted_at"):
            if not isinstance(d[name], str) or len(d[name]) > 200:
                raise ValueError(f"{name} must be a short string")
        if not _HEX64.match(d["manifest_sha256"]):
            raise ValueError("manifest_sha256 must be 64 hex digits")
        kid = d.get("key_id", "")
        if not isinstance(kid, str) or len(kid) > 200:
            raise ValueError("key_id must be a short string")
        return cls(seq, d["bundle_id"], d["manifest_sha256"], d["accepted_at"], kid)


def check_sequence(sequence: int) -> None:
    """The anti-rollback bound: 0 <= sequence < 2**63 (ManifestFormatError otherwise)."""
    if not isinstance(sequence, int) or isinstance(sequence, bool) or not 0 <= sequence < SEQUENCE_LIMIT:
        raise ManifestFormatError(f"manifest: sequence {str(sequence)[:40]} is not below 2**63",
                                  "The bundle was not made by overleaf-airgap; do not use it.")


def rollback_problem(manifest_sequence: int, digest: str, accepted: Accepted | None) -> str | None:
    """Why a bundle (sequence, manifest sha256) would roll back past ``accepted``, or None if it does not."""
    if accepted is None:
        return None
    if manifest_sequence < accepted.sequence:
        what = "older than"
    elif manifest_sequence == accepted.sequence and digest != accepted.manifest_sha256:
        what = "a different bundle with the same sequence number as"
    else:
        return None
    return (f"bundle sequence {manifest_sequence} is {what} the last accepted one "
            f"(sequence {accepted.sequence}, bundle {accepted.bundle_id}): a replayed or rolled-back bundle")


ROLLBACK_HINT = "Use the newest bundle; pass --allow-downgrade only if you mean to go back."


def acceptance(manifest_bytes: bytes, manifest: BundleManifest, now: datetime) -> Accepted:
    """The record a host keeps of ``manifest`` once it accepted it at ``now``."""
    return Accepted(manifest.sequence, manifest.bundle_id, hashlib.sha256(manifest_bytes).hexdigest(), iso(now),
                    manifest.key_id)


Record = Mapping[str, Mapping[str, Accepted]]   # product key -> signing key id ("" = before per-key) -> Accepted


def last_accepted(record: Record, product_key: str, key_id: str | None = None) -> Accepted | None:
    """What a bundle of ``product_key`` signed by ``key_id`` must not roll back past.

    That is the entry of that key, or an entry recorded before the state was kept per key
    (key ``""``), whichever is higher. Without ``key_id``: the highest of any key.
    """
    keys = record.get(product_key, {})
    if key_id is None:
        cands = list(keys.values())
    else:
        cands = [a for a in (keys.get(key_id), keys.get("")) if a is not None]
    return max(cands, key=lambda a: a.sequence) if cands else None


class TrustOrderError(RuntimeError):
    """A step of :class:`BundleTrust` was called out of order or twice (a bug in the caller, not bad input)."""


@dataclass(frozen=True)
class TrustedBundle:
    """What :class:`BundleTrust` hands on once every rule passed."""

    manifest: BundleManifest
    manifest_bytes: bytes
    signer: str
    warnings: tuple[str, ...]
    accepted: Accepted          # the record the host writes once the contents checked out


class BundleTrust:
    """The six trust rules over one bundle's manifest, as ordered steps (see the module docstring).

    ``keys``: trusted key id -> public key. ``record``: the host's anti-rollback record
    (:data:`Record`, e.g. ``HostState.by_key``). Nothing is read from disk here.
    """

    STEPS = ("size", "signature", "parse", "expiry", "plan", "sequence")

    def __init__(self, data: bytes, signature: bytes | None, keys: Mapping[str, Ed25519PublicKey], now: datetime,
                 *, record: Record | None = None) -> None:
        self.data = bytes(data)
        self.signature = None if signature is None else bytes(signature)
        self.keys = dict(keys)
        self.now = now
        self.record: Record = record or {}
        self.done: list[str] = []
        self.warnings: list[str] = []
        self.signer: str | None = None
        self._manifest: BundleManifest | None = None

    def _step(self, name: str) -> None:
        """Refuse ``name`` unless every step before it, and not itself, has run."""
        expected = self.STEPS[len(self.done)] if len(self.done) < len(self.STEPS) else None
        if name != expected:
            if name in self.done:
                raise TrustOrderError(f"trust step {name!r} has run already")
            raise TrustOrderError(f"trust step {name!r} cannot run before {expected!r}")

    def _passed(self, name: str) -> None:
        self.done.append(name)

    @property
    def manifest(self) -> BundleManifest:
        """The parsed manifest: only after :meth:`parse` (it is not trusted for anything before)."""
        if self._manifest is None:
            raise TrustOrderError("the manifest is not parsed before its signature verified (call parse())")
        return self._manifest

    def check_size(self) -> None:
        """Rule 1: both files within their caps, before a byte is hashed or parsed."""
        self._step("size")
        if len(self.data) > LIMITS.manifest:
            raise ManifestFormatError(f"the manifest is {len(self.data)} bytes, more than the "
                                      f"{LIMITS.manifest} allowed: refused",
                                      "It is not a manifest this tool wrote; copy manifest.json again.")
        if self.signature is not None and len(self.signature) > LIMITS.signature:
            raise SignatureError(f"manifest.json.sig is {len(self.signature)} bytes, more than the "
                                 f"{LIMITS.signature} allowed: refused",
                                 "Copy manifest.json.sig again from the original media.")
        self._passed("size")

    def check_signature(self) -> str:
        """Rule 2: a valid Ed25519 signature by a trusted key over the exact bytes; returns that key's id."""
        self._step("signature")
        if not self.keys:
            raise SignatureError("no trusted public keys are configured on this host",
                                 "Pass --trust PUBKEY, or put the signer's .pub file into the trust folder.")
        if self.signature is None:
            raise SignatureError("manifest.json.sig is missing", "Copy manifest.json.sig from the original media.")
        if len(self.signature) != 64:
            raise SignatureError("manifest.json.sig is not an Ed25519 signature (it must be 64 bytes)",
                                 "Copy manifest.json.sig again from the original media.")
        signer = next((kid for kid, pub in self.keys.items() if verify(pub, self.signature, self.data)), None)
        if signer is None:
            raise SignatureError(
                "the manifest's signature does not verify with any trusted key: either the manifest was changed "
                "after signing, or it was signed by a key this host does not trust",
                "Copy manifest.json and manifest.json.sig again; if they are intact, ask the bundle's builder which "
                "key signed it (overleaf-bundle inspect shows the key id) and trust that public key.")
        self.signer = signer
        self._passed("signature")
        return signer

    def parse(self) -> BundleManifest:
        """Rule 3: the authentic bytes parsed and validated strictly, once; the named key must be the signer."""
        self._step("parse")
        manifest = BundleManifest.from_bytes(self.data)
        if manifest.key_id != self.signer:
            raise SignatureError(f"the manifest names key {manifest.key_id} but was signed by {self.signer}",
                                 "The bundle was not made by overleaf-airgap; do not use it.")
        self._manifest = manifest
        self._passed("parse")
        return manifest

    def check_expiry(self, *, allow_expired: bool = False) -> None:
        """Rule 4: ``now`` before ``expires`` (or a warning with ``allow_expired``); a warning for a future ``created``."""
        self._step("expiry")
        m = self.manifest
        expires, created = parse_iso(m.expires), parse_iso(m.created)
        if self.now >= expires:
            if not allow_expired:
                raise ExpiredBundleError(f"the bundle expired on {m.expires} (it is now {iso(self.now)})",
                                         "Ask for a fresh bundle, or pass --allow-expired if you accept a stale one.")
            self.warnings.append(f"the bundle expired on {m.expires}; accepted because --allow-expired was given")
        if self.now + CLOCK_SKEW < created:
            self.warnings.append(f"the bundle was created on {m.created}, after this host's clock "
                                 f"({iso(self.now)}): check the clock")
        self._passed("expiry")

    def check_plan(self, plan_check: Callable[[BundleManifest], None]) -> None:
        """Rule 5: ``plan_check(manifest)`` raises PlanMismatchError when the signed plan is not the caller's own."""
        self._step("plan")
        plan_check(self.manifest)
        self._passed("plan")

    def check_sequence(self, *, allow_downgrade: bool = False) -> Accepted:
        """Rule 6: sequence below 2**63 and no rollback past the record; returns the record to keep."""
        self._step("sequence")
        m = self.manifest
        check_sequence(m.sequence)
        digest = hashlib.sha256(self.data).hexdigest()
        last = last_accepted(self.record, m.product_key, m.key_id)
        problem = rollback_problem(m.sequence, digest, last)
        if problem is not None:
            assert last is not None
            if not allow_downgrade:
                raise RollbackError(problem, ROLLBACK_HINT)
            self.warnings.append(f"accepting bundle sequence {m.sequence} below the last accepted "
                                 f"{last.sequence} because --allow-downgrade was given")
        self._passed("sequence")
        return acceptance(self.data, m, self.now)

    def verify(self, *, plan_check: Callable[[BundleManifest], None], allow_expired: bool = False,
               allow_downgrade: bool = False) -> TrustedBundle:
        """All six rules in order: the :class:`TrustedBundle`, or the first rule's error."""
        self.check_size()
        signer = self.check_signature()
        manifest = self.parse()
        self.check_expiry(allow_expired=allow_expired)
        self.check_plan(plan_check)
        accepted = self.check_sequence(allow_downgrade=allow_downgrade)
        return TrustedBundle(manifest, self.data, signer, tuple(self.warnings), accepted)
