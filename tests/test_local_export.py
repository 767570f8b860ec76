"""Re-encoded images: local-engine exports on both image stores, and ``--recompress zstd``.

Engine tests build a synthetic image on a real private engine (classic store, Engine
20.10; containerd image store, Engine 26), export it with :func:`export_local` and check
the re-encoded result byte by byte: layer blob digests are the config's diff_ids (and the
engine's ``RootFS.Layers``), every ``.zst`` decompresses to its digest, the manifest is a
valid canonical OCI manifest with the right digests, and two exports give the same
manifest digest. The recompress tests build gzip/zstd/plain layers in the test itself.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from bundler import local_export
from bundler.local_export import LocalImageMissingError, export_local
from bundler.recompress import (ReencodeError, blob_path, oci_manifest, recompress_image, stored_zstd,
                                write_plain_blob, write_zstd_blob, zstd_path)
from manifests.bundle import (DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_CONFIG, OCI_LAYER_TAR,
                              OCI_LAYER_ZSTD, OCI_MANIFEST, BlobEntry)
from tests.support.engine import MiB, DataLayer, build_image

LOCAL_REF = "sharelatex/sharelatex:5.5.4-with-texlive-full"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unzstd(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True).read()


def check_reencoded(image, root: Path) -> None:
    """Every blob of a re-encoded image is in the store and matches its digest; the manifest is right."""
    doc = json.loads(image.manifest_bytes)
    assert image.manifest_bytes == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert image.manifest_digest == sha(image.manifest_bytes)
    assert doc["schemaVersion"] == 2 and doc["mediaType"] == OCI_MANIFEST
    assert doc["config"] == {"mediaType": OCI_CONFIG, "digest": image.config_digest,
                             "size": len(blob_path(root, image.config_digest).read_bytes())}
    assert [entry["digest"] for entry in doc["layers"]] == list(image.diff_ids) == list(image.layers)
    assert {entry["mediaType"] for entry in doc["layers"]} == {OCI_LAYER_TAR}
    config = blob_path(root, image.config_digest).read_bytes()
    assert sha(config) == image.config_digest
    assert tuple(json.loads(config)["rootfs"]["diff_ids"]) == image.diff_ids
    assert blob_path(root, image.manifest_digest).read_bytes() == image.manifest_bytes
    kinds = [b.kind for b in image.blobs]
    assert kinds == ["manifest", "config"] + ["layer"] * len(set(image.layers))
    unique_layers = list({entry["digest"]: entry for entry in doc["layers"]}.values())
    for blob, entry in zip(image.blobs[2:], unique_layers, strict=True):
        data = unzstd(blob.path)
        assert sha(data) == blob.digest and len(data) == blob.size == entry["size"]
        assert blob.encoding == "zstd" and blob.stored_size == blob.path.stat().st_size
        assert blob.path == zstd_path(root, blob.digest)
        tarfile.open(fileobj=io.BytesIO(data)).getmembers()     # a real tar
        assert isinstance(blob.entry, BlobEntry) and blob.entry.path.endswith(".zst")
    for blob in image.blobs[:2]:
        assert blob.encoding == "none" and blob.stored_size == blob.size == blob.path.stat().st_size
    entry = image.image_entry()
    assert entry.id == image.config_digest and not entry.exact and entry.layers == entry.diff_ids


# --- B: export from a local engine, on both image stores -------------------------------------------------
@pytest.mark.parametrize("engine_name", ["engine", "containerd_engine"])
def test_export_local_on_both_stores(engine_name, request, tmp_path):
    eng = request.getfixturevalue(engine_name)
    build_image(eng, LOCAL_REF, {"/opt/texlive/README": "TeX Live stand-in\n" * 500},
                extra_layers=[{"/opt/texlive/bin/tex": "#!/bin/sh\necho tex\n"}, {"/etc/same": "same\n"},
                              {"/etc/same": "same\n"}],    # two identical layers
                data=[DataLayer("/opt/texlive/data", 6 * MiB, "text", seed=4)])
    client = eng.client()
    info = client.api.inspect_image(LOCAL_REF)
    seen: list[int] = []
    start = time.monotonic()
    image = export_local(client, LOCAL_REF, tmp_path / "a", on_bytes=seen.append)
    seconds = time.monotonic() - start
    print(f"{engine_name}: export_local {image.size / MiB:.1f} MiB in {seconds:.2f} s, engine sent {sum(seen)} bytes")
    assert image.diff_ids == tuple(info["RootFS"]["Layers"])
    if engine_name == "engine":     # Engine 20.10 gives the two identical layers one diff_id (a symlink in the save)
        assert len(set(image.diff_ids)) == len(image.diff_ids) - 1
    assert image.platform == f"{info['Os']}/{info['Architecture']}"
    assert image.source == "local" and image.ref == LOCAL_REF and image.size > 6 * MiB
    if engine_name == "engine":
        assert image.config_digest == info["Id"]        # classic store: image ID = config digest
        assert sum(seen) > 6 * MiB                       # docker-archive: uncompressed layer tars
    else:
        assert 0 < sum(seen) < 6 * MiB                   # OCI layout: the store's gzip-compressed layers
    check_reencoded(image, tmp_path / "a")

    # determinism: a fresh export elsewhere gives the same manifest, byte for byte
    again = export_local(client, LOCAL_REF, tmp_path / "b")
    assert again.manifest_bytes == image.manifest_bytes and again.manifest_digest == image.manifest_digest

    # resume: a finished export is reused without asking the engine for the archive again
    def refuse(*_args, **_kwargs):
        raise AssertionError("the engine was asked to export again")

    original = local_export._open_save
    local_export._open_save = refuse
    try:
        reused = export_local(client, LOCAL_REF, tmp_path / "a")
    finally:
        local_export._open_save = original
    assert reused.manifest_digest == image.manifest_digest

    # a lost layer file is noticed: the record is not trusted, the layer is exported again
    zstd_path(tmp_path / "a", image.layers[-1]).unlink()
    redone = export_local(client, LOCAL_REF, tmp_path / "a")
    assert redone.manifest_digest == image.manifest_digest and stored_zstd(tmp_path / "a", image.layers[-1])


def test_export_local_missing_image(engine, tmp_path):
    with pytest.raises(LocalImageMissingError, match="not in the local engine") as err:
        export_local(engine.client(), "sharelatex/sharelatex:0.0.1-nowhere", tmp_path)
    assert err.value.hint and err.value.exit_code == 21   # an image is missing (as for a registry)


# --- C: --recompress zstd of an exact image -----------------------------------------------------------
def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def exact_image(root: Path, layers: list[tuple[bytes, bytes, str]], *, diff_ids: list[str] | None = None) -> str:
    """Store an exact image (manifest, config, layer blobs as a registry serves them); return its manifest digest.

    ``layers``: (uncompressed tar, blob as served, media type).
    """
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers",
                                    "diff_ids": diff_ids or [sha(tar) for tar, _, _ in layers]}}).encode()
    write_plain_blob(root, config)
    for _, blob, _ in layers:
        write_plain_blob(root, blob)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                           "config": {"mediaType": DOCKER_CONFIG, "digest": sha(config), "size": len(config)},
                           "layers": [{"mediaType": mt, "digest": sha(blob), "size": len(blob)}
                                      for _, blob, mt in layers]}, indent=3).encode()
    write_plain_blob(root, manifest)
    return sha(manifest)


def test_recompress_gzip_zstd_and_plain_layers(tmp_path):
    import os

    big = layer_tar({"opt/data": os.urandom(3 * MiB) + b"text " * 400_000, "etc/x": b"x\n"})
    small = layer_tar({"etc/hello": b"hello\n"})
    plain = layer_tar({"usr/bin/tool": b"#!/bin/sh\n"})
    gz = gzip.compress(big, mtime=0)
    two_members = gzip.compress(small[:700], mtime=0) + gzip.compress(small[700:], mtime=0)
    zs = zstandard.ZstdCompressor().compress(plain)
    root = tmp_path / "store"
    digest = exact_image(root, [(big, gz, DOCKER_LAYER_GZIP), (small, two_members, DOCKER_LAYER_GZIP),
                                (plain, zs, OCI_LAYER_ZSTD)])
    counted: list[int] = []
    image = recompress_image(root, "mongo:8.0", digest, upstream_digest=digest, on_bytes=counted.append)
    assert image.diff_ids == (sha(big), sha(small), sha(plain))
    assert sum(counted) == len(gz) + len(two_members) + len(zs)
    assert image.source == "registry" and image.upstream_digest == digest and image.platform == "linux/amd64"
    check_reencoded(image, root)
    assert image.blobs[2].stored_size < len(gz)          # zstd level 3 beats gzip here
    # resume and determinism: a second run reuses the .zst files and writes the same manifest
    again = recompress_image(root, "mongo:8.0", digest)
    assert again.manifest_bytes == image.manifest_bytes
    assert oci_manifest(image.config_digest, len(blob_path(root, image.config_digest).read_bytes()),
                        [(d, len(t)) for d, t in zip(image.diff_ids, (big, small, plain))]) == image.manifest_bytes


def test_recompress_refuses_a_layer_that_is_not_its_diff_id(tmp_path):
    tar = layer_tar({"etc/a": b"a\n"})
    root = tmp_path / "store"
    wrong = "sha256:" + "ab" * 32
    digest = exact_image(root, [(tar, gzip.compress(tar), DOCKER_LAYER_GZIP)], diff_ids=[wrong])
    with pytest.raises(ReencodeError, match="diff_id") as err:
        recompress_image(root, "redis:7.4", digest)
    assert err.value.exit_code == 14 and err.value.hint
    assert stored_zstd(root, wrong) is None and stored_zstd(root, sha(tar)) is None
    assert not [p for p in (root / "blobs" / "sha256").iterdir() if p.name.startswith(".tmp")]


def test_recompress_refuses_a_damaged_blob(tmp_path):
    tar = layer_tar({"etc/a": b"a\n" * 1000})
    blob = gzip.compress(tar)
    root = tmp_path / "store"
    digest = exact_image(root, [(tar, blob, DOCKER_LAYER_GZIP)])
    path = blob_path(root, sha(blob))
    path.write_bytes(blob[:-9] + bytes([blob[-9] ^ 1]) + blob[-8:])   # corrupt one byte of the stored blob
    with pytest.raises(ReencodeError):
        recompress_image(root, "redis:7.4", digest)
    assert stored_zstd(root, sha(tar)) is None


def test_write_zstd_blob_is_atomic_and_reused(tmp_path):
    data = b"layer bytes " * 100_000
    first = write_zstd_blob(tmp_path, [data[:5000], data[5000:]])
    assert first.digest == sha(data) and first.size == len(data) and unzstd(first.path) == data
    meta = json.loads((first.path.parent / (first.path.name + ".json")).read_bytes())
    assert meta["stored_size"] == first.stored_size == first.path.stat().st_size
    assert meta == {"schema": 1, "digest": first.digest, "size": len(data), "stored_size": first.stored_size}
    mtime = first.path.stat().st_mtime_ns
    assert write_zstd_blob(tmp_path, [data]) == first and first.path.stat().st_mtime_ns == mtime
    with pytest.raises(ReencodeError):
        write_zstd_blob(tmp_path, [b"other"], expect=first.digest)
    assert sorted(p.name for p in first.path.parent.iterdir()) == [first.path.name, first.path.name + ".json"]


def test_oci_manifest_is_canonical():
    a = oci_manifest("sha256:" + "1" * 64, 10, iter([("sha256:" + "2" * 64, 20)]))
    doc = json.loads(a)
    # canonical: sorted keys, no whitespace, ASCII: the bytes are the re-serialised document's
    assert a == json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    assert a.startswith(b'{"config":{"digest":"sha256:1111') and b" " not in a
    assert doc["layers"] == [{"mediaType": OCI_LAYER_TAR, "digest": "sha256:" + "2" * 64, "size": 20}]
    assert doc["schemaVersion"] == 2 and doc["config"]["size"] == 10
    with pytest.raises(ValueError, match="not a sha256 digest"):
        oci_manifest("sha256:xyz", 1, [])


def test_recompress_a_fetched_image(engine, registry, synthetic_images, tmp_path):
    """C on what the engine-free build really downloads (bundler.fetch), from a real registry."""
    from bundler.fetch import BlobStore, fetch_images
    from bundler.registry import Mirrors
    from tests.support.engine import push_to_registry

    push_to_registry(engine, registry, ["mongo:8.0"])
    root = tmp_path / "store"
    [fetched] = fetch_images(["mongo:8.0"], Mirrors.parse([f"docker.io={registry.address}"]), "linux/amd64",
                             BlobStore(root))
    assert {layer.media_type for layer in fetched.layers} == {DOCKER_LAYER_GZIP}
    start = time.monotonic()
    image = recompress_image(root, fetched.ref, fetched.manifest_digest, upstream_digest=fetched.upstream_digest)
    print(f"recompress of {fetched.ref}: {time.monotonic() - start:.2f} s")
    assert image.diff_ids == fetched.diff_ids and image.config_digest == fetched.config_digest
    assert image.manifest_digest != fetched.manifest_digest and image.upstream_digest == fetched.upstream_digest
    assert image.config_digest == engine.client().api.inspect_image("mongo:8.0")["Id"]
    check_reencoded(image, root)
