"""The payload tarball as a byte stream cut into parts, and read back across parts.

:class:`PartWriter` is a write-only file object: ``tarfile`` writes into it and it
cuts the stream into ``payload.000``, ``payload.001``, ... of at most ``max_part_size``
bytes, hashing each part as it goes (a finished part is fsynced and renamed from
``.partial``, so a crash never leaves a part that looks whole).

:class:`PartReader` is a read-only file object over the parts in order, wherever
they are (one folder per disc works): it never needs a reassembled copy, and it
checks each part's size and sha256 as it reads, raising :class:`IntegrityError`
naming the part the moment one ends wrong.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Callable, Sequence

from .atomic import fsync_dir
from .bundle import PAYLOAD_PREFIX, FileRef
from .errors import IntegrityError


def part_name(index: int) -> str:
    return f"{PAYLOAD_PREFIX}{index:03d}"


class PartWriter(io.RawIOBase):
    def __init__(self, out_dir: Path, max_part_size: int) -> None:
        super().__init__()
        if max_part_size <= 0:
            raise ValueError("max_part_size must be positive")
        self.out_dir = Path(out_dir)
        self.max = max_part_size
        self.parts: list[FileRef] = []
        self._fh = None
        self._hash = None
        self._size = 0
        self.total = 0

    def writable(self) -> bool:
        return True

    def _open(self) -> None:
        name = part_name(len(self.parts))
        self._fh = open(self.out_dir / (name + ".partial"), "wb")
        self._hash = hashlib.sha256()
        self._size = 0

    def _finish(self) -> None:
        assert self._fh is not None and self._hash is not None
        name = part_name(len(self.parts))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.out_dir / (name + ".partial"), self.out_dir / name)
        self.parts.append(FileRef(name, self._size, self._hash.hexdigest()))
        self._fh = None

    def write(self, data) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        n = len(view)
        while view:
            if self._fh is None:
                self._open()
            room = self.max - self._size
            chunk = view[:room]
            self._fh.write(chunk)
            self._hash.update(chunk)
            self._size += len(chunk)
            self.total += len(chunk)
            view = view[len(chunk):]
            if self._size == self.max:
                self._finish()
        return n

    def close(self) -> None:
        if not self.closed:
            if self._fh is not None and self._size > 0:
                self._finish()
            elif self._fh is not None:
                self._fh.close()
                os.unlink(self.out_dir / (part_name(len(self.parts)) + ".partial"))
            fsync_dir(self.out_dir)
        super().close()


class PartReader(io.RawIOBase):
    """Read the payload across its parts; ``locate(name)`` gives each part's path."""

    def __init__(self, parts: Sequence[FileRef], locate: Callable[[str], Path], *, verify: bool = True,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.parts = list(parts)
        self.locate = locate
        self.verify = verify
        self.on_bytes = on_bytes
        self._i = -1
        self._fh = None
        self._hash = None
        self._got = 0
        self._next()

    def readable(self) -> bool:
        return True

    def _close_part(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        ref = self.parts[self._i]
        if self._got != ref.size:
            raise IntegrityError(f"part {ref.name} is {self._got} bytes, the manifest says {ref.size}",
                                 f"Copy {ref.name} again from the original media.")
        if self.verify and self._hash.hexdigest() != ref.sha256:
            raise IntegrityError(f"part {ref.name} does not match its sha256 in the manifest (damaged or altered)",
                                 f"Copy {ref.name} again from the original media.")
        self._fh = None

    def _next(self) -> bool:
        self._close_part()
        self._i += 1
        if self._i >= len(self.parts):
            return False
        ref = self.parts[self._i]
        path = self.locate(ref.name)
        try:
            self._fh = open(path, "rb", buffering=0)
        except OSError as exc:
            raise IntegrityError(f"part {ref.name} cannot be read: {exc.strerror}",
                                 f"Put {ref.name} beside the manifest or pass its folder with --parts-from.") from exc
        self._hash = hashlib.sha256() if self.verify else None
        self._got = 0
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        view = memoryview(buf).cast("B")
        while self._fh is not None:
            ref = self.parts[self._i]
            want = min(len(view), ref.size - self._got + 1)  # +1 notices an overlong part
            n = self._fh.readinto(view[:want])
            if n:
                if self._got + n > ref.size:
                    raise IntegrityError(f"part {ref.name} is longer than the manifest says ({ref.size} bytes)",
                                         f"Copy {ref.name} again from the original media.")
                if self._hash is not None:
                    self._hash.update(view[:n])
                self._got += n
                if self.on_bytes:
                    self.on_bytes(n)
                return n
            if not self._next():
                return 0
        return 0

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        super().close()
