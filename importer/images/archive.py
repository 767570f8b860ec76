"""The archive forms the engines load, written member by member into a stream.

* classic store: a docker-archive (``<config hex>.json``, ``<layer hex>/layer.tar``, ``manifest.json``);
* containerd store: an OCI layout (``oci-layout``, ``blobs/sha256/<hex>``, ``index.json``).

:class:`ArchiveWriter` writes the tar framing (``tarfile`` only makes the headers);
:class:`ZstdLayerToTar` turns a zstd layer back into its tar for engines older than Engine 23.

    archive = ArchiveWriter(out)
    archive.add_bytes(archive_name(config_blob, "classic"), config_bytes)
    archive.add(archive_name(layer_blob, "classic"), layer_blob.size, blob_stream.read)
    archive.add_bytes("manifest.json", docker_archive_manifest(images))
    archive.close()
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from typing import IO, Any, Callable

import zstandard

from manifests.bundle import OCI_INDEX, BlobEntry, BundleManifest, ImageEntry
from manifests.errors import EngineError, IntegrityError
from manifests.imageref import normalize, split_ref
from manifests.payload import zstd_decompressor

from importer.images.blobs import BlobStream
from importer.images.engine import engine_name

CHUNK = 1024 * 1024
BAD_BUNDLE = "The bundle is malformed or was made by a bad signer: do not use it; ask its builder for a new one."


def qualified_name(ref: str) -> str:
    """``redis:7.4`` -> ``docker.io/library/redis:7.4``; ``quay.io/a/b:1`` stays (Docker's normalisation)."""
    return normalize(ref).full


def docker_archive_manifest(images: list[ImageEntry], tags: bool = True) -> bytes:
    """docker-archive ``manifest.json``: one entry per image ID, every layer listed (sent or not).

    ``tags=False``: no ``RepoTags`` (the engine registers the image by ID only; it is tagged later).
    """
    by_id: dict[str, dict[str, Any]] = {}
    for img in images:
        entry = by_id.setdefault(img.id, {"Config": f"{img.id[7:]}.json", "RepoTags": [],
                                          "Layers": [f"{d[7:]}/layer.tar" for d in img.layers]})
        if tags:
            entry["RepoTags"].append(img.ref)
    return json.dumps(list(by_id.values()), separators=(",", ":")).encode()


def oci_index(manifest: BundleManifest, images: list[ImageEntry]) -> bytes:
    """OCI layout ``index.json``: each image's original manifest, by digest, with both name annotations."""
    entries = []
    for img in images:
        blob = manifest.blob_map[img.manifest_digest]
        _, tag = split_ref(img.ref)
        entries.append({"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size,
                        "annotations": {"io.containerd.image.name": qualified_name(img.ref),
                                        "org.opencontainers.image.ref.name": tag}})
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries},
                      separators=(",", ":")).encode()


OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


def archive_name(blob: BlobEntry, store: str) -> str:
    if store == "containerd":
        return f"blobs/sha256/{blob.digest[7:]}"
    return f"{blob.digest[7:]}.json" if blob.kind == "config" else f"{blob.digest[7:]}/layer.tar"


class ArchiveWriter:
    """A tar stream written member by member (``tarfile`` only makes the headers).

    After ``aborted`` is set it writes nothing more, so a cut stream stays cut: the engine
    never sees a tidy end of an archive that lacks its index.
    """

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.aborted = False

    def _write(self, data: bytes | memoryview) -> None:
        if not self.aborted:
            self.out.write(data)

    def add(self, name: str, size: int, read: Callable[[int], bytes]) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        self._write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict"))
        left = size
        while left:
            chunk = read(min(CHUNK, left))
            if not chunk:
                raise IntegrityError(f"{name} ended {left} bytes early", BAD_BUNDLE)
            if len(chunk) > left:
                raise IntegrityError(f"{name} is longer than its declared {size} bytes", BAD_BUNDLE)
            self._write(chunk)
            left -= len(chunk)
        if size % tarfile.BLOCKSIZE:
            self._write(tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def add_bytes(self, name: str, data: bytes) -> None:
        view = memoryview(data)
        pos = 0

        def read(n: int) -> bytes:
            nonlocal pos
            out = view[pos:pos + n]
            pos += len(out)
            return bytes(out)
        self.add(name, len(data), read)

    def close(self) -> None:
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))


def _decoder() -> zstandard.ZstdDecompressor:
    return zstd_decompressor()


class ZstdLayerToTar:
    """A zstd-compressed layer blob decoded to its tar, for engines that refuse zstd layer files.

    The tar member's size must be known before its bytes: it comes from the zstd frame header
    (``Frame_Content_Size``); a layer that does not record it cannot be sent to such an engine.
    """

    def __init__(self, blob_reader: BlobStream, diff_id: str) -> None:
        head = blob_reader.read(min(CHUNK, blob_reader.left)) if blob_reader.left else b""
        try:
            size = zstandard.frame_content_size(head)
        except zstandard.ZstdError:
            size = -1
        if size < 0:
            raise EngineError(
                f"the Docker engine at {engine_name()} cannot load zstd-compressed layers (it predates Engine 23), "
                f"and layer {blob_reader.blob.digest} does not record its uncompressed size",
                "Load on Engine 23 or newer, or build the bundle with --recompress zstd (plain layer tars).")
        self.size = size
        self.diff_id = diff_id
        self.hash = hashlib.sha256()
        self.blob_reader = blob_reader
        self._head = head
        self._dec = _decoder().stream_reader(self, read_size=CHUNK, read_across_frames=True)

    def read(self, n: int = -1) -> bytes:
        """The compressed side, for the decoder."""
        if self._head:
            n = len(self._head) if n is None or n < 0 else n
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self.blob_reader.read(n if n and n > 0 else CHUNK) if self.blob_reader.left else b""

    def read_tar(self, n: int) -> bytes:
        try:
            data = self._dec.read(n)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"layer {self.blob_reader.blob.digest} does not decode as zstd ({exc})",
                                 BAD_BUNDLE) from None
        self.hash.update(data)
        return data

    def finish(self) -> None:
        if self.read_tar(1):
            raise IntegrityError(f"layer {self.blob_reader.blob.digest} decodes to more than its frame header says",
                                 BAD_BUNDLE)
        self.blob_reader.finish()
        if "sha256:" + self.hash.hexdigest() != self.diff_id:
            raise IntegrityError(f"layer {self.blob_reader.blob.digest} does not decode to its diff_id {self.diff_id}",
                                 BAD_BUNDLE)
