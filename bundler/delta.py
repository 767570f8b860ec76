"""Delta bundles: leave out the layers an offline host already has.

``overleaf-import inventory`` writes a receipt of what the offline engine holds::

    {"schema": 1, "images": [{"id": "sha256:...", "diff_ids": ["sha256:...", ...], "tags": ["mongo:6.0"]}, ...]}

(other keys are allowed and ignored). A layer is only reusable on the host in its
place: the engine identifies layers by ChainID, the digest of the chain of diff_ids
from the bottom up (the OCI image spec's definition). So a layer is omitted when, in
every image of the bundle that uses it, the chain up to it is present on the host.
``docker load`` of an archive that lacks such layers gives the same image IDs.

    receipt = Receipt.load(path)
    omitted = omitted_layers(images, receipt.chain_ids)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from manifests.bundle import DIGEST_RE

from .registry import UsageError

RECEIPT_SCHEMA = 1


class ReceiptError(UsageError):
    """The --have receipt cannot be read or does not follow the schema."""


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """ChainID of every prefix: ChainID(L0) = L0; ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + Ln)."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


@dataclass(frozen=True)
class Receipt:
    sha256: str
    chain_ids: frozenset[str]
    images: int

    @classmethod
    def load(cls, path: Path) -> "Receipt":
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ReceiptError(f"cannot read the receipt {path}: {exc.strerror}",
                               "Pass the file written by `overleaf-import inventory` on the offline host.") from exc
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: bytes, where: str = "receipt") -> "Receipt":
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReceiptError(f"{where} is not JSON: {exc}",
                               "Pass the file written by `overleaf-import inventory`.") from None
        if not isinstance(obj, dict) or obj.get("schema") != RECEIPT_SCHEMA or not isinstance(obj.get("images"), list):
            raise ReceiptError(f"{where} is not an inventory receipt (schema {RECEIPT_SCHEMA} with an image list)",
                               "Pass the file written by `overleaf-import inventory`.")
        chains: set[str] = set()
        for i, img in enumerate(obj["images"]):
            diffs = img.get("diff_ids") if isinstance(img, dict) else None
            if not isinstance(diffs, list) or not all(isinstance(d, str) and DIGEST_RE.match(d) for d in diffs):
                raise ReceiptError(f"{where}: images[{i}] has no valid diff_ids list")
            chains.update(chain_ids(diffs))
        return cls(hashlib.sha256(data).hexdigest(), frozenset(chains), len(obj["images"]))


def omitted_layers(images: Iterable[Sequence[str]], host_chains: frozenset[str] | set[str]) -> set[str]:
    """diff_ids that every image needing them finds on the host already (given each image's diff_ids)."""
    present: set[str] = set()
    missing: set[str] = set()
    for diff_ids in images:
        for d, chain in zip(diff_ids, chain_ids(diff_ids)):
            (present if chain in host_chains else missing).add(d)
    return present - missing
