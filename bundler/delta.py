"""Delta bundles: leave out the layers an offline host already has.

``overleaf-import inventory`` writes a receipt of what the offline engine holds::

    {"schema": 2, "store": "classic" | "containerd",
     "images": [{"id": "sha256:...", "diff_ids": ["sha256:...", ...], "tags": ["mongo:6.0"]}, ...]}

(schema 1 receipts, from before the engine's store was recorded, read as ``classic``;
other keys are allowed and ignored).

* **classic store**: a layer is only reusable on the host in its place: the engine
  identifies layers by ChainID, the digest of the chain of diff_ids from the bottom up
  (the OCI image spec's definition). So a layer is omitted when, in every image of the
  bundle that uses it, the chain up to it is present on the host; ``docker load`` of a
  docker-archive that lacks such layers gives the same image IDs.
* **containerd store**: the content store keeps the layer *blobs* by their digest, and an
  image's ID is its manifest digest. The bundler learns which blobs a host image holds by
  fetching that manifest (``repo@id``) from the registry (:meth:`Receipt.resolve_blobs`);
  a layer blob is omitted when the host holds it. Images the registry does not know
  (re-encoded ones) simply contribute nothing.

    receipt = Receipt.load(path)
    omitted = receipt.omitted([(diff_ids, layer_digests), ...])
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from manifests.bundle import DIGEST_RE, strict_json
from manifests.errors import ManifestFormatError

from .registry import UsageError

RECEIPT_SCHEMAS = (1, 2)
RECEIPT_MAX_BYTES = 64 * 1024 * 1024
STORES = ("classic", "containerd")


class ReceiptError(UsageError):
    """The --have receipt cannot be read or does not follow the schema."""


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """ChainID of every prefix: ChainID(L0) = L0; ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + Ln)."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


@dataclass(frozen=True)
class HostImage:
    id: str
    diff_ids: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass
class Receipt:
    sha256: str
    store: str
    images: tuple[HostImage, ...]
    blobs: set[str] = field(default_factory=set)   # containerd: layer blobs the host is known to hold

    @property
    def chain_ids(self) -> frozenset[str]:
        return frozenset(c for i in self.images for c in chain_ids(i.diff_ids))

    @classmethod
    def load(cls, path: Path) -> "Receipt":
        from manifests.payload import open_regular
        from manifests.errors import BundleError

        path = Path(path)
        try:
            with open_regular(path, "the receipt") as fh:
                data = fh.read(RECEIPT_MAX_BYTES + 1)
        except BundleError as exc:
            raise ReceiptError(exc.message, "Pass the file written by `overleaf-import inventory` on the "
                               "offline host.") from None
        if len(data) > RECEIPT_MAX_BYTES:
            raise ReceiptError(f"the receipt {path} is larger than {RECEIPT_MAX_BYTES} bytes",
                               "Pass the file written by `overleaf-import inventory`.")
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: bytes, where: str = "receipt") -> "Receipt":
        hint = "Pass the file written by `overleaf-import inventory`."
        try:
            obj = strict_json(data, where)
        except ManifestFormatError as exc:
            raise ReceiptError(exc.message, hint) from None
        if not isinstance(obj, dict) or obj.get("schema") not in RECEIPT_SCHEMAS \
                or not isinstance(obj.get("images"), list):
            raise ReceiptError(f"{where} is not an inventory receipt (schema 1 or 2 with an image list)", hint)
        store = obj.get("store", "classic") if obj["schema"] == 2 else "classic"
        if store not in STORES:
            raise ReceiptError(f"{where}: unknown image store {str(store)[:40]!r}", hint)
        images = []
        for k, img in enumerate(obj["images"]):
            if not isinstance(img, dict):
                raise ReceiptError(f"{where}: images[{k}] is not an object", hint)
            diffs, tags, iid = img.get("diff_ids"), img.get("tags", []), img.get("id")
            if not isinstance(diffs, list) or not all(isinstance(d, str) and DIGEST_RE.match(d) for d in diffs):
                raise ReceiptError(f"{where}: images[{k}] has no valid diff_ids list", hint)
            if not isinstance(iid, str) or not DIGEST_RE.match(iid):
                raise ReceiptError(f"{where}: images[{k}] has no valid id", hint)
            if not isinstance(tags, list) or not all(isinstance(t, str) and len(t) < 300 for t in tags):
                raise ReceiptError(f"{where}: images[{k}] has a bad tag list", hint)
            images.append(HostImage(iid, tuple(diffs), tuple(tags)))
        return cls(hashlib.sha256(data).hexdigest(), store, tuple(images))

    def resolve_blobs(self, layers_of: Callable[[str, str], Sequence[str] | None]) -> int:
        """containerd: ask ``layers_of(tag, manifest_digest)`` (the registry) for each host image's layer blobs."""
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


def omitted_layers(images: Iterable[Sequence[str]], host_chains: frozenset[str] | set[str]) -> set[str]:
    """diff_ids that every image needing them finds on the host already (given each image's diff_ids)."""
    present: set[str] = set()
    missing: set[str] = set()
    for diff_ids in images:
        for d, chain in zip(diff_ids, chain_ids(diff_ids)):
            (present if chain in host_chains else missing).add(d)
    return present - missing
