"""The machinery every step kind shares: the Toolkit, the journal and audit, the one container look-up,
stop-if-running, waiting with a time limit, and the stack's health check.

Each step kind (:mod:`importer.upgrade.steps`) is a :class:`StepBase` with a ``run(step)``; the runner
(:mod:`importer.upgrade.runner`) makes one of each on the same context, journal and audit.

    base = StepBase(ctx, Journal.new(ctx.toolkit, "bundle-id", plan, "5.5.8"), Audit(ctx.toolkit, "bundle-id"))
    base.container("sharelatex")      # the service's container, or None
    base.health()                     # every expected container up, on its image, and the app answers
"""
from __future__ import annotations

import time
from functools import cached_property
from typing import Any, Callable

from manifests.errors import HealthCheckError
from manifests.toolkit_config import ToolkitConfig, read_toolkit

from importer.upgrade.base import Context, RunStep, expected_stack, plan_steps
from importer.upgrade.journal import Audit, Journal
from importer.upgrade.toolkit import (PROJECT_LABEL, SERVICE_LABEL, Capabilities, Toolkit, capabilities, compose_project,
                                     service_container)


class StepBase:
    """What one upgrade run knows and can do, whatever the step kind."""

    def __init__(self, ctx: Context, journal: Journal, audit: Audit, *, steps: list[RunStep] | None = None) -> None:
        self.ctx = ctx
        self.j = journal
        self.audit = audit
        self.tk = Toolkit(ctx.toolkit, log=lambda s: ctx.say(f"    {s}"))
        self.plan = journal.plan
        self.steps = steps if steps is not None else plan_steps(self.plan)
        self.suffix = "-with-texlive-full" if journal.start_version.endswith("-with-texlive-full") else ""

    def run(self, step: RunStep) -> None:
        raise NotImplementedError(f"no runner for step kind {step.kind!r}")

    @cached_property
    def caps(self) -> Capabilities:
        return capabilities(self.ctx.toolkit)

    @property
    def cfg(self) -> ToolkitConfig:
        return read_toolkit(self.ctx.toolkit)

    # --- containers -----------------------------------------------------------------------
    def running_containers(self) -> list[Any]:
        return self.ctx.client.containers.list(filters={"label": f"{PROJECT_LABEL}={compose_project(self.cfg.rc)}"})

    def container(self, name: str):
        """The container of service ``name`` (``sharelatex``, ``mongo``, ``redis``, ``git-bridge``), or None.
        The one place the steps look a container up: by this Toolkit's compose project and service labels
        (see ``service_container``), so that a site and its rehearsal sandbox never see each other's."""
        return service_container(self.ctx.client, compose_project(self.cfg.rc), name)

    def stop_if_running(self, *services: str) -> None:
        """``bin/stop`` (those services, or all) unless none of them runs."""
        names = {c.labels.get(SERVICE_LABEL, c.name) for c in self.running_containers()}
        if (services and names & set(services)) or (not services and names):
            self.tk.stop(*services)

    def sh(self, c: Any, script: str) -> tuple[int, str]:
        """``/bin/sh -c script`` in container ``c``: (exit code, output)."""
        r = c.exec_run(["/bin/sh", "-c", script])
        return r.exit_code, r.output.decode("utf-8", "replace")

    # --- waiting and health ---------------------------------------------------------------
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
        return expected_stack(self.cfg)

    def stack_problem(self, expect: dict[str, str | None]) -> str | None:
        """What is wrong with the running stack now (None: every container runs its image, healthy, and the app
        answers on /status)."""
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
        code, _ = self.sh(self.container("sharelatex"), "wget -qO- http://127.0.0.1:80/status 2>/dev/null || "
                                                        "curl -fsS http://127.0.0.1:80/status")
        return None if code == 0 else "the app does not answer on port 80 (/status)"

    def health(self) -> None:
        expect = self.expected_stack()

        def probe() -> str | None:
            import docker.errors
            try:
                return self.stack_problem(expect)
            except docker.errors.APIError as exc:  # e.g. 409: the container is restarting
                return f"the engine says: {exc.explanation or exc}"

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
