"""Long commands in the app container: started detached, followed with no time limit, taken up again on --resume.

A command's pid, output and exit code are kept in the container (``/tmp/overleaf-airgap/<tag>.*``): a resumed
run that finds the same command still running waits for it instead of starting a second copy, and one that
finished while nobody watched is taken as is. The migration steps (:mod:`importer.upgrade.steps.migration`)
build on this.

    out = LongRunning(ctx, journal, audit).run_in_app(step, step.id, "npm run migrations -- migrate", "done")
"""
from __future__ import annotations

import re
import shlex
import time
from typing import Any

from manifests.errors import StepFailed

from importer.upgrade.base import RunStep
from importer.upgrade.steps.base import StepBase

LONG_DIR = "/tmp/overleaf-airgap"


class LongRunning(StepBase):
    def run_long(self, step: RunStep, tag: str, command: str) -> tuple[int, str]:
        """Run ``command`` in the sharelatex container, detached, with no time limit; show its output as it
        comes; return (exit code, output)."""
        c = self.container("sharelatex")
        if c is None:
            raise StepFailed("the sharelatex container is not there", "Start it with bin/up -d and --resume.")
        base = f"{LONG_DIR}/{tag}"
        q = shlex.quote
        _, state = self.sh(c, f"if [ -f {q(base + '.rc')} ]; then echo rc; "
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
            code, out = self.sh(c, f"tail -c +{shown + 1} {q(base + '.log')} 2>/dev/null")
            if code == 0 and out:
                complete = out[: out.rfind("\n") + 1]
                for line in complete.splitlines():
                    self.ctx.say(f"      | {line}")
                shown += len(complete.encode("utf-8"))
            code, rc = self.sh(c, f"cat {q(base + '.rc')} 2>/dev/null || "
                                  f"(kill -0 \"$(cat {q(base + '.pid')})\" 2>/dev/null && echo running) || echo gone")
            rc = rc.strip()
            if rc.isdigit():
                _, full = self.sh(c, f"tail -n 200 {q(base + '.log')}; mv -f {q(base + '.rc')} {q(base + '.rc.seen')}")
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
        """:meth:`run_long`, then fail unless it exited 0 with ``success`` (text or pattern) in its output."""
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
