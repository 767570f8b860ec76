"""The ``app`` step: write ``config/version``, pin nginx to the planned image, ``bin/up -d``, follow a doc
version recovery when this start runs one, then the health check.

Once ``config/version`` is written, a resumed step never stops the app again (its first start may be running
database migrations).

    AppStep(ctx, journal, audit).run(step)       # step.kind == "app"
"""
from __future__ import annotations

import time

from manifests.errors import HealthCheckError
from manifests.versions import AppVersion

from importer.upgrade.base import DOC_RECOVERY_LOG, RunStep, own_catalog
from importer.upgrade.steps.base import StepBase


class AppStep(StepBase):
    def run(self, step: RunStep) -> None:
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

    def runs_doc_recovery(self, step: RunStep) -> bool:
        """Whether ``step`` is the first app start after a doc-version recovery preparation (facts 2.6)."""
        ids = [s.id for s in self.steps]
        prep = [s for s in self.steps if s.kind == "migration" and s.name == "doc_version_recovery"]
        if not prep or ids.index(prep[0].id) > ids.index(step.id):
            return False
        first_app = next(s for s in self.steps[ids.index(prep[0].id):] if s.kind == "app")
        return first_app.id == step.id

    def wait_doc_recovery(self, step: RunStep) -> None:
        """After a doc-version recovery preparation, the first 5.0.3+ start runs the recovery: follow its log
        until it says Done. (no fixed limit: about 10k projects a minute)."""
        if not self.runs_doc_recovery(step):
            return
        self.ctx.say(f"    following {DOC_RECOVERY_LOG} until it says Done.")
        last = ""
        misses = 0
        while True:
            c = self.container("sharelatex")
            if c is not None:
                c.reload()
                if c.attrs["State"].get("Running"):
                    code, out = self.sh(c, f"tail -n 5 {DOC_RECOVERY_LOG} 2>/dev/null")
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
