"""Git, run the one way both sides run it: on a given checkout, no prompt, output captured.

The bundler reads and bundles the Toolkit checkout (``overleaf-bundle build --carry-toolkit``); the
importer moves the offline Toolkit to the commit a bundle carries. Both go through :func:`git`,
which refuses clearly when git is missing, never waits for input, and names the checkout it ran in
(``safe.directory`` is set for that one folder, so a Toolkit owned by another user still reads).

    head = git(toolkit, "rev-parse", "HEAD", check=True, hint="Pass a git checkout.").stdout.strip()
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .errors import ToolkitError


def git(path: Path, *args: str, check: bool = False, hint: str = "") -> subprocess.CompletedProcess:
    """``git -C path ARGS`` (text, captured, stdin closed). ToolkitError (exit 30) with ``hint`` when git
    is not installed, or, with ``check``, when git fails (its first 300 characters of stderr said)."""
    if shutil.which("git") is None:
        raise ToolkitError("git is not installed, so the Toolkit checkout cannot be read", hint or "Install git.")
    proc = subprocess.run(["git", "-c", f"safe.directory={path}", "-C", str(path), *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ToolkitError(f"git {' '.join(args)} failed in {path}: {proc.stderr.strip()[:300]}", hint)
    return proc
