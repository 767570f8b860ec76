"""The ``mongo`` step: one MongoDB major at a time, feature compatibility set before and after the switch.

On the running server (once it is the replica set's primary) set feature compatibility to the current
series; stop; switch ``MONGO_VERSION`` (the older ``MONGO_IMAGE=mongo:X.Y`` is moved to the split form when
the Toolkit reads it); start MongoDB; raise feature compatibility. With ``MONGO_ENABLED=false`` the database
is never touched: its version and feature compatibility are read through the app, and the step pauses with
instructions for its admin.

    MongoStep(ctx, journal, audit).run(step)     # step.kind == "mongo"
"""
from __future__ import annotations

import re

from manifests.errors import PausedForCheck, StepFailed
from manifests.toolkit_config import ToolkitConfig
from manifests.versions import MajorMinor, mongo_shell, version_major

from importer.upgrade.base import RunStep, fcv_command, mongo_authenticated, mongo_enabled, mongo_host, series_of
from importer.upgrade.steps.base import StepBase
from importer.upgrade.steps.probes import MONGO_PROBE, probe_from_app


class MongoStep(StepBase):
    def run(self, step: RunStep) -> None:
        sid, cfg = step.id, self.cfg
        frm, to = step.from_version, step.version
        if not mongo_enabled(cfg):
            return self.external(step)
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

    def set_mongo_version(self, cfg: ToolkitConfig, version: str) -> None:
        if cfg.mongo_legacy_form and self.caps.mongo_version:  # adopt the split form the Toolkit reads now
            self.tk.set_rc_many({"MONGO_IMAGE": cfg.mongo_image, "MONGO_VERSION": version}, keep_copy=True)
        elif cfg.mongo_legacy_form:
            self.tk.set_rc("MONGO_IMAGE", f"{cfg.mongo_image}:{version}", keep_copy=True)
        else:
            self.tk.set_rc("MONGO_VERSION", version, keep_copy=True)

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

    def external(self, step: RunStep) -> None:
        """An external MongoDB: go on when it already runs the target with its feature compatibility, else pause
        with what its admin must do."""
        cfg = self.cfg
        frm, to = step.from_version, step.version
        got = probe_from_app(self.tk, MONGO_PROBE, "airgapMongo")
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
