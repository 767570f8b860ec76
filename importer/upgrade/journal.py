"""The importer's own files inside a Toolkit folder: lock, journal, audit log.

The Toolkit folder itself is flock()ed while an upgrade or rollback runs.

``<toolkit>/.overleaf-airgap/`` (made by the first change, never by a refused run)
  ``journal.json`` where the upgrade is: plan, per-step status and phase (atomic rewrite)
  ``audit.log``   append-only JSON lines: time, bundle id, action, result (for change records)

A journal that is not what :meth:`Journal.save` writes is refused with ToolkitError (exit 30).

    with ToolkitLock(toolkit):
        journal = Journal.load(toolkit) or Journal.new(toolkit, bundle_id, plan, "5.5.8")
        journal.set_status(journal.next_step()["id"], "running")
        Audit(toolkit, bundle_id).record("upgrade", "started")
"""
from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manifests.atomic import atomic_write_bytes
from manifests.bundle import iso, utc_now
from manifests.errors import ToolkitError
from manifests.limits import LIMITS
from manifests.safeio import loads_json, read_regular

STATE_DIR = ".overleaf-airgap"
JOURNAL_SCHEMA = 1


STATUSES = ("pending", "running", "paused", "failed", "done")


def state_dir(toolkit: Path) -> Path:
    return Path(toolkit) / STATE_DIR


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"time": iso(utc_now()), "bundle": self.bundle_id, "action": action,
                           "result": result, **detail}, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())


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
        atomic_write_bytes(self.path, (json.dumps(d, indent=2, sort_keys=True) + "\n").encode())

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
