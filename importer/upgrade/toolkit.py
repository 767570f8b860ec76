"""Driving an Overleaf Toolkit checkout through its own commands and config files.

Commands run as the admin would run them (``bin/stop``, ``bin/up -d``,
``bin/docker-compose exec -T ...``) with ``DOCKER_HOST`` passed through. Config edits
keep the file's other lines, comments and order, are written atomically, and keep a
copy of the old file the way ``bin/upgrade`` does (``config/__old-version``,
``config/__old-variables.env.<timestamp>``). Every value written is checked against a
strict grammar first (:mod:`importer.upgrade.grammar`). A rewritten file, and its copy, keep the owner, group
and mode of the original (a 0600 ``variables.env`` with its generated secret stays 0600); a config file that
is a symbolic link (or a FIFO, a folder...) is refused with ToolkitError before anything is read or written
(:func:`check_config_files`), so a link's target is never copied nor replaced.

Ordinary commands (``bin/stop``, ``bin/up``) get a time limit (``OVERLEAF_AIRGAP_TOOLKIT_TIMEOUT``
seconds, default 1800); long commands (migrations) run with :meth:`Toolkit.stream`: no time
limit, each output line shown as it comes. While ``config/version`` holds a retracted release
(5.0.1, 5.0.2) the commands get ``OVERLEAF_SKIP_RETRACTION_CHECK``, as ``bin/upgrade`` does.

    tk = Toolkit(Path("/srv/overleaf-toolkit"), log=print)
    check_config_files(Path("/srv/overleaf-toolkit"))   # ToolkitError for a symlinked config/variables.env
    tk.stop(); tk.write_version("5.5.8"); tk.up()
    tk.stream(["docker-compose", "exec", "-T", "sharelatex", "/bin/bash", "-c", "..."])
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from manifests.atomic import SymlinkRefused, atomic_write_bytes, existing_attrs
from manifests.errors import ToolkitError
from manifests.safeio import MiB, read_regular
from manifests.versions import version_major

from importer.upgrade.grammar import check_config_value

CONTAINERS = ("sharelatex", "mongo", "redis", "git-bridge", "nginx")
RETRACTED = ("5.0.1", "5.0.2")
TIMEOUT_ENV = "OVERLEAF_AIRGAP_TOOLKIT_TIMEOUT"
TEXMFVAR_LEGACY = "TEXMFVAR=/var/lib/sharelatex/tmp/texmf-var"
CONFIG_FILES = ("version", "overleaf.rc", "variables.env")   # the config files the upgrade rewrites
CONFIG_CAP = 4 * MiB
NEW_FILE_MODE = {"variables.env": 0o600}                     # a variables.env we create holds secrets
_LINK_HINT = ("Replace the link with the real file (cp --remove-destination \"$(readlink -f F)\" F), check its "
              "owner and mode, then run the command again.")


def config_attrs(config: Path, name: str) -> os.stat_result | None:
    """``lstat`` of ``config/<name>`` (None: absent); ToolkitError when it is a symbolic link or not a regular file."""
    path = Path(config) / name
    try:
        return existing_attrs(path)
    except SymlinkRefused as exc:
        raise ToolkitError(f"config/{name} ({path}) is {exc.strerror}: the upgrade rewrites it and will not write "
                           "through a link nor copy its target", _LINK_HINT) from None
    except OSError as exc:
        raise ToolkitError(f"cannot inspect config/{name} ({path}): {exc.strerror}") from None


def check_config_files(root: Path) -> None:
    """ToolkitError (exit 30) when a config file the upgrade or rollback rewrites is a symbolic link or not a
    regular file; called before any change."""
    for name in CONFIG_FILES:
        config_attrs(Path(root) / "config", name)


def default_timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV) or 1800)
    except ValueError:
        return 1800.0


PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


def compose_project(cfg_rc: dict[str, str]) -> str:
    """The compose project name a Toolkit runs under: ``PROJECT_NAME`` (default ``overleaf``), as Compose
    normalises it for its labels (lowercase; only letters, digits, ``-`` and ``_``)."""
    name = (cfg_rc.get("PROJECT_NAME") or "overleaf").strip().lower()
    return re.sub(r"[^a-z0-9_-]", "", name) or "overleaf"


def service_container(client, project: str, service: str):
    """The container of compose ``service`` in ``project`` (found by the labels Compose v1 and v2 set), else
    the one named ``service`` (the Toolkit's fixed name) unless that one belongs to another compose project
    (e.g. the real site beside a rehearsal's sandbox); None when there is none."""
    import docker.errors
    found = client.containers.list(all=True, filters={"label": [f"{PROJECT_LABEL}={project}",
                                                                 f"{SERVICE_LABEL}={service}"]})
    if found:
        running = [c for c in found if c.status == "running"]
        return (running or found)[0]
    try:
        c = client.containers.get(service)
    except docker.errors.NotFound:
        return None
    owner = (c.labels or {}).get(PROJECT_LABEL)
    return c if owner in (None, project) else None


@dataclass
class Result:
    code: int
    output: str


def _stamp() -> str:
    return time.strftime("%Y%m%d%H%M%S")


class Toolkit:
    def __init__(self, root: Path, *, log: Callable[[str], None] = lambda s: None, timeout: float | None = None) -> None:
        self.root = Path(root).resolve()
        self.log = log
        self.timeout = timeout if timeout is not None else default_timeout()
        self.config = self.root / "config"

    def env(self) -> dict[str, str]:
        """The environment of bin/ commands: ours, plus the retraction bypass bin/upgrade uses."""
        env = os.environ.copy()
        env.pop("OVERLEAF_SKIP_RETRACTION_CHECK", None)
        try:
            version = self.read_version()
        except (OSError, ToolkitError):
            return env
        if version.split("-")[0] in RETRACTED:
            env["OVERLEAF_SKIP_RETRACTION_CHECK"] = version
        return env

    # --- commands -------------------------------------------------------------------
    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None) -> Result:
        """Run ``bin/<cmd> args`` in the Toolkit folder; output is captured (stdout+stderr)."""
        cmd = [str(self.root / "bin" / argv[0]), *argv[1:]]
        self.log("$ " + " ".join(["bin/" + argv[0], *argv[1:]]))
        try:
            proc = subprocess.run(cmd, cwd=self.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout or self.timeout,
                                  env=self.env())
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

    def stream(self, argv: Sequence[str], *, on_line: Callable[[str], None] | None = None) -> Result:
        """Run ``bin/<cmd> args`` with no time limit, showing each output line as it comes (long migrations)."""
        cmd = [str(self.root / "bin" / argv[0]), *argv[1:]]
        self.log("$ " + " ".join(["bin/" + argv[0], *argv[1:]]))
        show = on_line or (lambda line: self.log("  | " + line))
        lines: list[str] = []
        try:
            proc = subprocess.Popen(cmd, cwd=self.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace", env=self.env())
        except OSError as exc:
            raise ToolkitError(f"cannot run bin/{argv[0]}: {exc.strerror}",
                               "Check that the Toolkit folder is complete and its bin/ scripts are executable.") from exc
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if len(lines) > 5000:
                del lines[:1000]
            show(line)
        return Result(proc.wait(), "\n".join(lines) + ("\n" if lines else ""))

    def stop(self, *services: str) -> None:
        self.run(["stop", *services])

    def up(self, *services: str) -> None:
        self.run(["up", "-d", *services])

    def compose_up(self, *services: str) -> None:
        """Start some services only (``bin/docker-compose up -d SERVICE``), e.g. MongoDB alone."""
        self.run(["docker-compose", "up", "-d", *services])

    def exec_argv(self, service: str, argv: Sequence[str]) -> Result:
        return self.run(["docker-compose", "exec", "-T", service, *argv], check=False)

    # --- config files ---------------------------------------------------------------
    def read_config(self, name: str) -> tuple[str, os.stat_result | None]:
        """The text of ``config/<name>`` ("" when absent) and its ``lstat``; ToolkitError for a symbolic link,
        a FIFO or anything but a regular UTF-8 file of at most 4 MiB."""
        st = config_attrs(self.config, name)
        if st is None:
            return "", None
        path = self.config / name
        try:
            data = read_regular(path, CONFIG_CAP, f"config/{name}", ToolkitError, follow_symlinks=False,
                                hint=_LINK_HINT)
        except FileNotFoundError:
            return "", None
        try:
            return data.decode("utf-8"), st
        except UnicodeDecodeError as exc:
            raise ToolkitError(f"config/{name} ({path}) is not UTF-8 text (byte {exc.start})") from None

    def _write_config(self, name: str, data: bytes, like: os.stat_result | None) -> None:
        """Atomically replace ``config/<name>``, keeping the owner, group and mode of ``like`` (the file read)."""
        try:
            atomic_write_bytes(self.config / name, data, mode=NEW_FILE_MODE.get(name, 0o644), like=like)
        except OSError as exc:
            raise ToolkitError(f"cannot write config/{name}: {exc.strerror or exc}",
                               "Check the Toolkit's config/ folder (space, permissions).") from None

    def _keep_copy(self, name: str, copy_name: str, text: str, like: os.stat_result | None) -> None:
        """The old content as ``config/<copy_name>``, private like the original from its first byte (a link
        planted under that name is replaced, never followed)."""
        self._write_config(copy_name, text.encode("utf-8"), like)

    def read_version(self) -> str:
        return self.read_config("version")[0].strip()

    def write_version(self, version: str) -> None:
        """As bin/upgrade does: keep the old one in config/__old-version, then write atomically."""
        check_config_value("version", version)
        text, st = self.read_config("version")
        if st is not None and text.strip() != version:
            self._keep_copy("version", "__old-version", text, st)
        self._write_config("version", (version + "\n").encode(), st)

    def _edit(self, name: str, values: dict[str, str | None], *, keep_copy: bool) -> bool:
        """Set (or, with value None, remove) ``KEY=`` lines in a config file, all in one atomic write;
        True when it changed. Every value is checked against its grammar first."""
        for key, value in values.items():
            check_config_value(name, key, value)
            if name == "variables.env" and value is not None and key.startswith("OVERLEAF_") \
                    and version_major(self.read_version()) < 5:
                raise ToolkitError(f"refusing to add {key} to config/variables.env while config/version is "
                                   f"{self.read_version()}: below 5.0 every bin/ command refuses OVERLEAF_ variables",
                                   "It is added once the upgrade has moved to 5.x.")
        text, st = self.read_config(name)
        lines = text.splitlines()
        for key, value in values.items():
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
            lines = out
        new_text = "\n".join(lines) + "\n"
        if new_text == (text if text.endswith("\n") else text + "\n"):
            return False
        if keep_copy and st is not None:
            self._keep_copy(name, f"__old-{name}.{_stamp()}", text, st)
        self._write_config(name, new_text.encode(), st)
        return True

    def set_rc(self, key: str, value: str | None, *, keep_copy: bool = False) -> bool:
        return self._edit("overleaf.rc", {key: value}, keep_copy=keep_copy)

    def set_rc_many(self, values: dict[str, str | None], *, keep_copy: bool = False) -> bool:
        return self._edit("overleaf.rc", values, keep_copy=keep_copy)

    def set_env(self, key: str, value: str | None, *, keep_copy: bool = False) -> bool:
        return self._edit("variables.env", {key: value}, keep_copy=keep_copy)

    def rename_sharelatex_vars(self, names: Sequence[str] = ("variables.env", "overleaf.rc")) -> list[str]:
        """SHARELATEX_ -> OVERLEAF_ in the given config files (default both), dropping every line that holds the
        legacy TEXMFVAR setting (comments too: the Toolkit refuses it anywhere in variables.env), each changed
        file first copied to ``config/__old-<name>.<timestamp>``. Idempotent."""
        changed = []
        for name in names:
            text, st = self.read_config(name)
            if st is None:
                continue
            new = re.sub(r"SHARELATEX_", "OVERLEAF_", text)
            if name == "variables.env":
                new = "".join(l for l in new.splitlines(keepends=True) if TEXMFVAR_LEGACY not in l)
            if new != text:
                self._keep_copy(name, f"__old-{name}.{_stamp()}", text, st)
                self._write_config(name, new.encode(), st)
                changed.append(name)
        return changed


@dataclass(frozen=True)
class Capabilities:
    """What this Toolkit checkout's code can do, read from its files (the Toolkit has no version number).

    ``overleaf_rc_names``: reads the 2024 ``OVERLEAF_`` names in overleaf.rc (has ``bin/rename-rc-vars``);
    ``mongosh``: switches to ``mongosh`` for MongoDB 6+ (older Toolkits always run the legacy ``mongo`` shell,
    which MongoDB 6+ images lack); ``mongo_version``: reads the split ``MONGO_IMAGE`` + ``MONGO_VERSION`` form;
    ``compose_v2``: runs ``docker compose`` (v2) when it answers.
    """

    overleaf_rc_names: bool
    mongosh: bool
    mongo_version: bool
    compose_v2: bool

    def describe(self) -> str:
        return ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in self.__dict__.items())


def capabilities(root: Path) -> Capabilities:
    root = Path(root)
    code = ""
    for rel in ("lib/shared-functions.sh", "bin/docker-compose", "bin/up", "lib/docker-compose.mongo.yml"):
        try:
            code += (root / rel).read_text("utf-8", errors="replace") + "\n"
        except OSError:
            pass
    return Capabilities(
        overleaf_rc_names=(root / "bin" / "rename-rc-vars").is_file(),
        mongosh="MONGOSH" in code or "mongosh" in code,
        mongo_version="MONGO_VERSION" in code,
        compose_v2=re.search(r"docker\s+compose\b", code) is not None,
    )
