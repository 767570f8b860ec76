"""``overleaf-import upgrade``: walk a bundle's plan on a Toolkit, step by step.

The plan (from the verified manifest) is a list of typed steps; this module runs each
one through the Toolkit's own commands, recording every step and phase in the
journal so that ``--resume`` continues from the right place after a crash, Ctrl-C or
power loss, and so that repeating a step is harmless:

* ``backup``: ``bin/stop``, then a checksummed copy of every data path and ``config/``.
* ``app``: stop, ``config/version`` (old one kept in ``config/__old-version``), ``bin/up -d``,
  health check.
* ``mongo``: on the running server, set feature compatibility to the current series;
  stop; switch ``MONGO_VERSION`` (or the older ``MONGO_IMAGE=mongo:X.Y``); start MongoDB;
  raise feature compatibility. The config file says which side of the switch we are on.
* ``redis``: switch ``REDIS_IMAGE`` and restart Redis.
* ``migration``: run inside the app container; success = exit 0 and the success text.
  The binary-files migration runs in phases and stops for a person's check at level 1.
* ``config``: the SHARELATEX_ -> OVERLEAF_ rename (copies kept) or a required secret.

Preflight checks everything it can before the first change; ``--dry-run`` prints the
actions and changes nothing.
"""
from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from manifests.bundle import BundleManifest
from manifests.errors import AirgapError, ToolkitError
from manifests.toolkit_config import ToolkitConfig, read_toolkit
from manifests.versions import MajorMinor

from .backup import create_backup, load_record, restore_backup, tree_size
from .state import Audit, Journal, ToolkitLock
from .toolkit import Toolkit

AVX_FROM = MajorMinor(5, 0)


class PreflightError(AirgapError):
    exit_code = 31


class HealthCheckError(AirgapError):
    exit_code = 32


class StepFailed(AirgapError):
    exit_code = 33


class PausedForCheck(AirgapError):
    """A step needs a person: not a failure, but the run stops here."""

    exit_code = 40


@dataclass
class UpgradeOptions:
    yes: bool = False
    dry_run: bool = False
    resume: bool = False
    backup_dir: Path | None = None
    health_timeout: float = 300.0
    generate_secrets: bool = False
    update_toolkit: bool | None = None  # None: ask (or no when not interactive)


@dataclass
class Context:
    toolkit: Path
    manifest: BundleManifest | None
    opts: UpgradeOptions
    say: Callable[[str], None]
    ask: Callable[[str], bool]
    client: Any = None  # docker.DockerClient
    notes: list[str] = field(default_factory=list)


# --- reading the host ------------------------------------------------------------------
def cpu_has_avx() -> bool:
    path = os.environ.get("OVERLEAF_AIRGAP_CPUINFO", "/proc/cpuinfo")
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return " avx" in line or line.rstrip().endswith("avx")
    except OSError:
        return False
    return False


def compose_answers() -> str | None:
    for argv in (["docker", "compose", "version"], ["docker-compose", "version"]):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0:
            return " ".join(argv[:-1])
    return None


def data_sources(cfg: ToolkitConfig) -> dict[str, Path]:
    src = {"config": cfg.root / "config"}
    for key, path in cfg.data_paths.items():
        src[key.removesuffix("_DATA_PATH").lower().replace("_", "-")] = path
    return src


def default_backup_dir(toolkit: Path) -> Path:
    return Path(toolkit).resolve().parent / f"{Path(toolkit).resolve().name}-backups"


def app_version_after(plan: dict, journal: Journal | None, start: str) -> str:
    """The app version config/version should hold, given which steps are done."""
    v = start
    suffix = "-with-texlive-full" if start.endswith("-with-texlive-full") else ""
    for s in plan["steps"]:
        if s["kind"] == "app" and journal is not None and journal.status(s["id"]) == "done":
            v = s["version"] + suffix
    return v


# --- the dry-run / audit description of each step -----------------------------------
def describe(step: dict, suffix: str = "") -> list[str]:
    k = step["kind"]
    if k == "backup":
        return ["bin/stop", "copy config/ and every *_DATA_PATH to the backup folder, with SHA256SUMS"]
    if k == "app":
        return ["bin/stop", "cp config/version config/__old-version",
                f"write config/version = {step['version']}{suffix}", "bin/up -d",
                "health check: containers running/healthy, app answers /status"]
    if k == "mongo":
        return ["bin/docker-compose up -d mongo",
                f"bin/docker-compose exec -T mongo {step['shell_before']} --quiet --eval '{step['fcv_before']}'",
                "bin/stop", f"set MONGO_VERSION={step['version']} in config/overleaf.rc (or MONGO_IMAGE=<name>:{step['version']})",
                "bin/docker-compose up -d mongo",
                f"bin/docker-compose exec -T mongo {step['shell_after']} --quiet --eval '{step['fcv_after']}'"]
    if k == "redis":
        return ["bin/stop redis", f"set REDIS_IMAGE=<name>:{step['version']} in config/overleaf.rc",
                "bin/docker-compose up -d redis", "bin/docker-compose exec -T redis redis-cli ping"]
    if k == "migration":
        if step["name"] == "binary_files_migration":
            return ["bin/up -d", f"exec sharelatex: {step['report_command']}",
                    f"exec sharelatex: {step['flush_command']}",
                    "set OVERLEAF_FILESTORE_MIGRATION_LEVEL=1 in config/variables.env", "bin/up -d", "health check",
                    f"STOP for a person: {step['manual_check']}",
                    f"exec sharelatex: {step['command']} (success: {step['success_text']!r})",
                    "bin/stop sharelatex", "move data/user_files to data/old_user_files",
                    "set OVERLEAF_FILESTORE_MIGRATION_LEVEL=2", "bin/up -d", "health check"]
        where = "docker exec sharelatex" if step["name"] == "doc_version_recovery" else "bin/docker-compose exec -T sharelatex"
        ok = f" (success: exit 0 and {step['success_text']!r})" if step.get("success_text") else " (success: exit 0)"
        return ["bin/up -d", "health check", f"{where} /bin/bash -c \"{step['command']}\"{ok}"]
    if k == "config":
        if step["name"] == "rename_sharelatex_vars":
            return ["bin/stop", "copy config/variables.env to config/__old-variables.env.<time>, rename SHARELATEX_ -> OVERLEAF_, drop TEXMFVAR",
                    "copy config/overleaf.rc to config/__old-overleaf.rc.<time>, rename SHARELATEX_ -> OVERLEAF_"]
        return [f"check {step['variable']} in config/variables.env (or add one made like: {step['make']})"]
    return []


# --- the runner ---------------------------------------------------------------------
class Upgrader:
    def __init__(self, ctx: Context, journal: Journal, audit: Audit) -> None:
        self.ctx = ctx
        self.j = journal
        self.audit = audit
        self.tk = Toolkit(ctx.toolkit, log=lambda s: ctx.say(f"    {s}"))
        self.plan = journal.plan
        self.suffix = "-with-texlive-full" if journal.start_version.endswith("-with-texlive-full") else ""

    @property
    def cfg(self) -> ToolkitConfig:
        return read_toolkit(self.ctx.toolkit)

    def run(self) -> None:
        steps = self.plan["steps"]
        for i, step in enumerate(steps, 1):
            sid = step["id"]
            if self.j.status(sid) == "done":
                continue
            self.ctx.say(f"[{i}/{len(steps)}] {step['description']}")
            self.j.set_status(sid, "running")
            self.audit.record(f"step {sid}", "started", description=step["description"])
            try:
                getattr(self, f"do_{step['kind']}")(step)
            except PausedForCheck:
                self.j.set_status(sid, "paused")
                self.audit.record(f"step {sid}", "paused for a manual check")
                raise
            except BaseException as exc:
                msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                self.j.set_status(sid, "failed", note=msg)
                self.audit.record(f"step {sid}", "failed", error=msg)
                raise
            self.j.set_status(sid, "done")
            self.audit.record(f"step {sid}", "done")
        from manifests.bundle import iso, utc_now
        self.j.finished = iso(utc_now())
        self.j.save()
        self.audit.record("upgrade", "finished", version=self.tk.read_version())

    # --- helpers --------------------------------------------------------------------
    def running_containers(self) -> list[Any]:
        project = self.cfg.rc.get("PROJECT_NAME", "overleaf")
        return self.ctx.client.containers.list(filters={"label": f"com.docker.compose.project={project}"})

    def stop_if_running(self, *services: str) -> None:
        names = {c.name for c in self.running_containers()}
        if (services and names & set(services)) or (not services and names):
            self.tk.stop(*services)

    def container(self, name: str):
        import docker.errors
        try:
            return self.ctx.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    def wait_until(self, what: str, probe: Callable[[], str | None], timeout: float | None = None) -> None:
        """Poll ``probe`` (None = fine, text = what is still wrong) until it passes or time runs out."""
        deadline = time.monotonic() + (timeout or self.ctx.opts.health_timeout)
        problem = "not checked"
        while time.monotonic() < deadline:
            problem = probe()
            if problem is None:
                return
            time.sleep(1.0)
        raise HealthCheckError(f"{what}: {problem}")

    def expected_stack(self) -> dict[str, str | None]:
        cfg = self.cfg
        mongo = cfg.rc.get("MONGO_IMAGE", "mongo")
        if not cfg.mongo_legacy_form and cfg.rc.get("MONGO_VERSION"):
            mongo = f"{mongo}:{cfg.rc['MONGO_VERSION']}"
        out: dict[str, str | None] = {"sharelatex": None, "mongo": mongo, "redis": cfg.rc.get("REDIS_IMAGE")}
        if cfg.git_bridge:
            out["git-bridge"] = None
        if cfg.tls_proxy:
            out["nginx"] = None
        return out

    def health(self) -> None:
        expect = self.expected_stack()

        def probe() -> str | None:
            import docker.errors
            try:
                return check()
            except docker.errors.APIError as exc:  # e.g. 409: the container is restarting
                return f"the engine says: {exc.explanation or exc}"

        def check() -> str | None:
            for name, image in expect.items():
                c = self.container(name)
                if c is None:
                    return f"container {name} does not exist"
                c.reload()
                st = c.attrs["State"]
                if not st.get("Running") or st.get("Restarting"):
                    return f"container {name} is not running (status {st.get('Status')}, exit code {st.get('ExitCode')})"
                hs = (st.get("Health") or {}).get("Status")
                if hs not in (None, "healthy"):
                    return f"container {name} is {hs}"
                if image and c.attrs["Config"]["Image"] != image:
                    return f"container {name} runs {c.attrs['Config']['Image']}, expected {image}"
            c = self.container("sharelatex")
            res = c.exec_run(["/bin/sh", "-c", "wget -qO- http://127.0.0.1:80/status 2>/dev/null || "
                              "curl -fsS http://127.0.0.1:80/status"])
            if res.exit_code != 0:
                return "the app does not answer on port 80 (/status)"
            return None

        try:
            self.wait_until("health check failed", probe)
        except HealthCheckError as err:
            c = self.container("sharelatex")
            logs = c.logs(tail=30).decode("utf-8", "replace") if c is not None else "(no sharelatex container)"
            backup = self.j.backups[-1]["id"] if self.j.backups else None
            raise HealthCheckError(
                f"{err.message} (version {self.tk.read_version()})\n--- last lines of the sharelatex log ---\n{logs.rstrip()}",
                "Services and config are left as they are now (see `overleaf-import status`). Fix the cause and run "
                "the same upgrade command with --resume"
                + (f", or go back with `overleaf-import rollback --toolkit {self.ctx.toolkit}` (backup {backup})."
                   if backup else ".")) from None

    def mongo_eval(self, shell: str, js: str, *, check: bool = True) -> str:
        res = self.tk.exec_argv("mongo", [shell, "--quiet", "--eval", js])
        # the legacy `mongo` shell may exit 0 while the command answered ok: 0
        refused = re.search(r"""["']?ok["']?\s*:\s*0(?:\.0)?\b""", res.output) is not None
        if check and (res.code != 0 or refused):
            raise StepFailed(f"MongoDB refused `{js}` (exit {res.code}): {res.output.strip()[-500:]}",
                             "Check `bin/logs mongo`; fix the cause and run the upgrade again with --resume.")
        return res.output

    def wait_mongo(self, shell: str) -> None:
        def probe() -> str | None:
            res = self.tk.exec_argv("mongo", [shell, "--quiet", "--eval", "db.adminCommand({ ping: 1 })"])
            return None if res.code == 0 else f"MongoDB does not answer yet: {res.output.strip()[-200:]}"
        self.wait_until("MongoDB did not come up", probe)

    # --- step kinds -----------------------------------------------------------------
    def do_backup(self, step: dict) -> None:
        self.stop_if_running()
        cfg = self.cfg
        dest = self.ctx.opts.backup_dir or default_backup_dir(self.ctx.toolkit)
        rec = create_backup(dest, data_sources(cfg), app_version=cfg.version, step_id=step["id"],
                            major=bool(step.get("major")))
        self.j.backups.append(rec.to_dict())
        self.j.save()
        self.audit.record("backup", "done", backup=rec.id, path=rec.path, files=rec.files, bytes=rec.bytes)
        self.ctx.say(f"    backup {rec.id}: {rec.files} files, {rec.bytes / 1e6:.1f} MB in {rec.path}")

    def do_app(self, step: dict) -> None:
        target = step["version"] + self.suffix
        self.stop_if_running()
        self.tk.write_version(target)
        self.tk.up()
        self.health()

    def do_mongo(self, step: dict) -> None:
        sid, cfg = step["id"], self.cfg
        if cfg.mongo_version == step["from_version"]:
            self.tk.compose_up("mongo")
            self.wait_mongo(step["shell_before"])
            self.mongo_eval(step["shell_before"], step["fcv_before"])
            self.j.mark_phase(sid, "fcv_before")
            self.tk.stop()
            if cfg.mongo_legacy_form:
                self.tk.set_rc("MONGO_IMAGE", f"{cfg.mongo_image}:{step['version']}", keep_copy=True)
            else:
                self.tk.set_rc("MONGO_VERSION", step["version"], keep_copy=True)
            self.j.mark_phase(sid, "switched")
        elif cfg.mongo_version != step["version"]:
            raise StepFailed(f"config/overleaf.rc says MongoDB {cfg.mongo_version}; this step moves "
                             f"{step['from_version']} -> {step['version']}",
                             "Someone changed the MongoDB settings during the upgrade: put them back and --resume.")
        self.tk.compose_up("mongo")
        self.wait_mongo(step["shell_after"])
        self.mongo_eval(step["shell_after"], step["fcv_after"])
        self.j.mark_phase(sid, "fcv_after")

    def do_redis(self, step: dict) -> None:
        cfg = self.cfg
        if cfg.redis_version != step["version"]:
            self.stop_if_running("redis")
            self.tk.set_rc("REDIS_IMAGE", f"{cfg.redis_image}:{step['version']}", keep_copy=True)
        self.tk.compose_up("redis")

        def probe() -> str | None:
            res = self.tk.exec_argv("redis", ["redis-cli", "ping"])
            return None if res.code == 0 and "PONG" in res.output else f"redis-cli ping: {res.output.strip()[-200:]}"
        self.wait_until("Redis did not come up", probe)

    def run_in_app(self, step: dict, command: str, success: str, *, docker_exec: bool = False) -> None:
        if docker_exec:  # the Toolkit refuses to run at a retracted version: go around it
            self.tk.log(f"$ docker exec sharelatex /bin/bash -c {command!r}")
            c = self.container("sharelatex")
            if c is None:
                raise StepFailed("the sharelatex container is not there", "Start it with bin/up -d and --resume.")
            r = c.exec_run(["/bin/bash", "-c", command])
            code, out = r.exit_code, r.output.decode("utf-8", "replace")
        else:
            res = self.tk.exec("sharelatex", command)
            code, out = res.code, res.output
        if code != 0 or (success and success not in out):
            tail = "\n".join(out.strip().splitlines()[-20:])
            why = f"exit {code}" if code != 0 else f"its output lacks {success!r}"
            raise StepFailed(f"{step['name']} failed ({why}):\n{tail}",
                             "The migration scripts can be run again: fix the cause (see the output and bin/logs), "
                             "then run the same upgrade command with --resume.")
        self.audit.record(f"step {step['id']}", "command ok", command=command[:200])

    def do_migration(self, step: dict) -> None:
        name = step["name"]
        if name == "doc_version_recovery":
            self.run_in_app(step, step["command"], step["success_text"], docker_exec=True)
            self.ctx.notes.append(step["manual_check"])
            return
        if name != "binary_files_migration":
            self.tk.up()
            self.health()
            self.run_in_app(step, step["command"], step["success_text"])
            return
        sid = step["id"]
        ph = lambda p: self.j.has_phase(sid, p)  # noqa: E731
        if not ph("level1"):
            self.tk.up()
            self.health()
            self.run_in_app(step, step["report_command"], "")
            self.run_in_app(step, step["flush_command"], "")
            self.tk.set_env("OVERLEAF_FILESTORE_MIGRATION_LEVEL", "1", keep_copy=True)
            self.tk.up()
            self.health()
            self.j.mark_phase(sid, "level1")
        if not ph("checked"):
            if not ph("awaiting_check"):
                self.j.mark_phase(sid, "awaiting_check")
                raise PausedForCheck(
                    f"binary files migration level 1 is on. A person must check now: {step['manual_check']}",
                    "When binary files open fine, run the same upgrade command with --resume to continue. "
                    "If they do not, set OVERLEAF_FILESTORE_MIGRATION_LEVEL=0 in config/variables.env, bin/up -d, "
                    "and ask for help before going on.")
            self.j.mark_phase(sid, "checked")
            self.audit.record(f"step {sid}", "manual check confirmed by --resume")
        if not ph("backfilled"):
            self.tk.up()
            self.health()
            self.run_in_app(step, step["command"], step["success_text"])
            self.j.mark_phase(sid, "backfilled")
        if not ph("moved"):
            self.stop_if_running("sharelatex")
            data = self.cfg.data_paths["OVERLEAF_DATA_PATH"] / "data"
            if (data / "user_files").exists() and not (data / "old_user_files").exists():
                self.tk.run(["docker-compose", "run", "--rm", "--entrypoint", "mv", "sharelatex", "--no-clobber",
                             "--verbose", "/var/lib/overleaf/data/user_files", "/var/lib/overleaf/data/old_user_files"])
            self.j.mark_phase(sid, "moved")
        self.tk.set_env("OVERLEAF_FILESTORE_MIGRATION_LEVEL", "2", keep_copy=True)
        self.tk.up()
        self.health()
        self.ctx.notes.append("Binary files migration done (level 2). Once you are sure, delete "
                              "data/old_user_files under the Overleaf data path to free space.")

    def do_config(self, step: dict) -> None:
        if step["name"] == "rename_sharelatex_vars":
            if not self.ctx.opts.yes and not self.ctx.ask(
                    "Rename SHARELATEX_* to OVERLEAF_* in config/variables.env and config/overleaf.rc (copies kept)?"):
                raise StepFailed("the variable rename was declined", "Run again and answer yes, or pass --yes.")
            self.stop_if_running()
            changed = self.tk.rename_sharelatex_vars()
            self.audit.record(f"step {step['id']}", "renamed", files=changed)
            return
        var = step["variable"]
        if self.cfg.env.get(var, "").strip():
            return
        if not self.ctx.opts.generate_secrets:
            raise StepFailed(f"{var} is missing from config/variables.env",
                             f"Add it (make one with: {step['make']}) or pass --generate-secrets, then --resume.")
        value = base64.b64encode(secrets.token_bytes(32)).decode()
        self.tk.set_env(var, value, keep_copy=True)
        self.audit.record(f"step {step['id']}", "generated secret", variable=var)
        self.ctx.notes.append(f"{var} was generated into config/variables.env: keep it stable from now on.")


# --- preflight ---------------------------------------------------------------------
def remaining_steps(plan: dict, journal: Journal | None) -> list[dict]:
    return [s for s in plan["steps"] if journal is None or journal.status(s["id"]) != "done"]


def preflight(ctx: Context, plan: dict, journal: Journal | None, present: Callable[[str], bool]) -> list[str]:
    """Every problem found, in words an admin can act on (empty list = ready)."""
    problems: list[str] = []
    cfg = read_toolkit(ctx.toolkit)
    start = journal.start_version if journal else plan["from"]
    expected = app_version_after(plan, journal, start)
    allowed = {expected}
    nxt = journal.next_step() if journal is not None else None
    if nxt is not None and nxt["kind"] == "app":  # interrupted after writing config/version: either is fine
        allowed.add(nxt["version"] + ("-with-texlive-full" if start.endswith("-with-texlive-full") else ""))
    if cfg.version not in allowed:
        if journal is None:
            problems.append(f"config/version is {cfg.version}, but this bundle's plan starts at {plan['from']}: "
                            "use a bundle built for this version (overleaf-bundle build --from "
                            f"{cfg.version} ...)")
        else:
            problems.append(f"config/version is {cfg.version}, but the journal says the upgrade stands at "
                            f"{expected}: put config/version back to {expected} (config/__old-version has the "
                            "previous one) or roll back")
    if plan.get("edition") and cfg.edition != plan["edition"]:
        problems.append(f"the Toolkit runs {'Server Pro' if cfg.edition == 'pro' else 'Community Edition'}, "
                        f"the bundle is for {plan['edition']}")
    rest = remaining_steps(plan, journal)
    missing = sorted({i for s in rest for i in s["images"] if not present(i)})
    if missing:
        problems.append("images the remaining steps need are not in the engine: " + ", ".join(missing)
                        + " (load the bundle: overleaf-import load BUNDLE_DIR)")
    if compose_answers() is None:
        problems.append("Docker Compose does not answer (neither `docker compose` nor `docker-compose`)")
    if any(s["kind"] == "mongo" and MajorMinor.parse(s["version"]) >= AVX_FROM for s in rest) and not cpu_has_avx():
        problems.append("a step brings MongoDB 5.0 or later, which needs a CPU with AVX, and this CPU has none "
                        "(on a VM, give it a CPU type that passes AVX through, e.g. 'host')")
    for s in rest:
        if s["kind"] == "config" and s.get("variable") and not cfg.env.get(s["variable"], "").strip() \
                and not ctx.opts.generate_secrets:
            problems.append(f"{s['variable']} is not set in config/variables.env; add it (make one with: "
                            f"{s['make']}) or pass --generate-secrets to have one made and kept")
    if any(s["kind"] == "backup" for s in rest):
        dest = ctx.opts.backup_dir or default_backup_dir(ctx.toolkit)
        need = int(tree_size(list(data_sources(cfg).values())) * 1.05) + 16 * 1024 * 1024
        probe = dest if dest.exists() else dest.parent
        try:
            st = os.statvfs(probe)
            free = st.f_bavail * st.f_frsize
            if free < need:
                problems.append(f"not enough space for backups in {dest}: {free / 1e6:.0f} MB free, "
                                f"{need / 1e6:.0f} MB needed per backup (choose --backup-dir)")
        except OSError as exc:
            problems.append(f"cannot use the backup folder {dest}: {exc.strerror}")
    return problems


def rc_needs_rename(toolkit: Path) -> bool:
    """An old overleaf.rc with SHARELATEX_ keys: every bin/ command refuses it (facts 2.5)."""
    rc = Path(toolkit) / "config" / "overleaf.rc"
    return rc.exists() and "SHARELATEX_" in rc.read_text("utf-8")


def pull_settings_needed(cfg: ToolkitConfig) -> dict[str, str]:
    want = {"PULL_BEFORE_UPGRADE": "false", "SIBLING_CONTAINERS_PULL": "false"}
    return {k: v for k, v in want.items() if cfg.rc.get(k, "").strip().lower() != v}


# --- rollback and status ----------------------------------------------------------------
def choose_backup(toolkit: Path, journal: Journal | None, backup_dir: Path | None, wanted: str | None):
    records = []
    if journal is not None:
        records = [r for r in journal.backups if Path(r["path"]).exists()]
    if not records:
        base = backup_dir or default_backup_dir(toolkit)
        if base.is_dir():
            records = [load_record(p).to_dict() for p in sorted(base.iterdir())
                       if p.is_dir() and not p.name.endswith(".partial") and (p / "backup.json").exists()]
    if not records:
        raise ToolkitError("no backups found for this Toolkit", "Give --backup-dir where the backups are.")
    if wanted:
        for r in records:
            if r["id"] == wanted:
                return load_record(Path(r["path"]))
        raise ToolkitError(f"no backup {wanted}", "Known: " + ", ".join(r["id"] for r in records))
    majors = [r for r in records if r.get("major")]
    return load_record(Path((majors or records)[-1]["path"]))


def rollback(ctx: Context, wanted: str | None, backup_dir: Path | None, start: bool = True) -> dict:
    toolkit = ctx.toolkit
    with ToolkitLock(toolkit):
        journal = Journal.load(toolkit)
        audit = Audit(toolkit, journal.bundle_id if journal else None)
        rec = choose_backup(toolkit, journal, backup_dir, wanted)
        if not ctx.opts.yes and not ctx.ask(f"Stop Overleaf and restore backup {rec.id} (version {rec.app_version})? "
                                            "Changes made since then are lost."):
            raise ToolkitError("rollback declined")
        audit.record("rollback", "started", backup=rec.id)
        tk = Toolkit(toolkit, log=lambda s: ctx.say(f"    {s}"))
        stop = tk.run(["stop"], check=False)
        if stop.code != 0 and ctx.client is not None:  # the Toolkit may refuse a half-changed config: stop directly
            for name in ("sharelatex", "git-bridge", "nginx", "redis", "mongo"):
                try:
                    ctx.client.containers.get(name).stop(timeout=30)
                except Exception:  # noqa: BLE001 - container may not exist
                    pass
        restore_backup(rec)
        if journal is not None:
            ids = [s["id"] for s in journal.plan["steps"]]
            if rec.step_id in ids:
                for sid in ids[ids.index(rec.step_id):]:
                    journal.steps[sid] = {"status": "pending", "phases": []}
                journal.steps[rec.step_id] = {"status": "done", "phases": [], "note": f"restored backup {rec.id}"}
            journal.finished = None
            journal.save()
        if start:
            tk.up()
        audit.record("rollback", "done", backup=rec.id, version=tk.read_version(), started=start)
        return {"backup": rec.id, "version": tk.read_version(), "started": start}


def status(toolkit: Path) -> dict:
    cfg = read_toolkit(toolkit)
    journal = Journal.load(toolkit)
    out: dict[str, Any] = {"toolkit": str(Path(toolkit).resolve()), "version": cfg.version, "edition": cfg.edition,
                           "mongo": cfg.mongo_version, "redis": cfg.redis_version, "journal": None, "backups": []}
    if journal:
        nxt = journal.next_step()
        out["journal"] = {
            "bundle_id": journal.bundle_id, "from": journal.plan["from"], "to": journal.plan["to"],
            "started": journal.started, "finished": journal.finished,
            "done": journal.done_count(), "total": len(journal.plan["steps"]),
            "next": nxt["id"] if nxt else None,
            "steps": [{"id": s["id"], "status": journal.steps[s["id"]]["status"],
                       "description": s["description"], **({"note": journal.steps[s["id"]]["note"]}
                                                           if "note" in journal.steps[s["id"]] else {})}
                      for s in journal.plan["steps"]],
        }
        out["backups"] = [{"id": b["id"], "path": b["path"], "bytes": b["bytes"], "files": b["files"],
                           "app_version": b["app_version"], "exists": Path(b["path"]).exists()}
                          for b in journal.backups]
    return out
