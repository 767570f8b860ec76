"""The ``config`` step: the SHARELATEX_ -> OVERLEAF_ rename (asked, copies kept), or a secret the new version
requires (pause for the admin to add it, or generated with --generate-secrets).

    ConfigStep(ctx, journal, audit).run(step)     # step.kind == "config"
"""
from __future__ import annotations

import base64
import secrets

from manifests.errors import DeclinedError, PausedForCheck

from importer.upgrade.base import RunStep
from importer.upgrade.steps.base import StepBase


class ConfigStep(StepBase):
    def run(self, step: RunStep) -> None:
        if step.name == "rename_sharelatex_vars":
            return self.rename(step)
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

    def rename(self, step: RunStep) -> None:
        if not self.ctx.opts.yes and not self.ctx.ask(
                "Rename SHARELATEX_* to OVERLEAF_* in config/variables.env and config/overleaf.rc (copies kept)?"):
            raise DeclinedError("the variable rename was declined", "Run again and answer yes, or pass --yes.")
        self.stop_if_running()
        names = ["variables.env", "overleaf.rc"] if self.caps.overleaf_rc_names else ["variables.env"]
        changed = self.tk.rename_sharelatex_vars(names)
        self.audit.record(f"step {step.id}", "renamed", files=changed)
