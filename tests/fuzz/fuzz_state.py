"""The anti-rollback state file: HostState.load must refuse bad bytes with StateError."""
from __future__ import annotations

import tempfile
from pathlib import Path

from importer.images.hoststate import HostState
from manifests.errors import StateError

ALLOWED = (StateError,)
_PATH = Path(tempfile.mkdtemp(prefix="fuzz-state-")) / "state.json"
SEEDS = [
    b'{"schema":1,"accepted":{"overleaf-ce":{"sequence":5,"bundle_id":"b","manifest_sha256":"' + b"a" * 64
    + b'","accepted_at":"t"}}}',
    b'{"schema":2,"accepted":{},"by_key":{"overleaf-ce":{"ed25519:k":{"sequence":5,"bundle_id":"b",'
    b'"manifest_sha256":"' + b"a" * 64 + b'","accepted_at":"t","key_id":"ed25519:k"}}}}',
]


def target(data: bytes) -> None:
    _PATH.write_bytes(data)
    state = HostState.load(_PATH)
    _ = state.accepted
    state.get("overleaf-ce", "ed25519:k")
