"""overleaf-bundle keygen / build / inspect: unit tests, then real builds against a real engine and registry.

The engine tests seed stand-in images for a real upgrade path (CE 4.2.8 -> 6.2.2 with
MongoDB 5.0 -> 8.0 and Redis 6.2 -> 7.4: three app hops, three MongoDB hops, one Redis
hop), push them into a private registry under mirror names, delete the local copies,
and build with ``--mirror``, exactly as an operator with an internal mirror would.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import docker.errors
import pytest
import zstandard
from cryptography.hazmat.primitives import serialization

from bundler.assemble import blob_order, check_output, tar_header, write_payload
from bundler.build import check_part_size, parse_duration
from bundler.cache import BlobCache
from bundler.delta import Receipt, chain_ids, omitted_layers
from bundler.registry import Mirrors, UsageError, canonical, normalize
from bundler.wheels import expand_platforms
from manifests.bundle import MEDIA_SIZES, MIN_PART_SIZE, BundleManifest, parse_size
from manifests.errors import OutputError
from manifests.payload import PartReader, PartWriter
from manifests.signing import load_public_key, verify
from tests.support.engine import DataLayer, MiB, build_image, push_to_registry, seed_overleaf_images

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple"
PLAN_ARGS = ["--from", "4.2.8", "--to", "6.2.2", "--edition", "ce", "--mongo", "5.0", "--redis", "6.2"]
PLAN_IMAGES = ["sharelatex/sharelatex:4.2.9", "sharelatex/sharelatex:5.5.8", "sharelatex/sharelatex:6.2.2",
               "mongo:6.0", "mongo:7.0", "mongo:8.0", "redis:7.4"]


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
    """Yield (member, uncompressed bytes) of the payload, read across the parts in place."""
    reader = PartReader(m.parts, lambda name: out / name)
    with tarfile.open(fileobj=io.BufferedReader(reader, 1 << 20), mode="r|") as tar:
        for member in tar:
            data = tar.extractfile(member).read()
            if member.name.endswith(".zst"):
                data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
            yield member, data


def load_into(engine, out: Path, m: BundleManifest, tmp: Path) -> None:
    """Rebuild a docker-archive from the bundle (layers decompressed) and `docker load` it."""
    blobs = tmp / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for member, data in read_payload(out, m):
        hexd = member.name.split("/")[-1].split(".")[0]
        assert hashlib.sha256(data).hexdigest() == hexd, member.name
        (blobs / hexd).write_bytes(data)
    archive = tmp / "archive.tar"
    entries = []
    with tarfile.open(archive, "w") as tar:
        added: set[str] = set()
        for img in m.images:
            cfg = img.id[7:]
            if cfg not in added:
                tar.add(blobs / cfg, f"{cfg}.json")
                added.add(cfg)
            for d in img.diff_ids:
                if d[7:] not in added and (blobs / d[7:]).exists():
                    tar.add(blobs / d[7:], f"{d[7:]}/layer.tar")
                    added.add(d[7:])
            entries.append({"Config": f"{cfg}.json", "RepoTags": [img.ref],
                            "Layers": [f"{d[7:]}/layer.tar" for d in img.diff_ids]})
        data = json.dumps(entries).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with archive.open("rb") as fh:
        engine.client().images.load(fh)


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
    with pytest.raises(ValueError):
        parse_size("lots")
    assert parse_duration("30d").days == 30 and parse_duration("12h").total_seconds() == 43200
    for bad in ("0d", "30", "d", "-1d", "3y"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def test_wheel_platforms_cover_older_glibc():
    tags = expand_platforms(["manylinux_2_28_x86_64"])
    assert tags[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags


def test_chain_ids_and_omitted_layers():
    a, b, c = ("sha256:" + h * 64 for h in "abc")
    assert chain_ids([a]) == [a]
    assert chain_ids([a, b])[1] == "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    host = set(chain_ids([a, b]))
    assert omitted_layers([[a, b, c]], host) == {a, b}
    # b is on the host only above a: an image that needs b directly on c still needs it shipped
    assert omitted_layers([[a, b, c], [c, b]], host) == {a}
    receipt = Receipt.parse(json.dumps({"schema": 1, "images": [{"id": c, "diff_ids": [a, b], "tags": []}]}).encode())
    assert receipt.chain_ids == frozenset(host)
    with pytest.raises(UsageError):
        Receipt.parse(b'{"schema": 2, "images": []}')
    with pytest.raises(UsageError):
        Receipt.parse(b'{"schema": 1, "images": [{"diff_ids": ["nope"]}]}')


def test_blob_order_configs_first_then_layers_bottom_up():
    a, b, c, d, c1, c2 = ("sha256:" + h * 64 for h in "abcd12")
    order = blob_order([(c1, [a, b]), (c2, [a, c, d])], {a, b, c, d, c1, c2} - {c})
    assert order == [c1, c2, a, b, d]


def test_payload_is_deterministic(tmp_path):
    cache = BlobCache(tmp_path / "blobs")
    rng = random.Random(7)
    text = b"".join(rng.choice([b"alpha ", b"beta ", b"gamma\n", b"delta "]) for _ in range(400_000))
    noise = rng.randbytes(1_500_000)
    cfg = cache.put_bytes(b'{"rootfs": {}}', "config")
    stored = []
    for data in (text, noise):
        stream = io.BytesIO(data)
        digest, size, blob = cache.put_stream(stream.read, "layer")
        assert blob is not None and digest == "sha256:" + hashlib.sha256(data).hexdigest() and size == len(data)
        stored.append(blob)
    assert stored[0].encoding == "zstd" and stored[0].stored_size < len(text) // 3
    assert stored[1].encoding == "none" and stored[1].stored_size == len(noise)  # zstd would not save 3 %
    blobs = [cfg, *stored]
    parts = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        w = PartWriter(tmp_path / name, MIN_PART_SIZE)
        write_payload(w, blobs)
        w.close()
        parts.append(w.parts)
    assert parts[0] == parts[1] and len(parts[0]) >= 2
    assert all(p.size <= MIN_PART_SIZE for p in parts[0])
    reader = PartReader(parts[0], lambda n: tmp_path / "a" / n)
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        members = list(tar)
    assert [m.name for m in members] == [b.entry.path for b in blobs]
    assert members[1].name.endswith(".zst") and not members[2].name.endswith(".zst")
    for m, b in zip(members, blobs):
        assert (m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname, m.size) == (0, 0o644, 0, 0, "", "", b.stored_size)
        assert m.isreg()
    assert tar_header("blobs/sha256/x", 5).tobuf(tarfile.PAX_FORMAT) == tar_header("blobs/sha256/x", 5).tobuf(
        tarfile.PAX_FORMAT)


def test_damaged_cache_entry_is_caught_and_removed(tmp_path):
    cache = BlobCache(tmp_path / "blobs")
    blob = cache.put_bytes(b"x" * 5000, "config")
    blob.path.write_bytes(b"y" * 5000)
    (tmp_path / "out").mkdir()
    w = PartWriter(tmp_path / "out", MIN_PART_SIZE)
    with pytest.raises(Exception, match="damaged"):
        write_payload(w, [blob], on_damaged=lambda b: cache.remove(b.digest))
    assert cache.get(blob.digest) is None


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


# --- engine fixtures ----------------------------------------------------------------------------------
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


@pytest.fixture(scope="module")
def seeded(engine, registry):
    """The plan's images, in the registry under mirror names only; gives {ref: image ID}."""
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
    for ref in PLAN_IMAGES:
        client.images.remove(ref)
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(ref)
    yield ids
    # the builds tagged the canonical names again; drop the mirror names they pulled
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(prefix + "/"):
                client.images.remove(tag)


def build_args(registry, key: Path, out: Path, *extra: str) -> list[str]:
    return ["build", *PLAN_ARGS, "--key", str(key), "--passphrase-env", "MY_PASS", "--out", str(out),
            "--mirror", f"docker.io={mirror_prefix(registry)}",
            "--mirror", f"quay.io={mirror_prefix(registry)}/quay.io",
            "--max-part-size", "2M", "--no-importer", "--json", *extra]


def engine_env(engine) -> dict[str, str]:
    return dict(engine.env(), MY_PASS=PASSPHRASE)


@pytest.fixture(scope="module")
def full_bundle(engine, registry, seeded, signing_key, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "bundle"
    t = time.monotonic()
    proc = cli(build_args(registry, signing_key, out), engine_env(engine))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    summary["_wall"] = time.monotonic() - t
    return out, summary, proc


# --- engine tests -----------------------------------------------------------------------------------------
def test_bundle_contents(full_bundle, seeded, signing_key, engine, registry):
    out, summary, proc = full_bundle
    m = manifest_of(out)
    assert sorted(os.listdir(out)) == sorted(["manifest.json", "manifest.json.sig", "signing-key.pub",
                                              "README-OFFLINE.txt", *(p.name for p in m.parts)])
    assert not Path(str(out) + ".partial").exists()  # the work folder goes once the bundle is complete
    # images: all pulled through the mirror, canonical names, the original IDs
    assert {i.ref: i.id for i in m.images} == seeded
    assert [i.ref for i in m.images][:2] == ["sharelatex/sharelatex:4.2.9", "mongo:6.0"]  # plan order
    for i in m.images:
        assert i.source == "registry" and i.platform == "linux/amd64"
        assert i.upstream_digest and i.upstream_digest.startswith("sha256:")
        assert i.size == sum(b.size for b in m.blobs if b.digest in (i.id, *i.diff_ids))
        tagged = engine.client().images.get(i.ref)
        assert tagged.id == i.id
        assert any(rd.endswith("@" + i.upstream_digest) and rd.startswith(mirror_prefix(registry))
                   for rd in tagged.attrs["RepoDigests"])
    # a layer every image shares (the busybox base) is stored once
    base = m.images[0].diff_ids[0]
    assert all(i.diff_ids[0] == base for i in m.images)
    assert [b.digest for b in m.blobs].count(base) == 1
    assert len(m.blobs) == len({b.digest for b in m.blobs}) == summary["blobs"]
    assert {b.encoding for b in m.blobs if b.kind == "layer"} == {"zstd", "none"}
    # parts: each within the limit, true size and sha256, several of them
    assert m.max_part_size == 2 * MiB and len(m.parts) >= 5
    for p in m.parts:
        data = (out / p.name).read_bytes()
        assert len(data) == p.size <= 2 * MiB and hashlib.sha256(data).hexdigest() == p.sha256
    assert sum(p.size for p in m.parts) == m.payload_size == summary["payload_bytes"]
    # payload: configs first, then layers bottom up, exactly the manifest's blobs
    members = [(mem.name, mem.mtime, mem.uid, mem.mode) for mem, _ in read_payload(out, m)]
    assert [n for n, *_ in members] == [b.path for b in m.blobs]
    assert all(b.kind == "config" for b in m.blobs[:len(m.images)])
    assert {(t, u, mo) for _, t, u, mo in members} == {(0, 0, 0o644)}
    # manifest fields
    assert (m.product, m.edition, m.from_version, m.to_version, m.platform) == ("overleaf", "ce", "4.2.8", "6.2.2",
                                                                              "linux/amd64")
    assert m.plan["steps"][-1]["id"] == "13-app-6.2.2" and m.delta is None and m.toolkit is None
    assert m.sequence > 1_700_000_000 and m.tool_version == "0.1.0" and len(m.bundle_id) == 32
    assert [f.name for f in m.files] == ["README-OFFLINE.txt"]
    readme = (out / "README-OFFLINE.txt").read_text()
    assert "openssl pkeyutl -verify -pubin" in readme and "overleaf-import load ." in readme
    assert "13. [app] Move Overleaf to 6.2.2" in readme
    # the summary
    assert summary["images"] == 7 and summary["reused"] == {"blobs": 0, "blob_bytes": 0, "pulls": 0}
    assert summary["pulled"] == 7 and summary["docker_save_measured"] is True
    assert summary["raw_bytes"] == sum(b.size for b in m.blobs)
    assert summary["bundle_bytes"] < summary["docker_save_bytes"]
    print(f"\nfull bundle: docker save {summary['docker_save_bytes']} B, raw {summary['raw_bytes']} B, "
          f"bundle {summary['bundle_bytes']} B, {len(m.parts)} parts, build {summary['seconds']}")


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
                   str(summary["sequence"]), summary["expires"], "Full bundle"):
        assert needle in proc.stdout, needle
    j = json.loads(cli(["--json", "inspect", str(out)]).stdout)
    assert j["signature_checked"] is False and j["summary"]["images"] == 7
    assert set(j["present"].values()) == {"ok"}


def untag(engine, refs) -> None:
    """Leave a shared engine as other test modules expect it: without the tags a test loaded."""
    for ref in refs:
        try:
            engine.client().images.remove(ref)
        except docker.errors.ImageNotFound:
            pass


def test_bundle_loads_into_offline_engine(full_bundle, offline_engine, seeded, tmp_path):
    out, _, _ = full_bundle
    m = manifest_of(out)
    try:
        load_into(offline_engine, out, m, tmp_path)
        client = offline_engine.client()
        for ref, image_id in seeded.items():
            assert client.images.get(ref).id == image_id
    finally:
        untag(offline_engine, seeded)


def test_delta_bundle_leaves_out_what_the_host_has(full_bundle, offline_engine, engine, registry, signing_key,
                                                   seeded, tmp_path):
    full_out, _, _ = full_bundle
    full = manifest_of(full_out)
    have = next(i for i in full.images if i.ref == "sharelatex/sharelatex:4.2.9")
    receipt = tmp_path / "receipt.json"
    receipt.write_text(json.dumps({"schema": 1, "images": [
        {"id": have.id, "diff_ids": list(have.diff_ids), "tags": [have.ref]}], "engine": {"version": "20.10"}}))
    out = tmp_path / "delta"
    proc = cli(build_args(registry, signing_key, out, "--have", str(receipt)), engine_env(engine))
    assert proc.returncode == 0, proc.stderr
    m = manifest_of(out)
    expected = omitted_layers([i.diff_ids for i in full.images], frozenset(chain_ids(have.diff_ids)))
    assert expected and set(m.omitted_layers) == expected
    assert m.delta["receipt_sha256"] == hashlib.sha256(receipt.read_bytes()).hexdigest()
    assert not expected & {b.digest for b in m.blobs}
    assert m.payload_size < full.payload_size
    # the offline host has only 4.2.9; the delta bundle brings the rest with the same IDs
    try:
        full_only = BundleManifest.from_dict({**full.to_dict(), "images": [
            {**i.__dict__, "diff_ids": list(i.diff_ids)} for i in full.images if i.ref == have.ref]})
        load_into(offline_engine, full_out, full_only, tmp_path / "host")
        load_into(offline_engine, out, m, tmp_path / "load")
        client = offline_engine.client()
        for ref, image_id in seeded.items():
            assert client.images.get(ref).id == image_id
    finally:
        untag(offline_engine, seeded)


def test_force_replaces_a_previous_bundle(full_bundle, engine, registry, signing_key, tmp_path):
    out = tmp_path / "bundle"
    env = engine_env(engine)
    assert cli(build_args(registry, signing_key, out), env).returncode == 0
    first = manifest_of(out).bundle_id
    again = cli(build_args(registry, signing_key, out), env)
    assert_clean_failure(again, 23, "not empty")
    assert manifest_of(out).bundle_id == first
    forced = cli(build_args(registry, signing_key, out, "--force"), env)
    assert forced.returncode == 0, forced.stderr
    assert manifest_of(out).bundle_id != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_killed_build_resumes_from_the_cache(engine, registry, seeded, signing_key, tmp_path):
    out = tmp_path / "bundle"
    blobs = Path(str(out) + ".partial") / "blobs"
    args = [*BUNDLE, *build_args(registry, signing_key, out)]
    with open(tmp_path / "stdout", "wb") as so, open(tmp_path / "stderr", "wb") as se:
        proc = subprocess.Popen(args, cwd=ROOT, env=engine_env(engine), stdout=so, stderr=se,
                                stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if blobs.is_dir() and sum(1 for p in blobs.glob("*.json")) >= 2:
                    break
                time.sleep(0.002)
            assert proc.poll() is None, "the build ended before it could be killed"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    cached = {p.stem for p in blobs.glob("*.json")}
    assert cached and proc.returncode == -signal.SIGKILL
    no_bundle_left(out)
    rerun = cli(build_args(registry, signing_key, out), engine_env(engine))
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["reused"]["blobs"] >= len(cached) > 0
    assert summary["reused"]["pulls"] == 7 and summary["pulled"] == 0
    m = manifest_of(out)
    trusted = load_public_key(Path(str(signing_key) + ".pub"))
    assert verify(trusted, (out / "manifest.json.sig").read_bytes(), (out / "manifest.json").read_bytes())
    for p in m.parts:
        assert hashlib.sha256((out / p.name).read_bytes()).hexdigest() == p.sha256
    assert {i.ref: i.id for i in m.images} == seeded
    assert not Path(str(out) + ".partial").exists()


# --- bad input against the real engine ----------------------------------------------------------------------
def test_image_missing_from_registry_names_the_step(engine, registry, seeded, signing_key, tmp_path):
    out = tmp_path / "bundle"
    proc = cli(build_args(registry, signing_key, out, "--tls-proxy"), engine_env(engine))
    assert_clean_failure(proc, 21, "nginx:1.28-alpine", "06-app-5.5.8", "Put nginx:1.28-alpine into the registry")
    no_bundle_left(out)


def test_registry_unreachable(engine, seeded, signing_key, tmp_path):
    out = tmp_path / "bundle"
    args = build_args(registry=type("R", (), {"address": "127.0.0.1:1"})(), key=signing_key, out=out)
    proc = cli(args, engine_env(engine))
    assert_clean_failure(proc, 21, "cannot reach the registry 127.0.0.1:1")
    no_bundle_left(out)


def test_engine_stopped(registry, signing_key, tmp_path):
    out = tmp_path / "bundle"
    env = dict(os.environ, MY_PASS=PASSPHRASE, DOCKER_HOST=f"unix://{tmp_path}/dead.sock")
    proc = cli(build_args(registry, signing_key, out), env)
    assert_clean_failure(proc, 20, "cannot reach the Docker engine", "DOCKER_HOST")
    no_bundle_left(out)


def test_output_device_full(engine, registry, seeded, signing_key, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        out = small / "bundle"
        work = tmp_path / "work"
        proc = cli(build_args(registry, signing_key, out, "--work-dir", str(work)), engine_env(engine))
        assert_clean_failure(proc, 22, "no space left", "run the same build again")
        assert os.listdir(small) == []            # the partial bundle is gone
        assert len(list((work / "blobs").glob("*.json"))) > 10   # the cache stays for the next run
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_platform_mismatch_is_refused(engine, registry, seeded, signing_key, tmp_path):
    out = tmp_path / "bundle"
    proc = cli(build_args(registry, signing_key, out, "--platform", "linux/arm64"), engine_env(engine))
    assert_clean_failure(proc, 21, "is for linux/amd64, not linux/arm64")
    no_bundle_left(out)


def test_local_image_and_toolkit(engine, registry, signing_key, tmp_path):
    """A -with-texlive-full image comes from the local engine; the Toolkit travels as a git bundle."""
    ref = "sharelatex/sharelatex:5.5.8-with-texlive-full"
    client = engine.client()
    try:
        client.images.remove(ref)
    except docker.errors.ImageNotFound:
        pass
    toolkit = tmp_path / "toolkit"
    toolkit.mkdir()
    (toolkit / "README.md").write_text("toolkit stand-in\n")
    git = ["git", "-C", str(toolkit), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for cmd in (["init", "-q", "-b", "master"], ["add", "."], ["commit", "-q", "-m", "init"]):
        subprocess.run(git + cmd, check=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    out = tmp_path / "bundle"
    args = ["build", "--from", "5.5.7-with-texlive-full", "--to", "5.5.8", "--mongo", "6.0", "--redis", "7.4",
            "--key", str(signing_key), "--passphrase-env", "MY_PASS", "--out", str(out), "--no-importer",
            "--mirror", f"docker.io={mirror_prefix(registry)}", "--toolkit", str(toolkit), "--json"]
    missing = cli(args, engine_env(engine))
    assert_clean_failure(missing, 21, f"{ref} is not in the local engine", "02-app-5.5.8")
    no_bundle_left(out)
    local_id = build_image(engine, ref, {"/usr/local/texlive/FULL": "scheme-full\n"}).id
    proc = cli(args, engine_env(engine))
    assert proc.returncode == 0, proc.stderr
    m = manifest_of(out)
    (img,) = m.images
    assert (img.ref, img.id, img.source, img.upstream_digest) == (ref, local_id, "local", None)
    assert m.toolkit == {"commit": commit, "file": "toolkit.gitbundle"}
    assert "toolkit.gitbundle" in [f.name for f in m.files]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(out / "toolkit.gitbundle"), str(clone)], check=True)
    assert subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip() == commit


def test_export_resolves_layers_written_as_links(engine, tmp_path):
    """docker save writes a layer shared at different places as a symlink, maybe before its target."""
    from bundler.export import export_images
    from bundler.registry import Mirrors, Puller

    build_image(engine, "airgap-test/link-a:1", {"/a": "a\n"})
    build_image(engine, "airgap-test/link-b:1", {"/b": "b\n"}, base="airgap-test/link-a:1")
    puller = Puller(engine.client(), Mirrors(), "linux/amd64")
    images = [puller.take_local("airgap-test/link-a:1"), puller.take_local("airgap-test/link-b:1")]
    assert images[0].diff_ids == images[1].diff_ids[:-1]
    cache = BlobCache(tmp_path / "blobs")
    result = export_images(engine.client(), images, cache)
    for img in images:
        assert cache.has(img.id) and all(cache.has(d) for d in img.diff_ids)
    assert set(result.layer_sizes) == set(images[1].diff_ids)
    assert result.stream_bytes > sum(result.layer_sizes.values())
    # layers not wanted (cached already, or on the host) are hashed but not stored again
    again = export_images(engine.client(), images, BlobCache(tmp_path / "other"), keep=lambda d: False)
    assert again.stored == [] and set(again.layer_sizes) == set(result.layer_sizes)


def test_output_on_a_mount_point(engine, registry, seeded, signing_key, tmp_path):
    """--out may be the root of a mounted stick: the bundle is staged inside it and moved up at the end."""
    stick = tmp_path / "stick"
    stick.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(stick)], check=True)
    try:
        proc = cli(build_args(registry, signing_key, stick), engine_env(engine))
        assert proc.returncode == 0, proc.stderr
        m = manifest_of(stick)
        assert sorted(os.listdir(stick)) == sorted(["manifest.json", "manifest.json.sig", "signing-key.pub",
                                                    "README-OFFLINE.txt", *(p.name for p in m.parts)])
        assert not (tmp_path / "stick.partial").exists()
    finally:
        subprocess.run(["umount", str(stick)], check=True)


def test_importer_wheels_install_offline(engine, registry, seeded, signing_key, tmp_path):
    out = tmp_path / "bundle"
    args = ["build", "--from", "5.5.7", "--to", "5.5.8", "--mongo", "6.0", "--redis", "7.4",
            "--key", str(signing_key), "--passphrase-env", "MY_PASS", "--out", str(out),
            "--mirror", f"docker.io={mirror_prefix(registry)}", "--json"]
    proc = cli(args, engine_env(engine), timeout=600)
    assert proc.returncode == 0, proc.stderr
    m = manifest_of(out)
    wheels = [f for f in m.files if f.name.startswith("wheels/")]
    assert any(f.name.startswith("wheels/overleaf_airgap-0.1.0-") for f in wheels)
    for f in m.files:
        assert hashlib.sha256((out / f.name).read_bytes()).hexdigest() == f.sha256
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-index", "--find-links", "wheels",
                              "overleaf-airgap"], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    helped = subprocess.run([str(venv / "bin" / "overleaf-import"), "--help"], env=env, capture_output=True,
                            text=True, cwd=tmp_path)
    assert helped.returncode == 0, helped.stdout + helped.stderr
    assert "Usage" in helped.stdout
