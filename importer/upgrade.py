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

    ctx = Context(Path("/srv/overleaf-toolkit"), manifest, UpgradeOptions(yes=True), print, lambda q: False)
    problems = preflight(ctx, plan, None, present)
    Upgrader(ctx, Journal.new(ctx.toolkit, bundle_id, plan, "3.5.10"), audit).run()
"""
from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from manifests.bundle import BundleManifest
from manifests.catalog import Catalog, Migration, load_catalog
from manifests.errors import AirgapError, ManifestFormatError, ToolkitError
from manifests.toolkit_config import ToolkitConfig, read_toolkit
from manifests.versions import AppVersion, MajorMinor

from .backup import check_record, create_backup, load_record, restore_backup, tree_size
from .grammar import SERIES_RE, VERSION_RE, check_step_id
from .state import Audit, Journal, ToolkitLock
from .toolkit import Capabilities, Toolkit, capabilities

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
    code_update_pending: bool = False  # the bundle's Toolkit code is put in place before the first step


_CATALOG: Catalog | None = None


def own_catalog() -> Catalog:
    """The importer's own release catalog (no local overlay): the only source of commands run in containers."""
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = load_catalog(overlay=False)
    return _CATALOG


def fcv_command(series: str) -> str:
    confirm = ", confirm: true" if MajorMinor.parse(series) >= own_catalog().mongo_fcv_confirm_from else ""
    return f'db.adminCommand({{ setFeatureCompatibilityVersion: "{series}"{confirm} }})'


def mongo_shell(series: str) -> str:
    return "mongosh" if MajorMinor.parse(series).major >= 6 else "mongo"


def validate_plan(plan: dict) -> None:
    """The plan's values that reach paths, config files or commands, checked before anything runs."""
    try:
        steps = plan["steps"]
        ids = [check_step_id(s["id"]) for s in steps]
        if len(set(ids)) != len(ids):
            raise ManifestFormatError("the plan repeats a step id")
        for name in ("from", "to"):
            if not VERSION_RE.match(str(plan[name])):
                raise ManifestFormatError(f"the plan's {name!r} version {plan[name]!r} is malformed")
        known = {m.name for m in own_catalog().migrations}
        for s in steps:
            kind = s["kind"]
            if kind == "app" and not VERSION_RE.match(str(s["version"])):
                raise ManifestFormatError(f"step {s['id']}: app version {s['version']!r} is malformed")
            if kind in ("mongo", "redis"):
                for key in ("version", "from_version"):
                    if not SERIES_RE.match(str(s[key])):
                        raise ManifestFormatError(f"step {s['id']}: {key} {s[key]!r} is not a MAJOR.MINOR series")
            if kind == "migration" and s["name"] not in known:
                raise ManifestFormatError(f"step {s['id']}: migration {s['name']!r} is not in this importer's "
                                          "catalog", "A bundle from a newer bundler carries that newer importer: "
                                          "install it (README-OFFLINE).")
            if kind == "config" and s["name"] != "rename_sharelatex_vars":
                secret_names = {x.name for r in own_catalog().rules for x in r.get("secrets", ())}
                if s.get("variable") not in secret_names:
                    raise ManifestFormatError(f"step {s['id']}: variable {s.get('variable')!r} is not a secret "
                                              "this importer knows")
    except (KeyError, TypeError) as exc:
        raise ManifestFormatError(f"the plan is malformed: missing {exc}") from None


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


def mongo_enabled(cfg: ToolkitConfig) -> bool:
    return cfg.rc.get("MONGO_ENABLED", "true").strip().lower() != "false"


def redis_enabled(cfg: ToolkitConfig) -> bool:
    return cfg.rc.get("REDIS_ENABLED", "true").strip().lower() != "false"


def version_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def git_bridge_on(cfg: ToolkitConfig) -> bool:
    """The Toolkit runs git-bridge only for Server Pro 4.0+ with GIT_BRIDGE_ENABLED=true."""
    return cfg.git_bridge and version_major(cfg.version) >= 4


def data_sources(cfg: ToolkitConfig) -> dict[str, Path]:
    """Folders a backup copies: config/ and each data path the Toolkit uses, resolved as the Toolkit resolves
    them (``realpath``: a data path may be a symlink or a mount point). External databases have none."""
    src = {"config": (cfg.root / "config").resolve()}
    skip = set()
    if not mongo_enabled(cfg):
        skip.add("MONGO_DATA_PATH")
    if not redis_enabled(cfg):
        skip.add("REDIS_DATA_PATH")
    for key, path in cfg.data_paths.items():
        if key in skip:
            continue
        src[key.removesuffix("_DATA_PATH").lower().replace("_", "-")] = Path(os.path.realpath(path))
    return src


def not_covered(cfg: ToolkitConfig) -> list[str]:
    """What a backup of this Toolkit leaves out: the admin must back those up themselves."""
    out = []
    if not mongo_enabled(cfg):
        out.append(f"MongoDB is external (MONGO_ENABLED=false, {mongo_host(cfg)}): back it up yourself "
                   "(mongodump, or a snapshot of its server) before this upgrade")
    if not redis_enabled(cfg):
        out.append("Redis is external (REDIS_ENABLED=false): back it up yourself (its RDB/AOF files) before this "
                   "upgrade")
    return out


def mongo_url(cfg: ToolkitConfig) -> str:
    return (cfg.env.get("OVERLEAF_MONGO_URL") or cfg.env.get("SHARELATEX_MONGO_URL") or cfg.rc.get("MONGO_URL")
            or "mongodb://mongo/sharelatex")


def mongo_host(cfg: ToolkitConfig) -> str:
    """The MongoDB server(s) of MONGO_URL, without credentials (for messages)."""
    url = mongo_url(cfg)
    rest = url.split("://", 1)[-1]
    rest = rest.rsplit("@", 1)[-1]
    return rest.split("/", 1)[0].split("?", 1)[0]


def mongo_authenticated(cfg: ToolkitConfig) -> bool:
    return "@" in mongo_url(cfg).split("://", 1)[-1].split("/", 1)[0]


def override_file(cfg: ToolkitConfig) -> dict:
    """``config/docker-compose.override.yml`` (which bin/docker-compose adds when present), parsed; {} if none."""
    path = cfg.root / "config" / "docker-compose.override.yml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text("utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PreflightError(f"config/docker-compose.override.yml cannot be read: {exc}",
                             "Fix or remove the file; bin/docker-compose would fail on it too.") from None
    return data if isinstance(data, dict) else {}


def override_problems(cfg: ToolkitConfig) -> list[str]:
    data = override_file(cfg)
    services = data.get("services") or {}
    out = []
    app = (services.get("sharelatex") or {}).get("image") if isinstance(services, dict) else None
    if app:
        out.append(f"config/docker-compose.override.yml sets the sharelatex image to {app}: while it does, writing "
                   "config/version changes nothing. Remove that line (for a custom image name, set "
                   "OVERLEAF_IMAGE_NAME in config/overleaf.rc; the tag comes from config/version)")
    for svc, inside in (("mongo", "/data/db"), ("redis", "/data"), ("sharelatex", "/var/lib/"),
                        ("git-bridge", "/data/git-bridge")):
        vols = (services.get(svc) or {}).get("volumes") or [] if isinstance(services, dict) else []
        for v in vols:
            src = v.split(":", 1)[0] if isinstance(v, str) else (v or {}).get("source", "")
            dst = v.split(":")[1] if isinstance(v, str) and ":" in v else (v or {}).get("target", "") if isinstance(v, dict) else ""
            named = isinstance(src, str) and src and not src.startswith(("/", ".", "~", "$"))
            if named and str(dst).startswith(inside):
                out.append(f"config/docker-compose.override.yml keeps {svc} data in the named volume '{src}', which "
                           "the upgrade's backups cannot copy: move it to a host folder (the *_DATA_PATH settings) "
                           "or back it up yourself and remove the volume line")
    return out


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
    """What a step does, in the commands it runs (the importer's own, from its catalog)."""
    k = step["kind"]
    if k == "backup":
        return ["bin/stop", "copy config/ and every *_DATA_PATH to the backup folder, with SHA256SUMS "
                "(an external MongoDB/Redis is not covered)"]
    if k == "app":
        return ["bin/stop (not again when resumed after config/version was written)",
                "cp config/version config/__old-version", f"write config/version = {step['version']}{suffix}",
                "bin/up -d", "health check: containers running/healthy at the expected images, app answers /status"]
    if k == "mongo":
        frm, to = step["from_version"], step["version"]
        return ["bin/docker-compose up -d mongo (external MongoDB: check its version and feature compatibility "
                "from the app container, pause for its admin when a hop is needed)",
                "wait until MongoDB answers and is the replica set's primary",
                f"bin/docker-compose exec -T mongo {mongo_shell(frm)} --quiet --eval '{fcv_command(frm)}'",
                "bin/stop", f"set MONGO_VERSION={to} in config/overleaf.rc (MONGO_IMAGE=<name> + MONGO_VERSION "
                "when the Toolkit reads the split form)",
                "bin/docker-compose up -d mongo",
                f"bin/docker-compose exec -T mongo {mongo_shell(to)} --quiet --eval '{fcv_command(to)}'"]
    if k == "redis":
        return ["bin/stop redis", f"set REDIS_IMAGE=<name>:{step['version']} in config/overleaf.rc",
                "bin/docker-compose up -d redis", "bin/docker-compose exec -T redis redis-cli ping"]
    if k == "migration":
        mig = own_catalog().migration(step["name"])
        run = "docker exec -d sharelatex /bin/bash -c"
        if step["name"] == "binary_files_migration":
            return ["bin/up -d", f"{run} \"{mig.extra['report_command']}\"",
                    f"{run} \"{mig.extra['flush_command']}\" until it reports \"project_ids\":0 (failedProjects 0)",
                    "set OVERLEAF_FILESTORE_MIGRATION_LEVEL=1 in config/variables.env", "bin/up -d", "health check",
                    f"STOP for a person: {mig.manual_check}",
                    f"{run} \"{mig.command}\" (success: {mig.success_text!r}; no time limit, output shown)",
                    "bin/stop sharelatex", "move data/user_files to data/old_user_files",
                    "set OVERLEAF_FILESTORE_MIGRATION_LEVEL=2", "bin/up -d", "health check"]
        if step["name"] == "doc_version_recovery":
            return ["bin/up -d (OVERLEAF_SKIP_RETRACTION_CHECK set, as bin/upgrade does)", "health check",
                    "docker exec sharelatex sv stop real-time-overleaf; wait for `sv status` down:",
                    "bin/stop git-bridge (if it runs)",
                    f"{run} \"{mig.command}\" (success: failureCount 0; only when 5.0.2 never ran)",
                    "docker exec redis redis-cli --scan --pattern 'DocVersion:*' prints nothing",
                    f"after the next app step: follow {DOC_RECOVERY_LOG} until Done."]
        ok = f" (success: exit 0 and {mig.success_text!r})" if mig.success_text else " (success: exit 0)"
        return ["bin/up -d", "health check", f"{run} \"{mig.command}\"{ok}; no time limit, output shown"]
    if k == "config":
        if step["name"] == "rename_sharelatex_vars":
            return ["bin/stop", "copy config/variables.env to config/__old-variables.env.<time>, rename SHARELATEX_ -> "
                    "OVERLEAF_, drop every TEXMFVAR=/var/lib/sharelatex/tmp/texmf-var line (comments too)",
                    "copy config/overleaf.rc to config/__old-overleaf.rc.<time>, rename SHARELATEX_ -> OVERLEAF_"]
        return [f"check {step['variable']} in config/variables.env (or add one made like: {step['make']}; "
                "without --generate-secrets the upgrade pauses here for you to add it)"]
    return []


# --- the runner ---------------------------------------------------------------------
LONG_DIR = "/tmp/overleaf-airgap"
DOC_RECOVERY_LOG = "/var/lib/overleaf/data/history/doc-version-recovery.log"
_MONGO_PROBE = (
    "let m; try { m = require('mongodb') } catch (e) { m = require('mongodb-legacy') }"
    " (async () => { const c = await m.MongoClient.connect(process.env.OVERLEAF_MONGO_URL ||"
    " process.env.SHARELATEX_MONGO_URL || 'mongodb://mongo/sharelatex'); const a = c.db().admin();"
    " const b = await a.command({ buildInfo: 1 }); let f = '';"
    " try { f = (await a.command({ getParameter: 1, featureCompatibilityVersion: 1 })).featureCompatibilityVersion.version }"
    " catch (e) {} console.log(JSON.stringify({ airgapMongo: { version: b.version, fcv: f } })); await c.close() })()"
    ".catch(e => { console.error(e.message); process.exit(1) })")
_REDIS_PROBE = (
    "const Redis = require('ioredis'); const r = new Redis({ host: process.env.OVERLEAF_REDIS_HOST ||"
    " process.env.SHARELATEX_REDIS_HOST || process.env.REDIS_HOST || 'redis', port: process.env.REDIS_PORT || 6379,"
    " password: process.env.OVERLEAF_REDIS_PASS || process.env.REDIS_PASSWORD || undefined, lazyConnect: true });"
    " r.connect().then(() => r.info('server')).then(i => { console.log(JSON.stringify({ airgapRedis: { version:"
    " /redis_version:(\\S+)/.exec(i)[1] } })); r.disconnect() }).catch(e => { console.error(e.message); process.exit(1) })")


def series_of(version: str) -> str:
    m = re.match(r"^(\d+)\.(\d+)", version.strip())
    return f"{m.group(1)}.{m.group(2)}" if m else ""


class Upgrader:
    def __init__(self, ctx: Context, journal: Journal, audit: Audit) -> None:
        self.ctx = ctx
        self.j = journal
        self.audit = audit
        self.tk = Toolkit(ctx.toolkit, log=lambda s: ctx.say(f"    {s}"))
        self.plan = journal.plan
        validate_plan(self.plan)
        self.suffix = "-with-texlive-full" if journal.start_version.endswith("-with-texlive-full") else ""
        self.caps: Capabilities = capabilities(ctx.toolkit)

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

    def app_image(self, cfg: ToolkitConfig) -> str:
        name = cfg.app_image or ("quay.io/sharelatex/sharelatex-pro" if cfg.edition == "pro" else "sharelatex/sharelatex")
        return f"{name}:{cfg.version}"

    def expected_stack(self) -> dict[str, str | None]:
        cfg = self.cfg
        out: dict[str, str | None] = {"sharelatex": self.app_image(cfg)}
        if mongo_enabled(cfg):
            mongo = cfg.rc.get("MONGO_IMAGE", "mongo")
            if not cfg.mongo_legacy_form and cfg.rc.get("MONGO_VERSION"):
                mongo = f"{cfg.mongo_image}:{cfg.rc['MONGO_VERSION']}"
            out["mongo"] = mongo
        if redis_enabled(cfg):
            out["redis"] = cfg.rc.get("REDIS_IMAGE")
        if git_bridge_on(cfg):
            out["git-bridge"] = None
        if cfg.tls_proxy:
            out["nginx"] = cfg.nginx_image
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
                "Services and config are left as they are now (see `overleaf-import status`). A first start may "
                "still be running database migrations: --resume does not stop it. Fix the cause and run "
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
        """Until MongoDB answers and, when it runs as a replica set (Overleaf 4.0+), is its writable primary:
        feature-compatibility changes are refused by a member that is not (yet) primary."""
        replica = version_major(self.cfg.version) >= 4

        def probe() -> str | None:
            res = self.tk.exec_argv("mongo", [shell, "--quiet", "--eval", "db.adminCommand({ ping: 1 })"])
            if res.code != 0:
                return f"MongoDB does not answer yet: {res.output.strip()[-200:]}"
            if replica:
                res = self.tk.exec_argv("mongo", [shell, "--quiet", "--eval", "db.isMaster().ismaster"])
                if res.code != 0 or "true" not in res.output.split():
                    return "MongoDB is not the replica set's primary yet"
            return None
        self.wait_until("MongoDB did not come up", probe)

    # --- long commands in the app container ----------------------------------------------
    def _sh(self, c: Any, script: str) -> tuple[int, str]:
        r = c.exec_run(["/bin/sh", "-c", script])
        return r.exit_code, r.output.decode("utf-8", "replace")

    def run_long(self, step: dict, tag: str, command: str) -> tuple[int, str]:
        """Run ``command`` in the sharelatex container, detached, with no time limit; show its output as it
        comes; return (exit code, output). Its pid, output and exit code are kept in the container
        (``/tmp/overleaf-airgap/<tag>.*``): a resumed run that finds the same command still running waits for
        it instead of starting a second copy, and one that finished while nobody watched is taken as is."""
        c = self.container("sharelatex")
        if c is None:
            raise StepFailed("the sharelatex container is not there", "Start it with bin/up -d and --resume.")
        base = f"{LONG_DIR}/{tag}"
        q = shlex.quote
        _, state = self._sh(c, f"if [ -f {q(base + '.rc')} ]; then echo rc; "
                               f"elif [ -f {q(base + '.pid')} ] && kill -0 \"$(cat {q(base + '.pid')})\" 2>/dev/null; "
                               f"then echo running; else echo none; fi")
        state = state.strip()
        if state == "running":
            self.ctx.say(f"    {step['name']} is still running in the container (started by an earlier run): "
                         "waiting for it")
            self.audit.record(f"step {step['id']}", "waiting for a running command", tag=tag)
        elif state == "rc" and self.j.has_phase(step["id"], f"started:{tag}"):
            self.ctx.say(f"    {step['name']} finished while no one watched: taking its result")
        else:
            self.tk.log(f"$ docker exec -d sharelatex /bin/bash -c {command!r}")
            wrapper = (f"mkdir -p {LONG_DIR} && rm -f {q(base + '.rc')} {q(base + '.log')} && echo $$ > {q(base + '.pid')}"
                       f" && ( /bin/bash -c {q(command)} ) > {q(base + '.log')} 2>&1 < /dev/null;"
                       f" echo $? > {q(base + '.rc.tmp')}; mv {q(base + '.rc.tmp')} {q(base + '.rc')}")
            c.exec_run(["/bin/sh", "-c", wrapper], detach=True)
            self.j.mark_phase(step["id"], f"started:{tag}")
            time.sleep(0.3)
        return self._follow(step, c, base)

    def _follow(self, step: dict, c: Any, base: str) -> tuple[int, str]:
        q = shlex.quote
        shown = 0
        gone = 0
        while True:
            code, out = self._sh(c, f"tail -c +{shown + 1} {q(base + '.log')} 2>/dev/null")
            if code == 0 and out:
                complete = out[: out.rfind("\n") + 1]
                for line in complete.splitlines():
                    self.ctx.say(f"      | {line}")
                shown += len(complete.encode("utf-8"))
            code, rc = self._sh(c, f"cat {q(base + '.rc')} 2>/dev/null || "
                                   f"(kill -0 \"$(cat {q(base + '.pid')})\" 2>/dev/null && echo running) || echo gone")
            rc = rc.strip()
            if rc.isdigit():
                _, full = self._sh(c, f"tail -n 200 {q(base + '.log')}; mv -f {q(base + '.rc')} {q(base + '.rc.seen')}")
                return int(rc), full
            if rc == "gone":
                gone += 1
                if gone >= 3:
                    raise StepFailed(f"{step['name']} stopped without an exit code (was the container restarted?)",
                                     "Check `bin/logs`, then run the same upgrade command with --resume: the "
                                     "migration scripts can be run again.")
            else:
                gone = 0
            c.reload()
            if not c.attrs["State"].get("Running"):
                raise StepFailed(f"the sharelatex container stopped while {step['name']} ran",
                                 "Check `bin/logs`, then run the same upgrade command with --resume.")
            time.sleep(1.0)

    def run_in_app(self, step: dict, tag: str, command: str, success: str | re.Pattern[str]) -> str:
        code, out = self.run_long(step, tag, command)
        ok = (success.search(out) is not None) if isinstance(success, re.Pattern) else (not success or success in out)
        if code != 0 or not ok:
            tail = "\n".join(out.strip().splitlines()[-20:])
            want = success.pattern if isinstance(success, re.Pattern) else success
            why = f"exit {code}" if code != 0 else f"its output lacks {want!r}"
            raise StepFailed(f"{step['name']} failed ({why}):\n{tail}",
                             "The migration scripts can be run again: fix the cause (see the output and bin/logs), "
                             "then run the same upgrade command with --resume.")
        self.audit.record(f"step {step['id']}", "command ok", command=command[:200])
        return out

    # --- step kinds -----------------------------------------------------------------
    def do_backup(self, step: dict) -> None:
        self.stop_if_running()
        cfg = self.cfg
        dest = self.ctx.opts.backup_dir or default_backup_dir(self.ctx.toolkit)
        left_out = not_covered(cfg)
        rec = create_backup(dest, data_sources(cfg), app_version=cfg.version, step_id=check_step_id(step["id"]),
                            major=bool(step.get("major")), not_covered=left_out)
        self.j.backups.append(rec.to_dict())
        self.j.save()
        self.audit.record("backup", "done", backup=rec.id, path=rec.path, files=rec.files, bytes=rec.bytes,
                          not_covered=left_out)
        self.ctx.say(f"    backup {rec.id}: {rec.files} files, {rec.bytes / 1e6:.1f} MB in {rec.path}")
        for item in left_out:
            self.ctx.say(f"    NOT in this backup: {item}")

    def pin_nginx(self, version: str) -> None:
        """With the TLS proxy on and NGINX_IMAGE not pinned, the Toolkit takes nginx from its lib/default.rc:
        pin the image the plan carries for this app version, so that bin/up starts what was planned."""
        cfg = self.cfg
        if not cfg.tls_proxy or cfg.nginx_pinned:
            return
        cat = own_catalog()
        ref = f"{cat.images['nginx']}:{cat.requirements(AppVersion.parse(version)).nginx_default}"
        wanted = {i for s in self.plan["steps"] for i in s["images"]} | set(self.plan.get("assumed_present", ()))
        if ref in wanted and cfg.nginx_image != ref:
            self.tk.set_rc("NGINX_IMAGE", ref, keep_copy=True)
            self.ctx.notes.append(f"NGINX_IMAGE={ref} was pinned in config/overleaf.rc (the Toolkit's default "
                                  "depends on its code, not on the Overleaf version). Check config/nginx/nginx.conf "
                                  "against the Toolkit's CHANGELOG for this nginx version.")

    def do_app(self, step: dict) -> None:
        sid = step["id"]
        target = step["version"] + self.suffix
        if not (self.j.has_phase(sid, "version_written") and self.tk.read_version() == target):
            self.stop_if_running()
            self.tk.write_version(target)
            self.j.mark_phase(sid, "version_written")
        else:  # resumed after the version was written: its first start may be migrating; never stop it now
            self.ctx.say(f"    config/version is already {target}: not stopping the services again")
        self.pin_nginx(step["version"])
        self.tk.up()
        self.wait_doc_recovery(step)
        self.health()

    def wait_doc_recovery(self, step: dict) -> None:
        """After a doc-version recovery preparation, the first 5.0.3+ start runs the recovery: follow its log
        until it says Done. (no fixed limit: about 10k projects a minute)."""
        ids = [s["id"] for s in self.plan["steps"]]
        prep = [s for s in self.plan["steps"] if s["kind"] == "migration" and s["name"] == "doc_version_recovery"]
        if not prep or ids.index(prep[0]["id"]) > ids.index(step["id"]):
            return
        first_app = next(s for s in self.plan["steps"][ids.index(prep[0]["id"]):] if s["kind"] == "app")
        if first_app["id"] != step["id"]:
            return
        self.ctx.say(f"    following {DOC_RECOVERY_LOG} until it says Done.")
        last = ""
        misses = 0
        while True:
            c = self.container("sharelatex")
            if c is not None:
                c.reload()
                if c.attrs["State"].get("Running"):
                    code, out = self._sh(c, f"tail -n 5 {DOC_RECOVERY_LOG} 2>/dev/null")
                    if code == 0 and out.strip():
                        if out.strip() != last:
                            last = out.strip()
                            self.ctx.say(f"      | {last.splitlines()[-1]}")
                        if "Done." in out:
                            self.audit.record(f"step {step['id']}", "doc version recovery done")
                            return
            misses += 1
            if misses > self.ctx.opts.health_timeout and not last:
                raise HealthCheckError(f"the doc version recovery log {DOC_RECOVERY_LOG} did not appear",
                                       "Check `bin/logs`; then run the same upgrade command with --resume.")
            time.sleep(1.0)

    def set_mongo_version(self, cfg: ToolkitConfig, version: str) -> None:
        if cfg.mongo_legacy_form and self.caps.mongo_version:  # adopt the split form the Toolkit reads now
            self.tk.set_rc_many({"MONGO_IMAGE": cfg.mongo_image, "MONGO_VERSION": version}, keep_copy=True)
        elif cfg.mongo_legacy_form:
            self.tk.set_rc("MONGO_IMAGE", f"{cfg.mongo_image}:{version}", keep_copy=True)
        else:
            self.tk.set_rc("MONGO_VERSION", version, keep_copy=True)

    def do_mongo(self, step: dict) -> None:
        sid, cfg = step["id"], self.cfg
        frm, to = step["from_version"], step["version"]
        if not mongo_enabled(cfg):
            return self.external_mongo(step)
        before, after = mongo_shell(frm), mongo_shell(to)
        if cfg.mongo_version == frm:
            self.tk.compose_up("mongo")
            self.wait_mongo(before)
            self.mongo_eval(before, fcv_command(frm))
            self.j.mark_phase(sid, "fcv_before")
            self.tk.stop()
            self.set_mongo_version(cfg, to)
            self.j.mark_phase(sid, "switched")
        elif cfg.mongo_version != to:
            raise StepFailed(f"config/overleaf.rc says MongoDB {cfg.mongo_version}; this step moves "
                             f"{frm} -> {to}",
                             "Someone changed the MongoDB settings during the upgrade: put them back and --resume.")
        self.tk.compose_up("mongo")
        self.wait_mongo(after)
        self.mongo_eval(after, fcv_command(to))
        self.j.mark_phase(sid, "fcv_after")

    def probe_from_app(self, js: str, key: str) -> dict:
        """Run a node probe in a one-off app container (the app's own drivers, network and MONGO_URL)."""
        res = self.tk.run(["docker-compose", "run", "--rm", "--no-deps", "-T", "-w", "/overleaf/services/web",
                           "--entrypoint", "node", "sharelatex", "-e", js], check=False)
        for line in res.output.splitlines():
            line = line.strip()
            if line.startswith("{") and key in line:
                try:
                    return json.loads(line)[key]
                except (ValueError, KeyError):
                    break
        raise StepFailed(f"cannot read the external {'MongoDB' if 'Mongo' in key else 'Redis'} version from the app "
                         f"container (exit {res.code}): {res.output.strip()[-400:]}",
                         "Check that the database answers from the Overleaf host, then --resume.")

    def external_mongo(self, step: dict) -> None:
        cfg = self.cfg
        frm, to = step["from_version"], step["version"]
        got = self.probe_from_app(_MONGO_PROBE, "airgapMongo")
        server, fcv = series_of(str(got.get("version", ""))), series_of(str(got.get("fcv", "")))
        self.ctx.say(f"    external MongoDB {mongo_host(cfg)}: server {got.get('version')}, feature compatibility "
                     f"{fcv or 'unknown'}")
        def ge(a: str, b: str) -> bool:
            return bool(a) and MajorMinor.parse(a) >= MajorMinor.parse(b)
        if ge(server, to) and ge(fcv, to):
            self.audit.record(f"step {step['id']}", "external MongoDB checked", version=got.get("version"), fcv=fcv)
            return
        if not ge(server, frm):
            raise StepFailed(f"the external MongoDB at {mongo_host(cfg)} runs {got.get('version')}, older than the "
                             f"{frm} this step starts from", "Bring it to the planned version first, then --resume.")
        auth = ""
        if mongo_authenticated(cfg):
            auth = ("\n  Overleaf 5.5.1+ reads the feature compatibility version: the user in MONGO_URL needs the "
                    "clusterParameterReader role (db.grantRolesToUser(USER, [{ role: 'clusterParameterReader', "
                    "db: 'admin' }])).")
        todo = []
        if not ge(server, to):
            todo += [f"on MongoDB {frm}: {fcv_command(frm)}",
                     f"upgrade the server binaries {frm} -> {to} (one major at a time; never skip one)"]
        todo.append(f"on MongoDB {to}: {fcv_command(to)}")
        self.j.mark_phase(step["id"], "awaiting_db_admin")
        raise PausedForCheck(
            f"MongoDB is external (MONGO_ENABLED=false): the upgrade does not manage it. It runs {got.get('version')} "
            f"with feature compatibility {fcv or 'unknown'}; this step needs {to} with feature compatibility {to}. "
            f"Ask its admin to do, on {mongo_host(cfg)}:\n  - " + "\n  - ".join(todo) + auth,
            "When that is done, run the same upgrade command with --resume: it checks the version and feature "
            "compatibility first.")

    def do_redis(self, step: dict) -> None:
        cfg = self.cfg
        if not redis_enabled(cfg):
            got = self.probe_from_app(_REDIS_PROBE, "airgapRedis")
            have = series_of(str(got.get("version", "")))
            if have and MajorMinor.parse(have) >= MajorMinor.parse(step["version"]):
                self.audit.record(f"step {step['id']}", "external Redis checked", version=got.get("version"))
                return
            raise PausedForCheck(
                f"Redis is external (REDIS_ENABLED=false): the upgrade does not manage it. It runs "
                f"{got.get('version')}; this step needs {step['version']}. Ask its admin to upgrade it (Redis 7+ data "
                "cannot go back to an older Redis: back it up first).",
                "When that is done, run the same upgrade command with --resume: it checks the version first.")
        if cfg.redis_version != step["version"]:
            self.stop_if_running("redis")
            self.tk.set_rc("REDIS_IMAGE", f"{cfg.redis_image}:{step['version']}", keep_copy=True)
        self.tk.compose_up("redis")

        def probe() -> str | None:
            res = self.tk.exec_argv("redis", ["redis-cli", "ping"])
            return None if res.code == 0 and "PONG" in res.output else f"redis-cli ping: {res.output.strip()[-200:]}"
        self.wait_until("Redis did not come up", probe)

    def migration(self, step: dict) -> Migration:
        """The catalog's migration of that name: its commands are the importer's own, never the bundle's."""
        return own_catalog().migration(step["name"])

    def do_migration(self, step: dict) -> None:
        name = step["name"]
        mig = self.migration(step)
        if name == "doc_version_recovery":
            return self.doc_version_recovery(step, mig)
        if name != "binary_files_migration":
            self.tk.up()
            self.health()
            self.run_in_app(step, step["id"], mig.command, mig.success_text)
            return
        sid = step["id"]
        ph = lambda p: self.j.has_phase(sid, p)  # noqa: E731
        if not ph("level1"):
            self.tk.up()
            self.health()
            self.run_in_app(step, f"{sid}.report", mig.extra["report_command"], "")
            self.flush_history_queues(step, mig)
            self.tk.set_env("OVERLEAF_FILESTORE_MIGRATION_LEVEL", "1", keep_copy=True)
            self.tk.up()
            self.health()
            self.j.mark_phase(sid, "level1")
        if not ph("checked"):
            if not ph("awaiting_check"):
                self.j.mark_phase(sid, "awaiting_check")
                raise PausedForCheck(
                    f"binary files migration level 1 is on. A person must check now: {mig.manual_check}",
                    "When binary files open fine, run the same upgrade command with --resume to continue. "
                    "If they do not, set OVERLEAF_FILESTORE_MIGRATION_LEVEL=0 in config/variables.env, bin/up -d, "
                    "and ask for help before going on.")
            self.j.mark_phase(sid, "checked")
            self.audit.record(f"step {sid}", "manual check confirmed by --resume")
        if not ph("backfilled"):
            self.tk.up()
            self.health()
            self.flush_history_queues(step, mig)
            self.run_in_app(step, f"{sid}.all", mig.command, mig.success_text)
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

    def flush_history_queues(self, step: dict, mig: Migration, rounds: int = 50) -> None:
        """``flush-history-queues`` until it reports ``"project_ids":0``, each round with ``failedProjects`` 0."""
        for i in range(rounds):
            out = self.run_in_app(step, f"{step['id']}.flush{i}", mig.extra["flush_command"], "")
            ids = re.findall(r'"project_ids"\s*:\s*(\d+)', out)
            failed = re.findall(r'"failedProjects"\s*:\s*(\d+)', out)
            if any(int(f) for f in failed):
                raise StepFailed(f"flush-history-queues: {failed[-1]} project(s) failed to flush:\n{out.strip()[-800:]}",
                                 "Fix those projects' history (see bin/logs project-history), then --resume.")
            if not ids:
                raise StepFailed(f"flush-history-queues gave no project count:\n{out.strip()[-800:]}",
                                 "Run it by hand to see why (bin/docker-compose exec sharelatex "
                                 "/overleaf/bin/flush-history-queues), then --resume.")
            if int(ids[-1]) == 0:
                return
        raise StepFailed(f"flush-history-queues still finds queued projects after {rounds} rounds",
                         "Users may still be editing: close the editor (Admin > Manage Site), then --resume.")

    def doc_version_recovery(self, step: dict, mig: Migration) -> None:
        """The doc version recovery's preparation (facts 2.6), on the retracted version the site runs."""
        sid = step["id"]
        self.tk.up()
        self.health()
        c = self.container("sharelatex")
        self._sh(c, "sv stop real-time-overleaf")

        def rt_down() -> str | None:
            _, out = self._sh(c, "sv status real-time-overleaf")
            return None if out.strip().startswith("down:") else f"real-time is not down yet ({out.strip()})"
        self.wait_until("real-time-overleaf did not stop", rt_down)
        self.audit.record(f"step {sid}", "real-time stopped (editor closed)")
        if self.container("git-bridge") is not None:
            self.stop_if_running("git-bridge")
        if self.j.start_version.split("-")[0] == "5.0.1":  # 5.0.2 never ran: flush every doc, then no DocVersion
            self.run_in_app(step, sid, mig.command, re.compile(r"""["']?failureCount["']?\s*[:=]\s*0\b"""))
            if redis_enabled(self.cfg):
                res = self.tk.exec_argv("redis", ["redis-cli", "--scan", "--pattern", "DocVersion:*"])
                keys = [k for k in res.output.split() if k.startswith("DocVersion:")]
                if res.code != 0 or keys:
                    raise StepFailed(f"{len(keys)} DocVersion:* key(s) remain in Redis after the flush "
                                     f"(first: {keys[0] if keys else res.output.strip()[-200:]})",
                                     "Run the flush again (the step repeats it on --resume) and check Redis.")
            else:
                self.ctx.notes.append("Redis is external: check that `redis-cli --scan --pattern 'DocVersion:*'` "
                                      "printed nothing before the upgrade went on.")
        self.ctx.notes.append(f"Doc version recovery ran at the first 5.0.3+ start ({DOC_RECOVERY_LOG}: Done.). "
                              "Leave the instance running while history resyncs in the background.")


    def do_config(self, step: dict) -> None:
        if step["name"] == "rename_sharelatex_vars":
            if not self.ctx.opts.yes and not self.ctx.ask(
                    "Rename SHARELATEX_* to OVERLEAF_* in config/variables.env and config/overleaf.rc (copies kept)?"):
                raise StepFailed("the variable rename was declined", "Run again and answer yes, or pass --yes.")
            self.stop_if_running()
            names = ["variables.env", "overleaf.rc"] if self.caps.overleaf_rc_names else ["variables.env"]
            changed = self.tk.rename_sharelatex_vars(names)
            self.audit.record(f"step {step['id']}", "renamed", files=changed)
            return
        var = step["variable"]
        if self.cfg.env.get(var, "").strip():
            return
        if not self.ctx.opts.generate_secrets:
            self.j.mark_phase(step["id"], "awaiting_secret")
            raise PausedForCheck(f"{var} must be added to config/variables.env now (Overleaf is at "
                                 f"{self.tk.read_version()}, so the Toolkit accepts it): make one with: {step['make']}",
                                 "Add the line, keep the value stable from now on, then run the same upgrade command "
                                 "with --resume (or --resume --generate-secrets to have one made).")
        value = base64.b64encode(secrets.token_bytes(32)).decode()
        self.tk.set_env(var, value, keep_copy=True)
        self.audit.record(f"step {step['id']}", "generated secret", variable=var)
        self.ctx.notes.append(f"{var} was generated into config/variables.env: keep it stable from now on.")


# --- preflight ---------------------------------------------------------------------
def remaining_steps(plan: dict, journal: Journal | None) -> list[dict]:
    return [s for s in plan["steps"] if journal is None or journal.status(s["id"]) != "done"]


def preflight(ctx: Context, plan: dict, journal: Journal | None, present: Callable[[str], bool]) -> list[str]:
    """Every problem found, in words an admin can act on (empty list = ready). Facts that are no problem
    (the Toolkit's capabilities, what backups do not cover) are said with ``ctx.say``."""
    problems: list[str] = []
    try:
        validate_plan(plan)
    except AirgapError as err:
        return [err.message]
    cfg = read_toolkit(ctx.toolkit)
    caps = capabilities(ctx.toolkit)
    ctx.say(f"preflight: the Toolkit's code can: {caps.describe()}")
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
    mongo_steps = [s for s in rest if s["kind"] == "mongo"]
    if mongo_enabled(cfg) and any(MajorMinor.parse(s["version"]) >= AVX_FROM for s in mongo_steps) \
            and not cpu_has_avx():
        problems.append("a step brings MongoDB 5.0 or later, which needs a CPU with AVX, and this CPU has none "
                        "(on a VM, give it a CPU type that passes AVX through, e.g. 'host')")
    problems += capability_problems(ctx, cfg, caps, plan, rest)
    problems += config_problems(ctx, cfg, plan, rest)
    problems += override_problems(cfg)
    problems += data_path_problems(cfg)
    problems += texlive_problems(ctx, cfg, plan)
    for item in not_covered(cfg):
        ctx.say(f"preflight: backups will not cover: {item}")
    if not mongo_enabled(cfg) and mongo_authenticated(cfg) and any(
            AppVersion.parse(s["version"]).release >= AppVersion(5, 5, 1) for s in rest if s["kind"] == "app"):
        ctx.say("preflight: Overleaf 5.5.1+ reads MongoDB's feature compatibility version: the MONGO_URL user needs "
                "the clusterParameterReader role (or set ALLOW_MONGO_ADMIN_CHECK_FAILURES=true)")
    if redis_enabled(cfg) and not cfg.rc.get("REDIS_AOF_PERSISTENCE", "").strip() and any(
            AppVersion.parse(s["version"]).release >= AppVersion(5, 1, 0) for s in rest if s["kind"] == "app"):
        ctx.say("preflight: REDIS_AOF_PERSISTENCE is not set in config/overleaf.rc (the Toolkit warns): Redis keeps "
                "only snapshots, so queued history updates can be lost on a restart; the upgrade flushes the history "
                "queues before the binary files migration. Consider REDIS_AOF_PERSISTENCE=true after the upgrade.")
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


def capability_problems(ctx: Context, cfg: ToolkitConfig, caps: Capabilities, plan: dict, rest: list[dict]) -> list[str]:
    """What an old Toolkit checkout cannot do for this plan (unless the bundle's Toolkit code comes first)."""
    out: list[str] = []
    if ctx.code_update_pending:  # the bundle's Toolkit code goes in before the first step
        return out
    carries = ctx.manifest is not None and getattr(ctx.manifest, "toolkit", None)
    later = " (or let the upgrade move it to the bundle's commit: --update-toolkit-code)" if carries else ""
    if mongo_enabled(cfg) and not caps.mongosh:
        six = [s["version"] for s in rest if s["kind"] == "mongo" and MajorMinor.parse(s["version"]).major >= 6]
        if six or (cfg.mongo_version and MajorMinor.parse(cfg.mongo_version).major >= 6):
            out.append("this Toolkit's code always runs the legacy `mongo` shell, which MongoDB 6.0+ images lack: "
                       "its health checks and bin/mongo would fail. Update the Toolkit code first" + later)
    if "SHARELATEX_" in (cfg.root / "config" / "overleaf.rc").read_text("utf-8", errors="replace") \
            and caps.overleaf_rc_names is False and any(AppVersion.parse(s["version"]).major >= 5
                                                        for s in rest if s["kind"] == "app"):
        out.append("this Toolkit's code predates the OVERLEAF_ names in config/overleaf.rc (no bin/rename-rc-vars), "
                   "so it cannot run Overleaf 5+ with this config. Update the Toolkit code first" + later)
    if mongo_enabled(cfg) and not caps.mongo_version and "MONGO_VERSION" in cfg.rc and cfg.mongo_legacy_form is False:
        out.append("config/overleaf.rc uses MONGO_VERSION, which this Toolkit's code does not read")
    return out


def config_problems(ctx: Context, cfg: ToolkitConfig, plan: dict, rest: list[dict]) -> list[str]:
    """Settings the Toolkit would refuse, and required secrets (asked for only where adding one is safe)."""
    out = []
    env_text = (cfg.root / "config" / "variables.env").read_text("utf-8", errors="replace") \
        if (cfg.root / "config" / "variables.env").is_file() else ""
    major = version_major(cfg.version)
    if major < 5 and "OVERLEAF_" in env_text:
        out.append(f"config/variables.env holds OVERLEAF_ text while config/version is {cfg.version}: below 5.0 every "
                   "bin/ command refuses it (comments count too). Remove it; the upgrade adds what 5.x needs")
    for s in rest:
        if s["kind"] == "config" and s.get("variable") and not cfg.env.get(s["variable"], "").strip() \
                and not ctx.opts.generate_secrets:
            if major < 5:  # adding it now would break every bin/ command
                ctx.say(f"preflight: {s['variable']} is needed from {plan['to']}; the upgrade pauses at step "
                        f"{s['id']} (after the move to 5.x) for you to add it (make one with: {s['make']}), "
                        "or pass --generate-secrets to have one made and kept. Do not add it now: below 5.0 the "
                        "Toolkit refuses OVERLEAF_ variables")
            else:
                out.append(f"{s['variable']} is not set in config/variables.env; add it (make one with: "
                           f"{s['make']}) or pass --generate-secrets to have one made and kept")
    return out


def data_path_problems(cfg: ToolkitConfig) -> list[str]:
    """A data path the running services use that is missing or empty means the data lives elsewhere."""
    out = []
    check = [("OVERLEAF_DATA_PATH", True), ("MONGO_DATA_PATH", mongo_enabled(cfg))]
    for key, used in check:
        if not used:
            continue
        p = cfg.data_paths[key]
        try:
            empty = not p.is_dir() or not any(os.scandir(p))
        except OSError:
            empty = True
        if empty:
            out.append(f"{key} ({p}) is missing or empty, so a backup would copy nothing: check config/overleaf.rc "
                       "(and config/docker-compose.override.yml) for where this data really is")
    return out


def texlive_problems(ctx: Context, cfg: ToolkitConfig, plan: dict) -> list[str]:
    """Server Pro sandboxed compiles, from 5.2: TEX_LIVE_DOCKER_IMAGE and every project's imageName must be in
    ALL_TEX_LIVE_DOCKER_IMAGES, or the app refuses to start (facts 2.3)."""
    if cfg.edition != "pro" or cfg.rc.get("SIBLING_CONTAINERS_ENABLED", "").strip().lower() != "true":
        return []
    if AppVersion.parse(plan["to"]).release < AppVersion(5, 2, 0) or cfg.env.get("SKIP_TEX_LIVE_CHECK") == "true":
        return []
    out = []
    listed = [t.strip() for t in cfg.env.get("ALL_TEX_LIVE_DOCKER_IMAGES", "").split(",") if t.strip()]
    default = cfg.env.get("TEX_LIVE_DOCKER_IMAGE", "").strip()
    if default and default not in listed:
        out.append(f"TEX_LIVE_DOCKER_IMAGE ({default}) is not in ALL_TEX_LIVE_DOCKER_IMAGES: from 5.2 Server Pro "
                   "refuses to start. Add it to ALL_TEX_LIVE_DOCKER_IMAGES in config/variables.env")
    used = project_images(ctx, cfg)
    if used is None:
        ctx.say("preflight: MongoDB is not running here, so the projects' TeX Live images were not checked "
                "(db.projects.distinct(\"imageName\")); start it (bin/up -d mongo) and run preflight again to check")
        return out
    for image in sorted(i for i in used if i and i not in listed):
        out.append(f"projects use the TeX Live image {image}, which is not in ALL_TEX_LIVE_DOCKER_IMAGES: from 5.2 "
                   "Server Pro refuses to start. Either add it to the list (and to the bundle: --texlive), or move "
                   f"those projects: bin/run-script scripts/update_project_image_name.js {image} "
                   f"{default or (listed[0] if listed else 'NEW_IMAGE')}")
    return out


def project_images(ctx: Context, cfg: ToolkitConfig) -> list[str] | None:
    """``db.projects.distinct("imageName")`` through the Toolkit's mongo container; None when it is not running."""
    if not mongo_enabled(cfg) or ctx.client is None:
        return None
    try:
        c = ctx.client.containers.get("mongo")
        if not c.attrs["State"].get("Running"):
            return None
    except Exception:  # noqa: BLE001 - no such container
        return None
    shell = mongo_shell(cfg.mongo_version or "4.4")
    r = c.exec_run([shell, "--quiet", "sharelatex", "--eval", 'JSON.stringify(db.projects.distinct("imageName"))'])
    text = r.output.decode("utf-8", "replace")
    if r.exit_code != 0:
        return None
    return re.findall(r"""["']([^"'\s]+)["']""", text)


def check_resume_plan(journal: Journal, signed_plan: dict) -> None:
    """``--resume`` continues only the plan the bundle's signature covers, never one edited in the journal."""
    if journal.plan != signed_plan:
        raise ToolkitError("the upgrade journal's plan differs from the plan the bundle's signature covers "
                           f"({journal.path}): refusing to resume",
                           "Roll back (`overleaf-import rollback`), or restore the journal from the audit log's record.")


def run_upgrade(ctx: Context, plan: dict, journal: Journal | None, present: Callable[[str], bool], bundle_id: str,
                *, code_update: Callable[[Audit], None] | None = None) -> dict:
    """Preflight, then the steps, on a Toolkit the caller has locked (``ToolkitLock``) and whose images are
    loaded. ``code_update`` moves the Toolkit code first (a new upgrade only). Returns the result summary."""
    audit = Audit(ctx.toolkit, bundle_id)
    problems = preflight(ctx, plan, journal, present)
    if problems:
        if journal is not None:  # an upgrade under way: its change record notes the refusal
            audit.record("preflight", "refused", problems=problems)
        raise PreflightError("preflight found problems; nothing was changed:\n  - " + "\n  - ".join(problems),
                             "Fix them and run the same command again.")
    cfg = read_toolkit(ctx.toolkit)
    if journal is None:
        if code_update is not None:
            code_update(audit)
        if not ctx.opts.yes and not ctx.ask(f"Upgrade Overleaf {plan['from']} -> {plan['to']} in "
                                            f"{len(plan['steps'])} steps (backups included)?"):
            raise ToolkitError("upgrade not confirmed", "Answer yes, or pass --yes for unattended runs.")
        journal = Journal.new(ctx.toolkit, bundle_id, plan, cfg.version)
        journal.save()
        audit.record("upgrade", "started", frm=plan["from"], to=plan["to"], steps=len(plan["steps"]))
    else:
        audit.record("upgrade", "resumed", next=(journal.next_step() or {}).get("id"))
    tk = Toolkit(ctx.toolkit)
    if rc_needs_rename(ctx.toolkit):  # as bin/rename-rc-vars does, with a copy kept
        tk.rename_sharelatex_vars(["overleaf.rc"])
        audit.record("config", "renamed SHARELATEX_ keys in overleaf.rc")
    for key, value in pull_settings_needed(read_toolkit(ctx.toolkit)).items():
        tk.set_rc(key, value, keep_copy=True)
        audit.record("config", "set", key=key, value=value)
    started = time.monotonic()
    Upgrader(ctx, journal, audit).run()
    return {"ok": True, "version": tk.read_version(), "steps": len(plan["steps"]),
            "seconds": round(time.monotonic() - started, 1), "notes": ctx.notes}


def rc_needs_rename(toolkit: Path) -> bool:
    """An old overleaf.rc with SHARELATEX_ keys, on a Toolkit whose code reads the OVERLEAF_ names (then every
    bin/ command refuses the old ones, facts 2.5). An older Toolkit reads the old names: they stay."""
    rc = Path(toolkit) / "config" / "overleaf.rc"
    return rc.exists() and "SHARELATEX_" in rc.read_text("utf-8") and capabilities(Path(toolkit)).overleaf_rc_names


def pull_settings_needed(cfg: ToolkitConfig) -> dict[str, str]:
    want = {"PULL_BEFORE_UPGRADE": "false", "SIBLING_CONTAINERS_PULL": "false"}
    return {k: v for k, v in want.items() if cfg.rc.get(k, "").strip().lower() != v}


# --- rollback and status ----------------------------------------------------------------
def current_sources(toolkit: Path) -> dict[str, Path]:
    return data_sources(read_toolkit(toolkit))


def choose_backup(toolkit: Path, journal: Journal | None, backup_dir: Path | None, wanted: str | None):
    """The backup to restore (``wanted``, else the one before the last major step), checked by
    :func:`importer.backup.check_record` against its own folder and the Toolkit's current paths."""
    folders: list[Path] = []
    if journal is not None:
        folders = [Path(r["path"]) for r in journal.backups if isinstance(r, dict) and Path(str(r.get("path"))).is_dir()]
    if not folders:
        base = backup_dir or default_backup_dir(toolkit)
        if base.is_dir():
            folders = [p for p in sorted(base.iterdir())
                       if p.is_dir() and not p.name.endswith(".partial") and (p / "backup.json").is_file()]
    if not folders:
        raise ToolkitError("no backups found for this Toolkit", "Give --backup-dir where the backups are.")
    records = [(f, load_record(f)) for f in folders]
    if wanted:
        chosen = [(f, r) for f, r in records if r.id == wanted]
        if not chosen:
            raise ToolkitError(f"no backup {wanted}", "Known: " + ", ".join(r.id for _f, r in records))
    else:
        chosen = [(f, r) for f, r in records if r.major] or records
    folder, rec = chosen[-1]
    check_record(rec, folder, current_sources(toolkit))
    return rec


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
        for item in rec.not_covered:
            ctx.say(f"    not restored (not in the backup): {item}")
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
        return {"backup": rec.id, "version": tk.read_version(), "started": start, "not_covered": rec.not_covered}


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
