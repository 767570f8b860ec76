"""Re-encoded images: uncompressed layer tars stored zstd-compressed, under an OCI manifest we write.

Format 2 carries most images upstream-exact. Two kinds of image are *re-encoded*
instead: images that exist only in a local engine (:mod:`bundler.local_export`) and,
with ``--recompress zstd``, registry images whose gzip layers are traded for smaller
zstd ones. A re-encoded image is:

* its config blob, byte for byte (so the config digest, the classic store's image ID,
  is unchanged);
* each layer as the UNCOMPRESSED layer tar, whose blob digest therefore equals the
  config's ``diff_id`` (checked here), kept in the blob store zstd-compressed as
  ``<root>/blobs/sha256/<hex>.zst`` with a small ``<hex>.zst.json`` beside it (sizes;
  written last, so a ``.zst`` without its ``.json`` does not count);
* an OCI image manifest written by :func:`oci_manifest` (canonical JSON, so the same
  config and layers always give the same manifest digest), media types
  ``application/vnd.oci.image.config.v1+json`` and ``application/vnd.oci.image.layer.v1.tar``.

The blob store is :class:`bundler.fetch.BlobStore`'s layout (``<root>/blobs/sha256/<hex>``
for plain blobs); the ``.zst`` forms sit beside the plain ones. Every file is written
to a temporary name, fsynced and renamed; a finished entry is reused (resume).

    image = recompress_image(store_root, "mongo:8.0", manifest_digest)   # gzip layers -> .zst
    image.manifest_digest, image.layers == image.diff_ids, image.blob_entries()

:func:`write_zstd_blob` and :func:`oci_manifest` are the two pieces local exports share.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import zstandard

from manifests.atomic import atomic_write_bytes
from manifests.bundle import (DIGEST_RE, LAYER_TYPES, MANIFEST_TYPES, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST,
                              BlobEntry, ImageEntry)
from manifests.errors import ReencodeError
from manifests.payload import zstd_decompressor

CHUNK = 1024 * 1024
ZSTD_LEVEL = 3
ZSTD_JOB_SIZE = 2 * 1024 * 1024      # small multi-threaded jobs keep zstd's buffers small (bench/ measured it)
MAX_SMALL_BLOB = 64 * 1024 * 1024     # a manifest or config larger than this is refused
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_OUT_LIMIT = 4 * 1024 * 1024          # decompressed bytes per step: bounds memory even for a gzip bomb


# --- the blob store's paths ---------------------------------------------------------------------
def _hex(digest: str) -> str:
    if not DIGEST_RE.match(digest or ""):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest[7:]


def blob_path(root: Path, digest: str) -> Path:
    """``<root>/blobs/sha256/<hex>``: a plain blob (the layout of :class:`bundler.fetch.BlobStore`)."""
    return Path(root) / "blobs" / "sha256" / _hex(digest)


def zstd_path(root: Path, digest: str) -> Path:
    """``<root>/blobs/sha256/<hex>.zst``: the blob zstd-compressed (``<hex>`` = digest of the blob itself)."""
    return Path(root) / "blobs" / "sha256" / f"{_hex(digest)}.zst"


def _meta_path(root: Path, digest: str) -> Path:
    return Path(root) / "blobs" / "sha256" / f"{_hex(digest)}.zst.json"


def _tmp_path(folder: Path, suffix: str) -> Path:
    return folder / f".tmp-{secrets.token_hex(8)}{suffix}"


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class ZstdBlob:
    """A blob kept zstd-compressed in the store."""

    digest: str          # sha256 of the blob (the uncompressed content)
    size: int            # bytes of the blob
    stored_size: int     # bytes of the .zst file
    path: Path


def stored_zstd(root: Path, digest: str) -> ZstdBlob | None:
    """The finished ``.zst`` entry of ``digest``, or None (absent, unfinished or inconsistent)."""
    try:
        meta = json.loads(_meta_path(root, digest).read_bytes())
        path = zstd_path(root, digest)
        if meta.get("digest") != digest or path.stat().st_size != meta["stored_size"]:
            return None
        return ZstdBlob(digest, int(meta["size"]), int(meta["stored_size"]), path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def compressor() -> zstandard.ZstdCompressor:
    """zstd level 3, multi-threaded (all cores) in 2 MiB jobs."""
    params = zstandard.ZstdCompressionParameters.from_level(ZSTD_LEVEL, threads=-1, job_size=ZSTD_JOB_SIZE)
    return zstandard.ZstdCompressor(compression_params=params)


class _CountingWriter:
    """Counts what zstd writes into the file below."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.size = 0

    def write(self, data) -> int:
        self.size += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def write_zstd_blob(root: Path, chunks: Iterable[bytes], *, expect: str | None = None, what: str = "a layer",
                    on_bytes: Callable[[int], None] | None = None) -> ZstdBlob:
    """Hash and zstd-compress a stream of blob bytes into ``<hex>.zst`` (+ ``.zst.json``); return the entry.

    The digest is that of the bytes read. With ``expect``, a different digest raises
    :class:`ReencodeError` and nothing is kept. An entry already in the store is kept
    as it is (the new copy is dropped). Memory stays bounded whatever the size.
    """
    folder = Path(root) / "blobs" / "sha256"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(folder, ".zst")
    h = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as fh:
            counter = _CountingWriter(fh)
            with compressor().stream_writer(counter, closefd=False) as zw:
                for chunk in chunks:
                    h.update(chunk)
                    zw.write(chunk)
                    size += len(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
            digest = "sha256:" + h.hexdigest()
            if expect is not None and digest != expect:
                raise ReencodeError(f"{what} should be {expect} (its diff_id) but its content hashes to {digest}",
                                    "The image is damaged where it came from: remove it and pull (or build) it again.")
            have = stored_zstd(root, digest)
            if have is not None:
                return have
            fh.flush()
            os.fsync(fh.fileno())
        path = zstd_path(root, digest)
        os.replace(tmp, path)
        meta = {"schema": 1, "digest": digest, "size": size, "stored_size": counter.size}
        atomic_write_bytes(_meta_path(root, digest), json.dumps(meta, sort_keys=True).encode())
        return ZstdBlob(digest, size, counter.size, path)
    finally:
        _unlink(tmp)


def write_plain_blob(root: Path, data: bytes) -> Path:
    """Store a small blob (a manifest or config) as ``<root>/blobs/sha256/<hex>``, atomically; return the path."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_path(root, digest)
    if path.is_file() and path.stat().st_size == len(data):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


# --- the manifest ---------------------------------------------------------------------------------
def oci_manifest(config_digest: str, config_size: int, layers: Iterable[tuple[str, int]], *,
                 config_media_type: str = OCI_CONFIG) -> bytes:
    """The OCI image manifest of a re-encoded image: canonical JSON (sorted keys, no spaces), deterministic.

    ``layers`` are ``(digest, size)`` of the UNCOMPRESSED layer tars, bottom first.
    """
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_media_type, "digest": _checked(config_digest), "size": int(config_size)},
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": _checked(d), "size": int(s)} for d, s in layers],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _checked(digest: str) -> str:
    _hex(digest)
    return digest


# --- decompression ----------------------------------------------------------------------------------
def sniff(head: bytes) -> str | None:
    """``"gzip"``, ``"zstd"`` or ``"none"`` (a plain tar) from a layer file's first bytes; None: not a layer."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if len(head) >= 263 and head[257:262] == b"ustar":
        return "none"
    if len(head) >= 512 and not any(head[:512]):   # an empty tar: just the end-of-archive blocks
        return "none"
    return None


def decompressed(chunks: Iterable[bytes], compression: str) -> Iterator[bytes]:
    """The decompressed bytes of a gzip / zstd / plain stream, in bounded pieces; truncation raises."""
    if compression == "none":
        yield from chunks
        return
    if compression == "gzip":
        yield from _gunzip(chunks)
        return
    if compression == "zstd":
        yield from _unzstd(chunks)
        return
    raise ValueError(f"unknown compression {compression!r}")


def _gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    d = zlib.decompressobj(wbits=31)
    for chunk in chunks:
        data = bytes(chunk)
        while data:
            if d.eof:   # a multi-member gzip stream: the next member starts here
                if not data.strip(b"\0"):
                    break   # zero padding after the last member, as some tools write
                d = zlib.decompressobj(wbits=31)
            out = d.decompress(data, _OUT_LIMIT)
            if out:
                yield out
            data = d.unused_data if d.eof else d.unconsumed_tail
    if not d.eof:
        tail = d.flush()
        if tail:
            yield tail
    if not d.eof:
        raise ReencodeError("a gzip-compressed layer is cut short (or is not gzip)",
                            "Fetch (or export) the image again.")


def _unzstd(chunks: Iterable[bytes]) -> Iterator[bytes]:
    dctx = zstd_decompressor()
    src = _IterReader(chunks)
    try:
        reader = dctx.stream_reader(src, read_size=CHUNK, read_across_frames=True)
        while True:
            out = reader.read(_OUT_LIMIT)
            if not out:
                break
            yield out
    except zstandard.ZstdError as exc:
        raise ReencodeError(f"a zstd-compressed layer cannot be decompressed: {exc}",
                            "Fetch (or export) the image again.") from None


class _IterReader:
    """A read()-able view of an iterable of byte chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while not self._buf:
            try:
                self._buf = bytes(next(self._it))
            except StopIteration:
                return b""
        if n is None or n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            yield chunk


# --- the result ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredBlob:
    """One blob of a re-encoded image, as the bundle will carry it."""

    digest: str
    kind: str            # "manifest", "config" or "layer"
    media_type: str
    size: int            # bytes of the blob
    encoding: str        # "none" (manifest, config) or "zstd" (layers)
    stored_size: int     # bytes of the stored file
    path: Path           # the stored file (plain blob or .zst)

    @property
    def entry(self) -> BlobEntry:
        return BlobEntry(self.digest, self.kind, self.media_type, self.size, self.encoding, self.stored_size)


@dataclass(frozen=True)
class ReencodedImage:
    """An image in re-encoded form, all of its blobs in the store."""

    ref: str
    manifest_bytes: bytes
    manifest_digest: str
    config_digest: str
    diff_ids: tuple[str, ...]
    layers: tuple[str, ...]          # layer blob digests: equal to diff_ids
    platform: str
    blobs: tuple[StoredBlob, ...]    # manifest, config, then the layers in order (each blob once)
    source: str                      # "local" (from an engine) or "registry" (--recompress)
    upstream_digest: str | None = None

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)

    def blob_entries(self) -> list[BlobEntry]:
        return [b.entry for b in self.blobs]

    def image_entry(self) -> ImageEntry:
        return ImageEntry(ref=self.ref, id=self.config_digest, diff_ids=self.diff_ids, layers=self.layers,
                          platform=self.platform, manifest_digest=self.manifest_digest,
                          upstream_digest=self.upstream_digest, index_entry=None, exact=False, source=self.source,
                          size=self.size)

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "manifest_digest": self.manifest_digest, "config_digest": self.config_digest,
                "diff_ids": list(self.diff_ids), "platform": self.platform, "source": self.source,
                "upstream_digest": self.upstream_digest,
                "blobs": [{"digest": b.digest, "kind": b.kind, "media_type": b.media_type, "size": b.size,
                           "encoding": b.encoding, "stored_size": b.stored_size} for b in self.blobs]}


def config_platform(config: Mapping[str, Any]) -> str:
    os_ = str(config.get("os") or "linux")
    arch = str(config.get("architecture") or "amd64")
    variant = str(config.get("variant") or "")
    return f"{os_}/{arch}" + (f"/{variant}" if variant else "")


def config_diff_ids(config_bytes: bytes, what: str) -> tuple[tuple[str, ...], dict[str, Any]]:
    try:
        doc = json.loads(config_bytes)
        diff_ids = tuple(str(d) for d in doc["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError):
        raise ReencodeError(f"the config of {what} has no readable rootfs.diff_ids",
                            "The image is damaged: pull or build it again.") from None
    for d in diff_ids:
        if not DIGEST_RE.match(d):
            raise ReencodeError(f"the config of {what} has a malformed diff_id {d[:80]!r}")
    return diff_ids, doc


def assemble(root: Path, ref: str, config_bytes: bytes, layers: list[ZstdBlob], *, source: str,
             upstream_digest: str | None = None) -> ReencodedImage:
    """Write the config and our OCI manifest into the store; return the image (layers already stored)."""
    diff_ids, doc = config_diff_ids(config_bytes, ref)
    if tuple(b.digest for b in layers) != diff_ids:
        raise ReencodeError(f"the layers of {ref} do not match its config's diff_ids",
                            "The image is damaged where it came from: pull or build it again.")
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    config_path = write_plain_blob(root, config_bytes)
    manifest = oci_manifest(config_digest, len(config_bytes), [(b.digest, b.size) for b in layers])
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    manifest_path = write_plain_blob(root, manifest)
    blobs = [StoredBlob(manifest_digest, "manifest", OCI_MANIFEST, len(manifest), "none", len(manifest),
                        manifest_path),
             StoredBlob(config_digest, "config", OCI_CONFIG, len(config_bytes), "none", len(config_bytes),
                        config_path)]
    unique = {b.digest: b for b in layers}    # a layer listed twice (identical diff_ids) is one blob
    blobs += [StoredBlob(b.digest, "layer", OCI_LAYER_TAR, b.size, "zstd", b.stored_size, b.path)
              for b in unique.values()]
    return ReencodedImage(ref, manifest, manifest_digest, config_digest, diff_ids, diff_ids, config_platform(doc),
                          tuple(blobs), source, upstream_digest)


# --- --recompress zstd ---------------------------------------------------------------------------------
def recompress_image(root: Path, ref: str, manifest_digest: str, *, upstream_digest: str | None = None,
                     on_bytes: Callable[[int], None] | None = None) -> ReencodedImage:
    """Re-encode an exact image whose manifest, config and layers are plain blobs in the store at ``root``.

    Each layer is decompressed (gzip, zstd or none, per its media type, confirmed by its
    magic bytes), its sha256 checked against the config's diff_id, and zstd-compressed
    into the store. The compressed blob's own digest is checked while it is read.
    ``on_bytes`` counts compressed bytes read.
    """
    manifest_bytes = _read_small(root, manifest_digest, f"the manifest of {ref}")
    try:
        doc = json.loads(manifest_bytes)
        media_type = doc.get("mediaType") or ""
        config_desc = doc["config"]
        layer_descs = list(doc["layers"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ReencodeError(f"the manifest of {ref} in the store is not an image manifest") from None
    if media_type and media_type not in MANIFEST_TYPES:
        raise ReencodeError(f"the manifest of {ref} has media type {media_type}, not an image manifest")
    config_bytes = _read_small(root, str(config_desc.get("digest")), f"the config of {ref}")
    diff_ids, _ = config_diff_ids(config_bytes, ref)
    if len(diff_ids) != len(layer_descs):
        raise ReencodeError(f"{ref}: its manifest lists {len(layer_descs)} layers but its config "
                            f"{len(diff_ids)} diff_ids")
    stored: list[ZstdBlob] = []
    for i, (desc, diff_id) in enumerate(zip(layer_descs, diff_ids)):
        have = stored_zstd(root, diff_id)
        if have is not None:
            stored.append(have)
            if on_bytes is not None:
                on_bytes(int(desc.get("size") or 0))
            continue
        digest = str(desc.get("digest"))
        compression = LAYER_TYPES.get(str(desc.get("mediaType")))
        if compression is None:
            raise ReencodeError(f"{ref}: layer {i + 1} has unsupported media type {desc.get('mediaType')!r}")
        path = blob_path(root, digest)
        with open(path, "rb") as fh:
            head = fh.read(1024)
        found = sniff(head)
        if found is not None and found != compression:
            compression = found   # trust the bytes: some registries label plain tars as gzip
        checked = _hash_checked(file_chunks(path), digest, f"layer {i + 1} of {ref}", on_bytes)
        stored.append(write_zstd_blob(root, decompressed(checked, compression), expect=diff_id,
                                      what=f"layer {i + 1} of {ref}"))
    return assemble(root, ref, config_bytes, stored, source="registry", upstream_digest=upstream_digest)


def _read_small(root: Path, digest: str, what: str) -> bytes:
    path = blob_path(root, digest)
    try:
        if path.stat().st_size > MAX_SMALL_BLOB:
            raise ReencodeError(f"{what} is larger than {MAX_SMALL_BLOB} bytes")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReencodeError(f"{what} ({digest}) is not in the blob store", "Run the build again to fetch it.") from None
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise ReencodeError(f"{what} in the blob store does not match its digest {digest}",
                            "Delete it from the work folder and run the build again.")
    return data


def _hash_checked(chunks: Iterable[bytes], digest: str, what: str,
                  on_bytes: Callable[[int], None] | None) -> Iterator[bytes]:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
        yield chunk
    if "sha256:" + h.hexdigest() != digest:
        raise ReencodeError(f"{what} in the blob store does not match its digest {digest}",
                            "Delete it from the work folder and run the build again.")
