"""The change report: one self-contained page for a change board, as HTML (inline CSS, no external resource)
or Markdown.

It holds the verified bundle's plan steps (with what each does), its images with their digests and sizes
(from the signed manifest), the estimate (:mod:`importer.upgrade.estimate`), the timings of this bundle's
rehearsal when one was recorded (:mod:`importer.upgrade.rehearsal_record`), the upgrade's own preflight run
as a dry run (reads only), the risks the plan carries (each with the sentence of docs/overleaf-facts.md it
rests on) and the rollback points. Every text that comes from the bundle, the site or a record is escaped
(``html.escape`` for HTML; for Markdown also the characters that make tables, links and emphasis).

    rep = gather_report(root, vb, cfg, client, backup_dir=None)
    write_report(rep, html=Path("change.html"), markdown=Path("change.md"))
    page = render_html(rep)
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manifests.atomic import atomic_write_bytes
from manifests.bundle import iso, utc_now
from manifests.errors import AirgapError
from manifests.toolkit_config import ToolkitConfig
from manifests.units import human_size

from importer.images import engine as eng
from importer.images.load import pinned_ids
from importer.images.verify import VerifiedBundle
from importer.upgrade.base import Context, RunStep, UpgradeOptions, describe, not_covered, plan_steps
from importer.upgrade.estimate import FACTS, Estimate, estimate_plan, show_rate, show_seconds
from importer.upgrade.journal import Journal
from importer.upgrade.preflight import preflight
from importer.upgrade.rehearsal_record import RehearsalRecord, latest_record
from importer.upgrade.site import read_site

SECTIONS = ("Summary", "Plan steps", "Images", "Estimates", "Rehearsal", "Preflight", "Risks", "Rollback points")


@dataclass
class ChangeReport:
    """Everything the page shows (see the module docstring), gathered once for both renderings."""
    generated: str
    toolkit: str
    bundle: dict[str, Any]
    steps: list[RunStep]
    actions: dict[str, list[str]]
    images: list[dict[str, Any]]
    estimate: Estimate | None = None
    estimate_error: str | None = None
    rehearsal: RehearsalRecord | None = None
    rehearsal_path: str | None = None
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    preflight_error: str | None = None
    risks: list[tuple[str, str]] = field(default_factory=list)
    rollback: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"generated": self.generated, "toolkit": self.toolkit, "bundle": self.bundle,
                "steps": [s.id for s in self.steps], "images": len(self.images),
                "estimate": self.estimate.to_dict() if self.estimate else None, "estimate_error": self.estimate_error,
                "rehearsal": self.rehearsal_path, "problems": self.problems, "preflight_error": self.preflight_error,
                "risks": [r for r, _s in self.risks], "rollback_points": [p["step"] for p in self.rollback]}


# --- gathering ---------------------------------------------------------------------------------------------
def _major(version: str | None) -> int:
    m = re.match(r"^(\d+)", str(version or ""))
    return int(m.group(1)) if m else 0


def plan_risks(cfg: ToolkitConfig, steps: list[RunStep]) -> list[tuple[str, str]]:
    """What the plan's steps put at stake, each with the sentence it rests on."""
    out: list[tuple[str, str]] = []
    app = cfg.version
    for s in steps:
        if s.kind == "mongo":
            out.append((f"{s.id}: MongoDB {s.from_version} -> {s.version} cannot be undone in place; only a backup "
                        "taken before it brings the old data back",
                        f"{FACTS} §2.8: \"Never downgrade Mongo.\""))
        elif s.kind == "redis" and _major(s.version) >= 7 > _major(s.from_version or cfg.redis_version):
            out.append((f"{s.id}: Redis {s.version} rewrites its data in a format older Redis cannot read",
                        f"{FACTS} §3.2: \"there is no downgrade after 7.x\""))
        elif s.kind == "app":
            new = s.version or app
            if _major(app) < 5 <= _major(new):
                out.append((f"{s.id}: the 5.0 database migrations cannot be undone",
                            f"{FACTS} §2.5: \"going back to 4.x needs a DB restore\""))
            if _major(app) < 6 <= _major(new):
                out.append((f"{s.id}: going back to 5.x after it needs the backup",
                            f"{FACTS} §2.7: \"Going back to 5.x after 6.0 means a full restore.\""))
            app = new
        elif s.kind == "migration" and s.name == "binary_files_migration":
            out.append((f"{s.id}: stops for a person's check of binary files; at level 2 the filestore is no "
                        "longer read", f"{FACTS} §2.7: \"2: history only. Cannot go back unless the migration "
                        "was done offline.\""))
        elif s.kind == "migration" and s.name == "doc_version_recovery":
            out.append((f"{s.id}: users must be disconnected while it runs",
                        f"{FACTS} §2.6: \"Close the editor and disconnect users.\""))
        elif s.kind == "migration" and s.name == "history_migration":
            out.append((f"{s.id}: Overleaf 4.x refuses to start until every project is migrated",
                        f"{FACTS} §2.3: \"Full Project History migration not completed for N projects\""))
    out += [(x, "the upgrade's backups copy only the Toolkit's own config/ and data paths") for x in not_covered(cfg)]
    return out


def site_risks(rep: ChangeReport) -> list[tuple[str, str]]:
    """Risks from what was measured, rehearsed and checked."""
    out: list[tuple[str, str]] = []
    est = rep.estimate
    if est is None:
        out.append(("the site could not be read: no downtime or disk figure", rep.estimate_error or ""))
    else:
        free = est.site.backup_free
        if free is not None and free < est.backup_disk_bytes:
            out.append((f"not enough free space for the backups: {human_size(est.backup_disk_bytes)} needed in "
                        f"{est.site.backup_dir}, {human_size(free)} free", "the estimate"))
        missing = [s.id for s in est.steps if s.downtime.value is None]
        if missing:
            out.append((f"no documented rate gives the duration of {', '.join(missing)}",
                        "the estimate: a rehearsal measures it"))
    if rep.rehearsal is None:
        out.append(("this bundle was not rehearsed (overleaf-import rehearse)", "no rehearsal record"))
    elif not rep.rehearsal.ok:
        out.append((f"the last rehearsal of this bundle failed: {rep.rehearsal.error}", rep.rehearsal_path or ""))
    if rep.problems:
        out.append((f"the preflight found {len(rep.problems)} problem(s): the upgrade would refuse to start",
                    "the preflight"))
    return out


def rollback_points(root: Path, cfg: ToolkitConfig, steps: list[RunStep]) -> list[dict[str, str]]:
    """Each backup step of the plan: what it keeps, and what a rollback to it undoes."""
    app, mongo, redis = cfg.version, cfg.mongo_version or "?", cfg.redis_version or "?"
    out: list[dict[str, str]] = []
    for i, s in enumerate(steps):
        if s.kind == "backup":
            later = [t.id for t in steps[i + 1:]]
            out.append({"step": s.id, "keeps": f"Overleaf {app}, MongoDB {mongo}, Redis {redis} (config/ and data)",
                        "undoes": ", ".join(later) or "nothing",
                        "major": "yes" if s.major else "no",
                        "command": f"overleaf-import rollback --toolkit {root} --backup ID (ID: as overleaf-import "
                                   "status lists it; without --backup: the backup before the last major step)"})
        elif s.kind == "app" and s.version:
            app = s.version
        elif s.kind == "mongo" and s.version:
            mongo = s.version
        elif s.kind == "redis" and s.version:
            redis = s.version
    return out


def run_preflight(rep: ChangeReport, root: Path, vb: VerifiedBundle, client: Any) -> None:
    """The upgrade's own preflight as its dry run runs it (reads only; images the bundle brings count as here)."""
    m = vb.manifest
    journal = Journal.load(root)
    if journal is not None and journal.finished:
        journal = None
    ctx = Context(root, m, UpgradeOptions(yes=True, dry_run=True, generate_secrets=True), rep.facts.append,
                  lambda q: False, client)
    ctx.code_update_pending = m.toolkit is not None and journal is None
    pinned = pinned_ids(m, eng.engine_info(client).image_store)

    def present(ref: str) -> bool:
        got = eng.image_id(client, ref)
        return ref in pinned if got is None else got == pinned.get(ref, got)
    rep.problems = preflight(ctx, m.plan, journal, present)


def gather_report(root: Path, vb: VerifiedBundle, cfg: ToolkitConfig, client: Any | None, *,
                  backup_dir: Path | None = None, client_error: str | None = None) -> ChangeReport:
    """Everything the page shows. A site that cannot be read or an engine that does not answer is said in the
    report (its estimate or preflight section) rather than stopping it."""
    m = vb.manifest
    steps = plan_steps(m.plan)
    suffix = "-with-texlive-full" if str(m.plan["from"]).endswith("-with-texlive-full") else ""
    bundle = {"bundle_id": m.bundle_id, "product": m.product_key, "edition": m.edition, "from": m.from_version,
              "to": m.to_version, "created": m.created, "expires": m.expires, "sequence": m.sequence,
              "key_id": m.key_id, "signer": vb.signer, "parts": len(m.parts), "payload_size": m.payload_size,
              "warnings": list(vb.warnings)}
    images = [{"ref": i.ref, "manifest_digest": i.manifest_digest, "id": i.id, "upstream_digest": i.upstream_digest,
               "platform": i.platform, "size": i.size, "layers": len(i.layers), "source": i.source} for i in m.images]
    rep = ChangeReport(iso(utc_now()), str(root), bundle, steps, {s.id: describe(s, suffix) for s in steps}, images)
    rep.rehearsal, path, skipped = latest_record(root, m.bundle_id)
    rep.rehearsal_path = path.name if path else None
    if client is None:
        rep.estimate_error = rep.preflight_error = client_error or "the engine does not answer"
    else:
        try:
            facts = read_site(root, cfg, client, backup_dir)
            rep.estimate = estimate_plan(m, steps, facts, rep.rehearsal, rep.rehearsal_path)
            rep.estimate.notes += skipped
        except AirgapError as err:
            rep.estimate_error = f"{err.message} ({err.hint})" if err.hint else err.message
        try:
            run_preflight(rep, root, vb, client)
        except AirgapError as err:
            rep.preflight_error = err.message
    rep.risks = plan_risks(cfg, steps) + site_risks(rep)
    rep.rollback = rollback_points(root, cfg, steps)
    return rep


# --- rendering ---------------------------------------------------------------------------------------------
def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~>])")


def md(value: object) -> str:
    """Text for a Markdown table cell or line: HTML escaped, Markdown's active characters backslashed, one line."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", text)


def _size(n: float | None) -> str:
    return "unknown" if n is None else human_size(n)


def rows(rep: ChangeReport) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Each table of the page as (header, rows of plain text), shared by both renderings."""
    t: dict[str, tuple[list[str], list[list[str]]]] = {}
    b = rep.bundle
    t["summary"] = (["item", "value"], [
        ["bundle", f"{b['bundle_id']} ({b['product']}, sequence {b['sequence']})"],
        ["upgrade", f"{b['from']} -> {b['to']}"], ["signed by", f"{b['key_id']} ({b['signer']})"],
        ["created / expires", f"{b['created']} / {b['expires']}"],
        ["payload", f"{human_size(b['payload_size'])} in {b['parts']} part(s)"],
        ["Toolkit", rep.toolkit], ["report made", rep.generated]]
        + [["bundle warning", w] for w in b["warnings"]])
    t["steps"] = (["#", "step", "kind", "what", "images", "actions"],
                  [[str(i), s.id, s.kind, s.description, ", ".join(s.images) or "-", "; ".join(rep.actions[s.id])]
                   for i, s in enumerate(rep.steps, 1)])
    t["images"] = (["image", "manifest digest", "config digest (image ID)", "upstream digest", "platform", "size"],
                   [[i["ref"], i["manifest_digest"], i["id"], i["upstream_digest"] or "-", i["platform"],
                     f"{human_size(i['size'])} ({i['size']:,} bytes, {i['layers']} layers)"] for i in rep.images])
    est = rep.estimate
    if est is not None:
        t["estimate"] = (["step", "downtime", "how", "disk", "how", "rehearsed"], [
            [s.id, show_seconds(s.downtime.value), s.downtime.basis + (f" [{s.downtime.rate}]" if s.downtime.rate else ""),
             _size(s.disk.value) if s.disk else "-",
             (s.disk.basis + (f" [{s.disk.rate}]" if s.disk.rate else "")) if s.disk else "-",
             show_seconds(s.rehearsed) if s.rehearsed is not None else "-"] for s in est.steps])
        f = est.site
        t["site"] = (["measured", "value"], [
            *[[f"{p.label} ({p.path})", f"{human_size(p.bytes)}, {p.files:,} files"] for p in f.paths.values()],
            *([["MongoDB", ", ".join(f"{v:,} {k}" for k, v in f.counts.items()) + f" ({f.counts_via})"]]
              if f.counts else []),
            *([["Redis", f"{f.redis_keys:,} keys, used_memory {_size(f.redis_memory)} ({f.redis_via})"]]
              if f.redis_keys is not None else []),
            ["total downtime", show_seconds(est.downtime_seconds)
             + (" + steps with no figure" if any(s.downtime.value is None for s in est.steps) else "")],
            ["backups", f"{human_size(est.backup_disk_bytes)} in {f.backup_dir} ({_size(f.backup_free)} free)"],
            ["migrations beside the data", f"{human_size(est.migration_disk_bytes)} ({_size(f.data_free)} free)"]])
        t["rates"] = (["rate", "value", "kind", "source", "sentence"],
                      [[r.key, show_rate(r), r.kind, r.source, r.sentence] for r in est.rates.values()])
    rec = rep.rehearsal
    if rec is not None:
        t["rehearsal"] = (["step", "status", "seconds"],
                          [["fresh backup of the real site", "done" if rec.backup_seconds is not None else "-",
                            f"{rec.backup_seconds or 0:.1f}"],
                           *[[s.id, s.status, f"{s.seconds:.1f}"] for s in rec.steps],
                           ["final health check", "done" if rec.health_seconds is not None else "-",
                            f"{rec.health_seconds or 0:.1f}"],
                           ["total", "ok" if rec.ok else "FAILED", f"{rec.total_seconds:.1f}"]])
    t["risks"] = (["risk", "source"], [[r, s] for r, s in rep.risks])
    t["rollback"] = (["backup step", "keeps", "a rollback to it undoes", "major", "how"],
                     [[p["step"], p["keeps"], p["undoes"], p["major"], p["command"]] for p in rep.rollback])
    return t


def _paragraphs(rep: ChangeReport) -> dict[str, list[str]]:
    """The plain sentences of each section (before or instead of its tables)."""
    rec = rep.rehearsal
    p: dict[str, list[str]] = {
        "Estimates": ([f"The site could not be read: {rep.estimate_error}"] if rep.estimate is None else
                      [f"Not measured or estimated: {x}" for x in [*rep.estimate.site.unmeasured,
                                                                 *rep.estimate.unestimated]]
                      + [f"Note: {n}" for n in rep.estimate.notes]),
        "Rehearsal": (["No rehearsal of this bundle is recorded: run overleaf-import rehearse first."] if rec is None
                      else [f"Record {rep.rehearsal_path}: started {rec.started}, finished {rec.finished or '-'}, "
                            f"sandbox {rec.sandbox}" + (f"; error: {rec.error}" if rec.error else "")]),
        "Preflight": ([f"The preflight could not run: {rep.preflight_error}"] if rep.preflight_error else
                      ["No problem found: the upgrade would start."] if not rep.problems else
                      [f"Problem: {x}" for x in rep.problems]) + [f"Checked: {x}" for x in rep.facts],
    }
    return p


CSS = """
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; margin: 0; color: #1b1b1b; background: #fff; }
header { background: #1f3a5f; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px 0; font-size: 26px; }
header p { margin: 0; font-size: 14px; }
main { padding: 8px 28px 40px 28px; }
h2 { border-bottom: 3px solid #1f3a5f; padding-bottom: 4px; margin-top: 28px; font-size: 20px; color: #1f3a5f; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 12px 0; font-size: 13px; }
th { background: #dfe7f1; text-align: left; padding: 5px 7px; border: 1px solid #9fb3c8; }
td { padding: 4px 7px; border: 1px solid #c9d4e0; vertical-align: top; overflow-wrap: break-word; }
table.images td, table.rollback td { word-break: break-all; }
tr:nth-child(even) td { background: #f5f8fb; }
td.num { text-align: right; white-space: nowrap; }
p.note { margin: 4px 0; font-size: 13px; }
p.problem { color: #8a1c1c; font-weight: bold; }
code { font-family: "DejaVu Sans Mono", monospace; font-size: 12px; }
"""


def _html_table(header: list[str], body: list[list[str]], cls: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    lines = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in body)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>'


def render_html(rep: ChangeReport) -> str:
    """The page: one HTML file, inline CSS, no script, no external resource; every value escaped."""
    t, para = rows(rep), _paragraphs(rep)
    b = rep.bundle
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Change report: Overleaf {_e(b['from'])} to {_e(b['to'])}</title>",
             f"<style>{CSS}</style></head><body>",
             f"<header><h1>Overleaf upgrade {_e(b['from'])} &rarr; {_e(b['to'])}</h1>"
             f"<p>Change report for bundle {_e(b['bundle_id'])} on {_e(rep.toolkit)}, made {_e(rep.generated)}</p>"
             "</header><main>"]

    def section(title: str, *tables: str) -> None:
        slug = title.lower().replace(" ", "-")
        body = "".join(f'<p class="note{" problem" if x.startswith("Problem:") else ""}">{_e(x)}</p>'
                       for x in para.get(title, []))
        parts.append(f'<section id="{slug}"><h2>{_e(title)}</h2>{"".join(tables)}{body}</section>')

    section("Summary", _html_table(*t["summary"], "summary"))
    section("Plan steps", _html_table(*t["steps"], "steps"))
    section("Images", _html_table(*t["images"], "images"))
    section("Estimates", *[_html_table(*t[k], k) for k in ("estimate", "site", "rates") if k in t])
    section("Rehearsal", *([_html_table(*t["rehearsal"], "rehearsal")] if "rehearsal" in t else []))
    section("Preflight")
    section("Risks", _html_table(*t["risks"], "risks"))
    section("Rollback points", _html_table(*t["rollback"], "rollback"))
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(md(h) for h in header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(md(c) for c in r) + " |" for r in body], ""]


def render_markdown(rep: ChangeReport) -> str:
    """The same page in Markdown (tables; every value escaped)."""
    t, para = rows(rep), _paragraphs(rep)
    b = rep.bundle
    out = [f"# Overleaf upgrade {md(b['from'])} -> {md(b['to'])}", "",
           f"Change report for bundle {md(b['bundle_id'])} on {md(rep.toolkit)}, made {md(rep.generated)}", ""]
    keys = {"Summary": ["summary"], "Plan steps": ["steps"], "Images": ["images"],
            "Estimates": ["estimate", "site", "rates"], "Rehearsal": ["rehearsal"], "Preflight": [],
            "Risks": ["risks"], "Rollback points": ["rollback"]}
    for title in SECTIONS:
        out += [f"## {title}", ""]
        for k in keys[title]:
            if k in t:
                out += _md_table(*t[k])
        out += [f"- {md(x)}" for x in para.get(title, [])]
        out.append("")
    return "\n".join(out)


def write_report(rep: ChangeReport, *, html: Path | None = None, markdown: Path | None = None) -> list[Path]:
    """Write the asked renderings (atomically); the paths written."""
    written = []
    for path, render in ((html, render_html), (markdown, render_markdown)):
        if path is not None:
            atomic_write_bytes(Path(path), render(rep).encode("utf-8"))
            written.append(Path(path))
    return written
