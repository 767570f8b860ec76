"""Consistent, checksummed backups of a Toolkit's data and config, and their restore.

A backup is a folder ``<backup-dir>/<id>/`` with ``config/``, ``data/<KEY>/`` for each
data path (``OVERLEAF_DATA_PATH``, ``MONGO_DATA_PATH``, ``REDIS_DATA_PATH``,
``GIT_BRIDGE_DATA_PATH``), ``SHA256SUMS`` over every file, and ``backup.json``.
It is made in ``<id>.partial`` and renamed when complete, so a half-made backup is
never mistaken for one. Services must be stopped first (the caller does ``bin/stop``).
Files keep their mode and owner (MongoDB and Redis data belong to container users).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from manifests.atomic import atomic_write_bytes, fsync_dir
from manifests.bundle import iso, utc_now
from manifests.errors import DiskSpaceError, ToolkitError

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
    dest.mkdir(parents=True, exist_ok=True)
    st = os.statvfs(dest)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise DiskSpaceError(f"not enough free space for a backup in {dest}: {free / 1e6:.1f} MB free, "
                             f"about {need / 1e6:.1f} MB needed",
                             "Free space there, or choose another place with --backup-dir.")


def _copy_file(src: Path, dst: Path, sums: list[str], rel: str) -> int:
    h = hashlib.sha256()
    n = 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while True:
            buf = fi.read(CHUNK)
            if not buf:
                break
            h.update(buf)
            fo.write(buf)
            n += len(buf)
        fo.flush()
        os.fsync(fo.fileno())
    st = os.lstat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    shutil.copystat(src, dst)
    sums.append(f"{h.hexdigest()}  {rel}")
    return n


def _copy_tree(src: Path, dst: Path, sums: list[str], prefix: str, on_bytes: Callable[[int], None]) -> tuple[int, int]:
    files = size = 0
    dst.mkdir(parents=True, exist_ok=True)
    for dirpath, dirs, names in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        out_dir = dst / rel_dir if rel_dir != "." else dst
        out_dir.mkdir(parents=True, exist_ok=True)
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
        os.chown(out_dir, st.st_uid, st.st_gid)
        shutil.copystat(dirpath, out_dir)
    return files, size


def create_backup(backup_dir: Path, sources: dict[str, Path], *, app_version: str, step_id: str, major: bool,
                  on_bytes: Callable[[int], None] = lambda n: None) -> BackupRecord:
    backup_dir = Path(backup_dir)
    need = int(tree_size(list(sources.values())) * 1.05) + 16 * 1024 * 1024
    check_space(backup_dir, need)
    bid = f"{time.strftime('%Y%m%dT%H%M%S')}-{app_version}-{step_id}"
    final = backup_dir / bid
    work = backup_dir / (bid + ".partial")
    if work.exists():
        shutil.rmtree(work)
    sums: list[str] = []
    files = size = 0
    for label, src in sources.items():
        if not src.exists():
            continue
        f, s = _copy_tree(src, work / label, sums, label, on_bytes)
        files, size = files + f, size + s
    record = BackupRecord(bid, str(final), iso(utc_now()), app_version, step_id, major,
                          {k: str(v) for k, v in sources.items() if v.exists()}, files, size)
    atomic_write_bytes(work / "SHA256SUMS", ("\n".join(sums) + "\n").encode())
    atomic_write_bytes(work / "backup.json", json.dumps(record.to_dict(), indent=2).encode())
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


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            buf = fh.read(CHUNK)
            if not buf:
                return h.hexdigest()
            h.update(buf)


def verify_tree(base: Path, sums: dict[str, str], labels: dict[str, Path] | None = None) -> list[str]:
    """Paths whose content differs from the sums (``labels`` maps a label to where it now lives)."""
    bad = []
    for rel, digest in sums.items():
        label, _, inner = rel.partition("/")
        root = labels[label] if labels else base / label
        p = root / inner
        if not p.is_file() or hash_file(p) != digest:
            bad.append(rel)
    return bad


def load_record(path: Path) -> BackupRecord:
    try:
        return BackupRecord(**json.loads((Path(path) / "backup.json").read_text("utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise ToolkitError(f"{path} is not a complete backup: {exc}") from exc


def restore_backup(record: BackupRecord) -> None:
    """Put every source back exactly as it was in the backup; checks every file's sha256 afterwards."""
    base = Path(record.path)
    sums = read_sums(base)
    bad = verify_tree(base, sums)
    if bad:
        raise ToolkitError(f"backup {record.id} is damaged: {len(bad)} file(s) differ from SHA256SUMS "
                           f"(first: {bad[0]})", "Choose another backup with --backup ID.")
    stamp = time.strftime("%Y%m%d%H%M%S")
    moved: list[tuple[Path, Path]] = []
    try:
        for label, original in record.sources.items():
            target = Path(original)
            if target.exists() or target.is_symlink():
                aside = target.with_name(f"{target.name}.before-rollback-{stamp}")
                os.replace(target, aside)
                moved.append((target, aside))
            _copy_tree(base / label, target, [], label, lambda n: None)
        bad = verify_tree(base, sums, {k: Path(v) for k, v in record.sources.items()})
        if bad:
            raise ToolkitError(f"restored files differ from the backup ({bad[0]} ...)")
    except BaseException:
        for target, aside in moved:  # put the pre-rollback state back
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            os.replace(aside, target)
        raise
    for _target, aside in moved:
        shutil.rmtree(aside, ignore_errors=True)
