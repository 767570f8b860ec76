"""Preflight: every problem an upgrade would meet, found before anything changes (exit 31).

It reads the Toolkit (its config, its code's capabilities, the override file, data paths), the
engine (the images the remaining steps need, and the ones the host runs now) and, for Server Pro,
the projects' TeX Live images; facts that are no problem are said, not listed.

    problems = preflight(ctx, plan, journal, present=lambda ref: image_id(client, ref) is not None)
    gone = assumed_images(read_toolkit(ctx.toolkit), plan)   # what the host runs now, not in the bundle
"""
from __future__ import annotations

import os
import re
import subprocess
from typing import Callable

from manifests.errors import AirgapError, PreflightError, ToolkitError
from manifests.toolkit_config import ToolkitConfig, read_toolkit
from manifests.versions import AppVersion, MajorMinor, mongo_shell, version_major

from importer.upgrade.backup import tree_size
from importer.upgrade.journal import Journal
from importer.upgrade.toolkit import Capabilities, capabilities, compose_project, service_container
from importer.upgrade.base import (AVX_FROM, Context, RunStep, data_sources, default_backup_dir, expected_stack,
                           mongo_authenticated, mongo_enabled, not_covered, override_file, plan_steps,
                           redis_enabled)


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
            out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0:
            return " ".join(argv[:-1])
    return None


def override_problems(cfg: ToolkitConfig) -> list[str]:
    """What the override file does that the upgrade cannot work with; a file Compose would refuse (or that
    cannot be read safely) is one problem, said in words (:func:`importer.upgrade.base.parse_override`)."""
    try:
        data = override_file(cfg)
    except PreflightError as err:
        return [err.message]
    services = data.get("services") or {}
    out = []
    app = (services.get("sharelatex") or {}).get("image") if isinstance(services, dict) else None
    if app:
        out.append(f"config/docker-compose.override.yml sets the sharelatex image to {app[:200]}: while it does, writing "
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

def app_version_after(plan: dict, journal: Journal | None, start: str) -> str:
    """The app version config/version should hold, given which steps are done."""
    v = start
    suffix = "-with-texlive-full" if start.endswith("-with-texlive-full") else ""
    for s in plan_steps(plan):
        if s.kind == "app" and journal is not None and journal.status(s.id) == "done":
            v = f"{s.version}{suffix}"
    return v


# --- the checks --------------------------------------------------------------------------
def assumed_images(cfg: ToolkitConfig, plan: dict) -> list[str]:
    """The plan's ``assumed_present`` images (the bundle does not carry them: the host has them) that this
    Toolkit's config runs now: the upgrade (and a rollback) start them again. Others (an external MongoDB, an
    nginx the config does not name) are not needed here."""
    running = set(expected_stack(cfg).values())
    return [r for r in plan.get("assumed_present") or () if r in running]


def remaining_steps(plan: dict, journal: Journal | None) -> list[RunStep]:
    """The plan's typed steps the journal has not recorded as done (all of them for a new upgrade)."""
    return [s for s in plan_steps(plan) if journal is None or journal.status(s.id) != "done"]

def preflight(ctx: Context, plan: dict, journal: Journal | None, present: Callable[[str], bool]) -> list[str]:
    """Every problem found, in words an admin can act on (empty list = ready). Facts that are no problem
    (the Toolkit's capabilities, what backups do not cover) are said with ``ctx.say``."""
    problems: list[str] = []
    try:
        rest = remaining_steps(plan, journal)
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
    missing = sorted({i for s in rest for i in s.images if not present(i)})
    if missing:
        problems.append("images the remaining steps need are not in the engine: " + ", ".join(missing)
                        + " (load the bundle: overleaf-import load BUNDLE_DIR)")
    gone = [r for r in assumed_images(cfg, plan) if not present(r)] if journal is None else []
    if gone:
        problems.append("images the host runs now, which the plan assumes are here (the bundle does not carry "
                        "them), are not in the engine: " + ", ".join(gone) + " (the upgrade and a rollback start "
                        "them again, and an offline host cannot pull them: `docker image ls`, load them from "
                        "where they came from, or build a bundle that carries them)")
    if compose_answers() is None:
        problems.append("Docker Compose does not answer (neither `docker compose` nor `docker-compose`)")
    mongo_steps = [s for s in rest if s.kind == "mongo"]
    if mongo_enabled(cfg) and any(MajorMinor.parse(s.version) >= AVX_FROM for s in mongo_steps) \
            and not cpu_has_avx():
        problems.append("a step brings MongoDB 5.0 or later, which needs a CPU with AVX, and this CPU has none "
                        "(on a VM, give it a CPU type that passes AVX through, e.g. 'host')")
    problems += capability_problems(ctx, cfg, caps, plan, rest)
    problems += config_problems(ctx, cfg, plan, rest, journal)
    problems += override_problems(cfg)
    problems += data_path_problems(cfg)
    problems += texlive_problems(ctx, cfg, plan)
    for item in not_covered(cfg):
        ctx.say(f"preflight: backups will not cover: {item}")
    if not mongo_enabled(cfg) and mongo_authenticated(cfg) and any(
            AppVersion.parse(s.version).release >= AppVersion(5, 5, 1) for s in rest if s.kind == "app"):
        ctx.say("preflight: Overleaf 5.5.1+ reads MongoDB's feature compatibility version: the MONGO_URL user needs "
                "the clusterParameterReader role (or set ALLOW_MONGO_ADMIN_CHECK_FAILURES=true)")
    if redis_enabled(cfg) and not cfg.rc.get("REDIS_AOF_PERSISTENCE", "").strip() and any(
            AppVersion.parse(s.version).release >= AppVersion(5, 1, 0) for s in rest if s.kind == "app"):
        ctx.say("preflight: REDIS_AOF_PERSISTENCE is not set in config/overleaf.rc (the Toolkit warns): Redis keeps "
                "only snapshots, so queued history updates can be lost on a restart; the upgrade flushes the history "
                "queues before the binary files migration. Consider REDIS_AOF_PERSISTENCE=true after the upgrade.")
    if any(s.kind == "backup" for s in rest):
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

def capability_problems(ctx: Context, cfg: ToolkitConfig, caps: Capabilities, plan: dict, rest: list[RunStep]) -> list[str]:
    """What an old Toolkit checkout cannot do for this plan (unless the bundle's Toolkit code comes first)."""
    out: list[str] = []
    if ctx.code_update_pending:  # the bundle's Toolkit code goes in before the first step
        return out
    carries = ctx.manifest is not None and getattr(ctx.manifest, "toolkit", None)
    later = " (or let the upgrade move it to the bundle's commit: --update-toolkit-code)" if carries else ""
    if mongo_enabled(cfg) and not caps.mongosh:
        six = [s.version for s in rest if s.kind == "mongo" and MajorMinor.parse(s.version).major >= 6]
        if six or (cfg.mongo_version and MajorMinor.parse(cfg.mongo_version).major >= 6):
            out.append("this Toolkit's code always runs the legacy `mongo` shell, which MongoDB 6.0+ images lack: "
                       "its health checks and bin/mongo would fail. Update the Toolkit code first" + later)
    if "SHARELATEX_" in (cfg.root / "config" / "overleaf.rc").read_text("utf-8", errors="replace") \
            and caps.overleaf_rc_names is False and any(AppVersion.parse(s.version).major >= 5
                                                        for s in rest if s.kind == "app"):
        out.append("this Toolkit's code predates the OVERLEAF_ names in config/overleaf.rc (no bin/rename-rc-vars), "
                   "so it cannot run Overleaf 5+ with this config. Update the Toolkit code first" + later)
    if mongo_enabled(cfg) and not caps.mongo_version and "MONGO_VERSION" in cfg.rc and cfg.mongo_legacy_form is False:
        out.append("config/overleaf.rc uses MONGO_VERSION, which this Toolkit's code does not read")
    return out

def rename_started(plan: dict, journal: Journal | None) -> bool:
    """Whether this upgrade's SHARELATEX_ -> OVERLEAF_ rename has run (or was interrupted while it ran): from
    then on OVERLEAF_ names below 5.0 are the upgrade's own doing, and the next app step moves to 5.x."""
    return journal is not None and any(
        s.kind == "config" and s.name == "rename_sharelatex_vars" and journal.status(s.id) != "pending"
        for s in plan_steps(plan))


def config_problems(ctx: Context, cfg: ToolkitConfig, plan: dict, rest: list[RunStep],
                    journal: Journal | None = None) -> list[str]:
    """Settings the Toolkit would refuse, and required secrets (asked for only where adding one is safe)."""
    out = []
    env_text = (cfg.root / "config" / "variables.env").read_text("utf-8", errors="replace") \
        if (cfg.root / "config" / "variables.env").is_file() else ""
    major = version_major(cfg.version)
    if major < 5 and "OVERLEAF_" in env_text and not rename_started(plan, journal):
        out.append(f"config/variables.env holds OVERLEAF_ text while config/version is {cfg.version}: below 5.0 every "
                   "bin/ command refuses it (comments count too). Remove it; the upgrade adds what 5.x needs")
    for s in rest:
        if s.kind == "config" and s.variable and not cfg.env.get(s.variable, "").strip() \
                and not ctx.opts.generate_secrets:
            if major < 5:  # adding it now would break every bin/ command
                ctx.say(f"preflight: {s.variable} is needed from {plan['to']}; the upgrade pauses at step "
                        f"{s.id} (after the move to 5.x) for you to add it (make one with: {s.make}), "
                        "or pass --generate-secrets to have one made and kept. Do not add it now: below 5.0 the "
                        "Toolkit refuses OVERLEAF_ variables")
            else:
                out.append(f"{s.variable} is not set in config/variables.env; add it (make one with: "
                           f"{s.make}) or pass --generate-secrets to have one made and kept")
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
        c = service_container(ctx.client, compose_project(cfg.rc), "mongo")
        if c is None or not c.attrs["State"].get("Running"):
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
