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


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    """The first attribute (or key) of ``names`` that ``obj`` has."""
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


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

    def blob(self, digest: str) -> tuple[BlobEntry, Path]:
        for e, p in self.blobs:
            if e.digest == digest:
                return e, p
        raise KeyError(digest)

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
    def from_local(cls, img: Any, *, upstream_digest: str | None = None, source: str = "local") -> "PackedImage":
        """From a re-encoded image (:mod:`bundler.local_export` or :mod:`bundler.recompress`)."""
        blobs = []
        for b in _get(img, "blobs"):
            entry = BlobEntry(_get(b, "digest"), _get(b, "kind"), _get(b, "media_type"), int(_get(b, "size")),
                              _get(b, "encoding"), int(_get(b, "stored_size")))
            blobs.append((entry, Path(_get(b, "path", "stored_path"))))
        config = _get(img, "config_digest", "id")
        return cls(_get(img, "ref"), config, tuple(_get(img, "diff_ids")), tuple(_get(img, "layers")),
                   _get(img, "platform"), _get(img, "manifest_digest"), upstream_digest, None, False, source,
                   tuple(blobs))
