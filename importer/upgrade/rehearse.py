"""``overleaf-import rehearse``: the whole upgrade on a sandbox copy of the site, timed, the real site untouched.

The real site gets one fresh consistent backup (``bin/stop``, a checksummed copy of config/ and every data
path, ``bin/up -d`` again when it was running), taken straight into the sandbox folder; that is the only
moment the real site is stopped. The sandbox (default ``<toolkit>.rehearsal-<UTC stamp>`` beside the
Toolkit) is a copy of the Toolkit code (no ``.overleaf-airgap`` state, no journal) with the backup's
config/ and data moved in (checksums verified); its config gets its own ``PROJECT_NAME``, its own free
``OVERLEAF_PORT`` on 127.0.0.1 (none when the site publishes none), data paths inside the sandbox, and a
``config/docker-compose.override.yml`` giving every service its own ``container_name``
(``<project>-<service>``), so it runs beside the real site. Then the very same upgrade code runs there
(``importer.upgrade.upgrade_toolkit``, ``--yes``, secrets generated, the binary files check taken as
done), a final health check, and every plan step's wall time goes into a
:class:`importer.upgrade.rehearsal_record.RehearsalRecord` under the REAL Toolkit's
``.overleaf-airgap/rehearsals/``. Finally the sandbox's containers and networks are removed (``docker
compose down``, then anything left with its project label) and its folder deleted, unless ``keep``.
A failure or Ctrl-C inside the rehearsal removes the sandbox too (unless ``keep``) and is recorded:
:class:`manifests.errors.RehearsalFailed` (exit 35) names the step and where the sandbox and record are.

    plan = plan_sandbox(Path("/srv/overleaf-toolkit"), None, plan_backups=3)   # checks only
    record, path = rehearse(Path("/srv/overleaf-toolkit"), RehearseOptions(keep=False), upgrade=upgrade_toolkit,
                            verify=..., load=..., say=print)   # importer.upgrade.rehearse_toolkit passes upgrade
    record.ok, record.total_seconds, [(s.id, s.seconds) for s in record.steps]
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from manifests.atomic import atomic_write_bytes
from manifests.bundle import iso, utc_now
from manifests.errors import (DiskSpaceError, PausedForCheck, PreflightError, RehearsalFailed,
                              ToolkitError, UsageError)
from manifests.toolkit_config import ToolkitConfig, read_toolkit
from manifests.units import human_size

from importer.images import engine as eng
from importer.images.load import pinned_ids
from importer.images.verify import VerifiedBundle
from importer.upgrade.backup import create_backup, read_sums, tree_size, verify_tree
from importer.upgrade.base import (Context, UpgradeOptions, data_sources, git_bridge_on, mongo_enabled, plan_steps,
                                   redis_enabled)
from importer.upgrade.journal import STATE_DIR, Audit, Journal, ToolkitLock
from importer.upgrade.preflight import preflight
from importer.upgrade.rehearsal_record import RehearsalRecord, StepTiming
from importer.upgrade.toolkit import PROJECT_LABEL, SERVICE_LABEL, Toolkit, compose_project, service_container

WORK_DIR = ".rehearsal"          # inside the sandbox: the fresh backup, then the sandbox upgrade's own backups
STEP_LINE = re.compile(r"^\[(\d+)/(\d+)\] ")   # how the step runner announces a step
PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._/+-]+$")
DATA_KEYS = {"overleaf": "OVERLEAF_DATA_PATH", "mongo": "MONGO_DATA_PATH", "redis": "REDIS_DATA_PATH",
             "git-bridge": "GIT_BRIDGE_DATA_PATH"}


@dataclass
class RehearseOptions:
    sandbox: Path | None = None     # default: <toolkit>.rehearsal-<stamp> beside the Toolkit
    keep: bool = False              # leave the sandbox (running) for a look
    health_timeout: float = 300.0
    update_toolkit: bool = True     # the sandbox's code moves to the bundle's commit, as `upgrade --yes` does


@dataclass(frozen=True)
class SandboxPlan:
    """Where the sandbox goes and what it is made of; nothing is changed by making one."""
    real: Path
    sandbox: Path
    project: str
    real_project: str
    port: int | None
    sources: dict[str, Path]        # backup label -> the real site's folder
    targets: dict[str, Path]        # backup label -> the sandbox's folder
    need_bytes: int
    free_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"sandbox": str(self.sandbox), "project": self.project, "port": self.port,
                "need_bytes": self.need_bytes, "free_bytes": self.free_bytes}


def stamp() -> str:
    return time.strftime("%Y%m%dt%H%M%S", time.gmtime())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def plan_sandbox(toolkit: Path, sandbox: Path | None, *, plan_backups: int = 1, when: str | None = None) -> SandboxPlan:
    """Check that a sandbox can be made (its folder is new and plain, the disk has room for the site's data,
    once for the fresh backup and once per backup step of the plan, plus the Toolkit code); change nothing.
    UsageError for a sandbox path that exists or is unusable, DiskSpaceError when the room is lacking."""
    root = Path(toolkit).resolve()
    cfg = read_toolkit(root)
    real_project = compose_project(cfg.rc)
    when = when or stamp()
    target = Path(os.path.abspath(sandbox)) if sandbox is not None else root.parent / f"{root.name}.rehearsal-{when}"
    if os.path.lexists(target):
        raise UsageError(f"the sandbox folder {target} already exists: a rehearsal only makes a new one",
                         "Remove it (a kept sandbox: `bin/docker-compose down` there first), or pass another "
                         "--sandbox DIR.")
    if not PLAIN_PATH.match(str(target)):
        raise UsageError(f"the sandbox path {target} has characters the Toolkit's config cannot hold unquoted",
                         "Pass a --sandbox DIR made of letters, digits and ._/+- only.")
    sources = data_sources(cfg)
    for label, src in sources.items():
        if _inside(target, src) or _inside(src, target):
            raise UsageError(f"the sandbox {target} would lie inside the site's {label} folder {src} (or hold it)",
                             "Pass a --sandbox DIR outside the Toolkit's config and data folders.")
    if _inside(target, root):
        raise UsageError(f"the sandbox {target} would lie inside the Toolkit {root}",
                         "Pass a --sandbox DIR outside the Toolkit folder (the default is beside it).")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"the sandbox's parent folder {parent} does not exist", "Create it, or pass another --sandbox.")
    data = tree_size(list(sources.values()))
    code = tree_size([p for p in root.iterdir() if p.name not in ("config", STATE_DIR)
                      and not any(_inside(s, p) or _inside(p, s) for s in sources.values())])
    need = int(data * (1 + max(plan_backups, 0)) * 1.05) + code + 16 * 1024 * 1024
    st = os.statvfs(parent)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise DiskSpaceError(f"not enough free space for the rehearsal's sandbox in {parent}: {human_size(free)} free, "
                             f"about {human_size(need)} needed (the site's data once for the fresh backup and once "
                             f"per backup step of the plan, plus the Toolkit code)",
                             "Free space there, or put the sandbox on another disk with --sandbox DIR.")
    project = f"{real_project}-rehearsal-{when}"[:60].rstrip("-_")
    if project == real_project:
        raise UsageError("the sandbox's compose project would be the real site's")
    port = None
    if (cfg.rc.get("OVERLEAF_PORT") or "").strip():
        port = free_port()
    targets = {label: (target / "config" if label == "config" else target / "data" / label) for label in sources}
    return SandboxPlan(root, target, project, real_project, port, sources, targets, need, free)


# --- making the sandbox -----------------------------------------------------------------------------------
def copy_code(plan: SandboxPlan) -> None:
    """The Toolkit checkout without config/, our state folder, or any data path that lies inside it."""
    skip = {plan.real / "config", plan.real / STATE_DIR, *plan.sources.values()}

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(folder, n) in skip]

    shutil.copytree(plan.real, plan.sandbox, symlinks=True, ignore=ignore)


def set_rc_lines(path: Path, values: dict[str, str | None]) -> None:
    """Set (None: remove) ``KEY=value`` lines of a sandbox's overleaf.rc, keeping the others in order."""
    lines = path.read_text("utf-8").splitlines()
    for key, value in values.items():
        pat = re.compile(rf"^\s*(?:export\s+)?{re.escape(key)}=")
        kept = [line for line in lines if not pat.match(line)]
        if value is not None:
            kept.append(f"{key}={value}")
        lines = kept
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def sandbox_services(cfg: ToolkitConfig) -> list[str]:
    out = ["sharelatex"]
    out += ["mongo"] if mongo_enabled(cfg) else []
    out += ["redis"] if redis_enabled(cfg) else []
    out += ["git-bridge"] if git_bridge_on(cfg) else []
    out += ["nginx"] if cfg.tls_proxy else []
    return out


def configure_sandbox(plan: SandboxPlan) -> None:
    """Own project name, port and data paths in the sandbox's overleaf.rc; own container names in its override."""
    rc_path = plan.sandbox / "config" / "overleaf.rc"
    own = rc_path.read_text("utf-8")
    values: dict[str, str | None] = {"PROJECT_NAME": plan.project}
    for label, folder in plan.targets.items():
        if label == "config":
            continue
        key = DATA_KEYS.get(label)
        if key is None:
            continue
        if key == "OVERLEAF_DATA_PATH" and re.search(r"^\s*SHARELATEX_DATA_PATH=", own, re.M) \
                and not re.search(r"^\s*OVERLEAF_DATA_PATH=", own, re.M):
            key = "SHARELATEX_DATA_PATH"   # an old overleaf.rc: the upgrade renames it as it would on the site
        values[key] = str(folder)
    if plan.port is not None:
        values.update({"OVERLEAF_PORT": str(plan.port), "OVERLEAF_LISTEN_IP": "127.0.0.1"})
    set_rc_lines(rc_path, values)
    cfg = read_toolkit(plan.sandbox)
    override_path = plan.sandbox / "config" / "docker-compose.override.yml"
    data: dict[str, Any] = {}
    if override_path.is_file():
        loaded = yaml.safe_load(override_path.read_text("utf-8")) or {}
        data = loaded if isinstance(loaded, dict) else {}
    else:
        base = plan.sandbox / "lib" / "docker-compose.base.yml"
        try:
            version = (yaml.safe_load(base.read_text("utf-8")) or {}).get("version")
        except (OSError, yaml.YAMLError):
            version = None
        if version:   # Compose v1 wants every file in the same format
            data["version"] = version
    services = data.setdefault("services", {}) or {}
    data["services"] = services
    for name in sorted(set(sandbox_services(cfg)) | set(services)):
        entry = services.get(name) or {}
        entry["container_name"] = f"{plan.project}-{name}"
        services[name] = entry
    atomic_write_bytes(override_path, ("# written by overleaf-import rehearse: this sandbox's own container names\n"
                                       + yaml.safe_dump(data, sort_keys=False)).encode())


def fill_sandbox(plan: SandboxPlan, backup_path: Path) -> None:
    """Move the fresh backup's config/ and data into the sandbox's folders, then check every file's sha256."""
    sums = read_sums(backup_path)
    for label, target in plan.targets.items():
        src = backup_path / label
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            os.replace(src, target)
        else:
            target.mkdir(parents=True, exist_ok=True)
    bad = verify_tree(backup_path, sums, plan.targets)
    if bad:
        raise ToolkitError(f"the sandbox's copy differs from the fresh backup ({len(bad)} file(s), first: {bad[0]})",
                           "Check the disk, then rehearse again.")


# --- the real site -----------------------------------------------------------------------------------------
def running_services(client: Any, project: str) -> set[str]:
    return {c.labels.get(SERVICE_LABEL, c.name)
            for c in client.containers.list(filters={"label": f"{PROJECT_LABEL}={project}"})}


def wait_running(client: Any, project: str, services: set[str], timeout: float) -> list[str]:
    """Until each of ``services`` runs (and is not unhealthy/starting) again; what still is not, at the end."""
    deadline = time.monotonic() + timeout
    while True:
        missing = []
        for name in sorted(services):
            c = service_container(client, project, name)
            if c is None:
                missing.append(name)
                continue
            c.reload()
            st = c.attrs["State"]
            health = (st.get("Health") or {}).get("Status")
            if not st.get("Running") or st.get("Restarting") or health not in (None, "healthy"):
                missing.append(name)
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(1.0)


def fresh_backup(plan: SandboxPlan, client: Any, cfg: ToolkitConfig, say: Callable[[str], None],
                 timeout: float) -> tuple[Any, float]:
    """Stop the real site, back it up into the sandbox, start it again when it was running: (record, seconds)."""
    tk = Toolkit(plan.real, log=lambda s: say(f"    {s}"))
    was_running = running_services(client, plan.real_project)
    started = time.monotonic()
    try:
        if was_running:
            tk.stop()
        rec = create_backup(plan.sandbox / WORK_DIR, plan.sources, app_version=cfg.version, step_id="rehearsal",
                            major=False)
        seconds = time.monotonic() - started
    finally:
        if was_running:
            tk.up()
    if was_running:
        late = wait_running(client, plan.real_project, was_running, timeout)
        if late:
            say(f"    warning: on the real site, {', '.join(late)} did not run again within {timeout:.0f} s: "
                "check it with bin/docker-compose ps")
    return rec, seconds


# --- the sandbox -------------------------------------------------------------------------------------------
@dataclass
class StepClock:
    """Wall seconds per plan step, from the step runner's ``[i/n]`` announcements (the same upgrade code, untouched)."""
    ids: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    current: str | None = None
    since: float = 0.0
    on_step: Callable[[int, int, str], None] = lambda i, n, text: None

    def see(self, line: str) -> None:
        m = STEP_LINE.match(line)
        if m is None:
            return
        self.stop()
        i = int(m.group(1))
        if 1 <= i <= len(self.ids):
            self.current, self.since = self.ids[i - 1], time.monotonic()
            self.on_step(i, len(self.ids), line[m.end():])

    def stop(self) -> None:
        if self.current is not None:
            self.seconds[self.current] = self.seconds.get(self.current, 0.0) + time.monotonic() - self.since
            self.current = None


def remove_sandbox(plan: SandboxPlan, client: Any, say: Callable[[str], None]) -> None:
    """``docker compose down`` the sandbox, remove whatever is left with its project label, delete its folder."""
    if (plan.sandbox / "bin").is_dir() and (plan.sandbox / "config" / "overleaf.rc").is_file():
        res = Toolkit(plan.sandbox, timeout=300).run(["docker-compose", "down", "-t", "10", "--remove-orphans"],
                                                    check=False)
        if res.code != 0:
            say("    the sandbox's bin/docker-compose down failed; removing its containers directly")
    if client is not None:
        label = {"label": f"{PROJECT_LABEL}={plan.project}"}
        for c in client.containers.list(all=True, filters=label):
            c.remove(force=True)
        for n in client.networks.list(filters=label):
            n.remove()
    shutil.rmtree(plan.sandbox, ignore_errors=False)


def sandbox_upgrade(plan: SandboxPlan, vb: VerifiedBundle, opts: RehearseOptions, clock: StepClock,
                    say: Callable[[str], None], upgrade: Callable[..., Any]) -> None:
    """The upgrade's own code on the sandbox: ``--yes``, secrets generated, the person's binary files check taken
    as done (a sandbox has no users); any other pause (an external database's admin) ends the rehearsal."""
    def tell(line: str) -> None:
        clock.see(line)
        say(line)

    resume = False
    while True:
        uopts = UpgradeOptions(yes=True, resume=resume, backup_dir=plan.sandbox / WORK_DIR / "backups",
                               health_timeout=opts.health_timeout, generate_secrets=True,
                               update_toolkit=opts.update_toolkit)
        try:
            upgrade(plan.sandbox, uopts, verify=lambda stream: vb, load=lambda _vb: None, say=tell,
                            ask=lambda question: True)
            clock.stop()
            return
        except PausedForCheck:
            clock.stop()
            journal = Journal.load(plan.sandbox)
            step = journal.next_step() if journal else None
            if step is None or not (step.get("kind") == "migration" and step.get("name") == "binary_files_migration"
                                    and journal.has_phase(step["id"], "awaiting_check")):
                raise
            say(f"    (rehearsal) {step['id']}: the real upgrade stops here for a person's check of binary files; "
                "the sandbox goes on")
            resume = True


def final_health(plan: SandboxPlan, vb: VerifiedBundle, client: Any, opts: RehearseOptions,
                 say: Callable[[str], None]) -> float:
    from importer.upgrade.steps.base import StepBase
    journal = Journal.load(plan.sandbox)
    if journal is None:
        raise ToolkitError("the sandbox's upgrade left no journal")
    ctx = Context(plan.sandbox, vb.manifest, UpgradeOptions(yes=True, health_timeout=opts.health_timeout), say,
                  lambda q: True, client)
    started = time.monotonic()
    StepBase(ctx, journal, Audit(plan.sandbox, vb.manifest.bundle_id)).health()
    return time.monotonic() - started


def step_outcomes(plan: SandboxPlan, steps: list[Any], clock: StepClock,
                  active: str | None = None) -> tuple[list[StepTiming], str | None]:
    """Each plan step's status (from the sandbox's journal) and time; the id of the step that failed, if any.
    ``active``: the step under way when the run stopped (failed, even if the journal had not marked it yet)."""
    journal = Journal.load(plan.sandbox) if (plan.sandbox / STATE_DIR).is_dir() else None
    out, failed = [], None
    for s in steps:
        status = journal.status(s.id) if journal is not None else "pending"
        status = {"running": "failed"}.get(status, status)
        if s.id == active and status in ("pending", "running"):
            status = "failed"
        if status in ("failed", "paused") and failed is None:
            failed = s.id
        out.append(StepTiming(s.id, s.kind, s.description, status, round(clock.seconds.get(s.id, 0.0), 3)))
    return out, failed


def rehearse(toolkit: Path, opts: RehearseOptions, *, upgrade: Callable[..., Any],
             verify: Callable[[bool], VerifiedBundle], load: Callable[[VerifiedBundle], Any], say: Callable[[str], None],
             on_step: Callable[[int, int, str], None] = lambda i, n, text: None) -> tuple[RehearsalRecord, Path]:
    """Verify and load the bundle like ``upgrade``, then rehearse its plan on a sandbox copy of ``toolkit`` with
    ``upgrade`` (:func:`importer.upgrade.upgrade_toolkit`: the same code path as a real upgrade). Returns the
    record and where it was saved; RehearsalFailed (exit 35) when the upgrade fails in the sandbox."""
    root = Path(toolkit).resolve()
    cfg = read_toolkit(root)
    real_journal = Journal.load(root)
    if real_journal is not None and not real_journal.finished:
        raise ToolkitError(f"an upgrade of this Toolkit is under way (journal {real_journal.path}): a rehearsal "
                           "copies a site at rest", "Finish it (--resume) or roll it back first.")
    vb = verify(True)
    m = vb.manifest
    steps = plan_steps(m.plan)
    when = stamp()
    plan = plan_sandbox(root, opts.sandbox, plan_backups=sum(1 for s in steps if s.kind == "backup"), when=when)
    client = eng.connect()
    with ToolkitLock(root):
        load(vb)
        # the real upgrade's own preflight, on the real site (reads only): what it would refuse, refuse now
        ctx = Context(root, m, UpgradeOptions(yes=True, generate_secrets=True), say, lambda q: False, client)
        ctx.code_update_pending = m.toolkit is not None and opts.update_toolkit
        pinned = pinned_ids(m, eng.engine_info(client).image_store)
        problems = preflight(ctx, m.plan, None,
                             lambda ref: (got := eng.image_id(client, ref)) is not None
                             and (ref not in pinned or got == pinned[ref]))
        if problems:
            raise PreflightError("preflight of the real site found problems; nothing was changed:\n  - "
                                 + "\n  - ".join(problems), "Fix them and rehearse again.")
        record = RehearsalRecord.new(m.bundle_id, m.plan["from"], m.plan["to"], sandbox=str(plan.sandbox))
        record.kept = opts.keep
        clock = StepClock([s.id for s in steps], on_step=on_step)
        phase = "the sandbox copy of the Toolkit code"
        made = False
        try:
            say(f"Sandbox {plan.sandbox} (compose project {plan.project}"
                + (f", port 127.0.0.1:{plan.port}" if plan.port else ", no published port") + ")")
            copy_code(plan)
            made = True
            phase = "the fresh backup of the real site"
            say("Fresh consistent backup of the real site (its services stop meanwhile)")
            rec, record.backup_seconds = fresh_backup(plan, client, cfg, say, opts.health_timeout)
            record.backup_seconds = round(record.backup_seconds, 3)
            record.backup_bytes = rec.bytes
            say(f"    backup {rec.id}: {rec.files} files, {human_size(rec.bytes)} in {record.backup_seconds:.1f} s; "
                "the real site runs again as before")
            phase = "filling the sandbox"
            fill_sandbox(plan, Path(rec.path))
            shutil.rmtree(rec.path)
            configure_sandbox(plan)
            phase = "the upgrade in the sandbox"
            sandbox_upgrade(plan, vb, opts, clock, say, upgrade)
            phase = "the final health check"
            record.health_seconds = round(final_health(plan, vb, client, opts, say), 3)
            record.ok = True
        except BaseException as exc:
            active = clock.current
            clock.stop()
            timings, failed = step_outcomes(plan, steps, clock, active)
            record.steps = timings
            where = f"step {failed}" if failed and phase == "the upgrade in the sandbox" else phase
            reason = getattr(exc, "message", None) or (
                "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}")
            reason = reason.removeprefix(f"{where}: ")   # the runner names the step already
            record.error = f"{where}: {reason}"
            record.finished = record.finished or _now()
            cleanup = _finish(plan, client, opts, made, say)
            path = record.save(root)
            if isinstance(exc, KeyboardInterrupt):
                say(f"Rehearsal interrupted; record {path}")
                raise
            real_note = ("the real site was started again: check it with bin/docker-compose ps"
                         if phase == "the fresh backup of the real site" else "the real site is as it was")
            sandbox_note = (f"the sandbox is kept at {plan.sandbox} (compose project {plan.project})" if opts.keep
                            and made else f"the sandbox was removed{cleanup}")
            raise RehearsalFailed(
                f"the rehearsal failed at {where}: {reason}\n({real_note}; {sandbox_note}; "
                f"record {path})",
                "Fix the cause (the same step would fail in the real upgrade), then rehearse again"
                + ("; --keep leaves the sandbox for a look." if not opts.keep else "."),
                details={"step": failed, "phase": where, "sandbox": str(plan.sandbox), "record": str(path),
                         "kept": bool(opts.keep and made)}) from None
        timings, _ = step_outcomes(plan, steps, clock)
        record.steps = timings
        record.finished = _now()
        left = _finish(plan, client, opts, made, say)
        if left:
            say(f"warning:{left}")
        return record, record.save(root)


def _now() -> str:
    return iso(utc_now())


def _finish(plan: SandboxPlan, client: Any, opts: RehearseOptions, made: bool, say: Callable[[str], None]) -> str:
    """Remove the sandbox unless ``keep``; '' when done, else a note on what is left (never raises)."""
    if opts.keep or not made:
        if not made and plan.sandbox.exists():
            shutil.rmtree(plan.sandbox, ignore_errors=True)   # a half-made copy of the code
        return ""
    try:
        remove_sandbox(plan, client, say)
        say(f"Sandbox {plan.sandbox} removed")
        return ""
    except Exception as exc:  # noqa: BLE001 - an engine API error or OSError: the record must still be written
        return f" (but removing it failed: {getattr(exc, 'message', None) or exc}; remove {plan.sandbox} by hand)"
