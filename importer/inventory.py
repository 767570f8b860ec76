"""The receipt: what the offline host holds, carried out so the next bundle ships only what is missing.

Schema 2 (read by ``bundler/delta.py``)::

    {"schema": 2, "created": "2026-07-01T10:00:00Z", "store": "classic" | "containerd",
     "engine": {"version": "26.1.5", "api_version": "1.45", "os": "linux", "arch": "x86_64",
                "storage_driver": "overlayfs", "image_store": "containerd"},
     "images": [{"id": "sha256:...", "tags": ["mongo:8.0"], "diff_ids": ["sha256:...", ...],
                 "manifest_digest": "sha256:..." | null, "repo_digests": ["mongo@sha256:..."]}],
     "accepted": {"overleaf-ce": {"sequence": 7, "bundle_id": "...", "manifest_sha256": "...",
                                  "accepted_at": "..."}}}

``id`` is the engine's image ID: the config digest on the classic store, the manifest
(or index) digest on the containerd store, where ``manifest_digest`` repeats it (null
on the classic store). ``diff_ids`` are the layer diff_ids bottom up on both.

It is canonical JSON (sorted keys), so its sha256 (which a delta bundle records as
``delta.receipt_sha256``) is stable. ``overleaf-bundle build --have RECEIPT`` leaves
out layers the host holds; before loading such a delta, :func:`importer.load.plan_load`
checks that their diff_id chains are still here (on both stores).

    receipt = make_receipt(HostImages.scan(client), engine_info(client), HostState.load(), utc_now())
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

from manifests.atomic import atomic_write_bytes
from manifests.bundle import canonical_json, iso
from manifests.errors import OutputError

from .engine import EngineInfo, HostImages
from .hoststate import HostState

RECEIPT_SCHEMA = 2


def make_receipt(host: HostImages, info: EngineInfo, state: HostState, now: datetime) -> dict[str, Any]:
    containerd = info.image_store == "containerd"
    images = [{"id": img.id, "tags": sorted(img.tags), "diff_ids": list(img.diff_ids),
               "manifest_digest": img.id if containerd else None, "repo_digests": sorted(img.repo_digests)}
              for img in sorted(host.images.values(), key=lambda i: i.id)]
    return {"schema": RECEIPT_SCHEMA, "created": iso(now), "store": info.image_store, "engine": info.receipt_dict(),
            "images": images, "accepted": {k: v.to_dict() for k, v in sorted(state.accepted.items())}}


def write_receipt(path: Path, receipt: dict[str, Any]) -> str:
    """Write atomically; return the sha256 (hex) of the bytes written."""
    data = canonical_json(receipt)
    try:
        atomic_write_bytes(Path(path), data, mode=0o644)
    except OSError as exc:
        raise OutputError(f"cannot write the receipt {path}: {exc.strerror}",
                          "Choose a writable --out path (e.g. on the removable medium).") from exc
    return hashlib.sha256(data).hexdigest()
