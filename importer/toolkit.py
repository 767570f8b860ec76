"""Driving an Overleaf Toolkit checkout through its own commands and config files.

Commands run as the admin would run them (``bin/stop``, ``bin/up -d``,
``bin/docker-compose exec -T ...``) with ``DOCKER_HOST`` passed through. Config edits
keep the file's other lines, comments and order, are written atomically, and keep a
copy of the old file the way ``bin/upgrade`` does (``config/__old-version``,
``config/__old-variables.env.<timestamp>``).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from manifests.atomic import atomic_write_bytes
from manifests.errors import ToolkitError

CONTAINERS = ("sharelatex", "mongo", "redis", "git-bridge", "nginx")


@dataclass
class Result:
    code: int
    output: str


def _stamp() -> str:
    return time.strftime("%Y%m%d%H%M%S")


class Toolkit:
    def __init__(self, root: Path, *, log: Callable[[str], None] = lambda s: None, timeout: float = 1800) -> None:
        self.root = Path(root).resolve()
        self.log = log
        self.timeout = timeout
        self.config = self.root / "config"

    # --- commands -------------------------------------------------------------------
    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None) -> Result:
        """Run ``bin/<cmd> args`` in the Toolkit folder; output is captured (stdout+stderr)."""
        cmd = [str(self.root / "bin" / argv[0]), *argv[1:]]
        self.log("$ " + " ".join(["bin/" + argv[0], *argv[1:]]))
        try:
            proc = subprocess.run(cmd, cwd=self.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout or self.timeout,
                                  env=os.environ.copy())
        except subprocess.TimeoutExpired as exc:
            raise ToolkitError(f"bin/{argv[0]} did not finish within {int(exc.timeout)} s",
                               "Look at `bin/logs` and `bin/docker-compose ps`, then run the upgrade with --resume.") from exc
        except OSError as exc:
            raise ToolkitError(f"cannot run bin/{argv[0]}: {exc.strerror}",
                               "Check that the Toolkit folder is complete and its bin/ scripts are executable.") from exc
        res = Result(proc.returncode, proc.stdout)
        if check and res.code != 0:
            tail = "\n".join(res.output.strip().splitlines()[-15:])
            raise ToolkitError(f"bin/{' '.join(argv)} failed (exit {res.code}):\n{tail}",
                               "Fix the cause shown above, then run the upgrade again with --resume.")
        return res

    def stop(self, *services: str) -> None:
        self.run(["stop", *services])

    def up(self, *services: str) -> None:
        self.run(["up", "-d", *services])

    def compose_up(self, *services: str) -> None:
        """Start some services only (``bin/docker-compose up -d SERVICE``), e.g. MongoDB alone."""
        self.run(["docker-compose", "up", "-d", *services])

    def exec(self, service: str, command: str, *, timeout: float | None = None) -> Result:
        return self.run(["docker-compose", "exec", "-T", service, "/bin/bash", "-c", command],
                        check=False, timeout=timeout)

    def exec_argv(self, service: str, argv: Sequence[str]) -> Result:
        return self.run(["docker-compose", "exec", "-T", service, *argv], check=False)

    # --- config files ---------------------------------------------------------------
    def read_version(self) -> str:
        return (self.config / "version").read_text("utf-8").strip()

    def write_version(self, version: str) -> None:
        """As bin/upgrade does: keep the old one in config/__old-version, then write atomically."""
        old = self.config / "version"
        if old.exists() and old.read_text("utf-8").strip() != version:
            atomic_write_bytes(self.config / "__old-version", old.read_bytes())
        atomic_write_bytes(old, (version + "\n").encode())

    def _edit(self, name: str, key: str, value: str | None, *, keep_copy: bool) -> bool:
        """Set (or, with value None, remove) ``KEY=`` in a config file; True when it changed."""
        path = self.config / name
        text = path.read_text("utf-8") if path.exists() else ""
        lines = text.splitlines()
        pat = re.compile(rf"^\s*(?:export\s+)?{re.escape(key)}=")
        new_line = None if value is None else f"{key}={value}"
        out, found = [], False
        for line in lines:
            if pat.match(line):
                if found or new_line is None:
                    continue
                found = True
                out.append(new_line)
            else:
                out.append(line)
        if not found and new_line is not None:
            out.append(new_line)
        new_text = "\n".join(out) + "\n"
        if new_text == (text if text.endswith("\n") else text + "\n"):
            return False
        if keep_copy and path.exists():
            shutil.copy2(path, self.config / f"__old-{name}.{_stamp()}")
        atomic_write_bytes(path, new_text.encode())
        return True

    def set_rc(self, key: str, value: str | None, *, keep_copy: bool = False) -> bool:
        return self._edit("overleaf.rc", key, value, keep_copy=keep_copy)

    def set_env(self, key: str, value: str | None, *, keep_copy: bool = False) -> bool:
        return self._edit("variables.env", key, value, keep_copy=keep_copy)

    def rename_sharelatex_vars(self, names: Sequence[str] = ("variables.env", "overleaf.rc")) -> list[str]:
        """SHARELATEX_ -> OVERLEAF_ in the given config files (default both), dropping the legacy TEXMFVAR
        line, each changed file first copied to ``config/__old-<name>.<timestamp>``. Idempotent."""
        changed = []
        for name in names:
            path = self.config / name
            if not path.exists():
                continue
            text = path.read_text("utf-8")
            new = re.sub(r"SHARELATEX_", "OVERLEAF_", text)
            if name == "variables.env":
                new = "".join(l for l in new.splitlines(keepends=True)
                              if not re.match(r"^\s*TEXMFVAR=/var/lib/sharelatex/tmp/texmf-var\s*$", l))
            if new != text:
                shutil.copy2(path, self.config / f"__old-{name}.{_stamp()}")
                atomic_write_bytes(path, new.encode())
                changed.append(name)
        return changed
