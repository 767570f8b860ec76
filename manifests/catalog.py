"""The release catalog: every Overleaf release we know, its companions, gates and migrations.

The data lives in ``manifests/catalog/releases.yaml`` (sourced from
docs/overleaf-facts.md). ``load_catalog()`` reads and validates it, merges the local
overlay written by ``overleaf-bundle catalog refresh`` (newly published patch releases
of known majors), and returns an immutable :class:`Catalog`. A bad entry raises
:class:`CatalogError` naming the entry.

    cat = load_catalog()
    cat.latest_in_major(5, "ce")        # AppVersion 5.5.8
    cat.requirements(AppVersion.parse("6.2.2")).mongo_required   # MajorMinor 8.0
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import CatalogError, PlanError
from .versions import AppVersion, MajorMinor

EDITIONS = ("ce", "pro")
STATUSES = ("published", "unpublished", "retracted", "unconfirmed")
OVERLAY_ENV = "OVERLEAF_AIRGAP_CATALOG_OVERLAY"
_REQUIREMENT_FIELDS = {
    "mongo_required": "series",
    "mongo_recommended": "series",
    "mongo_fcv_min": "series",
    "redis_required": "series",
    "nginx_default": "str",
    "git_bridge": "bool",
    "replica_set": "bool",
    "texlive_defaults": "list",
    "secrets": "secrets",
}


@dataclass(frozen=True)
class Release:
    version: AppVersion
    status: str = "published"
    editions: tuple[str, ...] = EDITIONS
    date: str | None = None
    reason: str | None = None
    fixed_in: AppVersion | None = None
    source: str = ""
    from_overlay: bool = False

    def usable(self, edition: str) -> bool:
        """A release one may upgrade *to* (published or unconfirmed, in this edition)."""
        return self.status in ("published", "unconfirmed") and edition in self.editions


@dataclass(frozen=True)
class Secret:
    name: str
    make: str
    why: str


@dataclass(frozen=True)
class Requirements:
    """What one app version needs around it (resolved from the ``requirements`` rules)."""

    mongo_required: MajorMinor
    mongo_recommended: MajorMinor
    mongo_fcv_min: MajorMinor | None
    redis_required: MajorMinor
    nginx_default: str
    git_bridge: bool
    replica_set: bool
    texlive_defaults: tuple[str, ...]
    secrets: tuple[Secret, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Migration:
    name: str
    title: str
    run_on_min: AppVersion
    command: str
    success_text: str
    source: str
    leave_major: int | None = None
    applies_from: tuple[AppVersion, ...] = ()
    gate: str = ""
    manual_check: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Catalog:
    releases: tuple[Release, ...]
    rules: tuple[dict[str, Any], ...]
    migrations: tuple[Migration, ...]
    images: dict[str, str]
    mongo_series: tuple[MajorMinor, ...]
    redis_series: tuple[MajorMinor, ...]
    mongo_fcv_confirm_from: MajorMinor
    mongo_avx_from: MajorMinor
    sources: dict[str, str]

    # --- look-ups ---------------------------------------------------------------------
    def fcv_command(self, series: MajorMinor | str) -> str:
        """The shell command that sets MongoDB's feature compatibility version to ``series``
        (``confirm: true`` from :attr:`mongo_fcv_confirm_from` on, as MongoDB 7.0 requires)."""
        mm = series if isinstance(series, MajorMinor) else MajorMinor.parse(series)
        confirm = ", confirm: true" if mm >= self.mongo_fcv_confirm_from else ""
        return f'db.adminCommand({{ setFeatureCompatibilityVersion: "{mm}"{confirm} }})'

    def find(self, version: AppVersion) -> Release | None:
        key = version.release
        for rel in self.releases:
            if rel.version == key:
                return rel
        return None

    def majors(self) -> list[int]:
        return sorted({r.version.major for r in self.releases})

    def usable(self, edition: str, *, allow_rc: bool = False) -> list[Release]:
        return [r for r in self.releases if r.usable(edition) and (allow_rc or not r.version.is_rc)]

    def latest_in_major(self, major: int, edition: str) -> AppVersion | None:
        """Newest published release of a major (unconfirmed releases never count as 'latest')."""
        cands = [r.version for r in self.releases
                 if r.version.major == major and r.status == "published"
                 and edition in r.editions and not r.version.is_rc]
        return max(cands) if cands else None

    def latest(self, edition: str) -> AppVersion:
        return max(r.version for r in self.releases
                   if r.status == "published" and edition in r.editions and not r.version.is_rc)

    def requirements(self, version: AppVersion) -> Requirements:
        vals: dict[str, Any] = {}
        srcs: list[str] = []
        for rule in self.rules:
            if rule["since"] <= version.release:
                vals.update({k: v for k, v in rule.items() if k in _REQUIREMENT_FIELDS})
                srcs.append(rule["source"])
        return Requirements(
            mongo_required=vals["mongo_required"],
            mongo_recommended=vals.get("mongo_recommended", vals["mongo_required"]),
            mongo_fcv_min=vals.get("mongo_fcv_min"),
            redis_required=vals["redis_required"],
            nginx_default=vals["nginx_default"],
            git_bridge=vals.get("git_bridge", False),
            replica_set=vals.get("replica_set", False),
            texlive_defaults=tuple(vals.get("texlive_defaults", ())),
            secrets=tuple(vals.get("secrets", ())),
            sources=tuple(srcs),
        )

    def migration(self, name: str) -> Migration:
        for m in self.migrations:
            if m.name == name:
                return m
        raise CatalogError(f"catalog has no migration named {name!r}")

    def next_mongo(self, current: MajorMinor) -> MajorMinor | None:
        """The next stable MongoDB series after ``current`` (one major at a time)."""
        later = [s for s in self.mongo_series if s > current.series]
        return later[0] if later else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "releases": [
                {k: v for k, v in {
                    "version": str(r.version), "status": r.status, "editions": list(r.editions),
                    "date": r.date, "reason": r.reason,
                    "fixed_in": str(r.fixed_in) if r.fixed_in else None,
                    "source": r.source, "overlay": r.from_overlay or None,
                }.items() if v is not None}
                for r in self.releases
            ],
            "migrations": [m.name for m in self.migrations],
            "mongo_series": [str(s) for s in self.mongo_series],
            "redis_series": [str(s) for s in self.redis_series],
        }


# --- loading and validation ------------------------------------------------------------
def default_overlay_path() -> Path:
    env = os.environ.get(OVERLAY_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "overleaf-airgap" / "catalog-overlay.yaml"


def _safe_yaml(yaml: Any, text: str) -> Any:
    """``yaml.safe_load`` through libyaml when PyYAML has it (5x faster: the catalog is read by every verify)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_catalog(path: Path | None = None, overlay: Path | None | bool = None) -> Catalog:
    """Load and validate the catalog; ``overlay=False`` ignores the local overlay."""
    import yaml  # here, not at the top: start-up time of the commands that need no YAML

    if path is None:
        from importlib import resources  # here: importlib.resources (and zipfile) is start-up time too

        text = resources.files("manifests").joinpath("catalog/releases.yaml").read_text("utf-8")
        where = "manifests/catalog/releases.yaml"
    else:
        text, where = Path(path).read_text("utf-8"), str(path)
    try:
        data = _safe_yaml(yaml, text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{where}: not valid YAML: {exc}") from exc
    cat = parse_catalog(data, where)
    if overlay is not False:
        opath = default_overlay_path() if overlay in (None, True) else Path(overlay)
        if opath.exists():
            cat = apply_overlay(cat, load_overlay(opath))
    return cat


def _req(entry: dict, key: str, where: str) -> Any:
    if key not in entry or entry[key] in (None, ""):
        raise CatalogError(f"{where}: missing required field '{key}'")
    return entry[key]


def _version(value: Any, where: str) -> AppVersion:
    try:
        return AppVersion.parse(str(value))
    except PlanError as exc:
        raise CatalogError(f"{where}: {exc.message}") from None


def _series(value: Any, where: str) -> MajorMinor:
    try:
        return MajorMinor.parse(str(value))
    except PlanError as exc:
        raise CatalogError(f"{where}: {exc.message}") from None


def _parse_release(entry: Any, where: str, *, overlay: bool = False) -> Release:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: a release must be a mapping, got {entry!r}")
    version = _version(_req(entry, "version", where), where)
    where = f"{where} (version {version})"
    unknown = set(entry) - {"version", "status", "editions", "date", "reason", "fixed_in", "source"}
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {sorted(unknown)}")
    status = entry.get("status", "published")
    if status not in STATUSES:
        raise CatalogError(f"{where}: status must be one of {STATUSES}, not {status!r}")
    editions = tuple(entry.get("editions", EDITIONS))
    if not editions or any(e not in EDITIONS for e in editions):
        raise CatalogError(f"{where}: editions must be a non-empty subset of {EDITIONS}")
    source = _req(entry, "source", where)
    fixed = _version(entry["fixed_in"], where) if entry.get("fixed_in") else None
    if status == "retracted" and (fixed is None or not entry.get("reason")):
        raise CatalogError(f"{where}: a retracted release needs 'reason' and 'fixed_in'")
    if fixed is not None and fixed <= version:
        raise CatalogError(f"{where}: fixed_in {fixed} must be newer than the release")
    date = entry.get("date")
    return Release(version, status, editions, str(date) if date else None,
                   entry.get("reason"), fixed, str(source), overlay)


def _parse_rule(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: a requirement rule must be a mapping")
    since = _version(_req(entry, "since", where), where)
    where = f"{where} (since {since})"
    rule: dict[str, Any] = {"since": since, "source": str(_req(entry, "source", where))}
    for key, value in entry.items():
        if key in ("since", "source"):
            continue
        kind = _REQUIREMENT_FIELDS.get(key)
        if kind is None:
            raise CatalogError(f"{where}: unknown field '{key}'")
        if kind == "series":
            rule[key] = _series(value, f"{where} {key}")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise CatalogError(f"{where}: {key} must be true or false")
            rule[key] = value
        elif kind == "str":
            rule[key] = str(value)
        elif kind == "list":
            if not isinstance(value, list):
                raise CatalogError(f"{where}: {key} must be a list")
            rule[key] = tuple(str(v) for v in value)
        elif kind == "secrets":
            if not isinstance(value, list):
                raise CatalogError(f"{where}: secrets must be a list")
            rule[key] = tuple(Secret(str(_req(s, "name", where)), str(_req(s, "make", where)),
                                     str(_req(s, "why", where))) for s in value)
    return rule


def _parse_migration(entry: Any, where: str) -> Migration:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: a migration must be a mapping")
    name = str(_req(entry, "name", where))
    where = f"{where} (migration {name})"
    known = {"name", "title", "run_on_min", "command", "success_text", "source", "leave_major",
             "applies_from", "gate", "manual_check", "report_command", "flush_command"}
    unknown = set(entry) - known
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {sorted(unknown)}")
    if "success_text" not in entry:
        raise CatalogError(f"{where}: missing required field 'success_text' (may be empty)")
    leave = entry.get("leave_major")
    if leave is not None and not isinstance(leave, int):
        raise CatalogError(f"{where}: leave_major must be an integer")
    if leave is None and not entry.get("applies_from"):
        raise CatalogError(f"{where}: needs 'leave_major' or 'applies_from' to say when it runs")
    return Migration(
        name=name, title=str(_req(entry, "title", where)),
        run_on_min=_version(_req(entry, "run_on_min", where), where),
        command=str(_req(entry, "command", where)), success_text=str(entry["success_text"] or ""),
        source=str(_req(entry, "source", where)), leave_major=leave,
        applies_from=tuple(_version(v, where) for v in entry.get("applies_from", ()) or ()),
        gate=str(entry.get("gate", "")), manual_check=str(entry.get("manual_check", "")),
        extra={k: str(entry[k]) for k in ("report_command", "flush_command") if k in entry},
    )


def parse_catalog(data: Any, where: str = "catalog") -> Catalog:
    if not isinstance(data, dict):
        raise CatalogError(f"{where}: the catalog must be a mapping")
    if data.get("schema") != 1:
        raise CatalogError(f"{where}: unsupported schema {data.get('schema')!r} (this tool reads schema 1)")
    for key in ("releases", "requirements", "migrations", "images", "mongo_series", "redis_series"):
        _req(data, key, where)
    releases = [_parse_release(e, f"{where}: releases[{i}]") for i, e in enumerate(data["releases"])]
    seen: set[AppVersion] = set()
    for r in releases:
        if r.version in seen:
            raise CatalogError(f"{where}: version {r.version} is listed twice")
        seen.add(r.version)
    for r in releases:
        if r.fixed_in is not None and r.fixed_in not in seen:
            raise CatalogError(f"{where}: version {r.version} is fixed_in {r.fixed_in}, which is not in the catalog")
    rules = [_parse_rule(e, f"{where}: requirements[{i}]") for i, e in enumerate(data["requirements"])]
    if [r["since"] for r in rules] != sorted(r["since"] for r in rules):
        raise CatalogError(f"{where}: requirements must be in ascending 'since' order")
    for key in ("mongo_required", "redis_required", "nginx_default"):
        if key not in rules[0]:
            raise CatalogError(f"{where}: the first requirement rule must set '{key}'")
    migrations = [_parse_migration(e, f"{where}: migrations[{i}]") for i, e in enumerate(data["migrations"])]
    images = {str(k): str(v) for k, v in data["images"].items()}
    for key in ("app_ce", "app_pro", "git_bridge", "mongo", "redis", "nginx", "texlive"):
        _req(images, key, f"{where}: images")
    mongo_series = tuple(_series(s, f"{where}: mongo_series") for s in data["mongo_series"])
    redis_series = tuple(_series(s, f"{where}: redis_series") for s in data["redis_series"])
    if list(mongo_series) != sorted(mongo_series):
        raise CatalogError(f"{where}: mongo_series must be ascending")
    for rule in rules:
        for key in ("mongo_required", "mongo_recommended", "mongo_fcv_min"):
            if key in rule and rule[key] not in mongo_series:
                raise CatalogError(f"{where}: requirement since {rule['since']}: {key} {rule[key]} is not in mongo_series")
        if "redis_required" in rule and rule["redis_required"] not in redis_series:
            raise CatalogError(f"{where}: requirement since {rule['since']}: redis_required {rule['redis_required']} is not in redis_series")
    return Catalog(
        releases=tuple(sorted(releases, key=lambda r: r.version)),
        rules=tuple(rules), migrations=tuple(migrations), images=images,
        mongo_series=mongo_series, redis_series=redis_series,
        mongo_fcv_confirm_from=_series(data.get("mongo_fcv_confirm_from", "7.0"), where),
        mongo_avx_from=_series(data.get("mongo_avx_from", "5.0"), where),
        sources={str(k): str(v) for k, v in (data.get("sources") or {}).items()},
    )


# --- the local overlay (catalog refresh) -----------------------------------------------
def load_overlay(path: Path) -> list[Release]:
    import yaml  # here, not at the top: start-up time of the commands that need no YAML

    try:
        data = _safe_yaml(yaml, Path(path).read_text("utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"overlay {path}: cannot read: {exc}",
                           "Fix or delete the overlay file; `overleaf-bundle catalog refresh` writes it again.") from exc
    if not isinstance(data, dict) or data.get("schema") != 1:
        raise CatalogError(f"overlay {path}: expected a mapping with schema: 1")
    return [_parse_release(e, f"overlay {path}: releases[{i}]", overlay=True)
            for i, e in enumerate(data.get("releases") or [])]


def apply_overlay(cat: Catalog, extra: Iterable[Release]) -> Catalog:
    """Add overlay releases: only new patch releases of majors the catalog has rules for."""
    known = {r.version for r in cat.releases}
    majors = set(cat.majors())
    added = []
    for rel in extra:
        if rel.version in known:
            continue
        if rel.version.major not in majors:
            raise CatalogError(f"overlay: version {rel.version} is a new major; the planner has no rules for it",
                               "Wait for an overleaf-airgap release whose catalog covers it.")
        added.append(rel)
    if not added:
        return cat
    return Catalog(**{**cat.__dict__, "releases": tuple(sorted(cat.releases + tuple(added), key=lambda r: r.version))})


def write_overlay(path: Path, releases: Iterable[Release]) -> None:
    import yaml  # here, not at the top: start-up time of the commands that need no YAML

    from .atomic import atomic_write_bytes

    data = {"schema": 1, "releases": [
        {"version": str(r.version), "source": r.source, **({"date": r.date} if r.date else {})}
        for r in sorted(releases, key=lambda r: r.version)]}
    atomic_write_bytes(Path(path), yaml.safe_dump(data, sort_keys=False).encode())


TAG_RE = re.compile(r"^\d+\.\d+\.\d+\Z")


# --- the overlay a bundle carries (signed, inside manifest.json) ---------------------------
MANIFEST_OVERLAY_SCHEMA = 1
MANIFEST_OVERLAY_MAX_RELEASES = 500
_OVERLAY_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")


def overlay_releases(cat: Catalog) -> list[Release]:
    """The releases of ``cat`` that came from the local overlay (``catalog refresh``)."""
    return [r for r in cat.releases if r.from_overlay]


def overlay_for_manifest(plan: Any = None, cat: Catalog | None = None) -> dict[str, Any] | None:
    """The overlay a bundle must carry so that the importer plans as the bundler did.

    Every overlay release of the catalog the bundler planned with (``load_catalog()`` by
    default: the built-in catalog plus the local overlay), as
    ``{"schema": 1, "releases": [{"version": "6.2.3", "date": ..., "source": ...}]}``;
    None when the plan used no overlay. ``plan`` is accepted for the caller's convenience
    and not needed: any overlay release can change what "latest" means.
    """
    cat = cat if cat is not None else load_catalog()
    rels = overlay_releases(cat)
    if not rels:
        return None
    return {"schema": MANIFEST_OVERLAY_SCHEMA, "releases": [
        {k: v for k, v in (("version", str(r.version)), ("date", r.date), ("source", r.source[:300])) if v}
        for r in sorted(rels, key=lambda r: r.version)]}


def overlay_from_manifest(data: Any, cat: Catalog) -> list[Release]:
    """Validate a bundle's ``catalog_overlay`` against the importer's own catalog ``cat``.

    Only new *published releases* of majors ``cat`` has rules for are accepted, each a
    plain ``X.Y.Z`` with an optional date and source: no status, no editions, no
    requirement rules, no migrations. Versions ``cat`` already knows are dropped (the
    importer's own data wins). Anything else raises :class:`CatalogError`.
    """
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) != {"schema", "releases"} or data["schema"] != MANIFEST_OVERLAY_SCHEMA:
        raise CatalogError("the bundle's catalog_overlay is not {schema: 1, releases: [...]}: it may only add "
                           "newly published releases, never rules",
                           "Use a bundle made by overleaf-airgap, or install the importer it carries.")
    releases = data["releases"]
    if not isinstance(releases, list) or len(releases) > MANIFEST_OVERLAY_MAX_RELEASES:
        raise CatalogError(f"the bundle's catalog_overlay.releases must be a list of at most "
                           f"{MANIFEST_OVERLAY_MAX_RELEASES} releases")
    majors = set(cat.majors())
    known = {r.version for r in cat.releases}
    out: list[Release] = []
    seen: set[AppVersion] = set()
    for i, entry in enumerate(releases):
        where = f"the bundle's catalog_overlay.releases[{i}]"
        if not isinstance(entry, dict) or not set(entry) <= {"version", "date", "source"} or "version" not in entry:
            raise CatalogError(f"{where}: only version, date and source are allowed (an overlay adds releases, "
                               "never rules)")
        text = entry["version"]
        if not isinstance(text, str) or not TAG_RE.match(text) or len(text) > 20:
            raise CatalogError(f"{where}: version {str(text)[:40]!r} is not a plain X.Y.Z release")
        version = AppVersion.parse(text)
        date, source = entry.get("date"), entry.get("source", "bundle catalog_overlay")
        if date is not None and (not isinstance(date, str) or not _OVERLAY_DATE_RE.match(date)):
            raise CatalogError(f"{where}: date must be YYYY-MM-DD")
        if not isinstance(source, str) or len(source) > 300 or not source.isprintable():
            raise CatalogError(f"{where}: source must be a short printable text")
        if version.major not in majors:
            raise CatalogError(f"{where}: {version} is a new major; this importer has no upgrade rules for it",
                               "Install the importer the bundle carries (README-OFFLINE).")
        if version in seen:
            raise CatalogError(f"{where}: {version} is listed twice")
        seen.add(version)
        if version in known:
            continue
        out.append(Release(version, "published", EDITIONS, date, None, None, f"bundle overlay: {source}", True))
    return out


def catalog_with_overlay(cat: Catalog, data: Any) -> Catalog:
    """``cat`` plus the releases of a bundle's validated ``catalog_overlay`` (see :func:`overlay_from_manifest`)."""
    return apply_overlay(cat, overlay_from_manifest(data, cat))
