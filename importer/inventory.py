"""The receipt: what the offline host holds, carried out so the next bundle ships only what is missing.

::

    {"schema": 1, "created": "2026-07-01T10:00:00Z",
     "engine": {"version": "20.10.24", "api_version": "1.41", "os": "linux", "arch": "x86_64",
                "storage_driver": "overlay2", "image_store": "graphdriver"},
     "images": [{"id": "sha256:...", "tags": ["mongo:8.0"], "diff_ids": ["sha256:...", ...]}],
     "accepted": {"overleaf-ce": {"sequence": 7, "bundle_id": "...", "manifest_sha256": "...",
                                  "accepted_at": "..."}}}

It is canonical JSON (sorted keys), so its sha256 (which a delta bundle records as
``delta.receipt_sha256``) is stable. ``overleaf-bundle build --have RECEIPT`` leaves
out every layer whose chain (the diff_ids from the bottom up to it) some image here
already has; before loading such a delta, :func:`importer.load.plan_load` checks
that those chains are still here.

    receipt = make_receipt(HostImages.scan(client), engine_info(client), HostState.load())
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

RECEIPT_SCHEMA = 1


def make_receipt(host: HostImages, info: EngineInfo, state: HostState, now: datetime) -> dict[str, Any]:
    images = [{"id": img.id, "tags": sorted(img.tags), "diff_ids": list(img.diff_ids)}
              for img in sorted(host.images.values(), key=lambda i: i.id)]
    return {"schema": RECEIPT_SCHEMA, "created": iso(now), "engine": info.receipt_dict(), "images": images,
            "accepted": {k: v.to_dict() for k, v in sorted(state.accepted.items())}}


def write_receipt(path: Path, receipt: dict[str, Any]) -> str:
    """Write atomically; return the sha256 (hex) of the bytes written."""
    data = canonical_json(receipt)
    try:
        atomic_write_bytes(Path(path), data, mode=0o644)
    except OSError as exc:
        raise OutputError(f"cannot write the receipt {path}: {exc.strerror}",
                          "Choose a writable --out path (e.g. on the removable medium).") from exc
    return hashlib.sha256(data).hexdigest()
