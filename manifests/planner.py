"""The stepped upgrade planner: (current, target, edition, options) -> :class:`UpgradePlan`.

Pure: reads only the :class:`~manifests.catalog.Catalog`. The rules it applies come
from docs/overleaf-facts.md section 2 and are restated here:

* Reach the latest release of the current major first, then the latest release of
  each next major, one major at a time; an explicit target inside a major is honoured.
* A consistent backup opens the plan and every group of steps that enters a new major.
* Before the app leaves a major, the migrations the catalog ties to that major run
  (Full Project History + cleanup on 3.5.13 before 4.x; binary files on >= 5.5.5 before 6.x).
* Before an app hop, MongoDB is raised one stable series at a time to what that version
  requires, each jump wrapped in setFeatureCompatibilityVersion (``confirm: true`` from
  7.0); Redis is raised likewise. Nothing is ever downgraded.
* Entering 5.x renames SHARELATEX_* to OVERLEAF_*; entering 6.2 needs a new secret.
* Each step lists the images it needs that the host does not already run
  (``assumed_present``: the app, database and proxy images of the starting version;
  TeX Live images asked for are always carried).

    plan = make_plan(load_catalog(), PlanRequest(current="3.5.10", target="latest"))
    [s.version for s in plan.steps if s.kind == "app"]   # ['3.5.13', '4.2.9', '5.5.8', '6.2.2']
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from .catalog import Catalog, Requirements
from .errors import PlanError
from .imageref import check_image_ref
from .versions import AppVersion, MajorMinor, mongo_shell

STEP_KINDS = ("backup", "app", "mongo", "redis", "migration", "config")
PLAN_SCHEMA = 1


@dataclass(frozen=True)
class PlanRequest:
    """What the admin asks for. ``mongo``/``redis`` are the versions running now, if known."""

    current: str
    target: str = "latest"
    edition: str = "ce"
    git_bridge: bool = False
    tls_proxy: bool = False
    texlive: tuple[str, ...] = ()
    mongo: str | None = None
    redis: str | None = None
    allow_rc: bool = False
    app_image: str | None = None         # OVERLEAF_IMAGE_NAME (name, no tag)
    git_bridge_image: str | None = None  # GIT_BRIDGE_IMAGE (name, no tag)
    mongo_image: str | None = None       # MONGO_IMAGE name (no tag)
    redis_image: str | None = None       # REDIS_IMAGE name (no tag)
    nginx_image: str | None = None       # NGINX_IMAGE pinned in overleaf.rc (name:tag)


@dataclass(frozen=True)
class Step:
    kind: str
    description: str
    images: tuple[str, ...] = ()
    version: str | None = None
    name: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, index: int) -> dict[str, Any]:
        d: dict[str, Any] = {"id": step_id(index, self), "kind": self.kind,
                             "description": self.description, "images": list(self.images)}
        if self.version is not None:
            d["version"] = self.version
        if self.name is not None:
            d["name"] = self.name
        d.update(self.details)
        return d


def step_id(index: int, step: Step) -> str:
    return f"{index + 1:02d}-{step.kind}-{step.version or step.name or 'point'}"


@dataclass(frozen=True)
class UpgradePlan:
    current: str
    target: str
    edition: str
    steps: tuple[Step, ...]
    warnings: tuple[str, ...] = ()
    assumed_present: tuple[str, ...] = ()
    local_images: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> list[str]:
        return sorted({i for s in self.steps for i in s.images})

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "from": self.current,
            "to": self.target,
            "edition": self.edition,
            "options": dict(self.options),
            "steps": [s.to_dict(i) for i, s in enumerate(self.steps)],
            "images": self.images,
            "assumed_present": list(self.assumed_present),
            "local_images": list(self.local_images),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UpgradePlan":
        """Rebuild a plan from its JSON (as carried in a bundle manifest); validates strictly."""
        try:
            if d.get("schema") != PLAN_SCHEMA:
                raise ValueError(f"unsupported plan schema {d.get('schema')!r}")
            steps = []
            for s in d["steps"]:
                if s["kind"] not in STEP_KINDS:
                    raise ValueError(f"unknown step kind {s['kind']!r}")
                core = {"id", "kind", "description", "images", "version", "name"}
                steps.append(Step(
                    kind=s["kind"], description=str(s["description"]),
                    images=tuple(check_image_ref(i) for i in s["images"]),
                    version=s.get("version"), name=s.get("name"),
                    details={k: v for k, v in s.items() if k not in core}))
            plan = cls(current=str(d["from"]), target=str(d["to"]), edition=str(d["edition"]),
                       steps=tuple(steps), warnings=tuple(d.get("warnings", ())),
                       assumed_present=tuple(d.get("assumed_present", ())),
                       local_images=tuple(d.get("local_images", ())),
                       options=dict(d.get("options", {})))
        except (KeyError, TypeError, ValueError, PlanError) as exc:
            raise PlanError(f"the plan is malformed: {exc}") from None
        if plan.images != sorted(d.get("images", [])):
            raise PlanError("the plan is malformed: its image list does not match its steps")
        return plan


# --- the planning itself --------------------------------------------------------------
@dataclass
class _Stack:
    """What the host runs at one point of the plan."""

    app: AppVersion
    mongo: MajorMinor
    redis: MajorMinor


class _Planner:
    def __init__(self, cat: Catalog, req: PlanRequest) -> None:
        self.cat = cat
        self.req = req
        self.warnings: list[str] = []
        if req.edition not in ("ce", "pro"):
            raise PlanError(f"edition must be 'ce' or 'pro', not {req.edition!r}")
        if req.texlive and req.edition != "pro":
            raise PlanError("TeX Live images are for Server Pro sandboxed compiles; Community Edition cannot use them",
                            "Drop --texlive, or plan with --edition pro.")
        if req.git_bridge and req.edition != "pro":
            raise PlanError("git-bridge is a Server Pro feature", "Drop --git-bridge, or plan with --edition pro.")
        self.texlive = tuple(self._texlive_ref(t) for t in req.texlive)
        self.nginx = check_image_ref(req.nginx_image) if req.nginx_image else None

    # images ---------------------------------------------------------------------------
    def _texlive_ref(self, t: str) -> str:
        if re.match(r"^\d+\.\d+\Z", t):
            t = f"{self.cat.images['texlive']}:{t}"
        return check_image_ref(t)

    def app_ref(self, v: AppVersion) -> str:
        name = self.req.app_image or self.cat.images["app_pro" if self.req.edition == "pro" else "app_ce"]
        tag = str(v.release) + ("-with-texlive-full" if self.texlive_full else "")
        return check_image_ref(f"{name}:{tag}")

    def mongo_ref(self, s: MajorMinor) -> str:
        return check_image_ref(f"{self.req.mongo_image or self.cat.images['mongo']}:{s}")

    def redis_ref(self, s: MajorMinor) -> str:
        return check_image_ref(f"{self.req.redis_image or self.cat.images['redis']}:{s}")

    def stack_images(self, st: _Stack) -> list[str]:
        r = self.cat.requirements(st.app)
        imgs = [self.app_ref(st.app), self.mongo_ref(st.mongo), self.redis_ref(st.redis)]
        if self.req.git_bridge and r.git_bridge:
            name = self.req.git_bridge_image or self.cat.images["git_bridge"]
            imgs.append(check_image_ref(f"{name}:{st.app.release}"))
        if self.req.tls_proxy:
            imgs.append(self.nginx or check_image_ref(f"{self.cat.images['nginx']}:{r.nginx_default}"))
        imgs.extend(self.texlive)
        return imgs

    def needs(self, *imgs: str) -> tuple[str, ...]:
        seen: list[str] = []
        for i in imgs:
            if i not in self.assumed and i not in seen:
                seen.append(i)
        return tuple(seen)

    # versions -------------------------------------------------------------------------
    def resolve_current(self) -> AppVersion:
        cur = AppVersion.parse(self.req.current)
        self.texlive_full = cur.texlive_full
        if cur.is_rc and not self.req.allow_rc:
            raise PlanError(f"the current version {cur} is a release candidate",
                            "Pass --allow-rc to plan from a release candidate.")
        rel = self.cat.find(cur)
        if rel is None and not cur.is_rc:
            raise PlanError(f"the current version {cur} is not in the release catalog",
                            "Check config/version; if Overleaf published it after this tool's release, "
                            "run `overleaf-bundle catalog refresh`.")
        if cur.major not in self.cat.majors():
            raise PlanError(f"major version {cur.major} is not in the release catalog")
        if rel is not None and rel.status == "retracted":
            self.warnings.append(
                f"{cur} is a retracted release ({rel.reason}); the Toolkit's bin/docker-compose refuses to run "
                f"while config/version says {cur}. The plan moves past it to {rel.fixed_in} or later.")
        if cur.texlive_full:
            self.warnings.append(
                f"{cur}: a locally built -with-texlive-full image. The plan names -with-texlive-full images for every "
                "hop; they are not published: build each one on the online host first (docker commit after "
                "tlmgr install scheme-full) so that the bundle can take it from the local engine.")
        return cur

    def resolve_target(self, cur: AppVersion) -> AppVersion:
        t = self.req.target.strip()
        ed = self.req.edition
        if t == "latest":
            return self.cat.latest(ed)
        if t == "latest-patch":
            v = self.cat.latest_in_major(cur.major, ed)
            if v is None:
                raise PlanError(f"no published release of major {cur.major} in the catalog")
            return max(v, cur.release)
        tv = AppVersion.parse(t)
        if tv.texlive_full:
            raise PlanError("give the target without -with-texlive-full",
                            "The suffix is taken from the current version (config/version).")
        if tv.is_rc and not self.req.allow_rc:
            raise PlanError(f"{tv} is a release candidate", "Pass --allow-rc to plan to a release candidate.")
        rel = self.cat.find(tv)
        if rel is None:
            if tv.is_rc and tv.major in self.cat.majors():
                return tv
            near = [str(r.version) for r in self.cat.usable(ed) if r.version.minor_key == tv.minor_key]
            raise PlanError(f"{tv} is not in the release catalog",
                            ("Known releases of that minor: " + ", ".join(near)) if near else
                            "Run `overleaf-bundle catalog show` for the list, or `catalog refresh` for new patches.")
        if rel.status == "retracted":
            raise PlanError(f"{tv} was retracted: {rel.reason}", f"Use {rel.fixed_in} or later instead.")
        if rel.status == "unpublished":
            nxt = [r.version for r in self.cat.usable(ed) if r.version > tv and r.version.minor_key == tv.minor_key]
            raise PlanError(f"{tv} was never published ({rel.reason})",
                            f"Use {min(nxt)} instead." if nxt else "Pick a published release.")
        if ed not in rel.editions:
            alt = [r.version for r in self.cat.usable(ed) if r.version > tv and r.version.minor_key == tv.minor_key]
            raise PlanError(f"{tv} was released for {', '.join(rel.editions)} only ({rel.reason or ''})".rstrip(" ()"),
                            f"Use {min(alt)} instead." if alt else "Pick another release.")
        if rel.status == "unconfirmed":
            self.warnings.append(f"{tv}: {rel.reason}; check that the image exists before relying on it.")
        return tv

    def hops(self, cur: AppVersion, tgt: AppVersion) -> list[AppVersion]:
        ed = self.req.edition
        if tgt.major == cur.major:
            return [tgt] if tgt.release > cur.release else []
        out: list[AppVersion] = []
        latest_cur = self.cat.latest_in_major(cur.major, ed)
        if latest_cur is not None and latest_cur > cur.release:
            out.append(latest_cur)
        for major in range(cur.major + 1, tgt.major):
            v = self.cat.latest_in_major(major, ed)
            if v is None:
                raise PlanError(f"no published release of major {major}: cannot step through it")
            out.append(v)
        out.append(tgt)
        return out

    # steps ----------------------------------------------------------------------------

    def plan(self) -> UpgradePlan:
        cur = self.resolve_current()
        tgt = self.resolve_target(cur)
        if tgt.release < cur.release:
            raise PlanError(f"{tgt} is older than the current {cur}: Overleaf cannot be downgraded "
                            "(its database migrations are not reversible)",
                            "To go back, restore a backup taken before the upgrade (`overleaf-import rollback`).")
        creq = self.cat.requirements(cur)
        mongo = self._given("mongo", self.req.mongo, creq.mongo_required, self.cat.mongo_series)
        redis = self._given("redis", self.req.redis, creq.redis_required, self.cat.redis_series)
        st = _Stack(cur, mongo, redis)
        # the stack the host runs now is on the host already; TeX Live images asked for are always carried
        self.assumed = tuple(i for i in self.stack_images(st) if i not in self.texlive)
        steps: list[Step] = []
        hops = self.hops(cur, tgt)
        for i, hop in enumerate(hops):
            steps.extend(self.group(st, hop, first=(i == 0)))
        if any(s.kind == "mongo" and MajorMinor.parse(s.version) >= self.cat.mongo_avx_from for s in steps):
            self.warnings.append(
                f"MongoDB {self.cat.mongo_avx_from} and later need a CPU with AVX; without it mongod dies with "
                "'Illegal instruction' (exit 132). On virtual machines use a CPU type that passes AVX through "
                "(for example 'host', not 'kvm64'). Check with: grep -m1 -o avx /proc/cpuinfo")
        if not hops:
            self.warnings.append(f"already at {cur}: nothing to do")
        local = tuple(sorted({i for s in steps for i in s.images if "-with-texlive-full" in i}))
        opts = {"git_bridge": self.req.git_bridge, "tls_proxy": self.req.tls_proxy,
                "texlive": list(self.texlive), "mongo": str(mongo), "redis": str(redis),
                "allow_rc": self.req.allow_rc}
        return UpgradePlan(str(cur), str(tgt if not cur.texlive_full else replace(tgt, texlive_full=True)),
                           self.req.edition, tuple(steps), tuple(self.warnings), self.assumed, local, opts)

    def _given(self, what: str, value: str | None, default: MajorMinor, series: tuple[MajorMinor, ...]) -> MajorMinor:
        if value:
            v = MajorMinor.parse(value).series
            if v not in series:
                raise PlanError(f"{what} {v} is not a stable series this tool knows ({', '.join(map(str, series))})",
                                f"Give the {what} version as MAJOR.MINOR, e.g. {series[-1]}.")
            return v
        self.warnings.append(f"current {what} version not given: assumed {default} (what the current Overleaf "
                             f"version requires); pass --{what} or --toolkit to be exact.")
        return default

    def group(self, st: _Stack, hop: AppVersion, first: bool) -> list[Step]:
        out: list[Step] = []
        crossing = hop.major > st.app.major
        req: Requirements = self.cat.requirements(hop)
        if crossing or first:
            what = f"before moving to {hop.major}.x" if crossing else "before the first step"
            out.append(Step("backup", f"Consistent backup {what}: stop services, copy config/ and every data "
                                      "path (mongo, redis, overleaf, git-bridge) with checksums",
                            details={"major": crossing, "app_version": str(st.app)}))
        for mig in self.cat.migrations:
            applies = (crossing and mig.leave_major == st.app.major) or (
                st.app.release in mig.applies_from and hop >= AppVersion(5, 0, 3))
            if not applies:
                continue
            if st.app.release < mig.run_on_min:
                raise PlanError(f"internal: {mig.name} must run on {mig.run_on_min} or later, the plan is at {st.app}")
            details = {"run_on": str(st.app), "command": mig.command, "success_text": mig.success_text,
                       "source": mig.source}
            if mig.gate:
                details["gate"] = mig.gate
            if mig.manual_check:
                details["manual_check"] = mig.manual_check
            details.update(mig.extra)
            out.append(Step("migration", f"{mig.title}, run on {st.app}", self.needs(*self.stack_images(st)),
                            name=mig.name, details=details))
        while st.mongo < req.mongo_required:
            nxt = self.cat.next_mongo(st.mongo)
            assert nxt is not None
            imgs = self.needs(self.mongo_ref(st.mongo), self.mongo_ref(nxt))
            out.append(Step(
                "mongo", f"MongoDB {st.mongo} -> {nxt}: set feature compatibility to {st.mongo}, switch the image, "
                         f"then raise feature compatibility to {nxt}",
                imgs, version=str(nxt),
                details={"from_version": str(st.mongo), "shell_before": mongo_shell(st.mongo),
                         "shell_after": mongo_shell(nxt), "fcv_before": self.cat.fcv_command(st.mongo),
                         "fcv_after": self.cat.fcv_command(nxt), "needed_by": str(hop)}))
            st.mongo = nxt
        if st.redis < req.redis_required:
            out.append(Step("redis", f"Redis {st.redis} -> {req.redis_required} (Redis 7+ cannot be downgraded)",
                            self.needs(self.redis_ref(req.redis_required)), version=str(req.redis_required),
                            details={"from_version": str(st.redis), "needed_by": str(hop)}))
            st.redis = req.redis_required
        if st.app.major < 5 <= hop.major:
            out.append(Step("config", "Rename SHARELATEX_* to OVERLEAF_* in config/variables.env and "
                                      "config/overleaf.rc (copies kept), drop the legacy TEXMFVAR line",
                            name="rename_sharelatex_vars",
                            details={"files": ["config/variables.env", "config/overleaf.rc"],
                                     "source": "TK bin/upgrade, bin/rename-env-vars-5-0, bin/rename-rc-vars (facts 2.5)"}))
        have = {s.name for s in self.cat.requirements(st.app).secrets}
        for secret in req.secrets:
            if secret.name not in have:
                out.append(Step("config", f"Add {secret.name} to config/variables.env ({secret.why}); "
                                          f"make it with: {secret.make}",
                                name=f"secret_{secret.name.lower()}",
                                details={"variable": secret.name, "make": secret.make}))
        st.app = hop
        crossing_note = " (major step)" if crossing else ""
        out.append(Step("app", f"Move Overleaf to {hop}{crossing_note}: write config/version, bin/up -d, "
                               "health check",
                        self.needs(*self.stack_images(st)), version=str(hop),
                        details={"major": crossing, "mongo": str(st.mongo), "redis": str(st.redis)}))
        return out


def make_plan(cat: Catalog, req: PlanRequest) -> UpgradePlan:
    """Plan the upgrade, or raise :class:`PlanError` saying what to do instead."""
    return _Planner(cat, req).plan()
