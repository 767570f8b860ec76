"""The importer's own files inside a Toolkit folder: lock, journal, audit log.

The Toolkit folder itself is flock()ed while an upgrade or rollback runs.

``<toolkit>/.overleaf-airgap/`` (made by the first change, never by a refused run)
  ``journal.json`` where the upgrade is: plan, per-step status and phase (atomic rewrite)
  ``audit.log``   append-only JSON lines: time, bundle id, action, result (for change records)

A journal that is not what :meth:`Journal.save` writes is refused with ToolkitError (exit 30). The folder is
made 0700, the files 0600; a symbolic link planted as the folder, ``journal.json`` or ``audit.log`` is refused
with ToolkitError (``O_NOFOLLOW``), and its target is never written.

    with ToolkitLock(toolkit):
        journal = Journal.load(toolkit) or Journal.new(toolkit, bundle_id, plan, "5.5.8")
        journal.set_status(journal.next_step()["id"], "running")
        Audit(toolkit, bundle_id).record("upgrade", "started")
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manifests.atomic import SymlinkRefused, atomic_write_bytes
from manifests.bundle import iso, utc_now
from manifests.errors import ToolkitError
from manifests.limits import LIMITS
from manifests.safeio import loads_json, read_regular

STATE_DIR = ".overleaf-airgap"
JOURNAL_SCHEMA = 1


STATUSES = ("pending", "running", "paused", "failed", "done")


def state_dir(toolkit: Path) -> Path:
    return Path(toolkit) / STATE_DIR


_LINK_HINT = "Something planted a link there: remove it (and find out who did), then run the command again."


def ensure_state_dir(toolkit: Path) -> Path:
    """``<toolkit>/.overleaf-airgap``, made 0700 when missing; ToolkitError when it is a link or not a folder."""
    path = state_dir(toolkit)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ToolkitError(f"cannot make {path}: {exc.strerror}", "Check the Toolkit folder's permissions.") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a folder"
        raise ToolkitError(f"{path} is {kind}: the importer keeps its journal and audit log only in a real folder",
                           _LINK_HINT)
    return path


def journal_problem(d: Any) -> str | None:
    """What is wrong with a parsed journal (None: it has the shape :meth:`Journal.save` writes).

        journal_problem([])  # -> "not a JSON object"
    """
    if not isinstance(d, dict):
        return "not a JSON object"
    if d.get("schema") != JOURNAL_SCHEMA or isinstance(d.get("schema"), bool):
        return f"schema {d.get('schema')!r}, expected {JOURNAL_SCHEMA}"
    for key in ("bundle_id", "start_version", "started"):
        if not isinstance(d.get(key), str):
            return f"{key!r} is missing or not a string"
    if d.get("finished") is not None and not isinstance(d["finished"], str):
        return "'finished' is not a string"
    plan, steps = d.get("plan"), d.get("steps")
    if not isinstance(plan, dict) or not isinstance(plan.get("steps"), list):
        return "'plan' has no list of steps"
    if not isinstance(steps, dict):
        return "'steps' is not an object"
    ids = []
    for s in plan["steps"]:
        if not isinstance(s, dict) or not isinstance(s.get("id"), str):
            return "a plan step has no id"
        ids.append(s["id"])
    if len(set(ids)) != len(ids):
        return "the plan repeats a step id"
    missing = [sid for sid in ids if sid not in steps]
    if missing:
        return f"plan step {missing[0]!r} has no status entry"
    for sid, entry in steps.items():
        if sid not in ids:
            return f"step {sid!r} is not in the plan"
        if not isinstance(entry, dict) or entry.get("status") not in STATUSES:
            return f"step {sid!r} has no valid status"
        if not isinstance(entry.get("phases"), list) or not all(isinstance(p, str) for p in entry["phases"]):
            return f"step {sid!r} has no list of phases"
        if "note" in entry and not isinstance(entry["note"], str):
            return f"step {sid!r} has a note that is not a string"
    backups = d.get("backups", [])
    if not isinstance(backups, list) or not all(isinstance(b, dict) for b in backups):
        return "'backups' is not a list of objects"
    return None


class ToolkitLock:
    """An exclusive, non-blocking flock() on the Toolkit folder itself: creates no file, and the
    kernel releases it when the process ends in any way (crash, SIGKILL, power loss)."""

    def __init__(self, toolkit: Path) -> None:
        self.path = Path(toolkit)
        self.fd: int | None = None

    def __enter__(self) -> "ToolkitLock":
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise ToolkitError(f"another overleaf-import run is working on this Toolkit ({self.path} is locked)",
                               "Wait for it to finish; `overleaf-import status --toolkit DIR` shows where it is.") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Audit:
    def __init__(self, toolkit: Path, bundle_id: str | None) -> None:
        self.path = state_dir(toolkit) / "audit.log"
        self.bundle_id = bundle_id

    def record(self, action: str, result: str, **detail: Any) -> None:
        ensure_state_dir(self.path.parent.parent)
        line = json.dumps({"time": iso(utc_now()), "bundle": self.bundle_id, "action": action,
                           "result": result, **detail}, sort_keys=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(self.path):
                raise ToolkitError(f"the audit log {self.path} is a symbolic link: refused, nothing written",
                                   _LINK_HINT) from None
            raise ToolkitError(f"cannot open the audit log {self.path}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ToolkitError(f"the audit log {self.path} is not a regular file: refused, nothing written",
                                   _LINK_HINT)
            data = (line + "\n").encode("utf-8")
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class Journal:
    """Where an upgrade stands. Written atomically after every change of a step's status or phase."""

    toolkit: Path
    bundle_id: str
    plan: dict[str, Any]
    start_version: str
    started: str
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    backups: list[dict[str, Any]] = field(default_factory=list)
    finished: str | None = None

    @property
    def path(self) -> Path:
        return state_dir(self.toolkit) / "journal.json"

    @classmethod
    def new(cls, toolkit: Path, bundle_id: str, plan: dict[str, Any], start_version: str) -> "Journal":
        j = cls(Path(toolkit), bundle_id, plan, start_version, iso(utc_now()))
        for s in plan["steps"]:
            j.steps[s["id"]] = {"status": "pending", "phases": []}
        return j

    @classmethod
    def load(cls, toolkit: Path) -> "Journal | None":
        """The journal of ``toolkit``, or None when there is none.

        ToolkitError (exit 30) for a journal that cannot be read or does not have the shape
        :meth:`save` writes: every plan step needs a status entry, every status is known."""
        path = state_dir(toolkit) / "journal.json"
        hint = "Restore it from the audit log's record or move it away to start over."
        what = "the upgrade journal"
        if os.path.islink(path.parent):
            raise ToolkitError(f"{path.parent} is a symbolic link: the importer keeps its journal only in a real "
                               "folder", _LINK_HINT)
        try:
            data = read_regular(path, LIMITS.journal, what, ToolkitError, hint=hint)
        except FileNotFoundError:
            return None
        d = loads_json(data, f"{what} {path}", ToolkitError, hint)
        problem = journal_problem(d)
        if problem:
            raise ToolkitError(f"{what} {path} is unreadable: {problem}", hint)
        return cls(Path(toolkit), d["bundle_id"], d["plan"], d["start_version"], d["started"],
                   d["steps"], d.get("backups", []), d.get("finished"))

    def save(self) -> None:
        d = {"schema": JOURNAL_SCHEMA, "bundle_id": self.bundle_id, "plan": self.plan,
             "start_version": self.start_version, "started": self.started, "steps": self.steps,
             "backups": self.backups, "finished": self.finished}
        ensure_state_dir(self.toolkit)
        try:
            atomic_write_bytes(self.path, (json.dumps(d, indent=2, sort_keys=True) + "\n").encode(), mode=0o600,
                               keep=True)
        except SymlinkRefused:
            raise ToolkitError(f"the upgrade journal {self.path} is a symbolic link (or not a regular file): "
                               "refused, nothing written", _LINK_HINT) from None

    # --- step bookkeeping -----------------------------------------------------------
    def status(self, step_id: str) -> str:
        return self.steps[step_id]["status"]

    def has_phase(self, step_id: str, phase: str) -> bool:
        return phase in self.steps[step_id]["phases"]

    def mark_phase(self, step_id: str, phase: str) -> None:
        if phase not in self.steps[step_id]["phases"]:
            self.steps[step_id]["phases"].append(phase)
            self.save()

    def set_status(self, step_id: str, status: str, note: str | None = None) -> None:
        entry = self.steps[step_id]
        entry["status"] = status
        entry[{"running": "started", "done": "finished"}.get(status, "updated")] = iso(utc_now())
        if note is not None:
            entry["note"] = note
        self.save()

    def next_step(self) -> dict[str, Any] | None:
        for s in self.plan["steps"]:
            if self.steps[s["id"]]["status"] != "done":
                return s
        return None

    def done_count(self) -> int:
        return sum(1 for s in self.steps.values() if s["status"] == "done")
