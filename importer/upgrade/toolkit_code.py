"""Move a Toolkit checkout to the commit a bundle carries, offline, as ``bin/upgrade`` would online.

The bundle carries the Toolkit's code as a git bundle; the checkout is fast-forwarded to the
bundle's commit, the CHANGELOG lines added since are shown, and ``origin/<branch>`` is moved
so that a later ``bin/upgrade`` does not offer a pull that cannot work offline.

    text = update_toolkit_code(Path("/srv/overleaf-toolkit"), Path("bundle/toolkit.gitbundle"), commit,
                               choice=None, audit=None, ask=lambda q: False)
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

from manifests.errors import ToolkitError
from manifests.gitrun import git

from importer.upgrade.journal import Audit


def _git(toolkit: Path, *args: str) -> subprocess.CompletedProcess:
    return git(toolkit, *args, hint="Install git, or pass --keep-toolkit-code to leave the Toolkit code as it is.")


def update_toolkit_code(toolkit: Path, gitbundle: Path, commit: str, choice: bool | None, audit: Audit | None,
                        ask: Callable[[str], bool] | None = None) -> str:
    """Move the Toolkit checkout to the bundle's commit (fast-forward, from the git bundle, no network).

    ``choice`` None: ``ask`` the admin (no ``ask``: leave the code as it is). The git bundle may carry
    branches or just ``HEAD`` (a detached checkout): both are fetched. Returns what happened, in words."""
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
        choice = ask is not None and ask(f"Move the Toolkit code from {head[:12]} to the bundle's {commit[:12]}?")
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
