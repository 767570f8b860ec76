"""The step runner: walk a signed plan's typed steps on a Toolkit, journaling every step and phase.

Each step kind runs through the Toolkit's own commands in its own module under :mod:`importer.upgrade.steps`
(see :mod:`importer.upgrade` for what each does); the journal (:class:`importer.upgrade.journal.Journal`)
records every status and phase so that ``--resume`` continues at the right place and a repeated step is
harmless.

    result = run_upgrade(ctx, plan, journal, present, bundle_id, code_update=None)   # preflight first
    Upgrader(ctx, Journal.new(ctx.toolkit, bundle_id, plan, "3.5.10"), audit).run()  # the steps only
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable

from manifests.bundle import iso, utc_now
from manifests.errors import DeclinedError, PausedForCheck, PreflightError, StepFailed
from manifests.toolkit_config import ToolkitConfig, read_toolkit

from importer.upgrade.base import Context, plan_steps
from importer.upgrade.journal import Audit, Journal
from importer.upgrade.preflight import preflight
from importer.upgrade.steps import STEP_RUNNERS, StepBase
from importer.upgrade.toolkit import Toolkit, capabilities


class Upgrader:
    """Runs the plan's steps in order, each through its kind's runner, skipping those the journal has done."""

    def __init__(self, ctx: Context, journal: Journal, audit: Audit) -> None:
        self.ctx, self.j, self.audit = ctx, journal, audit
        self.steps = plan_steps(journal.plan)
        self.tk = Toolkit(ctx.toolkit)
        self.runners: dict[str, StepBase] = {kind: cls(ctx, journal, audit, steps=self.steps)
                                             for kind, cls in STEP_RUNNERS.items()}

    def run(self) -> None:
        steps = self.steps
        for i, step in enumerate(steps, 1):
            sid = step.id
            if self.j.status(sid) == "done":
                continue
            self.ctx.say(f"[{i}/{len(steps)}] {step.description}")
            self.j.set_status(sid, "running")
            self.audit.record(f"step {sid}", "started", description=step.description)
            try:
                self.runners[step.kind].run(step)
            except PausedForCheck:
                self.j.set_status(sid, "paused")
                self.audit.record(f"step {sid}", "paused for a manual check")
                raise
            except StepFailed as exc:   # said with the step's id, the journal's name for it (--json: "step")
                self.j.set_status(sid, "failed", note=exc.message)
                self.audit.record(f"step {sid}", "failed", error=exc.message)
                named = copy.copy(exc)
                named.message, named.details = f"step {sid}: {exc.message}", {**exc.details, "step": sid}
                raise named from exc
            except BaseException as exc:
                msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                self.j.set_status(sid, "failed", note=msg)
                self.audit.record(f"step {sid}", "failed", error=msg)
                raise
            self.j.set_status(sid, "done")
            self.audit.record(f"step {sid}", "done")
        self.j.finished = iso(utc_now())
        self.j.save()
        self.audit.record("upgrade", "finished", version=self.tk.read_version())


def run_upgrade(ctx: Context, plan: dict, journal: Journal | None, present: Callable[[str], bool], bundle_id: str,
                *, code_update: Callable[[Audit], None] | None = None) -> dict:
    """Preflight, then the steps, on a Toolkit the caller has locked (``ToolkitLock``) and whose images are
    loaded. ``code_update`` moves the Toolkit code first (a new upgrade only). Returns the result summary."""
    audit = Audit(ctx.toolkit, bundle_id)
    problems = preflight(ctx, plan, journal, present)
    if problems:
        if journal is not None:  # an upgrade under way: its change record notes the refusal
            audit.record("preflight", "refused", problems=problems)
        raise PreflightError("preflight found problems; nothing was changed:\n  - " + "\n  - ".join(problems),
                             "Fix them and run the same command again.")
    cfg = read_toolkit(ctx.toolkit)
    if journal is None:
        if code_update is not None:
            code_update(audit)
        if not ctx.opts.yes and not ctx.ask(f"Upgrade Overleaf {plan['from']} -> {plan['to']} in "
                                            f"{len(plan['steps'])} steps (backups included)?"):
            raise DeclinedError("upgrade not confirmed: nothing was changed",
                                "Answer yes, or pass --yes for unattended runs.")
        journal = Journal.new(ctx.toolkit, bundle_id, plan, cfg.version)
        journal.save()
        audit.record("upgrade", "started", frm=plan["from"], to=plan["to"], steps=len(plan["steps"]))
    else:
        audit.record("upgrade", "resumed", next=(journal.next_step() or {}).get("id"))
    tk = Toolkit(ctx.toolkit)
    if rc_needs_rename(ctx.toolkit):  # as bin/rename-rc-vars does, with a copy kept
        tk.rename_sharelatex_vars(["overleaf.rc"])
        audit.record("config", "renamed SHARELATEX_ keys in overleaf.rc")
    for key, value in pull_settings_needed(read_toolkit(ctx.toolkit)).items():
        tk.set_rc(key, value, keep_copy=True)
        audit.record("config", "set", key=key, value=value)
    started = time.monotonic()
    Upgrader(ctx, journal, audit).run()
    return {"ok": True, "version": tk.read_version(), "steps": len(plan["steps"]),
            "seconds": round(time.monotonic() - started, 1), "notes": ctx.notes}

def rc_needs_rename(toolkit: Path) -> bool:
    """An old overleaf.rc with SHARELATEX_ keys, on a Toolkit whose code reads the OVERLEAF_ names (then every
    bin/ command refuses the old ones, facts 2.5). An older Toolkit reads the old names: they stay."""
    rc = Path(toolkit) / "config" / "overleaf.rc"
    return rc.exists() and "SHARELATEX_" in rc.read_text("utf-8") and capabilities(Path(toolkit)).overleaf_rc_names

def pull_settings_needed(cfg: ToolkitConfig) -> dict[str, str]:
    want = {"PULL_BEFORE_UPGRADE": "false", "SIBLING_CONTAINERS_PULL": "false"}
    return {k: v for k, v in want.items() if cfg.rc.get(k, "").strip().lower() != v}
