"""The step runner: walk a signed plan's typed steps on a Toolkit, journaling every step and phase.

Each step kind runs through the Toolkit's own commands (see :mod:`importer.upgrade` for what each
does); the journal (:class:`importer.upgrade.journal.Journal`) records every status and phase so that
``--resume`` continues at the right place and a repeated step is harmless.

    result = run_upgrade(ctx, plan, journal, present, bundle_id, code_update=None)   # preflight first
    Upgrader(ctx, Journal.new(ctx.toolkit, bundle_id, plan, "3.5.10"), audit).run()  # the steps only
"""
from __future__ import annotations

import base64
import json
import re
import secrets
import shlex
import time
from pathlib import Path
from typing import Any, Callable

from manifests.bundle import iso, utc_now
from manifests.catalog import Migration
from manifests.errors import DeclinedError, HealthCheckError, PausedForCheck, PreflightError, StepFailed
from manifests.toolkit_config import ToolkitConfig, read_toolkit
from manifests.versions import AppVersion, MajorMinor

from importer.upgrade.backup import create_backup
from importer.upgrade.grammar import check_step_id
from importer.upgrade.preflight import preflight
from importer.upgrade.journal import Audit, Journal
from importer.upgrade.toolkit import (PROJECT_LABEL, SERVICE_LABEL, Capabilities, Toolkit, capabilities, compose_project,
                                     service_container)
from importer.upgrade.base import (Context, DOC_RECOVERY_LOG, RunStep, app_image_ref, data_sources, default_backup_dir,
                           expected_stack, fcv_command, mongo_authenticated, mongo_enabled, mongo_host, mongo_shell,
                           not_covered, own_catalog, plan_steps, redis_enabled, series_of, version_major)

LONG_DIR = "/tmp/overleaf-airgap"
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


class Upgrader:
    def __init__(self, ctx: Context, journal: Journal, audit: Audit) -> None:
        self.ctx = ctx
        self.j = journal
        self.audit = audit
        self.tk = Toolkit(ctx.toolkit, log=lambda s: ctx.say(f"    {s}"))
        self.plan = journal.plan
        self.steps = plan_steps(self.plan)
        self.suffix = "-with-texlive-full" if journal.start_version.endswith("-with-texlive-full") else ""
        self.caps: Capabilities = capabilities(ctx.toolkit)

    @property
    def cfg(self) -> ToolkitConfig:
        return read_toolkit(self.ctx.toolkit)

    def run(self) -> None:
        steps = self.steps
        for i, step in enumerate(steps, 1):
            sid = step.id
            if self.j.status(sid) == "done":
                continue
            self.ctx.say(f"[{i}/{len(steps)}] {step.description}")
            self.j.set_status(sid, "running")
            self.audit.record(f"step {sid}", "started", description=step.description)
            try:
                getattr(self, f"do_{step.kind}")(step)
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
        self.j.finished = iso(utc_now())
        self.j.save()
        self.audit.record("upgrade", "finished", version=self.tk.read_version())

    # --- helpers --------------------------------------------------------------------
    def running_containers(self) -> list[Any]:
        return self.ctx.client.containers.list(filters={"label": f"{PROJECT_LABEL}={compose_project(self.cfg.rc)}"})

    def stop_if_running(self, *services: str) -> None:
        names = {c.labels.get(SERVICE_LABEL, c.name) for c in self.running_containers()}
        if (services and names & set(services)) or (not services and names):
            self.tk.stop(*services)

    def container(self, name: str):
        """The container of service ``name`` of this Toolkit's compose project (see ``service_container``)."""
        return service_container(self.ctx.client, compose_project(self.cfg.rc), name)

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
        return app_image_ref(cfg)

    def expected_stack(self) -> dict[str, str | None]:
        return expected_stack(self.cfg)

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

    def run_long(self, step: RunStep, tag: str, command: str) -> tuple[int, str]:
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
            self.ctx.say(f"    {step.name} is still running in the container (started by an earlier run): "
                         "waiting for it")
            self.audit.record(f"step {step.id}", "waiting for a running command", tag=tag)
        elif state == "rc" and self.j.has_phase(step.id, f"started:{tag}"):
            self.ctx.say(f"    {step.name} finished while no one watched: taking its result")
        else:
            self.tk.log(f"$ docker exec -d sharelatex /bin/bash -c {command!r}")
            wrapper = (f"mkdir -p {LONG_DIR} && rm -f {q(base + '.rc')} {q(base + '.log')} && echo $$ > {q(base + '.pid')}"
                       f" && ( /bin/bash -c {q(command)} ) > {q(base + '.log')} 2>&1 < /dev/null;"
                       f" echo $? > {q(base + '.rc.tmp')}; mv {q(base + '.rc.tmp')} {q(base + '.rc')}")
            c.exec_run(["/bin/sh", "-c", wrapper], detach=True)
            self.j.mark_phase(step.id, f"started:{tag}")
            time.sleep(0.3)
        return self._follow(step, c, base)

    def _follow(self, step: RunStep, c: Any, base: str) -> tuple[int, str]:
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
                    raise StepFailed(f"{step.name} stopped without an exit code (was the container restarted?)",
                                     "Check `bin/logs`, then run the same upgrade command with --resume: the "
                                     "migration scripts can be run again.")
            else:
                gone = 0
            c.reload()
            if not c.attrs["State"].get("Running"):
                raise StepFailed(f"the sharelatex container stopped while {step.name} ran",
                                 "Check `bin/logs`, then run the same upgrade command with --resume.")
            time.sleep(1.0)

    def run_in_app(self, step: RunStep, tag: str, command: str, success: str | re.Pattern[str]) -> str:
        code, out = self.run_long(step, tag, command)
        ok = (success.search(out) is not None) if isinstance(success, re.Pattern) else (not success or success in out)
        if code != 0 or not ok:
            tail = "\n".join(out.strip().splitlines()[-20:])
            want = success.pattern if isinstance(success, re.Pattern) else success
            why = f"exit {code}" if code != 0 else f"its output lacks {want!r}"
            raise StepFailed(f"{step.name} failed ({why}):\n{tail}",
                             "The migration scripts can be run again: fix the cause (see the output and bin/logs), "
                             "then run the same upgrade command with --resume.")
        self.audit.record(f"step {step.id}", "command ok", command=command[:200])
        return out

    # --- step kinds -----------------------------------------------------------------
    def do_backup(self, step: RunStep) -> None:
        self.stop_if_running()
        cfg = self.cfg
        dest = self.ctx.opts.backup_dir or default_backup_dir(self.ctx.toolkit)
        left_out = not_covered(cfg)
        rec = create_backup(dest, data_sources(cfg), app_version=cfg.version, step_id=check_step_id(step.id),
                            major=bool(step.major), not_covered=left_out)
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
        wanted = {i for s in self.steps for i in s.images} | set(self.plan.get("assumed_present", ()))
        if ref in wanted and cfg.nginx_image != ref:
            self.tk.set_rc("NGINX_IMAGE", ref, keep_copy=True)
            self.ctx.notes.append(f"NGINX_IMAGE={ref} was pinned in config/overleaf.rc (the Toolkit's default "
                                  "depends on its code, not on the Overleaf version). Check config/nginx/nginx.conf "
                                  "against the Toolkit's CHANGELOG for this nginx version.")

    def do_app(self, step: RunStep) -> None:
        sid = step.id
        target = step.version + self.suffix
        if not (self.j.has_phase(sid, "version_written") and self.tk.read_version() == target):
            self.stop_if_running()
            self.tk.write_version(target)
            self.j.mark_phase(sid, "version_written")
        else:  # resumed after the version was written: its first start may be migrating; never stop it now
            self.ctx.say(f"    config/version is already {target}: not stopping the services again")
        self.pin_nginx(step.version)
        self.tk.up()
        self.wait_doc_recovery(step)
        self.health()

    def wait_doc_recovery(self, step: RunStep) -> None:
        """After a doc-version recovery preparation, the first 5.0.3+ start runs the recovery: follow its log
        until it says Done. (no fixed limit: about 10k projects a minute)."""
        ids = [s.id for s in self.steps]
        prep = [s for s in self.steps if s.kind == "migration" and s.name == "doc_version_recovery"]
        if not prep or ids.index(prep[0].id) > ids.index(step.id):
            return
        first_app = next(s for s in self.steps[ids.index(prep[0].id):] if s.kind == "app")
        if first_app.id != step.id:
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
                            self.audit.record(f"step {step.id}", "doc version recovery done")
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

    def do_mongo(self, step: RunStep) -> None:
        sid, cfg = step.id, self.cfg
        frm, to = step.from_version, step.version
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

    def external_mongo(self, step: RunStep) -> None:
        cfg = self.cfg
        frm, to = step.from_version, step.version
        got = self.probe_from_app(_MONGO_PROBE, "airgapMongo")
        server, fcv = series_of(str(got.get("version", ""))), series_of(str(got.get("fcv", "")))
        self.ctx.say(f"    external MongoDB {mongo_host(cfg)}: server {got.get('version')}, feature compatibility "
                     f"{fcv or 'unknown'}")
        def ge(a: str, b: str) -> bool:
            return bool(a) and MajorMinor.parse(a) >= MajorMinor.parse(b)
        if ge(server, to) and ge(fcv, to):
            self.audit.record(f"step {step.id}", "external MongoDB checked", version=got.get("version"), fcv=fcv)
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
        self.j.mark_phase(step.id, "awaiting_db_admin")
        raise PausedForCheck(
            f"MongoDB is external (MONGO_ENABLED=false): the upgrade does not manage it. It runs {got.get('version')} "
            f"with feature compatibility {fcv or 'unknown'}; this step needs {to} with feature compatibility {to}. "
            f"Ask its admin to do, on {mongo_host(cfg)}:\n  - " + "\n  - ".join(todo) + auth,
            "When that is done, run the same upgrade command with --resume: it checks the version and feature "
            "compatibility first.")

    def do_redis(self, step: RunStep) -> None:
        cfg = self.cfg
        if not redis_enabled(cfg):
            got = self.probe_from_app(_REDIS_PROBE, "airgapRedis")
            have = series_of(str(got.get("version", "")))
            if have and MajorMinor.parse(have) >= MajorMinor.parse(step.version):
                self.audit.record(f"step {step.id}", "external Redis checked", version=got.get("version"))
                return
            raise PausedForCheck(
                f"Redis is external (REDIS_ENABLED=false): the upgrade does not manage it. It runs "
                f"{got.get('version')}; this step needs {step.version}. Ask its admin to upgrade it (Redis 7+ data "
                "cannot go back to an older Redis: back it up first).",
                "When that is done, run the same upgrade command with --resume: it checks the version first.")
        if cfg.redis_version != step.version:
            self.stop_if_running("redis")
            self.tk.set_rc("REDIS_IMAGE", f"{cfg.redis_image}:{step.version}", keep_copy=True)
        self.tk.compose_up("redis")

        def probe() -> str | None:
            res = self.tk.exec_argv("redis", ["redis-cli", "ping"])
            return None if res.code == 0 and "PONG" in res.output else f"redis-cli ping: {res.output.strip()[-200:]}"
        self.wait_until("Redis did not come up", probe)

    def migration(self, step: RunStep) -> Migration:
        """The catalog's migration of that name: its commands are the importer's own, never the bundle's."""
        return own_catalog().migration(step.name)

    def do_migration(self, step: RunStep) -> None:
        name = step.name
        mig = self.migration(step)
        if name == "doc_version_recovery":
            return self.doc_version_recovery(step, mig)
        if name != "binary_files_migration":
            self.tk.up()
            self.health()
            self.run_in_app(step, step.id, mig.command, mig.success_text)
            return
        sid = step.id
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

    def flush_history_queues(self, step: RunStep, mig: Migration, rounds: int = 50) -> None:
        """``flush-history-queues`` until it reports ``"project_ids":0``, each round with ``failedProjects`` 0."""
        for i in range(rounds):
            out = self.run_in_app(step, f"{step.id}.flush{i}", mig.extra["flush_command"], "")
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

    def doc_version_recovery(self, step: RunStep, mig: Migration) -> None:
        """The doc version recovery's preparation (facts 2.6), on the retracted version the site runs."""
        sid = step.id
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


    def do_config(self, step: RunStep) -> None:
        if step.name == "rename_sharelatex_vars":
            if not self.ctx.opts.yes and not self.ctx.ask(
                    "Rename SHARELATEX_* to OVERLEAF_* in config/variables.env and config/overleaf.rc (copies kept)?"):
                raise DeclinedError("the variable rename was declined", "Run again and answer yes, or pass --yes.")
            self.stop_if_running()
            names = ["variables.env", "overleaf.rc"] if self.caps.overleaf_rc_names else ["variables.env"]
            changed = self.tk.rename_sharelatex_vars(names)
            self.audit.record(f"step {step.id}", "renamed", files=changed)
            return
        var = step.variable
        if self.cfg.env.get(var, "").strip():
            return
        if not self.ctx.opts.generate_secrets:
            self.j.mark_phase(step.id, "awaiting_secret")
            raise PausedForCheck(f"{var} must be added to config/variables.env now (Overleaf is at "
                                 f"{self.tk.read_version()}, so the Toolkit accepts it): make one with: {step.make}",
                                 "Add the line, keep the value stable from now on, then run the same upgrade command "
                                 "with --resume (or --resume --generate-secrets to have one made).")
        value = base64.b64encode(secrets.token_bytes(32)).decode()
        self.tk.set_env(var, value, keep_copy=True)
        self.audit.record(f"step {step.id}", "generated secret", variable=var)
        self.ctx.notes.append(f"{var} was generated into config/variables.env: keep it stable from now on.")


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
            raise DeclinedError("upgrade not confirmed: nothing was changed",
                                "Answer yes, or pass --yes for unattended runs.")
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
