"""``overleaf-import inventory``: the receipt of what this offline host holds, for the next delta bundle.

The receipt's schema, and the rules a delta follows, are :mod:`manifests.receipt`'s (the
bundler reads the same module). This module fills it from the engine: every image with its
ID, tags and diff_ids (:class:`importer.images.engine.HostImages`), what the engine is (no local
paths travel out), and the bundles this host accepted. It is canonical JSON, so its
sha256 (a delta bundle's ``delta.receipt_sha256``) is stable. Before a delta is loaded,
:func:`importer.images.load.plan_load` checks that the layer chains it left out are still here.

    receipt = make_receipt(HostImages.scan(client), engine_info(client), HostState.load(), utc_now())
    sha256_hex = write_receipt(Path("receipt.json"), receipt)
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

from manifests.atomic import atomic_write_bytes
from manifests.bundle import iso
from manifests.errors import OutputError
from manifests.receipt import RECEIPT_SCHEMA, Receipt, receipt_bytes

from importer.images.engine import EngineInfo, HostImages
from importer.images.hoststate import HostState

__all__ = ["RECEIPT_SCHEMA", "make_receipt", "write_receipt"]


def make_receipt(host: HostImages, info: EngineInfo, state: HostState, now: datetime) -> dict[str, Any]:
    """The receipt document of this host (schema 2)."""
    return Receipt.make(host.images.values(), info.image_store, info.receipt_dict(),
                        {k: v.to_dict() for k, v in state.accepted.items()}, iso(now))


def write_receipt(path: Path, receipt: dict[str, Any]) -> str:
    """Write atomically; return the sha256 (hex) of the bytes written."""
    data = receipt_bytes(receipt)
    try:
        atomic_write_bytes(Path(path), data, mode=0o644)
    except OSError as exc:
        raise OutputError(f"cannot write the receipt {path}: {exc.strerror}",
                          "Choose a writable --out path (e.g. on the removable medium).") from exc
    return hashlib.sha256(data).hexdigest()
