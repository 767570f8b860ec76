"""The trust rules for a bundle, pure and in one place.

Order (each step only runs when the one before passed):

1. **Signature.** The raw bytes of ``manifest.json`` must carry a valid Ed25519
   signature by one of the host's trusted keys. Nothing in the manifest is read before.
2. **Schema.** The now-authentic bytes must parse into a valid :class:`BundleManifest`,
   whose ``key_id`` must name the key that verified it.
3. **Expiry.** ``now`` must be before ``expires`` (and not absurdly before ``created``):
   stale bundles are refused unless the admin allows it, with a warning.
4. **Anti-rollback.** ``sequence`` must be below 2**63. For the same product, edition
   and signing key, a bundle whose ``sequence`` is lower than the last one this host
   accepted is refused (unless allowed); the same sequence is accepted again only for
   the very same bundle (same manifest hash). :func:`rollback_problem` is the rule;
   the host applies it a second time, under the state file's lock, when it records
   the bundle (importer/images/hoststate.py), so two concurrent runs cannot both pass.
5. **Content.** Every part and file must have the size and sha256 the manifest lists
   (done by the caller while reading: :func:`importer.images.verify.check_contents`, which checks
   parts with :func:`manifests.payload.check_part`).

    m, warnings = verify_manifest(data, sig, {kid: pub}, now=utc_now(), accepted=None)   # or the host's record
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .bundle import BundleManifest, iso, parse_iso
from .errors import ExpiredBundleError, ManifestFormatError, RollbackError, SignatureError
from .signing import verify

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


def verify_manifest(data: bytes, signature: bytes | None, trusted: Mapping[str, Ed25519PublicKey], *,
                    now: datetime, accepted: Accepted | None = None, allow_expired: bool = False,
                    allow_downgrade: bool = False) -> tuple[BundleManifest, list[str]]:
    warnings: list[str] = []
    if not trusted:
        raise SignatureError("no trusted public keys are configured on this host",
                             "Pass --trust PUBKEY, or put the signer's .pub file into the trust folder.")
    if signature is None:
        raise SignatureError("manifest.json.sig is missing", "Copy manifest.json.sig from the original media.")
    if len(signature) != 64:
        raise SignatureError("manifest.json.sig is not an Ed25519 signature (it must be 64 bytes)",
                             "Copy manifest.json.sig again from the original media.")
    signer = next((kid for kid, pub in trusted.items() if verify(pub, signature, data)), None)
    if signer is None:
        raise SignatureError(
            "the manifest's signature does not verify with any trusted key: either the manifest was changed "
            "after signing, or it was signed by a key this host does not trust",
            "Copy manifest.json and manifest.json.sig again; if they are intact, ask the bundle's builder which "
            "key signed it (overleaf-bundle inspect shows the key id) and trust that public key.")
    manifest = BundleManifest.from_bytes(data)
    if manifest.key_id != signer:
        raise SignatureError(f"the manifest names key {manifest.key_id} but was signed by {signer}")
    expires, created = parse_iso(manifest.expires), parse_iso(manifest.created)
    if now >= expires:
        if not allow_expired:
            raise ExpiredBundleError(f"the bundle expired on {manifest.expires} (it is now {iso(now)})",
                                     "Ask for a fresh bundle, or pass --allow-expired if you accept a stale one.")
        warnings.append(f"the bundle expired on {manifest.expires}; accepted because --allow-expired was given")
    if now + CLOCK_SKEW < created:
        warnings.append(f"the bundle was created on {manifest.created}, after this host's clock ({iso(now)}): "
                        "check the clock")
    check_sequence(manifest.sequence)
    digest = hashlib.sha256(data).hexdigest()
    problem = rollback_problem(manifest.sequence, digest, accepted)
    if problem is not None:
        assert accepted is not None
        if not allow_downgrade:
            raise RollbackError(problem, ROLLBACK_HINT)
        warnings.append(f"accepting bundle sequence {manifest.sequence} below the last accepted "
                        f"{accepted.sequence} because --allow-downgrade was given")
    return manifest, warnings


def acceptance(manifest_bytes: bytes, manifest: BundleManifest, now: datetime) -> Accepted:
    return Accepted(manifest.sequence, manifest.bundle_id, hashlib.sha256(manifest_bytes).hexdigest(), iso(now),
                    manifest.key_id)
