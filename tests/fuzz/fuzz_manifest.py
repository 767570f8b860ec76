"""The manifest's trust rules: BundleTrust over any bytes must refuse bad ones with a documented error.

The importer's entry point for a manifest is :class:`manifests.trust.BundleTrust`. Random bytes
would stop at the signature rule, so the harness signs each input with its own key (trusted
here): the fuzzer reaches the strict parser and every later rule (key id, expiry, the plan
stand-in, anti-rollback against a fixed host record). ManifestFormatError covers the parser's
refusals, SignatureError a manifest naming another key, ExpiredBundleError and RollbackError
the time and sequence rules.
"""
from __future__ import annotations

from datetime import datetime, timezone

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manifests.errors import ExpiredBundleError, ManifestFormatError, RollbackError, SignatureError
from manifests.signing import key_id
from manifests.trust import Accepted, BundleTrust, TrustedBundle

ALLOWED = (ManifestFormatError, SignatureError, ExpiredBundleError, RollbackError)
_KEY = Ed25519PrivateKey.generate()
KEY_ID = key_id(_KEY.public_key())
_KEYS = {KEY_ID: _KEY.public_key()}
NOW = datetime(2026, 1, 15, tzinfo=timezone.utc)
RECORD = {"overleaf-ce": {KEY_ID: Accepted(1, "0123456789abcdef", "0" * 64, "2026-01-02T00:00:00Z", KEY_ID)}}

SEEDS = [
    b'{"format":"overleaf-airgap-bundle","schema":2,"segment_size":4194304,"images":[],"blobs":[],"parts":[],'
    b'"files":[{"name":"wheels/a.whl","size":1,"sha256":"' + b"0" * 64 + b'"}],"payload_size":0,'
    b'"max_part_size":1048576,"sequence":2,"created":"2026-01-01T00:00:00Z","expires":"2026-02-01T00:00:00Z",'
    b'"plan":{"schema":1,"from":"5.5.3","to":"5.5.4","edition":"ce","steps":[],"images":[]},"edition":"ce",'
    b'"bundle_id":"0123456789abcdef","tool_version":"0.1.0","product":"overleaf","from_version":"5.5.3",'
    b'"to_version":"5.5.4","key_id":"' + KEY_ID.encode() + b'","platform":"linux/amd64","catalog_overlay":null}',
    b'{"format":"overleaf-airgap-bundle","schema":2,"sequence":1e999}',
    b"[" * 50,
]


def _no_plan_check(manifest) -> None:
    """The plan rule needs the importer's catalog; the parser and the other rules are what is fuzzed here."""


def trust(data: bytes) -> TrustedBundle:
    return BundleTrust(data, _KEY.sign(data), _KEYS, NOW, record=RECORD).verify(plan_check=_no_plan_check)


def target(data: bytes) -> None:
    trust(data)
