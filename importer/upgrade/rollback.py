"""Rollback and status: restore a checked backup of an upgrade, and say where an upgrade stands.

    rollback(ctx, wanted=None, backup_dir=None, start=True)   # the backup before the last major step
    status(Path("/srv/overleaf-toolkit"))["journal"]["next"]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from manifests.console import safe
from manifests.errors import DeclinedError, ToolkitError
from manifests.toolkit_config import read_toolkit

from importer.upgrade.backup import check_record, load_record, restore_backup
from importer.upgrade.journal import Audit, Journal, ToolkitLock
from importer.upgrade.toolkit import Toolkit, check_config_files, compose_project, service_container
from importer.upgrade.base import Context, data_sources, default_backup_dir

def current_sources(toolkit: Path) -> dict[str, Path]:
    return data_sources(read_toolkit(toolkit))

def choose_backup(toolkit: Path, journal: Journal | None, backup_dir: Path | None, wanted: str | None):
    """The backup to restore (``wanted``, else the one before the last major step), checked by
    :func:`importer.upgrade.backup.check_record` against its own folder and the Toolkit's current paths."""
    folders: list[Path] = []
    if journal is not None:
        folders = [Path(r["path"]) for r in journal.backups if isinstance(r, dict) and Path(str(r.get("path"))).is_dir()]
    if not folders:
        base = backup_dir or default_backup_dir(toolkit)
        if base.is_dir():
            folders = [p for p in sorted(base.iterdir())
                       if p.is_dir() and not p.name.endswith(".partial") and (p / "backup.json").is_file()]
    if not folders:
        raise ToolkitError("no backups found for this Toolkit", "Give --backup-dir where the backups are.")
    records = [(f, load_record(f)) for f in folders]
    if wanted:
        chosen = [(f, r) for f, r in records if r.id == wanted]
        if not chosen:
            raise ToolkitError(f"no backup {wanted}", "Known: " + ", ".join(r.id for _f, r in records))
    else:
        chosen = [(f, r) for f, r in records if r.major] or records
    folder, rec = chosen[-1]
    check_record(rec, folder, current_sources(toolkit))
    return rec

def rollback(ctx: Context, wanted: str | None, backup_dir: Path | None, start: bool = True) -> dict:
    toolkit = ctx.toolkit
    check_config_files(toolkit)
    with ToolkitLock(toolkit):
        journal = Journal.load(toolkit)
        audit = Audit(toolkit, journal.bundle_id if journal else None)
        rec = choose_backup(toolkit, journal, backup_dir, wanted)
        if not ctx.opts.yes and not ctx.ask(f"Stop Overleaf and restore backup {rec.id} (version {rec.app_version})? "
                                            "Changes made since then are lost."):
            raise DeclinedError("rollback declined: nothing was changed", "Answer yes, or pass --yes.")
        audit.record("rollback", "started", backup=rec.id)
        tk = Toolkit(toolkit, log=lambda s: ctx.say(f"    {s}"))
        stop = tk.run(["stop"], check=False)
        if stop.code != 0 and ctx.client is not None:  # the Toolkit may refuse a half-changed config: stop directly
            project = compose_project(read_toolkit(toolkit).rc)
            for name in ("sharelatex", "git-bridge", "nginx", "redis", "mongo"):
                try:
                    c = service_container(ctx.client, project, name)
                    if c is not None:
                        c.stop(timeout=30)
                except Exception as err:  # noqa: BLE001 - the engine may refuse; bin/stop was tried first
                    ctx.say(f"    could not stop the {name} container ({type(err).__name__}: {safe(err)}); "
                            "the restore goes on")
        restore_backup(rec)
        for item in rec.not_covered:
            ctx.say(f"    not restored (not in the backup): {item}")
        if journal is not None:
            ids = [s["id"] for s in journal.plan["steps"]]
            if rec.step_id in ids:
                for sid in ids[ids.index(rec.step_id):]:
                    journal.steps[sid] = {"status": "pending", "phases": []}
                journal.steps[rec.step_id] = {"status": "done", "phases": [], "note": f"restored backup {rec.id}"}
            journal.finished = None
            journal.save()
        if start:
            tk.up()
        audit.record("rollback", "done", backup=rec.id, version=tk.read_version(), started=start)
        return {"backup": rec.id, "version": tk.read_version(), "started": start, "not_covered": rec.not_covered}

def status(toolkit: Path) -> dict:
    cfg = read_toolkit(toolkit)
    journal = Journal.load(toolkit)
    out: dict[str, Any] = {"toolkit": str(Path(toolkit).resolve()), "version": cfg.version, "edition": cfg.edition,
                           "mongo": cfg.mongo_version, "redis": cfg.redis_version, "journal": None, "backups": []}
    if journal:
        nxt = journal.next_step()
        out["journal"] = {
            "bundle_id": journal.bundle_id, "from": journal.plan["from"], "to": journal.plan["to"],
            "started": journal.started, "finished": journal.finished,
            "done": journal.done_count(), "total": len(journal.plan["steps"]),
            "next": nxt["id"] if nxt else None,
            "steps": [{"id": s["id"], "status": journal.steps[s["id"]]["status"],
                       "description": s["description"], **({"note": journal.steps[s["id"]]["note"]}
                                                           if "note" in journal.steps[s["id"]] else {})}
                      for s in journal.plan["steps"]],
        }
        out["backups"] = [{"id": b["id"], "path": b["path"], "bytes": b["bytes"], "files": b["files"],
                           "app_version": b["app_version"], "exists": Path(b["path"]).exists()}
                          for b in journal.backups]
    return out
