"""Export images from the online engine in one stream, straight into the blob cache.

One call to the Engine API's ``GET /images/get?names=a&names=b...`` (what ``docker save
a b`` does; docker-py does not wrap the multi-image form) yields a docker-archive in
which a layer shared by several images appears once. The stream is read with
``tarfile`` in ``r|`` mode, member by member, in fixed-size chunks: every layer is
hashed (its sha256 is its diff_id) and zstd-compressed into the cache as it passes,
every config is checked against its name; nothing is held in memory but configs.

Layouts understood:

* the classic store of Engine 20.10-24: ``<v1id>/layer.tar`` (uncompressed; a layer
  already written appears again as a symlink), ``<v1id>/json``, ``<v1id>/VERSION``,
  ``<config hex>.json``, ``manifest.json``, ``repositories``;
* Engine 25+ on the classic store (OCI layout): ``blobs/sha256/<hex>`` for layers and
  configs, plus ``manifest.json``, ``index.json``, ``oci-layout``.

``manifest.json`` comes last (members are sorted by name), so the image-to-layer map
is checked at the end: each image's config digest must equal the image ID the engine
reports, and the digests of its layer files must equal its config's ``rootfs.diff_ids``.

    result = export_images(client, images, cache, keep=lambda d: d not in omitted)
    result.stream_bytes       # what `docker save` of these images writes
"""
from __future__ import annotations

import hashlib
import io
import json
import posixpath
import queue
import re
import tarfile
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

import urllib3

from manifests.errors import EngineError

from .cache import CHUNK, BlobCache, CacheError
from .registry import PulledImage, canonical, _short

MAX_CONFIG = 64 * 1024 * 1024
PREFETCH_CHUNKS = 8    # read at most 8 MiB ahead of the hashing and compression
_LEGACY_LAYER = re.compile(r"^([0-9a-f]{64})/layer\.tar$")
_LEGACY_CONFIG = re.compile(r"^([0-9a-f]{64})\.json$")
_OCI_BLOB = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")


@dataclass
class ExportResult:
    stream_bytes: int = 0                                     # size of the docker-archive the engine sent
    stored: list[str] = field(default_factory=list)           # digests newly put into the cache
    layer_sizes: dict[str, int] = field(default_factory=dict)  # every layer seen, stored or not
    config_sizes: dict[str, int] = field(default_factory=dict)


class _PrefetchReader(io.RawIOBase):
    """A read-only file over the HTTP response, read ahead by a thread (bounded), counting bytes.

    The engine produces the archive at its own pace; reading ahead lets it keep going
    while this side hashes and compresses (every step below releases the GIL).
    """

    def __init__(self, raw, on_bytes: Callable[[int], None] | None, depth: int = PREFETCH_CHUNKS) -> None:
        super().__init__()
        self.raw = raw
        self.count = 0
        self.on_bytes = on_bytes
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._view = memoryview(b"")
        self._eof = False
        self._thread = threading.Thread(target=self._pump, name="export-reader", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while not self._stop.is_set():
                data = self.raw.read(CHUNK)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the reading side
            self._put(exc)

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
        if not self._view:
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


def _open_export(client, refs: list[str]):
    import docker.errors

    api = client.api
    try:
        resp = api._get(api._url("/images/get"), params={"names": refs}, stream=True)
        api._raise_for_status(resp)
    except docker.errors.DockerException as exc:
        raise EngineError(f"the engine refused to export {', '.join(refs)}: {_short(exc)}",
                          "Check that the images are still in the online engine (`docker images`).") from exc
    except OSError as exc:
        raise EngineError(f"lost the connection to the engine while exporting: {exc}",
                          "Check that the engine is still running (DOCKER_HOST).") from exc
    return resp


def export_images(client, images: Iterable[PulledImage], cache: BlobCache, *,
                  keep: Callable[[str], bool] = lambda digest: True,
                  on_bytes: Callable[[int], None] | None = None) -> ExportResult:
    """Export ``images`` (by their canonical refs) in one stream; cache their layers and configs.

    ``keep(diff_id)`` says whether a layer is wanted (False: already cached, or omitted
    from a delta bundle); configs are always kept.
    """
    images = list(images)
    refs = [i.ref for i in images]
    result = ExportResult()
    resp = _open_export(client, refs)
    reader = _PrefetchReader(resp.raw, on_bytes)
    path_digest: dict[str, str] = {}       # member path -> sha256 of its content
    aliases: dict[str, str] = {}           # symlink/hardlink member -> the path it points to
    configs: dict[str, bytes] = {}         # digest -> config bytes (configs are small)
    oci_small: dict[str, bytes] = {}       # OCI blobs that are not layers: configs, manifests, index
    manifest = None

    def want(digest: str) -> bool:
        return keep(digest) and not cache.has(digest)

    try:
        with tarfile.open(fileobj=io.BufferedReader(reader, CHUNK), mode="r|", bufsize=CHUNK) as tar:
            for m in tar:
                name = posixpath.normpath(m.name)
                if m.issym() or m.islnk():
                    target = m.linkname if m.islnk() else posixpath.normpath(
                        posixpath.join(posixpath.dirname(name), m.linkname))
                    aliases[name] = target
                    continue
                if not m.isfile():
                    continue
                fileobj = tar.extractfile(m)
                assert fileobj is not None
                if _LEGACY_LAYER.match(name):
                    digest, size, blob = cache.put_stream(fileobj.read, "layer", keep=want)
                    path_digest[name] = digest
                    result.layer_sizes[digest] = size
                    if blob is not None:
                        result.stored.append(digest)
                elif _LEGACY_CONFIG.match(name):
                    data = _read_small(fileobj, m.size, name)
                    blob = cache.put_bytes(data, "config", expect="sha256:" + name[:64])
                    path_digest[name] = blob.digest
                    configs[blob.digest] = data
                elif (mo := _OCI_BLOB.match(name)):
                    expect = "sha256:" + mo.group(1)
                    head = fileobj.read(512)
                    if _looks_like_tar(head):
                        parts = [head]

                        def read(n: int, _f=fileobj, _p=parts) -> bytes:
                            return _p.pop() if _p else _f.read(n)
                        digest, size, blob = cache.put_stream(read, "layer", keep=want, expect=expect)
                        path_digest[name] = digest
                        result.layer_sizes[digest] = size
                        if blob is not None:
                            result.stored.append(digest)
                    elif head[:2] == b"\x1f\x8b" or head[:4] == b"\x28\xb5\x2f\xfd":
                        raise EngineError("the engine exported compressed layers (containerd image store?)",
                                          "Build on an engine with the classic image store (overlay2).")
                    else:
                        data = head + _read_small(fileobj, m.size - len(head), name)
                        if hashlib.sha256(data).hexdigest() != mo.group(1):
                            raise CacheError(f"the engine exported {name} whose content does not match its name")
                        oci_small[expect] = data
                        path_digest[name] = expect
                elif name == "manifest.json":
                    manifest = json.loads(_read_small(fileobj, m.size, name))
    except tarfile.TarError as exc:
        raise EngineError(f"the engine's export stream is not a valid archive: {exc}",
                          "Run again; if it persists, check the engine's log.") from exc
    except urllib3.exceptions.HTTPError as exc:
        raise EngineError(f"the export stream from the engine broke off: {exc}",
                          "Check that the engine is still running, then run the same build again.") from exc
    finally:
        reader.close()
        resp.close()
    result.stream_bytes = reader.count

    if not isinstance(manifest, list):
        raise EngineError("the engine's export has no manifest.json", "Run again; check the engine's log.")

    def resolve(path: str) -> str:
        seen = 0
        while path in aliases and seen < 16:
            path, seen = aliases[path], seen + 1
        try:
            return path_digest[path]
        except KeyError:
            raise EngineError(f"the engine's export lacks {path}") from None

    by_ref: dict[str, dict] = {}
    for entry in manifest:
        for tag in entry.get("RepoTags") or ():
            by_ref[canonical(tag)] = entry
    for img in images:
        entry = by_ref.get(img.ref)
        if entry is None:
            raise EngineError(f"the engine's export does not contain {img.ref}")
        cfg_digest = resolve(posixpath.normpath(entry["Config"]))
        if cfg_digest in oci_small:
            configs[cfg_digest] = oci_small[cfg_digest]
            cache.put_bytes(oci_small[cfg_digest], "config", expect=cfg_digest)
        if cfg_digest != img.id:
            raise EngineError(f"{img.ref}: the exported config is {cfg_digest}, the engine reports image ID {img.id}",
                              "The tag moved during the build (or the engine uses the containerd store); run again.")
        layers = [resolve(posixpath.normpath(p)) for p in entry.get("Layers") or ()]
        cfg = json.loads(configs[cfg_digest])
        diff_ids = list((cfg.get("rootfs") or {}).get("diff_ids") or ())
        if layers != diff_ids or tuple(diff_ids) != img.diff_ids:
            raise EngineError(f"{img.ref}: the exported layers do not match the image's diff_ids",
                              "The engine's image store may be damaged; remove the image and pull it again.")
        result.config_sizes[cfg_digest] = len(configs[cfg_digest])
    return result


def _read_small(fileobj, size: int, name: str) -> bytes:
    if size > MAX_CONFIG:
        raise EngineError(f"the engine's export member {name} is unexpectedly large ({size} bytes)")
    return fileobj.read(size)


def _looks_like_tar(head: bytes) -> bool:
    if len(head) < 512:
        return False
    if head == bytes(512):           # an empty layer: only the end-of-archive blocks
        return True
    if head[257:262] == b"ustar":
        return True
    try:                              # a v7 header: check its checksum
        stored = int(head[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    calc = sum(head[:148]) + 8 * 32 + sum(head[156:])
    return stored == calc


def docker_save_estimate(layer_sizes: Iterable[int], config_sizes: Iterable[int], images: int) -> int:
    """The size of the classic ``docker save`` archive for these unique layers and configs."""
    def blocks(n: int) -> int:
        return 512 + (n + 511) // 512 * 512

    total = 0
    for size in layer_sizes:
        total += 512 + blocks(3) + blocks(480) + blocks(size)   # <v1id>/, VERSION, json, layer.tar
    for size in config_sizes:
        total += blocks(size)
    total += blocks(200 + 300 * images) + blocks(100 * images) + 1024   # manifest.json, repositories, end
    return total
