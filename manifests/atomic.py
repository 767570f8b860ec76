"""Crash-safe file writes: temp file in the same folder, fsync, rename, fsync the folder.

A crash leaves either the old file or the new one, never half of one. The temp file is private (0600)
from its first byte and gets its final owner and mode before the rename; ``keep=True`` gives it the owner,
group and mode of the file it replaces (a 0600 ``variables.env`` group-owned by ``docker`` stays so), and
refuses to replace a symbolic link (:class:`SymlinkRefused`): the link's target is never read nor written.

    atomic_write_bytes(Path("state.json"), data, mode=0o600)
    atomic_write_bytes(Path("config/variables.env"), data, mode=0o600, keep=True)   # mode only for a new file
    fsync_dir(Path("bundle"))          # after renaming entries inside a folder
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SymlinkRefused(OSError):
    """``keep=True`` found a symbolic link (or another non-regular file) where the file to replace is."""


def existing_attrs(path: Path) -> os.stat_result | None:
    """``lstat`` of the regular file ``path``; None when there is none; :class:`SymlinkRefused` for a link,
    FIFO, device or folder in its place."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise SymlinkRefused(errno.ELOOP, f"{kind}, refused", str(path))
    return st


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644, *, keep: bool = False,
                       like: os.stat_result | None = None) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file.

    ``mode`` is the new file's mode; ``keep=True``: the owner, group and mode of the file replaced (``mode`` when
    there is none; a symbolic link in its place raises :class:`SymlinkRefused`); ``like``: those of that stat."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep and like is None:
        like = existing_attrs(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)   # 0600, O_EXCL
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if like is not None:
                st = os.fstat(fh.fileno())
                if (st.st_uid, st.st_gid) != (like.st_uid, like.st_gid):
                    os.fchown(fh.fileno(), like.st_uid, like.st_gid)
                os.fchmod(fh.fileno(), stat.S_IMODE(like.st_mode))
            else:
                os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
