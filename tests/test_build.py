"""overleaf-bundle keygen / build / inspect: unit tests, then real builds from a real registry, with no engine.

The registry tests seed stand-in images for a real upgrade path (CE 4.2.8 -> 6.2.2 with
MongoDB 5.0 -> 8.0 and Redis 6.2 -> 7.4: three app hops, three MongoDB hops, one Redis
hop), push them into a private registry under mirror names (an engine is used for that
set-up only), and build with ``--mirror`` and ``DOCKER_HOST`` pointing nowhere, exactly
as an operator with an internal mirror and no Docker would.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker.errors
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from bundler.assemble import CacheError, check_output, payload_order, write_payload
from bundler.build import check_part_size, parse_duration
from bundler.registry import Mirrors
from manifests.errors import ReceiptError, UsageError
from manifests.imageref import canonical, normalize
from manifests.receipt import Receipt, chain_ids
from bundler.wheels import expand_platforms
from manifests.bundle import MEDIA_SIZES, MIN_PART_SIZE, BlobEntry, BundleManifest, parse_size
from manifests.errors import OutputError
from manifests.payload import PartWriter, SegmentReader, iter_members
from manifests.signing import load_public_key, verify
from tests.support.engine import DataLayer, MiB, build_image, push_to_registry, seed_overleaf_images

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple"
PLAN_ARGS = ["--from", "4.2.8", "--to", "6.2.2", "--edition", "ce", "--mongo", "5.0", "--redis", "6.2"]
PLAN_IMAGES = ["sharelatex/sharelatex:4.2.9", "sharelatex/sharelatex:5.5.8", "sharelatex/sharelatex:6.2.2",
               "mongo:6.0", "mongo:7.0", "mongo:8.0", "redis:7.4"]
NO_ENGINE = "unix:///nonexistent/docker.sock"


# --- helpers -----------------------------------------------------------------------------------
def _bundle_command() -> list[str]:
    """The installed ``overleaf-bundle`` script of this interpreter, else the same entry point via -m."""
    script = Path(sys.executable).parent / "overleaf-bundle"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bundler.cli"]


BUNDLE = _bundle_command()


def cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*BUNDLE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def assert_clean_failure(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") or "\nerror: " in proc.stderr, proc.stderr
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)


def no_bundle_left(out: Path) -> None:
    assert not (out / "manifest.json").exists()
    for p in out.parent.rglob("manifest.json"):
        raise AssertionError(f"a manifest was left behind: {p}")


def manifest_of(out: Path) -> BundleManifest:
    return BundleManifest.from_bytes((out / "manifest.json").read_bytes())


def read_payload(out: Path, m: BundleManifest):
    """Yield (member name, stored bytes) of the payload, read across the parts in place, segment-verified."""
    reader = SegmentReader(m.parts, m.segment_size, lambda name: out / name)
    try:
        for name, _, member in iter_members(reader):
            yield name, member.read()
    finally:
        reader.close()


# --- unit tests: no engine ------------------------------------------------------------------------
def test_normalize_and_canonical_names():
    assert normalize("mongo:8.0").full == "docker.io/library/mongo:8.0"
    assert normalize("sharelatex/sharelatex:5.5.8").full == "docker.io/sharelatex/sharelatex:5.5.8"
    assert normalize("docker.io/library/mongo:8.0").short == "mongo:8.0"
    assert canonical("index.docker.io/sharelatex/sharelatex:5.5.8") == "sharelatex/sharelatex:5.5.8"
    assert canonical("quay.io/sharelatex/sharelatex-pro:6.2.2") == "quay.io/sharelatex/sharelatex-pro:6.2.2"
    assert canonical("127.0.0.1:5000/library/mongo:8.0") == "127.0.0.1:5000/library/mongo:8.0"
    assert normalize("localhost/foo:1").domain == "localhost"
    assert normalize("redis").tag == "latest"
    for bad in ("", "mongo@sha256:" + "0" * 64, "Mongo:8.0", "mongo :8.0"):
        with pytest.raises(UsageError):
            normalize(bad)


def test_mirror_mapping():
    m = Mirrors.parse(["docker.io=127.0.0.1:5000", "quay.io=127.0.0.1:5000/quay.io/"])
    assert m.map("mongo:8.0") == "127.0.0.1:5000/library/mongo:8.0"
    assert m.map("docker.io/library/mongo:8.0") == "127.0.0.1:5000/library/mongo:8.0"
    assert m.map("sharelatex/sharelatex:5.5.8") == "127.0.0.1:5000/sharelatex/sharelatex:5.5.8"
    assert m.map("quay.io/sharelatex/sharelatex-pro:6.2.2") == "127.0.0.1:5000/quay.io/sharelatex/sharelatex-pro:6.2.2"
    hub = Mirrors.parse(["docker.io=mirror.example.org/hub"])
    assert hub.map("mongo:8.0") == "mirror.example.org/hub/library/mongo:8.0"
    assert Mirrors().map("quay.io/sharelatex/git-bridge:6.2.2") == "quay.io/sharelatex/git-bridge:6.2.2"
    assert Mirrors.parse(["quay.io=r.example:5000"]).map("mongo:8.0") == "mongo:8.0"  # no rule for docker.io
    for bad in (["docker.io"], ["docker.io="], ["=127.0.0.1:5000"], ["docker.io=registry"],
                ["docker.io=a.example", "docker.io=b.example"]):
        with pytest.raises(UsageError):
            Mirrors.parse(bad)


def test_part_sizes_and_minimum():
    assert parse_size("fat32") == 4 * 1024**3 - 1 == MEDIA_SIZES["fat32"]
    assert parse_size("2M") == 2 * MiB and parse_size("700MiB") == 700 * MiB and parse_size("1.5G") == 1536 * MiB
    assert check_part_size(MIN_PART_SIZE) == MIN_PART_SIZE
    with pytest.raises(UsageError, match="minimum"):
        check_part_size(MIN_PART_SIZE - 1)
    with pytest.raises(ValueError, match="'lots' is not a size"):
        parse_size("lots")
    assert parse_duration("30d").days == 30 and parse_duration("12h").total_seconds() == 43200
    for bad in ("0d", "30", "d", "-1d", "3y", "99999999999d"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def test_wheel_platforms_cover_older_glibc():
    tags = expand_platforms(["manylinux_2_28_x86_64"])
    assert tags[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags


def test_receipts_and_omitted_layers():
    a, b, c = ("sha256:" + h * 64 for h in "abc")
    la, lb, lc = ("sha256:" + h * 64 for h in "def")    # the compressed blobs of a, b, c
    assert chain_ids([a]) == [a]
    assert chain_ids([a, b])[1] == "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    classic = Receipt.parse(json.dumps({"schema": 1, "images": [{"id": c, "diff_ids": [a, b], "tags": []}]}).encode())
    assert classic.store == "classic" and classic.chain_ids == frozenset(chain_ids([a, b]))
    assert classic.omitted([([a, b, c], [la, lb, lc])]) == {la, lb}
    # b is on the host only above a: an image that needs b directly on c still needs it shipped
    assert classic.omitted([([a, b, c], [la, lb, lc]), ([c, b], [lc, lb])]) == {la}
    cd = Receipt.parse(json.dumps({"schema": 2, "store": "containerd", "images": [
        {"id": c, "diff_ids": [a, b], "tags": ["mongo:6.0"]}]}).encode())
    assert cd.omitted([([a, b], [la, lb])]) == set()          # nothing known about its blobs yet
    assert cd.resolve_blobs(lambda tag, digest: [la, lb] if (tag, digest) == ("mongo:6.0", c) else None) == 1
    assert cd.omitted([([a, b, c], [la, lb, lc])]) == {la, lb}
    for bad in (b'{"schema": 3, "images": []}', b'{"schema": 1, "images": [{"diff_ids": ["nope"]}]}',
                b'{"schema": 2, "store": "zfs", "images": []}', b'{"schema": 1, "images": NaN}',
                b'{"schema": 1' + b"1" * 5000 + b', "images": []}', b"\xff", b'{"schema": 2, "x": 1e999}'):
        with pytest.raises(ReceiptError) as info:
            Receipt.parse(bad)
        assert info.value.exit_code == 2 and "inventory" in info.value.hint


def test_payload_order_manifests_and_configs_first_then_layers_bottom_up():
    a, b, c, d, c1, c2, m1, m2 = ("sha256:" + h * 64 for h in "abcd12ef")
    order = payload_order([(m1, c1, [a, b]), (m2, c2, [a, c, d])], {a, b, c, d, c1, c2, m1, m2} - {c})
    assert order == [m1, c1, m2, c2, a, b, d]


def _blob_file(folder: Path, data: bytes, kind: str = "layer") -> tuple[BlobEntry, Path]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = folder / digest[7:]
    path.write_bytes(data)
    return BlobEntry(digest, kind, "application/vnd.oci.image.layer.v1.tar+gzip", len(data), "none", len(data)), path


def test_payload_is_deterministic(tmp_path):
    (tmp_path / "blobs").mkdir()
    rng = random.Random(7)
    blobs = [_blob_file(tmp_path / "blobs", rng.randbytes(n)) for n in (300, 1_500_000, 777_777)]
    parts = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        w = PartWriter(tmp_path / name, MIN_PART_SIZE, 256 * 1024)
        write_payload(w, blobs)
        w.close()
        parts.append(w.parts)
    assert parts[0] == parts[1] and len(parts[0]) >= 2
    assert all(p.size <= MIN_PART_SIZE for p in parts[0])
    m = type("M", (), {"parts": parts[0], "segment_size": 256 * 1024})
    got = list(read_payload(tmp_path / "a", m))
    assert [n for n, _ in got] == [e.path for e, _ in blobs]
    assert [d for _, d in got] == [p.read_bytes() for _, p in blobs]


def test_blob_of_the_wrong_size_is_caught_and_removed(tmp_path):
    (tmp_path / "blobs").mkdir()
    entry, path = _blob_file(tmp_path / "blobs", b"x" * 5000)
    path.write_bytes(b"y" * 4999)
    (tmp_path / "out").mkdir()
    w = PartWriter(tmp_path / "out", MIN_PART_SIZE)
    with pytest.raises(CacheError, match="changed on disk"):
        write_payload(w, [(entry, path)])
    w.close()
    assert not path.exists()


def test_output_folder_rules(tmp_path):
    check_output(tmp_path / "new", force=False)
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", force=False)
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    (old / "payload.000").write_text("")
    with pytest.raises(OutputError, match="not empty"):
        check_output(old, force=False)
    check_output(old, force=True)
    (old / "thesis.tex").write_text("precious")
    with pytest.raises(OutputError, match="other files"):
        check_output(old, force=True)


# --- keygen ------------------------------------------------------------------------------------------
def test_keygen_writes_encrypted_key_0600(tmp_path):
    env = dict(os.environ, MY_PASS=PASSPHRASE)
    proc = cli(["keygen", "--out", str(tmp_path / "k" / "release.key"), "--passphrase-env", "MY_PASS", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    key, pub = tmp_path / "k" / "release.key", tmp_path / "k" / "release.key.pub"
    assert out["key_id"].startswith("ed25519:") and out["encrypted"] is True
    assert key.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    with pytest.raises((TypeError, ValueError)):
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    priv = serialization.load_pem_private_key(key.read_bytes(), password=PASSPHRASE.encode())
    assert priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == \
        load_public_key(pub).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # never overwritten; no passphrase source and no terminal: refused
    again = cli(["keygen", "--out", str(key), "--passphrase-env", "MY_PASS"], env)
    assert_clean_failure(again, 15, "already exists")
    env.pop("OVERLEAF_AIRGAP_KEY_PASSPHRASE", None)
    nopass = cli(["keygen", "--out", str(tmp_path / "other.key")], env)
    assert_clean_failure(nopass, 15, "not a terminal", "--no-passphrase")
    plain = cli(["keygen", "--out", str(tmp_path / "plain.key"), "--no-passphrase"], env)
    assert plain.returncode == 0 and "NOT encrypted" in plain.stdout
    assert b"ENCRYPTED" not in (tmp_path / "plain.key").read_bytes()


def test_wrong_passphrase_fails_before_pulling(tmp_path):
    env = dict(os.environ, MY_PASS=PASSPHRASE)
    assert cli(["keygen", "--out", str(tmp_path / "release.key"), "--passphrase-env", "MY_PASS"], env).returncode == 0
    env = dict(os.environ, MY_PASS="wrong", DOCKER_HOST="unix:///nonexistent/docker.sock")
    out = tmp_path / "bundle"
    proc = cli(["build", *PLAN_ARGS, "--key", str(tmp_path / "release.key"), "--passphrase-env", "MY_PASS",
                "--out", str(out), "--no-importer"], env)
    assert_clean_failure(proc, 15, "wrong passphrase")
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_part_size_below_minimum_is_refused(tmp_path):
    proc = cli(["build", *PLAN_ARGS, "--key", str(tmp_path / "none.key"), "--out", str(tmp_path / "b"),
                "--max-part-size", "512K", "--no-importer"])
    assert_clean_failure(proc, 2, "minimum", "1048576")
    assert not (tmp_path / "b").exists()


# --- registry fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signing_key(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("key")
    env = dict(os.environ, MY_PASS=PASSPHRASE)
    proc = cli(["keygen", "--out", str(d / "release.key"), "--passphrase-env", "MY_PASS"], env)
    assert proc.returncode == 0, proc.stderr
    return d / "release.key"


MIRROR_NAMESPACE = "airgap-build-test"   # our own corner of the shared registry: other tests list their tags


def mirror_prefix(registry) -> str:
    return f"{registry.address}/{MIRROR_NAMESPACE}"


def registry_manifest(registry, ref: str) -> tuple[str, bytes]:
    """(digest, bytes) of the manifest the registry serves for a plan reference under the mirror names."""
    n = normalize(ref)
    path = f"{MIRROR_NAMESPACE}/{n.path}" if n.domain == "docker.io" else f"{MIRROR_NAMESPACE}/{n.domain}/{n.path}"
    r = requests.get(f"http://{registry.address}/v2/{path}/manifests/{n.tag}", timeout=10, headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"})
    r.raise_for_status()
    return "sha256:" + hashlib.sha256(r.content).hexdigest(), r.content


@pytest.fixture(scope="module")
def seeded(engine, registry):
    """The plan's images, in the registry under mirror names only; gives {ref: config digest}."""
    client = engine.client()
    seed_overleaf_images(engine, ["4.2.9", "5.5.8", "6.2.2"], edition="ce", mongo=["6.0", "7.0", "8.0"],
                         redis=["7.4"])
    # make the newest app image big: an incompressible and a compressible layer
    build_image(engine, "sharelatex/sharelatex:6.2.2", {"/overleaf/big/README": "data layers follow\n"},
                data=[DataLayer("/overleaf/big/noise", 24 * MiB, "random", seed=1),
                      DataLayer("/overleaf/big/words", 24 * MiB, "text", seed=2)],
                base="sharelatex/sharelatex:6.2.2", cmd=["run-forever", "httpd", "-f", "-p", "80", "-h", "/var/www"])
    ids = {ref: client.images.get(ref).id for ref in PLAN_IMAGES}
    prefix = mirror_prefix(registry)
    push_to_registry(engine, registry, PLAN_IMAGES, mirrors={"docker.io": prefix, "quay.io": f"{prefix}/quay.io"})
    for image in client.images.list():   # the online host keeps no copy: the build must not need one
        for tag in image.tags:
            if tag.startswith(prefix + "/"):
                client.images.remove(tag)
    return ids


def build_args(registry, key: Path, out: Path, *extra: str) -> list[str]:
    return ["build", *PLAN_ARGS, "--key", str(key), "--passphrase-env", "MY_PASS", "--out", str(out),
            "--mirror", f"docker.io={mirror_prefix(registry)}",
            "--mirror", f"quay.io={mirror_prefix(registry)}/quay.io",
            "--max-part-size", "2M", "--no-importer", "--json", *extra]


def no_engine_env() -> dict[str, str]:
    """The build needs no engine: DOCKER_HOST points nowhere."""
    return dict(os.environ, MY_PASS=PASSPHRASE, DOCKER_HOST=NO_ENGINE)


@pytest.fixture(scope="module")
def full_bundle(registry, seeded, signing_key, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "bundle"
    proc = cli(build_args(registry, signing_key, out), no_engine_env())
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout), proc


# --- registry tests ----------------------------------------------------------------------------------------
def test_bundle_is_upstream_exact(full_bundle, seeded, signing_key, registry):
    out, summary, proc = full_bundle
    m = manifest_of(out)
    assert sorted(os.listdir(out)) == sorted(["manifest.json", "manifest.json.sig", "signing-key.pub",
                                              "README-OFFLINE.txt", *(p.name for p in m.parts)])
    assert not Path(str(out) + ".partial").exists()  # the work folder goes once the bundle is complete
    assert {i.ref: i.id for i in m.images} == seeded  # config digests = the engine's image IDs
    assert [i.ref for i in m.images][:2] == ["sharelatex/sharelatex:4.2.9", "mongo:6.0"]  # plan order
    payload = dict(read_payload(out, m))
    blobs = m.blob_map
    for i in m.images:
        digest, raw = registry_manifest(registry, i.ref)
        assert i.exact and i.source == "registry" and i.platform == "linux/amd64"
        assert i.manifest_digest == digest == i.upstream_digest and i.index_entry is None
        assert payload[blobs[digest].path] == raw            # the registry's manifest, byte for byte
        layers = [d["digest"] for d in json.loads(raw)["layers"]]
        assert list(i.layers) == layers and len(i.diff_ids) == len(layers)
        for d in (*layers, i.id):                            # the registry's blobs, byte for byte
            assert hashlib.sha256(payload[blobs[d].path]).hexdigest() == d[7:] and blobs[d].encoding == "none"
        config = json.loads(payload[blobs[i.id].path])
        assert tuple(config["rootfs"]["diff_ids"]) == i.diff_ids
        assert i.size == sum(blobs[d].size for d in (digest, i.id, *layers))
    # a layer every image shares (the busybox base) is stored once
    base = m.images[0].layers[0]
    assert all(i.layers[0] == base for i in m.images)
    assert [b.digest for b in m.blobs].count(base) == 1
    assert len(m.blobs) == len(payload) == summary["blobs"]
    # parts: each within the limit, true size, sha256 and segment hashes
    assert m.max_part_size == 2 * MiB and len(m.parts) >= 5
    for p in m.parts:
        data = (out / p.name).read_bytes()
        assert len(data) == p.size <= 2 * MiB and hashlib.sha256(data).hexdigest() == p.sha256
        assert [hashlib.sha256(data[k:k + m.segment_size]).hexdigest()
                for k in range(0, len(data), m.segment_size)] == list(p.segments)
    assert sum(p.size for p in m.parts) == m.payload_size == summary["payload_bytes"]
    # payload order: manifests and configs first, then layers
    kinds = [b.kind for b in m.blobs]
    assert kinds.index("layer") == 2 * len(m.images) and set(kinds[:2 * len(m.images)]) == {"manifest", "config"}
    assert (m.product, m.edition, m.from_version, m.to_version, m.platform) == ("overleaf", "ce", "4.2.8", "6.2.2",
                                                                              "linux/amd64")
    assert m.plan["steps"][-1]["id"] == "13-app-6.2.2" and m.delta is None and m.toolkit is None
    assert m.recompress is None and m.schema == 2
    readme = (out / "README-OFFLINE.txt").read_text()
    assert "openssl pkeyutl -verify -pubin" in readme and "13. [app] Move Overleaf to 6.2.2" in readme
    assert summary["images"] == 7 and summary["exact"] is True
    assert summary["upstream_bytes"] == sum(b.size for b in m.blobs)
    print(f"\nfull bundle: upstream {summary['upstream_bytes']} B, bundle {summary['bundle_bytes']} B, "
          f"{len(m.parts)} parts, build {summary['seconds']}")


def test_signature_verifies_with_cryptography_and_openssl(full_bundle, signing_key):
    out, _, _ = full_bundle
    data = (out / "manifest.json").read_bytes()
    sig = (out / "manifest.json.sig").read_bytes()
    trusted = load_public_key(Path(str(signing_key) + ".pub"))
    assert len(sig) == 64 and verify(trusted, sig, data)
    assert (out / "signing-key.pub").read_bytes() == Path(str(signing_key) + ".pub").read_bytes()
    proc = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(signing_key) + ".pub", "-rawin",
                           "-in", str(out / "manifest.json"), "-sigfile", str(out / "manifest.json.sig")],
                          capture_output=True, text=True)
    assert "Signature Verified Successfully" in proc.stdout, proc.stdout + proc.stderr
    assert not verify(trusted, sig, data.replace(b'"ce"', b'"pro"'))


def test_inspect(full_bundle):
    out, summary, _ = full_bundle
    proc = cli(["inspect", str(out)])
    assert proc.returncode == 0, proc.stderr
    for needle in ("signature NOT checked", "13-app-6.2.2", "mongo:8.0", "payload.000", summary["key_id"],
                   str(summary["sequence"]), summary["expires"]):
        assert needle in proc.stdout, needle
    j = json.loads(cli(["--json", "inspect", str(out)]).stdout)
    assert j["signature_checked"] is False and j["summary"]["images"] == 7
    assert set(j["present"].values()) == {"ok"}


def test_recompress_zstd_is_smaller_and_says_so(full_bundle, registry, signing_key, tmp_path, seeded):
    out = tmp_path / "zstd"
    proc = cli(build_args(registry, signing_key, out, "--recompress", "zstd"), no_engine_env())
    assert proc.returncode == 0, proc.stderr
    m, exact = manifest_of(out), manifest_of(full_bundle[0])
    assert m.recompress == "zstd" and not any(i.exact for i in m.images)
    assert {i.ref: (i.id, i.diff_ids) for i in m.images} == {i.ref: (i.id, i.diff_ids) for i in exact.images}
    for i in m.images:
        assert i.layers == i.diff_ids          # uncompressed layer tars, stored zstd-compressed
        assert i.manifest_digest != i.upstream_digest
    assert {b.encoding for b in m.blobs if b.kind == "layer"} == {"zstd"}
    print(f"\nexact payload {exact.payload_size} B, --recompress zstd {m.payload_size} B "
          f"({m.payload_size / exact.payload_size:.2f}x)")


def test_force_replaces_a_previous_bundle(full_bundle, registry, signing_key, tmp_path):
    out = tmp_path / "bundle"
    env = no_engine_env()
    assert cli(build_args(registry, signing_key, out), env).returncode == 0
    first = manifest_of(out).bundle_id
    again = cli(build_args(registry, signing_key, out), env)
    assert_clean_failure(again, 23, "not empty")
    assert manifest_of(out).bundle_id == first
    forced = cli(build_args(registry, signing_key, out, "--force"), env)
    assert forced.returncode == 0, forced.stderr
    assert manifest_of(out).bundle_id != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_killed_build_resumes(registry, seeded, signing_key, tmp_path):
    out = tmp_path / "bundle"
    store = Path(str(out) + ".partial") / "store" / "blobs" / "sha256"
    args = [*BUNDLE, *build_args(registry, signing_key, out, "--workers", "1")]
    with open(tmp_path / "stdout", "wb") as so, open(tmp_path / "stderr", "wb") as se:
        proc = subprocess.Popen(args, cwd=ROOT, env=no_engine_env(), stdout=so, stderr=se, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if store.is_dir() and sum(1 for _ in store.iterdir()) >= 16:
                    break
                time.sleep(0.002)
            assert proc.poll() is None, "the build ended before it could be killed"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    fetched = {p.name: p.stat().st_mtime_ns for p in store.iterdir()}
    assert fetched and proc.returncode == -signal.SIGKILL
    no_bundle_left(out)
    rerun = cli(build_args(registry, signing_key, out), no_engine_env())
    assert rerun.returncode == 0, rerun.stderr
    # what the killed build finished was not fetched again (same files, untouched)
    m = manifest_of(out)
    trusted = load_public_key(Path(str(signing_key) + ".pub"))
    assert verify(trusted, (out / "manifest.json.sig").read_bytes(), (out / "manifest.json").read_bytes())
    assert {i.ref: i.id for i in m.images} == seeded
    assert not Path(str(out) + ".partial").exists()


def test_kept_work_folder_is_reused_and_a_damaged_blob_fetched_again(registry, seeded, signing_key, tmp_path):
    work = tmp_path / "work"
    first = cli(build_args(registry, signing_key, tmp_path / "a", "--work-dir", str(work), "--keep-work"),
                no_engine_env())
    assert first.returncode == 0, first.stderr
    blobs = work / "store" / "blobs" / "sha256"
    before = {p.name: p.stat().st_mtime_ns for p in blobs.iterdir()}
    damaged = max(blobs.iterdir(), key=lambda p: p.stat().st_size)   # the biggest layer
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 1
    damaged.write_bytes(bytes(data))
    before[damaged.name] = damaged.stat().st_mtime_ns
    second = cli(build_args(registry, signing_key, tmp_path / "b", "--work-dir", str(work), "--keep-work"),
                 no_engine_env())
    assert second.returncode == 0, second.stderr
    after = {p.name: p.stat().st_mtime_ns for p in blobs.iterdir()}
    assert {n for n in before if after[n] != before[n]} == {damaged.name}   # only the damaged blob fetched again
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == damaged.name
    assert manifest_of(tmp_path / "a").parts == manifest_of(tmp_path / "b").parts   # same bytes


def test_payload_written_during_the_fetch_equals_the_two_pass_payload(registry, seeded, signing_key, tmp_path,
                                                                      monkeypatch):
    """The default build writes each blob into the parts while later layers still download
    (bundler.build._PayloadPipe); the same plan built the two-pass way (fetch everything, then copy)
    gives byte-identical parts. Both run in-process on the same registry, with no engine."""
    from bundler.build import Builder, BuildOptions
    from manifests.planner import PlanRequest
    from manifests.signing import load_private_key

    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    key = load_private_key(signing_key, PASSPHRASE.encode())
    request = PlanRequest(current="4.2.8", target="6.2.2", edition="ce", mongo="5.0", redis="6.2")
    mirrors = (f"docker.io={mirror_prefix(registry)}", f"quay.io={mirror_prefix(registry)}/quay.io")

    class TwoPass(Builder):
        pipelined = False   # what --recompress and local images still do: fetch first, then write

    built = {}
    for name, cls in (("pipelined", Builder), ("two-pass", TwoPass)):
        builder = cls(BuildOptions(request, out=tmp_path / name, max_part_size=2 * MiB, mirrors=mirrors,
                                   importer=False, sequence=7))
        builder.check()
        assert builder.pipelined is (name == "pipelined")
        summary = builder.run(key)
        built[name] = [(p["name"], p["sha256"]) for p in summary["parts"]]
        assert not (tmp_path / f"{name}.partial").exists()
    assert len(built["pipelined"]) > 3 and built["pipelined"] == built["two-pass"]
    m = manifest_of(tmp_path / "pipelined")
    assert [(p.name, p.sha256) for p in m.parts] == built["pipelined"]
    for p in m.parts:   # the signed part hashes are those of the files written
        assert hashlib.sha256((tmp_path / "pipelined" / p.name).read_bytes()).hexdigest() == p.sha256


# --- bad input ------------------------------------------------------------------------------------------------
def test_image_missing_from_registry_names_the_step(registry, seeded, signing_key, tmp_path):
    out = tmp_path / "bundle"
    proc = cli(build_args(registry, signing_key, out, "--tls-proxy"), no_engine_env())
    assert_clean_failure(proc, 21, "nginx:1.28-alpine", "06-app-5.5.8")
    no_bundle_left(out)


def test_registry_unreachable(seeded, signing_key, tmp_path):
    out = tmp_path / "bundle"
    args = build_args(registry=type("R", (), {"address": "127.0.0.1:1"})(), key=signing_key, out=out)
    proc = cli(args, no_engine_env())
    assert_clean_failure(proc, 21, "127.0.0.1:1")
    no_bundle_left(out)


def test_output_device_full(registry, seeded, signing_key, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        out = small / "bundle"
        work = tmp_path / "work"
        proc = cli(build_args(registry, signing_key, out, "--work-dir", str(work)), no_engine_env())
        assert_clean_failure(proc, 22, "no space left", "run the same build again")
        assert os.listdir(small) == []            # the partial bundle is gone
        assert len(list((work / "store" / "blobs" / "sha256").iterdir())) > 10   # fetched blobs stay
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_platform_mismatch_is_refused(registry, seeded, signing_key, tmp_path):
    out = tmp_path / "bundle"
    proc = cli(build_args(registry, signing_key, out, "--platform", "linux/arm64"), no_engine_env())
    assert_clean_failure(proc, 21, "linux/arm64", "linux/amd64")
    no_bundle_left(out)


def test_output_on_a_mount_point(registry, seeded, signing_key, tmp_path):
    """--out may be the root of a mounted stick: the bundle is staged inside it and moved up at the end."""
    stick = tmp_path / "stick"
    stick.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(stick)], check=True)
    try:
        proc = cli(build_args(registry, signing_key, stick), no_engine_env())
        assert proc.returncode == 0, proc.stderr
        m = manifest_of(stick)
        assert sorted(os.listdir(stick)) == sorted(["manifest.json", "manifest.json.sig", "signing-key.pub",
                                                    "README-OFFLINE.txt", *(p.name for p in m.parts)])
        assert not (tmp_path / "stick.partial").exists()
    finally:
        subprocess.run(["umount", str(stick)], check=True)


# --- local-only images come from the engine (both stores) ------------------------------------------------------
def _toolkit_checkout(tmp_path: Path) -> tuple[Path, str]:
    toolkit = tmp_path / "toolkit"
    toolkit.mkdir()
    (toolkit / "README.md").write_text("toolkit stand-in\n")
    git = ["git", "-C", str(toolkit), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for cmd in (["init", "-q", "-b", "master"], ["add", "."], ["commit", "-q", "-m", "init"]):
        subprocess.run(git + cmd, check=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    return toolkit, commit


def test_local_image_and_toolkit(engine, registry, seeded, signing_key, tmp_path):
    """A -with-texlive-full image comes from the local engine; the Toolkit travels as a git bundle."""
    ref = "sharelatex/sharelatex:5.5.8-with-texlive-full"
    client = engine.client()
    try:
        client.images.remove(ref)
    except docker.errors.ImageNotFound:
        pass
    toolkit, commit = _toolkit_checkout(tmp_path)
    out = tmp_path / "bundle"
    args = ["build", "--from", "5.5.7-with-texlive-full", "--to", "5.5.8", "--mongo", "6.0", "--redis", "7.4",
            "--key", str(signing_key), "--passphrase-env", "MY_PASS", "--out", str(out), "--no-importer",
            "--mirror", f"docker.io={mirror_prefix(registry)}", "--carry-toolkit", str(toolkit), "--json"]
    env = dict(engine.env(), MY_PASS=PASSPHRASE)
    missing = cli(args, env)
    assert_clean_failure(missing, 21, ref, "local engine")
    no_bundle_left(out)
    local_id = build_image(engine, ref, {"/usr/local/texlive/FULL": "scheme-full\n"}).id
    proc = cli(args, env)
    assert proc.returncode == 0, proc.stderr
    m = manifest_of(out)
    (img,) = m.images
    assert (img.ref, img.id, img.source, img.upstream_digest, img.exact) == (ref, local_id, "local", None, False)
    assert img.layers == img.diff_ids
    assert m.toolkit["commit"] == commit and m.toolkit["file"] == "toolkit.gitbundle"
    assert "toolkit.gitbundle" in [f.name for f in m.files]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(out / "toolkit.gitbundle"), str(clone)], check=True)
    assert subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip() == commit
