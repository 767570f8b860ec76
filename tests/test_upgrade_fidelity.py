"""Upgrade fidelity on real Toolkit configurations (issue 11), without containers: the Toolkit stand-in's
own checks (``bin/docker-compose config``) and the importer's preflight, config edits, backups and Toolkit
code update, on stand-in copies made by ``make_toolkit``. Engine scenarios: tests/test_upgrade_scenarios.py.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from importer.upgrade.backup import check_record, create_backup, load_record, restore_backup
from importer.upgrade import update_toolkit_code
from importer.upgrade.grammar import ConfigValueError, check_config_value
from importer.upgrade.journal import Audit, Journal
from importer.upgrade.toolkit import Toolkit as ImporterToolkit
from importer.upgrade.toolkit import capabilities
from importer.upgrade.steps import AppStep, MongoStep, StepBase
from importer.upgrade import (Context, UpgradeOptions, check_resume_plan, data_sources, describe,
                              preflight, rc_needs_rename, validate_plan)
from manifests.catalog import load_catalog
from manifests.errors import AirgapError, ManifestFormatError, ToolkitError
from manifests.planner import PlanRequest, make_plan
from manifests.toolkit_config import read_toolkit
from manifests.versions import AppVersion
from tests.support.toolkit import make_toolkit

CAT = load_catalog(overlay=False)


def plan_for(frm: str, to: str, **kw) -> dict:
    return make_plan(CAT, PlanRequest(frm, to, **kw)).to_dict()


def ctx_for(tk, said: list[str] | None = None, **opts) -> Context:
    out = said if said is not None else []
    return Context(Path(os.fspath(tk)), None, UpgradeOptions(yes=True, **opts), out.append, lambda q: False)


def everything_present(_ref: str) -> bool:
    return True


def compose_ok(tk) -> subprocess.CompletedProcess:
    return tk.compose("config", check=False)


# --- item 13: TEXMFVAR anywhere ----------------------------------------------------------------------

def test_texmfvar_in_a_comment_is_removed_by_the_rename(tmp_path):
    tk = make_toolkit(tmp_path, "4.2.9", variables={"# old setting: TEXMFVAR": "/var/lib/sharelatex/tmp/texmf-var"})
    (tk.config / "variables.env").write_text((tk.config / "variables.env").read_text()
                                             + "#TEXMFVAR=/var/lib/sharelatex/tmp/texmf-var\n")
    ImporterToolkit(tk.root).rename_sharelatex_vars()
    tk.set_version("5.5.8")
    out = compose_ok(tk)
    assert out.returncode == 0, out.stderr  # the stand-in, as the real Toolkit, refuses it anywhere
    assert "texmf-var" not in (tk.config / "variables.env").read_text()


def test_the_stand_in_refuses_texmfvar_in_a_comment(tmp_path):
    tk = make_toolkit(tmp_path, "5.5.8")
    (tk.config / "variables.env").write_text((tk.config / "variables.env").read_text()
                                             + "# TEXMFVAR=/var/lib/sharelatex/tmp/texmf-var\n")
    out = compose_ok(tk)
    assert out.returncode == 1 and "TEXMFVAR" in out.stderr


# --- item 4: no advice that breaks the Toolkit --------------------------------------------------------

def test_preflight_never_asks_a_4x_site_for_an_overleaf_secret(tmp_path):
    tk = make_toolkit(tmp_path, "4.2.9", mongo="5.0")
    (tk.data("mongo") / "fcv").write_text("5.0\n")
    said: list[str] = []
    problems = preflight(ctx_for(tk, said), plan_for("4.2.9", "6.2.2", mongo="5.0", redis="6.2"), None,
                         everything_present)
    assert not any("OVERLEAF_INVITE_TOKEN_SECRET" in p for p in problems), problems
    assert any("OVERLEAF_INVITE_TOKEN_SECRET" in s and "Do not add it now" in s for s in said)
    # what the old advice did: the Toolkit then refuses every command
    tk.set_variables(OVERLEAF_INVITE_TOKEN_SECRET="c2VjcmV0LXRoYXQtc3RheXMtc3RhYmxl")
    assert compose_ok(tk).returncode == 1
    tk.set_variables(OVERLEAF_INVITE_TOKEN_SECRET=None)
    with pytest.raises(ToolkitError, match="below 5.0"):
        ImporterToolkit(tk.root).set_env("OVERLEAF_INVITE_TOKEN_SECRET", "c2VjcmV0LXRoYXQtc3RheXMtc3RhYmxl")
    assert compose_ok(tk).returncode == 0


def test_preflight_reports_overleaf_text_below_5(tmp_path):
    tk = make_toolkit(tmp_path, "4.2.9")
    (tk.config / "variables.env").write_text((tk.config / "variables.env").read_text() + "# OVERLEAF_FOO later\n")
    (tk.data("mongo") / "x").write_text("x")
    assert compose_ok(tk).returncode == 1
    problems = preflight(ctx_for(tk), plan_for("4.2.9", "5.5.8", mongo="4.4", redis="6.2"), None, everything_present)
    assert any("OVERLEAF_ text" in p for p in problems), problems


def test_a_resume_after_the_rename_step_accepts_overleaf_names_below_5(tmp_path):
    """Killed right after the rename step (config/version still 4.2.9): the OVERLEAF_ names are the upgrade's
    own; --resume must go on to the 5.x step, not refuse (found by the kill test)."""
    tk = make_toolkit(tmp_path, "4.2.9", mongo="6.0", mongo_legacy=False)
    (tk.data("mongo") / "x").write_text("x")
    plan = plan_for("4.2.9", "5.5.8", mongo="6.0", redis="6.2")
    j = Journal.new(tk.root, "b", plan, "4.2.9")
    fresh = preflight(ctx_for(tk), plan, j, everything_present)
    ImporterToolkit(tk.root).rename_sharelatex_vars(["variables.env"])
    assert "OVERLEAF_APP_NAME" in tk.variables()
    assert any("OVERLEAF_ text" in p for p in preflight(ctx_for(tk), plan, None, everything_present))
    for s in plan["steps"]:
        j.steps[s["id"]]["status"] = "done"
        if s["kind"] == "config":
            break
    assert j.next_step()["kind"] == "app"
    resumed = preflight(ctx_for(tk), plan, j, everything_present)
    assert not any("OVERLEAF_ text" in p for p in resumed) and resumed == fresh, resumed


def test_a_5x_site_is_asked_for_the_secret(tmp_path):
    tk = make_toolkit(tmp_path, "6.1.2", mongo="8.0", mongo_legacy=False, redis="7.4")
    (tk.data("mongo") / "x").write_text("x")
    problems = preflight(ctx_for(tk), plan_for("6.1.2", "6.2.2", mongo="8.0", redis="7.4"), None, everything_present)
    assert any("OVERLEAF_INVITE_TOKEN_SECRET is not set" in p for p in problems)


# --- item 5: an old Toolkit -----------------------------------------------------------------------------

def make_old_toolkit(tmp_path, version: str, **kw):
    """A stand-in as a Toolkit from before the 2024 rc rename and the mongosh switch would be."""
    tk = make_toolkit(tmp_path, version, **kw)
    (tk.root / "bin" / "rename-rc-vars").unlink()
    for rel in ("lib/shared-functions.sh", "lib/docker-compose.mongo.yml", "bin/up", "bin/mongo"):
        p = tk.root / rel
        p.write_text(p.read_text().replace("$MONGOSH", "mongo").replace("${MONGOSH}", "mongo")
                     .replace("MONGOSH=mongosh", "MONGO_SHELL=mongo").replace("MONGOSH", "MONGO_SHELL"))
    return tk


def test_preflight_reports_what_an_old_toolkit_cannot_do(tmp_path):
    tk = make_old_toolkit(tmp_path, "4.2.9", rc_legacy=True, mongo="4.4")
    (tk.data("mongo") / "x").write_text("x")
    caps = capabilities(tk.root)
    assert not caps.mongosh and not caps.overleaf_rc_names and caps.compose_v2
    said: list[str] = []
    problems = preflight(ctx_for(tk, said), plan_for("4.2.9", "6.2.2", mongo="4.4", redis="6.2"), None,
                         everything_present)
    assert any("legacy `mongo` shell" in p for p in problems), problems
    assert any("predates the OVERLEAF_ names" in p for p in problems), problems
    assert any("the Toolkit's code can:" in s for s in said)
    assert not rc_needs_rename(tk.root)  # the old Toolkit reads SHARELATEX_ names: they stay
    ctx = ctx_for(tk)
    ctx.code_update_pending = True  # the bundle's Toolkit code goes in first
    problems = preflight(ctx, plan_for("4.2.9", "6.2.2", mongo="4.4", redis="6.2"), None, everything_present)
    assert not any("Toolkit's code" in p for p in problems), problems


# --- item 6: override file, app image, empty data paths ----------------------------------------------------

def test_override_file_and_empty_data_paths_are_reported(tmp_path):
    tk = make_toolkit(tmp_path, "5.5.8", mongo="6.0", mongo_legacy=False, redis="7.4")
    (tk.config / "docker-compose.override.yml").write_text(
        "services:\n  sharelatex:\n    image: sharelatex/sharelatex:5.5.8-custom\n"
        "  mongo:\n    volumes:\n      - mongo-data:/data/db\nvolumes:\n  mongo-data: {}\n")
    out = tk.compose("config")  # the stand-in uses the override file, as the Toolkit does
    assert "sharelatex/sharelatex:5.5.8-custom" in out.stdout
    problems = preflight(ctx_for(tk), plan_for("5.5.8", "6.2.2", mongo="6.0", redis="7.4"), None, everything_present)
    assert any("sets the sharelatex image" in p for p in problems), problems
    assert any("named volume 'mongo-data'" in p for p in problems), problems
    assert any("MONGO_DATA_PATH" in p and "empty" in p for p in problems), problems


def test_health_expects_the_app_image_of_config_version(tmp_path):
    tk = make_toolkit(tmp_path, "3.5.13", edition="pro", git_bridge=True, rc={"OVERLEAF_IMAGE_NAME": "reg.example/ol"})
    plan = plan_for("3.5.13", "3.5.13", edition="pro", mongo="4.4", redis="6.2")
    stack = StepBase(ctx_for(tk), Journal.new(tk.root, "b", plan, "3.5.13"), Audit(tk.root, "b")).expected_stack()
    assert stack["sharelatex"] == "reg.example/ol:3.5.13"
    assert "git-bridge" not in stack  # item 15: the Toolkit forces git-bridge off below 4.0


# --- item 15: the split MONGO_VERSION form; the catalog for 2.0.x --------------------------------------------

def test_a_mongo_switch_adopts_the_split_form(tmp_path):
    tk = make_toolkit(tmp_path, "4.2.9", mongo="4.4", mongo_legacy=True)
    plan = plan_for("4.2.9", "5.0.7", mongo="4.4", redis="6.2")
    up = MongoStep(ctx_for(tk), Journal.new(tk.root, "b", plan, "4.2.9"), Audit(tk.root, "b"))
    up.set_mongo_version(read_toolkit(tk.root), "5.0")
    rc = tk.rc()
    assert rc["MONGO_IMAGE"] == "mongo" and rc["MONGO_VERSION"] == "5.0"
    assert "mongo:5.0" in tk.compose("config").stdout
    old = make_old_toolkit(tmp_path / "o", "4.2.9", mongo="4.4", mongo_legacy=True)
    (old.root / "lib" / "shared-functions.sh").write_text(
        (old.root / "lib" / "shared-functions.sh").read_text().replace("MONGO_VERSION", "MONGO_TAG"))
    up = MongoStep(ctx_for(old), Journal.new(old.root, "b", plan, "4.2.9"), Audit(old.root, "b"))
    up.set_mongo_version(read_toolkit(old.root), "5.0")
    assert old.rc()["MONGO_IMAGE"] == "mongo:5.0" and "MONGO_VERSION" not in old.rc()


def test_catalog_gives_mongo_3_4_for_2_0():
    assert str(CAT.requirements(AppVersion.parse("2.0.2")).mongo_required) == "3.4"
    assert str(CAT.requirements(AppVersion.parse("2.1.0")).mongo_required) == "3.6"


# --- item 7: nginx pinned to the planned image ----------------------------------------------------------------

def test_nginx_is_pinned_to_the_planned_image(tmp_path):
    tk = make_toolkit(tmp_path, "5.5.8", mongo="6.0", mongo_legacy=False, redis="7.4",
                      rc={"NGINX_ENABLED": "true"})
    (tk.root / "lib" / "default.rc").write_text((tk.root / "lib" / "default.rc").read_text()
                                                .replace("nginx:1.30-alpine", "nginx:1.19-alpine"))
    plan = plan_for("5.5.8", "6.2.2", mongo="6.0", redis="7.4", tls_proxy=True)
    assert "nginx:1.30-alpine" in plan["images"]
    up = AppStep(ctx_for(tk), Journal.new(tk.root, "b", plan, "5.5.8"), Audit(tk.root, "b"))
    up.pin_nginx("6.2.2")
    assert tk.rc()["NGINX_IMAGE"] == "nginx:1.30-alpine"
    assert "nginx:1.30-alpine" in tk.compose("config").stdout


# --- item 8: TeX Live lists (the database side: tests/test_upgrade_scenarios.py) ------------------------------

def test_tex_live_default_missing_from_the_list_is_reported(tmp_path):
    tk = make_toolkit(tmp_path, "5.1.1", edition="pro", mongo="6.0", mongo_legacy=False, redis="6.2",
                      sibling_containers=True, texlive=["2025.1"])
    tk.set_variables(ALL_TEX_LIVE_DOCKER_IMAGES="quay.io/sharelatex/texlive-full:2024.1")
    (tk.data("mongo") / "x").write_text("x")
    said: list[str] = []
    problems = preflight(ctx_for(tk, said), plan_for("5.1.1", "5.5.8", edition="pro", mongo="6.0", redis="6.2",
                                                     texlive=("2025.1", "2024.1")), None, everything_present)
    assert any("TEX_LIVE_DOCKER_IMAGE (quay.io/sharelatex/texlive-full:2025.1) is not in" in p for p in problems)
    assert any("distinct" in s for s in said)  # no database here: it says what it could not check


# --- item 9: the Toolkit code update -------------------------------------------------------------------------

def git(root, *args):
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_code_update_from_a_detached_head_bundle_shows_the_changelog_and_moves_origin(tmp_path):
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "master")
    (upstream / "CHANGELOG.md").write_text("# Changelog\n\n## 2025-01-01\n- old entry\n")
    git(upstream, "add", "-A")
    git(upstream, "commit", "-q", "-m", "one")
    site = tmp_path / "site"
    git(tmp_path, "clone", "-q", str(upstream), str(site))
    (upstream / "CHANGELOG.md").write_text("# Changelog\n\n## 2026-06-23\n- nginx 1.30: update config/nginx/nginx.conf\n"
                                           "\n## 2025-01-01\n- old entry\n")
    git(upstream, "commit", "-q", "-am", "two")
    new = git(upstream, "rev-parse", "HEAD")
    git(upstream, "checkout", "-q", "--detach", new)
    bundle = tmp_path / "toolkit.gitbundle"
    git(upstream, "bundle", "create", str(bundle), "HEAD")  # what the bundler writes for a detached checkout
    text = update_toolkit_code(site, bundle, new, True, None)
    assert git(site, "rev-parse", "HEAD") == new
    assert "nginx 1.30: update config/nginx/nginx.conf" in text
    assert git(site, "rev-parse", "refs/remotes/origin/master") == new  # a later bin/upgrade sees no update


# --- issue 10 item 2: strict values, ids, commands, resume ------------------------------------------------------

@pytest.mark.parametrize(("file", "key", "value"), [
    ("version", "8.0$(id)", None), ("version", "6.2.2\nMONGO_VERSION=9", None),
    ("overleaf.rc", "MONGO_VERSION", "6.0; rm -rf /"), ("overleaf.rc", "REDIS_IMAGE", "redis:7.4\nX=1"),
    ("overleaf.rc", "PULL_BEFORE_UPGRADE", "yes"), ("variables.env", "OVERLEAF_INVITE_TOKEN_SECRET", "a b"),
    ("overleaf.rc", "PATH", "/usr/bin"),
])
def test_config_values_keep_a_strict_grammar(file, key, value):
    with pytest.raises(ConfigValueError):
        check_config_value(file, key, value)


def test_good_config_values_pass():
    assert check_config_value("version", "5.5.4-with-texlive-full")
    assert check_config_value("overleaf.rc", "MONGO_VERSION", "8.0")
    assert check_config_value("overleaf.rc", "REDIS_IMAGE", "registry.example:5000/redis:7.4")
    assert check_config_value("variables.env", "OVERLEAF_INVITE_TOKEN_SECRET", "c2VjcmV0LXRoYXQtc3RheXMtc3RhYmxl+/=")


def test_the_toolkit_refuses_to_write_a_bad_version(tmp_path):
    tk = make_toolkit(tmp_path, "5.5.8", git=False)
    with pytest.raises(ConfigValueError):
        ImporterToolkit(tk.root).write_version("5.5.9$(id)")
    assert tk.version() == "5.5.8"


def test_plan_ids_and_commands_come_from_the_importer(tmp_path):
    plan = plan_for("3.5.10", "4.2.9", mongo="4.4", redis="6.2")
    bad = json.loads(json.dumps(plan))
    bad["steps"][0]["id"] = "../../etc"
    with pytest.raises(ManifestFormatError):
        validate_plan(bad)
    evil = json.loads(json.dumps(plan))
    mig = next(s for s in evil["steps"] if s["kind"] == "migration")
    mig["command"] = "rm -rf /var/lib/overleaf"
    validate_plan(evil)
    assert not any("rm -rf" in a for a in describe(mig))
    assert any("migrate_history.js" in a for a in describe(mig))
    unknown = json.loads(json.dumps(plan))
    next(s for s in unknown["steps"] if s["kind"] == "migration")["name"] = "wipe"
    with pytest.raises(ManifestFormatError):
        validate_plan(unknown)
    bad_mongo = plan_for("4.2.9", "5.0.7", mongo="4.4", redis="6.2")
    next(s for s in bad_mongo["steps"] if s["kind"] == "mongo")["version"] = "5.0$(id)"
    with pytest.raises(ManifestFormatError):
        validate_plan(bad_mongo)


def test_resume_needs_the_signed_plan(tmp_path):
    tk = make_toolkit(tmp_path, "3.5.10", git=False)
    plan = plan_for("3.5.10", "4.2.9", mongo="4.4", redis="6.2")
    j = Journal.new(tk.root, "b", plan, "3.5.10")
    check_resume_plan(j, plan)
    edited = json.loads(json.dumps(plan))
    edited["steps"].pop(1)
    j.plan = edited
    with pytest.raises(ToolkitError, match="differs from the plan the bundle's signature covers"):
        check_resume_plan(j, plan)


# --- item 11 and issue 10 item 8: restores of symlinked paths; only our own backups -----------------------------

def test_restore_into_a_symlinked_data_path_keeps_the_link(tmp_path):
    tk = make_toolkit(tmp_path, "5.5.8", mongo="6.0", mongo_legacy=False, redis="7.4", git=False)
    real = tmp_path / "big-disk" / "mongo"
    real.mkdir(parents=True)
    (real / "collection-1.wt").write_text("before\n")
    tk.set_rc(MONGO_DATA_PATH=str(tmp_path / "link-to-mongo"))
    (tmp_path / "link-to-mongo").symlink_to(real)
    cfg = read_toolkit(tk.root)
    sources = data_sources(cfg)
    assert sources["mongo"] == real  # resolved as the Toolkit resolves it (realpath)
    rec = create_backup(tmp_path / "backups", sources, app_version="5.5.8", step_id="01-backup", major=False)
    (real / "collection-1.wt").write_text("after\n")
    (real / "new-file").write_text("new\n")
    check_record(load_record(Path(rec.path)), Path(rec.path), data_sources(read_toolkit(tk.root)))
    restore_backup(rec)
    assert (tmp_path / "link-to-mongo").is_symlink()
    assert (real / "collection-1.wt").read_text() == "before\n" and not (real / "new-file").exists()
    assert not list(real.glob(".before-rollback-*"))  # the original is dropped only after verification


def test_a_failed_restore_puts_the_original_back(tmp_path, monkeypatch):
    src = tmp_path / "data"
    src.mkdir()
    (src / "a").write_text("backed up\n")
    rec = create_backup(tmp_path / "backups", {"overleaf": src}, app_version="5.5.8", step_id="01-backup", major=False)
    (src / "a").write_text("current\n")
    import importer.upgrade.backup as backup
    monkeypatch.setattr(backup, "verify_tree", lambda base, sums, labels=None: ["overleaf/a"] if labels else [])
    with pytest.raises(ToolkitError):
        restore_backup(rec)
    assert (src / "a").read_text() == "current\n" and not list(src.glob(".before-rollback-*"))


def test_rollback_refuses_a_backup_that_names_other_folders(tmp_path):
    tk = make_toolkit(tmp_path, "5.5.8", mongo="6.0", mongo_legacy=False, redis="7.4", git=False)
    (tk.data("mongo") / "x").write_text("x")
    sources = data_sources(read_toolkit(tk.root))
    rec = create_backup(tmp_path / "backups", sources, app_version="5.5.8", step_id="01-backup", major=False)
    folder = Path(rec.path)
    data = json.loads((folder / "backup.json").read_text())
    victim = tmp_path / "precious"
    victim.mkdir()
    data["sources"]["mongo"] = str(victim)
    (folder / "backup.json").write_text(json.dumps(data))
    with pytest.raises(ToolkitError, match="not one of this Toolkit's current paths"):
        check_record(load_record(folder), folder, sources)
    data["sources"]["mongo"] = str(sources["mongo"])
    data["path"] = str(tmp_path / "elsewhere")
    (folder / "backup.json").write_text(json.dumps(data))
    with pytest.raises(ToolkitError, match="backup.json says it lives in"):
        check_record(load_record(folder), folder, sources)


def test_external_databases_are_left_out_of_backups_and_said_so(tmp_path):
    tk = make_toolkit(tmp_path, "5.5.8", mongo="6.0", mongo_legacy=False, redis="7.4",
                      rc={"MONGO_ENABLED": "false"}, variables={"OVERLEAF_MONGO_URL": "mongodb://u:p@db.example/sharelatex"})
    assert "mongo" not in tk.compose("config").stdout.split("services:")[1].split("volumes:")[0].replace(
        "mongodb", "")  # the stand-in makes no mongo service
    cfg = read_toolkit(tk.root)
    assert "mongo" not in data_sources(cfg)
    said: list[str] = []
    preflight(ctx_for(tk, said), plan_for("5.5.8", "6.2.2", mongo="6.0", redis="7.4"), None, everything_present)
    assert any("backups will not cover" in s and "db.example" in s and "u:p" not in s for s in said)
    assert any("clusterParameterReader" in s for s in said)


# --- issue 9 item 4: Compose v2 when it answers, else v1 -------------------------------------------------------

def fake_bin(folder: Path, name: str, script: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("#!/bin/sh\n" + script)
    (folder / name).chmod(0o755)


@pytest.mark.parametrize("v2", [True, False])
def test_bin_docker_compose_prefers_compose_v2(tmp_path, v2):
    tk = make_toolkit(tmp_path, "5.5.8", git=False)
    fake = tmp_path / "fakebin"
    answer = 'echo v2 "$@"; exit 0' if v2 else "exit 1"
    fake_bin(fake, "docker", f'if [ "$1" = compose ]; then {answer}; fi\nexit 3\n')
    fake_bin(fake, "docker-compose", 'echo v1 "$@"\n')
    env = {**tk.env, "PATH": f"{fake}:{os.environ['PATH']}"}
    out = subprocess.run([str(tk.root / "bin" / "docker-compose"), "ps"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("v2 compose -p" if v2 else "v1 -p") and out.stdout.rstrip().endswith("ps")


def test_errors_are_airgap_errors():
    assert issubclass(ConfigValueError, AirgapError) and ConfigValueError.exit_code == 30
