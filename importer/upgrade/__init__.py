"""``overleaf-import upgrade``: walk a bundle's plan on a Toolkit, step by step.

The plan (from the verified manifest) is a list of typed steps; this module runs each
one through the Toolkit's own commands, recording every step and phase in the
journal so that ``--resume`` continues from the right place after a crash, Ctrl-C or
power loss, and so that repeating a step is harmless:

* ``backup``: ``bin/stop``, then a checksummed copy of every data path and ``config/``
  (an external MongoDB or Redis is not covered, and the backup says so).
* ``app``: stop, ``config/version`` (old one kept in ``config/__old-version``), ``bin/up -d``,
  health check. Once ``config/version`` is written, a resumed step never stops the app again
  (its first start may be running database migrations).
* ``mongo``: on the running server (once it is the replica set's primary), set feature
  compatibility to the current series; stop; switch ``MONGO_VERSION`` (the older
  ``MONGO_IMAGE=mongo:X.Y`` is moved to the split form when the Toolkit reads it); start
  MongoDB; raise feature compatibility. With ``MONGO_ENABLED=false`` the importer never
  touches the database: it reads the server's version and feature compatibility through the
  app container and pauses (exit 40) with instructions for the database admin.
* ``redis``: switch ``REDIS_IMAGE`` and restart Redis (external Redis: as MongoDB).
* ``migration``: commands from the importer's own catalog (never from the bundle), started
  detached in the app container with their output, pid and exit code kept there, followed
  with no time limit; a resumed run waits for a copy that is still running instead of
  starting a second one. The binary-files migration stops for a person's check at level 1.
* ``config``: the SHARELATEX_ -> OVERLEAF_ rename (copies kept) or a required secret.

Preflight checks everything it can before the first change (the Toolkit's capabilities,
override file, data paths, external databases, TeX Live images); ``--dry-run`` prints the
actions and changes nothing.

The work is split by phase: :mod:`importer.upgrade.base` (errors, options, typed steps, what
the config means, what each step does), :mod:`importer.upgrade.preflight`, :mod:`importer.upgrade.runner`
(the steps), :mod:`importer.upgrade.rollback` (rollback and status) and
:mod:`importer.upgrade.toolkit_code`. This module is their public face, and runs a whole upgrade
(journal policy, dry run, lock, load, Toolkit code, steps) for a front end that gives it
``say``/``ask`` and the bundle's verify and load:

    outcome = upgrade_toolkit(Path("/srv/overleaf-toolkit"), UpgradeOptions(yes=True), verify=..., load=...,
                              say=print, ask=lambda q: False)
    outcome.result["version"]        # or outcome.dry_run.problems, or outcome.nothing_to_resume
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from manifests.errors import AirgapError, HealthCheckError, PausedForCheck, PreflightError, StepFailed, ToolkitError
from manifests.toolkit_config import read_toolkit

from importer.images import engine as eng
from importer.images.load import pinned_ids
from importer.upgrade.preflight import (assumed_images, capability_problems, check_resume_plan, config_problems,
                        data_path_problems, preflight, remaining_steps, texlive_problems)
from importer.upgrade.rollback import choose_backup, rollback, status
from importer.upgrade.rehearse import RehearseOptions, rehearse
from importer.upgrade.rehearsal_record import RehearsalRecord, latest_record
from importer.upgrade.estimate import Estimate, estimate_plan, text_lines
from importer.upgrade.site import read_site
from importer.upgrade.report import ChangeReport, gather_report, write_report
from importer.upgrade.runner import Upgrader, pull_settings_needed, rc_needs_rename, run_upgrade
from importer.upgrade.journal import Audit, Journal, ToolkitLock
from importer.upgrade.toolkit import check_config_files
from importer.upgrade.toolkit_code import update_toolkit_code
from importer.upgrade.base import (Context, RunStep, UpgradeOptions, data_sources, describe, not_covered, plan_steps,
                           validate_plan)
from importer.images.verify import VerifiedBundle

__all__ = [
    "ChangeReport", "Context", "DryRun", "Estimate", "estimate_toolkit", "report_toolkit", "text_lines", "write_report", "RehearseOptions", "rehearse_toolkit", "HealthCheckError", "PausedForCheck", "PreflightError", "RunStep", "StepFailed",
    "UpgradeOptions", "UpgradeOutcome", "Upgrader", "assumed_images", "capability_problems", "check_resume_plan",
    "choose_backup", "config_problems", "data_path_problems", "data_sources", "describe", "not_covered",
    "plan_steps", "preflight", "pull_settings_needed", "rc_needs_rename", "remaining_steps", "rollback",
    "rollback_toolkit", "run_upgrade", "status", "texlive_problems", "update_toolkit_code", "upgrade_toolkit", "validate_plan",
]


@dataclass
class DryRun:
    """What an upgrade would do, and the problems preflight found; nothing was changed."""

    frm: str
    to: str
    problems: list[str]
    pull_settings: dict[str, str]
    rename_rc: bool
    actions: dict[str, list[str]]

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": True, "problems": self.problems, "pull_settings": self.pull_settings,
                "steps": [{"id": k, "actions": v} for k, v in self.actions.items()]}


@dataclass
class UpgradeOutcome:
    """One of: the finished run's ``result``, a ``dry_run``, or ``nothing_to_resume``."""

    result: dict[str, Any] | None = None
    dry_run: DryRun | None = None
    nothing_to_resume: bool = False
    notes: list[str] = field(default_factory=list)


def current_journal(root: Path, resume: bool) -> Journal | None:
    """The unfinished upgrade to continue (``resume``), or None for a new one; ToolkitError when an upgrade
    is under way and ``resume`` was not asked for."""
    journal = Journal.load(root)
    if journal is not None and journal.finished and not resume:
        return None  # a finished upgrade: a new one starts afresh
    if journal is not None and not resume:
        raise ToolkitError(f"an upgrade of this Toolkit is in progress (journal {journal.path}, bundle "
                           f"{journal.bundle_id}, {journal.done_count()}/{len(journal.steps)} steps done)",
                           "Continue it with --resume (see `overleaf-import status`), or roll back.")
    return None if journal is not None and journal.finished else journal


def upgrade_toolkit(toolkit: Path, opts: UpgradeOptions, *, verify: Callable[[bool], VerifiedBundle],
                    load: Callable[[VerifiedBundle], Any], say: Callable[[str], None],
                    ask: Callable[[str], bool]) -> UpgradeOutcome:
    """Verify and load the bundle, then run its plan on ``toolkit`` (or describe it: ``opts.dry_run``).

    ``verify(stream_parts)`` checks the bundle (``stream_parts=True``: the parts are only found and sized;
    ``load`` then checks every segment as it streams them, one read of the media, and records the bundle).
    A dry run loads nothing, so it checks every part in ``verify``.
    """
    root = toolkit.resolve()
    check_config_files(root)   # a symlinked config file: refused before anything is read or changed
    cfg = read_toolkit(root)
    journal = current_journal(root, opts.resume)
    if opts.resume and journal is None:
        say("Nothing to resume: no unfinished upgrade is recorded for this Toolkit.")
        return UpgradeOutcome(nothing_to_resume=True)
    vb = verify(not opts.dry_run)
    m = vb.manifest
    if journal is not None and journal.bundle_id != m.bundle_id:
        raise ToolkitError(f"the unfinished upgrade came from bundle {journal.bundle_id}, not {m.bundle_id}",
                           "Resume with the same bundle, or roll back first.")
    if journal is not None:
        check_resume_plan(journal, m.plan)
    plan = m.plan
    ctx = Context(root, m, opts, say, ask)
    ctx.code_update_pending = m.toolkit is not None and journal is None and (
        opts.update_toolkit is True or (opts.update_toolkit is None and opts.yes))
    client = eng.connect()
    ctx.client = client
    pinned = pinned_ids(m, eng.engine_info(client).image_store)  # classic: config digest; containerd: manifest

    def present(ref: str) -> bool:
        got = eng.image_id(client, ref)
        if opts.dry_run and got is None:
            return ref in pinned  # the load would bring it
        return got is not None and (ref not in pinned or got == pinned[ref])

    if opts.dry_run:
        problems = preflight(ctx, plan, journal, present)
        suffix = "-with-texlive-full" if plan["from"].endswith("-with-texlive-full") else ""
        actions = {s.id: describe(s, suffix) for s in remaining_steps(plan, journal)}
        return UpgradeOutcome(dry_run=DryRun(plan["from"], plan["to"], problems, pull_settings_needed(cfg),
                                             rc_needs_rename(root), actions))

    with ToolkitLock(root):
        load(vb)

        def code_update(audit: Audit) -> None:  # the Toolkit code first, as bin/upgrade does
            if m.toolkit is None:
                return
            ref = next(f for f in m.files if f.name == m.toolkit["file"])
            choice = opts.update_toolkit if opts.update_toolkit is not None else (True if opts.yes else None)
            say(update_toolkit_code(root, vb.folders.find(ref), m.toolkit["commit"], choice, audit, ask))

        result = run_upgrade(ctx, plan, journal, present, m.bundle_id, code_update=code_update)
    return UpgradeOutcome(result=result, notes=list(ctx.notes))


def rehearse_toolkit(toolkit: Path, opts: RehearseOptions, *, verify: Callable[[bool], VerifiedBundle],
                     load: Callable[[VerifiedBundle], Any], say: Callable[[str], None],
                     on_step: Callable[[int, int, str], None] = lambda i, n, text: None) -> tuple[RehearsalRecord, Path]:
    """Rehearse the bundle's upgrade on a sandbox copy of ``toolkit`` with :func:`upgrade_toolkit` itself; see
    :func:`importer.upgrade.rehearse.rehearse`. Returns the record and where it was saved."""
    return rehearse(toolkit, opts, upgrade=upgrade_toolkit, verify=verify, load=load, say=say, on_step=on_step)


def estimate_toolkit(toolkit: Path, *, verify: Callable[[bool], VerifiedBundle],
                     backup_dir: Path | None = None) -> Estimate:
    """Verify the bundle (its signed manifest and files; the parts are found and sized, never read), then read the
    site (:func:`importer.upgrade.site.read_site`: reads only) and estimate every step of the bundle's plan
    (:func:`importer.upgrade.estimate.estimate_plan`), with the timings of this bundle's rehearsal if one was
    recorded. SiteReadError (exit 34) when the site's databases do not answer; nothing is changed."""
    root = toolkit.resolve()
    check_config_files(root)
    cfg = read_toolkit(root)
    vb = verify(True)
    m = vb.manifest
    steps = plan_steps(m.plan)
    facts = read_site(root, cfg, eng.connect(), backup_dir)
    record, path, skipped = latest_record(root, m.bundle_id)
    est = estimate_plan(m, steps, facts, record, path.name if path else None)
    est.notes += skipped
    journal = Journal.load(root)
    if journal is not None and not journal.finished:
        est.notes.append(f"an upgrade of this Toolkit is under way ({journal.done_count()}/{len(journal.steps)} steps "
                         "done): the figures are for the whole plan on the site as it is now")
    return est


def report_toolkit(toolkit: Path, *, verify: Callable[[bool], VerifiedBundle],
                   backup_dir: Path | None = None) -> ChangeReport:
    """Verify the bundle as :func:`estimate_toolkit` does, then gather the change report
    (:func:`importer.upgrade.report.gather_report`: the estimate, the rehearsal record, the preflight as a dry
    run; reads only). An engine that does not answer is said in the report."""
    root = toolkit.resolve()
    check_config_files(root)
    cfg = read_toolkit(root)
    vb = verify(True)
    client, why = None, None
    try:
        client = eng.connect()
    except AirgapError as err:
        why = err.message
    return gather_report(root, vb, cfg, client, backup_dir=backup_dir, client_error=why)


def rollback_toolkit(toolkit: Path, wanted: str | None, backup_dir: Path | None, *, yes: bool, start: bool,
                     say: Callable[[str], None], ask: Callable[[str], bool],
                     warn: Callable[[str], None]) -> dict[str, Any]:
    """Restore backup ``wanted`` (default: the one before the last major step) of ``toolkit``; see
    :func:`importer.upgrade.rollback.rollback`. An unreachable engine is only warned about: the Toolkit's own
    ``bin/stop`` is tried first anyway."""
    ctx = Context(toolkit.resolve(), None, UpgradeOptions(yes=yes), say, ask)
    try:
        ctx.client = eng.connect()
    except Exception as exc:  # noqa: BLE001 - see above
        warn(f"engine: {getattr(exc, 'message', exc)}")
    return rollback(ctx, wanted, backup_dir, start=start)
