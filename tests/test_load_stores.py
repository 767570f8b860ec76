"""``overleaf-import load`` / ``inventory`` on both image stores, with format-2 bundles from a registry.

Engine tests run the real CLI in a subprocess against the ``offline_engine`` (Engine
20.10, classic store) and ``containerd_engine`` (Engine 26, containerd image store)
fixtures, through ``each_offline_engine``. Bundles come straight from the ``registry``
fixture (tests/support/registry_bundles.py): upstream-exact, or re-encoded (zstd).
After a load each tag must have the ID pinned for the engine's store (config digest
on classic, the registry's manifest digest on containerd) and the image must run.
The pure parts (archive indexes, names, the zstd-to-tar path, API checks) have
fast tests at the end.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from importer.images.engine import EngineInfo, check_api_version, image_store
from importer.images.archive import ArchiveWriter, docker_archive_manifest, oci_index, qualified_name
from importer.images.load import LoadPlan, blobs_to_send, missing_omitted, write_archive
from importer.images.verify import BundleFolders
from manifests.bundle import OCI_LAYER_ZSTD, BundleManifest
from manifests.errors import EngineError, IntegrityError
from manifests.payload import END_OF_ARCHIVE, PartWriter, member_header, padding
from tests.support.engine import push_to_registry, wipe_engine
from tests.support.offline_host import OfflineHost, fails
from tests.support.registry_bundles import make_key, make_registry_bundle, read_manifest

APP_OLD, APP = "sharelatex/sharelatex:5.5.3", "sharelatex/sharelatex:5.5.4"
EXACT = [APP, "mongo:8.0", "redis:7.4"]
WHEEL = {"wheels/overleaf_airgap-0.1.0-py3-none-any.whl": b"not really a wheel\n" * 50}


# --- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    return make_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def pushed(engine, synthetic_images, registry) -> dict[str, str]:
    """Every synthetic image, pushed to the test registry: {ref: pushed ref}."""
    return push_to_registry(engine, registry, synthetic_images)


@pytest.fixture(scope="module")
def exact(pushed, registry, signer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exact") / "bundle"
    make_registry_bundle(registry.url, {r: pushed[r] for r in EXACT}, out, signer, sequence=5, files=WHEEL)
    return out


@pytest.fixture
def bundle(exact, tmp_path) -> Path:
    dest = tmp_path / "bundle"
    shutil.copytree(exact, dest)
    return dest


@pytest.fixture
def host(each_offline_engine, tmp_path, signer):
    wipe_engine(each_offline_engine.client())
    yield OfflineHost(each_offline_engine, tmp_path, signer.pub_path)
    wipe_engine(each_offline_engine.client())


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# --- loads on each store ----------------------------------------------------------------------------
@pytest.mark.engine
def test_load_pins_each_tag_for_the_store_and_the_images_run(host, bundle):
    m = read_manifest(bundle)
    start = time.monotonic()
    proc = host.run("--json", "load", str(bundle))
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["load"]["store"] == host.store and out["load"]["load"] == EXACT
    # classic: each image has layers of its own over the shared busybox base: one request each
    assert out["load"]["requests"] == (1 if host.store == "containerd" else len(EXACT))
    assert out["state"]["recorded"] and host.accepted()["overleaf-ce"]["sequence"] == 5
    pinned = host.pinned(m)
    assert host.tags() == pinned
    if host.store == "containerd":  # the registry's own manifest digest: what `docker pull` would give
        assert pinned == {i["ref"]: i["upstream_digest"] for i in m["images"]}
    else:
        assert pinned == {i["ref"]: i["id"] for i in m["images"]}
    client = host.engine.client()
    for img in m["images"]:
        assert client.api.inspect_image(img["ref"])["RootFS"]["Layers"] == img["diff_ids"]
        host.runs(img["ref"])
    print(f"\n{host.store}: load of {m['payload_size'] / 1e6:.1f} MB in {seconds:.2f} s (CLI, end to end)")

    again = host.run("--json", "load", str(bundle))  # idempotent: nothing is sent twice
    assert again.returncode == 0, again.stderr
    plan = json.loads(again.stdout)["load"]
    assert plan["present"] == EXACT and plan["send_bytes"] == 0


@pytest.mark.engine
def test_reencoded_zstd_image_loads_on_each_store(host, pushed, registry, signer, tmp_path):
    out = tmp_path / "zstd"
    m = make_registry_bundle(registry.url, {r: pushed[r] for r in (APP_OLD, "mongo:6.0")}, out, signer,
                             recompress=True, sequence=2)
    layers = [b for b in m["blobs"] if b["kind"] == "layer"]
    assert layers and all(b["encoding"] == "zstd" and b["media_type"].endswith(".tar") for b in layers)
    proc = host.run("load", str(out))
    assert proc.returncode == 0, proc.stderr
    assert host.tags() == host.pinned(m)
    for ref in (APP_OLD, "mongo:6.0"):
        host.runs(ref)


@pytest.mark.engine
def test_an_image_present_under_another_name_is_only_tagged(host, bundle):
    m = read_manifest(bundle)
    assert host.run("load", str(bundle)).returncode == 0
    pinned = host.pinned(m)
    client = host.engine.client()
    client.api.tag(pinned["redis:7.4"], "airgap-test/other", "1")
    client.api.remove_image("redis:7.4", noprune=True)
    proc = host.run("--json", "load", str(bundle))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)["load"]
    assert plan["tag"] == ["redis:7.4"] and plan["load"] == [] and plan["send_bytes"] == 0
    assert {k: v for k, v in host.tags().items() if k in pinned} == pinned


# --- bad input: named, its exit code, host unchanged ------------------------------------------------------
@pytest.mark.engine
def test_failed_load_puts_every_tag_back(host, bundle, pushed, registry, signer, tmp_path):
    """The engine takes mongo:8.0 (moving an existing tag), then refuses the app image: the run is undone."""
    m = read_manifest(bundle)
    assert host.run("load", str(bundle)).returncode == 0
    client = host.engine.client()
    client.api.remove_image(APP, noprune=True)
    client.api.tag(host.pinned(m)["redis:7.4"], "mongo", "8.0")  # mongo:8.0 here is another image
    ids_before, tags_before = host.ids(), host.tags()
    out = tmp_path / "broken"
    broken = make_registry_bundle(registry.url, {r: pushed[r] for r in ("mongo:8.0", APP)}, out, signer,
                                  recompress=True, sequence=6, wrong_top={APP: _layer_tar(b"not the app\n")})
    text = fails(host.run("load", str(out), "--replace-tags"), 20, "failed to load")
    assert "Nothing was kept" in text
    assert host.tags() == tags_before
    assert host.ids() == ids_before
    assert host.pinned(broken)[APP] not in host.ids()



@pytest.mark.engine
def test_flipped_byte_in_the_last_part_loads_nothing(host, bundle):
    m = read_manifest(bundle)
    last = m["parts"][-1]["name"]
    assert len(m["parts"]) > 2
    _flip(bundle / last, m["parts"][-1]["size"] // 2)  # every earlier blob has streamed by then
    fails(host.run("load", str(bundle)), 14, last, "damaged or altered")
    assert host.tags() == {} and host.ids() == set()
    assert host.accepted() == {}  # never recorded
    fails(host.run("verify", str(bundle)), 14, last, "do not match")


@pytest.mark.engine
def test_blob_that_does_not_match_its_digest_loads_nothing(host, pushed, registry, signer, tmp_path):
    """The parts are as signed (a bad signer): the blob digest check catches it while streaming."""
    from tests.support.registry_bundles import fetch_image
    top = fetch_image(registry.url, "redis:7.4", pushed["redis:7.4"]).layers[-1].digest
    out = tmp_path / "bad-blob"
    make_registry_bundle(registry.url, {r: pushed[r] for r in ("mongo:8.0", "redis:7.4")}, out, signer,
                         corrupt=[top])
    assert host.run("verify", str(out)).returncode == 0  # every part is as signed
    fails(host.run("load", str(out)), 14, top, "does not match its digest")
    # classic: mongo:8.0's request was complete (registered, untagged) before redis's layers streamed; the
    # rollback removed it
    assert host.tags() == {} and host.ids() == set()


@pytest.mark.engine
def test_missing_part(host, bundle):
    (bundle / "payload.001").unlink()
    fails(host.run("load", str(bundle)), 14, "payload.001", "not found", "--parts-from")
    assert host.tags() == {}


@pytest.mark.engine
def test_existing_tag_is_not_moved_silently(host, bundle):
    m = read_manifest(bundle)
    pinned = host.pinned(m)
    assert host.run("load", str(bundle)).returncode == 0
    client = host.engine.client()
    client.api.tag(pinned["redis:7.4"], "mongo", "8.0")  # mongo:8.0 here is now something else
    before = host.tags()
    text = fails(host.run("load", str(bundle)), 24, "mongo:8.0", "--replace-tags")
    assert "already name other images" in text
    assert host.tags() == before
    proc = host.run("load", str(bundle), "--replace-tags")
    assert proc.returncode == 0, proc.stderr
    assert host.tags() == pinned


@pytest.mark.engine
def test_inventory_then_delta(host, pushed, registry, signer, tmp_path):
    base = tmp_path / "base"
    mb = make_registry_bundle(registry.url, {APP_OLD: pushed[APP_OLD]}, base, signer, sequence=1)
    old_layers = set(mb["images"][0]["layers"])
    full = make_registry_bundle(registry.url, {APP: pushed[APP]}, tmp_path / "full", signer, sequence=2)
    omit = [d for d in full["images"][0]["layers"] if d in old_layers]
    assert omit and len(omit) < len(full["images"][0]["layers"])
    delta = tmp_path / "delta"
    md = make_registry_bundle(registry.url, {APP: pushed[APP]}, delta, signer, sequence=2, omit=omit,
                              delta_store=host.store)
    assert not {b["digest"] for b in md["blobs"]} & set(omit)

    # a host that lacks the omitted layers: named, nothing loaded
    other_state = {"OVERLEAF_AIRGAP_STATE": str(tmp_path / "other-state.json")}
    fails(host.run("load", str(delta), env=other_state), 10, "delta bundle", "lacks layers", omit[0], "inventory")
    assert host.tags() == {} and host.ids() == set()

    assert host.run("load", str(base)).returncode == 0
    receipt_path = tmp_path / "receipt.json"
    proc = host.run("--json", "inventory", "--out", str(receipt_path))
    assert proc.returncode == 0, proc.stderr
    raw = receipt_path.read_bytes()
    receipt = json.loads(raw)
    assert json.loads(proc.stdout)["sha256"] == hashlib.sha256(raw).hexdigest()
    assert receipt["schema"] == 2 and receipt["store"] == host.store
    assert receipt["engine"]["image_store"] == host.store
    (entry,) = [i for i in receipt["images"] if APP_OLD in i["tags"]]
    assert entry["diff_ids"] == mb["images"][0]["diff_ids"]
    assert entry["id"] == host.pinned(mb)[APP_OLD]
    assert entry["manifest_digest"] == (entry["id"] if host.store == "containerd" else None)
    assert str(tmp_path) not in raw.decode()  # no local paths travel out
    from manifests.receipt import Receipt
    assert Receipt.parse(raw).store == host.store

    proc = host.run("--json", "load", str(delta))
    assert proc.returncode == 0, proc.stderr
    assert host.tags()[APP] == host.pinned(md)[APP]
    host.runs(APP)


# --- pure parts: no engine ------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer_tar(content: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _tiny_bundle(folder: Path, layer: bytes, layer_type: str, encoding: str = "none",
                 stored: bytes | None = None) -> BundleManifest:
    """A one-image format-2 bundle (manifest, config, one layer) written with the real PartWriter."""
    return _bundle(folder, {"redis:7.4": [(layer, layer_type, layer if stored is None else stored, encoding,
                                           _sha(_layer_tar(b"hi\n")))]})


Layer = tuple[bytes, str, bytes, str, str]  # blob, media type, stored bytes, encoding, diff_id


def _plain(content: bytes) -> Layer:
    raw = _layer_tar(content)
    return raw, "application/vnd.oci.image.layer.v1.tar", raw, "none", _sha(raw)


def _bundle(folder: Path, images: dict[str, list[Layer]]) -> BundleManifest:
    """A format-2 bundle of ``images`` (ref -> its layers, bottom first) written with the real PartWriter, in
    the builder's payload order: manifests and configs first, then each layer once, image by image."""
    small, layers, entries = [], {}, []
    for ref, img_layers in images.items():
        config = json.dumps({"architecture": "amd64", "os": "linux", "ref": ref,
                             "rootfs": {"type": "layers", "diff_ids": [la[4] for la in img_layers]}},
                            sort_keys=True).encode()
        man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _sha(config),
                                     "size": len(config)},
                          "layers": [{"mediaType": la[1], "digest": _sha(la[0]), "size": len(la[0])}
                                     for la in img_layers]}).encode()
        small += [(man, "manifest", "application/vnd.oci.image.manifest.v1+json", man, "none"),
                  (config, "config", "application/vnd.oci.image.config.v1+json", config, "none")]
        for data, mt, body, enc, _ in img_layers:
            layers.setdefault(_sha(data), (data, "layer", mt, body, enc))
        entries.append({"ref": ref, "id": _sha(config), "diff_ids": [la[4] for la in img_layers],
                        "layers": [_sha(la[0]) for la in img_layers], "platform": "linux/amd64",
                        "manifest_digest": _sha(man), "upstream_digest": None, "index_entry": None, "exact": False,
                        "source": "registry", "size": len(man) + len(config) + sum(len(la[0]) for la in img_layers)})
    w = PartWriter(folder, 4096, 64 * 1024)
    blobs = []
    for data, kind, mt, body, enc in small + list(layers.values()):
        w.write(member_header(f"blobs/sha256/{_sha(data)[7:]}" + (".zst" if enc == "zstd" else ""), len(body)))
        w.write(body)
        w.write(padding(len(body)))
        blobs.append({"digest": _sha(data), "kind": kind, "media_type": mt, "size": len(data), "encoding": enc,
                      "stored_size": len(body)})
    w.write(END_OF_ARCHIVE)
    w.close()
    refs = list(images)
    plan = {"schema": 1, "from": "5.5.3", "to": "5.5.4", "edition": "ce", "options": {}, "images": refs,
            "steps": [{"id": "01", "kind": "app", "description": "d", "images": refs, "version": "5.5.4"}]}
    return BundleManifest.from_dict({
        "format": "overleaf-airgap-bundle", "schema": 2, "bundle_id": "0123abcd", "tool_version": "t",
        "product": "overleaf", "edition": "ce", "from_version": "5.5.3", "to_version": "5.5.4",
        "created": "2026-01-01T00:00:00Z", "expires": "2099-01-01T00:00:00Z", "sequence": 1, "key_id": "k",
        "platform": "linux/amd64", "plan": plan, "images": entries, "blobs": blobs,
        "parts": [{"name": p.name, "size": p.size, "sha256": p.sha256, "segments": list(p.segments)} for p in w.parts],
        "payload_size": w.total, "max_part_size": 4096, "segment_size": 64 * 1024})


class _VB:
    def __init__(self, manifest: BundleManifest, folder: Path) -> None:
        self.manifest, self.folders = manifest, BundleFolders(folder)


class _Request:
    def __init__(self, number: int) -> None:
        self.number, self.out, self.after = number, io.BytesIO(), None
        self.archive = ArchiveWriter(self.out)

    def files(self) -> dict[str, bytes]:
        self.out.seek(0)
        with tarfile.open(fileobj=self.out, mode="r:") as tar:
            return {t.name: tar.extractfile(t).read() for t in tar if t.isreg()}


class _MemoryUploads:
    """What write_archive writes into, kept in memory: each request's archive and the requests it waited for."""

    def __init__(self) -> None:
        self.all: list[_Request] = []

    def open(self) -> _Request:
        self.all.append(_Request(len(self.all) + 1))
        return self.all[-1]

    def finish(self, up: _Request, index_name: str, index: bytes, after=()) -> None:
        up.after = [dep.number for dep in after]
        up.archive.add_bytes(index_name, index)
        up.archive.close()


def _requests(folder: Path, m: BundleManifest, store: str, zstd_ok: bool = True, chains: frozenset = frozenset(),
              split: bool = True) -> tuple[list[_Request], list[str]]:
    """The requests a load of every image of ``m`` sends to an engine holding ``chains``; the refs left to tag."""
    plan = LoadPlan(store=store, load=list(m.images), zstd_layers_ok=zstd_ok)
    plan.send = blobs_to_send(m, plan.load, set(chains), store)
    uploads = _MemoryUploads()
    untagged = write_archive(uploads, _VB(m, folder), plan, split=split)  # type: ignore[arg-type]
    return uploads.all, [img.ref for img in untagged]


def _archive(folder: Path, m: BundleManifest, store: str, zstd_ok: bool = True) -> dict[str, bytes]:
    requests, untagged = _requests(folder, m, store, zstd_ok)
    assert len(requests) == 1 and untagged == []
    return requests[0].files()


def test_classic_archive_decodes_zstd_layers_for_old_engines(tmp_path):
    raw = _layer_tar(b"hi\n")
    layer = zstandard.ZstdCompressor().compress(raw)  # records its content size
    m = _tiny_bundle(tmp_path, layer, OCI_LAYER_ZSTD)
    files = _archive(tmp_path, m, "classic", zstd_ok=False)
    assert files[f"{m.images[0].layers[0][7:]}/layer.tar"] == raw
    assert json.loads(files["manifest.json"])[0]["RepoTags"] == ["redis:7.4"]
    files = _archive(tmp_path, m, "classic", zstd_ok=True)  # Engine 23+: sent as carried
    assert files[f"{m.images[0].layers[0][7:]}/layer.tar"] == layer
    # a zstd layer without its size in the frame header cannot go to Engine 20.10: said clearly
    chunked = io.BytesIO()
    with zstandard.ZstdCompressor(write_content_size=False).stream_writer(chunked, closefd=False) as w:
        w.write(raw)
    folder = tmp_path / "nosize"
    folder.mkdir()
    m2 = _tiny_bundle(folder, chunked.getvalue(), OCI_LAYER_ZSTD)
    with pytest.raises(EngineError, match="cannot load zstd-compressed layers"):
        _archive(folder, m2, "classic", zstd_ok=False)


def test_oci_layout_carries_blobs_exactly_and_names_the_original_manifest(tmp_path):
    raw = _layer_tar(b"hi\n")
    m = _tiny_bundle(tmp_path, raw, "application/vnd.oci.image.layer.v1.tar", "zstd",
                     stored=zstandard.ZstdCompressor().compress(raw))
    files = _archive(tmp_path, m, "containerd")
    img = m.images[0]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    assert files[f"blobs/sha256/{img.layers[0][7:]}"] == raw  # the payload's zstd encoding undone
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["digest"] == img.manifest_digest
    assert entry["annotations"] == {"io.containerd.image.name": "docker.io/library/redis:7.4",
                                    "org.opencontainers.image.ref.name": "7.4"}
    assert _sha(files[f"blobs/sha256/{img.manifest_digest[7:]}"]) == img.manifest_digest
    assert list(files)[-1] == "index.json"  # written last: a cut stream never has one


def test_a_blob_that_does_not_match_its_digest_is_caught(tmp_path):
    raw = _layer_tar(b"hi\n")
    bad = bytearray(raw)
    bad[600] ^= 1
    m = _tiny_bundle(tmp_path, raw, "application/vnd.oci.image.layer.v1.tar", stored=bytes(bad))
    with pytest.raises(IntegrityError, match="does not match its digest"):
        _archive(tmp_path, m, "classic")


def test_qualified_names_and_indexes():
    assert qualified_name("redis:7.4") == "docker.io/library/redis:7.4"
    assert qualified_name("sharelatex/sharelatex:5.5.4") == "docker.io/sharelatex/sharelatex:5.5.4"
    assert qualified_name("quay.io/sharelatex/sharelatex-pro:6.2.2") == "quay.io/sharelatex/sharelatex-pro:6.2.2"
    assert qualified_name("localhost:5000/x/y:1") == "localhost:5000/x/y:1"
    assert qualified_name("localhost/x:1") == "localhost/x:1"


def test_delta_chains(tmp_path):
    m = _tiny_bundle(tmp_path, _layer_tar(b"hi\n"), "application/vnd.oci.image.layer.v1.tar")
    img = m.images[0]
    assert missing_omitted(m, [img], set()) == []  # carried
    omitted = m.__class__(**{**m.__dict__, "blobs": tuple(b for b in m.blobs if b.kind != "layer"),
                             "delta": {"store": "classic", "receipt_sha256": "0" * 64,
                                       "omitted_layers": [img.layers[0]]}})
    assert missing_omitted(omitted, [img], set()) == [("redis:7.4", img.layers[0])]
    assert missing_omitted(omitted, [img], {img.diff_ids[0]}) == []          # the host holds the chain (ChainID)
    assert set(blobs_to_send(omitted, [img], {img.diff_ids[0]}, "classic")) == {img.id}
    assert set(blobs_to_send(omitted, [img], set(), "containerd")) == {img.id, img.manifest_digest}
    assert json.loads(docker_archive_manifest([img])) == [
        {"Config": img.id[7:] + ".json", "RepoTags": ["redis:7.4"], "Layers": [img.layers[0][7:] + "/layer.tar"]}]
    assert json.loads(oci_index(m, [img]))["manifests"][0]["mediaType"] == m.blob(img.manifest_digest).media_type


def test_image_store_and_api_version():
    assert image_store({"DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]}) == "containerd"
    assert image_store({"DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]]}) == "classic"
    assert image_store({}) == "classic"
    info = EngineInfo("19.03.15", "1.40", "linux", "x86_64", "overlay2", "classic", "/var/lib/docker", None)
    with pytest.raises(EngineError, match="speaks API 1.40.*needs API 1.41") as err:
        check_api_version(info)
    assert err.value.exit_code == 20 and "Upgrade Docker Engine" in err.value.hint
    for ok in ("1.41", "1.45", "1.52"):
        check_api_version(EngineInfo("x", ok, "linux", "x86_64", "overlay2", "classic", "", None))
    assert not EngineInfo("20.10.24", "1.41", "l", "a", "d", "classic", "", None).takes_zstd_layers
    assert EngineInfo("26.1.5", "1.45", "l", "a", "d", "containerd", "", None).takes_zstd_layers


def test_a_classic_load_of_gzip_layers_suggests_pigz_only_where_it_helps(tmp_path, monkeypatch):
    """The note comes for a local classic-store engine, gzip layers to send and no unpigz on the PATH;
    not for the containerd store, not with nothing gzip to send, not once unpigz is there."""
    from importer.images.engine import unpigz_hint

    empty, with_pigz = tmp_path / "empty", tmp_path / "bin"
    empty.mkdir()
    with_pigz.mkdir()
    tool = with_pigz / "unpigz"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("PATH", str(empty))
    note = unpigz_hint("classic", 2_000_000_000)
    assert note is not None and "2.00 GB" in note and "apt-get install pigz" in note
    assert unpigz_hint("containerd", 2_000_000_000) is None
    assert unpigz_hint("classic", 0) is None
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2376")   # a remote engine: its host's PATH is not ours
    assert unpigz_hint("classic", 2_000_000_000) is None
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setenv("PATH", str(with_pigz))
    assert unpigz_hint("classic", 2_000_000_000) is None


def test_classic_archive_is_cut_into_requests_that_overlap(tmp_path):
    """Images sharing a base: one request per image as its layers complete; later ones list the base without
    carrying it and wait for the request that did; only the last index, written after the whole payload was
    checked, has tags."""
    base, a1, b1, c1 = _plain(b"base\n"), _plain(b"a\n"), _plain(b"b\n"), _plain(b"c\n")
    m = _bundle(tmp_path, {"app:1": [base, a1], "mongo:8.0": [base, b1], "app:2": [base, a1, c1],
                           "redis:7.4": [base, b1]})  # redis: nothing of its own, ready with mongo
    (a, b, c, r) = m.images
    requests, untagged = _requests(tmp_path, m, "classic")
    assert len(requests) == 3
    files = [req.files() for req in requests]
    layer = {img.ref: [f"{d[7:]}/layer.tar" for d in img.layers] for img in m.images}
    assert set(files[0]) == {*layer["app:1"], f"{a.id[7:]}.json", "manifest.json"}
    assert set(files[1]) == {layer["mongo:8.0"][1], f"{b.id[7:]}.json", f"{r.id[7:]}.json", "manifest.json"}
    assert set(files[2]) == {layer["app:2"][2], f"{c.id[7:]}.json", "manifest.json"}
    assert [req.after for req in requests] == [[], [1], [1]]
    indexes = [json.loads(f["manifest.json"]) for f in files]
    assert [[e["Layers"] for e in i] for i in indexes] == [[layer["app:1"]], [layer["mongo:8.0"], layer["redis:7.4"]],
                                                           [layer["app:2"]]]
    assert [[e["RepoTags"] for e in i] for i in indexes] == [[[]], [[], []], [["app:2"]]]
    assert untagged == ["app:1", "mongo:8.0", "redis:7.4"]
    assert [list(f)[-1] for f in files] == ["manifest.json"] * 3  # the index is each request's last member
    for f in files:  # each layer file is the carried blob
        for name, data in f.items():
            if name.endswith("/layer.tar"):
                assert _sha(data) == "sha256:" + name.split("/")[0]


def test_an_image_finished_by_the_last_layer_keeps_its_tags_when_nothing_is_cut(tmp_path):
    """One image, or split=False: one request, tags in its index (as before the cut was possible)."""
    base, a1, b1 = _plain(b"base\n"), _plain(b"a\n"), _plain(b"b\n")
    m = _bundle(tmp_path, {"app:1": [base, a1], "mongo:8.0": [base, b1]})
    requests, untagged = _requests(tmp_path, m, "classic", split=False)
    assert len(requests) == 1 and untagged == []
    index = json.loads(requests[0].files()["manifest.json"])
    assert [e["RepoTags"] for e in index] == [["app:1"], ["mongo:8.0"]]


def test_a_layer_on_two_chains_keeps_one_request(tmp_path):
    """The same blob on another parent: listing it uncarried could name a chain nobody registered."""
    base, other, shared = _plain(b"base\n"), _plain(b"other\n"), _plain(b"shared\n")
    m = _bundle(tmp_path, {"app:1": [base, shared], "mongo:8.0": [other, shared]})
    requests, untagged = _requests(tmp_path, m, "classic")
    assert len(requests) == 1 and untagged == []
    assert [e["RepoTags"] for e in json.loads(requests[0].files()["manifest.json"])] == [["app:1"], ["mongo:8.0"]]


def test_a_delta_cut_waits_only_for_what_it_carried(tmp_path):
    """The engine holds the base: no request carries it, and none waits for it."""
    from manifests.receipt import chain_ids as chains_of
    base, a1, b1 = _plain(b"base\n"), _plain(b"a\n"), _plain(b"b\n")
    m = _bundle(tmp_path, {"app:1": [base, a1], "mongo:8.0": [base, b1]})
    requests, untagged = _requests(tmp_path, m, "classic", chains=frozenset(chains_of([base[4]])))
    assert [set(req.files()) - {"manifest.json"} for req in requests] == [
        {f"{img.layers[1][7:]}/layer.tar", f"{img.id[7:]}.json"} for img in m.images]
    assert [req.after for req in requests] == [[], []]
    assert untagged == ["app:1"]


def test_the_oci_layout_stays_one_request(tmp_path):
    base, a1, b1 = _plain(b"base\n"), _plain(b"a\n"), _plain(b"b\n")
    m = _bundle(tmp_path, {"app:1": [base, a1], "mongo:8.0": [base, b1]})
    requests, untagged = _requests(tmp_path, m, "containerd")
    assert len(requests) == 1 and untagged == []
    files = requests[0].files()
    assert list(files)[0] == "oci-layout" and list(files)[-1] == "index.json"
    assert len(json.loads(files["index.json"])["manifests"]) == 2
