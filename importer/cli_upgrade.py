"""``overleaf-import upgrade``, ``rollback`` and ``status``: options in, text or JSON out.

    overleaf-import upgrade BUNDLE_DIR --toolkit DIR [--yes] [--dry-run] [--backup-dir DIR] [--resume]
    overleaf-import rollback --toolkit DIR [--backup ID]
    overleaf-import status --toolkit DIR
    overleaf-import rehearse BUNDLE_DIR --toolkit DIR [--keep] [--sandbox DIR]
    overleaf-import estimate BUNDLE_DIR --toolkit DIR [--backup-dir DIR]
    overleaf-import report BUNDLE_DIR --toolkit DIR [--html FILE] [--markdown FILE]

The work is done by :mod:`importer.upgrade` (and the modules behind it); this module parses
the options, asks the admin's questions and prints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from manifests.console import CTX, command, emit_json, interactive, say, warn

from manifests.errors import PreflightError

from importer.options import BundleArg, DowngradeOpt, ExpiredOpt, PartsOpt, TrustOpt

# importer.upgrade (and the Docker SDK and YAML under it) is imported inside the commands: start-up time

ToolkitOpt = typer.Option(..., "--toolkit", metavar="DIR", help="The Overleaf Toolkit folder (with bin/ and config/).")


def _front_ends() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The verify and load front ends shared with ``overleaf-import load`` (imported when a command runs)."""
    from importer.cli_common import load_verified, verified

    return verified, load_verified


def _ask(question: str) -> bool:
    if not interactive():
        return False
    return typer.confirm(question, default=False, err=True)


@command
def upgrade(bundle_dir: Path = BundleArg,
            toolkit: Path = ToolkitOpt,
            trust: Optional[List[Path]] = TrustOpt,
            parts_from: Optional[List[Path]] = PartsOpt,
            allow_expired: bool = ExpiredOpt,
            allow_downgrade: bool = DowngradeOpt,
            replace_tags: bool = typer.Option(False, "--replace-tags", help="Move tags that name other images here to the bundle's images."),
            yes: bool = typer.Option(False, "--yes", "-y", help="Answer yes to every question (not to manual checks)."),
            dry_run: bool = typer.Option(False, "--dry-run", help="Print what would happen; change nothing."),
            backup_dir: Optional[Path] = typer.Option(None, "--backup-dir", help="Where backups go (default: TOOLKIT-backups beside the Toolkit)."),
            resume: bool = typer.Option(False, "--resume", help="Continue an interrupted or paused upgrade."),
            generate_secrets: bool = typer.Option(False, "--generate-secrets", help="Create missing required secrets (kept in config/variables.env)."),
            health_timeout: float = typer.Option(300.0, "--health-timeout", help="Seconds to wait for services to be healthy."),
            update_code: Optional[bool] = typer.Option(None, "--update-toolkit-code/--keep-toolkit-code",
                                                       help="Move the Toolkit checkout to the commit the bundle carries."),
            json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout.")) -> None:
    """Verify and load the bundle, then run its stepped upgrade on the Toolkit."""
    from importer.upgrade import UpgradeOptions, upgrade_toolkit

    _load = _front_ends()[1]
    opts = UpgradeOptions(yes=yes, dry_run=dry_run, resume=resume, backup_dir=backup_dir,
                          health_timeout=health_timeout, generate_secrets=generate_secrets, update_toolkit=update_code)

    outcome = upgrade_toolkit(
        toolkit, opts, say=say, ask=_ask,
        verify=_verify_front(bundle_dir, trust, parts_from, allow_expired, allow_downgrade),
        load=lambda vb: _load(vb, replace_tags))
    if outcome.nothing_to_resume:
        if CTX.json:
            emit_json({"ok": True, "nothing_to_resume": True})
        return
    dry = outcome.dry_run
    if dry is not None:
        if CTX.json:
            emit_json(dry.to_dict())
        else:
            say(f"Dry run: nothing is changed. The upgrade {dry.frm} -> {dry.to} would:")
            if dry.rename_rc:
                say("  rename SHARELATEX_ keys to OVERLEAF_ in config/overleaf.rc (copy kept)")
            for k, v in dry.pull_settings.items():
                say(f"  set {k}={v} in config/overleaf.rc (copy kept)")
            say("  load the bundle's images that the engine lacks")
            for sid, acts in dry.actions.items():
                say(f"  {sid}:")
                for a in acts:
                    say(f"      {a}")
            for p in dry.problems:
                warn(f"preflight: {p}")
        if dry.problems:
            raise PreflightError(f"preflight found {len(dry.problems)} problem(s) (listed above)")
        return
    result = outcome.result or {}
    for note in outcome.notes:
        say(f"note: {note}")
    if CTX.json:
        emit_json(result)
    else:
        say(f"OK: Overleaf is at {result['version']}; {result['steps']} steps done in {result['seconds']} s.")


@command
def rehearse(bundle_dir: Path = BundleArg,
             toolkit: Path = ToolkitOpt,
             trust: Optional[List[Path]] = TrustOpt,
             parts_from: Optional[List[Path]] = PartsOpt,
             allow_expired: bool = ExpiredOpt,
             allow_downgrade: bool = DowngradeOpt,
             replace_tags: bool = typer.Option(False, "--replace-tags", help="Move tags that name other images here to the bundle's images."),
             sandbox: Optional[Path] = typer.Option(None, "--sandbox", metavar="DIR", help="Where the sandbox goes (a new folder; default: TOOLKIT.rehearsal-STAMP beside the Toolkit)."),
             keep: bool = typer.Option(False, "--keep", help="Leave the sandbox (running, under its own names) for a look."),
             yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before the real site is stopped for its fresh backup."),
             health_timeout: float = typer.Option(300.0, "--health-timeout", help="Seconds to wait for services to be healthy."),
             json_out: bool = typer.Option(False, "--json", help="Print the record as JSON on stdout.")) -> None:
    """Rehearse the upgrade on a sandbox copy of the site (one short stop for a backup); time every step."""
    from manifests.console import progress
    from manifests.errors import DeclinedError
    from importer.upgrade import RehearseOptions, rehearse_toolkit

    _load = _front_ends()[1]
    opts = RehearseOptions(sandbox=sandbox, keep=keep, health_timeout=health_timeout)

    bar = None

    def on_step(i: int, n: int, text: str) -> None:
        nonlocal bar
        if bar is None:
            bar = progress(n, "rehearsal", unit="step")
        bar.n = i - 1
        bar.set_postfix_str(text[:40])
        bar.refresh()

    def load(vb):
        if not yes and not _ask("The real site stops for a fresh backup (then starts again), and the upgrade "
                                "is rehearsed on a copy. Go on?"):
            raise DeclinedError("rehearsal not confirmed: nothing was changed",
                                "Answer yes, or pass --yes for unattended runs.")
        return _load(vb, replace_tags)

    try:
        record, path = rehearse_toolkit(
            toolkit, opts, say=say, on_step=on_step, load=load,
            verify=_verify_front(bundle_dir, trust, parts_from, allow_expired, allow_downgrade))
    finally:
        if bar is not None:
            bar.close()
    if CTX.json:
        emit_json({"ok": True, "record": str(path), **record.to_dict()})
        return
    for s in record.steps:
        say(f"  {s.seconds:8.1f} s  {s.status:7s} {s.id}  {s.title}")
    say(f"  {record.backup_seconds or 0:8.1f} s  backup (the real upgrade's first stop), "
        f"{record.health_seconds or 0:.1f} s final health check")
    say(f"OK: rehearsed {record.from_version} -> {record.to_version} in {record.total_seconds:.1f} s of steps; "
        f"record {path}" + (f"; sandbox kept at {record.sandbox}" if record.kept else ""))


def _verify_front(bundle_dir: Path, trust: Optional[List[Path]], parts_from: Optional[List[Path]],
                  allow_expired: bool, allow_downgrade: bool) -> Callable[[bool], Any]:
    """The verify front end of these options, as the upgrade machinery calls it (``stream``: parts read later)."""
    verified, _load = _front_ends()
    return lambda stream: verified(bundle_dir, trust, parts_from, allow_expired, allow_downgrade, stream_parts=stream)


@command
def estimate(bundle_dir: Path = BundleArg,
             toolkit: Path = ToolkitOpt,
             trust: Optional[List[Path]] = TrustOpt,
             parts_from: Optional[List[Path]] = PartsOpt,
             allow_expired: bool = ExpiredOpt,
             allow_downgrade: bool = DowngradeOpt,
             backup_dir: Optional[Path] = typer.Option(None, "--backup-dir", help="Where the upgrade's backups will go (default: TOOLKIT-backups beside the Toolkit): its free space is checked."),
             json_out: bool = typer.Option(False, "--json", help="Print the estimate as JSON on stdout.")) -> None:
    """Estimate each plan step's downtime and disk from the site's own data, with the rate behind each figure."""
    from importer.upgrade import estimate_toolkit, text_lines

    verify = _verify_front(bundle_dir, trust, parts_from, allow_expired, allow_downgrade)
    est = estimate_toolkit(toolkit, verify=verify, backup_dir=backup_dir)
    if CTX.json:
        emit_json({"ok": True, **est.to_dict()})
        return
    for line in text_lines(est):
        say(line)


@command
def report(bundle_dir: Path = BundleArg,
           toolkit: Path = ToolkitOpt,
           html: Optional[Path] = typer.Option(None, "--html", metavar="FILE", help="Write the report as one self-contained HTML page."),
           markdown: Optional[Path] = typer.Option(None, "--markdown", metavar="FILE", help="Write the report as Markdown."),
           trust: Optional[List[Path]] = TrustOpt,
           parts_from: Optional[List[Path]] = PartsOpt,
           allow_expired: bool = ExpiredOpt,
           allow_downgrade: bool = DowngradeOpt,
           backup_dir: Optional[Path] = typer.Option(None, "--backup-dir", help="Where the upgrade's backups will go (default: TOOLKIT-backups beside the Toolkit)."),
           json_out: bool = typer.Option(False, "--json", help="Print a summary as JSON on stdout.")) -> None:
    """A change report for a change board: plan, images, estimates, rehearsal, preflight, risks, rollback points."""
    from manifests.errors import UsageError
    from importer.upgrade import report_toolkit, write_report

    if html is None and markdown is None:
        raise UsageError("report needs --html FILE and/or --markdown FILE", "Say where the report goes.")
    verify = _verify_front(bundle_dir, trust, parts_from, allow_expired, allow_downgrade)
    rep = report_toolkit(toolkit, verify=verify, backup_dir=backup_dir)
    written = write_report(rep, html=html, markdown=markdown)
    if CTX.json:
        emit_json({"ok": True, "written": [str(p) for p in written], **rep.to_dict()})
        return
    for p in written:
        say(f"Wrote {p}")
    say(f"OK: {len(rep.steps)} steps, {len(rep.images)} images, {len(rep.problems)} preflight problem(s), "
        f"{len(rep.risks)} risk(s), {len(rep.rollback)} rollback point(s)")


@command
def rollback(toolkit: Path = ToolkitOpt,
             backup: Optional[str] = typer.Option(None, "--backup", metavar="ID", help="Backup to restore (default: the one before the last major step)."),
             backup_dir: Optional[Path] = typer.Option(None, "--backup-dir", help="Where the backups are."),
             yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before restoring."),
             no_start: bool = typer.Option(False, "--no-start", help="Leave services stopped after the restore."),
             json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout.")) -> None:
    """Stop services, restore a backup's data and config/ (checksums verified), start again."""
    from importer.upgrade import rollback_toolkit

    res = rollback_toolkit(toolkit, backup, backup_dir, yes=yes, start=not no_start, say=say, ask=_ask,
                           warn=warn)
    if CTX.json:
        emit_json({"ok": True, **res})
    else:
        say(f"OK: restored backup {res['backup']}; Overleaf is at {res['version']}"
            + ("." if res["started"] else " (services left stopped: bin/up -d starts them)."))


@command
def status(toolkit: Path = ToolkitOpt,
           json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout.")) -> None:
    """Current version, where the upgrade stands, its journal and backups."""
    from importer.upgrade import status as do_status

    st = do_status(toolkit)
    if CTX.json:
        emit_json(st)
        return
    say(f"Toolkit {st['toolkit']}: Overleaf {st['version']} ({st['edition']}), MongoDB {st['mongo']}, Redis {st['redis']}")
    j = st["journal"]
    if not j:
        say("No upgrade recorded.")
    else:
        state = "finished " + j["finished"] if j["finished"] else f"next step: {j['next']}"
        say(f"Upgrade {j['from']} -> {j['to']} (bundle {j['bundle_id']}): {j['done']}/{j['total']} steps done; {state}")
        for s in j["steps"]:
            say(f"  {s['status']:8s} {s['id']}" + (f"  ({s['note'].splitlines()[0]})" if s.get("note") else ""))
    for b in st["backups"]:
        say(f"  backup {b['id']}: {b['bytes'] / 1e6:.1f} MB, {b['files']} files"
            + ("" if b["exists"] else " (MISSING)") + f"  {b['path']}")


def register(app: typer.Typer) -> None:
    """Add ``upgrade``, ``rehearse``, ``estimate``, ``report``, ``rollback`` and ``status`` to ``app``."""
    app.command()(upgrade)
    app.command()(rehearse)
    app.command()(estimate)
    app.command()(report)
    app.command()(rollback)
    app.command()(status)
