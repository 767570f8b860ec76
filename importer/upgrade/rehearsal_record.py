"""What a rehearsal measured: the record ``overleaf-import rehearse`` writes and ``report`` reads.

A rehearsal runs the whole upgrade on a sandbox copy of the site; its record says how long the
backup, every plan step and the final health check took there, and how it ended. It lives at
``<toolkit>/.overleaf-airgap/rehearsals/<UTC stamp>.json`` (schema 1, written atomically) and is
read back with the same size cap and strict JSON as every other file of ours:

    record = RehearsalRecord.new("b-123", "5.5.8", "6.2.2", sandbox="/srv/overleaf-toolkit.rehearsal")
    record.add_step(StepTiming("03-app-6.2.2", "app", "Overleaf 6.2.2", "done", 41.5))
    path = record.save(Path("/srv/overleaf-toolkit"))
    same = RehearsalRecord.load(path)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from manifests.atomic import atomic_write_bytes
from manifests.bundle import canonical_json, iso, utc_now
from manifests.errors import ToolkitError
from manifests.safeio import JOURNAL_CAP, loads_json, read_regular

RECORD_SCHEMA = 1
RECORD_KIND = "overleaf-airgap-rehearsal"
REHEARSALS_DIR = "rehearsals"
STEP_STATUSES = ("done", "failed", "paused", "skipped", "pending")


@dataclass(frozen=True)
class StepTiming:
    """One plan step as the rehearsal ran it: id and kind from the plan, wall seconds, how it ended."""
    id: str
    kind: str
    title: str
    status: str
    seconds: float

    @classmethod
    def from_dict(cls, d: Any) -> StepTiming:
        if not isinstance(d, dict):
            raise ValueError("a step is not an object")
        for key in ("id", "kind", "title", "status"):
            if not isinstance(d.get(key), str):
                raise ValueError(f"step {key!r} is missing or not a string")
        if d["status"] not in STEP_STATUSES:
            raise ValueError(f"step status {d['status']!r} is not one of {', '.join(STEP_STATUSES)}")
        seconds = d.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError("step 'seconds' is not a non-negative number")
        return cls(d["id"], d["kind"], d["title"], d["status"], float(seconds))


@dataclass
class RehearsalRecord:
    """How one rehearsal went (see the module docstring for where it is kept)."""
    bundle_id: str
    from_version: str
    to_version: str
    started: str
    sandbox: str
    finished: str | None = None
    ok: bool = False
    error: str | None = None
    kept: bool = False
    backup_seconds: float | None = None
    backup_bytes: int | None = None
    health_seconds: float | None = None
    steps: list[StepTiming] = field(default_factory=list)

    @classmethod
    def new(cls, bundle_id: str, from_version: str, to_version: str, *, sandbox: str) -> RehearsalRecord:
        return cls(bundle_id, from_version, to_version, iso(utc_now()), str(sandbox))

    def add_step(self, timing: StepTiming) -> None:
        self.steps.append(timing)

    @property
    def total_seconds(self) -> float:
        """Backup, steps and health check added up: the downtime the real upgrade can expect."""
        return sum(s.seconds for s in self.steps) + (self.backup_seconds or 0.0) + (self.health_seconds or 0.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [asdict(s) for s in self.steps]
        return {"schema": RECORD_SCHEMA, "kind": RECORD_KIND, **d, "total_seconds": round(self.total_seconds, 3)}

    @classmethod
    def from_dict(cls, d: Any) -> RehearsalRecord:
        if not isinstance(d, dict) or d.get("kind") != RECORD_KIND:
            raise ValueError("not a rehearsal record")
        if d.get("schema") != RECORD_SCHEMA or isinstance(d.get("schema"), bool):
            raise ValueError(f"schema {d.get('schema')!r}, expected {RECORD_SCHEMA}")
        for key in ("bundle_id", "from_version", "to_version", "started", "sandbox"):
            if not isinstance(d.get(key), str):
                raise ValueError(f"{key!r} is missing or not a string")
        for key in ("finished", "error"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ValueError(f"{key!r} is not a string")
        for key in ("ok", "kept"):
            if not isinstance(d.get(key), bool):
                raise ValueError(f"{key!r} is not true or false")
        for key in ("backup_seconds", "health_seconds"):
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ValueError(f"{key!r} is not a non-negative number")
        size = d.get("backup_bytes")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ValueError("'backup_bytes' is not a non-negative integer")
        if not isinstance(d.get("steps"), list):
            raise ValueError("'steps' is not a list")
        return cls(d["bundle_id"], d["from_version"], d["to_version"], d["started"], d["sandbox"],
                   d.get("finished"), d["ok"], d.get("error"), d["kept"],
                   None if d.get("backup_seconds") is None else float(d["backup_seconds"]), size,
                   None if d.get("health_seconds") is None else float(d["health_seconds"]),
                   [StepTiming.from_dict(s) for s in d["steps"]])

    def save(self, toolkit: Path) -> Path:
        """Write the record under the (real) Toolkit's state folder; returns its path."""
        folder = Path(toolkit) / ".overleaf-airgap" / REHEARSALS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.started.replace(':', '').replace('-', '')}.json"
        atomic_write_bytes(path, canonical_json(self.to_dict()) + b"\n")
        return path

    @classmethod
    def load(cls, path: Path) -> RehearsalRecord:
        """Read a record back; anything that is not what :meth:`save` writes is ToolkitError (exit 30)."""
        hint = "pass a file that `overleaf-import rehearse` wrote (under .overleaf-airgap/rehearsals/)"
        data = read_regular(path, JOURNAL_CAP, "rehearsal record", ToolkitError, hint=hint)
        parsed = loads_json(data, "rehearsal record", ToolkitError, hint)
        try:
            return cls.from_dict(parsed)
        except ValueError as e:
            raise ToolkitError(f"{path}: the rehearsal record is malformed: {e}", hint=hint) from None


def latest_record(toolkit: Path, bundle_id: str) -> tuple[RehearsalRecord | None, Path | None, list[str]]:
    """The newest record of a rehearsal of ``bundle_id`` under ``toolkit`` (one that went through preferred), its
    path, and a note for each record that could not be read (skipped)."""
    folder = Path(toolkit) / ".overleaf-airgap" / REHEARSALS_DIR
    found: list[tuple[RehearsalRecord, Path]] = []
    notes: list[str] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            rec = RehearsalRecord.load(path)
        except ToolkitError as err:
            notes.append(f"skipped {path.name}: {err.message}")
            continue
        if rec.bundle_id == bundle_id:
            found.append((rec, path))
    if not found:
        return None, None, notes
    ok = [f for f in found if f[0].ok]
    rec, path = (ok or found)[-1]
    return rec, path, notes
