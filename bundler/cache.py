"""The build's work folder: one per output, locked while a build runs, kept for resume.

A build keeps its work beside the output (``<out>.partial/`` unless ``--work-dir``)::

    lock        flock()ed while a build runs: two builds never share a folder
    store/      the content-addressed blob store (:class:`bundler.fetch.BlobStore`): fetched
                manifests, configs and layers, and re-encoded ``.zst`` layers
    wheels/     the importer's wheels
    stage/      the bundle being written; renamed to <out> when complete

Blobs are named by content, so they stay valid whatever the next build asks for: a build
that was stopped (or failed for lack of space) reuses everything already fetched.

    work = WorkDir(Path("bundle.partial")).open()      # OutputError if another build holds it
    try:
        ...                                            # work.path / "store", work.wheels
    finally:
        work.close()
    work.remove()                                      # after a successful build
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

from manifests.atomic import fsync_dir
from manifests.errors import OutputError


class WorkDir:
    """The work folder of one output: its lock, blob store, wheel cache and stage."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    @property
    def wheels(self) -> Path:
        return self.path / "wheels"

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

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        fsync_dir(self.path.parent)
