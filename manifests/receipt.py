"""The inventory receipt and layer chains: what an offline host holds, one schema for both sides.

``overleaf-import inventory`` writes it (:meth:`Receipt.make` + :func:`receipt_bytes`);
``overleaf-bundle build --have RECEIPT`` reads it (:meth:`Receipt.load`) and leaves out the
layers the host already has. Schema 2::

    {"schema": 2, "created": "2026-07-01T10:00:00Z", "store": "classic" | "containerd",
     "engine": {"version": "26.1.5", "api_version": "1.45", "os": "linux", "arch": "x86_64",
                "storage_driver": "overlayfs", "image_store": "containerd"},
     "images": [{"id": "sha256:...", "tags": ["mongo:8.0"], "diff_ids": ["sha256:...", ...],
                 "manifest_digest": "sha256:..." | null, "repo_digests": ["mongo@sha256:..."]}],
     "accepted": {"overleaf-ce": {"sequence": 7, "bundle_id": "...", ...}}}

``id`` is the engine's image ID: the config digest on the classic store, the manifest (or
index) digest on the containerd store, where ``manifest_digest`` repeats it. Schema 1
receipts (no ``store``) read as ``classic``; other keys are allowed and ignored. The file is
canonical JSON, so its sha256 (a delta bundle's ``delta.receipt_sha256``) is stable.

Which layers a delta may leave out:

* **classic store**: the engine keeps a layer by its ChainID (the digest of the chain of
  diff_ids from the bottom up, :func:`chain_ids`). A layer is omitted when, in every
  image of the bundle that uses it, the chain up to it is present on the host.
* **containerd store**: the content store keeps layer *blobs* by digest. The bundler
  learns a host image's blobs by fetching its manifest (``repo@id``) from a registry
  (:meth:`Receipt.resolve_blobs`); a layer blob is omitted when the host holds it.

    receipt = Receipt.load(Path("receipt.json"))
    omitted = receipt.omitted([(diff_ids, layer_digests), ...])
    chain_ids(["sha256:aa...", "sha256:bb..."])[-1] in receipt.chain_ids
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .bundle import DIGEST_RE, canonical_json
from .errors import ReceiptError
from .limits import LIMITS
from .safeio import loads_json, read_regular

RECEIPT_SCHEMA = 2
RECEIPT_SCHEMAS = (1, 2)
STORES = ("classic", "containerd")
_HINT = "Pass the file written by `overleaf-import inventory` on the offline host."


def _is_digest(text: object) -> bool:
    return isinstance(text, str) and DIGEST_RE.match(text) is not None


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """ChainID of every prefix: ChainID(L0) = L0; ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + Ln)."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def host_chain_ids(layer_lists: Iterable[Sequence[str]]) -> set[str]:
    """The ChainID of every prefix of every diff_id list: the layer chains an engine holds."""
    return {c for diff_ids in layer_lists for c in chain_ids(diff_ids)}


@dataclass(frozen=True)
class HostImage:
    """One image an engine holds: its ID, tags and layer diff_ids (bottom first)."""

    id: str                               # classic: config digest; containerd: manifest (or index) digest
    tags: tuple[str, ...]
    diff_ids: tuple[str, ...]
    repo_digests: tuple[str, ...] = ()

    def to_dict(self, store: str) -> dict[str, Any]:
        return {"id": self.id, "tags": sorted(self.tags), "diff_ids": list(self.diff_ids),
                "manifest_digest": self.id if store == "containerd" else None,
                "repo_digests": sorted(self.repo_digests)}


@dataclass
class Receipt:
    """A parsed receipt; ``blobs`` (containerd) fills in through :meth:`resolve_blobs`."""

    sha256: str
    store: str
    images: tuple[HostImage, ...]
    blobs: set[str] = field(default_factory=set)

    @property
    def chain_ids(self) -> frozenset[str]:
        return frozenset(host_chain_ids(i.diff_ids for i in self.images))

    # --- writing (the offline side) -------------------------------------------------------------
    @staticmethod
    def make(images: Iterable[HostImage], store: str, engine: Mapping[str, str], accepted: Mapping[str, Any],
             created: str) -> dict[str, Any]:
        """The receipt document (a dict; :func:`receipt_bytes` gives its canonical bytes)."""
        if store not in STORES:
            raise ValueError(f"unknown image store {store!r}")
        return {"schema": RECEIPT_SCHEMA, "created": created, "store": store, "engine": dict(engine),
                "images": [i.to_dict(store) for i in sorted(images, key=lambda i: i.id)],
                "accepted": {k: accepted[k] for k in sorted(accepted)}}

    # --- reading (the online side) --------------------------------------------------------------
    @classmethod
    def load(cls, path: Path) -> "Receipt":
        """Read and parse a receipt file (bounded, regular files only); ReceiptError (exit 2) otherwise."""
        path = Path(path)
        try:
            data = read_regular(path, LIMITS.receipt, "the receipt", ReceiptError, follow_symlinks=True, hint=_HINT)
        except FileNotFoundError:
            raise ReceiptError(f"the receipt {path} does not exist", _HINT) from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: bytes, where: str = "receipt") -> "Receipt":
        obj = loads_json(data, where, ReceiptError, _HINT)
        if not isinstance(obj, dict) or obj.get("schema") not in RECEIPT_SCHEMAS \
                or not isinstance(obj.get("images"), list):
            raise ReceiptError(f"{where} is not an inventory receipt (schema 1 or 2 with an image list)", _HINT)
        store = obj.get("store", "classic") if obj["schema"] == 2 else "classic"
        if store not in STORES:
            raise ReceiptError(f"{where}: unknown image store {str(store)[:40]!r}", _HINT)
        images = []
        for k, img in enumerate(obj["images"]):
            if not isinstance(img, dict):
                raise ReceiptError(f"{where}: images[{k}] is not an object", _HINT)
            diffs, tags, iid = img.get("diff_ids"), img.get("tags", []), img.get("id")
            if not isinstance(diffs, list) or not all(_is_digest(d) for d in diffs):
                raise ReceiptError(f"{where}: images[{k}] has no valid diff_ids list", _HINT)
            if not _is_digest(iid):
                raise ReceiptError(f"{where}: images[{k}] has no valid id", _HINT)
            if not isinstance(tags, list) or not all(isinstance(t, str) and len(t) < 300 for t in tags):
                raise ReceiptError(f"{where}: images[{k}] has a bad tag list", _HINT)
            images.append(HostImage(iid, tuple(tags), tuple(diffs)))
        return cls(hashlib.sha256(data).hexdigest(), store, tuple(images))

    def resolve_blobs(self, layers_of: Callable[[str, str], Sequence[str] | None]) -> int:
        """containerd: ask ``layers_of(tag, manifest_digest)`` (a registry) for each host image's layer blobs.

        Returns how many host images were found; images ``layers_of`` does not know (None) add nothing.
        """
        found = 0
        for img in self.images:
            for tag in img.tags:
                layers = layers_of(tag, img.id)
                if layers:
                    self.blobs.update(layers)
                    found += 1
                    break
        return found

    def omitted(self, images: Iterable[tuple[Sequence[str], Sequence[str]]]) -> set[str]:
        """Layer blob digests to leave out, given each bundle image's (diff_ids, layer digests)."""
        images = list(images)
        if self.store == "containerd":
            return {d for _, layers in images for d in layers if d in self.blobs}
        host = self.chain_ids
        present: set[str] = set()
        missing: set[str] = set()
        for diff_ids, layers in images:
            for layer, chain in zip(layers, chain_ids(diff_ids)):
                (present if chain in host else missing).add(layer)
        return present - missing



def receipt_bytes(receipt: Mapping[str, Any]) -> bytes:
    """The receipt's canonical JSON bytes (sorted keys): a stable sha256."""
    return canonical_json(dict(receipt))
