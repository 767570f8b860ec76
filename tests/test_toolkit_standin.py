"""The Toolkit stand-in (tests/toolkit) and the gated images (tests/support/overleaf_images.py) behave
like the real ones where `overleaf-import upgrade` depends on them: a wrong upgrade order really fails.

Engine tests run on the session's ``offline_engine``; each removes its containers, even on failure
(container names are global in an engine).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from manifests.toolkit_config import read_toolkit
from tests.support.engine import PrivateEngine
from tests.support.overleaf_images import seed_overleaf_path
from tests.support.toolkit import (
    Toolkit, container_states, make_toolkit, remove_toolkit_containers, toolkit_checksums)

FPH = "cd /overleaf/services/web; VERBOSE_LOGGING=true node scripts/history/migrate_history.js --force-clean"
BINARY = ("source /etc/overleaf/env.sh && source /etc/container_environment.sh && cd /overleaf/services/history-v1"
          " && /sbin/setuser www-data node storage/scripts/back_fill_file_hash.mjs {}")  # fmt: skip
GET_FCV = "db.adminCommand({ getParameter: 1, featureCompatibilityVersion: 1 })"


def set_fcv(version: str, confirm: bool = False) -> str:
    return f'db.adminCommand({{ setFeatureCompatibilityVersion: "{version}"{", confirm: true" if confirm else ""} }})'


@pytest.fixture(scope="module")
def images(offline_engine: PrivateEngine) -> list[str]:
    refs = seed_overleaf_path(offline_engine, ["3.5.13", "4.2.9", "5.5.8", "6.2.2"],
                              mongo=["4.4", "5.0", "6.0", "7.0", "8.0"], redis=["6.2", "7.4"])  # fmt: skip
    refs += seed_overleaf_path(offline_engine, ["5.5.8"], edition="pro", texlive=["2025.1"])
    return refs


@pytest.fixture
def toolkit(tmp_path: Path, offline_engine: PrivateEngine, images: list[str]) -> Iterator[Callable[..., Toolkit]]:
    """make_toolkit bound to the offline engine; every Toolkit made is brought down afterwards."""
    made: list[Toolkit] = []
    remove_toolkit_containers(offline_engine)

    def make(version: str, **kwargs: object) -> Toolkit:
        tk = make_toolkit(tmp_path, version, engine=offline_engine, name=f"toolkit{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(tk)
        return tk

    try:
        yield make
    finally:
        for tk in made:
            tk.down()
        remove_toolkit_containers(offline_engine)
        assert not container_states(offline_engine), "Toolkit containers left in the engine"


# --- engine tests ---------------------------------------------------------------------------------


def test_ce_3_5_13_comes_up_and_runs_the_history_migration(toolkit: Callable[..., Toolkit]) -> None:
    tk = toolkit("3.5.13", mongo="4.4", redis="6.2")
    tk.run("up", "-d")
    tk.wait_healthy()
    assert tk.running_images() == {"sharelatex": "sharelatex/sharelatex:3.5.13", "mongo": "mongo:4.4",
                                   "redis": "redis:6.2"}  # fmt: skip
    states = tk.states()
    assert states["mongo"].health == "healthy" and states["redis"].health == "healthy"
    assert "Up" in tk.compose("ps").stdout

    tk.data().joinpath("FAIL_MIGRATION").write_text("migrate_history\n")
    failed = tk.exec_app(FPH, check=False)
    assert failed.returncode != 0 and "Projects failed:  1" in failed.stdout
    assert not (tk.data() / "fph-migration.done").exists()

    tk.data().joinpath("FAIL_MIGRATION").unlink()
    done = tk.exec_app(FPH)
    assert "Projects failed:  0" in done.stdout
    assert (tk.data() / "fph-migration.done").is_file()
    assert "Done." in tk.run("run-script", "scripts/history/clean_sl_history_data.js").stdout
    assert (tk.data() / "versions.log").read_text().split()[::2] == ["3.5.13"]


def test_4_2_9_restart_loops_until_the_history_migration_ran(toolkit: Callable[..., Toolkit]) -> None:
    tk = toolkit("3.5.13")
    tk.run("up", "-d")
    tk.wait_healthy()

    tk.set_version("4.2.9")  # wrong: the FPH migration has not run on 3.5.13
    tk.run("up", "-d")
    tk.wait_refused("sharelatex", "Full Project History migration not completed")
    assert tk.states()["sharelatex"].image == "sharelatex/sharelatex:4.2.9"
    assert tk.app_status() is None
    assert "rs.initiate" in (tk.data("mongo") / "commands.log").read_text()  # bin/up made the replica set

    tk.set_version("3.5.13")  # the right order: back to 3.5.13, migrate, then 4.2.9
    tk.run("up", "-d")
    tk.wait_healthy()
    assert "Projects failed:  0" in tk.exec_app(FPH).stdout
    tk.set_version("4.2.9")
    tk.run("up", "-d")
    tk.wait_healthy()
    assert tk.running_images()["sharelatex"] == "sharelatex/sharelatex:4.2.9"
    assert (tk.data() / "versions.log").read_text().split()[::2] == ["3.5.13", "3.5.13", "4.2.9"]


def test_mongo_fcv_commands_are_logged_and_enforced(toolkit: Callable[..., Toolkit]) -> None:
    tk = toolkit("5.5.8", mongo="7.0", mongo_legacy=False, redis="7.4")
    tk.run("up", "-d", "mongo")
    assert "'7.0'" in tk.mongo_eval(GET_FCV).stdout  # fresh data: the binary's own series

    refused = tk.mongo_eval(set_fcv("6.0"), check=False)  # 7.0+ wants confirm: true
    assert refused.returncode != 0 and "confirm: true" in refused.stderr
    too_new = tk.mongo_eval(set_fcv("8.0", confirm=True), check=False)
    assert too_new.returncode != 0 and "Invalid feature compatibility version value '8.0'" in too_new.stderr
    tk.mongo_eval(set_fcv("6.0", confirm=True))
    assert (tk.data("mongo") / "fcv").read_text().strip() == "6.0"
    assert "'6.0'" in tk.run("mongo", input=GET_FCV + "\n").stdout  # bin/mongo reads JS from stdin

    log = (tk.data("mongo") / "commands.log").read_text()
    assert log.count("setFeatureCompatibilityVersion") == 3 and "confirm: true" in log
    assert "ping" not in log  # health checks are not logged


def test_mongo_refuses_a_skipped_major_and_takes_one_at_a_time(toolkit: Callable[..., Toolkit]) -> None:
    tk = toolkit("4.2.9", mongo="4.4")  # the older MONGO_IMAGE=mongo:4.4 form, legacy `mongo` shell
    tk.run("up", "-d", "mongo")
    assert tk.mongo_eval(set_fcv("5.0"), check=False).returncode != 0  # newer than the server
    tk.mongo_eval(set_fcv("4.4"))
    tk.run("stop")

    tk.set_rc(MONGO_IMAGE="mongo:6.0")  # 4.4 -> 6.0 skips 5.0
    skipped = tk.run("up", "-d", "mongo", check=False)
    assert skipped.returncode != 0
    assert "UPGRADE PROBLEM" in tk.logs("mongo") and "'4.4'" in tk.logs("mongo")
    assert tk.wait_exit("mongo") == 62

    tk.set_rc(MONGO_IMAGE="mongo:5.0")
    tk.run("up", "-d", "mongo")
    assert "4.4" in tk.mongo_eval(GET_FCV).stdout  # FCV stays until it is raised
    tk.mongo_eval(set_fcv("5.0"))
    tk.run("stop")
    tk.set_rc(MONGO_IMAGE="mongo", MONGO_VERSION="6.0")  # the split form, mongosh from 6.0
    tk.run("up", "-d", "mongo")
    assert tk.running_images()["mongo"] == "mongo:6.0"
    assert "'5.0'" in tk.mongo_eval(GET_FCV).stdout
    assert (tk.data("mongo") / "version").read_text().strip() == "6.0"


def test_app_gates_from_5_5_to_6_2(toolkit: Callable[..., Toolkit]) -> None:
    tk = toolkit("5.5.8", mongo="6.0", mongo_legacy=False, redis="6.2", redis_aof=True)
    tk.run("up", "-d")
    tk.wait_healthy()
    assert "Binary files migration report" in tk.exec_app(BINARY.format("--report")).stdout
    assert '"project_ids":0' in tk.compose("exec", "-T", "sharelatex", "/overleaf/bin/flush-history-queues").stdout
    assert "The binary files migration succeeded." in tk.exec_app(BINARY.format("--all")).stdout
    assert (tk.data() / "binary-files-migration.done").is_file()

    tk.set_version("6.2.2")  # no secret yet
    tk.run("up", "-d")
    tk.wait_refused("sharelatex", "Missing required secrets")
    assert tk.wait_exit("sharelatex") == 101

    tk.set_variables(OVERLEAF_INVITE_TOKEN_SECRET="c2VjcmV0LXRoYXQtc3RheXMtc3RhYmxl")
    tk.run("up", "-d")
    tk.wait_refused("sharelatex", "The MongoDB server has version 6.0, but Overleaf requires at least version 8.0. Aborting.")

    for current, nxt in (("6.0", "7.0"), ("7.0", "8.0")):  # one major at a time, FCV first
        tk.mongo_eval(set_fcv(current, confirm=current >= "7.0"))
        tk.run("stop")
        tk.set_rc(MONGO_VERSION=nxt)
        tk.run("up", "-d", "mongo")
    tk.mongo_eval(set_fcv("7.0", confirm=True))
    tk.run("up", "-d")
    tk.wait_refused("sharelatex", "requires at least version 7.4")  # redis 6.2

    tk.run("stop")
    tk.set_rc(REDIS_IMAGE="redis:7.4")
    tk.run("up", "-d")
    tk.wait_healthy()
    assert tk.running_images() == {"sharelatex": "sharelatex/sharelatex:6.2.2", "mongo": "mongo:8.0",
                                   "redis": "redis:7.4"}  # fmt: skip
    assert (tk.data("redis") / "appendonlydir").is_dir()

    tk.run("stop")  # Redis 7 data cannot go back to 6.2
    tk.set_rc(REDIS_IMAGE="redis:6.2")
    tk.run("up", "-d", "redis", check=False)
    tk.wait_refused("redis", "Fatal error loading the DB")


def test_server_pro_up_pulls_tex_live_images_unless_told_not_to(toolkit: Callable[..., Toolkit]) -> None:
    tk = toolkit("5.5.8", edition="pro", mongo="6.0", mongo_legacy=False, redis="6.2", sibling_containers=True,
                 texlive=["2025.1"])  # fmt: skip
    pulled = tk.run("up", "-d", check=False)
    assert pulled.returncode != 0
    assert "Pulling TeX Live image quay.io/sharelatex/texlive-full:2025.1" in pulled.stdout
    assert "sharelatex" not in tk.states()

    tk.set_rc(SIBLING_CONTAINERS_PULL="false")
    tk.run("up", "-d")
    tk.wait_healthy()
    assert tk.running_images()["sharelatex"] == "quay.io/sharelatex/sharelatex-pro:5.5.8"


# --- config checks and compose assembly (no containers) ------------------------------------------------


@pytest.mark.parametrize(
    ("version", "edit", "message"),
    [
        ("4.2.9", {"version": "5.5.8"}, "bin/rename-env-vars-5-0"),  # SHARELATEX_ variables with 5.x
        ("5.5.8", {"version": "4.2.9"}, "OVERLEAF_ prefix"),  # OVERLEAF_ variables with 4.x
        ("5.5.8", {"variables": {"TEXMFVAR": "/var/lib/sharelatex/tmp/texmf-var"}}, "TEXMFVAR"),
        ("4.2.9", {"rc_legacy": True}, "bin/rename-rc-vars"),  # SHARELATEX_DATA_PATH in overleaf.rc
        ("5.0.3", {"version": "5.0.1"}, "retracted"),
        ("5.0.3", {"version": "5.0.1-with-texlive-full"}, "retracted"),
        ("5.5.8", {"version": "5.5"}, "invalid version"),
        ("5.5.8", {"rc": {"MONGO_VERSION": "6"}, "mongo_legacy": False}, "MONGO_VERSION"),
    ],
)
def test_docker_compose_refuses_bad_config(tmp_path: Path, version: str, edit: dict, message: str) -> None:
    new_version = edit.pop("version", None)
    tk = make_toolkit(tmp_path, version, **edit)
    if new_version:
        tk.set_version(new_version)
    before = toolkit_checksums(tk)
    out = tk.compose("config", check=False)
    assert out.returncode == 1 and message in out.stderr
    up = tk.run("up", "-d", check=False)
    assert up.returncode == 1 and message in up.stderr
    assert toolkit_checksums(tk) == before


def compose_config(tk: Toolkit) -> dict:
    return yaml.safe_load(tk.compose("config").stdout)["services"]


def health_test(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test[1:])


def test_compose_assembly_follows_the_config(tmp_path: Path) -> None:
    old = compose_config(make_toolkit(tmp_path, "3.5.13-with-texlive-full", edition="pro", git_bridge=True, name="old"))
    assert set(old) == {"sharelatex", "mongo", "redis"}  # no git-bridge before 4.0
    assert old["sharelatex"]["image"] == "quay.io/sharelatex/sharelatex-pro:3.5.13-with-texlive-full"
    assert old["sharelatex"]["volumes"][0].endswith("/data/overleaf:/var/lib/sharelatex:rw")
    assert old["mongo"]["command"] == "mongod" and health_test(old["mongo"]).startswith("mongo ")

    new = compose_config(make_toolkit(
        tmp_path, "6.2.2", edition="pro", git_bridge=True, nginx="1.30-alpine", sibling_containers=True,
        texlive=["2025.1"], mongo="8.0", mongo_legacy=False, redis="7.4", redis_aof=True,
        overleaf_data="data/sharelatex", rc={"OVERLEAF_IMAGE_NAME": "registry.example/overleaf-pro"}, name="new"))  # fmt: skip
    assert set(new) == {"sharelatex", "mongo", "redis", "git-bridge", "nginx"}
    assert {s: new[s].get("container_name") for s in new} == {s: s for s in new}
    assert new["sharelatex"]["image"] == "registry.example/overleaf-pro:6.2.2"
    assert new["git-bridge"]["image"] == "quay.io/sharelatex/git-bridge:6.2.2"
    assert new["git-bridge"]["environment"]["GIT_BRIDGE_API_BASE_URL"] == "http://sharelatex:3000/api/v0/"
    assert new["mongo"]["image"] == "mongo:8.0" and new["mongo"]["command"] == "--replSet overleaf"
    assert health_test(new["mongo"]).startswith("mongosh ")
    assert new["redis"]["command"] == "redis-server --appendonly yes"
    assert new["nginx"]["image"] == "nginx:1.30-alpine"
    volumes = new["sharelatex"]["volumes"]
    assert any(v.endswith("/data/sharelatex:/var/lib/overleaf:rw") for v in volumes)
    assert any(":/var/run/docker.sock" in v for v in volumes)
    assert new["sharelatex"]["environment"]["SANDBOXED_COMPILES"] == "true"
    assert "ports" not in new["sharelatex"]


def test_init_rename_scripts_and_git_checkout(tmp_path: Path) -> None:
    tk = make_toolkit(tmp_path, "4.2.9", rc_legacy=True)
    assert subprocess.run(["git", "status", "--porcelain"], cwd=tk.root, capture_output=True, text=True).stdout == ""
    assert tk.run("init", check=False).returncode == 1  # config/ exists already

    declined = tk.run("rename-env-vars-5-0", input="n\n", check=False)
    assert declined.returncode != 0 and "SHARELATEX_APP_NAME" in (tk.config / "variables.env").read_text()
    original = (tk.config / "variables.env").read_text()
    tk.run("rename-env-vars-5-0", input="y\n")
    backups = list(tk.config.glob("__old-variables.env.*"))
    assert len(backups) == 1 and backups[0].read_text() == original
    assert "SHARELATEX_" not in (tk.config / "variables.env").read_text()
    assert tk.variables()["OVERLEAF_APP_NAME"] == "Test Overleaf"

    tk.run("rename-rc-vars", input="y\n")
    assert tk.rc()["OVERLEAF_DATA_PATH"] == "data/overleaf" and list(tk.config.glob("__old-overleaf.rc.*"))
    assert "nothing to rename" in tk.run("rename-rc-vars", input="").stdout

    tk.set_version("5.5.8")
    tk.set_variables(TEXMFVAR=None)
    assert tk.compose("config").returncode == 0  # renamed config passes the 5.x checks


def test_upgrade_moves_to_the_seed_version_only(tmp_path: Path) -> None:
    tk = make_toolkit(tmp_path, "4.2.9", pull_before_upgrade=False)
    answers = "y\nn\ny\ny\nn\n"  # upgrade? stop services? proceed? rename vars? start again?
    out = tk.run("upgrade", "--skip-git-update", input=answers)
    assert "4.2.9 -> 6.2.2" in out.stdout
    assert tk.version() == "6.2.2" and (tk.config / "__old-version").read_text().strip() == "4.2.9"
    assert "OVERLEAF_APP_NAME" in tk.variables() and list(tk.config.glob("__old-variables.env.*"))


def test_made_toolkits_read_back_like_the_importer_reads_them(tmp_path: Path) -> None:
    old = read_toolkit(make_toolkit(tmp_path, "3.5.13", name="old").root)
    assert (old.version, old.edition, old.mongo_version, old.mongo_legacy_form, old.redis_version) == (
        "3.5.13", "ce", "4.4", True, "6.2")  # fmt: skip
    assert old.data_paths["OVERLEAF_DATA_PATH"] == tmp_path / "old" / "data" / "overleaf"
    pro = read_toolkit(make_toolkit(tmp_path, "5.5.8", edition="pro", mongo="6.0", mongo_legacy=False,
                                    git_bridge=True, sibling_containers=True, texlive=["2025.1"], name="pro").root)  # fmt: skip
    assert pro.edition == "pro" and pro.git_bridge and not pro.mongo_legacy_form and pro.mongo_version == "6.0"
    assert pro.texlive == ("quay.io/sharelatex/texlive-full:2025.1",)
