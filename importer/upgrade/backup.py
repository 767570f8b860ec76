"""Consistent, checksummed backups of a Toolkit's data and config, and their restore.

A backup is a folder ``<backup-dir>/<id>/`` with ``config/``, ``data/<KEY>/`` for each
data path (``OVERLEAF_DATA_PATH``, ``MONGO_DATA_PATH``, ``REDIS_DATA_PATH``,
``GIT_BRIDGE_DATA_PATH``), ``SHA256SUMS`` over every file, and ``backup.json``.
It is made in ``<id>.partial`` and renamed when complete, so a half-made backup is
never mistaken for one. Services must be stopped first (the caller does ``bin/stop``).
Files keep their mode and owner (MongoDB and Redis data belong to container users). A backup is private
from its first byte: ``<id>.partial`` is made 0700 (and stays so as ``<id>``), every folder in it 0700 and
every file 0600 with ``O_EXCL | O_NOFOLLOW`` until its content is complete; only then does it get the
original's owner and mode (inside the 0700 folder), so no other local user can open one while it is written.
``backup.json`` lists what the backup does not cover (an external MongoDB or Redis).

Data paths are recorded resolved (the Toolkit resolves them with ``realpath``); a restore
works inside each path (its entries are moved aside into ``<path>/.before-rollback-<time>/``,
the backup copied in, every checksum verified, and only then the moved-aside original
deleted), so a mount point or a symlinked folder stays what it is. A rollback accepts a
backup only when its recorded paths are its own folder and the Toolkit's current paths
(:func:`check_record`).

    rec = create_backup(dest, {"config": cfg_dir, "mongo": mongo_dir}, app_version="5.5.8", step_id="01-backup", major=False)
    check_record(load_record(Path(rec.path)), Path(rec.path), {"config": cfg_dir, "mongo": mongo_dir})
    restore_backup(rec)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from manifests.atomic import atomic_write_bytes, fsync_dir
from manifests.bundle import iso, utc_now
from manifests.errors import DiskSpaceError, ToolkitError
from manifests.limits import LIMITS
from manifests.safeio import sha256_file

CHUNK = 1024 * 1024


@dataclass
class BackupRecord:
    id: str
    path: str
    created: str
    app_version: str
    step_id: str
    major: bool
    sources: dict[str, str]     # label -> original absolute path
    files: int
    bytes: int
    not_covered: list[str] = field(default_factory=list)   # what the admin must back up themselves

    def to_dict(self) -> dict:
        return asdict(self)


def tree_size(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        if not p.exists():
            continue
        for dirpath, _dirs, files in os.walk(p):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
    return total


def check_space(dest: Path, need: int) -> None:
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.statvfs(dest)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise DiskSpaceError(f"not enough free space for a backup in {dest}: {free / 1e6:.1f} MB free, "
                             f"about {need / 1e6:.1f} MB needed",
                             "Free space there, or choose another place with --backup-dir.")


_SRC_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DST_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _copy_file(src: Path, dst: Path, sums: list[str], rel: str) -> int:
    """Copy one regular file: ``dst`` is made 0600 (O_EXCL, O_NOFOLLOW: a name planted there is refused) and
    gets the source's owner, mode and times only once its content is written and synced."""
    h = hashlib.sha256()
    n = 0
    fi = os.open(src, _SRC_FLAGS)
    try:
        st = os.fstat(fi)
        if not stat.S_ISREG(st.st_mode):
            raise ToolkitError(f"{src} changed into something that is not a regular file while it was backed up",
                               "Make sure nothing changes the Toolkit's files (bin/stop), then try again.")
        os.set_blocking(fi, True)
        fo = os.open(dst, _DST_FLAGS, 0o600)
        try:
            while True:
                buf = os.read(fi, CHUNK)
                if not buf:
                    break
                h.update(buf)
                view = memoryview(buf)
                while view:
                    view = view[os.write(fo, view):]
                n += len(buf)
            os.fsync(fo)
            os.fchown(fo, st.st_uid, st.st_gid)
            os.fchmod(fo, stat.S_IMODE(st.st_mode))
            os.utime(fo, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(fo)
    finally:
        os.close(fi)
    sums.append(f"{h.hexdigest()}  {rel}")
    return n


def _copy_tree(src: Path, dst: Path, sums: list[str], prefix: str, on_bytes: Callable[[int], None]) -> tuple[int, int]:
    files = size = 0
    dst.mkdir(mode=0o700, parents=True, exist_ok=True)
    for dirpath, dirs, names in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        out_dir = dst / rel_dir if rel_dir != "." else dst
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)   # its own mode once its files are in
        for d in dirs:
            sp = Path(dirpath) / d
            if sp.is_symlink():
                os.symlink(os.readlink(sp), out_dir / d)
        for name in sorted(names):
            sp = Path(dirpath) / name
            rel = f"{prefix}/{os.path.normpath(os.path.join(rel_dir, name))}"
            mode = os.lstat(sp).st_mode
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(sp), out_dir / name)
            elif stat.S_ISREG(mode):
                n = _copy_file(sp, out_dir / name, sums, rel)
                files += 1
                size += n
                on_bytes(n)
        st = os.lstat(dirpath)
        os.chown(out_dir, st.st_uid, st.st_gid, follow_symlinks=False)
        shutil.copystat(dirpath, out_dir, follow_symlinks=False)
    return files, size


def create_backup(backup_dir: Path, sources: dict[str, Path], *, app_version: str, step_id: str, major: bool,
                  on_bytes: Callable[[int], None] = lambda n: None, not_covered: list[str] | None = None) -> BackupRecord:
    backup_dir = Path(backup_dir)
    need = int(tree_size(list(sources.values())) * 1.05) + 16 * 1024 * 1024
    check_space(backup_dir, need)
    bid = f"{time.strftime('%Y%m%dT%H%M%S')}-{app_version}-{step_id}"
    final = backup_dir / bid
    work = backup_dir / (bid + ".partial")
    if work.exists() or work.is_symlink():
        if work.is_symlink() or not work.is_dir():
            work.unlink()
        else:
            shutil.rmtree(work)
    os.mkdir(work, 0o700)   # private from the first byte; keeps 0700 as <id>
    sums: list[str] = []
    files = size = 0
    sources = {k: Path(os.path.realpath(v)) for k, v in sources.items()}
    for label, src in sources.items():
        if not src.exists():
            continue
        f, s = _copy_tree(src, work / label, sums, label, on_bytes)
        files, size = files + f, size + s
    record = BackupRecord(bid, str(final), iso(utc_now()), app_version, step_id, major,
                          {k: str(v) for k, v in sources.items() if v.exists()}, files, size, list(not_covered or []))
    atomic_write_bytes(work / "SHA256SUMS", ("\n".join(sums) + "\n").encode(), mode=0o600)
    atomic_write_bytes(work / "backup.json", json.dumps(record.to_dict(), indent=2).encode(), mode=0o600)
    os.replace(work, final)
    fsync_dir(backup_dir)
    return record


def read_sums(path: Path) -> dict[str, str]:
    out = {}
    for line in (path / "SHA256SUMS").read_text("utf-8").splitlines():
        if line.strip():
            digest, rel = line.split("  ", 1)
            out[rel] = digest
    return out


def verify_tree(base: Path, sums: dict[str, str], labels: dict[str, Path] | None = None) -> list[str]:
    """Paths whose content differs from the sums (``labels`` maps a label to where it now lives)."""
    bad = []
    for rel, digest in sums.items():
        label, _, inner = rel.partition("/")
        root = labels[label] if labels else base / label
        p = root / inner
        if not p.is_file() or sha256_file(p)[1] != digest:
            bad.append(rel)
    return bad


MAX_RECORD = LIMITS.backup_record


def load_record(path: Path) -> BackupRecord:
    f = Path(path) / "backup.json"
    try:
        st = os.stat(f)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_RECORD:
            raise ValueError("not a regular file of at most 1 MiB")
        data = json.loads(f.read_text("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = set(BackupRecord.__dataclass_fields__)
        return BackupRecord(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError) as exc:
        raise ToolkitError(f"{path} is not a complete backup: {exc}") from exc


def check_record(record: BackupRecord, folder: Path, current: dict[str, Path]) -> None:
    """Refuse a backup whose ``backup.json`` names another folder than its own, or paths that are not the
    Toolkit's current config/ and data paths (a restore replaces and deletes what they name)."""
    own = Path(os.path.realpath(folder))
    if Path(os.path.realpath(record.path)) != own:
        raise ToolkitError(f"backup {record.id}: backup.json says it lives in {record.path}, but it is in {own}",
                           "Do not move or edit backups; choose another one with --backup ID.")
    want = {k: Path(os.path.realpath(v)) for k, v in current.items()}
    for label, original in record.sources.items():
        if not isinstance(label, str) or not isinstance(original, str):
            raise ToolkitError(f"backup {record.id}: backup.json is malformed (sources)")
        if label not in want or Path(os.path.realpath(original)) != want[label]:
            raise ToolkitError(f"backup {record.id}: it would restore {original!r} ({label}), which is not one of "
                               "this Toolkit's current paths (" + ", ".join(f"{k}: {v}" for k, v in want.items()) + ")",
                               "Restore it by hand if you must; the rollback only writes the Toolkit's own paths.")
    for rel in read_sums(own):
        label, _, inner = rel.partition("/")
        if label not in record.sources or not inner or ".." in Path(inner).parts or inner.startswith("/"):
            raise ToolkitError(f"backup {record.id}: SHA256SUMS names {rel!r}, outside the backup's paths")


def restore_backup(record: BackupRecord) -> None:
    """Put every source back exactly as it was in the backup, inside each path (a mount point or a symlinked
    folder stays one); the original entries are kept aside until every restored file's sha256 checks out."""
    base = Path(record.path)
    sums = read_sums(base)
    bad = verify_tree(base, sums)
    if bad:
        raise ToolkitError(f"backup {record.id} is damaged: {len(bad)} file(s) differ from SHA256SUMS "
                           f"(first: {bad[0]})", "Choose another backup with --backup ID.")
    stamp = time.strftime("%Y%m%d%H%M%S")
    targets = {label: Path(os.path.realpath(original)) for label, original in record.sources.items()}
    moved: list[tuple[Path, Path]] = []
    try:
        for label, target in targets.items():
            target.mkdir(parents=True, exist_ok=True)
            aside = target / f".before-rollback-{stamp}"
            aside.mkdir()
            moved.append((target, aside))
            for entry in os.listdir(target):
                if entry != aside.name:
                    os.replace(target / entry, aside / entry)
            _copy_tree(base / label, target, [], label, lambda n: None)
        bad = verify_tree(base, sums, targets)
        if bad:
            raise ToolkitError(f"restored files differ from the backup ({bad[0]} ...)",
                               "The original files were put back; check the disk, then try again.")
    except BaseException:
        for target, aside in moved:  # put the pre-rollback state back
            for entry in os.listdir(target):
                if entry != aside.name:
                    p = target / entry
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
            for entry in os.listdir(aside):
                os.replace(aside / entry, target / entry)
            aside.rmdir()
        raise
    for _target, aside in moved:
        shutil.rmtree(aside, ignore_errors=True)
