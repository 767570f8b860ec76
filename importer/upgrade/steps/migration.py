"""The ``migration`` step: commands from the importer's own catalog (never from the bundle), run as long commands
in the app container (:mod:`importer.upgrade.steps.longrun`).

The binary-files migration goes level 1, stops for a person's check, backfills, moves the old files aside and
goes level 2; the doc version recovery's preparation (facts 2.6) closes the editor and flushes every doc.

    MigrationStep(ctx, journal, audit).run(step)     # step.kind == "migration"
"""
from __future__ import annotations

import re

from manifests.catalog import Migration
from manifests.errors import PausedForCheck, StepFailed

from importer.upgrade.base import DOC_RECOVERY_LOG, RunStep, own_catalog, redis_enabled
from importer.upgrade.steps.longrun import LongRunning


class MigrationStep(LongRunning):
    def migration(self, step: RunStep) -> Migration:
        """The catalog's migration of that name: its commands are the importer's own, never the bundle's."""
        return own_catalog().migration(step.name)

    def run(self, step: RunStep) -> None:
        mig = self.migration(step)
        if step.name == "doc_version_recovery":
            return self.doc_version_recovery(step, mig)
        if step.name == "binary_files_migration":
            return self.binary_files(step, mig)
        self.tk.up()
        self.health()
        self.run_in_app(step, step.id, mig.command, mig.success_text)

    def binary_files(self, step: RunStep, mig: Migration) -> None:
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
        self.sh(c, "sv stop real-time-overleaf")

        def rt_down() -> str | None:
            _, out = self.sh(c, "sv status real-time-overleaf")
            return None if out.strip().startswith("down:") else f"real-time is not down yet ({out.strip()})"
        self.wait_until("real-time-overleaf did not stop", rt_down)
        self.audit.record(f"step {sid}", "real-time stopped (editor closed)")
        if self.container("git-bridge") is not None:
            self.stop_if_running("git-bridge")
        if self.j.start_version.split("-")[0] == "5.0.1":  # 5.0.2 never ran: flush every doc, then no DocVersion
            self.run_in_app(step, sid, mig.command, re.compile(r"""["']?failureCount["']?\s*[:=]\s*0\b"""))
            self.check_no_doc_versions()
        self.ctx.notes.append(f"Doc version recovery ran at the first 5.0.3+ start ({DOC_RECOVERY_LOG}: Done.). "
                              "Leave the instance running while history resyncs in the background.")

    def check_no_doc_versions(self) -> None:
        """After the flush, no ``DocVersion:*`` key may remain in Redis (an external one: a note to check)."""
        if not redis_enabled(self.cfg):
            self.ctx.notes.append("Redis is external: check that `redis-cli --scan --pattern 'DocVersion:*'` "
                                  "printed nothing before the upgrade went on.")
            return
        res = self.tk.exec_argv("redis", ["redis-cli", "--scan", "--pattern", "DocVersion:*"])
        keys = [k for k in res.output.split() if k.startswith("DocVersion:")]
        if res.code != 0 or keys:
            raise StepFailed(f"{len(keys)} DocVersion:* key(s) remain in Redis after the flush "
                             f"(first: {keys[0] if keys else res.output.strip()[-200:]})",
                             "Run the flush again (the step repeats it on --resume) and check Redis.")
