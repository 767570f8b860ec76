"""The registry client against a compromised or broken registry (loopback servers, tests/support/hostile_registry.py).

Credentials go only to the registry's own scheme, host and port; an HTTPS registry cannot
downgrade anything to plain HTTP. Each case asserts what the foreign server received.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manifests.distribution import Credentials, RegistryClient, origin
from manifests.errors import (BlobDigestError, DiskSpaceError, ManifestFormatError, RegistryAuthError, RegistryError,
                             RegistryUnreachableError)
from manifests.limits import LIMITS
from tests.support.hostile_registry import HostileRegistry, Recorder, make_tls, sha

LOGIN = ("alice", "s3cret")


def client_for(reg: HostileRegistry, **kw) -> RegistryClient:
    """A client with a stored login for ``reg`` (HTTPS when ``reg`` speaks TLS)."""
    return RegistryClient(reg.address, credentials=Credentials.static({reg.address: LOGIN}),
                          insecure_loopback=reg.scheme == "http", timeout=10, **kw)


@pytest.fixture()
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    files = make_tls(tmp_path / "tls")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(files.cert))
    return files


def test_origin_fills_in_ports() -> None:
    assert origin("https://Reg.LAN/v2/") == ("https", "reg.lan", 443)
    assert origin("http://reg.lan:5000/x") == ("http", "reg.lan", 5000)
    assert origin("http://reg.lan/") != origin("https://reg.lan/")


@pytest.mark.parametrize("foreign_host", ["localhost", "127.0.0.1"])   # another host; the same host, another port
def test_upload_location_elsewhere_gets_no_credentials(foreign_host: str) -> None:
    data = b"layer bytes" * 100
    with Recorder(status=201) as evil, HostileRegistry(users=dict([LOGIN])) as reg:
        reg.upload_location = f"http://{foreign_host}:{evil.port}/steal/upload"
        with client_for(reg) as c:
            assert c.push_blob("team/app", sha(data), len(data), lambda: io.BytesIO(data)) == "uploaded"
        assert any(m == "POST" and "Authorization" in h for m, _, h in reg.log)   # the registry got the login
        assert [m for m, _, _ in evil.log] == ["PUT"]                             # the upload went there ...
        assert not evil.saw_authorization()                                      # ... without any credential


def test_https_registry_cannot_downgrade_an_upload(tls) -> None:
    data = b"x" * 1000
    with Recorder(status=201) as evil, HostileRegistry(users=dict([LOGIN]), tls=tls) as reg:
        reg.upload_location = f"http://127.0.0.1:{evil.port}/plain"
        with client_for(reg) as c, pytest.raises(RegistryError) as err:
            c.push_blob("team/app", sha(data), len(data), lambda: io.BytesIO(data))
        assert err.value.exit_code == 21 and "plain-HTTP" in err.value.message and "downgraded" in err.value.message
        assert evil.log == []


def test_cancel_of_a_foreign_upload_is_not_sent() -> None:
    data = b"y" * 10
    with Recorder(status=204) as evil, HostileRegistry(users=dict([LOGIN])) as reg:
        reg.upload_location = f"http://localhost:{evil.port}/cancel-me"
        with client_for(reg) as c:
            assert c.mount_blob("team/app", sha(data), "team/other") is False
        assert any(m == "POST" and "mount=" in p for m, p, _ in reg.log)
        assert evil.log == []


def test_foreign_upload_host_asking_for_a_login_gets_none() -> None:
    data = b"z" * 10
    with Recorder(status=401) as evil, HostileRegistry(users=dict([LOGIN])) as reg:
        reg.upload_location = f"http://localhost:{evil.port}/login-please"
        with client_for(reg) as c, pytest.raises(RegistryAuthError) as err:
            c.push_blob("team/app", sha(data), len(data), lambda: io.BytesIO(data))
        assert "registry's own address" in err.value.message
        assert len(evil.log) == 1 and not evil.saw_authorization()


def test_token_realm_on_another_host_is_asked_anonymously() -> None:
    with Recorder(status=200, body={"token": "from-elsewhere"}) as evil, HostileRegistry(auth="bearer") as reg:
        reg.realm = f"http://localhost:{evil.port}/token"
        reg.manifests[("team/app", "1")] = (b'{"schemaVersion": 2}', "application/vnd.oci.image.manifest.v1+json")
        with client_for(reg) as c:
            assert c.get_manifest("team/app", "1").data == b'{"schemaVersion": 2}'
        assert [p.split("?")[0] for _, p, _ in evil.log] == ["/token"]
        assert not evil.saw_authorization()
        assert reg.log[-1][2]["Authorization"] == "Bearer from-elsewhere"


def test_token_realm_on_the_registry_itself_gets_the_login() -> None:
    """The positive control: the same stand-in, its own realm, and the Basic login is sent there."""
    with HostileRegistry(auth="bearer") as reg:
        reg.manifests[("team/app", "1")] = (b'{"schemaVersion": 2}', "application/vnd.oci.image.manifest.v1+json")
        with client_for(reg) as c:
            c.get_manifest("team/app", "1")
        token_calls = [h for _, p, h in reg.log if p.startswith("/token")]
        assert token_calls and token_calls[0]["Authorization"].startswith("Basic ")


def test_https_registry_naming_an_http_realm_is_refused(tls) -> None:
    with Recorder(status=200, body={"token": "t"}) as evil, HostileRegistry(auth="bearer", tls=tls) as reg:
        reg.realm = f"http://127.0.0.1:{evil.port}/token"
        reg.manifests[("team/app", "1")] = (b"{}", "application/vnd.oci.image.manifest.v1+json")
        with client_for(reg) as c, pytest.raises(RegistryError) as err:
            c.get_manifest("team/app", "1")
        assert err.value.exit_code == 21 and "plain-HTTP" in err.value.message
        assert evil.log == []
        # the same registry with an https realm of its own works (so the refusal above is the realm's)
        reg.realm = None
        with client_for(reg) as c:
            assert c.get_manifest("team/app", "1").data == b"{}"


@pytest.mark.parametrize("realm", ["file:///etc/passwd", "ftp://127.0.0.1/token"])
def test_realm_that_is_not_http_is_not_opened(realm: str) -> None:
    with HostileRegistry(auth="bearer") as reg:
        reg.realm = realm
        with client_for(reg) as c, pytest.raises(RegistryError) as err:
            c.get_manifest("team/app", "1")
        assert err.value.exit_code == 21 and "not http(s)" in err.value.message


# --- tags/list: the one client's pagination ------------------------------------------------------
def refresh_cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "bundler.cli", "catalog", "refresh", *args],
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_tags_follow_links_on_the_registry_itself() -> None:
    with HostileRegistry() as reg:
        reg.tags, reg.page_size = [f"6.2.{i}" for i in range(25)], 10
        with RegistryClient(reg.address, credentials=Credentials.none()) as c:
            assert c.list_tags("sharelatex/sharelatex") == reg.tags
        assert len([p for _, p, _ in reg.log if "tags/list" in p]) == 3


@pytest.mark.parametrize("link", ["<file:///etc/passwd>; rel=\"next\"", "<file:///dev/zero>"])
def test_tags_link_that_is_not_http_is_refused(link: str, tmp_path: Path) -> None:
    with HostileRegistry() as reg:
        reg.tags, reg.link = ["6.2.2"], link
        with RegistryClient(reg.address, credentials=Credentials.none()) as c, pytest.raises(RegistryError) as err:
            c.list_tags("sharelatex/sharelatex")
        assert "not http(s)" in err.value.message and "file:///" in err.value.message
        overlay = tmp_path / "overlay.yaml"
        proc = refresh_cli("--registry", reg.url, "--overlay", str(overlay))
        assert proc.returncode == 21 and "not http(s)" in proc.stderr, proc.stderr
        assert not overlay.exists()


def test_tags_link_to_another_host_is_refused(tmp_path: Path) -> None:
    with Recorder(status=200, body={"tags": ["6.2.99"]}) as evil, HostileRegistry() as reg:
        reg.tags, reg.link = ["6.2.2"], f'<http://localhost:{evil.port}/v2/sharelatex/sharelatex/tags/list>; rel="next"'
        proc = refresh_cli("--registry", reg.url, "--overlay", str(tmp_path / "o.yaml"))
        assert proc.returncode == 21 and "another address" in proc.stderr, proc.stderr
        assert evil.log == []


def test_tags_pagination_is_bounded_with_a_warning(tmp_path: Path) -> None:
    with HostileRegistry() as reg:
        reg.tags, reg.page_size = [f"6.2.{i}" for i in range(3, 3 + LIMITS.tag_pages + 20)], 1
        overlay = tmp_path / "o.yaml"
        proc = refresh_cli("--registry", reg.url, "--overlay", str(overlay))
        assert proc.returncode == 0, proc.stderr
        assert f"more than {LIMITS.tag_pages} pages" in proc.stderr and "warning:" in proc.stderr
        assert len([p for _, p, _ in reg.log if "tags/list" in p]) == LIMITS.tag_pages
        assert f"6.2.{3 + LIMITS.tag_pages - 1}" in overlay.read_text()
        assert f"6.2.{3 + LIMITS.tag_pages}" not in overlay.read_text()
        proc = refresh_cli("--json", "--registry", reg.url, "--overlay", str(tmp_path / "o2.yaml"))
        assert proc.returncode == 0 and any("pages" in w for w in json.loads(proc.stdout)["warnings"])


@pytest.mark.parametrize("body", [b'{"tags": ["6.2.2", 7, null]}', b'["6.2.2"]', b'{"tags": "6.2.2"}', b"<html>"])
def test_malformed_tag_list_is_a_registry_error(body: bytes, tmp_path: Path) -> None:
    with HostileRegistry() as reg:
        reg.raw["/v2/sharelatex/sharelatex/tags/list"] = (200, {"Content-Type": "application/json"}, body)
        proc = refresh_cli("--registry", reg.url, "--overlay", str(tmp_path / "o.yaml"))
        assert proc.returncode == 21, proc.stderr
        assert body[:6].decode() in proc.stderr      # what the registry sent, quoted


# --- bounded reads: caps, an overall deadline, room on the disk ------------------------------------
def quick_client(reg: HostileRegistry, deadline: float = 2.0) -> RegistryClient:
    """A client whose per-read timeout (10 s) a 5-second drip never trips: only the deadline can."""
    return RegistryClient(reg.address, credentials=Credentials.none(), timeout=10, deadline=deadline)


MANIFEST_PATH = "/v2/team/app/manifests/1"


@pytest.mark.parametrize("call,path", [
    (lambda c: c.ping(), "/v2/"),
    (lambda c: c.get_manifest("team/app", "1"), MANIFEST_PATH),
    (lambda c: c.list_tags("team/app"), "/v2/team/app/tags/list"),
    (lambda c: c.catalog(), "/v2/_catalog"),
])
def test_a_drip_fails_within_the_deadline(call, path: str) -> None:
    with HostileRegistry() as reg:
        reg.drip.add(path)          # the status line itself, one byte every 5 s
        start = time.monotonic()
        with quick_client(reg) as c, pytest.raises(RegistryUnreachableError) as err:
            call(c)
        assert time.monotonic() - start < 4.5
        assert "within 2 s" in err.value.message and err.value.exit_code == 21


def test_a_drip_in_the_body_fails_within_the_deadline() -> None:
    with HostileRegistry() as reg:
        reg.drip.add(MANIFEST_PATH)
        reg.drip_body[MANIFEST_PATH] = b'{"schemaVersion": 2, "config": {}, "layers": []}'
        start = time.monotonic()
        with quick_client(reg) as c, pytest.raises(RegistryUnreachableError) as err:
            c.get_manifest("team/app", "1")
        assert time.monotonic() - start < 4.5 and "within 2 s" in err.value.message


def test_a_dripping_token_service_fails_within_the_deadline() -> None:
    with HostileRegistry(auth="bearer") as reg:
        reg.drip.add("/token")
        start = time.monotonic()
        with quick_client(reg) as c, pytest.raises(RegistryUnreachableError) as err:
            c.get_manifest("team/app", "1")
        assert time.monotonic() - start < 4.5 and "within 2 s" in err.value.message


def test_a_dripping_blob_is_not_retried_and_keeps_its_partial(tmp_path: Path) -> None:
    data = b"0123456789" * 10
    path = f"/v2/team/app/blobs/{sha(data)}"
    with HostileRegistry() as reg:
        reg.blobs[sha(data)] = data
        reg.drip.add(path)
        reg.drip_body[path] = data
        reg.drip_interval = 0.5
        with RegistryClient(reg.address, credentials=Credentials.none(), timeout=10, deadline=2,
                            min_rate=1 << 30) as c, pytest.raises(RegistryUnreachableError) as err:
            c.fetch_blob("team/app", sha(data), tmp_path / "blob", expected_size=len(data), retries=5)
        assert "within 2 s" in err.value.message and "partial download is kept" in err.value.message
        assert [p for _, p, _ in reg.log] == [path]          # one attempt: a drip is not retried
        assert 0 < (tmp_path / "blob.partial").stat().st_size < len(data)


def test_a_fast_answer_is_not_cut_by_the_deadline(tmp_path: Path) -> None:
    """The control: the same short deadline, a registry that answers at once."""
    data = b"quick" * 1000
    with HostileRegistry() as reg:
        reg.blobs[sha(data)] = data
        reg.tags = ["6.2.2"]
        with quick_client(reg) as c:
            c.ping()
            assert c.list_tags("team/app") == ["6.2.2"]
            c.fetch_blob("team/app", sha(data), tmp_path / "b", expected_size=len(data))
            time.sleep(2.5)           # longer than the deadline: a finished request's timer is gone
            c.ping()
        assert (tmp_path / "b").read_bytes() == data


@pytest.mark.parametrize("call,path", [
    (lambda c: c.ping(), "/v2/"),
    (lambda c: c.get_manifest("team/app", "1"), MANIFEST_PATH),
    (lambda c: c.list_tags("team/app"), "/v2/team/app/tags/list"),
    (lambda c: c.catalog(), "/v2/_catalog"),
])
def test_endless_answers_are_capped(call, path: str) -> None:
    with HostileRegistry() as reg:
        reg.endless.add(path)
        with quick_client(reg, deadline=60) as c, pytest.raises(RegistryError) as err:
            call(c)
        assert "sent more than" in err.value.message and "bytes" in err.value.message
        assert err.value.exit_code == 21


def test_an_endless_token_answer_is_capped() -> None:
    with HostileRegistry(auth="bearer") as reg:
        reg.endless.add("/token")
        with quick_client(reg, deadline=60) as c, pytest.raises(RegistryError) as err:
            c.get_manifest("team/app", "1")
        assert f"more than {LIMITS.registry_json} bytes" in err.value.message


def test_a_declared_length_over_the_cap_is_refused_unread() -> None:
    with HostileRegistry() as reg:
        reg.raw["/v2/_catalog"] = (200, {"Content-Type": "application/json"}, b" " * (LIMITS.registry_json + 1))
        with quick_client(reg) as c, pytest.raises(RegistryError) as err:
            c.catalog()
        assert f"more than {LIMITS.registry_json} bytes" in err.value.message


def test_a_blob_larger_than_the_free_space_is_not_fetched(tmp_path: Path) -> None:
    data = b"tiny"
    with HostileRegistry() as reg:
        reg.blobs[sha(data)] = data
        huge = shutil.disk_usage(tmp_path).free * 2 + 1
        with quick_client(reg) as c, pytest.raises(DiskSpaceError) as err:
            c.fetch_blob("team/app", sha(data), tmp_path / "b", expected_size=huge)
        assert err.value.exit_code == 22 and "free" in err.value.message
        assert reg.log == []


def test_the_build_checks_room_for_all_layers_first(tmp_path: Path) -> None:
    from bundler.fetch import BlobStore, fetch_images
    from bundler.registry import Mirrors

    config = json.dumps({"os": "linux", "architecture": "amd64",
                         "rootfs": {"type": "layers", "diff_ids": [sha(b"d1"), sha(b"d2")]}}).encode()
    half = shutil.disk_usage(tmp_path).free // 2 + 1        # each fits alone; both do not
    layers = [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": sha(x), "size": half}
              for x in (b"l1", b"l2")]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                      "digest": sha(config), "size": len(config)}, "layers": layers}).encode()
    with HostileRegistry() as reg:
        reg.manifests[("library/mongo", "8.0")] = (manifest, "application/vnd.docker.distribution.manifest.v2+json")
        reg.blobs[sha(config)] = config
        with pytest.raises(DiskSpaceError) as err:
            fetch_images(["mongo:8.0"], Mirrors.parse([f"docker.io={reg.address}"]), "linux/amd64",
                         BlobStore(tmp_path / "store"))
        assert err.value.exit_code == 22 and "2 layer(s)" in err.value.message
        assert not any(sha(b"l1") in p or sha(b"l2") in p for _, p, _ in reg.log)


# --- a manifest PUT without Docker-Content-Digest ----------------------------------------------------
OCI = "application/vnd.oci.image.manifest.v1+json"
MANIFEST = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'


def test_manifest_digest_is_confirmed_by_the_registry_or_read_back() -> None:
    with HostileRegistry() as reg, RegistryClient(reg.address, credentials=Credentials.none()) as c:
        assert c.store_manifest("team/app", "1", MANIFEST, OCI) == (sha(MANIFEST), "registry")
        reg.send_digest = False
        assert c.store_manifest("team/app", "2", MANIFEST, OCI) == (sha(MANIFEST), "read back")
        assert [m for m, p, _ in reg.log if p == "/v2/team/app/manifests/2"] == ["PUT", "GET"]
        reg.manifest_get_status = 403
        assert c.store_manifest("team/app", "3", MANIFEST, OCI) == (sha(MANIFEST), "")   # unconfirmed, not claimed


def test_a_registry_that_rewrites_a_manifest_is_caught_on_read_back() -> None:
    def rewrite(h) -> bool:
        if h.command == "GET" and "/manifests/" in h.path:
            h.reply(200, MANIFEST.replace(b"[]", b"[ ]"), {"Content-Type": OCI})
            return True
        return False

    with HostileRegistry() as reg, RegistryClient(reg.address, credentials=Credentials.none()) as c:
        reg.send_digest = False
        reg.on_request = rewrite
        with pytest.raises(BlobDigestError) as err:
            c.store_manifest("team/app", "1", MANIFEST, OCI)
        assert "sent no digest" in err.value.message and "rewrote" in err.value.hint


# --- malformed registry JSON: exit 21 with what was sent; OCI 1.1 fields accepted ---------------------
INDEX = "application/vnd.oci.image.index.v1+json"
AMD64 = {"os": "linux", "architecture": "amd64"}


def entry_for(data: bytes, **extra) -> dict:
    return {"mediaType": OCI, "digest": sha(data), "size": len(data), "platform": AMD64, **extra}


@pytest.mark.parametrize("body,needle,quote", [
    (json.dumps({"schemaVersion": 2, "manifests": ["not an object"]}).encode(), "entry 1", '\'"not an object"\''),
    (json.dumps({"schemaVersion": 2, "manifests": [None, 3]}).encode(), "is not an object", "'null'"),
    (b"[" * 2_000_000, "not valid JSON", "'[[[["),                                    # far too deep to parse
    (json.dumps([{"mediaType": INDEX}]).encode(), "no list of manifests", "'[{"),      # not an object at all
    (json.dumps({"manifests": {"a": 1}}).encode(), "no list of manifests", '\'{"manifests"'),
    (json.dumps({"manifests": [entry_for(MANIFEST, digest=7)]}).encode(), "malformed digest", '"digest": 7'),
    (json.dumps({"manifests": [entry_for(MANIFEST, size=True)]}).encode(), "malformed size", '"size": true'),
    (json.dumps({"manifests": [entry_for(MANIFEST, mediaType="Not A Type")]}).encode(), "malformed mediaType",
     "Not A Type"),
    (json.dumps({"manifests": [entry_for(MANIFEST, artifactType=["x"])]}).encode(), "malformed artifactType",
     '"artifactType": ["x"]'),
    (json.dumps({"manifests": [entry_for(MANIFEST, annotations={"a": 1})]}).encode(), "malformed annotations",
     '{"a": 1}'),
], ids=["string-entry", "null-entry", "deep", "list-body", "manifests-object", "digest", "size", "mediaType",
        "artifactType", "annotations"])
def test_a_malformed_index_is_a_registry_error_quoting_it(body: bytes, needle: str, quote: str) -> None:
    with HostileRegistry() as reg:
        reg.manifests[("team/app", "1")] = (body, INDEX)
        reg.manifests[("team/app", sha(MANIFEST))] = (MANIFEST, OCI)
        with RegistryClient(reg.address, credentials=Credentials.none()) as c, pytest.raises(RegistryError) as err:
            c.resolve("team/app", "1", "linux/amd64")
        assert err.value.exit_code == 21 and needle in err.value.message
        assert quote in err.value.message and len(err.value.message) < 1000     # a short excerpt of what was sent


def build_cli(tmp_path: Path, registry: str) -> subprocess.CompletedProcess:
    """``overleaf-bundle build`` with every image mirrored to ``registry`` (no engine, a fresh key)."""
    env = dict(os.environ, MY_PASS="pw", DOCKER_HOST="unix:///nonexistent/docker.sock")
    key = tmp_path / "k.key"
    if not key.exists():
        subprocess.run([sys.executable, "-m", "bundler.cli", "keygen", "--out", str(key), "--passphrase-env",
                        "MY_PASS"], env=env, check=True, capture_output=True, timeout=120)
    proc = subprocess.run([sys.executable, "-m", "bundler.cli", "build", "--from", "5.5.3", "--to", "5.5.8",
                           "--edition", "ce", "--mongo", "6.0", "--redis", "6.2", "--key", str(key),
                           "--passphrase-env", "MY_PASS", "--out", str(tmp_path / "out"), "--no-importer",
                           "--work-dir", str(tmp_path / "work"),
                           "--mirror", f"docker.io={registry}", "--mirror", f"quay.io={registry}/quay.io"],
                          env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.parametrize("body,needle", [
    (json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": ["not an object", 7]}).encode(),
     "is not an object"),
    (b"[" * 2_000_000, "not valid JSON"),
], ids=["entries-not-objects", "deep"])
def test_the_build_reports_a_malformed_index_as_exit_21(body: bytes, needle: str, tmp_path: Path) -> None:
    def serve(h) -> bool:
        if h.command in ("GET", "HEAD") and "/manifests/" in h.path:
            h.reply(200, body, {"Content-Type": INDEX})
            return True
        return False

    with HostileRegistry() as reg:
        reg.on_request = serve
        proc = build_cli(tmp_path, reg.address)
        assert proc.returncode == 21, proc.stderr
        assert needle in proc.stderr and "'" in proc.stderr and len(proc.stderr) < 3000   # quoted, and short
        assert "bundle's manifest" not in proc.stderr


def test_oci_1_1_fields_are_accepted_and_kept() -> None:
    """artifactType and subject in manifests and indexes, artifactType/annotations on entries: all valid OCI 1.1."""
    from manifests.bundle import BundleManifest
    from tests.test_tamper_matrix import manifest_dict

    config = json.dumps({"os": "linux", "architecture": "amd64",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    subject = {"mediaType": OCI, "digest": sha(b"other"), "size": 5}
    image = json.dumps({"schemaVersion": 2, "mediaType": OCI, "artifactType": "application/vnd.example+type",
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                                   "size": len(config)}, "layers": [], "subject": subject}).encode()
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "artifactType": "application/vnd.example+type",
                        "subject": subject, "manifests": [
                            entry_for(image, artifactType="application/vnd.example+type",
                                      annotations={"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
                                      **{"x-vendor-extension": {"odd": True}}),
                            {"mediaType": OCI, "digest": sha(b"att"), "size": 3, "artifactType": "application/spdx+json",
                             "platform": {"os": "unknown", "architecture": "unknown"}}]}).encode()
    with HostileRegistry() as reg, RegistryClient(reg.address, credentials=Credentials.none()) as c:
        reg.manifests[("team/app", "1")] = (index, INDEX)
        reg.manifests[("team/app", sha(image))] = (image, OCI)
        res = c.resolve("team/app", "1", "linux/amd64")
    assert res.manifest_bytes == image and res.upstream_digest == sha(index)
    assert res.index_entry["artifactType"] == "application/vnd.example+type"
    assert "x-vendor-extension" not in res.index_entry           # unknown keys are not carried into the bundle
    from bundler.fetch import parse_manifest
    assert parse_manifest(image, OCI, "team/app:1").config.digest == sha(config)

    # the bundle's manifest takes such an entry; a bad artifactType there stays a bundle problem (exit 10)
    def entry(index_entry: dict) -> dict:
        return {"ref": "mongo:8.0", "id": sha(config), "diff_ids": [], "layers": [], "source": "registry",
                "exact": True, "upstream_digest": sha(index), "index_entry": index_entry,
                "manifest_digest": sha(image), "platform": "linux/amd64", "size": 1}

    with pytest.raises(ManifestFormatError) as other:
        BundleManifest.from_dict(manifest_dict("k" * 16, images=[entry(dict(res.index_entry))]))
    assert "index_entry" not in other.value.message                # refused, if at all, for something else
    with pytest.raises(ManifestFormatError) as bad:
        BundleManifest.from_dict(manifest_dict("k" * 16, images=[entry(dict(res.index_entry, artifactType="No Type"))]))
    assert "index_entry.artifactType" in bad.value.message and bad.value.exit_code == 10
