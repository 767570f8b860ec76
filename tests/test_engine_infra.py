"""The test infrastructure itself: private engines, registry, synthetic images and stand-ins work for real."""

from __future__ import annotations

import json
import subprocess
import urllib.request
import zlib

import docker
import pytest

from tests.support.engine import (
    BASE_IMAGE,
    MiB,
    DataLayer,
    PrivateEngine,
    PrivateRegistry,
    build_image,
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
            assert sorted(json.load(answer)["tags"]) == tags
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
