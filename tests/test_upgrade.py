"""`overleaf-import upgrade`, `rollback`, `status` on real engines, real Compose and the Toolkit stand-in
(tests/toolkit) with gated Overleaf-like images (tests/support/overleaf_images.py).

Every bundle here is a real one: the stand-ins are pushed to the test registry and
``overleaf-bundle build`` makes the bundle from there with no engine
(tests/support/real_bundles.py), so it carries the planner's plan for 3.5.10 -> 6.2.2
(CE, MongoDB 4.4, Redis 6.2), or 5.5.8 -> 6.2.2 (MongoDB 6.0, Redis 7.4) for the
two-engine test. The offline host runs the starting stack. A wrong order of steps makes the
stand-ins refuse to start, so a green run proves the order as well as the mechanics.

The demo path runs end to end on both kinds of offline host (issue 9): Engine 20.10 with
the classic image store and Compose v1, Engine 26 with the containerd image store and
Compose v2; the other tests use the classic host.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker.errors
import pytest

from importer.images.load import pinned_ids
from importer.upgrade.journal import ToolkitLock
from tests.support.overleaf_images import seed_overleaf_path
from tests.support.real_bundles import RealBundle, build_upgrade_bundle, clear_stale_tags, make_release_key
from tests.support.toolkit import make_toolkit, remove_toolkit_containers, toolkit_checksums
from tests.support.engine import classic_compose

FROM, TO = "3.5.10", "6.2.2"
SHORT_FROM = "5.5.8"   # the two-engine test: binary files migration, two MongoDB hops, the new secret


def _forget(engine, refs) -> None:
    """Remove same-named images an earlier test left on an offline host (the load must bring the bundle's)."""
    client = engine.client()
    for c in client.containers.list(all=True):
        c.remove(force=True, v=True)
    for ref in refs:
        with contextlib.suppress(docker.errors.ImageNotFound):   # not there: nothing to forget
            client.images.remove(ref, force=True)


@pytest.fixture(scope="session")
def release_key(tmp_path_factory):
    return make_release_key(tmp_path_factory.mktemp("release-key"))


@pytest.fixture(scope="session")
def upgrade_bundle(engine, registry, release_key, tmp_path_factory) -> RealBundle:
    """The real bundle for 3.5.10 -> 6.2.2 (CE, MongoDB 4.4, Redis 6.2)."""
    out = tmp_path_factory.mktemp("upgrade-bundle") / "bundle"
    return build_upgrade_bundle(engine, registry, release_key, out, FROM, TO, mongo="4.4", redis="6.2")


@pytest.fixture(scope="session")
def short_bundle(engine, registry, release_key, tmp_path_factory) -> RealBundle:
    """The real bundle for 5.5.8 -> 6.2.2 (CE, MongoDB 6.0, Redis 7.4)."""
    out = tmp_path_factory.mktemp("short-bundle") / "bundle"
    return build_upgrade_bundle(engine, registry, release_key, out, SHORT_FROM, TO, mongo="6.0", redis="7.4")


@pytest.fixture(scope="session")
def offline_start(offline_engine, upgrade_bundle):
    """The classic offline host: none of the bundle's images, the 3.5.10 stack's images."""
    _forget(offline_engine, upgrade_bundle.plan["images"])
    seed_overleaf_path(offline_engine, [FROM], mongo=["4.4"], redis=["6.2"])
    return offline_engine


def host_env(engine, tmp_path, compose=None):
    """The importer's environment on an offline host: its engine, its Compose, a state file of the test's own."""
    return {**engine.env(compose=compose or classic_compose()), "OVERLEAF_AIRGAP_STATE": str(tmp_path / "state.json"),
            "OVERLEAF_AIRGAP_TRUST_DIR": str(tmp_path / "no-trust-dir")}


def importer(env, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "importer.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def start_importer(env, *args):
    return subprocess.Popen([sys.executable, "-m", "importer.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture
def env(offline_start, tmp_path):
    return host_env(offline_start, tmp_path, classic_compose())


@pytest.fixture
def toolkit(offline_start, upgrade_bundle, env, tmp_path):
    remove_toolkit_containers(offline_start)
    clear_stale_tags(offline_start, upgrade_bundle)
    tk = make_toolkit(tmp_path, FROM, engine=offline_start.env(compose=classic_compose()), mongo="4.4", mongo_legacy=True,
                      redis="6.2")
    tk.run("up", "-d")
    tk.wait_healthy()
    yield tk
    tk.down()


def upgrade_args(bundle: RealBundle, tk, *extra):
    return ["upgrade", str(bundle.path), "--toolkit", os.fspath(tk), "--trust", str(bundle.pub), "--yes",
            "--generate-secrets", "--health-timeout", "90", "--backup-dir", str(Path(os.fspath(tk)).parent / "backups"),
            *extra]


def run_to_end(env, bundle, tk):
    out = importer(env, *upgrade_args(bundle, tk))
    assert out.returncode == 40, out.stdout + out.stderr  # paused: binary files must be checked by a person
    assert "binary files" in out.stderr and "--resume" in out.stderr
    first = out.stdout + out.stderr
    assert first.count("Signature: good") == 1, first
    out = importer(env, *upgrade_args(bundle, tk, "--resume"))
    assert out.returncode == 0, out.stdout + out.stderr
    return first, out


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


def check_final(state, old="5.5.8", versions=("3.5.10", "3.5.13", "4.2.9", "5.5.8", "6.2.2")):
    assert state["version"] == "6.2.2" and state["old"] == old
    # a legacy MONGO_IMAGE=mongo:4.4 form was moved to the split form the Toolkit reads now (issue 11 item 15)
    assert (state["mongo_image"], state["mongo_version"]) == ("mongo", "8.0") and state["redis_image"] == "redis:7.4"
    assert state["pull"] == ("false", "false")
    assert state["env_prefixes"] == ["OVERLEAF"] and state["secret_set"] and state["level"] == "2"
    assert state["running"]["sharelatex"] == "sharelatex/sharelatex:6.2.2"
    assert state["running"]["mongo"] == "mongo:8.0" and state["running"]["redis"] == "redis:7.4"
    assert {"fph-migration.done", "binary-files-migration.done"} <= set(state["markers"])
    assert dedup(state["versions_run"]) == list(versions)


def check_running_ids(tk, engine, bundle: RealBundle) -> None:
    """Each container runs the image the bundle pins for this engine's store (not merely a same-named one)."""
    pinned = pinned_ids(bundle.manifest, engine.store)
    states = tk.states()
    for name in ("sharelatex", "mongo"):
        st = states[name]
        assert st.running and st.image_id == pinned[st.image], (name, st, pinned.get(st.image))


def fcv_commands(tk):
    log = (tk.data("mongo") / "commands.log").read_text()
    return [l for l in log.splitlines() if "setFeatureCompatibilityVersion" in l]


def test_full_upgrade_3_5_10_to_6_2_2(upgrade_bundle, offline_start, env, toolkit):
    first, _ = run_to_end(env, upgrade_bundle, toolkit)
    assert "classic image store" in first and "Contents:" in first and "checked as it is read" in first
    check_final(final_state(toolkit))
    check_running_ids(toolkit, offline_start, upgrade_bundle)
    cmds = fcv_commands(toolkit)
    wanted = ['"4.4"', '"5.0"', '"5.0"', '"6.0"', '"6.0"', '"7.0", confirm: true', '"7.0", confirm: true',
              '"8.0", confirm: true']
    assert len(cmds) == len(wanted) and all(w in c for w, c in zip(wanted, cmds)), cmds
    # copies kept as bin/upgrade keeps them, the journal finished, the audit log complete
    names = [p.name for p in toolkit.config.iterdir()]
    assert any(n.startswith("__old-variables.env.") for n in names)
    assert any(n.startswith("__old-overleaf.rc.") for n in names)
    st = json.loads(importer(env, "--json", "status", "--toolkit", os.fspath(toolkit)).stdout)
    assert st["version"] == "6.2.2" and st["journal"]["finished"] and st["journal"]["done"] == st["journal"]["total"]
    assert len(st["backups"]) == 4 and all(b["exists"] and b["bytes"] > 0 for b in st["backups"])
    audit = [json.loads(l) for l in (Path(os.fspath(toolkit)) / ".overleaf-airgap" / "audit.log").read_text().splitlines()]
    started = [a for a in audit if a["action"] == "upgrade" and a["result"] == "started"]
    assert len(started) == 1 and started[0]["frm"] == FROM and started[0]["to"] == TO
    assert [a["result"] for a in audit if a["action"] == "upgrade"] == ["started", "resumed", "finished"]
    assert all(a["bundle"] == upgrade_bundle.manifest.bundle_id for a in audit)


def test_kill_at_every_step_boundary_and_inside_a_step_then_resume(upgrade_bundle, env, toolkit):
    journal_path = Path(os.fspath(toolkit)) / ".overleaf-airgap" / "journal.json"
    kills, first = 0, True
    for _ in range(60):
        args = upgrade_args(upgrade_bundle, toolkit, *([] if first else ["--resume"]))
        proc = start_importer(env, *args)
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


def test_failed_health_check_reports_state_and_rollback_restores_bytes(upgrade_bundle, env, toolkit):
    journal_path = Path(os.fspath(toolkit)) / ".overleaf-airgap" / "journal.json"
    proc = start_importer(env, *upgrade_args(upgrade_bundle, toolkit))
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
    out = importer(env, *upgrade_args(upgrade_bundle, toolkit, "--resume", "--health-timeout", "20"))
    assert out.returncode == 32, out.stdout + out.stderr
    assert "Full Project History migration not completed" in out.stderr
    assert "rollback" in out.stderr and "Traceback" not in out.stderr
    st = json.loads(importer(env, "--json", "status", "--toolkit", os.fspath(toolkit)).stdout)
    assert st["version"] == "4.2.9"
    failed = [s for s in st["journal"]["steps"] if s["status"] == "failed"]
    assert [s["id"] for s in failed] == [s["id"] for s in st["journal"]["steps"] if s["id"].endswith("-app-4.2.9")]
    out = importer(env, "--json", "rollback", "--toolkit", os.fspath(toolkit), "--yes", "--no-start",
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


def test_wrong_start_version_is_refused_before_any_change(upgrade_bundle, offline_start, env, tmp_path):
    tk = make_toolkit(tmp_path, "3.5.9", engine=offline_start.env(compose=classic_compose()), mongo="4.4", redis="6.2")
    before = toolkit_checksums(tk)
    out = importer(env, *upgrade_args(upgrade_bundle, tk))
    assert out.returncode == 31, out.stdout + out.stderr
    assert "config/version is 3.5.9" in out.stderr and "3.5.10" in out.stderr
    assert toolkit_checksums(tk) == before


def test_dry_run_changes_nothing(upgrade_bundle, env, toolkit):
    before = toolkit_checksums(toolkit)
    out = importer(env, *upgrade_args(upgrade_bundle, toolkit, "--dry-run"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "setFeatureCompatibilityVersion" in out.stdout and "write config/version = 6.2.2" in out.stdout
    assert toolkit_checksums(toolkit) == before


def test_an_image_the_host_runs_now_missing_from_the_engine_is_refused_in_preflight(upgrade_bundle, offline_start,
                                                                                    env, toolkit):
    """The plan assumes the host has the images it runs now (the bundle does not carry them): the first MongoDB
    hop starts mongo:4.4 again, which would be pulled, offline. Preflight names it before any change."""
    client = offline_start.client()
    mongo44 = client.images.get("mongo:4.4").id
    client.images.remove("mongo:4.4", force=True)  # the running container keeps it, untagged
    try:
        before = toolkit_checksums(toolkit)
        out = importer(env, *upgrade_args(upgrade_bundle, toolkit))
        assert out.returncode == 31, out.stdout + out.stderr
        assert "not in the engine" in out.stderr and "mongo:4.4" in out.stderr
        assert toolkit_checksums(toolkit) == before
    finally:
        client.api.tag(mongo44, "mongo", "4.4")


def test_a_second_run_is_locked_out(upgrade_bundle, env, toolkit):
    with ToolkitLock(Path(os.fspath(toolkit))):
        out = importer(env, *upgrade_args(upgrade_bundle, toolkit))
    assert out.returncode == 30 and "locked" in out.stderr


# --- the demo's path on both kinds of offline host (issue 9 item 5) ---------------------------------------
@pytest.mark.parametrize("host", ["classic-compose-v1", "containerd-compose-v2"])
def test_upgrade_on_each_image_store_and_compose(host, short_bundle, request, tmp_path):
    """5.5.8 -> 6.2.2 (binary files migration with its pause, MongoDB 6.0 -> 7.0 -> 8.0, the new secret) with
    the real CLI: Engine 20.10 (classic store) driven through Compose v1, Engine 26 (containerd store) through
    Compose v2. Ends healthy at 6.2.2, each container on the image ID the bundle pins for that store."""
    name, compose = ("offline_engine", "v1") if host.startswith("classic") else ("containerd_engine", "v2")
    if compose == "v1":
        compose = classic_compose()   # v2 on Debian 13, which has no Compose v1
    engine = request.getfixturevalue(name)
    remove_toolkit_containers(engine)
    clear_stale_tags(engine, short_bundle)
    seed_overleaf_path(engine, [SHORT_FROM], mongo=["6.0"], redis=["7.4"])
    env = host_env(engine, tmp_path, compose)
    which = subprocess.run(["docker", "compose", "version"], env=env, capture_output=True, text=True)
    assert (which.returncode == 0) == (compose == "v2"), which.stdout + which.stderr
    tk = make_toolkit(tmp_path, SHORT_FROM, engine=engine.env(compose=compose), mongo="6.0", mongo_legacy=False,
                      redis="7.4")
    try:
        tk.run("up", "-d")
        tk.wait_healthy()
        first, last = run_to_end(env, short_bundle, tk)
        assert f"{engine.store} image store" in first, first
        state = final_state(tk)
        check_final(state, old="5.5.8", versions=("5.5.8", "6.2.2"))
        check_running_ids(tk, engine, short_bundle)
        cmds = fcv_commands(tk)
        wanted = ['"6.0"', '"7.0", confirm: true', '"7.0", confirm: true', '"8.0", confirm: true']
        assert len(cmds) == len(wanted) and all(w in c for w, c in zip(wanted, cmds)), cmds
        st = json.loads(importer(env, "--json", "status", "--toolkit", os.fspath(tk)).stdout)
        assert st["journal"]["finished"] and st["journal"]["done"] == st["journal"]["total"] == 6
    finally:
        tk.down()
