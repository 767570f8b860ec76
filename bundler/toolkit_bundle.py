"""The Overleaf Toolkit checkout as a git bundle, for hosts whose ``bin/upgrade`` cannot reach GitHub.

The bundle holds ``HEAD`` and the current branch (when HEAD is on one), so that the
offline admin can ``git fetch toolkit.gitbundle HEAD`` (or the branch) into the host's
Toolkit. Uncommitted changes are not carried: a warning says so.

    info = check_toolkit(Path("~/overleaf-toolkit"))       # ToolkitInfo(commit, branch, dirty)
    write_toolkit_bundle(info, stage / "toolkit.gitbundle")
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from manifests.errors import ToolkitError
from manifests.gitrun import git

BUNDLE_NAME = "toolkit.gitbundle"


@dataclass(frozen=True)
class ToolkitInfo:
    path: Path
    commit: str
    branch: str | None
    dirty: bool


def _git(path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return git(path, *args, check=check, hint="Install git and pass --carry-toolkit a git checkout of "
                                               "github.com/overleaf/toolkit, or leave out --carry-toolkit.")


def check_toolkit(path: Path) -> ToolkitInfo:
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise ToolkitError(f"--carry-toolkit {path} is not a folder", "Pass a git checkout of the Overleaf Toolkit.")
    top = _git(path, "rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != path:
        raise ToolkitError(f"--carry-toolkit {path} is not the top of a git checkout",
                           "Pass the folder you cloned github.com/overleaf/toolkit into.")
    commit = _git(path, "rev-parse", "--verify", "HEAD").stdout.strip()
    branch = _git(path, "symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.strip() or None
    dirty = bool(_git(path, "status", "--porcelain", "--untracked-files=no").stdout.strip())
    return ToolkitInfo(path, commit, branch, dirty)


def write_toolkit_bundle(info: ToolkitInfo, dest: Path) -> None:
    refs = ["HEAD"] + ([f"refs/heads/{info.branch}"] if info.branch else [])
    _git(info.path, "bundle", "create", str(Path(dest).resolve()), *refs)
