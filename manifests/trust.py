"""The trust rules for a bundle, pure and in one place.

Order (each step only runs when the one before passed):

1. **Signature.** The raw bytes of ``manifest.json`` must carry a valid Ed25519
   signature by one of the host's trusted keys. Nothing in the manifest is read before.
2. **Schema.** The now-authentic bytes must parse into a valid :class:`BundleManifest`,
   whose ``key_id`` must name the key that verified it.
3. **Expiry.** ``now`` must be before ``expires`` (and not absurdly before ``created``):
   stale bundles are refused unless the admin allows it, with a warning.
4. **Anti-rollback.** For the same product and edition, a bundle whose ``sequence`` is
   lower than the last one this host accepted is refused (unless allowed); the same
   sequence is accepted again only for the very same bundle (same manifest hash).
5. **Content.** Every part and file must have the size and sha256 the manifest lists
   (done by the caller while reading, with :func:`check_file`).

    m, warnings = verify_manifest(data, sig, {kid: pub}, now=utc_now(), accepted=state.get(key))
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .bundle import BundleManifest, iso, parse_iso
from .errors import ExpiredBundleError, RollbackError, SignatureError
from .signing import verify

CLOCK_SKEW = timedelta(hours=24)


@dataclass(frozen=True)
class Accepted:
    """The last bundle a host accepted for one product key (kept in its state file)."""

    sequence: int
    bundle_id: str
    manifest_sha256: str
    accepted_at: str

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Accepted":
        return cls(int(d["sequence"]), str(d["bundle_id"]), str(d["manifest_sha256"]), str(d["accepted_at"]))


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
    digest = hashlib.sha256(data).hexdigest()
    if accepted is not None:
        if manifest.sequence < accepted.sequence or (
                manifest.sequence == accepted.sequence and digest != accepted.manifest_sha256):
            what = ("older than" if manifest.sequence < accepted.sequence
                    else "a different bundle with the same sequence number as")
            if not allow_downgrade:
                raise RollbackError(
                    f"bundle sequence {manifest.sequence} is {what} the last accepted one "
                    f"(sequence {accepted.sequence}, bundle {accepted.bundle_id}): a replayed or rolled-back bundle",
                    "Use the newest bundle; pass --allow-downgrade only if you mean to go back.")
            warnings.append(f"accepting bundle sequence {manifest.sequence} below the last accepted "
                            f"{accepted.sequence} because --allow-downgrade was given")
    return manifest, warnings


def acceptance(manifest_bytes: bytes, manifest: BundleManifest, now: datetime) -> Accepted:
    return Accepted(manifest.sequence, manifest.bundle_id, hashlib.sha256(manifest_bytes).hexdigest(), iso(now))
