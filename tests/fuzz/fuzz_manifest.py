"""The manifest parser and validator: BundleManifest.from_bytes must refuse bad bytes with ManifestFormatError."""
from __future__ import annotations

from manifests.bundle import BundleManifest
from manifests.errors import ManifestFormatError

ALLOWED = (ManifestFormatError,)
SEEDS = [
    b'{"format":"overleaf-airgap-bundle","schema":2,"segment_size":4194304,"images":[],"blobs":[],"parts":[],'
    b'"files":[{"name":"wheels/a.whl","size":1,"sha256":"' + b"0" * 64 + b'"}],"payload_size":0,'
    b'"max_part_size":1048576,"sequence":1,"created":"2026-01-01T00:00:00Z","expires":"2026-02-01T00:00:00Z",'
    b'"plan":{"schema":1,"from":"5.5.3","to":"5.5.4","edition":"ce","steps":[],"images":[]},"edition":"ce",'
    b'"bundle_id":"0123456789abcdef","tool_version":"0.1.0","product":"overleaf","from_version":"5.5.3",'
    b'"to_version":"5.5.4","key_id":"ed25519:00","platform":"linux/amd64","catalog_overlay":null}',
    b'{"format":"overleaf-airgap-bundle","schema":2,"sequence":1e999}',
    b"[" * 50,
]


def target(data: bytes) -> None:
    BundleManifest.from_bytes(data)
