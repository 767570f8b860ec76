"""Upgrade scenarios of issue 11 on a real engine and the Toolkit stand-in: a migration that outlives the old
time limit, a kill during a long migration, a 5.0.1 site, an external MongoDB, a resumed health-check timeout,
a replica set that is slow to elect its primary, and Server Pro TeX Live images in use.

The upgrade runs in a child process (``python -m tests.test_upgrade_scenarios TOOLKIT PLAN.json [--resume]``)
through :func:`importer.upgrade.run_upgrade`, the same code ``overleaf-import upgrade`` runs after the bundle
is verified and loaded; the images are seeded straight into the offline engine.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manifests.catalog import load_catalog
from manifests.planner import PlanRequest, make_plan
from tests.support.overleaf_images import seed_overleaf_path
from tests.support.toolkit import make_toolkit, remove_toolkit_containers

CAT = load_catalog(overlay=False)


def plan_file(tmp_path: Path, frm: str, to: str, **kw) -> Path:
    plan = make_plan(CAT, PlanRequest(frm, to, **kw)).to_dict()
    path = tmp_path / f"plan-{frm}-{to}.json"
    path.write_text(json.dumps(plan))
    return path


def driver_cmd(tk, plan: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.test_upgrade_scenarios", os.fspath(tk), str(plan),
            "--backup-dir", str(Path(os.fspath(tk)).parent / "backups"), *extra]


def drive(tk, plan: Path, *extra: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(driver_cmd(tk, plan, *extra), env={**tk.env, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, cwd=Path(__file__).resolve().parent.parent)


@pytest.fixture
def clean(offline_engine):
    remove_toolkit_containers(offline_engine)
    made = []
    yield made
    for tk in made:
        tk.down()
    subprocess.run(["docker", "rm", "-f", "-v", "ext-mongo", "ext-redis"], env=offline_engine.env(), capture_output=True)
    remove_toolkit_containers(offline_engine)


def started_at(tk, name="sharelatex") -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", name], env=tk.env,
                          capture_output=True, text=True).stdout.strip()


# --- item 1: long migrations ------------------------------------------------------------------------------

def test_a_migration_outlives_the_command_time_limit_and_shows_progress(offline_engine, clean, tmp_path):
    seed_overleaf_path(offline_engine, ["3.5.13", "4.2.9"], mongo=["4.4"], redis=["6.2"])
    tk = make_toolkit(tmp_path, "3.5.13", engine=offline_engine, mongo="4.4", redis="6.2", migrated=[])
    clean.append(tk)
    tk.run("up", "-d")
    tk.wait_healthy()
    (tk.data() / "SLOW_MIGRATION").write_text("28\n")
    plan = plan_file(tmp_path, "3.5.13", "4.2.9", mongo="4.4", redis="6.2")
    out = drive(tk, plan, env={"OVERLEAF_AIRGAP_TOOLKIT_TIMEOUT": "20"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "migrate_history: progress 25/28" in out.stderr  # shown while it ran, not only at its end
    assert tk.version() == "4.2.9" and tk.running_images()["sharelatex"] == "sharelatex/sharelatex:4.2.9"


def test_a_kill_during_a_long_migration_then_resume_waits_for_it(offline_engine, clean, tmp_path):
    seed_overleaf_path(offline_engine, ["3.5.13", "4.2.9"], mongo=["4.4"], redis=["6.2"])
    tk = make_toolkit(tmp_path, "3.5.13", engine=offline_engine, mongo="4.4", redis="6.2", migrated=[])
    clean.append(tk)
    tk.run("up", "-d")
    tk.wait_healthy()
    (tk.data() / "SLOW_MIGRATION").write_text("40\n")
    plan = plan_file(tmp_path, "3.5.13", "4.2.9", mongo="4.4", redis="6.2")
    proc = subprocess.Popen(driver_cmd(tk, plan), env=tk.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parent.parent)
    seen = ""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if "migrate_history: progress 3/40" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "progress 3/40" in seen, seen
    out = drive(tk, plan, "--resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "still running in the container" in out.stderr
    assert not (tk.data() / "concurrent-runs.log").exists()  # no second copy was started
    assert (tk.data() / "fph-migration.done").exists() and tk.version() == "4.2.9"


# --- item 12: a resumed health-check timeout does not stop the app again -------------------------------------

def test_resume_after_a_health_timeout_does_not_stop_a_first_start(offline_engine, clean, tmp_path):
    seed_overleaf_path(offline_engine, ["5.5.7", "5.5.8"], mongo=["6.0"], redis=["6.2"])
    tk = make_toolkit(tmp_path, "5.5.7", engine=offline_engine, mongo="6.0", mongo_legacy=False, redis="6.2")
    clean.append(tk)
    tk.run("up", "-d")
    tk.wait_healthy()
    plan = plan_file(tmp_path, "5.5.7", "5.5.8", mongo="6.0", redis="6.2")
    (tk.data() / "SLOW_START").write_text("25\n")  # the first 5.5.8 start migrates its database for a while
    out = drive(tk, plan, "--health-timeout", "8")
    assert out.returncode == 32, out.stdout + out.stderr
    first = started_at(tk)
    out = drive(tk, plan, "--resume", "--health-timeout", "90")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "not stopping the services again" in out.stderr
    assert started_at(tk) == first and not (tk.data() / "interrupted-migrations.log").exists()
    assert tk.running_images()["sharelatex"] == "sharelatex/sharelatex:5.5.8"


# --- item 2: a 5.0.1 site --------------------------------------------------------------------------------

def test_a_5_0_1_site_is_upgraded_with_the_doc_version_recovery(offline_engine, clean, tmp_path):
    seed_overleaf_path(offline_engine, ["5.0.1", "5.0.7"], edition="pro", git_bridge=True, mongo=["5.0"],
                       redis=["6.2"])
    tk = make_toolkit(tmp_path, "5.0.1", engine=offline_engine, edition="pro", git_bridge=True, mongo="5.0",
                      redis="6.2")
    clean.append(tk)
    assert tk.run("up", "-d", check=False).returncode == 1  # the Toolkit refuses the retracted version
    subprocess.run([str(tk.root / "bin" / "up"), "-d"], env={**tk.env, "OVERLEAF_SKIP_RETRACTION_CHECK": "5.0.1"},
                   cwd=tk.root, check=True, capture_output=True)
    tk.wait_healthy()
    (tk.data("redis") / "standin-keys").write_text("")
    plan = plan_file(tmp_path, "5.0.1", "5.0.7", edition="pro", git_bridge=True, mongo="5.0", redis="6.2")
    out = drive(tk, plan)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"failureCount":0' in out.stderr  # flushed with real-time stopped (the stand-in refuses otherwise)
    assert "doc-version-recovery.log" in out.stderr and "Done." in out.stderr
    assert tk.version() == "5.0.7"
    assert tk.running_images()["git-bridge"] == "quay.io/sharelatex/git-bridge:5.0.7"


# --- items 3, 10, 15: an external MongoDB; a bundled one slow to become primary --------------------------

def test_external_mongodb_pauses_for_its_admin_then_resume_checks(offline_engine, clean, tmp_path):
    seed_overleaf_path(offline_engine, ["4.2.9", "5.0.7"], mongo=["4.4", "5.0"], redis=["6.2"])
    project = "overleaf-ext"
    env = offline_engine.env()
    subprocess.run(["docker", "network", "create", "--label", "com.docker.compose.network=default",
                    "--label", f"com.docker.compose.project={project}", f"{project}_default"], env=env,
                   capture_output=True)
    ext = tmp_path / "ext-mongo-data"
    ext.mkdir()

    def run_ext(tag: str) -> None:
        subprocess.run(["docker", "rm", "-f", "ext-mongo"], env=env, capture_output=True)
        subprocess.run(["docker", "run", "-d", "--name", "ext-mongo", "--network", f"{project}_default",
                        "-v", f"{ext}:/data/db", f"mongo:{tag}", "--replSet", "overleaf"], env=env, check=True,
                       capture_output=True)
        time.sleep(1.5)

    def ext_eval(shell: str, js: str) -> None:
        subprocess.run(["docker", "exec", "ext-mongo", shell, "--quiet", "--eval", js], env=env, check=True,
                       capture_output=True)

    run_ext("4.4")
    ext_eval("mongo", 'rs.initiate({ _id: "overleaf", members: [ { _id: 0, host: "ext-mongo:27017" } ] })')
    tk = make_toolkit(tmp_path, "4.2.9", engine=offline_engine, mongo="4.4", redis="6.2", project_name=project,
                      rc={"MONGO_ENABLED": "false"}, variables={"SHARELATEX_MONGO_URL": "mongodb://ext-mongo/sharelatex"})
    clean.append(tk)
    tk.run("up", "-d")
    tk.wait_healthy()
    assert "mongo" not in tk.states()  # the Toolkit runs no mongo container
    plan = plan_file(tmp_path, "4.2.9", "5.0.7", mongo="4.4", redis="6.2")
    out = drive(tk, plan)
    assert out.returncode == 40, out.stdout + out.stderr
    assert "MongoDB is external" in out.stderr and 'setFeatureCompatibilityVersion: "4.4"' in out.stderr
    assert "NOT in this backup: MongoDB is external" in out.stderr
    backup = next((Path(os.fspath(tk)).parent / "backups").iterdir())
    assert not (backup / "mongo").exists() and "MongoDB is external" in (backup / "backup.json").read_text()
    out = drive(tk, plan, "--resume")  # nothing done yet: it pauses again
    assert out.returncode == 40, out.stdout + out.stderr
    ext_eval("mongo", 'db.adminCommand({ setFeatureCompatibilityVersion: "4.4" })')  # the database admin's hop
    run_ext("5.0")
    ext_eval("mongosh", 'db.adminCommand({ setFeatureCompatibilityVersion: "5.0" })')
    out = drive(tk, plan, "--resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert tk.version() == "5.0.7" and "mongo" not in tk.states()
    subprocess.run(["docker", "network", "rm", f"{project}_default"], env=env, capture_output=True)


def test_external_redis_pauses_for_its_admin_then_resume_checks(offline_engine, clean, tmp_path):
    """REDIS_ENABLED=false: the upgrade never runs a redis container; at the Redis step it reads the external
    server's version from the app container, pauses (exit 40) for its admin, and --resume checks the new one."""
    seed_overleaf_path(offline_engine, ["5.5.8", "6.2.2"], mongo=["6.0", "7.0", "8.0"], redis=["6.2", "7.4"])
    project = "overleaf-extredis"
    env = offline_engine.env()
    subprocess.run(["docker", "network", "create", "--label", "com.docker.compose.network=default",
                    "--label", f"com.docker.compose.project={project}", f"{project}_default"], env=env,
                   capture_output=True)
    ext = tmp_path / "ext-redis-data"
    ext.mkdir()

    def run_ext(tag: str) -> None:
        subprocess.run(["docker", "rm", "-f", "ext-redis"], env=env, capture_output=True)
        subprocess.run(["docker", "run", "-d", "--name", "ext-redis", "--network", f"{project}_default",
                        "-v", f"{ext}:/data", f"redis:{tag}"], env=env, check=True, capture_output=True)
        time.sleep(1.5)

    run_ext("6.2")
    tk = make_toolkit(tmp_path, "5.5.8", engine=offline_engine, mongo="6.0", mongo_legacy=False, redis="6.2",
                      project_name=project, rc={"REDIS_ENABLED": "false"},
                      variables={"OVERLEAF_REDIS_HOST": "ext-redis"})
    clean.append(tk)
    try:
        tk.run("up", "-d")
        tk.wait_healthy()
        assert "redis" not in tk.states()  # the Toolkit runs no redis container
        plan = plan_file(tmp_path, "5.5.8", "6.2.2", mongo="6.0", redis="6.2")
        assert any(s["kind"] == "redis" for s in json.loads(plan.read_text())["steps"])
        out = drive(tk, plan)
        assert out.returncode == 40 and "binary files" in out.stderr, out.stdout + out.stderr
        assert "NOT in this backup: Redis is external" in out.stderr
        out = drive(tk, plan, "--resume")
        assert out.returncode == 40, out.stdout + out.stderr
        assert "Redis is external (REDIS_ENABLED=false)" in out.stderr and "It runs 6.2" in out.stderr
        assert "redis" not in tk.states() and tk.rc()["REDIS_IMAGE"] == "redis:6.2"  # nothing managed for it
        out = drive(tk, plan, "--resume")  # nothing done yet: it pauses again
        assert out.returncode == 40 and "It runs 6.2" in out.stderr, out.stdout + out.stderr
        run_ext("7.4")  # the Redis admin's upgrade
        out = drive(tk, plan, "--resume")
        assert out.returncode == 0, out.stdout + out.stderr
        assert tk.version() == "6.2.2" and "redis" not in tk.states()
        assert tk.running_images()["sharelatex"] == "sharelatex/sharelatex:6.2.2"
    finally:
        subprocess.run(["docker", "rm", "-f", "ext-redis"], env=env, capture_output=True)
        tk.down()
        subprocess.run(["docker", "network", "rm", f"{project}_default"], env=env, capture_output=True)


def test_fcv_waits_for_the_replica_set_primary_and_adopts_the_split_form(offline_engine, clean, tmp_path):
    seed_overleaf_path(offline_engine, ["4.2.9", "5.0.7"], mongo=["4.4", "5.0"], redis=["6.2"])
    tk = make_toolkit(tmp_path, "4.2.9", engine=offline_engine, mongo="4.4", mongo_legacy=True, redis="6.2")
    clean.append(tk)
    tk.run("up", "-d")
    tk.wait_healthy()
    (tk.data("mongo") / "PRIMARY_DELAY").write_text("6\n")  # an election after each start
    plan = plan_file(tmp_path, "4.2.9", "5.0.7", mongo="4.4", redis="6.2")
    out = drive(tk, plan)
    assert out.returncode == 0, out.stdout + out.stderr
    rc = tk.rc()
    assert rc["MONGO_IMAGE"] == "mongo" and rc["MONGO_VERSION"] == "5.0"
    assert (tk.data("mongo") / "fcv").read_text().strip() == "5.0"
    assert tk.running_images()["mongo"] == "mongo:5.0"


# --- item 14: flush the history queues until they are empty -------------------------------------------

def test_binary_files_migration_flushes_history_queues_until_empty(offline_engine, clean, tmp_path):
    seed_overleaf_path(offline_engine, ["5.5.8", "6.2.2"], mongo=["6.0", "7.0", "8.0"], redis=["7.4"])
    tk = make_toolkit(tmp_path, "5.5.8", engine=offline_engine, mongo="6.0", mongo_legacy=False, redis="7.4")
    clean.append(tk)
    tk.run("up", "-d")
    tk.wait_healthy()
    (tk.data() / "history-queue").write_text("5\n")  # projects with queued history updates
    plan = plan_file(tmp_path, "5.5.8", "6.2.2", mongo="6.0", redis="7.4")
    out = drive(tk, plan)
    assert out.returncode == 40, out.stdout + out.stderr
    assert out.stderr.count('"project_ids":2') == 2 and '"project_ids":0' in out.stderr
    assert "REDIS_AOF_PERSISTENCE is not set" in out.stderr
    (tk.data() / "history-queue").write_text("3\n")  # users edited while a person checked level 1
    out = drive(tk, plan, "--resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tk.data() / "history-queue").read_text().strip() == "0"
    assert tk.version() == "6.2.2" and tk.variables()["OVERLEAF_FILESTORE_MIGRATION_LEVEL"] == "2"


# --- item 8: TeX Live images the projects use -----------------------------------------------------------

def test_preflight_asks_the_database_for_the_projects_tex_live_images(offline_engine, clean, tmp_path):
    seed_overleaf_path(offline_engine, ["5.1.1", "5.5.8"], edition="pro", mongo=["6.0"], redis=["6.2"],
                       texlive=["2025.1"])
    tk = make_toolkit(tmp_path, "5.1.1", engine=offline_engine, edition="pro", mongo="6.0", mongo_legacy=False,
                      redis="6.2", sibling_containers=True, texlive=["2025.1"], sibling_pull=False)
    clean.append(tk)
    tk.run("up", "-d", "mongo")
    (tk.data("mongo") / "project-images").write_text("quay.io/sharelatex/texlive-full:2025.1\n"
                                                     "quay.io/sharelatex/texlive-full:2019.1\n")
    plan = plan_file(tmp_path, "5.1.1", "5.5.8", edition="pro", mongo="6.0", redis="6.2", texlive=("2025.1",))
    out = drive(tk, plan)
    assert out.returncode == 31, out.stdout + out.stderr
    assert "projects use the TeX Live image quay.io/sharelatex/texlive-full:2019.1" in out.stderr
    assert "update_project_image_name.js quay.io/sharelatex/texlive-full:2019.1" in out.stderr
    assert tk.version() == "5.1.1"


# --- the driver ------------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    import argparse

    import docker

    from importer.upgrade.journal import Journal, ToolkitLock
    from importer.upgrade import Context, UpgradeOptions, check_resume_plan, run_upgrade
    from manifests.errors import AirgapError

    ap = argparse.ArgumentParser()
    ap.add_argument("toolkit", type=Path)
    ap.add_argument("plan", type=Path)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--backup-dir", type=Path)
    ap.add_argument("--health-timeout", type=float, default=90)
    args = ap.parse_args(argv)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    plan = json.loads(args.plan.read_text())
    root = args.toolkit.resolve()
    ctx = Context(root, None, UpgradeOptions(yes=True, resume=args.resume, backup_dir=args.backup_dir,
                                             health_timeout=args.health_timeout, generate_secrets=True), say,
                  lambda q: False)
    ctx.client = docker.DockerClient(base_url=os.environ["DOCKER_HOST"], timeout=600)

    def present(ref: str) -> bool:
        try:
            ctx.client.images.get(ref)
            return True
        except docker.errors.ImageNotFound:
            return False

    try:
        journal = Journal.load(root)
        if journal is not None and journal.finished:
            journal = None
        if journal is not None:
            check_resume_plan(journal, plan)
        with ToolkitLock(root):
            run_upgrade(ctx, plan, journal, present, "scenario-bundle")
    except AirgapError as err:
        say(f"error: {err.message}\n  -> {err.hint}")
        return err.exit_code
    for note in ctx.notes:
        say(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
