"""How long each plan step keeps the site down and how much disk it needs, from the site's own data.

Pure: the figures follow from :class:`importer.upgrade.site.SiteFacts` (what ``read_site`` measured), the
plan's typed steps and, when one exists, the rehearsal record of the same bundle; every figure names the
rate it comes from. The rates are in one table, :data:`RATES`, each with its source: the sentence of
docs/overleaf-facts.md it is taken from, or, where that document gives no figure, an assumption said to be
one (a rehearsal's measured backup rate replaces the assumed copy rate). A step whose duration no rate
gives (the Full Project History and binary files migrations: the documents give no speed) has no figure:
it is listed under "could not estimate", with what the rehearsal measured when there is one.

    est = estimate_plan(manifest, plan_steps(manifest.plan), facts, record=None)
    [(s.id, s.downtime.value, s.disk.value if s.disk else None) for s in est.steps]
    print("\\n".join(text_lines(est)))
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from manifests.bundle import BundleManifest
from manifests.units import human_size

from importer.upgrade.base import RunStep
from importer.upgrade.rehearsal_record import RehearsalRecord
from importer.upgrade.site import SiteFacts

FACTS = "docs/overleaf-facts.md"


@dataclass(frozen=True)
class Rate:
    """One rate an estimate uses: its value and unit, and where it comes from (``kind``: documented, assumed,
    or measured on this site by a rehearsal)."""
    key: str
    value: float
    unit: str
    kind: str
    source: str
    sentence: str


# The one table of rates. "documented": the sentence is docs/overleaf-facts.md's; "assumed": that document gives
# no figure, the sentence says what the assumption stands for (a rehearsal measures the real one).
RATES: dict[str, Rate] = {r.key: r for r in (
    Rate("doc_version_recovery", 10_000 / 60, "projects/s", "documented", f"{FACTS} §2.6 (DOCS doc-version-recovery)",
         "Schedule downtime (about 10k small projects per minute)."),
    Rate("backup_disk", 1.0, "bytes per byte of config/ and data", "documented",
         f"{FACTS} §2.1 (DOCS Upgrading your deployment)",
         "Take a consistent backup (mongo + redis + data dir, services stopped) before every major upgrade."),
    Rate("binary_files_disk", 1.0, "bytes per byte of user_files, at most", "documented",
         f"{FACTS} §2.7 (DOCS binary-files-migration)",
         "Since 4.x, binary files are stored twice (filestore and history). 6.0 keeps only the history copy."),
    Rate("backup_copy", 100e6, "bytes/s", "assumed", f"{FACTS} gives no copy rate",
         "A plain local disk reading, writing and hashing every byte once; a rehearsal measures this site's own."),
    Rate("app_start", 120.0, "s per app step", "assumed", f"{FACTS} gives no start-up time",
         "bin/stop, config/version, bin/up -d and the health check; a first start runs the release's database "
         "migrations (§2.3)."),
    Rate("mongo_hop", 60.0, "s per MongoDB major", "assumed", f"{FACTS} §2.8 gives the procedure, no time",
         "Set the feature compatibility, bin/stop, set MONGO_VERSION, start MongoDB, raise the feature "
         "compatibility."),
    Rate("redis_hop", 30.0, "s per Redis switch", "assumed", f"{FACTS} §3.2 gives no time",
         "Stop Redis, switch REDIS_IMAGE, start it until it answers PONG."),
    Rate("config_edit", 10.0, "s per config step", "assumed", "a config file edit (copy kept)",
         "The edit itself; the stop it may need is counted in the next app step."),
)}

# what the documents say of the migrations they give no rate for (why no figure is printed)
NO_RATE = {
    "history_migration": f"{FACTS} §2.4 gives no rate (\"Offline is recommended when there are fewer than about 1000 "
                     "projects.\")",
    "history_cleanup": f"{FACTS} §2.4 gives no rate (it drops docHistory/docHistoryIndex to free disk)",
    "binary_files_migration": f"{FACTS} §2.7 gives no rate (defaults --concurrency=10 --concurrent-batches=1; "
                              "it can be resumed)",
}


@dataclass(frozen=True)
class Figure:
    """One estimated quantity (seconds or bytes; None: no rate gives it) and the arithmetic behind it."""
    value: float | None
    basis: str
    rate: str | None = None


@dataclass
class StepEstimate:
    """A plan step's expected downtime and, for backups and migrations, the disk it needs."""
    id: str
    kind: str
    title: str
    downtime: Figure
    disk: Figure | None = None
    rehearsed: float | None = None     # seconds this step took in the rehearsal of this bundle


@dataclass
class Estimate:
    """Every step's figures, the totals, the rates used and what could not be measured or estimated."""
    bundle_id: str
    from_version: str
    to_version: str
    site: SiteFacts
    steps: list[StepEstimate]
    rates: dict[str, Rate]
    record: str | None = None          # the rehearsal record whose timings are shown
    unestimated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def downtime_seconds(self) -> float:
        """The steps' downtime that some rate gives (steps without a figure: see ``unestimated``)."""
        return sum(s.downtime.value for s in self.steps if s.downtime.value is not None)

    @property
    def backup_disk_bytes(self) -> int:
        """Every backup of the plan is kept until the upgrade is done: their disk added up."""
        return int(sum(s.disk.value for s in self.steps if s.kind == "backup" and s.disk and s.disk.value))

    @property
    def migration_disk_bytes(self) -> int:
        """The most disk one migration needs beside the data (on the data paths' disk)."""
        return int(max([s.disk.value for s in self.steps if s.kind == "migration" and s.disk and s.disk.value]
                       or [0]))

    def to_dict(self) -> dict[str, Any]:
        return {"bundle_id": self.bundle_id, "from": self.from_version, "to": self.to_version,
                "site": self.site.to_dict(), "steps": [asdict(s) for s in self.steps],
                "totals": {"downtime_seconds": round(self.downtime_seconds, 1),
                           "steps_without_figure": [s.id for s in self.steps if s.downtime.value is None],
                           "backup_disk_bytes": self.backup_disk_bytes, "backup_free_bytes": self.site.backup_free,
                           "migration_disk_bytes": self.migration_disk_bytes,
                           "data_free_bytes": self.site.data_free},
                "rates": {k: asdict(r) for k, r in self.rates.items()}, "record": self.record,
                "unmeasured": self.site.unmeasured, "unestimated": self.unestimated, "notes": self.notes}


def _num(n: float) -> str:
    return f"{n:,.0f}" if n >= 100 else f"{n:,.3g}"


def _seconds(rate: Rate, amount: float, shown: str) -> Figure:
    """``amount`` (``shown`` as people read it) at ``rate`` (a per-second rate)."""
    return Figure(amount / rate.value, f"{shown} / {show_rate(rate)}", rate.key)


def _fixed(rate: Rate) -> Figure:
    return Figure(rate.value, f"{_num(rate.value)} {rate.unit}", rate.key)


def backup_rate(record: RehearsalRecord | None, name: str | None) -> Rate:
    """The copy rate a rehearsal measured on this site (its fresh backup), else the assumed one."""
    if record is not None and record.backup_bytes and record.backup_seconds and record.backup_seconds > 0:
        measured = record.backup_bytes / record.backup_seconds
        return Rate("backup_copy", measured, "bytes/s", "measured", f"rehearsal record {name}",
                    f"The rehearsal's fresh backup of this site copied {human_size(record.backup_bytes)} in "
                    f"{record.backup_seconds:.1f} s.")
    return RATES["backup_copy"]


def step_figures(step: RunStep, facts: SiteFacts, rates: dict[str, Rate],
                 unestimated: list[str]) -> StepEstimate:
    """The downtime (and for backups and migrations the disk) of one step."""
    est = StepEstimate(step.id, step.kind, step.description, Figure(None, ""))
    if step.kind == "backup":
        size = facts.backup_bytes
        est.downtime = _seconds(rates["backup_copy"], size, f"{human_size(size)} of config/ and data")
        disk = rates["backup_disk"]
        est.disk = Figure(size * disk.value, f"{human_size(size)} of config/ and data x {disk.value:g}", disk.key)
    elif step.kind == "app":
        est.downtime = _fixed(rates["app_start"])
    elif step.kind == "mongo":
        est.downtime = _fixed(rates["mongo_hop"])
    elif step.kind == "redis":
        est.downtime = _fixed(rates["redis_hop"])
    elif step.kind == "config":
        est.downtime = _fixed(rates["config_edit"])
    elif step.kind == "migration":
        migration_figures(est, step, facts, rates, unestimated)
    return est


def migration_figures(est: StepEstimate, step: RunStep, facts: SiteFacts, rates: dict[str, Rate],
                      unestimated: list[str]) -> None:
    """A migration's figures: a documented rate where there is one, else none (and why)."""
    name = step.name or ""
    projects = (facts.counts or {}).get("projects")
    if name == "doc_version_recovery":
        if projects is None:
            est.downtime = Figure(None, "the projects were not counted")
        else:
            est.downtime = _seconds(rates["doc_version_recovery"], projects, f"{projects:,} projects")
        est.disk = Figure(None, f"{FACTS} §2.6 gives no disk figure")
    elif name == "binary_files_migration":
        files = (facts.counts or {}).get("files")
        est.downtime = Figure(None, NO_RATE[name] + (f"; {files:,} file references to process" if files is not None
                                                     else ""))
        uf = facts.user_files
        size = uf.bytes if uf is not None else 0
        rate = rates["binary_files_disk"]
        est.disk = Figure(size * rate.value, f"{human_size(size)} in user_files ({uf.files if uf else 0:,} files) x "
                                             f"{rate.value:g}, at most", rate.key)
    elif name == "history_cleanup":
        est.downtime = Figure(None, NO_RATE[name])
        est.disk = Figure(0, "it frees disk (§2.4)")
    else:
        est.downtime = Figure(None, NO_RATE.get(name, f"{FACTS} gives no rate for {name}")
                              + (f"; {projects:,} projects" if projects is not None else ""))
        est.disk = Figure(None, f"{FACTS} gives no disk figure for {name}")
    if est.downtime.value is None:
        unestimated.append(f"{step.id}: downtime ({est.downtime.basis})")
    if est.disk is not None and est.disk.value is None:
        unestimated.append(f"{step.id}: disk ({est.disk.basis})")


def estimate_plan(manifest: BundleManifest, steps: list[RunStep], facts: SiteFacts,
                  record: RehearsalRecord | None = None, record_name: str | None = None) -> Estimate:
    """Every step's figures from ``facts``; ``record``: the rehearsal of this bundle (its timings are shown beside
    the estimate, and its measured backup rate replaces the assumed one)."""
    rates = dict(RATES)
    rates["backup_copy"] = backup_rate(record, record_name)
    unestimated: list[str] = []
    out = [step_figures(s, facts, rates, unestimated) for s in steps]
    if record is not None:
        timed = {t.id: t.seconds for t in record.steps if t.status == "done"}
        for s in out:
            s.rehearsed = timed.get(s.id)
    notes = []
    if facts.version != manifest.plan.get("from"):
        notes.append(f"config/version is {facts.version}, the bundle's plan starts at {manifest.plan.get('from')}: "
                     "the figures are for this site's data, the preflight of `upgrade` would refuse")
    used = {"backup_copy", "backup_disk"} if any(s.kind == "backup" for s in steps) else set()
    used |= {f.rate for s in out for f in (s.downtime, s.disk) if f is not None and f.rate}
    return Estimate(manifest.bundle_id, str(manifest.plan.get("from")), str(manifest.plan.get("to")), facts, out,
                    {k: r for k, r in rates.items() if k in used}, record_name, unestimated, notes)


def show_seconds(s: float | None) -> str:
    """``95.0`` -> ``1 min 35 s``; None -> ``unknown``."""
    if s is None:
        return "unknown"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    return f"{m // 60} h {m % 60} min" if m >= 60 else f"{m} min {sec} s"


def show_rate(r: Rate) -> str:
    """A rate as people read it (bytes/s as MB/s, projects/s as projects per minute)."""
    if r.unit == "bytes/s":
        return f"{r.value / 1e6:,.1f} MB/s"
    if r.unit == "projects/s":
        return f"{r.value * 60:,.0f} projects per minute"
    return f"{_num(r.value)} {r.unit}"


def text_lines(est: Estimate) -> list[str]:
    """The estimate as the CLI prints it."""
    f = est.site
    out = [(f"Site {f.toolkit}: Overleaf {f.version} ({f.edition}), MongoDB {f.mongo_version or '?'}, "
            f"Redis {f.redis_version or '?'}")]
    out.append("  data: " + ", ".join(f"{p.label} {human_size(p.bytes)} ({p.files:,} files)" for p in f.paths.values()))
    if f.user_files is not None:
        out.append(f"  filestore: user_files {human_size(f.user_files.bytes)} ({f.user_files.files:,} files)")
    if f.counts is not None:
        out.append("  MongoDB: " + ", ".join(f"{f.counts[k]:,} {k}" for k in f.counts) + f"  [{f.counts_via}]")
    if f.redis_keys is not None:
        mem = human_size(f.redis_memory) if f.redis_memory is not None else "unknown"
        out.append(f"  Redis: {f.redis_keys:,} keys, used_memory {mem}  [{f.redis_via}]")
    out.append(f"Plan {est.from_version} -> {est.to_version}, per step (figure = arithmetic [rate]):")
    for s in est.steps:
        out.append(f"  {s.id}  {s.title}")
        out.append(f"      downtime {show_seconds(s.downtime.value):>12}  = {s.downtime.basis}"
                   + (f"  [{s.downtime.rate}]" if s.downtime.rate else ""))
        if s.disk is not None:
            size = human_size(s.disk.value) if s.disk.value is not None else "unknown"
            out.append(f"      disk     {size:>12}  = {s.disk.basis}" + (f"  [{s.disk.rate}]" if s.disk.rate else ""))
        if s.rehearsed is not None:
            out.append(f"      rehearsed {show_seconds(s.rehearsed):>11}  (measured in the rehearsal)")
    missing = [s.id for s in est.steps if s.downtime.value is None]
    out.append(f"Total downtime: {show_seconds(est.downtime_seconds)}"
               + (f" plus the steps with no figure ({', '.join(missing)})" if missing else ""))
    free = f.backup_free
    out.append(f"Disk: backups {human_size(est.backup_disk_bytes)} in {f.backup_dir} ("
               + (f"{human_size(free)} free" if free is not None else "free space unknown")
               + (", NOT ENOUGH" if free is not None and free < est.backup_disk_bytes else "") + "); "
               f"migrations up to {human_size(est.migration_disk_bytes)} beside the data ("
               + (f"{human_size(f.data_free)} free" if f.data_free is not None else "free space unknown") + ")")
    out.append("Rates (source):")
    for r in est.rates.values():
        out.append(f"  {r.key}: {show_rate(r)} ({r.kind}; {r.source}: \"{r.sentence}\")")
    if f.unmeasured or est.unestimated:
        out.append("Could not measure or estimate:")
        out += [f"  - {x}" for x in [*f.unmeasured, *est.unestimated]]
    out += [f"note: {n}" for n in est.notes]
    return out
