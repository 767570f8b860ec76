"""The upgrade's shared vocabulary: its errors, options and context, the plan's steps typed and checked,
what each step does (the dry-run and audit text), and what a Toolkit's config means for an upgrade.

:mod:`importer.upgrade.preflight`, :mod:`importer.upgrade.runner` and :mod:`importer.upgrade.rollback` build on this module
and never on one another's internals; :mod:`importer.upgrade` is the public face of all four.

    steps = plan_steps(plan)                   # validate_plan, then typed RunSteps with their ids
    [describe(s) for s in steps if s.kind == "mongo"]
    data_sources(read_toolkit(Path("/srv/overleaf-toolkit")))   # {"config": ..., "overleaf": ..., "mongo": ...}
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from manifests.bundle import BundleManifest
from manifests.catalog import Catalog, load_catalog
from manifests.errors import ManifestFormatError, PlanError, PreflightError
from manifests.safeio import read_regular
from manifests.planner import Step, UpgradePlan
from manifests.toolkit_config import ToolkitConfig
from manifests.versions import MajorMinor, mongo_shell, version_major

from importer.upgrade.grammar import SERIES_RE, VERSION_RE, check_step_id

AVX_FROM = MajorMinor(5, 0)


@dataclass
class UpgradeOptions:
    yes: bool = False
    dry_run: bool = False
    resume: bool = False
    backup_dir: Path | None = None
    health_timeout: float = 300.0
    generate_secrets: bool = False
    update_toolkit: bool | None = None  # None: ask (or no when not interactive)


@dataclass
class Context:
    toolkit: Path
    manifest: BundleManifest | None
    opts: UpgradeOptions
    say: Callable[[str], None]
    ask: Callable[[str], bool]
    client: Any = None  # docker.DockerClient
    notes: list[str] = field(default_factory=list)
    code_update_pending: bool = False  # the bundle's Toolkit code is put in place before the first step


@dataclass(frozen=True)
class RunStep:
    """One step of a signed plan, typed: the planner's :class:`~manifests.planner.Step` with the id the plan
    (and so the journal) knows it by. ``details`` holds the kind's extra fields (``from_version``, ``major``,
    ``variable``, ``make`` ...)."""

    id: str
    kind: str
    description: str
    images: tuple[str, ...] = ()
    version: str | None = None
    name: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, step_id: str, step: Step) -> "RunStep":
        return cls(step_id, step.kind, step.description, tuple(step.images), step.version, step.name,
                   dict(step.details))

    @property
    def from_version(self) -> str:
        return str(self.details.get("from_version", ""))

    @property
    def major(self) -> bool:
        return bool(self.details.get("major"))

    @property
    def variable(self) -> str | None:
        v = self.details.get("variable")
        return str(v) if v is not None else None

    @property
    def make(self) -> str:
        return str(self.details.get("make", ""))


def plan_steps(plan: dict) -> list[RunStep]:
    """The plan's steps, typed, after :func:`validate_plan` (ManifestFormatError for a malformed plan)."""
    validate_plan(plan)
    try:
        typed = UpgradePlan.from_dict(plan)
    except PlanError as err:
        raise ManifestFormatError(err.message, err.hint) from None
    return [RunStep.of(s["id"], step) for s, step in zip(plan["steps"], typed.steps)]


def step_of(step: RunStep | dict) -> RunStep:
    """A typed step from a plan step's JSON (for callers that hold the dict)."""
    if isinstance(step, RunStep):
        return step
    core = {"id", "kind", "description", "images", "version", "name"}
    return RunStep(str(step["id"]), str(step["kind"]), str(step.get("description", "")),
                   tuple(step.get("images") or ()), step.get("version"), step.get("name"),
                   {k: v for k, v in step.items() if k not in core})


_CATALOG: Catalog | None = None


def own_catalog() -> Catalog:
    """The importer's own release catalog (no local overlay): the only source of commands run in containers."""
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = load_catalog(overlay=False)
    return _CATALOG

def fcv_command(series: str) -> str:
    """The FCV command for ``series``, from the importer's own catalog (never from the overlay)."""
    return own_catalog().fcv_command(series)

def validate_plan(plan: dict) -> None:
    """The plan's values that reach paths, config files or commands, checked before anything runs."""
    try:
        steps = plan["steps"]
        ids = [check_step_id(s["id"]) for s in steps]
        if len(set(ids)) != len(ids):
            raise ManifestFormatError("the plan repeats a step id")
        for name in ("from", "to"):
            if not VERSION_RE.match(str(plan[name])):
                raise ManifestFormatError(f"the plan's {name!r} version {plan[name]!r} is malformed")
        known = {m.name for m in own_catalog().migrations}
        for s in steps:
            kind = s["kind"]
            if kind == "app" and not VERSION_RE.match(str(s["version"])):
                raise ManifestFormatError(f"step {s['id']}: app version {s['version']!r} is malformed")
            if kind in ("mongo", "redis"):
                for key in ("version", "from_version"):
                    if not SERIES_RE.match(str(s[key])):
                        raise ManifestFormatError(f"step {s['id']}: {key} {s[key]!r} is not a MAJOR.MINOR series")
            if kind == "migration" and s["name"] not in known:
                raise ManifestFormatError(f"step {s['id']}: migration {s['name']!r} is not in this importer's "
                                          "catalog", "A bundle from a newer bundler carries that newer importer: "
                                          "install it (README-OFFLINE).")
            if kind == "config" and s["name"] != "rename_sharelatex_vars":
                secret_names = {x.name for r in own_catalog().rules for x in r.get("secrets", ())}
                if s.get("variable") not in secret_names:
                    raise ManifestFormatError(f"step {s['id']}: variable {s.get('variable')!r} is not a secret "
                                              "this importer knows")
    except (KeyError, TypeError) as exc:
        raise ManifestFormatError(f"the plan is malformed: missing {exc}") from None


# --- what the Toolkit's config says -----------------------------------------------------
def mongo_enabled(cfg: ToolkitConfig) -> bool:
    return cfg.rc.get("MONGO_ENABLED", "true").strip().lower() != "false"

def redis_enabled(cfg: ToolkitConfig) -> bool:
    return cfg.rc.get("REDIS_ENABLED", "true").strip().lower() != "false"

def git_bridge_on(cfg: ToolkitConfig) -> bool:
    """The Toolkit runs git-bridge only for Server Pro 4.0+ with GIT_BRIDGE_ENABLED=true."""
    return cfg.git_bridge and version_major(cfg.version) >= 4

def app_image_ref(cfg: ToolkitConfig) -> str:
    """The app image ``bin/up`` starts for ``config/version`` (``OVERLEAF_IMAGE_NAME`` when set)."""
    name = cfg.app_image or ("quay.io/sharelatex/sharelatex-pro" if cfg.edition == "pro" else "sharelatex/sharelatex")
    return f"{name}:{cfg.version}"


def git_bridge_image_ref(cfg: ToolkitConfig) -> str:
    """The git-bridge image ``bin/up`` starts: ``GIT_BRIDGE_IMAGE`` (a name, no tag) or Overleaf's, tagged like the
    app without ``-with-texlive-full``, as the Toolkit's ``read_config`` makes it."""
    return f"{cfg.git_bridge_image or 'quay.io/sharelatex/git-bridge'}:{cfg.version.removesuffix('-with-texlive-full')}"


def expected_stack(cfg: ToolkitConfig) -> dict[str, str | None]:
    """{container: the image the Toolkit's config makes it run} (None: any image)."""
    out: dict[str, str | None] = {"sharelatex": app_image_ref(cfg)}
    if mongo_enabled(cfg):
        mongo = cfg.rc.get("MONGO_IMAGE", "mongo")
        if not cfg.mongo_legacy_form and cfg.rc.get("MONGO_VERSION"):
            mongo = f"{cfg.mongo_image}:{cfg.rc['MONGO_VERSION']}"
        out["mongo"] = mongo
    if redis_enabled(cfg):
        out["redis"] = cfg.rc.get("REDIS_IMAGE")
    if git_bridge_on(cfg):
        out["git-bridge"] = git_bridge_image_ref(cfg)
    if cfg.tls_proxy:
        out["nginx"] = cfg.nginx_image
    return out


def data_sources(cfg: ToolkitConfig) -> dict[str, Path]:
    """Folders a backup copies: config/ and each data path the Toolkit uses, resolved as the Toolkit resolves
    them (``realpath``: a data path may be a symlink or a mount point). External databases have none."""
    src = {"config": (cfg.root / "config").resolve()}
    skip = set()
    if not mongo_enabled(cfg):
        skip.add("MONGO_DATA_PATH")
    if not redis_enabled(cfg):
        skip.add("REDIS_DATA_PATH")
    for key, path in cfg.data_paths.items():
        if key in skip:
            continue
        src[key.removesuffix("_DATA_PATH").lower().replace("_", "-")] = Path(os.path.realpath(path))
    return src

def not_covered(cfg: ToolkitConfig) -> list[str]:
    """What a backup of this Toolkit leaves out: the admin must back those up themselves."""
    out = []
    if not mongo_enabled(cfg):
        out.append(f"MongoDB is external (MONGO_ENABLED=false, {mongo_host(cfg)}): back it up yourself "
                   "(mongodump, or a snapshot of its server) before this upgrade")
    if not redis_enabled(cfg):
        out.append("Redis is external (REDIS_ENABLED=false): back it up yourself (its RDB/AOF files) before this "
                   "upgrade")
    return out

def mongo_url(cfg: ToolkitConfig) -> str:
    return (cfg.env.get("OVERLEAF_MONGO_URL") or cfg.env.get("SHARELATEX_MONGO_URL") or cfg.rc.get("MONGO_URL")
            or "mongodb://mongo/sharelatex")

def mongo_host(cfg: ToolkitConfig) -> str:
    """The MongoDB server(s) of MONGO_URL, without credentials (for messages)."""
    url = mongo_url(cfg)
    rest = url.split("://", 1)[-1]
    rest = rest.rsplit("@", 1)[-1]
    return rest.split("/", 1)[0].split("?", 1)[0]

def mongo_authenticated(cfg: ToolkitConfig) -> bool:
    return "@" in mongo_url(cfg).split("://", 1)[-1].split("/", 1)[0]

OVERRIDE_NAME = "config/docker-compose.override.yml"
OVERRIDE_CAP = 1024 * 1024      # a Compose override is a few KiB
OVERRIDE_NODES = 100_000        # YAML nodes once every alias and merge key is expanded (a "billion laughs" is more)
_OVERRIDE_HINT = "Fix or remove the file; bin/docker-compose would fail on it too."


def _expanded_nodes(root: yaml.Node, cap: int) -> int:
    """How many nodes the YAML graph ``root`` has with every alias expanded, counted without expanding it (each
    node once, memoised); stops past ``cap``. ValueError for a node that contains itself."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
                list(node.value) if isinstance(node, yaml.SequenceNode) else []
            sizes[key] = min(cap + 1, 1 + sum(sizes[id(k)] for k in kids))
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ValueError("it refers to itself through an alias")
        on_path.add(key)
        stack.append((node, True))
        if isinstance(node, yaml.MappingNode):
            stack.extend((n, False) for pair in node.value for n in pair if id(n) not in sizes)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((n, False) for n in node.value if id(n) not in sizes)
    return sizes[id(root)]


def parse_override(data: bytes) -> dict:
    """The parsed override file (``yaml.SafeLoader`` only): PreflightError (exit 31) for anything Compose would not
    take as a Compose file (not UTF-8, not YAML, not a mapping, ``services`` not a mapping of mappings, an
    ``image`` that is not a string, ``volumes`` that are not a list of strings or mappings) or that expands past
    :data:`OVERRIDE_NODES` nodes through aliases, or refers to itself."""
    def bad(why: str) -> PreflightError:
        return PreflightError(f"{OVERRIDE_NAME} {why}", _OVERRIDE_HINT)

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"is not UTF-8 text (byte {exc.start})") from None
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise bad(f"is not valid YAML: {str(exc)[:500]}") from None
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_nodes(node, OVERRIDE_NODES) > OVERRIDE_NODES:
            raise bad(f"expands to more than {OVERRIDE_NODES} YAML nodes through its aliases: refused")
        doc = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise bad(f"is not valid YAML: {str(exc)[:500]}") from None
    except RecursionError:
        raise bad("is nested too deeply to be read") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise bad(f"cannot be read: {str(exc)[:200]}") from None
    finally:
        loader.dispose()
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise bad(f"is a YAML {type(doc).__name__}, not a mapping (Compose needs one: `services:` ...)")
    services = doc.get("services")
    if services is None:
        return doc
    if not isinstance(services, dict):
        raise bad(f"has `services:` that is a {type(services).__name__}, not a mapping of service names")
    for name, svc in services.items():
        if svc is None:
            continue
        if not isinstance(svc, dict):
            raise bad(f"has service {str(name)[:80]!r} that is a {type(svc).__name__}, not a mapping")
        if "image" in svc and not isinstance(svc["image"], str):
            raise bad(f"sets the image of service {str(name)[:80]!r} to a {type(svc['image']).__name__}, "
                      "not a string")
        vols = svc.get("volumes")
        if vols is None:
            continue
        if not isinstance(vols, list):
            raise bad(f"has `volumes:` of service {str(name)[:80]!r} that is a {type(vols).__name__}, not a list")
        for v in vols:
            ok = isinstance(v, str) or (isinstance(v, dict) and all(
                isinstance(v.get(k, ""), str) for k in ("source", "target")))
            if not ok:
                raise bad(f"has a volume of service {str(name)[:80]!r} that is neither a string nor a mapping with "
                          "string source/target")
    return doc


def override_file(cfg: ToolkitConfig) -> dict:
    """``config/docker-compose.override.yml`` (which bin/docker-compose adds when present), parsed and checked by
    :func:`parse_override`; {} if none. A FIFO, a device or a folder in its place, or a file over 1 MiB:
    PreflightError (exit 31), read through :func:`manifests.safeio.read_regular` (never blocks)."""
    path = cfg.root / "config" / "docker-compose.override.yml"
    if not os.path.lexists(path):
        return {}
    try:
        data = read_regular(path, OVERRIDE_CAP, OVERRIDE_NAME, PreflightError, follow_symlinks=True,
                            hint=_OVERRIDE_HINT)
    except FileNotFoundError:  # a dangling link: Compose skips it too
        return {}
    return parse_override(data)

def default_backup_dir(toolkit: Path) -> Path:
    return Path(toolkit).resolve().parent / f"{Path(toolkit).resolve().name}-backups"

def series_of(version: str) -> str:
    m = re.match(r"^(\d+)\.(\d+)", version.strip())
    return f"{m.group(1)}.{m.group(2)}" if m else ""


# --- the dry-run / audit description of each step -----------------------------------
DOC_RECOVERY_LOG = "/var/lib/overleaf/data/history/doc-version-recovery.log"


def describe(step: dict, suffix: str = "") -> list[str]:
    """What a step does, in the commands it runs (the importer's own, from its catalog)."""
    step = step_of(step)
    k = step.kind
    if k == "backup":
        return ["bin/stop", "copy config/ and every *_DATA_PATH to the backup folder, with SHA256SUMS "
                "(an external MongoDB/Redis is not covered)"]
    if k == "app":
        return ["bin/stop (not again when resumed after config/version was written)",
                "cp config/version config/__old-version", f"write config/version = {step.version}{suffix}",
                "bin/up -d", "health check: containers running/healthy at the expected images, app answers /status"]
    if k == "mongo":
        frm, to = step.from_version, step.version
        return ["bin/docker-compose up -d mongo (external MongoDB: check its version and feature compatibility "
                "from the app container, pause for its admin when a hop is needed)",
                "wait until MongoDB answers and is the replica set's primary",
                f"bin/docker-compose exec -T mongo {mongo_shell(frm)} --quiet --eval '{fcv_command(frm)}'",
                "bin/stop", f"set MONGO_VERSION={to} in config/overleaf.rc (MONGO_IMAGE=<name> + MONGO_VERSION "
                "when the Toolkit reads the split form)",
                "bin/docker-compose up -d mongo",
                f"bin/docker-compose exec -T mongo {mongo_shell(to)} --quiet --eval '{fcv_command(to)}'"]
    if k == "redis":
        return ["bin/stop redis", f"set REDIS_IMAGE=<name>:{step.version} in config/overleaf.rc",
                "bin/docker-compose up -d redis", "bin/docker-compose exec -T redis redis-cli ping"]
    if k == "migration":
        mig = own_catalog().migration(step.name)
        run = "docker exec -d sharelatex /bin/bash -c"
        if step.name == "binary_files_migration":
            return ["bin/up -d", f"{run} \"{mig.extra['report_command']}\"",
                    f"{run} \"{mig.extra['flush_command']}\" until it reports \"project_ids\":0 (failedProjects 0)",
                    "set OVERLEAF_FILESTORE_MIGRATION_LEVEL=1 in config/variables.env", "bin/up -d", "health check",
                    f"STOP for a person: {mig.manual_check}",
                    f"{run} \"{mig.command}\" (success: {mig.success_text!r}; no time limit, output shown)",
                    "bin/stop sharelatex", "move data/user_files to data/old_user_files",
                    "set OVERLEAF_FILESTORE_MIGRATION_LEVEL=2", "bin/up -d", "health check"]
        if step.name == "doc_version_recovery":
            return ["bin/up -d (OVERLEAF_SKIP_RETRACTION_CHECK set, as bin/upgrade does)", "health check",
                    "docker exec sharelatex sv stop real-time-overleaf; wait for `sv status` down:",
                    "bin/stop git-bridge (if it runs)",
                    f"{run} \"{mig.command}\" (success: failureCount 0; only when 5.0.2 never ran)",
                    "docker exec redis redis-cli --scan --pattern 'DocVersion:*' prints nothing",
                    f"after the next app step: follow {DOC_RECOVERY_LOG} until Done."]
        ok = f" (success: exit 0 and {mig.success_text!r})" if mig.success_text else " (success: exit 0)"
        return ["bin/up -d", "health check", f"{run} \"{mig.command}\"{ok}; no time limit, output shown"]
    if k == "config":
        if step.name == "rename_sharelatex_vars":
            return ["bin/stop", "copy config/variables.env to config/__old-variables.env.<time>, rename SHARELATEX_ -> "
                    "OVERLEAF_, drop every TEXMFVAR=/var/lib/sharelatex/tmp/texmf-var line (comments too)",
                    "copy config/overleaf.rc to config/__old-overleaf.rc.<time>, rename SHARELATEX_ -> OVERLEAF_"]
        return [f"check {step.variable} in config/variables.env (or add one made like: {step.make}; "
                "without --generate-secrets the upgrade pauses here for you to add it)"]
    return []
