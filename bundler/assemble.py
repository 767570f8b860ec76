"""Write the payload tarball into parts, and move a finished bundle into place.

The payload is a plain tar stream (``tarfile`` ``w|``, PAX format) written into
:class:`manifests.payload.PartWriter`. Its members are the cached blobs under the names
:attr:`manifests.bundle.BlobEntry.path` gives (``blobs/sha256/<hex>`` or ``...<hex>.zst``)
with deterministic headers (mode 0644, mtime 0, owner 0, no user names), in the order
an importer can stream: every config first, then the layers in the order the images
need them, bottom layer first. The same blobs give the same bytes.

    order = blob_order(images, stored={...})
    with PartWriter(stage, max_part_size) as w:
        write_payload(w, [cache.get(d) for d in order])
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tarfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

from manifests.atomic import fsync_dir
from manifests.bundle import MANIFEST_NAME
from manifests.errors import OutputError

from .cache import CHUNK, CachedBlob, CacheError

# what a bundle folder (or a folder of parts) may hold: --force replaces only such folders
BUNDLE_NAMES = {"manifest.json", "manifest.json.sig", "signing-key.pub", "README-OFFLINE.txt",
                "toolkit.gitbundle", "wheels"}
STAGING_NAME = ".overleaf-bundle-staging"   # inside --out when --out is a mount point


def blob_order(images: Sequence[tuple[str, Sequence[str]]], stored: set[str]) -> list[str]:
    """Configs first (image order), then layers bottom-first, each digest once; only ``stored`` ones.

    ``images`` is ``[(config digest, diff_ids), ...]`` in the order the plan uses them.
    """
    order: list[str] = []
    seen: set[str] = set()
    for cfg, _ in images:
        if cfg in stored and cfg not in seen:
            order.append(cfg)
            seen.add(cfg)
    for _, diff_ids in images:
        for d in diff_ids:
            if d in stored and d not in seen:
                order.append(d)
                seen.add(d)
    return order


def tar_header(path: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class _VerifyingReader:
    """Reads a cache file for tarfile, hashing it; the caller checks the hash at the end."""

    def __init__(self, fh, on_bytes: Callable[[int], None] | None) -> None:
        self.fh = fh
        self.hash = hashlib.sha256()
        self.on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.hash.update(data)
        if data and self.on_bytes is not None:
            self.on_bytes(len(data))
        return data


def write_payload(out, blobs: Iterable[CachedBlob], *, on_bytes: Callable[[int], None] | None = None,
                  on_damaged: Callable[[CachedBlob], None] | None = None) -> None:
    """Write the payload tar of ``blobs`` (in the given order) into the file object ``out``."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK,
                      copybufsize=CHUNK) as tar:
        for blob in blobs:
            with open(blob.path, "rb") as fh:
                reader = _VerifyingReader(fh, on_bytes)
                try:
                    tar.addfile(tar_header(blob.entry.path, blob.stored_size), reader)
                except OSError as exc:
                    if exc.errno is None:   # tarfile: "unexpected end of data"
                        if on_damaged:
                            on_damaged(blob)
                        raise CacheError(f"the cached blob {blob.path.name} is shorter than recorded; "
                                         "it has been removed", "Run the same build again.") from exc
                    raise
                if reader.hash.hexdigest() != blob.stored_sha256:
                    if on_damaged:
                        on_damaged(blob)
                    raise CacheError(f"the cached blob {blob.path.name} was damaged on disk; it has been removed",
                                     "Run the same build again: it exports that image again.")


# --- the output folder ------------------------------------------------------------------------
def check_output(out: Path, force: bool) -> None:
    """Refuse an output that exists and is not empty, unless --force and it is a previous bundle."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"{out} exists and is not a folder", "Choose a new --out folder.")
    if not out.exists():
        parent = out.parent
        if not parent.is_dir():
            raise OutputError(f"the folder {parent} does not exist", "Create it, or choose another --out.")
        if not os.access(parent, os.W_OK):
            raise OutputError(f"cannot write into {parent}", "Choose a folder you may write to.")
        return
    names = [p.name for p in out.iterdir() if p.name != STAGING_NAME]
    if not names:
        return
    if not force:
        raise OutputError(f"the output folder {out} is not empty",
                          "Choose a new --out folder, or pass --force to replace a previous bundle there.")
    strange = sorted(n for n in names if n not in BUNDLE_NAMES and not n.startswith("payload."))
    if strange:
        raise OutputError(f"--force replaces only a previous bundle, and {out} holds other files "
                          f"({', '.join(strange[:5])})", "Choose another --out folder.")


def _dev(path: Path) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def stage_path(out: Path, work: Path) -> tuple[Path, str]:
    """Where to assemble the bundle, and how :func:`publish` then moves it to ``out``.

    ``rename``: a sibling folder on the same file system, renamed to ``out`` at the end.
    ``move-in``: ``out`` exists and is a mount point (a USB stick's root): a hidden
    folder inside it, whose entries are moved up at the end, ``manifest.json`` last.
    """
    if out.is_dir() and _dev(out) != _dev(out.parent):
        return out / STAGING_NAME, "move-in"
    if _dev(work) is not None and _dev(work) == _dev(out.parent):
        return work / "stage", "rename"
    return out.with_name(f".{out.name}.staging"), "rename"


def publish(stage: Path, out: Path, mode: str = "rename") -> None:
    """Move the finished ``stage`` to ``out``; a previous bundle there is replaced at the last moment."""
    fsync_dir(stage)
    if mode == "move-in":
        _move_in(stage, out)
        return
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        else:
            out.rmdir()
    try:
        os.replace(stage, out)
    except OSError as exc:
        if old is not None:
            os.replace(old, out)
        if exc.errno == errno.EXDEV:
            raise OutputError(f"cannot move the finished bundle from {stage} to {out}: another file system",
                              "Use a --work-dir on the same file system as --out.") from exc
        raise
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _move_in(stage: Path, out: Path) -> None:
    # a previous bundle (--force) stops looking like one first, then goes
    for name in (MANIFEST_NAME, "manifest.json.sig"):
        try:
            os.unlink(out / name)
        except FileNotFoundError:
            pass
    fsync_dir(out)
    for p in out.iterdir():
        if p.name != stage.name:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for p in sorted(stage.iterdir(), key=lambda p: (p.name == MANIFEST_NAME, p.name)):
        if p.name == MANIFEST_NAME:
            fsync_dir(out)
        os.replace(p, out / p.name)
    stage.rmdir()
    fsync_dir(out)


def looks_like_bundle(path: Path) -> bool:
    return (Path(path) / MANIFEST_NAME).exists()


def fs_type(path: Path) -> str | None:
    """The file system type of the mount holding ``path`` (from /proc/self/mounts), or None."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind
