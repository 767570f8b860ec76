"""The test infrastructure itself: private engines, registry, synthetic images and stand-ins work for real."""

from __future__ import annotations

import json
import subprocess
import urllib.request
import zlib
from pathlib import Path

import docker
import pytest

import tests.support.engine as engine_module
from tests.support.engine import (
    BASE_IMAGE,
    SNAPSHOTTER_DRIVER_TYPE,
    ComposeUnavailable,
    EngineSetupError,
    MiB,
    DataLayer,
    PrivateEngine,
    PrivateRegistry,
    build_image,
    engine26_bin_dir,
    find_compose_v1,
    mirror_reference,
    push_to_registry,
    seed_overleaf_images,
    split_reference,
)


def _layers(client: docker.DockerClient, ref: str) -> list[str]:
    return client.images.get(ref).attrs["RootFS"]["Layers"]


def _run(client: docker.DockerClient, image: str, command: list[str]) -> bytes:
    """Run ``command`` in a new container without network; return its output."""
    return client.containers.run(image, command, network_mode="none", remove=True)


@pytest.mark.engine
def test_synthetic_image_builds_and_runs_without_network(engine: PrivateEngine) -> None:
    build_image(engine, "airgap-test/hello:1", {"/etc/greeting": "hello from a layer\n"})
    client = engine.client()
    assert _run(client, "airgap-test/hello:1", ["echo", "hello"]) == b"hello\n"
    assert _run(client, "airgap-test/hello:1", ["cat", "/etc/greeting"]) == b"hello from a layer\n"


@pytest.mark.engine
def test_images_from_the_shared_base_share_its_layers(engine: PrivateEngine) -> None:
    client = engine.client()
    build_image(engine, "airgap-test/one:1", {"/one": "1"})
    build_image(engine, "airgap-test/two:1", {"/two": "2"}, extra_layers=[{"/two-more": "2+"}])
    base, one, two = (_layers(client, ref) for ref in (BASE_IMAGE, "airgap-test/one:1", "airgap-test/two:1"))
    assert one[: len(base)] == base == two[: len(base)]
    assert (len(one), len(two)) == (len(base) + 1, len(base) + 2)
    assert one[-1] != two[-2]


@pytest.mark.engine
def test_app_hotfixes_chain_on_each_other(engine: PrivateEngine, synthetic_images: list[str]) -> None:
    client = engine.client()
    older, newer = _layers(client, "sharelatex/sharelatex:5.5.3"), _layers(client, "sharelatex/sharelatex:5.5.4")
    assert newer[: len(older)] == older and len(newer) == len(older) + 1
    assert _layers(client, "mongo:6.0")[:-1] == _layers(client, "mongo:8.0")[:-1]


@pytest.mark.engine
def test_data_layers_are_deterministic_and_sized(engine: PrivateEngine) -> None:
    data = [DataLayer("/blob/random", 3 * MiB + 7, "random", seed=1), DataLayer("/blob/text", 2 * MiB, "text", seed=1)]
    client = engine.client()
    first = build_image(engine, "airgap-test/big:1", data=data)
    again = build_image(engine, "airgap-test/big:2", data=data)
    assert _layers(client, "airgap-test/big:1")[-2:] == _layers(client, "airgap-test/big:2")[-2:]
    assert first.id == again.id
    sizes = _run(client, "airgap-test/big:1", ["wc", "-c", "/blob/random", "/blob/text"])
    assert sizes.split()[:4] == [str(3 * MiB + 7).encode(), b"/blob/random", str(2 * MiB).encode(), b"/blob/text"]


def test_data_layer_content_is_reproducible_and_compressible_as_asked() -> None:
    text = b"".join(DataLayer("/t", MiB, "text", seed=3).chunks())
    noise = b"".join(DataLayer("/r", MiB, "random", seed=3).chunks())
    assert len(text) == len(noise) == MiB
    assert text == b"".join(DataLayer("/t", MiB, "text", seed=3).chunks())
    assert text != b"".join(DataLayer("/t", MiB, "text", seed=4).chunks())
    assert len(zlib.compress(text)) < MiB / 2
    assert len(zlib.compress(noise)) > MiB * 0.99


def test_references_map_to_mirror_names_like_docker_normalises_them() -> None:
    assert split_reference("mongo:8.0") == ("docker.io", "library/mongo", "8.0")
    assert split_reference("sharelatex/sharelatex") == ("docker.io", "sharelatex/sharelatex", "latest")
    assert split_reference("127.0.0.1:5000/a/b:1") == ("127.0.0.1:5000", "a/b", "1")
    assert mirror_reference("mongo:8.0", "127.0.0.1:5000") == "127.0.0.1:5000/library/mongo:8.0"
    assert mirror_reference("sharelatex/sharelatex:5.5.4", "h:1") == "h:1/sharelatex/sharelatex:5.5.4"
    pro = "quay.io/sharelatex/sharelatex-pro:6.2.2"
    assert mirror_reference(pro, "h:1") == "h:1/quay.io/sharelatex/sharelatex-pro:6.2.2"
    assert mirror_reference(pro, "h:1", {"quay.io": "h:1/q"}) == "h:1/q/sharelatex/sharelatex-pro:6.2.2"


@pytest.mark.engine
def test_push_to_registry_and_read_tags_back(
    engine: PrivateEngine, registry: PrivateRegistry, synthetic_images: list[str]
) -> None:
    pro = seed_overleaf_images(engine, ["6.2.2"], edition="pro", git_bridge=True)
    pushed = push_to_registry(engine, registry, [*synthetic_images, *pro])
    assert pushed["mongo:8.0"] == f"{registry.address}/library/mongo:8.0"
    expected = {
        "library/mongo": ["6.0", "8.0"],
        "library/redis": ["7.4"],
        "sharelatex/sharelatex": ["5.5.3", "5.5.4"],
        "quay.io/sharelatex/sharelatex-pro": ["6.2.2"],
        "quay.io/sharelatex/git-bridge": ["6.2.2"],
    }
    for repository, tags in expected.items():
        with urllib.request.urlopen(f"{registry.url}/v2/{repository}/tags/list", timeout=10) as answer:
            assert set(tags) <= set(json.load(answer)["tags"])   # other tests share the registry
    assert registry.tags("library/mongo") == ["6.0", "8.0"]
    tags = {tag for image in engine.client().images.list() for tag in image.tags}
    assert not {tag for tag in tags if tag.startswith(registry.address)}  # the mirror tags were removed again


@pytest.mark.engine
def test_mongo_standin_takes_flags_and_records_shell_calls(engine: PrivateEngine, synthetic_images: list[str]) -> None:
    client = engine.client()
    mongo = client.containers.run("mongo:6.0", ["--replSet", "overleaf"], network_mode="none", detach=True)
    try:
        fcv = 'db.adminCommand({setFeatureCompatibilityVersion: "6.0"})'
        assert mongo.exec_run(["mongosh", "--eval", fcv]).exit_code == 0
        assert mongo.exec_run(["mongosh", "--eval", fcv.replace("6.0", "7.0")]).exit_code == 1  # newer than mongod
        get_fcv = "db.adminCommand({getParameter: 1, featureCompatibilityVersion: 1})"
        ask = mongo.exec_run(["mongosh", "--quiet", "--eval", get_fcv])
        assert b"version: '6.0'" in ask.output
        log = mongo.exec_run(["cat", "/data/db/mongosh.log", "/data/db/mongod.log"]).output.decode()
        assert f"mongosh --eval {fcv}" in log
        assert "mongod --replSet overleaf" in log
        assert mongo.exec_run(["mongo", "--eval", "1"]).exit_code != 0  # like the real 6.0: no legacy shell
    finally:
        mongo.stop(timeout=5)
        mongo.remove()


@pytest.mark.engine
def test_mongo_standin_refuses_a_skipped_major(engine: PrivateEngine, synthetic_images: list[str]) -> None:
    client = engine.client()
    volume = client.volumes.create()
    try:
        mounts = {volume.name: {"bind": "/data/db", "mode": "rw"}}
        old = client.containers.run("mongo:6.0", network_mode="none", volumes=mounts, detach=True)
        old.stop(timeout=5)
        old.remove()
        new = client.containers.run("mongo:8.0", network_mode="none", volumes=mounts, detach=True)
        assert new.wait(timeout=30)["StatusCode"] == 62
        assert b"featureCompatibilityVersion 6.0" in new.logs()
        new.remove()
    finally:
        volume.remove(force=True)


@pytest.mark.engine
def test_redis_standin_answers_ping(engine: PrivateEngine, synthetic_images: list[str]) -> None:
    client = engine.client()
    command = ["redis-server", "--appendonly", "yes"]
    redis = client.containers.run("redis:7.4", command, network_mode="none", detach=True)
    try:
        ping = redis.exec_run(["redis-cli", "ping"])
        assert (ping.exit_code, ping.output) == (0, b"PONG\n")
        assert b"redis-server --appendonly yes" in redis.exec_run(["cat", "/data/redis-server.log"]).output
    finally:
        redis.stop(timeout=5)
        redis.remove()


@pytest.mark.engine
def test_two_engines_run_side_by_side(engine: PrivateEngine, offline_engine: PrivateEngine) -> None:
    online, offline = engine.client(), offline_engine.client()
    assert online.info()["DockerRootDir"] != offline.info()["DockerRootDir"]
    assert engine.host != offline_engine.host
    build_image(offline_engine, "airgap-test/offline-only:1", {"/where": "offline\n"})
    assert _run(offline, "airgap-test/offline-only:1", ["cat", "/where"]) == b"offline\n"
    with pytest.raises(docker.errors.ImageNotFound):
        online.images.get("airgap-test/offline-only:1")


@pytest.mark.engine
def test_docker_cli_reaches_the_engine_through_env(engine: PrivateEngine) -> None:
    build_image(engine, "airgap-test/cli:1")
    out = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", "airgap-test/cli:1"],
        env=engine.env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == engine.client().images.get("airgap-test/cli:1").id


@pytest.mark.engine
def test_an_engine_that_cannot_start_raises_with_its_log() -> None:
    broken = PrivateEngine(name="broken", storage_driver="no-such-driver")
    with pytest.raises(RuntimeError, match="no-such-driver"):
        broken.start(timeout=30)
    assert not broken.dir.exists()


# --- the second engine kind: Engine 26 with the containerd image store, and Compose v1 / v2 ----------------


def _docker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=120)


def test_image_store_is_read_from_the_driver_status() -> None:
    snapshotter = {"Driver": "overlayfs", "DriverStatus": [["driver-type", SNAPSHOTTER_DRIVER_TYPE]]}
    overlay2 = {"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]]}
    assert PrivateEngine.image_store_of(snapshotter) == "containerd"
    assert PrivateEngine.image_store_of(overlay2) == "classic"
    assert PrivateEngine.image_store_of({"DriverStatus": None}) == "classic"


@pytest.mark.engine
def test_containerd_engine_reports_the_snapshotter(containerd_engine: PrivateEngine) -> None:
    info = containerd_engine.client().info()
    assert [["driver-type", SNAPSHOTTER_DRIVER_TYPE]] == [p for p in info["DriverStatus"] if p[0] == "driver-type"]
    assert int(info["ServerVersion"].split(".")[0]) >= 26
    assert containerd_engine.store == "containerd" == PrivateEngine.image_store_of(info)
    out = _docker(containerd_engine.env(), "info", "--format", "{{json .DriverStatus}}")
    assert SNAPSHOTTER_DRIVER_TYPE in out.stdout, out.stderr


@pytest.mark.engine
def test_classic_engine_does_not_report_the_snapshotter(offline_engine: PrivateEngine) -> None:
    info = offline_engine.client().info()
    assert info["Driver"] == "overlay2"
    assert PrivateEngine.image_store_of(info) == "classic" == offline_engine.store


@pytest.mark.engine
def test_containerd_engine_builds_and_runs_a_synthetic_image(containerd_engine: PrivateEngine) -> None:
    image = build_image(containerd_engine, "airgap-test/hello:26", {"/etc/greeting": "hello from 26\n"})
    client = containerd_engine.client()
    assert _run(client, "airgap-test/hello:26", ["cat", "/etc/greeting"]) == b"hello from 26\n"
    assert client.images.get("airgap-test/hello:26").id == image.id
    base = _layers(client, BASE_IMAGE)
    assert _layers(client, "airgap-test/hello:26")[: len(base)] == base


@pytest.mark.engine
def test_containerd_engine_pushes_and_the_image_id_is_the_pushed_manifest_digest(
    containerd_engine: PrivateEngine, registry: PrivateRegistry
) -> None:
    refs = seed_overleaf_images(containerd_engine, redis=["7.2"])
    mirrors = {"docker.io": f"{registry.address}/ctrd"}
    pushed = push_to_registry(containerd_engine, registry, refs, mirrors=mirrors)
    assert pushed == {"redis:7.2": f"{registry.address}/ctrd/library/redis:7.2"}
    assert registry.tags("ctrd/library/redis") == ["7.2"]
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    request = urllib.request.Request(f"{registry.url}/v2/ctrd/library/redis/manifests/7.2", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as answer:
        digest = answer.headers["Docker-Content-Digest"]
    assert containerd_engine.client().images.get("redis:7.2").id == digest  # containerd store: ID = manifest digest


@pytest.mark.engine
def test_compose_v2_env_gives_docker_compose(containerd_engine: PrivateEngine) -> None:
    env = containerd_engine.compose_env("v2")
    plugin = Path(env["DOCKER_CONFIG"], "cli-plugins", "docker-compose")
    assert plugin.is_file()
    out = _docker(env, "compose", "version", "--short")
    assert out.returncode == 0 and out.stdout.startswith("2."), out.stderr
    assert containerd_engine.env()["DOCKER_CONFIG"] == env["DOCKER_CONFIG"]  # the fixture's default is v2
    answer = _docker(env, "compose", "-p", "oa-infra", "ls", "--all", "--format", "json")
    assert answer.returncode == 0 and json.loads(answer.stdout or "[]") == [], answer.stderr  # reaches the engine


def _machine_has_compose_v1() -> bool:
    """Debian 12's docker-compose package is Compose v1; Debian 13's is Compose v2 (and v1 is gone)."""
    return int(Path("/etc/debian_version").read_text().split(".")[0]) <= 12


# What this machine's Debian gives decides which behaviour is tested, and the test id says which
# (``[v1-fallback]`` on Debian 12, ``[v1-refused]`` on Debian 13), so a report never hides the other.
COMPOSE_V1_CASE = "v1-fallback" if _machine_has_compose_v1() else "v1-refused"


@pytest.mark.engine
@pytest.mark.parametrize("case", [COMPOSE_V1_CASE])
def test_compose_v1_env_falls_back_where_debian_has_it_else_is_refused_clearly(offline_engine: PrivateEngine,
                                                                                case: str) -> None:
    if case == "v1-refused":   # Debian 13: asking for v1 is a clear error, never a silent v2
        assert find_compose_v1() is None
        with pytest.raises(ComposeUnavailable, match="Compose v1"):
            offline_engine.compose_env("v1")
    else:
        assert find_compose_v1() is not None
        env = offline_engine.compose_env("v1")
        assert not Path(env["DOCKER_CONFIG"], "cli-plugins", "docker-compose").exists()
        assert _docker(env, "compose", "version").returncode != 0  # so the Toolkit uses docker-compose
        v1 = subprocess.run(["docker-compose", "version", "--short"], env=env, capture_output=True, text=True,
                            timeout=120)
        assert v1.returncode == 0 and v1.stdout.startswith("1."), v1.stderr
        ps = subprocess.run(["docker-compose", "-p", "oa-infra", "-f", "/dev/null", "ps"], env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
        assert "Cannot connect" not in ps.stderr  # v1 reaches the engine through DOCKER_HOST
    with_v2 = offline_engine.compose_env("v2")   # on both: the classic engine has Compose v2 as well
    assert _docker(with_v2, "compose", "version").returncode == 0


def _containerd_namespaces(engine: PrivateEngine) -> set[str]:
    ctr = [str(engine.bin_dir / "ctr")] if engine.bin_dir else ["ctr"]
    out = subprocess.run([*ctr, "--address", str(engine.containerd_socket), "namespaces", "ls", "-q"],
                         capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    return set(out.stdout.split())


@pytest.mark.engine
def test_classic_and_containerd_engines_run_side_by_side(
    offline_engine: PrivateEngine, containerd_engine: PrivateEngine
) -> None:
    classic, ctrd = offline_engine.client(), containerd_engine.client()
    assert classic.info()["DockerRootDir"] != ctrd.info()["DockerRootDir"]
    assert offline_engine.containerd_socket != containerd_engine.containerd_socket
    build_image(offline_engine, "airgap-test/where:1", {"/where": "classic\n"})
    build_image(containerd_engine, "airgap-test/where:1", {"/where": "containerd\n"})
    sleeper = classic.containers.run("airgap-test/where:1", ["run-forever"], network_mode="none", detach=True)
    try:
        assert _run(ctrd, "airgap-test/where:1", ["cat", "/where"]) == b"containerd\n"
        assert _run(classic, "airgap-test/where:1", ["cat", "/where"]) == b"classic\n"
        assert [c.id for c in ctrd.containers.list(all=True)] == []  # the classic engine's container is not here
    finally:
        sleeper.remove(force=True)
    # each engine has its own containerd, holding only its own namespaces (images live in the containerd one's)
    assert containerd_engine.namespace in _containerd_namespaces(containerd_engine)
    assert containerd_engine.namespace not in _containerd_namespaces(offline_engine)
    assert offline_engine.namespace not in _containerd_namespaces(containerd_engine)


@pytest.mark.engine
def test_each_offline_engine_runs_on_both_stores(each_offline_engine: PrivateEngine) -> None:
    build_image(each_offline_engine, "airgap-test/each:1", {"/store": each_offline_engine.store + "\n"})
    output = _run(each_offline_engine.client(), "airgap-test/each:1", ["cat", "/store"])
    assert output.decode().strip() == each_offline_engine.store


def test_a_missing_engine26_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(engine_module, "ENGINE26_CACHE", tmp_path / "engine26")
    monkeypatch.setattr(engine_module, "_engine_major", lambda dockerd: 20)  # the machine's engine is 20.10
    engine26_bin_dir.cache_clear()
    try:
        with pytest.raises(EngineSetupError, match=r"no Docker Engine 26.*tests/setup\.sh"):
            engine26_bin_dir()
        engine = PrivateEngine(name="no26", store="containerd")
        with pytest.raises(EngineSetupError, match="Engine 26"):
            engine.start()
        assert not engine.dir.exists()
    finally:
        engine26_bin_dir.cache_clear()


@pytest.mark.engine
def test_an_engine_with_another_store_than_asked_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PrivateEngine, "image_store_of", staticmethod(lambda info: "containerd"))
    engine = PrivateEngine(name="mismatch")  # classic asked for, "containerd" reported
    with pytest.raises(EngineSetupError, match="uses the containerd image store, not the classic one"):
        engine.start(timeout=30)
    assert not engine.dir.exists()
