"""The two halves together: the real bundler and the real importer, on both image stores.

``overleaf-bundle build`` (no engine: ``DOCKER_HOST`` points nowhere, images come from the
``registry`` fixture through ``--mirror``) -> ``overleaf-import verify`` -> ``load`` ->
``inventory`` -> ``overleaf-bundle build --have RECEIPT`` (a delta) -> ``load``, once with
the classic store (``offline_engine``) and once with the containerd store
(``containerd_engine``). The stand-in app images form a hotfix chain (5.5.4 is built on
5.5.3), so the delta for 5.5.3 -> 5.5.4 leaves out every layer 5.5.3 brought. On the
containerd store the bundler learns the host's layer blobs by fetching each receipt
image's manifest by digest from the registry.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from manifests.bundle import BundleManifest
from tests.support.engine import push_to_registry, wipe_engine
from tests.support.offline_host import OfflineHost

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "airgap-round-trip"        # our corner of the shared registry
PASSPHRASE = "round trip passphrase"
NO_ENGINE = "unix:///nonexistent/docker.sock"
OLD, NEW = "sharelatex/sharelatex:5.5.3", "sharelatex/sharelatex:5.5.4"
STACK = ["--mongo", "8.0", "--redis", "7.4"]


def _run(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _ok(proc: subprocess.CompletedProcess) -> dict:
    if proc.returncode != 0:  # whole, in the report's captured output (the assertion message is cut short)
        print(f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}", file=sys.stderr)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def mirrored(engine, synthetic_images, registry) -> str:
    """The stand-ins in the registry under our namespace; returns the ``--mirror`` value for docker.io."""
    prefix = f"{registry.address}/{NAMESPACE}"
    push_to_registry(engine, registry, [OLD, NEW, "mongo:8.0", "redis:7.4"], mirrors={"docker.io": prefix})
    return f"docker.io={prefix}"


@pytest.fixture(scope="module")
def release_key(tmp_path_factory) -> Path:
    key = tmp_path_factory.mktemp("release") / "release.key"
    _ok(_run("bundler.cli", "keygen", "--out", str(key), "--passphrase-env", "RT_PASS", "--json",
             env=dict(os.environ, RT_PASS=PASSPHRASE)))
    return key


class Online:
    """The online host: no engine, only the mirror registry and the signing key."""

    def __init__(self, key: Path, mirror: str) -> None:
        self.key, self.mirror = key, mirror
        self.env = dict(os.environ, RT_PASS=PASSPHRASE, DOCKER_HOST=NO_ENGINE)

    def build(self, out: Path, current: str, target: str, *extra: str) -> dict:
        return _ok(_run("bundler.cli", "build", "--from", current, "--to", target, *STACK, "--key", str(self.key),
                        "--passphrase-env", "RT_PASS", "--out", str(out), "--mirror", self.mirror,
                        "--max-part-size", "1M", "--no-importer", *extra, "--json", env=self.env))


@pytest.mark.engine
def test_build_verify_load_inventory_delta_load(each_offline_engine, mirrored, release_key, tmp_path):
    engine = each_offline_engine
    wipe_engine(engine.client())
    online, offline = Online(release_key, mirrored), OfflineHost(engine, tmp_path, f"{release_key}.pub")
    try:
        # 1. a full bundle for 5.5.2 -> 5.5.3, verified and loaded
        full = online.build(tmp_path / "full", "5.5.2", "5.5.3")
        assert full["delta"] is None and full["exact"] and len(full["parts"]) > 1
        verified = _ok(offline.run("verify", str(tmp_path / "full"), "--json"))
        assert verified["ok"] and verified["state"]["recorded"]
        loaded = _ok(offline.run("load", str(tmp_path / "full"), "--json"))
        assert loaded["load"]["store"] == engine.store and loaded["load"]["load"] == [OLD]
        m_full = BundleManifest.from_bytes((tmp_path / "full" / "manifest.json").read_bytes())
        (old,) = m_full.images
        assert offline.tags()[OLD] == old.expected_id(engine.store)

        # 2. the receipt of what the host now holds
        receipt = tmp_path / "receipt.json"
        inv = _ok(offline.run("inventory", "--out", str(receipt), "--json"))
        doc = json.loads(receipt.read_bytes())
        assert doc["store"] == engine.store and inv["images"] == len(doc["images"]) >= 1
        assert any(OLD in i["tags"] and i["id"] == old.expected_id(engine.store) for i in doc["images"])

        # 3. a delta for 5.5.3 -> 5.5.4 leaves out every layer 5.5.3 brought, and only those
        delta = online.build(tmp_path / "delta", "5.5.3", "5.5.4", "--have", str(receipt))
        m_delta = BundleManifest.from_bytes((tmp_path / "delta" / "manifest.json").read_bytes())
        (new,) = m_delta.images
        assert list(new.diff_ids[:len(old.diff_ids)]) == list(old.diff_ids)    # a hotfix chain
        assert delta["delta"]["store"] == engine.store
        assert set(m_delta.omitted_layers) == set(old.layers) and len(new.layers) > len(old.layers)
        assert not set(m_delta.omitted_layers) & {b.digest for b in m_delta.blobs}
        assert delta["delta"]["omitted_layers"] == len(old.layers)

        # 4. the delta loads on the host that holds the base, and the tag has its pinned ID
        loaded = _ok(offline.run("load", str(tmp_path / "delta"), "--json"))
        assert loaded["load"]["load"] == [NEW]
        assert offline.tags()[NEW] == new.expected_id(engine.store)
        assert offline.tags()[OLD] == old.expected_id(engine.store)
        offline.runs(NEW)
    finally:
        wipe_engine(engine.client())


# --- a multi-platform tag (Docker Hub's mongo and redis are image indexes) ------------------------------
MULTI = "airgap-multi-platform"


@pytest.fixture(scope="module")
def multi_platform(mirrored, registry) -> dict[str, str]:
    """5.5.4 served as an OCI image index: the real linux/amd64 stand-in beside a linux/arm64 sibling."""
    from manifests.distribution import OCI_INDEX, RegistryClient

    src_repo, repo = f"{NAMESPACE}/sharelatex/sharelatex", f"{MULTI}/sharelatex/sharelatex"
    with RegistryClient(registry.address) as client:
        amd = client.get_manifest(src_repo, "5.5.4")
        doc = json.loads(amd.data)
        for blob in [doc["config"], *doc["layers"]]:   # the amd64 image in our repository
            client.mount_blob(repo, blob["digest"], src_repo)
        client.put_manifest(repo, amd.digest, amd.data, amd.media_type)
        arm_config = json.dumps({"architecture": "arm64", "variant": "v8", "os": "linux",
                                 "rootfs": {"type": "layers", "diff_ids": []}, "config": {}}).encode()
        arm_config_digest = "sha256:" + hashlib.sha256(arm_config).hexdigest()
        client.push_blob(repo, arm_config_digest, len(arm_config), lambda: io.BytesIO(arm_config))
        arm = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                     "digest": arm_config_digest, "size": len(arm_config)},
                          "layers": []}).encode()
        arm_digest = client.put_manifest(repo, "arm64-only", arm, "application/vnd.oci.image.manifest.v1+json")
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_digest, "size": len(arm),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": amd.media_type, "digest": amd.digest, "size": len(amd.data),
             "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
        index_digest = client.put_manifest(repo, "5.5.4", index, OCI_INDEX)
    return {"amd64": amd.digest, "arm64": arm_digest, "arm64_config": arm_config_digest, "index": index_digest,
            "mirror": f"docker.io={registry.address}/{MULTI}"}


@pytest.mark.engine
def test_multi_platform_tag_carries_the_chosen_platform_only(each_offline_engine, multi_platform, release_key,
                                                              tmp_path):
    engine = each_offline_engine
    wipe_engine(engine.client())
    online, offline = Online(release_key, multi_platform["mirror"]), OfflineHost(engine, tmp_path,
                                                                                 f"{release_key}.pub")
    try:
        online.build(tmp_path / "b", "5.5.3", "5.5.4")
        m = BundleManifest.from_bytes((tmp_path / "b" / "manifest.json").read_bytes())
        (img,) = m.images
        assert img.exact and img.platform == "linux/amd64"
        assert img.manifest_digest == multi_platform["amd64"] and img.upstream_digest == multi_platform["index"]
        assert img.index_entry["digest"] == multi_platform["amd64"]
        assert img.index_entry["platform"] == {"os": "linux", "architecture": "amd64"}
        carried = {b.digest for b in m.blobs}
        assert not carried & {multi_platform["arm64"], multi_platform["arm64_config"], multi_platform["index"]}
        _ok(offline.run("load", str(tmp_path / "b"), "--json"))
        assert offline.tags()[NEW] == img.expected_id(engine.store)   # the platform manifest's digest (containerd)
        offline.runs(NEW)
        # asking for a platform the tag lacks lists those it has
        bad = _run("bundler.cli", "build", "--from", "5.5.3", "--to", "5.5.4", *STACK, "--key", str(release_key),
                   "--passphrase-env", "RT_PASS", "--out", str(tmp_path / "s390x"), "--mirror",
                   multi_platform["mirror"], "--no-importer", "--platform", "linux/s390x", env=online.env)
        assert bad.returncode == 21 and "linux/amd64" in bad.stderr and "linux/arm64" in bad.stderr, bad.stderr
    finally:
        wipe_engine(engine.client())
