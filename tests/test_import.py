"""overleaf-import: verify and load on real files and a real engine; and its pure parts.

Engine tests run the real CLI in a subprocess (as an admin would) against the
``offline_engine`` fixture (classic store), with format-2 bundles made by
tests/support/registry_bundles.py from the synthetic images of the ``engine`` fixture,
pushed to the ``registry`` fixture. Each bad input must give a clear message, its exit
code, no traceback, and leave nothing loaded. Loads on both image stores, deltas and
receipts: tests/test_load_stores.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from manifests.bundle import BundleManifest, PartRef
from manifests.errors import IntegrityError
from manifests.payload import PartWriter
from tests.support.engine import MiB, DataLayer, PrivateEngine, build_image, push_to_registry, wipe_engine
from tests.support.offline_host import OfflineHost, fails
from tests.support.registry_bundles import make_key, make_registry_bundle, read_manifest, sign

from manifests.receipt import chain_ids, host_chain_ids
from importer.images.verify import BundleFolders, check_contents, safe_path

REPO = Path(__file__).resolve().parents[1]
REFS = ["sharelatex/sharelatex:5.5.3", "sharelatex/sharelatex:5.5.4", "mongo:6.0", "mongo:8.0", "redis:7.4"]
WHEEL = {"wheels/overleaf_airgap-0.1.0-py3-none-any.whl": b"not really a wheel\n" * 100}


# --- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    return make_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def pushed(engine, synthetic_images, registry) -> dict[str, str]:
    assert set(REFS) <= set(synthetic_images)
    return push_to_registry(engine, registry, REFS)


def make_bundle(registry, pushed: dict[str, str], refs: list[str], out: Path, signer, **kwargs) -> dict:
    return make_registry_bundle(registry.url, {r: pushed[r] for r in refs}, out, signer, **kwargs)


@pytest.fixture(scope="module")
def pristine(registry, pushed, signer, tmp_path_factory) -> Path:
    """One valid bundle of every synthetic image, several parts; tests work on copies."""
    out = tmp_path_factory.mktemp("pristine") / "bundle"
    make_bundle(registry, pushed, REFS, out, signer, sequence=5, max_part_size=256 * 1024, files=WHEEL)
    return out


@pytest.fixture
def bundle(pristine, tmp_path) -> Path:
    dest = tmp_path / "bundle"
    shutil.copytree(pristine, dest)
    return dest


@pytest.fixture
def host(offline_engine, tmp_path, signer):
    wipe_engine(offline_engine.client())
    yield OfflineHost(offline_engine, tmp_path, signer.pub_path)
    wipe_engine(offline_engine.client())


def _assert_nothing_loaded(host: OfflineHost) -> None:
    assert host.tags() == {}, host.tags()
    assert host.ids() == set()


def _pinned(manifest: dict) -> dict[str, str]:
    return {i["ref"]: i["id"] for i in manifest["images"]}


# --- the happy paths --------------------------------------------------------------------------------
@pytest.mark.engine
def test_verify_then_load_pins_every_tag_and_records_the_bundle(host, bundle):
    proc = host.run("verify", str(bundle), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["bundle"]["sequence"] == 5 and report["state"]["recorded"]
    assert set(report["checked"]["files"]) == {p["name"] for p in read_manifest(bundle)["parts"]} | set(WHEEL)
    assert host.accepted()["overleaf-ce"]["sequence"] == 5
    assert host.tags() == {}  # verify touches no engine

    proc = host.run("load", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert "5 image(s) to load" in proc.stdout
    assert host.tags() == _pinned(read_manifest(bundle))

    again = host.run("--json", "load", str(bundle))  # idempotent: nothing is sent twice
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["load"]["present"] == REFS
    assert json.loads(again.stdout)["load"]["send_bytes"] == 0


@pytest.mark.engine
def test_load_sends_only_what_the_engine_lacks(host, bundle, registry, pushed, signer, tmp_path):
    pinned = _pinned(read_manifest(bundle))
    client = host.engine.client()
    small = tmp_path / "small"
    make_bundle(registry, pushed, ["sharelatex/sharelatex:5.5.3"], small, signer, sequence=1)
    assert host.run("load", str(small)).returncode == 0
    client.api.tag(pinned["sharelatex/sharelatex:5.5.3"], "airgap-test/other-name", "1")
    client.api.remove_image("sharelatex/sharelatex:5.5.3")  # the image stays, under another name

    proc = host.run("--json", "load", str(bundle))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)["load"]
    assert plan["tag"] == ["sharelatex/sharelatex:5.5.3"]
    assert "sharelatex/sharelatex:5.5.3" not in plan["load"]
    full = sum(b["size"] for b in read_manifest(bundle)["blobs"])
    assert plan["send_bytes"] < full  # the shared base layers were not sent again
    assert {k: v for k, v in host.tags().items() if k in pinned} == pinned


@pytest.mark.engine
def test_parts_on_several_discs(host, bundle, tmp_path):
    disc2 = tmp_path / "disc2"
    disc2.mkdir()
    parts = sorted(p.name for p in bundle.glob("payload.*"))
    for name in parts[len(parts) // 2:]:
        shutil.move(bundle / name, disc2 / name)
    proc = host.run("verify", str(bundle))  # non-interactive (no terminal): reports, does not ask
    fails(proc, 14, *parts[len(parts) // 2:], "not found in")
    assert host.run("verify", str(bundle), "--parts-from", str(disc2)).returncode == 0
    proc = host.run("load", str(bundle), "--parts-from", str(disc2))
    assert proc.returncode == 0, proc.stderr
    assert host.tags() == _pinned(read_manifest(bundle))


@pytest.mark.engine
def test_in_a_terminal_it_asks_for_the_next_disc(host, bundle, tmp_path):
    import pty
    import select

    disc2 = tmp_path / "disc2"
    disc2.mkdir()
    for part in sorted(bundle.glob("payload.*"))[2:]:
        shutil.move(part, disc2 / part.name)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with a terminal on stdin and stderr
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "importer.cli", "load", str(bundle)], host.env)
    out, answered = b"", False
    while select.select([fd], [], [], 120)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
        if b"(empty: stop)" in out and not answered:
            os.write(fd, str(disc2).encode() + b"\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert answered and "Missing: payload.002" in text
    assert host.tags() == _pinned(read_manifest(bundle))


# --- bad parts and files: named, every one, and nothing loaded -----------------------------------------
def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.engine
def test_flipped_byte_in_a_part(host, bundle):
    _flip(bundle / "payload.001", 1000)
    fails(host.run("verify", str(bundle)), 14, "payload.001", "damaged or altered", "Copy again")
    fails(host.run("load", str(bundle)), 14, "payload.001", "damaged or altered", "Copy payload.001 again")
    _assert_nothing_loaded(host)
    assert host.accepted() == {}  # never recorded


@pytest.mark.engine
def test_truncated_part(host, bundle):
    part = bundle / "payload.002"
    part.write_bytes(part.read_bytes()[:-100])
    fails(host.run("load", str(bundle)), 14, "payload.002", "truncated")
    _assert_nothing_loaded(host)


@pytest.mark.engine
def test_missing_part(host, bundle):
    (bundle / "payload.000").unlink()
    fails(host.run("load", str(bundle)), 14, "payload.000", "not found", "Copy again from the original media",
           "--parts-from")
    _assert_nothing_loaded(host)


@pytest.mark.engine
def test_unexpected_extra_file(host, bundle):
    (bundle / "payload.999").write_bytes(b"stale part from another bundle")
    (bundle / "notes.txt").write_text("hello")
    text = fails(host.run("load", str(bundle)), 14, "payload.999", "notes.txt", "not part of this bundle")
    assert "Remove what is not part of the bundle" in text
    _assert_nothing_loaded(host)


@pytest.mark.engine
def test_every_problem_is_named_in_one_run(host, bundle):
    _flip(bundle / "payload.001", 5)
    (bundle / "payload.003").unlink()
    wheel = bundle / next(iter(WHEEL))
    wheel.write_bytes(wheel.read_bytes() + b"x")
    (bundle / "extra.bin").write_bytes(b"?")
    proc = host.run("--json", "verify", str(bundle))
    assert proc.returncode == 14
    problems = {p["name"]: p["problem"] for p in json.loads(proc.stdout)["problems"]}
    assert problems == {"payload.001": "sha256", "payload.003": "missing", next(iter(WHEEL)): "size",
                        "extra.bin": "unexpected"}


@pytest.mark.engine
def test_part_that_links_outside_the_folder(host, bundle, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(bundle / "payload.000", outside / "payload.000")
    (bundle / "payload.000").symlink_to(outside / "payload.000")
    fails(host.run("verify", str(bundle)), 14, "payload.000", "leads outside")


# --- trust: signature, expiry, rollback --------------------------------------------------------------
@pytest.mark.engine
def test_manifest_edited_after_signing(host, bundle):
    m = read_manifest(bundle)
    m["sequence"] = 99
    (bundle / "manifest.json").write_bytes(json.dumps(m, sort_keys=True).encode())
    fails(host.run("load", str(bundle)), 11, "does not verify with any trusted key")
    _assert_nothing_loaded(host)


@pytest.mark.engine
def test_signature_by_an_untrusted_key(host, bundle, tmp_path):
    stranger = make_key(tmp_path / "stranger")
    m = read_manifest(bundle)
    m["key_id"] = stranger.id
    sign(bundle, m, stranger)
    shutil.copy(stranger.pub_path, bundle / "signing-key.pub")
    text = fails(host.run("load", str(bundle)), 11, "does not verify with any trusted key")
    assert stranger.id in text  # the hint names the bundle's own key next to the trusted ones
    _assert_nothing_loaded(host)
    # trusting it explicitly (--trust replaces the trust folder) lets it through
    assert host.run("verify", str(bundle), "--trust", str(stranger.pub_path)).returncode == 0


@pytest.mark.engine
def test_no_trusted_keys(host, bundle, tmp_path):
    fails(host.run("verify", str(bundle), env={"OVERLEAF_AIRGAP_TRUST_DIR": str(tmp_path / "none")}), 11,
           "no trusted public keys", "--trust")


@pytest.mark.engine
def test_expired_bundle(host, bundle, signer):
    m = read_manifest(bundle)
    m["created"], m["expires"] = "2020-01-01T00:00:00Z", "2020-02-01T00:00:00Z"
    sign(bundle, m, signer)
    fails(host.run("load", str(bundle)), 12, "expired on 2020-02-01", "--allow-expired")
    _assert_nothing_loaded(host)
    proc = host.run("verify", str(bundle), "--allow-expired")
    assert proc.returncode == 0 and "warning: the bundle expired" in proc.stderr


@pytest.mark.engine
def test_replayed_older_bundle(host, bundle, signer):
    assert host.run("verify", str(bundle)).returncode == 0  # sequence 5 accepted
    m = read_manifest(bundle)
    m["sequence"], m["bundle_id"] = 3, "0bd0bd0bd0"
    sign(bundle, m, signer)
    fails(host.run("load", str(bundle)), 13, "sequence 3 is older than", "replayed or rolled-back")
    _assert_nothing_loaded(host)
    m["sequence"], m["bundle_id"] = 5, "5a5e5a5e5a"
    sign(bundle, m, signer)
    fails(host.run("verify", str(bundle)), 13, "same sequence number")
    m["sequence"] = 3
    sign(bundle, m, signer)
    proc = host.run("verify", str(bundle), "--allow-downgrade")
    assert proc.returncode == 0 and "--allow-downgrade" in proc.stderr
    assert host.accepted()["overleaf-ce"]["sequence"] == 5  # never lowered


@pytest.mark.engine
@pytest.mark.parametrize("field, value, needle", [
    ("part", "../payload.000", "not allowed"),
    ("part", "/etc/payload.000", "not allowed"),
    ("ref", "mongo:8.0;touch /tmp/pwned", "not a valid image reference"),
    ("ref", "mongo:$(reboot)", "not a valid image reference"),
])
def test_signed_manifest_that_breaks_the_schema(host, bundle, signer, field, value, needle):
    m = read_manifest(bundle)
    if field == "part":
        m["parts"][0]["name"] = value
    else:
        m["images"][0]["ref"] = value
    sign(bundle, m, signer)  # the signature is good: the schema check must catch it
    fails(host.run("load", str(bundle)), 10, needle)
    _assert_nothing_loaded(host)
    assert not Path("/tmp/pwned").exists()


# --- the engine ------------------------------------------------------------------------------------
@pytest.mark.engine
def test_engine_stopped(host, bundle, tmp_path):
    gone = f"unix://{tmp_path}/gone.sock"
    fails(host.run("load", str(bundle), env={"DOCKER_HOST": gone}), 20, "cannot reach the Docker engine",
           "gone.sock", "DOCKER_HOST")
    stale = tmp_path / "stale.sock"  # a socket file left behind by a daemon that died
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    fails(host.run("load", str(bundle), env={"DOCKER_HOST": f"unix://{stale}"}), 20, "nothing listens")
    fails(host.run("inventory", "--out", str(tmp_path / "r.json"), env={"DOCKER_HOST": gone}), 20)
    assert host.accepted() == {}  # load records a bundle only once its parts streamed intact
    assert host.run("verify", str(bundle)).returncode == 0
    assert host.accepted()["overleaf-ce"]["sequence"] == 5


@pytest.mark.engine
def test_no_space_in_the_engine_data_root(engine, registry, signer, tmp_path):
    build_image(engine, "airgap-test/big:1", {"/big/README": "big\n"},
                data=[DataLayer("/big/blob", 48 * MiB, "random", seed=7)])
    out = tmp_path / "big"
    big = push_to_registry(engine, registry, ["airgap-test/big:1"])
    make_bundle(registry, big, ["airgap-test/big:1"], out, signer, max_part_size=64 * MiB)
    base = Path(f"/tmp/oa-tmpfs-{os.getpid()}")
    (base / "data").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(base / "data")], check=True)
    try:
        with PrivateEngine(base, name="small") as small:
            (tmp_path / "h").mkdir()
            proc = OfflineHost(small, tmp_path / "h", signer.pub_path).run("load", str(out))
            text = fails(proc, 22, "data root", "free", "needs about", "MiB")
            assert small.client().api.images() == []
            assert "Free at least" in text
    finally:
        subprocess.run(["umount", "-l", str(base / "data")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


# --- pure parts: no engine -------------------------------------------------------------------------
def _parts(tmp_path: Path, data: bytes, size: int) -> list[PartRef]:
    w = PartWriter(tmp_path, size, 64 * 1024)
    w.write(data)
    w.close()
    return w.parts


def test_safe_path(tmp_path):
    (tmp_path / "wheels").mkdir()
    assert safe_path(tmp_path, "wheels/a.whl") == tmp_path.resolve() / "wheels" / "a.whl"
    for bad in ("../x", "/etc/passwd", "wheels/../../x", "a//b", "./x", ""):
        with pytest.raises(IntegrityError):
            safe_path(tmp_path, bad)
    (tmp_path / "payload.000").symlink_to("/etc/passwd")
    with pytest.raises(IntegrityError, match="leads outside"):
        safe_path(tmp_path, "payload.000")
    (tmp_path / "payload.001").symlink_to(tmp_path / "wheels")  # a link that stays inside is fine
    assert safe_path(tmp_path, "payload.001") == (tmp_path / "wheels").resolve()


def _fake_manifest(parts: list[PartRef]) -> BundleManifest:
    man, cfg, layer = ("sha256:" + x * 64 for x in "012")
    return BundleManifest.from_dict({
        "format": "overleaf-airgap-bundle", "schema": 2, "bundle_id": "0123abcd", "tool_version": "t",
        "product": "overleaf", "edition": "ce", "from_version": "5.5.3", "to_version": "5.5.4",
        "created": "2026-01-01T00:00:00Z", "expires": "2099-01-01T00:00:00Z", "sequence": 1, "key_id": "k",
        "platform": "linux/amd64",
        "plan": {"schema": 1, "from": "5.5.3", "to": "5.5.4", "edition": "ce", "steps": [], "images": []},
        "images": [{"ref": "mongo:8.0", "id": cfg, "diff_ids": [layer], "layers": [layer], "platform": "linux/amd64",
                    "manifest_digest": man, "upstream_digest": None, "index_entry": None, "exact": False,
                    "source": "local", "size": 3}],
        "blobs": [{"digest": man, "kind": "manifest", "media_type": "application/vnd.oci.image.manifest.v1+json",
                   "size": 1, "encoding": "none", "stored_size": 1},
                  {"digest": cfg, "kind": "config", "media_type": "application/vnd.oci.image.config.v1+json",
                   "size": 1, "encoding": "none", "stored_size": 1},
                  {"digest": layer, "kind": "layer", "media_type": "application/vnd.oci.image.layer.v1.tar",
                   "size": 1, "encoding": "zstd", "stored_size": 1}],
        "parts": [{"name": p.name, "size": p.size, "sha256": p.sha256, "segments": list(p.segments)} for p in parts],
        "segment_size": 64 * 1024, "payload_size": sum(p.size for p in parts),
        "max_part_size": max(p.size for p in parts)})


def test_check_contents_asks_for_the_next_disc(tmp_path):
    disc1, disc2 = tmp_path / "d1", tmp_path / "d2"
    disc1.mkdir()
    disc2.mkdir()
    parts = _parts(disc1, os.urandom(200_000), 50_000)
    for name in ("payload.002", "payload.003"):
        shutil.move(disc1 / name, disc2 / name)
    asked = []

    def ask(missing):
        asked.append(missing)
        return disc2 if len(asked) == 1 else None

    report = check_contents(_fake_manifest(parts), BundleFolders(disc1, ask=ask))
    assert report.problems == [] and asked == [["payload.002", "payload.003"]]
    assert report.checked["payload.003"] == (disc2 / "payload.003").resolve()
    report = check_contents(_fake_manifest(parts), BundleFolders(disc1))  # non-interactive: reported
    assert [(p.name, p.kind) for p in report.problems] == [("payload.002", "missing"), ("payload.003", "missing")]


def test_check_contents_hashes_segments_and_names_the_bad_part(tmp_path):
    parts = _parts(tmp_path, os.urandom(300_000), 100_000)
    m = _fake_manifest(parts)
    assert check_contents(m, BundleFolders(tmp_path)).problems == []
    _flip(tmp_path / "payload.001", 70_000)  # the second segment of the second part
    (problem,) = check_contents(m, BundleFolders(tmp_path)).problems
    assert (problem.name, problem.kind) == ("payload.001", "sha256")
    assert "1 of 2 segment(s) do not match (first at byte 65536)" in problem.detail
    # for a load, parts are only found and sized here (the loader checks every segment as it reads)
    assert check_contents(m, BundleFolders(tmp_path), hash_parts=False).problems == []


def test_check_contents_for_a_load_leaves_missing_parts_to_the_loader_when_it_can_ask(tmp_path):
    parts = _parts(tmp_path, os.urandom(200_000), 50_000)
    (tmp_path / "payload.003").unlink()
    m = _fake_manifest(parts)
    report = check_contents(m, BundleFolders(tmp_path, ask=lambda names: None), hash_parts=False)
    assert report.problems == [] and report.deferred == ["payload.003"]
    report = check_contents(m, BundleFolders(tmp_path), hash_parts=False)  # non-interactive: reported now
    assert [(p.name, p.kind) for p in report.problems] == [("payload.003", "missing")]


def test_host_chain_ids_cover_every_prefix():
    a, b, d = ("sha256:" + x * 64 for x in "abd")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert host_chain_ids([[a, b], [d]]) == {a, ab, d}
    assert chain_ids([a, b]) == [a, ab]
