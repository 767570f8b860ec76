"""One image as the builder packs it: its :class:`~manifests.bundle.ImageEntry` and its blob files.

The fetch stage (registry, exact), the local export (engine, re-encoded) and
``--recompress`` each give their own record; :class:`PackedImage` is the one shape the
delta and write phases work on.

    img = PackedImage.from_fetched(fetched, store)
    img.entry()          # what the signed manifest says about it
    img.blobs            # [(BlobEntry, stored file), ...]: manifest, config, layers
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from manifests.bundle import BlobEntry, ImageEntry

if TYPE_CHECKING:
    from .fetch import BlobStore, FetchedImage
    from .recompress import ReencodedImage


@dataclass(frozen=True)
class PackedImage:
    ref: str
    id: str                          # config digest
    diff_ids: tuple[str, ...]
    layers: tuple[str, ...]          # layer blob digests
    platform: str
    manifest_digest: str
    upstream_digest: str | None
    index_entry: dict[str, Any] | None
    exact: bool
    source: str
    blobs: tuple[tuple[BlobEntry, Path], ...]

    @property
    def size(self) -> int:
        return sum(e.size for e, _ in self.blobs)

    def entry(self) -> ImageEntry:
        return ImageEntry(self.ref, self.id, self.diff_ids, self.layers, self.platform, self.manifest_digest,
                          self.upstream_digest, self.index_entry, self.exact, self.source, self.size)

    @classmethod
    def from_fetched(cls, f: "FetchedImage", store: "BlobStore") -> "PackedImage":
        """From :class:`bundler.fetch.FetchedImage`: every blob as the registry served it."""
        blobs = [(BlobEntry(f.manifest_digest, "manifest", f.manifest_media_type, f.manifest_size, "none",
                            f.manifest_size), store.path(f.manifest_digest)),
                 (BlobEntry(f.config.digest, "config", f.config.media_type, f.config.size, "none", f.config.size),
                  store.path(f.config.digest))]
        blobs += [(BlobEntry(d.digest, "layer", d.media_type, d.size, "none", d.size), store.path(d.digest))
                  for d in f.layers]
        return cls(f.ref, f.config.digest, tuple(f.diff_ids), tuple(d.digest for d in f.layers), f.platform,
                   f.manifest_digest, f.upstream_digest, dict(f.index_entry) if f.index_entry else None, True,
                   "registry", tuple(blobs))

    @classmethod
    def from_reencoded(cls, img: "ReencodedImage") -> "PackedImage":
        """From :mod:`bundler.local_export` or :mod:`bundler.recompress`: layers as zstd-stored tars."""
        return cls(img.ref, img.config_digest, img.diff_ids, img.layers, img.platform, img.manifest_digest,
                   img.upstream_digest, None, False, img.source, tuple((b.entry, b.path) for b in img.blobs))
