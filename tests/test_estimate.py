"""`overleaf-import estimate` (issue 16 part 1): figures from a seeded site whose counts are known.

The engine tests use a real bundle (tests/support/real_bundles.py) for 5.0.1 -> 5.0.3 (CE, MongoDB 5.0,
Redis 6.2: a backup, the doc-version recovery, the app) and the Toolkit stand-in running 5.0.1 on a real
engine. The stand-ins' MongoDB counts one document per line of its collection files and its Redis one key
per line of ``standin-keys`` (tests/support/overleaf_images.py), so the test knows every count, and the
filestore's bytes, before the estimate reads them. The pure tests check the arithmetic of
:func:`importer.upgrade.estimate.estimate_plan` on a plan with every step kind.
"""
from __future__ import annotations

import html
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from importer.upgrade.base import plan_steps
from importer.upgrade.estimate import RATES, estimate_plan, text_lines
from importer.upgrade.rehearsal_record import RehearsalRecord, StepTiming
from importer.upgrade.site import PathSize, SiteFacts
from manifests.catalog import load_catalog
from manifests.planner import PlanRequest, make_plan
from tests.support.engine import classic_compose
from tests.support.overleaf_images import seed_overleaf_path
from tests.support.real_bundles import RealBundle, build_upgrade_bundle, clear_stale_tags, make_release_key
from tests.support.toolkit import make_toolkit, remove_toolkit_containers, toolkit_checksums

FROM, TO = "5.0.1", "5.0.3"
STEP_IDS = ["01-backup-point", "02-migration-doc_version_recovery", "03-app-5.0.3"]
SEEDED = {"projects": 25_000, "docs": 61_234, "users": 321, "files": 4_321}
USER_FILES = {"p1_f1": 1 << 20, "p1_f2": 2 << 20, "p2_f1": 12_345}
REDIS_KEYS = [f"DocVersion:{i:04d}" for i in range(17)]
COMMANDS_LOG = "data/mongo/commands.log"   # the mongo stand-in logs every shell command it answers


@pytest.fixture(scope="session")
def estimate_bundle(engine, registry, tmp_path_factory) -> RealBundle:
    key = make_release_key(tmp_path_factory.mktemp("estimate-key"))
    out = tmp_path_factory.mktemp("estimate-bundle") / "bundle"
    return build_upgrade_bundle(engine, registry, key, out, FROM, TO, mongo="5.0", redis="6.2")


def seed_site(tk) -> None:
    """The known data: collections, Redis keys and the filestore's user_files."""
    collections = tk.data("mongo") / "collections"
    collections.mkdir()
    for name, n in (("projects", SEEDED["projects"]), ("docs", SEEDED["docs"]), ("users", SEEDED["users"]),
                    ("fileRefs", SEEDED["files"])):
        (collections / name).write_text("".join(f'{{"_id":"{name}{i}"}}\n' for i in range(n)))
    (tk.data("redis") / "standin-keys").write_text("".join(k + "\n" for k in REDIS_KEYS))
    files = tk.data() / "user_files"
    files.mkdir()
    for name, size in USER_FILES.items():
        (files / name).write_bytes(os.urandom(size))


@pytest.fixture
def site(offline_engine, estimate_bundle, tmp_path):
    """The 5.0.1 site running (the Toolkit refuses the retracted version, so it is started as bin/upgrade
    would: with OVERLEAF_SKIP_RETRACTION_CHECK), its data seeded; the importer's environment."""
    compose = classic_compose()
    remove_toolkit_containers(offline_engine)
    clear_stale_tags(offline_engine, estimate_bundle)
    seed_overleaf_path(offline_engine, [FROM], mongo=["5.0"], redis=["6.2"])
    tk = make_toolkit(tmp_path, FROM, engine=offline_engine.env(compose=compose), mongo="5.0", mongo_legacy=False,
                      redis="6.2")
    seed_site(tk)
    subprocess.run([str(tk.root / "bin" / "up"), "-d"], env={**tk.env, "OVERLEAF_SKIP_RETRACTION_CHECK": FROM},
                   cwd=tk.root, check=True, capture_output=True)
    tk.wait_healthy()
    env = {**offline_engine.env(compose=compose), "OVERLEAF_AIRGAP_STATE": str(tmp_path / "state.json"),
           "OVERLEAF_AIRGAP_TRUST_DIR": str(tmp_path / "no-trust-dir")}
    yield tk, env
    tk.down()


def importer(env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "importer.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def estimate(env, bundle: RealBundle, tk, *extra):
    return importer(env, *extra, "estimate", str(bundle.path), "--toolkit", os.fspath(tk), "--trust", str(bundle.pub))


def walk_bytes(*folders: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for folder in folders for d, _s, fs in os.walk(folder) for f in fs)


def test_the_estimate_reads_the_seeded_counts_and_its_figures_follow_from_them(site, estimate_bundle):
    tk, env = site
    before = {k: v for k, v in toolkit_checksums(tk.root).items() if k != COMMANDS_LOG}
    out = estimate(env, estimate_bundle, tk, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    facts = doc["site"]
    # what the site holds, exactly as seeded
    assert facts["counts"] == SEEDED
    assert "docker exec mongo mongo" in facts["counts_via"]          # MongoDB 5.0: the legacy shell, as the Toolkit
    assert facts["redis_keys"] == len(REDIS_KEYS)
    assert facts["redis_memory"] == (tk.data("redis") / "standin-keys").stat().st_size
    assert facts["user_files"]["bytes"] == sum(USER_FILES.values()) and facts["user_files"]["files"] == 3
    sizes = {label: p["bytes"] for label, p in facts["paths"].items()}
    assert set(sizes) >= {"config", "overleaf", "mongo", "redis"}
    assert sizes["mongo"] >= sum((tk.data("mongo") / "collections" / n).stat().st_size
                                 for n in ("projects", "docs", "users", "fileRefs"))
    own = walk_bytes(tk.config, tk.data(), tk.data("mongo"), tk.data("redis"), tk.data("git-bridge"))
    assert abs(own - facts["backup_bytes"]) < 64 * 1024, (own, facts["backup_bytes"])
    assert facts["backup_bytes"] == sum(sizes.values())
    # every figure follows from those facts and the rate it names
    steps = {s["id"]: s for s in doc["steps"]}
    assert list(steps) == STEP_IDS
    recovery = steps["02-migration-doc_version_recovery"]["downtime"]
    assert recovery["rate"] == "doc_version_recovery"
    assert recovery["value"] == pytest.approx(SEEDED["projects"] / (10_000 / 60)) == pytest.approx(150.0)
    backup = steps["01-backup-point"]
    assert backup["disk"]["value"] == facts["backup_bytes"] and backup["disk"]["rate"] == "backup_disk"
    assert backup["downtime"]["value"] == pytest.approx(facts["backup_bytes"] / 100e6)
    assert steps["03-app-5.0.3"]["downtime"] == {"value": 120.0, "basis": "120 s per app step", "rate": "app_start"}
    assert steps["03-app-5.0.3"]["disk"] is None
    totals = doc["totals"]
    assert totals["downtime_seconds"] == pytest.approx(150.0 + 120.0 + facts["backup_bytes"] / 100e6, abs=0.1)
    assert totals["backup_disk_bytes"] == facts["backup_bytes"]
    assert totals["backup_free_bytes"] > 0 and facts["backup_dir"] == str(tk.root.parent / "toolkit-backups")
    # the rates used, each with its source sentence
    rates = doc["rates"]
    assert rates["doc_version_recovery"]["sentence"] == "Schedule downtime (about 10k small projects per minute)."
    assert "docs/overleaf-facts.md §2.6" in rates["doc_version_recovery"]["source"]
    assert rates["backup_copy"]["kind"] == "assumed" and rates["backup_disk"]["kind"] == "documented"
    assert any("doc_version_recovery: disk" in x for x in doc["unestimated"])
    # read only: nothing of the Toolkit changed but the stand-in's own log of the commands it answered
    after = {k: v for k, v in toolkit_checksums(tk.root).items() if k != COMMANDS_LOG}
    assert after == before
    assert "airgapCounts" in (tk.root / COMMANDS_LOG).read_text()
    # the text form shows the same figures with their rates
    text = estimate(env, estimate_bundle, tk)
    assert text.returncode == 0, text.stdout + text.stderr
    assert "2 min 30 s" in text.stdout and "25,000 projects / 10,000 projects per minute" in text.stdout
    assert "Schedule downtime (about 10k small projects per minute)." in text.stdout
    assert "Could not measure or estimate:" in text.stdout and "25,000 projects" in text.stdout


def test_a_stopped_mongodb_exits_34_and_changes_nothing(site, estimate_bundle):
    tk, env = site
    subprocess.run(["docker", "stop", "-t", "1", "mongo"], env=env, check=True, capture_output=True)
    before = toolkit_checksums(tk.root)
    out = estimate(env, estimate_bundle, tk, "--json")
    assert out.returncode == 34, out.stdout + out.stderr
    err = json.loads(out.stdout)
    assert err["exit_code"] == 34 and "MongoDB does not answer" in err["error"] and "bin/up -d" in err["hint"]
    assert "Traceback" not in out.stderr
    assert toolkit_checksums(tk.root) == before                   # not even a log line
    assert tk.states()["mongo"].status == "exited"                # and nothing was started again
    text = estimate(env, estimate_bundle, tk)
    assert text.returncode == 34 and "error: the site's MongoDB does not answer" in text.stderr
    # MongoDB back, Redis stopped: the same refusal for Redis
    subprocess.run(["docker", "start", "mongo"], env=env, check=True, capture_output=True)
    deadline = time.monotonic() + 30
    while subprocess.run(["docker", "exec", "mongo", "mongo", "--quiet", "--eval", "db.adminCommand({ ping: 1 })"],
                         env=env, capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "the mongo stand-in did not come back"
        time.sleep(0.5)
    subprocess.run(["docker", "stop", "-t", "1", "redis"], env=env, check=True, capture_output=True)
    out = estimate(env, estimate_bundle, tk, "--json")
    assert out.returncode == 34, out.stdout + out.stderr
    assert "Redis does not answer" in json.loads(out.stdout)["error"]
    assert tk.states()["redis"].status == "exited"


def test_an_unknown_bundle_is_not_read_before_its_signature(site, estimate_bundle, tmp_path):
    """Nothing unverified is parsed: a bundle whose manifest was altered is refused (exit 11) before the site is
    read (the mongo stand-in logs no count)."""
    tk, env = site
    forged = tmp_path / "forged"
    subprocess.run(["cp", "-r", str(estimate_bundle.path), str(forged)], check=True)
    manifest = json.loads((forged / "manifest.json").read_text())
    manifest["plan"]["steps"][1]["description"] = "<script>alert(1)</script>"
    (forged / "manifest.json").write_text(json.dumps(manifest))
    log_before = (tk.root / COMMANDS_LOG).read_text()
    out = importer(env, "--json", "estimate", str(forged), "--toolkit", os.fspath(tk), "--trust",
                   str(estimate_bundle.pub))
    assert out.returncode == 11, out.stdout + out.stderr
    assert (tk.root / COMMANDS_LOG).read_text() == log_before


# --- the arithmetic, without an engine ---------------------------------------------------------------------
def facts_for(version: str = "5.5.8", **kw) -> SiteFacts:
    paths = {"config": PathSize("config", "/t/config", 4_000, 3, True),
             "overleaf": PathSize("overleaf", "/t/data/overleaf", 6_000_000_000, 900, True),
             "mongo": PathSize("mongo", "/t/data/mongo", 3_000_000_000, 50, True),
             "redis": PathSize("redis", "/t/data/redis", 96_000, 2, True)}
    base = dict(toolkit="/t", version=version, edition="ce", mongo_version="6.0", redis_version="7.4", paths=paths,
                user_files=PathSize("user_files", "/t/data/overleaf/user_files", 5_000_000_000, 800, True),
                counts={"projects": 1_200, "docs": 9_000, "users": 40, "files": 800}, counts_via="test",
                redis_keys=10, redis_memory=2048, redis_via="test", backup_dir="/t-backups", backup_free=10**12,
                data_free=10**11)
    base.update(kw)
    return SiteFacts(**base)


class Manifest:
    """Just what estimate_plan reads of a verified manifest."""

    def __init__(self, plan: dict) -> None:
        self.plan, self.bundle_id = plan, "b-test"


def test_figures_of_every_step_kind_follow_from_the_facts_and_name_their_rate():
    plan = make_plan(load_catalog(overlay=False), PlanRequest("5.5.8", "6.2.2", mongo="6.0", redis="7.4")).to_dict()
    steps = plan_steps(plan)
    facts = facts_for()
    est = estimate_plan(Manifest(plan), steps, facts)
    by_kind = {}
    for s in est.steps:
        by_kind.setdefault(s.kind, []).append(s)
    data = 6_000_000_000 + 3_000_000_000 + 96_000 + 4_000
    for b in by_kind["backup"]:
        assert b.disk.value == data and b.downtime.value == pytest.approx(data / RATES["backup_copy"].value)
    migration = by_kind["migration"][0]
    assert migration.id.endswith("binary_files_migration")
    assert migration.downtime.value is None and "§2.7 gives no rate" in migration.downtime.basis
    assert migration.disk.value == 5_000_000_000 and migration.disk.rate == "binary_files_disk"
    assert all(m.downtime.value == RATES["mongo_hop"].value for m in by_kind["mongo"])
    assert by_kind["config"][0].downtime.value == RATES["config_edit"].value
    assert est.backup_disk_bytes == data * len(by_kind["backup"]) and est.migration_disk_bytes == 5_000_000_000
    assert est.downtime_seconds == pytest.approx(sum(s.downtime.value for s in est.steps if s.downtime.value))
    assert [x for x in est.unestimated if "binary_files_migration: downtime" in x]
    lines = "\n".join(text_lines(est))
    for rate in est.rates.values():
        assert rate.sentence in lines
    assert "binary_files_migration" in lines.split("Could not measure or estimate:")[1]
    assert not est.notes   # the site is at the plan's start


def test_a_rehearsal_of_the_same_bundle_gives_the_measured_backup_rate_and_timings():
    plan = make_plan(load_catalog(overlay=False), PlanRequest("5.0.1", "5.0.3", mongo="5.0", redis="6.2")).to_dict()
    steps = plan_steps(plan)
    record = RehearsalRecord.new("b-test", "5.0.1", "5.0.3", sandbox="/t.rehearsal")
    record.backup_bytes, record.backup_seconds, record.ok = 400_000_000, 2.0, True
    for s, seconds in zip(steps, (3.0, 44.0, 61.5)):
        record.add_step(StepTiming(s.id, s.kind, s.description, "done", seconds))
    est = estimate_plan(Manifest(plan), steps, facts_for("5.0.1"), record, "20261206t223000.json")
    assert est.rates["backup_copy"].kind == "measured" and est.rates["backup_copy"].value == 200_000_000
    backup = est.steps[0]
    assert backup.downtime.value == pytest.approx(backup.disk.value / 200_000_000)
    assert [s.rehearsed for s in est.steps] == [3.0, 44.0, 61.5]
    recovery = est.steps[1]
    assert recovery.downtime.value == pytest.approx(1_200 / (10_000 / 60))   # the documented rate still applies
    assert "rehearsal record 20261206t223000.json" in "\n".join(text_lines(est))
    wrong = estimate_plan(Manifest(plan), steps, facts_for("5.0.2"))
    assert wrong.notes and "config/version is 5.0.2" in wrong.notes[0]


# --- the change report (issue 16 part 3), rendered by a real headless Chromium -------------------------------
HEADINGS = ["Summary", "Plan steps", "Images", "Estimates", "Rehearsal", "Preflight", "Risks", "Rollback points"]
HOSTILE = "<b>sandbox</b><img src=x onerror=alert(1)>"
HEADER_RGB = (0x1F, 0x3A, 0x5F)    # the page's header colour (importer/upgrade/report.py CSS)


class Dom(HTMLParser):
    """Headings, table rows (cell texts) and element names of a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.h2, self.rows, self.tags, self.text = [], [], set(), []
        self._in, self._cell, self._row = None, None, None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag in ("h1", "h2"):
            self._in = tag
            self.text = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "h2" and self._in == "h2":
            self.h2.append("".join(self.text).strip())
            self._in = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in:
            self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def chromium(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed (tests/setup.sh installs it)"
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=180)


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB or RGBA PNG, decoded with zlib and struct only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    out, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif f == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 0xFF
        elif f == 4:
            for i in range(stride):
                a, b, c = (line[i - bpp] if i >= bpp else 0), prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out.append(bytes(line))
        prev = line
    if bpp == 3:
        return width, height, out
    return width, height, [b"".join(r[i:i + 3] for i in range(0, stride, 4)) for r in out]


def test_the_change_report_renders_in_a_real_browser_with_every_section(site, estimate_bundle, tmp_path):
    tk, env = site
    plan = estimate_bundle.plan
    record = RehearsalRecord.new(estimate_bundle.manifest.bundle_id, FROM, TO, sandbox=f"/srv/{HOSTILE}")
    record.ok, record.backup_seconds, record.backup_bytes, record.health_seconds = True, 4.0, 50_000_000, 2.5
    for step, seconds in zip(plan["steps"], (4.5, 97.0, 33.25)):
        record.add_step(StepTiming(step["id"], step["kind"], step["description"], "done", seconds))
    record.save(tk.root)
    before = {k: v for k, v in toolkit_checksums(tk.root).items() if k != COMMANDS_LOG}
    page, notes = tmp_path / "change.html", tmp_path / "change.md"
    out = importer(env, "--json", "report", str(estimate_bundle.path), "--toolkit", os.fspath(tk), "--trust",
                   str(estimate_bundle.pub), "--html", str(page), "--markdown", str(notes))
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["steps"] == STEP_IDS and doc["rollback_points"] == ["01-backup-point"] and doc["problems"] == []
    assert {k: v for k, v in toolkit_checksums(tk.root).items() if k != COMMANDS_LOG} == before   # reads only
    text = page.read_text()
    # self-contained: no script, no link, no resource from anywhere; the hostile text only escaped
    for banned in ("<script", "<link", "src=", "@import", "url(", "http://", "https://"):
        assert banned not in text.replace("&lt;img src=x", ""), banned
    assert HOSTILE not in text and html.escape(HOSTILE) in text
    # the DOM Chromium built from it
    dump = chromium("--dump-dom", page.as_uri())
    assert dump.returncode == 0, dump.stderr[-2000:]
    dom = Dom()
    dom.feed(dump.stdout)
    assert dom.h2 == HEADINGS
    assert "img" not in dom.tags and "b" not in dom.tags and "script" not in dom.tags
    cells = {r[0]: r for r in dom.rows if r}
    assert [r[1] for r in dom.rows if len(r) == 6 and r[0] in ("1", "2", "3")] == STEP_IDS     # plan steps
    for image in estimate_bundle.manifest.images:                                               # images
        row = cells[image.ref]
        assert row[1] == image.manifest_digest and row[2] == image.id and f"{image.size:,} bytes" in row[5]
    est = [r for r in dom.rows if len(r) == 6 and r[0] == "02-migration-doc_version_recovery"][0]   # estimates
    assert est[1] == "2 min 30 s" and "25,000 projects / 10,000 projects per minute" in est[2]
    assert est[5] == "1 min 37 s"                                                                # rehearsed
    assert cells["doc_version_recovery"][4] == "Schedule downtime (about 10k small projects per minute)."
    assert [r for r in dom.rows if r[:3] == ["03-app-5.0.3", "done", "33.2"]]                   # rehearsal
    assert cells["total"][1:] == ["ok", f"{record.total_seconds:.1f}"]
    assert any("Never downgrade" in r[1] or "disconnect users" in r[1] for r in dom.rows if len(r) == 2)
    assert cells["01-backup-point"][1].startswith("Overleaf 5.0.1, MongoDB 5.0, Redis 6.2")    # rollback point
    assert "No problem found: the upgrade would start." in dump.stdout
    assert f"sandbox /srv/{HOSTILE}" in html.unescape(dump.stdout.split("Record ", 1)[1].split("</p>")[0])
    # a screenshot of it that is not blank: the header's colour and many other pixels
    shot = tmp_path / "out.png"
    res = chromium("--screenshot=" + str(shot), "--window-size=1200,2000", page.as_uri())
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1200, 2000)
    header = sum(1 for r in pixels[:80] for i in range(0, len(r), 3) if r[i:i + 3] == bytes(HEADER_RGB))
    assert header > width * 40, header
    white = bytes((255, 255, 255))
    inked = sum(1 for r in pixels for i in range(0, len(r), 3) if r[i:i + 3] != white)
    assert inked > 0.05 * width * height, inked
    # the Markdown form: the same sections and rows, the hostile text escaped
    md = notes.read_text()
    assert [line[3:] for line in md.splitlines() if line.startswith("## ")] == HEADINGS
    assert "| 2 | 02-migration-doc\\_version\\_recovery | migration |" in md
    assert HOSTILE not in md and "&lt;b&gt;sandbox&lt;/b&gt;" in md


def test_a_report_without_a_file_to_write_is_a_usage_error(site, estimate_bundle):
    tk, env = site
    out = importer(env, "--json", "report", str(estimate_bundle.path), "--toolkit", os.fspath(tk), "--trust",
                   str(estimate_bundle.pub))
    assert out.returncode == 2 and "--html" in json.loads(out.stdout)["error"]


def test_an_external_mongodb_is_counted_through_the_app_and_mongo_url(offline_engine, estimate_bundle, tmp_path):
    """MONGO_ENABLED=false: the Toolkit runs no mongo container; the counts come from a one-off app container
    connecting to MONGO_URL (the stand-in app's node counts the external stand-in's collection files)."""
    env = offline_engine.env(compose=classic_compose())
    remove_toolkit_containers(offline_engine)
    clear_stale_tags(offline_engine, estimate_bundle)
    seed_overleaf_path(offline_engine, [FROM], mongo=["5.0"], redis=["6.2"])
    project = "overleaf-estext"
    subprocess.run(["docker", "network", "create", "--label", "com.docker.compose.network=default",
                    "--label", f"com.docker.compose.project={project}", f"{project}_default"], env=env,
                   capture_output=True)
    ext = tmp_path / "ext-mongo-data"
    (ext / "collections").mkdir(parents=True)
    for name, n in (("projects", 12), ("docs", 34), ("users", 5), ("fileRefs", 6)):
        (ext / "collections" / name).write_text("".join(f"{name}{i}\n" for i in range(n)))
    tk = make_toolkit(tmp_path, FROM, engine=env, mongo="5.0", redis="6.2", project_name=project,
                      rc={"MONGO_ENABLED": "false"}, variables={"OVERLEAF_MONGO_URL": "mongodb://ext-mongo/sharelatex"})
    try:
        subprocess.run(["docker", "run", "-d", "--name", "ext-mongo", "--network", f"{project}_default",
                        "-v", f"{ext}:/data/db", "mongo:5.0"], env=env, check=True, capture_output=True)
        subprocess.run([str(tk.root / "bin" / "docker-compose"), "up", "-d", "redis"], cwd=tk.root,
                       env={**env, "OVERLEAF_SKIP_RETRACTION_CHECK": FROM}, check=True, capture_output=True)
        assert "mongo" not in tk.states()
        imp = {**env, "OVERLEAF_AIRGAP_STATE": str(tmp_path / "state.json"),
               "OVERLEAF_AIRGAP_TRUST_DIR": str(tmp_path / "no-trust-dir")}
        out = estimate(imp, estimate_bundle, tk, "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        doc = json.loads(out.stdout)
        assert doc["site"]["counts"] == {"projects": 12, "docs": 34, "users": 5, "files": 6}
        assert "MONGO_URL" in doc["site"]["counts_via"] and "mongo" not in doc["site"]["paths"]
        assert any("MongoDB is external" in x for x in doc["unmeasured"])
        assert doc["steps"][1]["downtime"]["value"] == pytest.approx(12 / (10_000 / 60))
        subprocess.run(["docker", "stop", "-t", "1", "ext-mongo"], env=env, check=True, capture_output=True)
        out = estimate(imp, estimate_bundle, tk, "--json")
        assert out.returncode == 34, out.stdout + out.stderr
        assert "external MongoDB (MONGO_URL) does not answer" in json.loads(out.stdout)["error"]
    finally:
        tk.down()
        subprocess.run(["docker", "rm", "-f", "-v", "ext-mongo"], env=env, capture_output=True)
        subprocess.run(["docker", "network", "rm", f"{project}_default"], env=env, capture_output=True)
