"""The ``redis`` step: switch ``REDIS_IMAGE`` and restart Redis until it answers PONG; an external Redis is
checked through the app and, when older than the step needs, the step pauses for its admin.

    RedisStep(ctx, journal, audit).run(step)     # step.kind == "redis"
"""
from __future__ import annotations

from manifests.errors import PausedForCheck
from manifests.versions import MajorMinor

from importer.upgrade.base import RunStep, redis_enabled, series_of
from importer.upgrade.steps.base import StepBase
from importer.upgrade.steps.probes import REDIS_PROBE, probe_from_app


class RedisStep(StepBase):
    def run(self, step: RunStep) -> None:
        cfg = self.cfg
        if not redis_enabled(cfg):
            return self.external(step)
        if cfg.redis_version != step.version:
            self.stop_if_running("redis")
            self.tk.set_rc("REDIS_IMAGE", f"{cfg.redis_image}:{step.version}", keep_copy=True)
        self.tk.compose_up("redis")

        def probe() -> str | None:
            res = self.tk.exec_argv("redis", ["redis-cli", "ping"])
            return None if res.code == 0 and "PONG" in res.output else f"redis-cli ping: {res.output.strip()[-200:]}"
        self.wait_until("Redis did not come up", probe)

    def external(self, step: RunStep) -> None:
        got = probe_from_app(self.tk, REDIS_PROBE, "airgapRedis")
        have = series_of(str(got.get("version", "")))
        if have and MajorMinor.parse(have) >= MajorMinor.parse(step.version):
            self.audit.record(f"step {step.id}", "external Redis checked", version=got.get("version"))
            return
        raise PausedForCheck(
            f"Redis is external (REDIS_ENABLED=false): the upgrade does not manage it. It runs "
            f"{got.get('version')}; this step needs {step.version}. Ask its admin to upgrade it (Redis 7+ data "
            "cannot go back to an older Redis: back it up first).",
            "When that is done, run the same upgrade command with --resume: it checks the version first.")
