"""The payload tarball: strict ustar members, cut into parts, verified segment by segment.

Writing: :func:`member_header` makes the one kind of tar header the bundle uses (ustar,
regular file, mode 0644, mtime 0, owner 0; sizes of 8 GiB and more in base-256) and
:class:`PartWriter` is a write-only file object that cuts the stream into
``payload.000``, ``payload.001``, ... of at most ``max_part_size`` bytes, hashing each
part whole and per ``segment_size`` slice (a finished part is fsynced and renamed from
``.partial``, so a crash never leaves a part that looks whole).

Reading: :class:`SegmentReader` reads the parts in order, wherever they are (one folder
per disc works), one segment at a time, and releases no byte of a segment before that
segment's sha256 matched the signed manifest: nothing unverified reaches the tar reader,
a decompressor or an engine. A helper thread reads and hashes the next segments while
the caller works on this one. :func:`iter_members` is the strict tar reader on top: it
refuses every header the builder never writes (PAX, GNU long names, links, devices,
bad checksums, names outside ``blobs/sha256/``) and hands out each member as a bounded
reader.

    reader = SegmentReader(manifest.parts, manifest.segment_size, locate)
    for name, size, stream in iter_members(reader):
        data = stream.read(1024 * 1024)

:func:`check_part` verifies one part on disk with several threads (``verify``).
"""
from __future__ import annotations

import hashlib
import io
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .atomic import fsync_dir
from .bundle import BLOB_PATH_RE, DEFAULT_SEGMENT_SIZE, PAYLOAD_PREFIX, PartRef
from .errors import BundleError, IntegrityError, PayloadFormatError
from .safeio import open_regular

BLOCK = 512
ZSTD_WINDOW_MAX = 1 << 27            # 128 MiB: zstd's default decoder limit, set explicitly (the builder uses less)


def zstd_decompressor():
    """The one zstd decoder every reader of untrusted zstd uses: its window limit set explicitly."""
    import zstandard  # noqa: PLC0415 - only readers of zstd need it

    return zstandard.ZstdDecompressor(max_window_size=ZSTD_WINDOW_MAX)

USTAR_OCTAL_MAX = 8**11 - 1     # largest size the 11 octal digits of a ustar size field hold


def part_name(index: int) -> str:
    return f"{PAYLOAD_PREFIX}{index:03d}"


# --- tar headers ---------------------------------------------------------------------------
def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode("ascii") + b"\0"


def member_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of one payload member."""
    raw = name.encode("ascii")
    if not BLOB_PATH_RE.match(name) or len(raw) > 100:
        raise ValueError(f"{name!r} is not a payload member name")
    if size < 0:
        raise ValueError("negative size")
    if size <= USTAR_OCTAL_MAX:
        size_field = _octal(size, 12)
    else:   # base-256, as GNU tar and Go's archive/tar write it
        size_field = bytes([0x80]) + size.to_bytes(11, "big")
    h = bytearray(BLOCK)
    h[0:len(raw)] = raw
    h[100:108] = _octal(0o644, 8)
    h[108:116] = _octal(0, 8)
    h[116:124] = _octal(0, 8)
    h[124:136] = size_field
    h[136:148] = _octal(0, 12)
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[329:337] = _octal(0, 8)
    h[337:345] = _octal(0, 8)
    h[148:156] = f"{sum(h):06o}".encode("ascii") + b"\0 "
    return bytes(h)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


def _parse_octal(field: bytes, what: str) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text or len(text) > 11 or any(c not in b"01234567" for c in text):
        raise PayloadFormatError(f"payload: a tar header has a bad {what} field")
    return int(text, 8)


def parse_header(h: bytes) -> tuple[str, int]:
    """(name, size) of a strict payload header, or PayloadFormatError."""
    if len(h) != BLOCK:
        raise PayloadFormatError("payload: a tar header is cut short")
    check = bytearray(h)
    check[148:156] = b" " * 8
    if _parse_octal(h[148:156], "checksum") != sum(check):
        raise PayloadFormatError("payload: a tar header's checksum is wrong")
    if h[257:263] != b"ustar\0" or h[263:265] != b"00":
        raise PayloadFormatError("payload: a member is not a plain ustar header (PAX, GNU or old tar)")
    if h[156:157] not in (b"0", b"\0"):
        raise PayloadFormatError(f"payload: a member of type {h[156:157]!r} (only regular files are allowed)")
    if any(h[157:257]) or any(h[345:500]):
        raise PayloadFormatError("payload: a member has a link name or a name prefix")
    name_raw = h[0:100].split(b"\0", 1)[0]
    if any(h[len(name_raw):100]):
        raise PayloadFormatError("payload: a member name has bytes after its end")
    try:
        name = name_raw.decode("ascii")
    except UnicodeDecodeError:
        raise PayloadFormatError("payload: a member name is not ASCII") from None
    if not BLOB_PATH_RE.match(name):
        raise PayloadFormatError(f"payload: unexpected member {name[:80]!r}")
    field = h[124:136]
    if field[0] == 0x80:
        size = int.from_bytes(field[1:], "big")
        if size <= USTAR_OCTAL_MAX:
            raise PayloadFormatError("payload: a small size written in base-256")
    else:
        size = _parse_octal(field, "size")
    return name, size


class MemberReader(io.RawIOBase):
    """Exactly ``size`` bytes of the current member; reading past them gives b''."""

    def __init__(self, src: "SegmentReader", size: int) -> None:
        super().__init__()
        self.src = src
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        if self.left <= 0:
            return 0
        view = memoryview(buf).cast("B")[: self.left]
        n = self.src.readinto(view)
        if n == 0:
            raise IntegrityError("the payload ends inside a member", "Copy the last part again.")
        self.left -= n
        return n

    def skip(self) -> None:
        while self.left > 0:
            self.src.discard(self.left)
            self.left = 0


def _read_exact(src: "SegmentReader", n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = src.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def iter_members(src: "SegmentReader") -> Iterator[tuple[str, int, MemberReader]]:
    """The payload's members, in order; each reader must be used up (or is skipped) before the next."""
    while True:
        h = _read_exact(src, BLOCK)
        if h == b"\0" * BLOCK:
            if _read_exact(src, BLOCK) != b"\0" * BLOCK:
                raise PayloadFormatError("payload: the end-of-archive marker is incomplete")
            rest = src.read(1)
            if rest.strip(b"\0"):
                raise PayloadFormatError("payload: data after the end of the archive")
            src.drain()
            return
        if len(h) < BLOCK:
            raise IntegrityError("the payload ends inside a tar header", "Copy the last part again.")
        name, size = parse_header(h)
        member = MemberReader(src, size)
        yield name, size, member
        member.skip()
        pad = -size % BLOCK
        if pad and _read_exact(src, pad).strip(b"\0"):
            raise PayloadFormatError("payload: non-zero padding after a member")


# --- writing parts --------------------------------------------------------------------------
class _Hasher(threading.Thread):
    """Hashes the bytes :class:`PartWriter` writes, on a thread of its own (hashlib releases the GIL).

    Events arrive in order: ``bytes``/``memoryview`` data, ``_SEG`` (a segment ends) and ``_PART``
    (a part ends). ``per`` is ``"part"`` (one digest per part) or ``"segment"`` (a list per part).
    """

    def __init__(self, per: str) -> None:
        super().__init__(name=f"payload-{per}-hash", daemon=True)
        self.per = per
        self.q: queue.Queue = queue.Queue(maxsize=16)
        self.results: list = []
        self._h = hashlib.sha256()
        self._fill = 0
        self._segs: list[str] = []

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if item is _SEG:
                if self.per == "segment":
                    self._segs.append(self._h.hexdigest())
                    self._h, self._fill = hashlib.sha256(), 0
            elif item is _PART:
                if self.per == "segment":
                    if self._fill:
                        self._segs.append(self._h.hexdigest())
                    self.results.append(tuple(self._segs))
                    self._segs = []
                else:
                    self.results.append(self._h.hexdigest())
                self._h, self._fill = hashlib.sha256(), 0
            else:
                self._h.update(item)
                self._fill += len(item)


_SEG, _PART = object(), object()


class PartWriter(io.RawIOBase):
    """Write-only file object cutting the payload into parts, hashed whole and per segment.

    The main thread only writes; two helper threads hash (the part's sha256 and its segments'),
    so the three run on the cores side by side. ``parts`` is complete once :meth:`close` returned.
    """

    def __init__(self, out_dir: Path, max_part_size: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        super().__init__()
        if max_part_size <= 0 or segment_size <= 0:
            raise ValueError("max_part_size and segment_size must be positive")
        self.out_dir = Path(out_dir)
        self.max = max_part_size
        self.segment_size = segment_size
        self.parts: list[PartRef] = []
        self._done: list[tuple[str, int]] = []     # finished parts: (name, size), hashes follow
        self._fh = None
        self._seg_fill = 0
        self._size = 0
        self.total = 0
        self._hashers = (_Hasher("part"), _Hasher("segment"))
        for h in self._hashers:
            h.start()

    def writable(self) -> bool:
        return True

    def _emit(self, item) -> None:
        for h in self._hashers:
            h.q.put(item)

    def _open(self) -> None:
        name = part_name(len(self._done))
        self._fh = open(self.out_dir / (name + ".partial"), "wb")
        self._seg_fill = 0
        self._size = 0

    def _finish(self) -> None:
        assert self._fh is not None
        name = part_name(len(self._done))
        self._emit(_PART)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.out_dir / (name + ".partial"), self.out_dir / name)
        self._done.append((name, self._size))
        self._fh = None

    def write(self, data) -> int:  # type: ignore[override]
        if not isinstance(data, bytes):
            data = bytes(data)      # the hash threads read it later: it must not change
        view = memoryview(data)
        n = len(view)
        while view:
            if self._fh is None:
                self._open()
            room = min(self.max - self._size, self.segment_size - self._seg_fill)
            chunk = view[:room]
            self._fh.write(chunk)
            self._emit(chunk)
            self._size += len(chunk)
            self._seg_fill += len(chunk)
            self.total += len(chunk)
            view = view[len(chunk):]
            if self._seg_fill == self.segment_size:
                self._emit(_SEG)
                self._seg_fill = 0
            if self._size == self.max:
                self._finish()
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                if self._fh is not None and self._size > 0:
                    self._finish()
                elif self._fh is not None:
                    self._fh.close()
                    os.unlink(self.out_dir / (part_name(len(self._done)) + ".partial"))
                fsync_dir(self.out_dir)
            finally:
                self._emit(None)
                for h in self._hashers:
                    h.join()
            whole, segs = self._hashers[0].results, self._hashers[1].results
            self.parts = [PartRef(name, size, whole[k], segs[k]) for k, (name, size) in enumerate(self._done)]
        super().close()


# --- reading parts, one verified segment at a time ---------------------------------------------
def _open_part(path: Path, ref: PartRef):
    """The part at ``path``, opened read-only (a regular file, never a FIFO), read-ahead asked for.

    ``POSIX_FADV_SEQUENTIAL`` is for :func:`check_part`: its threads read neighbouring segments at once,
    which without the hint the kernel may take for random reads (a small read-ahead window). On a 2 GB
    part evicted from the page cache, two threads spent 0.9-2.6 s of system time without it and
    0.2-0.5 s with it (the disk of a shared virtual machine: the rates themselves were too noisy to rank)."""
    fh = open_regular(path, f"part {ref.name}", IntegrityError,
                      "Put it beside the manifest, or pass its folder with --parts-from; copy the real file "
                      "from the original media.")
    try:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError):   # no fadvise here (or not for this file system): only slower
        pass
    return fh


def _bad_part(ref: PartRef, what: str) -> IntegrityError:
    return IntegrityError(f"part {ref.name} {what}", f"Copy {ref.name} again from the original media, then run "
                          "the same command again.")


def _read_segment(fh, ref: PartRef, k: int, segment_size: int) -> bytes:
    start = k * segment_size
    want = min(ref.size, start + segment_size) - start
    data = os.pread(fh.fileno(), want, start)
    while 0 < len(data) < want:      # a short read (not the end): read on
        more = os.pread(fh.fileno(), want - len(data), start + len(data))
        if not more:
            break
        data += more
    if len(data) != want:
        raise _bad_part(ref, f"is shorter than the manifest says ({ref.size} bytes)")
    if hashlib.sha256(data).hexdigest() != ref.segments[k]:
        raise _bad_part(ref, f"is damaged or altered (bytes {start} to {start + want} do not match the manifest)")
    return data


class SegmentReader(io.RawIOBase):
    """The payload across its parts; every byte handed out is from a segment whose hash matched."""

    def __init__(self, parts: Sequence[PartRef], segment_size: int, locate: Callable[[str], Path], *,
                 on_bytes: Callable[[int], None] | None = None, on_part: Callable[[str], None] | None = None,
                 prefetch: int = 2) -> None:
        super().__init__()
        self.parts = list(parts)
        self.segment_size = segment_size
        self.locate = locate
        self.on_bytes = on_bytes
        self.on_part = on_part
        self._q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._buf = memoryview(b"")
        self._done = False
        self._thread = threading.Thread(target=self._pump, name="segment-reader", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self) -> None:
        try:
            for ref in self.parts:
                if self.on_part is not None:
                    self.on_part(ref.name)
                path = self.locate(ref.name)   # may ask for the next disc
                fh = _open_part(path, ref)
                try:
                    if os.fstat(fh.fileno()).st_size != ref.size:
                        raise _bad_part(ref, f"is {os.fstat(fh.fileno()).st_size} bytes, the manifest says "
                                        f"{ref.size}")
                    for k in range(len(ref.segments)):
                        if self._stop.is_set():
                            return
                        if not self._put(_read_segment(fh, ref, k, self.segment_size)):
                            return
                finally:
                    fh.close()
            self._put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self._put(exc)

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        if self._done:
            return False
        item = self._q.get()
        if item is None:
            self._done = True
            return False
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._buf = memoryview(item)
        if self.on_bytes is not None:
            self.on_bytes(len(item))
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        view = memoryview(buf).cast("B")
        if not len(view):
            return 0
        while not len(self._buf):
            if not self._fill():
                return 0
        n = min(len(view), len(self._buf))
        view[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def read_view(self, limit: int) -> memoryview:
        """Up to ``limit`` verified bytes without a copy (empty at the end)."""
        while not len(self._buf):
            if not self._fill():
                return memoryview(b"")
        n = min(limit, len(self._buf))
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def discard(self, n: int) -> None:
        while n > 0:
            got = len(self.read_view(n))
            if not got:
                raise IntegrityError("the payload ends inside a member", "Copy the last part again.")
            n -= got

    def drain(self) -> None:
        """Read to the end, so that every segment of every part has been checked."""
        while len(self.read_view(1 << 30)):
            pass

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        super().close()


# --- verifying a part on disk ---------------------------------------------------------------------
def check_part(path: Path, ref: PartRef, segment_size: int, *, workers: int = 2,
               on_bytes: Callable[[int], None] | None = None) -> str | None:
    """None when every segment of the part at ``path`` matches, else what is wrong (one line)."""
    try:
        fh = _open_part(path, ref)
    except BundleError as exc:
        return exc.message
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size != ref.size:
            return f"is {size} bytes, the manifest says {ref.size}"

        def one(k: int) -> int | None:
            try:
                data = _read_segment(fh, ref, k, segment_size)
            except IntegrityError:
                return k
            if on_bytes is not None:
                on_bytes(len(data))
            return None
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            bad = [k for k in pool.map(one, range(len(ref.segments))) if k is not None]
    if bad:
        start = bad[0] * segment_size
        return (f"is damaged or altered: {len(bad)} of {len(ref.segments)} segment(s) do not match "
                f"(first at byte {start})")
    return None
