"""``overleaf-import upgrade``, ``rollback`` and ``status``: the Toolkit side of the importer.

    overleaf-import upgrade BUNDLE_DIR --toolkit DIR [--yes] [--dry-run] [--backup-dir DIR] [--resume]
    overleaf-import rollback --toolkit DIR [--backup ID]
    overleaf-import status --toolkit DIR
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer

from manifests.console import CTX, emit_json, run, say, warn
from manifests.errors import ToolkitError
from manifests.toolkit_config import read_toolkit

from .state import Audit, Journal, ToolkitLock
from .upgrade import (Context, PreflightError, UpgradeOptions, check_resume_plan, describe, preflight,
                      pull_settings_needed, rc_needs_rename, remaining_steps, run_upgrade)
from .upgrade import rollback as do_rollback
from .upgrade import status as do_status

ToolkitOpt = typer.Option(..., "--toolkit", metavar="DIR", help="The Overleaf Toolkit folder (with bin/ and config/).")


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty() and not CTX.json


def _ask(question: str) -> bool:
    if not _interactive():
        return False
    return click.confirm(question, default=False, err=True)


def _git(toolkit: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(toolkit), *args], capture_output=True, text=True)


def update_toolkit_code(toolkit: Path, gitbundle: Path, commit: str, choice: bool | None, audit: Audit | None) -> str:
    """Move the Toolkit checkout to the bundle's commit (fast-forward, from the git bundle, no network).

    The git bundle may carry branches or just ``HEAD`` (a detached checkout): both are fetched. The
    CHANGELOG changes are shown (as ``bin/upgrade`` shows them), and ``origin/<branch>`` is moved to the
    new commit so that a later ``bin/upgrade`` does not offer a pull that cannot work offline."""
    if not (toolkit / ".git").exists():
        return "the Toolkit folder is not a git checkout: its code was left as it is"
    head = _git(toolkit, "rev-parse", "HEAD").stdout.strip()
    if head == commit:
        return f"the Toolkit code is already at {commit[:12]}"
    dirty = _git(toolkit, "status", "--porcelain", "--untracked-files=no").stdout.strip()
    if dirty:
        raise ToolkitError("the Toolkit checkout has local changes to tracked files:\n" + dirty,
                           "Commit or stash them (git -C TOOLKIT stash), or pass --keep-toolkit-code.")
    if choice is None:
        choice = _ask(f"Move the Toolkit code from {head[:12]} to the bundle's {commit[:12]}?")
    if not choice:
        return f"the Toolkit code stays at {head[:12]} (the bundle carries {commit[:12]}; --update-toolkit-code moves it)"
    errors = []
    for refspec in ("+refs/heads/*:refs/remotes/overleaf-airgap/*", "+HEAD:refs/remotes/overleaf-airgap/HEAD"):
        fetch = _git(toolkit, "fetch", "-q", str(gitbundle), refspec)
        if fetch.returncode != 0:
            errors.append(fetch.stderr.strip())
    if _git(toolkit, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        raise ToolkitError(f"cannot fetch {commit[:12]} from the bundle's Toolkit git bundle: {'; '.join(errors)}")
    changelog = _git(toolkit, "diff", "--unified=0", head, commit, "--", "CHANGELOG.md").stdout
    added = [line[1:] for line in changelog.splitlines() if line.startswith("+") and not line.startswith("+++")]
    merge = _git(toolkit, "merge", "-q", "--ff-only", commit)
    if merge.returncode != 0:
        raise ToolkitError(f"the Toolkit checkout cannot fast-forward to {commit[:12]}: {merge.stderr.strip()}",
                           "Its history diverged from the bundle's: move it by hand (git -C TOOLKIT log), "
                           "or pass --keep-toolkit-code.")
    branch = _git(toolkit, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    if branch and branch != "HEAD" and _git(toolkit, "config", "remote.origin.url").returncode == 0:
        _git(toolkit, "update-ref", f"refs/remotes/origin/{branch}", commit)
    if audit:
        audit.record("toolkit code", "updated", old=head, new=commit)
    text = f"the Toolkit code moved from {head[:12]} to {commit[:12]}"
    if added:
        shown = added[:80]
        text += "\nToolkit CHANGELOG since the old code (read it: some entries ask for config changes):\n  " + \
            "\n  ".join(shown) + ("\n  ..." if len(added) > len(shown) else "")
    return text


def upgrade(bundle_dir: Path = typer.Argument(..., metavar="BUNDLE_DIR"),
            toolkit: Path = ToolkitOpt,
            trust: Optional[List[Path]] = typer.Option(None, "--trust", metavar="PUBKEY", help="Trusted public key; repeatable."),
            parts_from: Optional[List[Path]] = typer.Option(None, "--parts-from", metavar="DIR", help="More part folders."),
            allow_expired: bool = typer.Option(False, "--allow-expired"),
            allow_downgrade: bool = typer.Option(False, "--allow-downgrade"),
            replace_tags: bool = typer.Option(False, "--replace-tags"),
            yes: bool = typer.Option(False, "--yes", "-y", help="Answer yes to every question (not to manual checks)."),
            dry_run: bool = typer.Option(False, "--dry-run", help="Print what would happen; change nothing."),
            backup_dir: Optional[Path] = typer.Option(None, "--backup-dir", help="Where backups go (default: TOOLKIT-backups beside the Toolkit)."),
            resume: bool = typer.Option(False, "--resume", help="Continue an interrupted or paused upgrade."),
            generate_secrets: bool = typer.Option(False, "--generate-secrets", help="Create missing required secrets (kept in config/variables.env)."),
            health_timeout: float = typer.Option(300.0, "--health-timeout", help="Seconds to wait for services to be healthy."),
            update_code: Optional[bool] = typer.Option(None, "--update-toolkit-code/--keep-toolkit-code",
                                                       help="Move the Toolkit checkout to the commit the bundle carries."),
            json_out: bool = typer.Option(False, "--json")) -> None:
    """Verify and load the bundle, then run its stepped upgrade on the Toolkit."""
    from .cli import _load, _verified  # the load path is shared with `overleaf-import load`
    from . import engine as eng

    CTX.json = CTX.json or json_out
    opts = UpgradeOptions(yes=yes, dry_run=dry_run, resume=resume, backup_dir=backup_dir,
                          health_timeout=health_timeout, generate_secrets=generate_secrets, update_toolkit=update_code)

    def go() -> None:
        root = toolkit.resolve()
        cfg = read_toolkit(root)
        journal = Journal.load(root)
        if journal is not None and journal.finished and not resume:
            journal = None  # a finished upgrade: a new one starts afresh
        if journal is not None and not resume:
            raise ToolkitError(f"an upgrade of this Toolkit is in progress (journal {journal.path}, bundle "
                               f"{journal.bundle_id}, {journal.done_count()}/{len(journal.steps)} steps done)",
                               "Continue it with --resume (see `overleaf-import status`), or roll back.")
        if resume and (journal is None or journal.finished):
            say("Nothing to resume: no unfinished upgrade is recorded for this Toolkit.")
            return
        vb = _verified(bundle_dir, trust, parts_from, allow_expired, allow_downgrade)
        m = vb.manifest
        if journal is not None and journal.bundle_id != m.bundle_id:
            raise ToolkitError(f"the unfinished upgrade came from bundle {journal.bundle_id}, not {m.bundle_id}",
                               "Resume with the same bundle, or roll back first.")
        if journal is not None:
            check_resume_plan(journal, m.plan)
        plan = m.plan
        ctx = Context(root, m, opts, say, _ask)
        ctx.code_update_pending = m.toolkit is not None and journal is None and (
            opts.update_toolkit is True or (opts.update_toolkit is None and yes))
        client = eng.connect()
        ctx.client = client
        pinned = {i.ref: i.id for i in m.images}

        def present(ref: str) -> bool:
            got = eng.image_id(client, ref)
            if dry_run and got is None:
                return ref in pinned  # the load would bring it
            return got is not None and (ref not in pinned or got == pinned[ref])

        if dry_run:
            problems = preflight(ctx, plan, journal, present)
            suffix = "-with-texlive-full" if plan["from"].endswith("-with-texlive-full") else ""
            actions = {s["id"]: describe(s, suffix) for s in remaining_steps(plan, journal)}
            if CTX.json:
                emit_json({"dry_run": True, "problems": problems, "pull_settings": pull_settings_needed(cfg),
                           "steps": [{"id": k, "actions": v} for k, v in actions.items()]})
            else:
                say(f"Dry run: nothing is changed. The upgrade {plan['from']} -> {plan['to']} would:")
                if rc_needs_rename(root):
                    say("  rename SHARELATEX_ keys to OVERLEAF_ in config/overleaf.rc (copy kept)")
                for k, v in pull_settings_needed(cfg).items():
                    say(f"  set {k}={v} in config/overleaf.rc (copy kept)")
                say("  load the bundle's images that the engine lacks")
                for sid, acts in actions.items():
                    say(f"  {sid}:")
                    for a in acts:
                        say(f"      {a}")
                for p in problems:
                    warn(f"preflight: {p}")
            if problems:
                raise PreflightError(f"preflight found {len(problems)} problem(s) (listed above)")
            return

        with ToolkitLock(root):
            _load(vb, replace_tags)

            def code_update(audit: Audit) -> None:  # the Toolkit code first, as bin/upgrade does
                if m.toolkit is None:
                    return
                ref = next(f for f in m.files if f.name == m.toolkit["file"])
                choice = opts.update_toolkit if opts.update_toolkit is not None else (True if yes else None)
                say(update_toolkit_code(root, vb.folders.find(ref), m.toolkit["commit"], choice, audit))

            result = run_upgrade(ctx, plan, journal, present, m.bundle_id, code_update=code_update)
            for note in ctx.notes:
                say(f"note: {note}")
            if CTX.json:
                emit_json(result)
            else:
                say(f"OK: Overleaf is at {result['version']}; {result['steps']} steps done in {result['seconds']} s.")

    run(go)


def rollback(toolkit: Path = ToolkitOpt,
             backup: Optional[str] = typer.Option(None, "--backup", metavar="ID", help="Backup to restore (default: the one before the last major step)."),
             backup_dir: Optional[Path] = typer.Option(None, "--backup-dir", help="Where the backups are."),
             yes: bool = typer.Option(False, "--yes", "-y"),
             no_start: bool = typer.Option(False, "--no-start", help="Leave services stopped after the restore."),
             json_out: bool = typer.Option(False, "--json")) -> None:
    """Stop services, restore a backup's data and config/ (checksums verified), start again."""
    from . import engine as eng
    CTX.json = CTX.json or json_out

    def go() -> None:
        ctx = Context(toolkit.resolve(), None, UpgradeOptions(yes=yes), say, _ask)
        try:
            ctx.client = eng.connect()
        except Exception as exc:  # noqa: BLE001 - the Toolkit's own bin/stop is tried first anyway
            warn(f"engine: {getattr(exc, 'message', exc)}")
        res = do_rollback(ctx, backup, backup_dir, start=not no_start)
        if CTX.json:
            emit_json({"ok": True, **res})
        else:
            say(f"OK: restored backup {res['backup']}; Overleaf is at {res['version']}"
                + ("." if res["started"] else " (services left stopped: bin/up -d starts them)."))

    run(go)


def status(toolkit: Path = ToolkitOpt, json_out: bool = typer.Option(False, "--json")) -> None:
    """Current version, where the upgrade stands, its journal and backups."""
    CTX.json = CTX.json or json_out

    def go() -> None:
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

    run(go)


def register(app: typer.Typer) -> None:
    app.command()(upgrade)
    app.command()(rollback)
    app.command()(status)
