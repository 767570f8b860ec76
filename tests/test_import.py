"""overleaf-import: verify, load, push, inventory, on real files and real engines; and its pure parts.

Engine tests run the real CLI in a subprocess (as an admin would) against the
``offline_engine`` fixture, with bundles made by tests/support/bundles.py from the
synthetic images of the ``engine`` fixture. Each bad input must give a clear
message, its exit code, no traceback, and leave nothing loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import docker
import docker.errors
import pytest

from manifests.bundle import BundleManifest, FileRef
from manifests.errors import IntegrityError
from manifests.payload import PartReader, PartWriter
from tests.support.bundles import make_bundle, make_key, read_manifest, sign
from tests.support.engine import MiB, DataLayer, PrivateEngine, build_image

from importer.engine import chain_prefixes
from importer.load import archive_manifest, blobs_to_send, check_member, missing_omitted
from importer.push import overleaf_rc, registry_names
from importer.verify import BundleFolders, check_contents, safe_path

REPO = Path(__file__).resolve().parents[1]
REFS = ["sharelatex/sharelatex:5.5.3", "sharelatex/sharelatex:5.5.4", "mongo:6.0", "mongo:8.0", "redis:7.4"]
WHEEL = {"wheels/overleaf_airgap-0.1.0-py3-none-any.whl": b"not really a wheel\n" * 100}


# --- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    return make_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def pristine(engine, synthetic_images, signer, tmp_path_factory) -> Path:
    """One valid bundle of every synthetic image, several parts; tests work on copies."""
    assert set(REFS) <= set(synthetic_images)
    out = tmp_path_factory.mktemp("pristine") / "bundle"
    make_bundle(engine.client(), REFS, out, signer, sequence=5, max_part_size=256 * 1024, files=WHEEL)
    return out


@pytest.fixture
def bundle(pristine, tmp_path) -> Path:
    dest = tmp_path / "bundle"
    shutil.copytree(pristine, dest)
    return dest


class Host:
    """The offline host: its engine, trust folder and state file; runs the real CLI."""

    def __init__(self, engine: PrivateEngine, root: Path, signer) -> None:
        self.engine, self.root = engine, root
        self.trust = root / "trusted.d"
        self.trust.mkdir()
        shutil.copy(signer.pub_path, self.trust / "builder.pub")
        self.state = root / "state" / "state.json"
        self.env = {**engine.env(), "OVERLEAF_AIRGAP_STATE": str(self.state), "OVERLEAF_AIRGAP_TRUST_DIR": str(self.trust)}

    def run(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "importer.cli", *args], cwd=REPO, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def tags(self) -> dict[str, str]:
        out = {}
        for img in self.engine.client().api.images():
            for tag in img.get("RepoTags") or []:
                if tag != "<none>:<none>":
                    out[tag] = img["Id"]
        return out

    def ids(self) -> set[str]:
        return {img["Id"] for img in self.engine.client().api.images(all=True)}

    def accepted(self) -> dict:
        return json.loads(self.state.read_text())["accepted"] if self.state.exists() else {}


def _wipe(client: docker.DockerClient) -> None:
    for c in client.containers.list(all=True):
        c.remove(force=True)
    for _ in range(10):  # children before parents: repeat until nothing is left
        images = client.api.images(all=True)
        if not images:
            return
        for img in images:
            try:
                client.api.remove_image(img["Id"], force=True)
            except docker.errors.APIError:
                pass
    raise AssertionError(f"cannot empty the offline engine: {client.api.images(all=True)}")


@pytest.fixture
def host(offline_engine, tmp_path, signer):
    _wipe(offline_engine.client())
    yield Host(offline_engine, tmp_path, signer)
    _wipe(offline_engine.client())


def _fails(proc, code: int, *needles: str) -> str:
    text = proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "error: " in text, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def _assert_nothing_loaded(host: Host) -> None:
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
def test_load_sends_only_what_the_engine_lacks(host, bundle, engine, signer, tmp_path):
    pinned = _pinned(read_manifest(bundle))
    client = host.engine.client()
    small = tmp_path / "small"
    make_bundle(engine.client(), ["sharelatex/sharelatex:5.5.3"], small, signer, sequence=1)
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
    _fails(proc, 14, *parts[len(parts) // 2:], "not found in")
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
    _fails(host.run("verify", str(bundle)), 14, "payload.001", "damaged or altered", "Copy again")
    _fails(host.run("load", str(bundle)), 14, "payload.001")
    _assert_nothing_loaded(host)
    assert host.accepted() == {}  # never recorded


@pytest.mark.engine
def test_truncated_part(host, bundle):
    part = bundle / "payload.002"
    part.write_bytes(part.read_bytes()[:-100])
    _fails(host.run("load", str(bundle)), 14, "payload.002", "truncated")
    _assert_nothing_loaded(host)


@pytest.mark.engine
def test_missing_part(host, bundle):
    (bundle / "payload.000").unlink()
    _fails(host.run("load", str(bundle)), 14, "payload.000", "not found", "Copy again from the original media",
           "--parts-from")
    _assert_nothing_loaded(host)


@pytest.mark.engine
def test_unexpected_extra_file(host, bundle):
    (bundle / "payload.999").write_bytes(b"stale part from another bundle")
    (bundle / "notes.txt").write_text("hello")
    text = _fails(host.run("load", str(bundle)), 14, "payload.999", "notes.txt", "not part of this bundle")
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
    _fails(host.run("verify", str(bundle)), 14, "payload.000", "leads outside")


# --- trust: signature, expiry, rollback --------------------------------------------------------------
@pytest.mark.engine
def test_manifest_edited_after_signing(host, bundle):
    m = read_manifest(bundle)
    m["sequence"] = 99
    (bundle / "manifest.json").write_bytes(json.dumps(m, sort_keys=True).encode())
    _fails(host.run("load", str(bundle)), 11, "does not verify with any trusted key")
    _assert_nothing_loaded(host)


@pytest.mark.engine
def test_signature_by_an_untrusted_key(host, bundle, tmp_path):
    stranger = make_key(tmp_path / "stranger")
    m = read_manifest(bundle)
    m["key_id"] = stranger.id
    sign(bundle, m, stranger)
    shutil.copy(stranger.pub_path, bundle / "signing-key.pub")
    text = _fails(host.run("load", str(bundle)), 11, "does not verify with any trusted key")
    assert stranger.id in text  # the hint names the bundle's own key next to the trusted ones
    _assert_nothing_loaded(host)
    # trusting it explicitly (--trust replaces the trust folder) lets it through
    assert host.run("verify", str(bundle), "--trust", str(stranger.pub_path)).returncode == 0


@pytest.mark.engine
def test_no_trusted_keys(host, bundle, tmp_path):
    _fails(host.run("verify", str(bundle), env={"OVERLEAF_AIRGAP_TRUST_DIR": str(tmp_path / "none")}), 11,
           "no trusted public keys", "--trust")


@pytest.mark.engine
def test_expired_bundle(host, bundle, signer):
    m = read_manifest(bundle)
    m["created"], m["expires"] = "2020-01-01T00:00:00Z", "2020-02-01T00:00:00Z"
    sign(bundle, m, signer)
    _fails(host.run("load", str(bundle)), 12, "expired on 2020-02-01", "--allow-expired")
    _assert_nothing_loaded(host)
    proc = host.run("verify", str(bundle), "--allow-expired")
    assert proc.returncode == 0 and "warning: the bundle expired" in proc.stderr


@pytest.mark.engine
def test_replayed_older_bundle(host, bundle, signer):
    assert host.run("verify", str(bundle)).returncode == 0  # sequence 5 accepted
    m = read_manifest(bundle)
    m["sequence"], m["bundle_id"] = 3, "older"
    sign(bundle, m, signer)
    _fails(host.run("load", str(bundle)), 13, "sequence 3 is older than", "replayed or rolled-back")
    _assert_nothing_loaded(host)
    m["sequence"], m["bundle_id"] = 5, "same-number-other-bundle"
    sign(bundle, m, signer)
    _fails(host.run("verify", str(bundle)), 13, "same sequence number")
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
        m["images"][3]["ref"] = value
        m["plan"]["steps"][0]["images"][3] = value
        m["plan"]["images"] = sorted(m["plan"]["steps"][0]["images"])
    sign(bundle, m, signer)  # the signature is good: the schema check must catch it
    _fails(host.run("load", str(bundle)), 10, needle)
    _assert_nothing_loaded(host)
    assert not Path("/tmp/pwned").exists()


# --- hostile payload members ---------------------------------------------------------------------------
def _member(name: str, data: bytes | None = b"evil", kind: bytes = tarfile.REGTYPE, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    info.size = len(data) if data is not None and kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.engine
@pytest.mark.parametrize("member, needle", [
    (_member("../../etc/cron.d/evil"), "absolute path or '..'"),
    (_member("/etc/cron.d/evil"), "absolute path or '..'"),
    (_member("blobs/sha256/" + "e" * 64, kind=tarfile.SYMTYPE, link="../../../../etc/passwd"), "symbolic link"),
    (_member("blobs/sha256/" + "e" * 64, kind=tarfile.LNKTYPE, link="/etc/shadow"), "hard link"),
    (_member("blobs/sha256/" + "f" * 64), "does not list"),
])
def test_hostile_payload_member_aborts_the_load(host, engine, synthetic_images, signer, tmp_path, member, needle):
    def list_fake_blob(m: dict) -> None:  # a listed name, so that only the member's type is wrong
        m["blobs"].append({"digest": "sha256:" + "e" * 64, "kind": "layer", "size": 0, "encoding": "none",
                           "stored_size": 0})

    out = tmp_path / "hostile"
    # the hostile member comes last: every real blob has already streamed towards the engine
    make_bundle(engine.client(), REFS, out, signer, extra_members=[member], edit=list_fake_blob)
    assert host.run("verify", str(out)).returncode == 0  # the parts are as signed
    _fails(host.run("load", str(out)), 14, needle)
    _assert_nothing_loaded(host)


@pytest.mark.engine
@pytest.mark.parametrize("how, needle", [
    ("content", "does not match its digest"),
    ("longer", "ends 1 bytes early"),
    ("shorter", "longer than the manifest says"),
])
def test_blob_that_does_not_match_its_digest_aborts_the_load(host, engine, synthetic_images, signer, tmp_path, how, needle):
    online = engine.client()
    top = online.api.inspect_image("redis:7.4")["RootFS"]["Layers"][-1]

    def resize(m: dict) -> None:
        for b in m["blobs"]:
            if b["digest"] == top:
                b["size"] += 1 if how == "longer" else -1

    out = tmp_path / "bad-blob"
    make_bundle(online, ["mongo:8.0", "redis:7.4"], out, signer, corrupt=[top] if how == "content" else [],
                edit=resize if how != "content" else None)
    assert host.run("verify", str(out)).returncode == 0  # every part is as signed
    _fails(host.run("load", str(out)), 14, top, needle)
    _assert_nothing_loaded(host)


# --- the engine ------------------------------------------------------------------------------------
@pytest.mark.engine
def test_engine_stopped(host, bundle, tmp_path):
    gone = f"unix://{tmp_path}/gone.sock"
    _fails(host.run("load", str(bundle), env={"DOCKER_HOST": gone}), 20, "cannot reach the Docker engine",
           "gone.sock", "DOCKER_HOST")
    stale = tmp_path / "stale.sock"  # a socket file left behind by a daemon that died
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    _fails(host.run("load", str(bundle), env={"DOCKER_HOST": f"unix://{stale}"}), 20, "nothing listens")
    _fails(host.run("inventory", "--out", str(tmp_path / "r.json"), env={"DOCKER_HOST": gone}), 20)
    assert host.accepted()["overleaf-ce"]["sequence"] == 5  # the bundle itself verified


@pytest.mark.engine
def test_no_space_in_the_engine_data_root(engine, signer, tmp_path):
    build_image(engine, "airgap-test/big:1", {"/big/README": "big\n"},
                data=[DataLayer("/big/blob", 48 * MiB, "random", seed=7)])
    out = tmp_path / "big"
    make_bundle(engine.client(), ["airgap-test/big:1"], out, signer, max_part_size=64 * MiB)
    base = Path(f"/tmp/oa-tmpfs-{os.getpid()}")
    (base / "data").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(base / "data")], check=True)
    try:
        with PrivateEngine(base, name="small") as small:
            (tmp_path / "h").mkdir()
            proc = Host(small, tmp_path / "h", signer).run("load", str(out))
            text = _fails(proc, 22, "data root", "free", "needs about", "MiB")
            assert small.client().api.images() == []
            assert "Free at least" in text
    finally:
        subprocess.run(["umount", "-l", str(base / "data")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.engine
def test_existing_tag_is_not_moved_silently(host, bundle, engine, signer, tmp_path):
    pinned = _pinned(read_manifest(bundle))
    client = host.engine.client()
    small = tmp_path / "small"
    make_bundle(engine.client(), ["redis:7.4"], small, signer, sequence=1)
    assert host.run("load", str(small)).returncode == 0
    client.api.tag(pinned["redis:7.4"], "mongo", "8.0")  # mongo:8.0 here is something else
    text = _fails(host.run("load", str(bundle)), 24, "mongo:8.0", "--replace-tags")
    assert "already name other images" in text
    assert host.tags() == {"redis:7.4": pinned["redis:7.4"], "mongo:8.0": pinned["redis:7.4"]}  # nothing changed
    proc = host.run("load", str(bundle), "--replace-tags")
    assert proc.returncode == 0, proc.stderr
    assert host.tags() == pinned


@pytest.mark.engine
def test_failed_load_puts_every_tag_back(host, engine, synthetic_images, signer, tmp_path):
    """The engine loads mongo:8.0 (moving the old tag), then fails on redis: the run is undone."""
    client = host.engine.client()
    build_image(client, "mongo:8.0", {"/old-local-mongo": "x\n"})
    old = client.api.inspect_image("mongo:8.0")["Id"]
    ids_before, tags_before = host.ids(), host.tags()

    def break_redis(m: dict) -> None:  # signed, but redis's layer list is another image's
        layers = {i["ref"]: i["diff_ids"] for i in m["images"]}
        m["images"][1]["diff_ids"] = layers["mongo:8.0"]

    out = tmp_path / "broken"
    manifest = make_bundle(engine.client(), ["mongo:8.0", "redis:7.4"], out, signer, edit=break_redis)
    text = _fails(host.run("load", str(out), "--replace-tags"), 20, "failed to load")
    assert "Nothing was kept" in text
    assert host.tags() == tags_before and tags_before["mongo:8.0"] == old
    assert host.ids() == ids_before
    assert _pinned(manifest)["mongo:8.0"] not in host.ids()


# --- delta bundles and the receipt --------------------------------------------------------------------
@pytest.mark.engine
def test_inventory_then_delta(host, engine, synthetic_images, signer, tmp_path):
    online = engine.client()
    base = tmp_path / "base"
    make_bundle(online, ["sharelatex/sharelatex:5.5.3"], base, signer, sequence=1)
    older = online.api.inspect_image("sharelatex/sharelatex:5.5.3")["RootFS"]["Layers"]
    newer = online.api.inspect_image("sharelatex/sharelatex:5.5.4")["RootFS"]["Layers"]
    delta = tmp_path / "delta"
    manifest = make_bundle(online, ["sharelatex/sharelatex:5.5.4"], delta, signer, sequence=2, omit=older)
    assert {b["digest"] for b in manifest["blobs"] if b["kind"] == "layer"} == set(newer) - set(older)

    # a host that lacks the omitted layers: named, nothing loaded
    other_state = {"OVERLEAF_AIRGAP_STATE": str(tmp_path / "other-state.json")}  # (it accepts sequence 2)
    _fails(host.run("load", str(delta), env=other_state), 10, "delta bundle", "lacks layers", older[0], "inventory")
    _assert_nothing_loaded(host)

    assert host.run("load", str(base)).returncode == 0
    receipt_path = tmp_path / "receipt.json"
    proc = host.run("--json", "inventory", "--out", str(receipt_path))
    assert proc.returncode == 0, proc.stderr
    receipt = json.loads(receipt_path.read_bytes())
    assert json.loads(proc.stdout)["sha256"] == hashlib.sha256(receipt_path.read_bytes()).hexdigest()
    assert receipt["schema"] == 1 and receipt["engine"]["api_version"]
    mine = {i["id"]: i for i in receipt["images"]}
    loaded = online.api.inspect_image("sharelatex/sharelatex:5.5.3")["Id"]
    assert mine[loaded]["tags"] == ["sharelatex/sharelatex:5.5.3"] and mine[loaded]["diff_ids"] == older
    assert receipt["accepted"]["overleaf-ce"]["sequence"] == 1
    assert str(tmp_path) not in receipt_path.read_text()  # no local paths travel out

    proc = host.run("load", str(delta))
    assert proc.returncode == 0, proc.stderr
    assert host.tags()["sharelatex/sharelatex:5.5.4"] == manifest["images"][0]["id"]


# --- push --------------------------------------------------------------------------------------------
@pytest.mark.engine
def test_push_to_an_internal_registry(host, bundle, registry):
    proc = host.run("--json", "push", str(bundle), "--registry", registry.address)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    a = registry.address
    assert out["pushed"]["sharelatex/sharelatex:5.5.4"] == f"{a}/sharelatex/sharelatex:5.5.4"
    assert out["pushed"]["mongo:8.0"] == f"{a}/mongo:8.0"
    assert registry.tags("sharelatex/sharelatex") == ["5.5.3", "5.5.4"]
    assert registry.tags("mongo") == ["6.0", "8.0"] and registry.tags("redis") == ["7.4"]
    assert out["overleaf_rc"] == {"OVERLEAF_IMAGE_NAME": f"{a}/sharelatex/sharelatex", "MONGO_IMAGE": f"{a}/mongo",
                                  "MONGO_VERSION": "8.0", "REDIS_IMAGE": f"{a}/redis:7.4"}
    assert all(d.startswith("sha256:") for d in out["digests"].values())
    assert not [t for t in host.tags() if t.startswith(a)]  # temporary tags removed
    assert host.tags() == _pinned(read_manifest(bundle))
    proc = host.run("push", str(bundle), "--registry", registry.address)
    assert proc.returncode == 0 and f"MONGO_IMAGE={a}/mongo" in proc.stdout


@pytest.mark.engine
def test_push_to_an_unreachable_or_refused_registry(host, bundle):
    _fails(host.run("push", str(bundle), "--registry", "127.0.0.1:1"), 21, "pushing", "127.0.0.1:1")
    # plain HTTP to a registry the engine does not list as insecure: refused before anything is loaded
    _fails(host.run("push", str(bundle), "--registry", "10.255.0.1:5000", "--insecure"), 21,
           "does not allow plain HTTP", "insecure-registries")
    assert host.tags() == _pinned(read_manifest(bundle))  # (from the first run, which loaded before pushing)
    _fails(host.run("push", str(bundle), "--registry", "bad host;rm"), 21, "not a registry address")


# --- pure parts: no engine -------------------------------------------------------------------------
def _parts(tmp_path: Path, data: bytes, size: int) -> list[FileRef]:
    w = PartWriter(tmp_path, size)
    w.write(data)
    w.close()
    return w.parts


def test_part_reader_reads_across_parts_and_names_a_bad_one(tmp_path):
    data = os.urandom(300_000)
    parts = _parts(tmp_path, data, 64 * 1024)
    assert len(parts) == 5
    assert PartReader(parts, lambda n: tmp_path / n).read() == data
    _flip(tmp_path / "payload.002", 7)
    reader = PartReader(parts, lambda n: tmp_path / n)
    with pytest.raises(IntegrityError, match="payload.002"):
        reader.read()
    (tmp_path / "payload.003").unlink()
    with pytest.raises(IntegrityError, match="payload.003 cannot be read"):
        PartReader(parts, lambda n: tmp_path / n, verify=False).read()


def test_part_reader_notices_truncated_and_overlong_parts(tmp_path):
    parts = _parts(tmp_path, os.urandom(100_000), 40_000)
    p = tmp_path / "payload.001"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(IntegrityError, match="payload.001 is 39999 bytes"):
        PartReader(parts, lambda n: tmp_path / n).read()
    p.write_bytes(p.read_bytes() + b"xy")
    with pytest.raises(IntegrityError, match="payload.001 is longer"):
        PartReader(parts, lambda n: tmp_path / n).read()


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


def _fake_manifest(parts: list[FileRef], files: list[FileRef] = ()) -> BundleManifest:
    cfg, layer = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    return BundleManifest.from_dict({
        "format": "overleaf-airgap-bundle", "schema": 1, "bundle_id": "b", "tool_version": "t", "product": "overleaf",
        "edition": "ce", "from_version": "5.5.3", "to_version": "5.5.4", "created": "2026-01-01T00:00:00Z",
        "expires": "2099-01-01T00:00:00Z", "sequence": 1, "key_id": "k", "platform": "linux/amd64",
        "plan": {"schema": 1, "from": "5.5.3", "to": "5.5.4", "edition": "ce", "steps": [], "images": []},
        "images": [{"ref": "mongo:8.0", "id": cfg, "diff_ids": [layer], "platform": "linux/amd64",
                    "upstream_digest": None, "source": "local", "size": 1}],
        "blobs": [{"digest": cfg, "kind": "config", "size": 1, "encoding": "none", "stored_size": 1},
                  {"digest": layer, "kind": "layer", "size": 1, "encoding": "zstd", "stored_size": 1}],
        "parts": [{"name": p.name, "size": p.size, "sha256": p.sha256} for p in parts],
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in files],
        "payload_size": sum(p.size for p in parts), "max_part_size": max(p.size for p in parts)})


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


def test_check_member_refuses_anything_but_listed_regular_blobs():
    m = _fake_manifest([FileRef("payload.000", 1, "0" * 64)])
    by_path = {b.path: b for b in m.blobs}
    good = tarfile.TarInfo("blobs/sha256/" + "2" * 64 + ".zst")
    good.size = 1
    assert check_member(good, by_path).kind == "layer"
    wrong_size = tarfile.TarInfo(good.name)
    wrong_size.size = 2
    cases = [(_member("../x")[0], "'..'"), (_member("/abs")[0], "absolute"), (wrong_size, "manifest says 1"),
             (_member(good.name, kind=tarfile.SYMTYPE, link="/etc/passwd")[0], "symbolic link"),
             (_member("blobs/sha256/" + "2" * 64)[0], "does not list"),  # listed digest, wrong encoding
             (_member(good.name, kind=tarfile.CHRTYPE)[0], "a device"),
             (_member("blobs/sha256/", kind=tarfile.DIRTYPE)[0], "a folder")]
    for info, needle in cases:
        with pytest.raises(IntegrityError, match=needle):
            check_member(info, by_path)


def test_delta_chains_and_what_to_send():
    a, b, c, d = ("sha256:" + x * 64 for x in "abcd")
    cfg = "sha256:" + "9" * 64
    m = _fake_manifest([FileRef("payload.000", 1, "0" * 64)])
    img = type(m.images[0])("x/app:1", cfg, (a, b, c), "linux/amd64", None, "local", 1)
    chains = chain_prefixes([[a, b], [d]])
    assert chains == {(a,), (a, b), (d,)}
    in_bundle = m.__class__(**{**m.__dict__, "blobs": m.blobs + tuple(
        type(m.blobs[0])(x, "layer", 1, "none", 1) for x in (a, b, c)) + (type(m.blobs[0])(cfg, "config", 1, "none", 1),)})
    assert missing_omitted(in_bundle, [img], chains) == []
    assert set(blobs_to_send(in_bundle, [img], chains)) == {cfg, c}  # a, b: the engine has their chain
    only_c = m.__class__(**{**m.__dict__, "blobs": (type(m.blobs[0])(c, "layer", 1, "none", 1),
                                                     type(m.blobs[0])(cfg, "config", 1, "none", 1))})
    assert missing_omitted(only_c, [img], chains) == []
    assert missing_omitted(only_c, [img], chain_prefixes([[b, a]])) == [("x/app:1", a), ("x/app:1", b)]
    assert json.loads(archive_manifest([img])) == [{"Config": "9" * 64 + ".json", "RepoTags": ["x/app:1"],
                                                    "Layers": [f"{x[7:]}/layer.tar" for x in (a, b, c)]}]


def test_registry_names_and_overleaf_rc():
    refs = ["quay.io/sharelatex/sharelatex-pro:6.2.2", "sharelatex/sharelatex:5.5.4", "mongo:8.0",
            "docker.io/library/redis:7.4", "quay.io/sharelatex/git-bridge:6.2.2", "localhost:5000/x/y:1"]
    names = registry_names(refs, "reg.lan:5000")
    assert names == {
        "quay.io/sharelatex/sharelatex-pro:6.2.2": "reg.lan:5000/sharelatex/sharelatex-pro:6.2.2",
        "sharelatex/sharelatex:5.5.4": "reg.lan:5000/sharelatex/sharelatex:5.5.4",
        "mongo:8.0": "reg.lan:5000/mongo:8.0", "docker.io/library/redis:7.4": "reg.lan:5000/redis:7.4",
        "quay.io/sharelatex/git-bridge:6.2.2": "reg.lan:5000/sharelatex/git-bridge:6.2.2",
        "localhost:5000/x/y:1": "reg.lan:5000/x/y:1"}
    from manifests.errors import RegistryError
    with pytest.raises(RegistryError, match="would both be pushed"):
        registry_names(["quay.io/a/b:1", "a/b:1"], "r:1")
    m = _fake_manifest([FileRef("payload.000", 1, "0" * 64)])
    pro = ["quay.io/sharelatex/sharelatex-pro:6.2.2", "quay.io/sharelatex/git-bridge:6.2.2", "mongo:7.0",
           "mongo:8.0", "redis:7.4", "quay.io/sharelatex/texlive-full:2025.1"]
    plan = {**m.plan, "steps": [{"id": "01-app-6.2.2", "kind": "app", "description": "d", "images": pro}],
            "images": sorted(pro)}
    m2 = m.__class__(**{**m.__dict__, "plan": plan})
    rc, warnings = overleaf_rc(m2, registry_names(pro, "r:5000"))
    assert rc == {"OVERLEAF_IMAGE_NAME": "r:5000/sharelatex/sharelatex-pro",
                  "GIT_BRIDGE_IMAGE": "r:5000/sharelatex/git-bridge", "MONGO_IMAGE": "r:5000/mongo",
                  "MONGO_VERSION": "8.0", "REDIS_IMAGE": "r:5000/redis:7.4"}
    assert len(warnings) == 1 and "update_project_image_name.js" in warnings[0]
    assert "quay.io/sharelatex/texlive-full:2025.1" in warnings[0]
