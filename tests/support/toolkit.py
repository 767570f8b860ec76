"""Test helpers around the Toolkit stand-in (tests/toolkit): make a configured copy, run its
commands against a private engine, read container state, and tear it all down.

    tk = make_toolkit(tmp_path, "3.5.13", engine=offline_engine, mongo="4.4", redis="6.2")
    try:
        tk.run("up", "-d")
        tk.wait_healthy()
        tk.exec_app("cd /overleaf/services/web; node scripts/history/migrate_history.js")
    finally:
        tk.down()

Container names are fixed (``sharelatex``, ``mongo``, ``redis``, ``git-bridge``,
``nginx``) as in the real Toolkit, so only one Toolkit copy may run per engine
at a time; every copy gets its own compose project (``PROJECT_NAME``) so that
``down`` removes exactly its networks.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from manifests.toolkit_config import parse_env_text
from tests.support.engine import PrivateEngine

TOOLKIT_SOURCE = Path(__file__).resolve().parent.parent / "toolkit"
CONTAINERS = ("sharelatex", "mongo", "redis", "git-bridge", "nginx")
APP_DATA_MARKERS = {"fph": "fph-migration.done", "binary_files": "binary-files-migration.done"}

EngineLike = PrivateEngine | Mapping[str, str]


def engine_env(target: EngineLike | None) -> dict[str, str]:
    """The environment for docker and bin/* commands: ``engine.env()``, a given mapping, or ``os.environ``."""
    if target is None:
        return dict(os.environ)
    if isinstance(target, PrivateEngine):
        return target.env()
    return dict(target)


def _major(version: str) -> int:
    return int(version.split(".")[0])


def _at_least(version: str, other: str) -> bool:
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("-")[0].split("."))

    return key(version) >= key(other)


@dataclass(frozen=True)
class ContainerState:
    """What ``docker inspect`` says about one container."""

    name: str
    image: str  # the reference it was created from, e.g. "mongo:6.0"
    image_id: str
    status: str  # created, running, restarting, exited ...
    exit_code: int
    restart_count: int
    health: str | None  # healthy / unhealthy / starting, None without a health check

    @property
    def running(self) -> bool:
        return self.status == "running"


def container_states(target: EngineLike | None, names: Iterable[str] = CONTAINERS) -> dict[str, ContainerState]:
    """States of the Toolkit's containers that exist (running or not), by container name."""
    env = engine_env(target)
    fmt = "{{.Name}}|{{.Config.Image}}|{{.Image}}|{{.State.Status}}|{{.State.ExitCode}}|{{.RestartCount}}|" \
          "{{if .State.Health}}{{.State.Health.Status}}{{end}}"  # fmt: skip
    states = {}
    for name in names:
        out = subprocess.run(["docker", "inspect", "-f", fmt, name], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            continue
        cname, image, image_id, status, code, restarts, health = out.stdout.strip().split("|")
        states[name] = ContainerState(cname.lstrip("/"), image, image_id, status, int(code), int(restarts), health or None)
    return states


def running_images(target: EngineLike | None) -> dict[str, str]:
    """``{container name: image reference}`` of the Toolkit's running containers."""
    return {name: s.image for name, s in container_states(target).items() if s.running}


def app_status(target: EngineLike | None) -> str | None:
    """The app's ``/status`` answer (``"ok"`` when healthy) via ``docker exec sharelatex wget``; None if no answer."""
    out = subprocess.run(["docker", "exec", "sharelatex", "wget", "-qO-", "http://127.0.0.1/status"],
                         env=engine_env(target), capture_output=True, text=True, timeout=30)  # fmt: skip
    return out.stdout.strip() if out.returncode == 0 else None


def container_logs(target: EngineLike | None, name: str = "sharelatex", tail: int = 40) -> str:
    out = subprocess.run(["docker", "logs", "--tail", str(tail), name], env=engine_env(target),
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout + out.stderr


def remove_toolkit_containers(target: EngineLike | None, project: str | None = None) -> None:
    """``docker rm -f -v`` the fixed-name containers, then the project's networks (all compose ones if None)."""
    env = engine_env(target)
    subprocess.run(["docker", "rm", "-f", "-v", *CONTAINERS], env=env, capture_output=True)
    label = f"label=com.docker.compose.project={project}" if project else "label=com.docker.compose.project"
    nets = subprocess.run(["docker", "network", "ls", "-q", "--filter", label], env=env, capture_output=True, text=True)
    for net in nets.stdout.split():
        subprocess.run(["docker", "network", "rm", net], env=env, capture_output=True)


def toolkit_checksums(root: str | os.PathLike[str], *, include_git: bool = True) -> dict[str, str]:
    """Every path under ``root`` -> ``"sha256:<hex>:<mode>"`` (files), ``"dir"`` or ``"symlink:<target>"``.

    Compare two snapshots to prove that a command (e.g. a dry run) changed nothing.
    ``include_git=False`` leaves out ``.git/`` (``git status`` may rewrite its index).
    """
    root = Path(root)
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not include_git and (rel == ".git" or rel.startswith(".git/")):
            continue
        if path.is_symlink():
            out[rel] = "symlink:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            out[rel] = f"sha256:{digest.hexdigest()}:{path.stat().st_mode & 0o7777:o}"
    return out


class ToolkitError(AssertionError):
    """A Toolkit command or wait failed; the message carries its output and the containers' state."""


@dataclass
class Toolkit:
    """A configured copy of the stand-in; usable as a path (``os.fspath(tk)``)."""

    root: Path
    env: dict[str, str]
    project: str

    def __fspath__(self) -> str:
        return str(self.root)

    # --- commands
    def run(self, command: str, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run ``bin/COMMAND ARGS`` in the Toolkit; ToolkitError on a non-zero exit when ``check``."""
        out = subprocess.run([str(self.root / "bin" / command), *args], cwd=self.root, env=self.env, text=True,
                             input=input, capture_output=True, timeout=timeout)  # fmt: skip
        if check and out.returncode != 0:
            raise ToolkitError(f"bin/{command} {' '.join(args)} exited {out.returncode}\n--- stdout\n{out.stdout}"
                               f"\n--- stderr\n{out.stderr}\n--- containers\n{self.describe()}")  # fmt: skip
        return out

    def compose(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """``bin/docker-compose ARGS``."""
        return self.run("docker-compose", *args, **kwargs)  # type: ignore[arg-type]

    def exec_app(self, command: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """``bin/docker-compose exec -T sharelatex /bin/bash -c COMMAND`` (how migrations are run)."""
        return self.compose("exec", "-T", "sharelatex", "/bin/bash", "-c", command, **kwargs)

    def mongo_eval(self, js: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """The mongo shell of the configured Mongo major (mongosh for 6+) with ``--quiet --eval JS``."""
        shell = "mongosh" if self.mongo_major() >= 6 else "mongo"
        return self.compose("exec", "-T", "mongo", shell, "--quiet", "--eval", js, **kwargs)

    def down(self) -> None:
        """Remove this Toolkit's containers and networks even when its config is broken."""
        try:
            self.compose("down", "-v", "-t", "1", check=False, timeout=120)
        finally:
            remove_toolkit_containers(self.env, self.project)

    # --- config
    @property
    def config(self) -> Path:
        return self.root / "config"

    def version(self) -> str:
        return (self.config / "version").read_text().strip()

    def set_version(self, version: str) -> None:
        (self.config / "version").write_text(version + "\n")

    def rc(self) -> dict[str, str]:
        return parse_env_text((self.config / "overleaf.rc").read_text())

    def variables(self) -> dict[str, str]:
        return parse_env_text((self.config / "variables.env").read_text())

    def set_rc(self, **values: str | None) -> None:
        """Set (or with None remove) ``KEY=VALUE`` lines of config/overleaf.rc."""
        _edit_env_file(self.config / "overleaf.rc", values)

    def set_variables(self, **values: str | None) -> None:
        """Set (or with None remove) ``KEY=VALUE`` lines of config/variables.env."""
        _edit_env_file(self.config / "variables.env", values)

    def mongo_major(self) -> int:
        rc = {**parse_env_text((self.root / "lib" / "default.rc").read_text()), **self.rc()}
        version = rc.get("MONGO_VERSION") or rc.get("MONGO_IMAGE", "mongo:4.0").rsplit(":", 1)[-1]
        return int(version.split(".")[0])

    def data(self, name: str = "overleaf") -> Path:
        """A host data folder: ``overleaf`` (per OVERLEAF_DATA_PATH), ``mongo``, ``redis``, ``git-bridge``."""
        key = {"overleaf": "OVERLEAF_DATA_PATH", "mongo": "MONGO_DATA_PATH", "redis": "REDIS_DATA_PATH",
               "git-bridge": "GIT_BRIDGE_DATA_PATH"}[name]  # fmt: skip
        rc = self.rc()
        path = Path(rc.get(key) or (rc.get("SHARELATEX_DATA_PATH") if name == "overleaf" else None) or f"data/{name}")
        return path if path.is_absolute() else self.root / path

    # --- state
    def states(self) -> dict[str, ContainerState]:
        return container_states(self.env)

    def running_images(self) -> dict[str, str]:
        return running_images(self.env)

    def app_status(self) -> str | None:
        return app_status(self.env)

    def logs(self, name: str = "sharelatex", tail: int = 40) -> str:
        return container_logs(self.env, name, tail)

    def describe(self) -> str:
        lines = []
        for name, s in self.states().items():
            lines.append(f"{name}: {s.image} {s.status} exit={s.exit_code} restarts={s.restart_count} health={s.health}")
            lines.append("  " + self.logs(name, 8).strip().replace("\n", "\n  "))
        return "\n".join(lines) or "(no containers)"

    def wait_healthy(self, timeout: float = 90) -> None:
        """Wait until the app answers ``/status`` with ``ok``; ToolkitError (with logs) on timeout or a restart loop."""
        deadline = time.monotonic() + timeout
        first = self.states().get("sharelatex")
        restarts = first.restart_count if first else 0
        while True:
            if self.app_status() == "ok":
                return
            state = self.states().get("sharelatex")
            if state and state.restart_count >= restarts + 3:
                raise ToolkitError(f"the app restart-loops\n{self.describe()}")
            if time.monotonic() > deadline:
                raise ToolkitError(f"the app was not healthy within {timeout:.0f}s\n{self.describe()}")
            time.sleep(0.5)

    def wait_exit(self, container: str, timeout: float = 60) -> int:
        """Wait until ``container`` is between two runs (restarting or exited); return its last exit code.

        (Docker resets the exit code to 0 once a restarted container runs again.)
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self.states().get(container)
            if state is not None and state.status in ("restarting", "exited", "dead"):
                return state.exit_code
            if time.monotonic() > deadline:
                raise ToolkitError(f"{container} did not exit within {timeout:.0f}s\n{self.describe()}")
            time.sleep(0.1)

    def wait_refused(self, container: str, text: str, timeout: float = 60) -> str:
        """Wait until ``container`` logged ``text`` and then exited (restart loop); return its log.

        ToolkitError on timeout, or if the app serves ``/status`` meanwhile. The
        container's exit code: :meth:`wait_exit`.
        """
        deadline = time.monotonic() + timeout
        first = self.states().get(container)
        restarts = first.restart_count if first else 0
        while True:
            log = self.logs(container, 200)
            state = self.states().get(container)
            exited = state is not None and (state.status != "running" or state.restart_count > restarts)
            if text in log and exited:
                if container == "sharelatex" and self.app_status() == "ok":
                    raise ToolkitError(f"the app logged {text!r} but serves /status\n{self.describe()}")
                return log
            if time.monotonic() > deadline:
                raise ToolkitError(f"{container} did not log {text!r} within {timeout:.0f}s\n{self.describe()}")
            time.sleep(0.5)


def _edit_env_file(path: Path, values: Mapping[str, str | None]) -> None:
    lines = path.read_text().splitlines()
    for key, value in values.items():
        kept = [line for line in lines if not line.strip().startswith(f"{key}=")]
        if value is not None:
            kept.append(f"{key}={value}")
        lines = kept
    path.write_text("\n".join(lines) + "\n")


def make_toolkit(
    tmp_path: str | os.PathLike[str],
    version: str,
    *,
    engine: EngineLike | None = None,
    edition: str = "ce",
    mongo: str = "4.4",
    mongo_legacy: bool = True,
    redis: str = "6.2",
    redis_aof: bool | None = None,
    git_bridge: bool = False,
    nginx: str | None = None,
    nginx_pinned: bool = True,
    sibling_containers: bool = False,
    texlive: Iterable[str] = (),
    sibling_pull: bool | None = None,
    pull_before_upgrade: bool | None = None,
    overleaf_data: str = "data/overleaf",
    rc_legacy: bool = False,
    secret: bool | str | None = None,
    migrated: Iterable[str] | None = None,
    project_name: str | None = None,
    rc: Mapping[str, str] | None = None,
    variables: Mapping[str, str] | None = None,
    git: bool = True,
    name: str = "toolkit",
) -> Toolkit:
    """Copy the stand-in to ``tmp_path/name``, run ``bin/init``, write a config fitting ``version``; return it.

    - ``config/version`` = ``version``; ``config/variables.env`` uses ``SHARELATEX_``
      keys (and the legacy ``TEXMFVAR`` line) below 5.0 and ``OVERLEAF_`` keys from 5.0;
      ``secret``: add ``OVERLEAF_INVITE_TOKEN_SECRET`` (None: only for 6.2+; a str: that value).
    - ``config/overleaf.rc``: ``MONGO_IMAGE=mongo:<mongo>`` (``mongo_legacy``) or
      ``MONGO_IMAGE=mongo`` + ``MONGO_VERSION``; ``REDIS_IMAGE=redis:<redis>``;
      ``SERVER_PRO`` for ``edition="pro"``; ``GIT_BRIDGE_ENABLED``, ``NGINX_ENABLED``
      (+ ``NGINX_IMAGE=nginx:<nginx>``; with ``nginx_pinned=False`` that line goes into the
      copy's ``lib/default.rc`` instead, as a Toolkit checkout of that nginx's era has it),
      ``SIBLING_CONTAINERS_ENABLED`` (+ the TeX Live
      variables from ``texlive``), ``SIBLING_CONTAINERS_PULL``/``PULL_BEFORE_UPGRADE``
      when given; ``rc_legacy`` writes the old ``SHARELATEX_DATA_PATH`` key (which
      bin/docker-compose refuses until bin/rename-rc-vars); ``rc``/``variables`` add lines.
    - Data folders are created; ``migrated`` names the migrations already done
      (``"fph"``, ``"binary_files"``; default: what ``version`` implies, i.e. fph
      from 4.0 and binary_files from 6.0) and writes their markers.
    - ``git``: ``git init`` + commit, so the copy is a Toolkit checkout (config/ and data/ are ignored).
    - ``PROJECT_NAME`` is unique (``overleaf-<hex>``) unless ``project_name`` is given.
    """
    if edition not in ("ce", "pro"):
        raise ValueError(f"edition must be 'ce' or 'pro', not {edition!r}")
    root = Path(tmp_path) / name
    shutil.copytree(TOOLKIT_SOURCE, root, ignore=shutil.ignore_patterns("config", "data", "tmp", "__pycache__"))
    env = engine_env(engine)
    project = project_name or f"overleaf-{secrets.token_hex(3)}"
    subprocess.run([str(root / "bin" / "init")], cwd=root, env=env, check=True, capture_output=True)

    major = _major(version)
    pro = edition == "pro"
    rc_lines = [f"PROJECT_NAME={project}",
                f"{'SHARELATEX' if rc_legacy else 'OVERLEAF'}_DATA_PATH={overleaf_data}",
                f"SERVER_PRO={str(pro).lower()}", "MONGO_ENABLED=true", "MONGO_DATA_PATH=data/mongo"]  # fmt: skip
    rc_lines += [f"MONGO_IMAGE=mongo:{mongo}"] if mongo_legacy else ["MONGO_IMAGE=mongo", f"MONGO_VERSION={mongo}"]
    rc_lines += ["REDIS_ENABLED=true", "REDIS_DATA_PATH=data/redis", f"REDIS_IMAGE=redis:{redis}"]
    if redis_aof is not None:
        rc_lines.append(f"REDIS_AOF_PERSISTENCE={str(redis_aof).lower()}")
    rc_lines += [f"GIT_BRIDGE_ENABLED={str(git_bridge).lower()}", "GIT_BRIDGE_DATA_PATH=data/git-bridge"]
    rc_lines.append(f"NGINX_ENABLED={str(nginx is not None).lower()}")
    if nginx is not None and nginx_pinned:
        rc_lines.append(f"NGINX_IMAGE=nginx:{nginx}")
    elif nginx is not None:  # the Toolkit's own default (lib/default.rc), not pinned in config/overleaf.rc
        _edit_env_file(root / "lib" / "default.rc", {"NGINX_IMAGE": f"nginx:{nginx}"})
    rc_lines.append(f"SIBLING_CONTAINERS_ENABLED={str(sibling_containers).lower()}")
    if sibling_pull is not None:
        rc_lines.append(f"SIBLING_CONTAINERS_PULL={str(sibling_pull).lower()}")
    if pull_before_upgrade is not None:
        rc_lines.append(f"PULL_BEFORE_UPGRADE={str(pull_before_upgrade).lower()}")
    rc_lines += [f"{k}={v}" for k, v in (rc or {}).items()]

    prefix = "SHARELATEX" if major < 5 else "OVERLEAF"
    env_lines = [f"{prefix}_APP_NAME=Test Overleaf", f"{prefix}_SITE_URL=http://localhost",
                 f"{prefix}_NAV_TITLE=Overleaf test", f"{prefix}_ADMIN_EMAIL=admin@example.com",
                 "ENABLED_LINKED_FILE_TYPES=project_file,project_output_file", "EMAIL_CONFIRMATION_DISABLED=true"]  # fmt: skip
    if major < 5:
        env_lines.append("TEXMFVAR=/var/lib/sharelatex/tmp/texmf-var")
    if secret is None:
        secret = _at_least(version, "6.2.0")
    if secret:
        value = secret if isinstance(secret, str) else secrets.token_urlsafe(32)
        env_lines.append(f"OVERLEAF_INVITE_TOKEN_SECRET={value}")
    texlive = list(texlive)
    if texlive:
        refs = [t if "/" in t else f"quay.io/sharelatex/texlive-full:{t}" for t in texlive]
        env_lines += [f"TEX_LIVE_DOCKER_IMAGE={refs[0]}", f"ALL_TEX_LIVE_DOCKER_IMAGES={','.join(refs)}"]
    env_lines += [f"{k}={v}" for k, v in (variables or {}).items()]

    config = root / "config"
    (config / "version").write_text(version + "\n")
    (config / "overleaf.rc").write_text("\n".join(rc_lines) + "\n")
    (config / "variables.env").write_text("\n".join(env_lines) + "\n")

    tk = Toolkit(root=root, env=env, project=project)
    for name_ in ("overleaf", "mongo", "redis") + (("git-bridge",) if git_bridge else ()):
        tk.data(name_).mkdir(parents=True, exist_ok=True)
    if migrated is None:
        migrated = [m for m, since in (("fph", "4.0.0"), ("binary_files", "6.0.0")) if _at_least(version, since)]
    for marker in migrated:
        (tk.data("overleaf") / APP_DATA_MARKERS[marker]).write_text("seeded by make_toolkit\n")

    if git:
        quiet = {"cwd": root, "check": True, "capture_output": True}
        subprocess.run(["git", "init", "-q", "-b", "master"], **quiet)  # type: ignore[arg-type]
        subprocess.run(["git", "add", "-A"], **quiet)  # type: ignore[arg-type]
        subprocess.run(["git", "-c", "user.name=Toolkit stand-in", "-c", "user.email=standin@example.invalid",
                        "commit", "-q", "-m", "Overleaf Toolkit stand-in"], **quiet)  # type: ignore[arg-type]  # fmt: skip
    return tk
