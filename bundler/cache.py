"""The build's work folder: a content-addressed blob cache and a small resume state.

A build keeps its work beside the output (``<out>.partial/`` unless ``--work-dir``)::

    lock                 flock()ed while a build runs: two builds never share a folder
    state.json           what was pulled (per image reference), layer sizes seen, schema 1
    blobs/<hex>.zst      a layer, zstd-compressed        } <hex> = sha256 of the uncompressed
    blobs/<hex>.raw      a config, or an incompressible  }  content (diff_id / image ID)
    blobs/<hex>.json     the entry's metadata, written last: a blob without it does not count
    wheels/              the importer's wheels (pip's own download cache, so to speak)
    stage/               the bundle being written; renamed to <out> when complete

Every cache file is written to a ``.tmp`` name, fsynced and renamed, so a killed build
leaves only whole entries (and ``.tmp`` debris, removed on the next run). Entries are
named by content, so they stay valid whatever the next build asks for; the state's
pull records are reused only by the same build (same plan, platform and mirrors).

    cache = BlobCache(work / "blobs")
    blob = cache.put_stream(fileobj.read, "layer")       # hashes, compresses, stores
    cache.get(blob.digest).path
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import zstandard

from manifests.atomic import atomic_write_bytes, fsync_dir
from manifests.bundle import BlobEntry, HEX_RE
from manifests.errors import AirgapError, OutputError

CHUNK = 1024 * 1024
ZSTD_JOB_SIZE = 2 * 1024 * 1024
STATE_SCHEMA = 1
MIN_SAVING = 0.03          # keep zstd only when it saves at least 3 %
ZSTD_LEVEL = 3


class CacheError(AirgapError):
    """A cache entry is damaged (it has been removed; the next run recreates it)."""

    exit_code = 14


@dataclass(frozen=True)
class CachedBlob:
    digest: str          # sha256:<hex> of the uncompressed content
    kind: str            # "layer" or "config"
    size: int            # uncompressed bytes
    encoding: str        # "zstd" or "none"
    stored_size: int
    stored_sha256: str   # hex digest of the stored file, checked when it is copied into a bundle
    path: Path

    @property
    def entry(self) -> BlobEntry:
        return BlobEntry(self.digest, self.kind, self.size, self.encoding, self.stored_size)


class _HashingWriter:
    """Counts and hashes what zstd writes into the file below."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


class BlobCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # --- look-ups --------------------------------------------------------------------
    def _meta_path(self, hexd: str) -> Path:
        return self.root / f"{hexd}.json"

    def get(self, digest: str) -> CachedBlob | None:
        hexd = _hex(digest)
        try:
            meta = json.loads(self._meta_path(hexd).read_bytes())
            path = self.root / f"{hexd}.{'zst' if meta['encoding'] == 'zstd' else 'raw'}"
            if meta["digest"] != digest or path.stat().st_size != meta["stored_size"]:
                return None
            return CachedBlob(digest, meta["kind"], int(meta["size"]), meta["encoding"], int(meta["stored_size"]),
                              meta["stored_sha256"], path)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def has(self, digest: str) -> bool:
        return self.get(digest) is not None

    def remove(self, digest: str) -> None:
        hexd = _hex(digest)
        for suffix in (".json", ".zst", ".raw"):
            try:
                os.unlink(self.root / f"{hexd}{suffix}")
            except FileNotFoundError:
                pass

    def clean_tmp(self) -> int:
        n = 0
        for p in self.root.glob(".tmp-*"):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
        return n

    def entries(self) -> list[CachedBlob]:
        out = []
        for meta in sorted(self.root.glob("*.json")):
            if HEX_RE.match(meta.stem):
                blob = self.get("sha256:" + meta.stem)
                if blob is not None:
                    out.append(blob)
        return out

    # --- writing ---------------------------------------------------------------------
    def _tmp(self, suffix: str) -> Path:
        return self.root / f".tmp-{secrets.token_hex(8)}{suffix}"

    def put_stream(self, read: Callable[[int], bytes], kind: str, *, keep: Callable[[str], bool] = lambda d: True,
                   expect: str | None = None,
                   on_bytes: Callable[[int], None] | None = None) -> tuple[str, int, CachedBlob | None]:
        """Hash and zstd-compress a stream into the cache; keep it raw when zstd saves < 3 %.

        Returns ``(digest, size, blob)``; ``blob`` is None when ``keep(digest)`` said the
        content is not wanted (already cached, or left out of a delta bundle).
        """
        tmp = self._tmp(".zst")
        h = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as fh:
                counter = _HashingWriter(fh)
                # small multi-threaded jobs: the default job size costs ~50-100 MiB of buffers (bench/)
                params = zstandard.ZstdCompressionParameters.from_level(ZSTD_LEVEL, threads=-1, job_size=ZSTD_JOB_SIZE)
                cctx = zstandard.ZstdCompressor(compression_params=params)
                with cctx.stream_writer(counter, closefd=False) as zw:
                    while True:
                        chunk = read(CHUNK)
                        if not chunk:
                            break
                        h.update(chunk)
                        zw.write(chunk)
                        size += len(chunk)
                        if on_bytes is not None:
                            on_bytes(len(chunk))
                digest = "sha256:" + h.hexdigest()
                if expect is not None and digest != expect:
                    raise CacheError(f"the engine exported a {kind} named {expect} whose content hashes to {digest}",
                                     "The engine's image store may be damaged: check with `docker image inspect`, "
                                     "remove and pull the image again.")
                if not keep(digest):
                    return digest, size, None
                if counter.size <= size * (1 - MIN_SAVING):
                    fh.flush()
                    os.fsync(fh.fileno())
                    return digest, size, self._commit(tmp, digest, kind, size, "zstd", counter.size,
                                                      counter.hash.hexdigest())
            # zstd did not pay: store the bytes as they are, decompressed from what was just written
            raw_tmp = self._tmp(".raw")
            try:
                rh = hashlib.sha256()
                with open(tmp, "rb") as src, open(raw_tmp, "wb") as dst:
                    reader = zstandard.ZstdDecompressor().stream_reader(src)
                    while True:
                        chunk = reader.read(CHUNK)
                        if not chunk:
                            break
                        rh.update(chunk)
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
                return digest, size, self._commit(raw_tmp, digest, kind, size, "none", size, rh.hexdigest())
            finally:
                _unlink(raw_tmp)
        finally:
            _unlink(tmp)

    def put_bytes(self, data: bytes, kind: str, expect: str | None = None) -> CachedBlob:
        """Store a small blob (an image config) as it is."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if expect is not None and digest != expect:
            raise CacheError(f"the engine exported a {kind} named {expect} whose content hashes to {digest}")
        have = self.get(digest)
        if have is not None:
            return have
        tmp = self._tmp(".raw")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            return self._commit(tmp, digest, kind, len(data), "none", len(data), digest[7:])
        finally:
            _unlink(tmp)

    def _commit(self, tmp: Path, digest: str, kind: str, size: int, encoding: str, stored_size: int,
                stored_sha256: str) -> CachedBlob:
        hexd = _hex(digest)
        path = self.root / f"{hexd}.{'zst' if encoding == 'zstd' else 'raw'}"
        os.replace(tmp, path)
        meta = {"schema": 1, "digest": digest, "kind": kind, "size": size, "encoding": encoding,
                "stored_size": stored_size, "stored_sha256": stored_sha256}
        atomic_write_bytes(self._meta_path(hexd), json.dumps(meta, sort_keys=True).encode())
        return CachedBlob(digest, kind, size, encoding, stored_size, stored_sha256, path)


def _hex(digest: str) -> str:
    hexd = digest[7:] if digest.startswith("sha256:") else ""
    if not HEX_RE.match(hexd):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexd


def _unlink(p: Path) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


# --- the work folder ------------------------------------------------------------------------
class WorkDir:
    """The work folder of one output: lock, state, blob cache, wheel cache, stage."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    @property
    def blobs(self) -> BlobCache:
        return BlobCache(self.path / "blobs")

    @property
    def wheels(self) -> Path:
        return self.path / "wheels"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    def open(self) -> "WorkDir":
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the work folder {self.path}: {exc.strerror}",
                              "Choose another --out (or --work-dir) where you may write.") from exc
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise OutputError(f"another build is using the work folder {self.path}",
                                  "Wait for it to finish (or stop it), then run this build again.") from None
            raise
        self._lock_fd = fd
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load_state(self) -> dict[str, Any]:
        try:
            d = json.loads(self.state_path.read_bytes())
            if isinstance(d, dict) and d.get("schema") == STATE_SCHEMA:
                return d
        except (OSError, ValueError):
            pass
        return {"schema": STATE_SCHEMA}

    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write_bytes(self.state_path, json.dumps(state, indent=1, sort_keys=True).encode())

    def remove(self) -> None:
        import shutil

        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        fsync_dir(self.path.parent)

