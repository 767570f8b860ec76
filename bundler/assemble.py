"""Write the payload into parts, and move a finished bundle into place.

The payload is a strict ustar stream (:func:`manifests.payload.member_header`) written
into :class:`manifests.payload.PartWriter`. Its members are the blobs under the names
:attr:`manifests.bundle.BlobEntry.path` gives (``blobs/sha256/<hex>`` or ``...<hex>.zst``)
in the order an importer can stream: every manifest and config first, then the layers
in the order the images need them, bottom layer first. The same blobs give the same bytes.

    order = payload_order([(manifest_digest, config_digest, layers), ...], stored={...})
    with PartWriter(stage, max_part_size) as w:
        write_payload(w, [(entry, path), ...])
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Sequence

from manifests.atomic import fsync_dir
from manifests.bundle import MANIFEST_NAME, BlobEntry
from manifests.errors import CacheError, OutputError
from manifests.payload import END_OF_ARCHIVE, member_header, padding

CHUNK = 1024 * 1024

# what a bundle folder (or a folder of parts) may hold: --force replaces only such folders
BUNDLE_NAMES = {"manifest.json", "manifest.json.sig", "signing-key.pub", "README-OFFLINE.txt",
                "toolkit.gitbundle", "wheels"}
STAGING_NAME = ".overleaf-bundle-staging"   # inside --out when --out is a mount point


def payload_order(images: Sequence[tuple[str, str, Sequence[str]]], stored: set[str]) -> list[str]:
    """Manifests and configs first (image order), then layers bottom-first, each digest once; only ``stored``.

    ``images`` is ``[(manifest digest, config digest, layer digests), ...]`` in plan order.
    """
    order: list[str] = []
    seen: set[str] = set()

    def add(d: str) -> None:
        if d in stored and d not in seen:
            order.append(d)
            seen.add(d)
    for manifest, config, _ in images:
        add(manifest)
        add(config)
    for _, _, layers in images:
        for d in layers:
            add(d)
    return order


def write_payload(out, blobs: Iterable[tuple[BlobEntry, Path]], *,
                  on_bytes: Callable[[int], None] | None = None) -> None:
    """Write the payload of ``blobs`` (in the given order) into the file object ``out``.

    The blobs were checked against their digests by the fetch stage of this very run (a blob
    reused from an interrupted run is re-hashed there), so here only their sizes are checked: a
    stored file of the wrong size is removed and the build stops (the next run fetches it again)."""
    for entry, path in blobs:
        out.write(member_header(entry.path, entry.stored_size))
        n = 0
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == entry.stored_size:
                while n < entry.stored_size:
                    chunk = fh.read(min(CHUNK, entry.stored_size - n))
                    if not chunk:
                        break
                    out.write(chunk)
                    n += len(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
        if n != entry.stored_size:
            try:
                os.unlink(path)
            except OSError:
                pass
            raise CacheError(f"the fetched blob {path.name} changed on disk since it was fetched; it has been "
                             "removed", "Run the same build again: it fetches that blob again.")
        out.write(padding(entry.stored_size))
    out.write(END_OF_ARCHIVE)


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
