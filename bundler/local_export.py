"""Export an image that exists only in a local engine, in the re-encoded form of bundle format 2.

Some images have no registry to download from (``sharelatex/sharelatex:5.5.4-with-texlive-full``,
built on the online host; the plan's ``local_images``). :func:`export_local` asks the engine for
``GET /images/{name}/get`` (``docker save NAME``) and reads the answer as it streams, one tar
member at a time, in fixed-size chunks (memory stays bounded whatever the image's size).

What the engines send (both understood, told apart by what is in the archive, not by version):

* classic store (Engine 20.10 .. 24): a docker-archive, ``<v1id>/layer.tar`` UNCOMPRESSED
  (a layer already written appears again as a symlink), ``<v1id>/json``, ``<config hex>.json``,
  ``repositories``, and ``manifest.json`` last;
* containerd image store (Engine 26) and Engine 25+: an OCI layout (``oci-layout``,
  ``index.json``, ``blobs/sha256/<hex>``) plus ``manifest.json``; the layer blobs are the ones
  the store keeps, usually gzip-compressed (the engine's own manifest sits among the blobs).

Each member that is a layer (recognised by its magic bytes: gzip, zstd, or a plain tar) is
decompressed as it passes, hashed, and zstd-compressed into the blob store under the digest
of its uncompressed tar (:func:`bundler.recompress.write_zstd_blob`). At the end
``manifest.json`` names the config and the image's layers in order: every layer's digest must
equal the config's ``rootfs.diff_ids`` entry, and those must equal what the engine reports for
the image. The result is written as :mod:`bundler.recompress` describes (config as is, layers
as uncompressed tars stored ``.zst``, an OCI manifest written by us: deterministic, so two
exports of the same image give the same manifest digest).

A finished export is recorded in ``<store>/local/<hex of the engine's image ID>.json``; a later
call for the same image (same engine ID) whose blobs are all still there reuses it without
asking the engine for anything but ``inspect`` (resume).

    image = export_local(client, "sharelatex/sharelatex:5.5.4-with-texlive-full", store_root)
    image.manifest_digest, image.config_digest, image.layers == image.diff_ids
"""
from __future__ import annotations

import hashlib
import io
import json
import posixpath
import queue
import tarfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import urllib3.exceptions

from manifests.atomic import atomic_write_bytes
from manifests.errors import LocalExportError, LocalImageMissingError, ReencodeError

from .recompress import (CHUNK, MAX_SMALL_BLOB, ReencodedImage, StoredBlob, ZstdBlob, assemble,
                         config_diff_ids, decompressed, sniff, stored_zstd, write_zstd_blob)

LocalImage = ReencodedImage
"""What :func:`export_local` returns: the image's re-encoded blobs, all in the store (``source`` "local")."""

PREFETCH_CHUNKS = 8        # read at most 8 MiB ahead of hashing and compression
RECORD_SCHEMA = 1


# --- reading the engine's stream ----------------------------------------------------------------
class _Prefetch(io.RawIOBase):
    """The engine's export stream (an iterator of byte chunks), read ahead by a thread (bounded queue),
    counting bytes for progress."""

    def __init__(self, chunks: Iterator[bytes], on_bytes: Callable[[int], None] | None) -> None:
        super().__init__()
        self.chunks = chunks
        self.on_bytes = on_bytes
        self.count = 0
        self._q: queue.Queue = queue.Queue(maxsize=PREFETCH_CHUNKS)
        self._stop = threading.Event()
        self._view = memoryview(b"")
        self._eof = False
        self._thread = threading.Thread(target=self._pump, name="local-export-reader", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for data in self.chunks:
                if self._stop.is_set():
                    break
                if data:
                    self._put(data)
            else:
                self._put(b"")   # the end
        except BaseException as exc:  # noqa: BLE001 - handed to the reading side
            self._put(exc)
        finally:   # stopped early (a failed export): end the stream in the thread that iterates it
            close = getattr(self.chunks, "close", None)
            if close is not None:
                close()

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        if not len(self._view):
            if self._eof:
                return 0
            item = self._q.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return 0
            self._view = memoryview(item)
            self.count += len(item)
            if self.on_bytes is not None:
                self.on_bytes(len(item))
        n = min(len(buf), len(self._view))
        buf[:n] = self._view[:n]
        self._view = self._view[n:]
        return n

    def close(self) -> None:
        self._stop.set()
        super().close()


def _member_chunks(head: bytes, fileobj) -> Iterator[bytes]:
    if head:
        yield head
    while True:
        chunk = fileobj.read(CHUNK)
        if not chunk:
            return
        yield chunk


def _read_head(fileobj, n: int) -> bytes:
    out = b""
    while len(out) < n:
        more = fileobj.read(n - len(out))
        if not more:
            break
        out += more
    return out


def _short(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return " ".join(str(explanation or exc).split())[:300]


def _inspect(client, ref: str) -> dict[str, Any]:
    import docker.errors  # noqa: PLC0415 - the engine is optional for the rest of the bundler

    try:
        return client.api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        raise LocalImageMissingError(f"{ref} is not in the local engine",
                                     "The plan takes this image from the local engine (it is built locally, not "
                                     "published): build and tag it there first (`docker images` lists what the "
                                     "engine has), then run the same build again.") from None
    except docker.errors.DockerException as exc:
        raise LocalExportError(f"the engine cannot describe {ref}: {_short(exc)}",
                               "Check that the engine is running (DOCKER_HOST).") from exc
    except OSError as exc:
        raise LocalExportError(f"lost the connection to the engine while inspecting {ref}: {exc}",
                               "Check that the engine is running (DOCKER_HOST).") from exc


def _open_save(client, ref: str) -> Iterator[bytes]:
    """The engine's ``docker save`` stream of ``ref`` (docker-py's public ``APIClient.get_image``), as
    chunks; the first one is read here, so that a refusal or a lost engine is a clean LocalExportError."""
    import docker.errors  # noqa: PLC0415

    try:
        chunks = iter(client.api.get_image(ref, chunk_size=CHUNK))
        first = next(chunks, b"")
    except docker.errors.DockerException as exc:
        raise LocalExportError(f"the engine refused to export {ref}: {_short(exc)}",
                               "Check that the image is still in the engine (`docker images`).") from exc
    except OSError as exc:
        raise LocalExportError(f"lost the connection to the engine while exporting {ref}: {exc}",
                               "Check that the engine is still running (DOCKER_HOST).") from exc
    return _resumed(first, chunks)


def _resumed(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """``first`` then ``rest``, as a generator (closing it closes ``rest``: the engine's stream)."""
    yield first
    yield from rest


# --- resume records -------------------------------------------------------------------------------
def _record_path(store_root: Path, engine_id: str) -> Path:
    return Path(store_root) / "local" / f"{engine_id.split(':')[-1][:64]}.json"


def _load_record(store_root: Path, ref: str, engine_id: str) -> ReencodedImage | None:
    """A finished export of this engine image whose blobs are all still in the store, else None."""
    try:
        rec = json.loads(_record_path(store_root, engine_id).read_bytes())
        if rec.get("schema") != RECORD_SCHEMA or rec.get("engine_id") != engine_id:
            return None
        config_bytes = (Path(store_root) / "blobs" / "sha256" / rec["config_digest"][7:]).read_bytes()
        if "sha256:" + hashlib.sha256(config_bytes).hexdigest() != rec["config_digest"]:
            return None
        diff_ids, _ = config_diff_ids(config_bytes, ref)
        layers: list[ZstdBlob] = []
        for d in diff_ids:
            have = stored_zstd(store_root, d)
            if have is None:
                return None
            layers.append(have)
        return assemble(store_root, ref, config_bytes, layers, source="local")
    except (OSError, ValueError, KeyError, TypeError, ReencodeError):
        return None


def _save_record(store_root: Path, engine_id: str, image: ReencodedImage) -> None:
    rec = {"schema": RECORD_SCHEMA, "engine_id": engine_id, "ref": image.ref, "config_digest": image.config_digest,
           "manifest_digest": image.manifest_digest}
    atomic_write_bytes(_record_path(store_root, engine_id), json.dumps(rec, sort_keys=True).encode())


# --- the export -------------------------------------------------------------------------------------
def export_local(client, ref: str, store_root: Path, *,
                 on_bytes: Callable[[int], None] | None = None) -> ReencodedImage:
    """Export ``ref`` from the engine ``client`` (docker-py) into the store at ``store_root``, re-encoded.

    ``on_bytes`` counts the bytes the engine sends. Raises :class:`LocalExportError`
    (engine side) or :class:`bundler.recompress.ReencodeError` (content that does not match).
    """
    info = _inspect(client, ref)
    engine_id = str(info.get("Id") or "")
    want_diff_ids = tuple((info.get("RootFS") or {}).get("Layers") or ())
    if engine_id:
        done = _load_record(store_root, ref, engine_id)
        if done is not None and done.diff_ids == want_diff_ids:
            return done

    reader = _Prefetch(_open_save(client, ref), on_bytes)
    layer_of: dict[str, ZstdBlob] = {}    # member path -> the layer it holds (uncompressed digest)
    small: dict[str, bytes] = {}          # member path -> bytes of a small non-layer member (JSON)
    aliases: dict[str, str] = {}          # link member -> what it points to
    try:
        with tarfile.open(fileobj=io.BufferedReader(reader, CHUNK), mode="r|", bufsize=CHUNK) as tar:
            for m in tar:
                name = posixpath.normpath(m.name)
                if m.issym() or m.islnk():
                    aliases[name] = posixpath.normpath(m.linkname if m.islnk() else
                                                       posixpath.join(posixpath.dirname(name), m.linkname))
                    continue
                if not m.isfile():
                    continue
                fileobj = tar.extractfile(m)
                assert fileobj is not None
                head = _read_head(fileobj, 1024)
                compression = sniff(head)
                if compression is not None:
                    layer_of[name] = write_zstd_blob(store_root, decompressed(_member_chunks(head, fileobj),
                                                                              compression),
                                                     what=f"a layer of {ref} ({name})")
                elif m.size <= MAX_SMALL_BLOB and head[:1] in (b"{", b"["):
                    small[name] = head + fileobj.read()
    except (tarfile.TarError, EOFError) as exc:
        raise LocalExportError(f"the engine's export of {ref} is not a readable tar archive: {exc}",
                               "Run the same command again; if it persists, check the engine's log.") from None
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise    # the store's disk (no space, permissions): not the engine
        raise LocalExportError(f"lost the connection to the engine while exporting {ref}: {exc}",
                               "Check that the engine is still running (DOCKER_HOST).") from exc
    finally:
        reader.close()

    def resolve(path: str) -> str:
        for _ in range(16):
            if path not in aliases:
                return path
            path = aliases[path]
        return path

    try:
        entries = json.loads(small["manifest.json"])
        entry = entries[0]
        config_path = resolve(posixpath.normpath(entry["Config"]))
        layer_paths = [resolve(posixpath.normpath(p)) for p in entry["Layers"]]
    except (KeyError, ValueError, TypeError, IndexError):
        raise LocalExportError(f"the engine's export of {ref} has no usable manifest.json",
                               "The engine's export format is not understood; report the engine's version.") from None
    if len(entries) != 1:
        raise LocalExportError(f"the engine's export of {ref} holds {len(entries)} images, not one")
    config_bytes = small.get(config_path)
    if config_bytes is None:
        raise LocalExportError(f"the engine's export of {ref} lacks its config ({config_path})")
    diff_ids, _ = config_diff_ids(config_bytes, ref)
    if want_diff_ids and diff_ids != want_diff_ids:
        raise ReencodeError(f"the engine exported a config for {ref} whose diff_ids differ from the image's "
                            "(was the tag moved during the export?)", "Run the same command again.")
    if len(layer_paths) != len(diff_ids):
        raise ReencodeError(f"the engine's export of {ref} lists {len(layer_paths)} layers for "
                            f"{len(diff_ids)} diff_ids")
    layers: list[ZstdBlob] = []
    for i, (path, diff_id) in enumerate(zip(layer_paths, diff_ids)):
        blob = layer_of.get(path)
        if blob is None:
            raise LocalExportError(f"the engine's export of {ref} lacks layer {i + 1} ({path})")
        if blob.digest != diff_id:
            raise ReencodeError(f"layer {i + 1} of {ref} hashes to {blob.digest}, but the config says {diff_id}",
                                "The engine's image store may be damaged: remove the image and build it again.")
        layers.append(blob)
    image = assemble(store_root, ref, config_bytes, layers, source="local")
    if engine_id:
        _save_record(store_root, engine_id, image)
    return image


__all__ = ["LocalExportError", "LocalImage", "LocalImageMissingError", "StoredBlob", "export_local"]
