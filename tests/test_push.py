"""``overleaf-import push``: from a verified bundle straight into a registry, digests intact, no engine.

Bundles are made from a real registry (tests/support/registry_bundles.py): the synthetic
images are pushed into the session ``registry`` (the "upstream"), downloaded byte for byte
into a signed format-2 bundle, and pushed by the real CLI into a fresh target registry,
with ``DOCKER_HOST`` pointing nowhere. The target's manifests are then read back over the
API and compared with the upstream digests; pulls on both image stores check what an
offline host gets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from importer.images.push import RegistryAddressError, check_registry, parse_registry, registry_names
from tests.support.signing_keys import make_key
from tests.support.engine import PrivateRegistry, push_to_registry
from tests.support.registry_bundles import make_registry_bundle

REPO = Path(__file__).resolve().parent.parent
APP, MONGO, REDIS = "sharelatex/sharelatex:5.5.4", "mongo:8.0", "redis:7.4"
ACCEPT = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


# --- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upstream(engine, registry, synthetic_images) -> dict[str, str]:
    """{ref: its name in the upstream registry} for the synthetic images."""
    return push_to_registry(engine, registry, [APP, MONGO, REDIS])


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    return make_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def target(tmp_path) -> PrivateRegistry:
    """An empty internal registry for one test."""
    with PrivateRegistry() as reg:
        yield reg


class Host:
    """The offline host: a trust folder, a state file, and no Docker engine at all."""

    def __init__(self, root: Path, signer) -> None:
        self.trust = root / "trusted.d"
        self.trust.mkdir(parents=True)
        (self.trust / "builder.pub").write_bytes(signer.pub_path.read_bytes())
        self.env = {**os.environ, "OVERLEAF_AIRGAP_STATE": str(root / "state.json"),
                    "OVERLEAF_AIRGAP_TRUST_DIR": str(self.trust), "DOCKER_HOST": f"unix://{root}/no-engine.sock"}

    def run(self, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "importer.cli", *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def push(self, bundle: Path, address: str) -> dict:
        start = time.monotonic()
        proc = self.run("--json", "push", str(bundle), "--registry", address)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        print(f"push {bundle.name} -> {address}: {time.monotonic() - start:.2f} s, {out['blobs']}")
        return out


@pytest.fixture
def host(tmp_path, signer) -> Host:
    return Host(tmp_path / "host", signer)


def get_manifest(reg: PrivateRegistry, repo: str, tag: str) -> tuple[bytes, str]:
    req = urllib.request.Request(f"{reg.url}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
    with urllib.request.urlopen(req, timeout=30) as answer:
        return answer.read(), answer.headers["Docker-Content-Digest"]


def all_tags(reg: PrivateRegistry) -> dict[str, list[str]]:
    with urllib.request.urlopen(f"{reg.url}/v2/_catalog", timeout=30) as answer:
        repos = json.load(answer).get("repositories") or []
    out = {}
    for repo in repos:
        try:
            tags = reg.tags(repo)
        except urllib.error.HTTPError:
            tags = []
        if tags:
            out[repo] = tags
    return out


def upstream_digest(registry: PrivateRegistry, pushed: str) -> str:
    name, _, tag = pushed.rpartition(":")
    return get_manifest(registry, name.split("/", 1)[1], tag)[1]


# --- the address ------------------------------------------------------------------------------------------
def test_registry_address_forms():
    assert parse_registry("registry.lan:5000").address == "registry.lan:5000"
    t = parse_registry("Registry.LAN:5000/team/overleaf/")
    assert (t.host, t.prefix, t.address) == ("registry.lan:5000", "team/overleaf", "registry.lan:5000/team/overleaf")
    assert parse_registry("127.0.0.1:5000").loopback and not parse_registry("reg.lan").loopback
    assert check_registry("localhost") == "localhost"
    assert registry_names(["mongo:8.0", "quay.io/sharelatex/sharelatex-pro:6.2.2"], "r:1/p") == {
        "mongo:8.0": "r:1/p/mongo:8.0",
        "quay.io/sharelatex/sharelatex-pro:6.2.2": "r:1/p/sharelatex/sharelatex-pro:6.2.2"}
    for bad in ("", "bad host;rm", "http://reg.lan:5000", "reg.lan:99999", "reg.lan:0", "reg.lan/Team",
                "reg.lan/a//b", "-reg.lan", "reg.lan:5000/a/../b"):
        with pytest.raises(RegistryAddressError) as err:
            parse_registry(bad)
        assert err.value.exit_code == 2 and err.value.hint


def test_bad_address_is_a_usage_error(host, tmp_path):
    proc = host.run("push", str(tmp_path), "--registry", "bad host;rm")
    assert proc.returncode == 2 and "not a registry address" in proc.stderr and "HOST[:PORT][/PREFIX]" in proc.stderr


# --- pushing ------------------------------------------------------------------------------------------------
def test_exact_bundle_keeps_upstream_digests(registry, upstream, signer, target, host, tmp_path):
    bundle = tmp_path / "bundle"
    make_registry_bundle(registry.url, upstream, bundle, signer)
    out = host.push(bundle, target.address)
    assert out["blobs"]["uploaded"] > 0 and out["blobs"]["bytes_uploaded"] > 0
    assert out["overleaf_rc"]["OVERLEAF_IMAGE_NAME"] == f"{target.address}/sharelatex/sharelatex"
    assert out["overleaf_rc"]["MONGO_IMAGE"] == f"{target.address}/mongo"
    by_ref = {i["ref"]: i for i in out["images"]}
    for ref, pushed in upstream.items():
        want = upstream_digest(registry, pushed)
        repo, _, tag = out["pushed"][ref].partition("/")[2].rpartition(":")
        data, digest = get_manifest(target, repo, tag)
        assert digest == want == by_ref[ref]["digest"] == by_ref[ref]["upstream_digest"]
        assert by_ref[ref]["digest_preserved"] is True
    # a second push finds everything in place: nothing is uploaded again
    again = host.push(bundle, target.address)
    assert again["blobs"]["uploaded"] == 0 and again["blobs"]["bytes_uploaded"] == 0
    assert again["blobs"]["skipped"] >= len(upstream) * 2
    assert again["digests"] == out["digests"]


def test_prefix_and_pulls_on_both_stores(registry, upstream, signer, target, host, tmp_path, offline_engine,
                                         containerd_engine):
    bundle = tmp_path / "bundle"
    m = make_registry_bundle(registry.url, {MONGO: upstream[MONGO]}, bundle, signer)
    img = m["images"][0]
    out = host.push(bundle, f"{target.address}/team/overleaf")
    name = f"{target.address}/team/overleaf/mongo:8.0"
    assert out["pushed"] == {MONGO: name}
    assert get_manifest(target, "team/overleaf/mongo", "8.0")[1] == img["manifest_digest"]
    # a containerd-store engine names the pulled image by its manifest digest: the upstream one
    c = containerd_engine.client()
    c.api.pull(name.rsplit(":", 1)[0], tag="8.0")
    assert c.api.inspect_image(name)["Id"] == img["upstream_digest"]
    # the classic store by its config digest, as the bundle pinned
    o = offline_engine.client()
    o.api.pull(name.rsplit(":", 1)[0], tag="8.0")
    assert o.api.inspect_image(name)["Id"] == img["id"]
    assert o.api.inspect_image(name)["RepoDigests"] == [f"{name.rsplit(':', 1)[0]}@{img['upstream_digest']}"]


def test_recompressed_bundle_pushes_its_own_manifest(registry, upstream, signer, target, host, tmp_path,
                                                     offline_engine):
    bundle = tmp_path / "bundle"
    m = make_registry_bundle(registry.url, {APP: upstream[APP]}, bundle, signer, recompress=True)
    img = m["images"][0]
    assert {b["encoding"] for b in m["blobs"] if b["kind"] == "layer"} == {"zstd"}
    out = host.push(bundle, target.address)
    assert out["images"][0]["digest"] == img["manifest_digest"] and out["images"][0]["digest_preserved"] is False
    data, digest = get_manifest(target, "sharelatex/sharelatex", "5.5.4")
    assert digest == img["manifest_digest"]
    assert [layer["digest"] for layer in json.loads(data)["layers"]] == img["diff_ids"]   # decoded blobs
    o = offline_engine.client()
    name = f"{target.address}/sharelatex/sharelatex"
    o.api.pull(name, tag="5.5.4")
    assert o.api.inspect_image(f"{name}:5.5.4")["Id"] == img["id"]


def test_damaged_blob_tags_nothing(registry, upstream, signer, target, host, tmp_path):
    bundle = tmp_path / "bundle"
    fetched = make_registry_bundle(registry.url, {MONGO: upstream[MONGO]}, tmp_path / "probe", signer)
    last_layer = fetched["images"][0]["layers"][-1]
    make_registry_bundle(registry.url, {MONGO: upstream[MONGO]}, bundle, signer, corrupt=[last_layer])
    proc = host.run("push", str(bundle), "--registry", target.address)
    assert proc.returncode == 14, proc.stderr
    assert "digest" in proc.stderr
    assert all_tags(target) == {}


def test_altered_part_tags_nothing(registry, upstream, signer, target, host, tmp_path):
    bundle = tmp_path / "bundle"
    make_registry_bundle(registry.url, {APP: upstream[APP]}, bundle, signer)
    parts = sorted(bundle.glob("payload.*"))
    last = parts[-1]
    data = bytearray(last.read_bytes())
    data[len(data) // 3] ^= 0x40
    last.write_bytes(bytes(data))
    proc = host.run("push", str(bundle), "--registry", target.address)
    assert proc.returncode == 14, proc.stderr
    assert last.name in proc.stderr
    assert all_tags(target) == {}


def test_delta_bundle_needs_its_layers_in_the_registry(registry, upstream, signer, target, host, tmp_path):
    full = make_registry_bundle(registry.url, {MONGO: upstream[MONGO]}, tmp_path / "probe", signer)
    base = full["images"][0]["layers"][0]            # the busybox base layer, shared with the app image
    delta = tmp_path / "delta"
    make_registry_bundle(registry.url, {MONGO: upstream[MONGO]}, delta, signer, omit=[base], sequence=2)
    proc = host.run("push", str(delta), "--registry", target.address)
    assert proc.returncode == 21, proc.stderr
    assert base in proc.stderr and "Nothing was pushed" in proc.stderr
    assert all_tags(target) == {}
    # once the app image (which has that layer) is in the registry, the delta's layer is mounted from it
    app = tmp_path / "app"
    make_registry_bundle(registry.url, {APP: upstream[APP]}, app, signer, sequence=1)
    host.push(app, target.address)
    out = host.push(delta, target.address)
    assert out["blobs"]["mounted"] >= 1
    assert get_manifest(target, "mongo", "8.0")[1] == full["images"][0]["manifest_digest"]


def test_unreachable_registry(registry, upstream, signer, host, tmp_path):
    bundle = tmp_path / "bundle"
    make_registry_bundle(registry.url, {REDIS: upstream[REDIS]}, bundle, signer)
    proc = host.run("push", str(bundle), "--registry", "127.0.0.1:1")
    assert proc.returncode == 21 and "127.0.0.1:1" in proc.stderr


def test_registry_without_digest_header_is_read_back_or_unconfirmed(registry, upstream, signer, target, host,
                                                                     tmp_path):
    """A proxy in front of the target drops Docker-Content-Digest: the push reads the manifest back,
    and when it cannot, it says the digest is unconfirmed instead of claiming the upstream one."""
    from tests.support.hostile_registry import StrippingProxy

    bundle = tmp_path / "bundle"
    make_registry_bundle(registry.url, {REDIS: upstream[REDIS]}, bundle, signer)
    with StrippingProxy(target.url) as proxy:
        out = host.push(bundle, proxy.address)
        assert not any(k.lower() == "docker-content-digest" for _, _, h in proxy.log for k in h)
        img = out["images"][0]
        assert img["digest_confirmed_by"] == "read back" and img["digest_preserved"] is True
        assert get_manifest(target, "redis", "7.4")[1] == img["upstream_digest"]
        proxy.fail_manifest_get = True
        proc = host.run("push", str(bundle), "--registry", proxy.address)
        assert proc.returncode == 0, proc.stderr
        assert "unconfirmed" in proc.stdout and "the upstream digest" not in proc.stdout
        assert "digests are unconfirmed" in proc.stderr
        out = json.loads(host.run("--json", "push", str(bundle), "--registry", proxy.address).stdout)
        assert out["images"][0]["digest_confirmed_by"] is None and out["images"][0]["digest_preserved"] is False
