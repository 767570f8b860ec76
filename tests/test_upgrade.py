"""`overleaf-import upgrade`, `rollback`, `status` on a real engine, real docker-compose and the
Toolkit stand-in (tests/toolkit) with gated Overleaf-like images (tests/support/overleaf_images.py).

The bundle carries the real plan from the planner for 3.5.10 -> 6.2.2 (CE, MongoDB 4.4,
Redis 6.2); the offline host runs the 3.5.10 stack. A wrong order of steps makes the
stand-ins refuse to start, so a green run proves the order as well as the mechanics.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from importer.state import ToolkitLock
from manifests.catalog import load_catalog
from manifests.planner import PlanRequest, make_plan
from tests.support.bundles import make_bundle, make_key
from tests.support.overleaf_images import seed_overleaf_path
from tests.support.toolkit import make_toolkit, toolkit_checksums

FROM, TO = "3.5.10", "6.2.2"


@pytest.fixture(scope="session")
def upgrade_bundle(engine, offline_engine, tmp_path_factory):
    """(bundle dir, trusted key) for 3.5.10 -> 6.2.2; the offline engine has the starting stack."""
    plan = make_plan(load_catalog(overlay=False), PlanRequest(FROM, TO, mongo="4.4", redis="6.2")).to_dict()
    apps = [s["version"] for s in plan["steps"] if s["kind"] == "app"]
    mongos = [s["version"] for s in plan["steps"] if s["kind"] == "mongo"]
    redis = [s["version"] for s in plan["steps"] if s["kind"] == "redis"]
    refs = seed_overleaf_path(engine, apps, mongo=mongos, redis=redis)
    assert sorted(refs) == plan["images"]
    client = offline_engine.client()  # earlier tests may have left same-named stand-ins on the offline host
    for ref in refs:
        try:
            client.images.remove(ref, force=True)
        except Exception:  # noqa: BLE001 - not there
            pass
    seed_overleaf_path(offline_engine, [FROM], mongo=["4.4"], redis=["6.2"])
    base = tmp_path_factory.mktemp("upgrade-bundle")
    key = make_key(base / "keys")

    def edit(m):
        m.update(plan=plan, from_version=FROM, to_version=TO)
    make_bundle(engine.client(), refs, base / "bundle", key, max_part_size=8 * 1024 * 1024, edit=edit)
    return base / "bundle", key


def importer(offline_engine, tmp_path, *args, timeout=900):
    env = {**offline_engine.env(), "OVERLEAF_AIRGAP_STATE": str(tmp_path / "state.json"),
           "OVERLEAF_AIRGAP_TRUST_DIR": str(tmp_path / "no-trust-dir")}
    return subprocess.run([sys.executable, "-m", "importer.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def start_importer(offline_engine, tmp_path, *args):
    env = {**offline_engine.env(), "OVERLEAF_AIRGAP_STATE": str(tmp_path / "state.json")}
    return subprocess.Popen([sys.executable, "-m", "importer.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


@pytest.fixture
def toolkit(offline_engine, tmp_path):
    tk = make_toolkit(tmp_path, FROM, engine=offline_engine, mongo="4.4", mongo_legacy=True, redis="6.2")
    tk.run("up", "-d")
    tk.wait_healthy()
    yield tk
    tk.down()


def upgrade_args(bundle, key, tk, *extra):
    return ["upgrade", str(bundle), "--toolkit", os.fspath(tk), "--trust", str(key.pub_path), "--yes",
            "--generate-secrets", "--health-timeout", "90", "--backup-dir", str(Path(os.fspath(tk)).parent / "backups"),
            *extra]


def run_to_end(offline_engine, tmp_path, bundle, key, tk):
    out = importer(offline_engine, tmp_path, *upgrade_args(bundle, key, tk))
    assert out.returncode == 40, out.stdout + out.stderr  # paused: binary files must be checked by a person
    assert "binary files" in out.stderr and "--resume" in out.stderr
    out = importer(offline_engine, tmp_path, *upgrade_args(bundle, key, tk, "--resume"))
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def final_state(tk):
    rc, env = tk.rc(), tk.variables()
    return {
        "version": tk.version(), "old": (tk.config / "__old-version").read_text().strip(),
        "mongo_image": rc.get("MONGO_IMAGE"), "mongo_version": rc.get("MONGO_VERSION"),
        "redis_image": rc.get("REDIS_IMAGE"),
        "pull": (rc.get("PULL_BEFORE_UPGRADE"), rc.get("SIBLING_CONTAINERS_PULL")),
        "env_prefixes": sorted({k.split("_")[0] for k in env if k.startswith(("SHARELATEX_", "OVERLEAF_"))}),
        "secret_set": bool(env.get("OVERLEAF_INVITE_TOKEN_SECRET")),
        "level": env.get("OVERLEAF_FILESTORE_MIGRATION_LEVEL"),
        "running": tk.running_images(),
        "markers": sorted(p.name for p in tk.data().iterdir() if p.name.endswith(".done")),
        "versions_run": [l.split()[0] for l in (tk.data() / "versions.log").read_text().split("\n") if l.strip()],
    }


def dedup(seq):
    return [x for i, x in enumerate(seq) if i == 0 or seq[i - 1] != x]


def check_final(state):
    assert state["version"] == "6.2.2" and state["old"] == "5.5.8"
    # the legacy MONGO_IMAGE=mongo:4.4 form was moved to the split form the Toolkit reads now (issue 11 item 15)
    assert (state["mongo_image"], state["mongo_version"]) == ("mongo", "8.0") and state["redis_image"] == "redis:7.4"
    assert state["pull"] == ("false", "false")
    assert state["env_prefixes"] == ["OVERLEAF"] and state["secret_set"] and state["level"] == "2"
    assert state["running"]["sharelatex"] == "sharelatex/sharelatex:6.2.2"
    assert state["running"]["mongo"] == "mongo:8.0" and state["running"]["redis"] == "redis:7.4"
    assert {"fph-migration.done", "binary-files-migration.done"} <= set(state["markers"])
    assert dedup(state["versions_run"]) == ["3.5.10", "3.5.13", "4.2.9", "5.5.8", "6.2.2"]


def fcv_commands(tk):
    log = (tk.data("mongo") / "commands.log").read_text()
    return [l for l in log.splitlines() if "setFeatureCompatibilityVersion" in l]


def test_full_upgrade_3_5_10_to_6_2_2(upgrade_bundle, offline_engine, toolkit, tmp_path):
    bundle, key = upgrade_bundle
    run_to_end(offline_engine, tmp_path, bundle, key, toolkit)
    state = final_state(toolkit)
    check_final(state)
    cmds = fcv_commands(toolkit)
    wanted = ['"4.4"', '"5.0"', '"5.0"', '"6.0"', '"6.0"', '"7.0", confirm: true', '"7.0", confirm: true',
              '"8.0", confirm: true']
    got = [c for c in cmds]
    assert len(got) == len(wanted) and all(w in c for w, c in zip(wanted, got)), cmds
    # copies kept as bin/upgrade keeps them, the journal finished, the audit log complete
    names = [p.name for p in toolkit.config.iterdir()]
    assert any(n.startswith("__old-variables.env.") for n in names)
    assert any(n.startswith("__old-overleaf.rc.") for n in names)
    st = json.loads(importer(offline_engine, tmp_path, "--json", "status", "--toolkit", os.fspath(toolkit)).stdout)
    assert st["version"] == "6.2.2" and st["journal"]["finished"] and st["journal"]["done"] == st["journal"]["total"]
    assert len(st["backups"]) == 4 and all(b["exists"] and b["bytes"] > 0 for b in st["backups"])
    audit = [json.loads(l) for l in (Path(os.fspath(toolkit)) / ".overleaf-airgap" / "audit.log").read_text().splitlines()]
    assert audit[0]["action"] == "toolkit code" or any(a["action"] == "upgrade" and a["result"] == "started" for a in audit)
    assert audit[-1]["action"] == "upgrade" and audit[-1]["result"] == "finished"
    assert all(a["bundle"] for a in audit)


def test_kill_at_every_step_boundary_and_inside_a_step_then_resume(upgrade_bundle, offline_engine, toolkit, tmp_path):
    bundle, key = upgrade_bundle
    journal_path = Path(os.fspath(toolkit)) / ".overleaf-airgap" / "journal.json"
    kills, first = 0, True
    for _ in range(60):
        args = upgrade_args(bundle, key, toolkit, *([] if first else ["--resume"]))
        proc = start_importer(offline_engine, tmp_path, *args)
        done_before = None
        inside = kills == 3  # once: kill in the middle of a step (during its commands)
        while proc.poll() is None:
            try:
                j = json.loads(journal_path.read_text())
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            statuses = [s["status"] for s in j["steps"].values()]
            done = statuses.count("done")
            if done_before is None:
                done_before = done
            if inside and "running" in statuses and done > done_before:
                time.sleep(1.5)
                proc.send_signal(signal.SIGKILL)
                break
            if not inside and done > done_before:
                proc.send_signal(signal.SIGKILL)  # right after a step was journaled as done
                break
            time.sleep(0.05)
        code = proc.wait()
        output = proc.stdout.read()
        first = False
        if code == -signal.SIGKILL:
            kills += 1
            continue
        if code == 40:
            continue
        assert code == 0, output
        break
    assert kills >= 10
    check_final(final_state(toolkit))


def test_failed_health_check_reports_state_and_rollback_restores_bytes(upgrade_bundle, offline_engine, toolkit,
                                                                        tmp_path):
    bundle, key = upgrade_bundle
    journal_path = Path(os.fspath(toolkit)) / ".overleaf-airgap" / "journal.json"
    proc = start_importer(offline_engine, tmp_path, *upgrade_args(bundle, key, toolkit))
    while proc.poll() is None:  # stop it once the history cleanup is done, before 4.2.9
        try:
            j = json.loads(journal_path.read_text())
            if any(k.endswith("history_cleanup") and v["status"] == "done" for k, v in j["steps"].items()):
                proc.send_signal(signal.SIGKILL)
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    proc.wait()
    (toolkit.data() / "fph-migration.done").unlink()  # the migration's record is lost: 4.2.9 must refuse
    out = importer(offline_engine, tmp_path, *upgrade_args(bundle, key, toolkit, "--resume", "--health-timeout", "20"))
    assert out.returncode == 32, out.stdout + out.stderr
    assert "Full Project History migration not completed" in out.stderr
    assert "rollback" in out.stderr and "Traceback" not in out.stderr
    st = json.loads(importer(offline_engine, tmp_path, "--json", "status", "--toolkit", os.fspath(toolkit)).stdout)
    assert st["version"] == "4.2.9"
    failed = [s for s in st["journal"]["steps"] if s["status"] == "failed"]
    assert [s["id"] for s in failed] == [s["id"] for s in st["journal"]["steps"] if s["id"].endswith("-app-4.2.9")]
    out = importer(offline_engine, tmp_path, "--json", "rollback", "--toolkit", os.fspath(toolkit), "--yes", "--no-start",
                   "--backup-dir", str(Path(os.fspath(toolkit)).parent / "backups"))
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads(out.stdout)
    backup = Path(os.fspath(toolkit)).parent / "backups" / res["backup"]
    assert res["version"] == "3.5.13"
    for label, path in (("mongo", toolkit.data("mongo")), ("overleaf", toolkit.data()), ("config", toolkit.config)):
        assert tree_hashes(backup / label) == tree_hashes(path), label
    toolkit.run("up", "-d")
    toolkit.wait_healthy()
    assert toolkit.running_images()["sharelatex"] == "sharelatex/sharelatex:3.5.13"


def tree_hashes(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_wrong_start_version_is_refused_before_any_change(upgrade_bundle, offline_engine, tmp_path):
    bundle, key = upgrade_bundle
    tk = make_toolkit(tmp_path, "3.5.9", engine=offline_engine, mongo="4.4", redis="6.2")
    before = toolkit_checksums(tk)
    out = importer(offline_engine, tmp_path, *upgrade_args(bundle, key, tk))
    assert out.returncode == 31, out.stdout + out.stderr
    assert "config/version is 3.5.9" in out.stderr and "3.5.10" in out.stderr
    assert toolkit_checksums(tk) == before


def test_dry_run_changes_nothing(upgrade_bundle, offline_engine, toolkit, tmp_path):
    bundle, key = upgrade_bundle
    before = toolkit_checksums(toolkit)
    out = importer(offline_engine, tmp_path, *upgrade_args(bundle, key, toolkit, "--dry-run"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "setFeatureCompatibilityVersion" in out.stdout and "write config/version = 6.2.2" in out.stdout
    assert toolkit_checksums(toolkit) == before


def test_images_missing_from_the_engine_are_refused_in_preflight(engine, offline_engine, upgrade_bundle, toolkit,
                                                                 tmp_path):
    _bundle, key = upgrade_bundle
    plan = make_plan(load_catalog(overlay=False), PlanRequest(FROM, TO, mongo="4.4", redis="6.2")).to_dict()
    seed_overleaf_path(engine, ["3.5.13"])

    def edit(m):
        m.update(plan=plan, from_version=FROM, to_version=TO)
    make_bundle(engine.client(), ["sharelatex/sharelatex:3.5.13"], tmp_path / "partial", key, edit=edit)
    for ref in ("mongo:8.0", "redis:7.4"):  # in case an earlier test loaded them
        subprocess.run(["docker", "rmi", "-f", ref], env=offline_engine.env(), capture_output=True)
    before = toolkit_checksums(toolkit)
    out = importer(offline_engine, tmp_path, *upgrade_args(tmp_path / "partial", key, toolkit))
    assert out.returncode == 31, out.stdout + out.stderr
    assert "not in the engine" in out.stderr and "mongo:8.0" in out.stderr
    assert toolkit_checksums(toolkit) == before


def test_a_second_run_is_locked_out(upgrade_bundle, offline_engine, toolkit, tmp_path):
    bundle, key = upgrade_bundle
    with ToolkitLock(Path(os.fspath(toolkit))):
        out = importer(offline_engine, tmp_path, *upgrade_args(bundle, key, toolkit))
    assert out.returncode == 30 and "locked" in out.stderr
