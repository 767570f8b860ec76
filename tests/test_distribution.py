"""The engine-free registry client (manifests/distribution.py) and the build's download stage (bundler/fetch.py).

Most tests run against a real Distribution registry on loopback (the ``registry`` fixture),
filled through the client's own push API; auth, redirects, wrong bytes and dropped
connections use a tiny loopback HTTP server written here. No Docker engine is used.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import stat
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from bundler.fetch import BlobStore, FetchedImage, check_image, fetch_images, parse_config, parse_manifest
from bundler.registry import Mirrors
from manifests.distribution import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    BlobDigestError,
    Credentials,
    CredentialsError,
    Platform,
    PlatformNotFoundError,
    RegistryAuthError,
    RegistryClient,
    RegistryNotFoundError,
    RegistryUnreachableError,
    UnsupportedManifestError,
    index_platforms,
    parse_challenge,
    select_platform,
)
from manifests.errors import IntegrityError, RegistryError

DOCKER_CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(seed: str, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


# --- building images through the push API ----------------------------------------------------
def push_image(client: RegistryClient, repo: str, arch: str, kind: str, layers: list[bytes],
               variant: str = "", tag: str | None = None) -> tuple[bytes, str]:
    """Push config + layers + a manifest (by digest, or by ``tag``); returns (manifest bytes, digest)."""
    oci = kind == OCI_MANIFEST
    config = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers",
              "diff_ids": [sha(b"diff" + layer) for layer in layers]}, "config": {"Cmd": ["true"]}}
    if variant:
        config["variant"] = variant
    config_bytes = json.dumps(config, indent=1).encode()
    for data in (config_bytes, *layers):
        client.push_blob(repo, sha(data), len(data), lambda d=data: _BytesIO(d))
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": kind,
                                "config": {"mediaType": OCI_CONFIG_TYPE if oci else DOCKER_CONFIG_TYPE,
                                           "digest": sha(config_bytes), "size": len(config_bytes)},
                                "layers": [{"mediaType": OCI_LAYER if oci else DOCKER_LAYER, "digest": sha(layer),
                                            "size": len(layer)} for layer in layers]}
    data = json.dumps(manifest, indent=3).encode() + b"\n"   # deliberately not canonical JSON
    digest = client.put_manifest(repo, tag or sha(data), data, kind)
    assert digest == sha(data)
    return data, digest


def _BytesIO(data: bytes):  # noqa: N802 - a tiny factory
    import io
    return io.BytesIO(data)


def index_of(kind: str, entries: list[tuple[bytes, str, dict[str, str]]]) -> bytes:
    child = DOCKER_MANIFEST if kind == DOCKER_MANIFEST_LIST else OCI_MANIFEST
    doc = {"schemaVersion": 2, "mediaType": kind,
           "manifests": [{"mediaType": mt or child, "digest": sha(data), "size": len(data), "platform": plat}
                         for data, mt, plat in entries]}
    return json.dumps(doc, indent=2).encode()


@pytest.fixture()
def client(registry) -> Iterator[RegistryClient]:
    with RegistryClient(registry.address, credentials=Credentials.none(), timeout=20) as c:
        yield c


# --- resolve, manifests ------------------------------------------------------------------------
def test_resolve_index_by_platform(client: RegistryClient) -> None:
    repo = "test/multi"
    shared = blob("shared", 300_000)
    amd_data, amd = push_image(client, repo, "amd64", DOCKER_MANIFEST, [shared, blob("amd", 1000)])
    arm_data, arm = push_image(client, repo, "arm64", OCI_MANIFEST, [shared, blob("arm", 2000)], variant="v8")
    index = index_of(OCI_INDEX, [(amd_data, DOCKER_MANIFEST, {"os": "linux", "architecture": "amd64"}),
                                 (arm_data, OCI_MANIFEST, {"os": "linux", "architecture": "arm64", "variant": "v8"})])
    assert client.put_manifest(repo, "1.0", index, OCI_INDEX) == sha(index)

    res = client.resolve(repo, "1.0", "linux/amd64")
    assert (res.manifest_digest, res.manifest_bytes, res.manifest_media_type) == (amd, amd_data, DOCKER_MANIFEST)
    assert res.upstream_digest == sha(index) and res.index_bytes == index and res.index_media_type == OCI_INDEX
    assert res.index_entry is not None and res.index_entry["digest"] == amd
    assert res.index_entry["platform"] == {"os": "linux", "architecture": "amd64"}
    for wanted in ("linux/arm64", "linux/arm64/v8", "linux/aarch64"):
        r = client.resolve(repo, "1.0", wanted)
        assert (r.manifest_digest, r.manifest_media_type, r.upstream_digest) == (arm, OCI_MANIFEST, sha(index))
    with pytest.raises(PlatformNotFoundError) as err:
        client.resolve(repo, "1.0", "linux/s390x")
    assert "linux/s390x" in err.value.message
    assert "it has: linux/amd64, linux/arm64/v8" in err.value.message
    assert "--platform" in err.value.hint

    # a Docker manifest list resolves the same way
    mlist = index_of(DOCKER_MANIFEST_LIST, [(amd_data, DOCKER_MANIFEST, {"os": "linux", "architecture": "amd64"})])
    client.put_manifest(repo, "list", mlist, DOCKER_MANIFEST_LIST)
    r = client.resolve(repo, "list", "linux/amd64")
    assert (r.manifest_digest, r.upstream_digest, r.index_media_type) == (amd, sha(mlist), DOCKER_MANIFEST_LIST)

    # a single-platform tag: upstream digest = manifest digest, no index entry
    client.put_manifest(repo, "amd-only", amd_data, DOCKER_MANIFEST)
    r = client.resolve(repo, "amd-only", "linux/amd64")
    assert (r.manifest_digest, r.upstream_digest, r.index_entry, r.index_bytes) == (amd, amd, None, None)

    # get_manifest: the bytes as stored (not re-serialized), the digest computed and matching the header
    m = client.get_manifest(repo, "1.0")
    assert (m.data, m.media_type, m.digest, m.served_digest) == (index, OCI_INDEX, sha(index), sha(index))
    assert client.get_manifest(repo, arm).data == arm_data
    assert client.head_manifest(repo, "1.0") == sha(index)
    assert client.head_manifest(repo, "nope") is None


def test_missing_tag_and_unreachable(client: RegistryClient, registry) -> None:
    with pytest.raises(RegistryNotFoundError) as err:
        client.get_manifest("test/none", "1.0")
    assert registry.address in err.value.message and "test/none:1.0" in err.value.message
    assert err.value.exit_code == 21 and err.value.hint
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RegistryUnreachableError) as err:
        RegistryClient(f"127.0.0.1:{port}", credentials=Credentials.none(), timeout=5).get_manifest("a/b", "1")
    assert "refused the connection" in err.value.message and err.value.exit_code == 21


def test_push_blob_chunked_mount_and_bad_bytes(client: RegistryClient, registry, tmp_path: Path) -> None:
    data = blob("chunked", 2_500_000)
    sent: list[int] = []
    assert client.push_blob("test/a", sha(data), len(data), lambda: _BytesIO(data), chunk_size=1 << 20,
                            on_bytes=sent.append) == "uploaded"
    assert sum(sent) == len(data) and len(sent) == 3
    assert client.push_blob("test/a", sha(data), len(data), lambda: _BytesIO(data)) == "exists"
    fresh = RegistryClient(registry.address, credentials=Credentials.none())
    assert fresh.push_blob("test/b", sha(data), len(data), lambda: _BytesIO(data), mount_from=["test/a"]) == "mounted"
    assert client.push_blob("test/c", sha(data), len(data), lambda: _BytesIO(data)) == "mounted"  # it remembers test/a
    assert fresh.blob_exists("test/b", sha(data)) and not fresh.blob_exists("test/d", sha(data))
    client.fetch_blob("test/b", sha(data), tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == data
    assert client.push_blob("test/a", sha(b""), 0, lambda: _BytesIO(b"")) in ("uploaded", "exists")

    other = blob("other", 1000)
    with pytest.raises(BlobDigestError):
        client.push_blob("test/e", sha(data[:1000]), 1000, lambda: _BytesIO(other))
    with pytest.raises(BlobDigestError):
        client.push_blob("test/e", sha(data[:1000]), 1000, lambda: _BytesIO(other), chunk_size=300)
    assert not client.blob_exists("test/e", sha(data[:1000]))


def test_fetch_blob_resumes_from_registry(client: RegistryClient, tmp_path: Path) -> None:
    data = blob("resume", 3_000_000)
    client.push_blob("test/r", sha(data), len(data), lambda: _BytesIO(data))
    dest = tmp_path / "blob"
    part = tmp_path / "partial" / "blob"
    part.parent.mkdir()
    part.write_bytes(data[:1_234_567])
    got: list[int] = []
    client.fetch_blob("test/r", sha(data), dest, expected_size=len(data), partial=part, on_bytes=got.append)
    assert sum(got) == len(data) - 1_234_567  # only the rest came over the wire (Distribution answers 206)
    assert dest.read_bytes() == data and not part.exists()


# --- a tiny loopback registry for the cases a real one will not produce -------------------------
class FakeRegistry:
    """Serves ``blobs`` and ``manifests`` with optional Basic or Bearer auth, Range, redirects, cut-offs."""

    def __init__(self, *, auth: str | None = None, users: dict[str, str] | None = None,
                 public: tuple[str, ...] = (), ranges: bool = True) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.auth, self.users, self.public, self.ranges = auth, users or {}, public, ranges
        self.redirect: str | None = None
        self.cut_after: int | None = None
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.tokens: dict[str, tuple[str, str | None]] = {}   # token -> (scope, user)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.handle_any(head=True)

            def do_GET(self) -> None:
                self.handle_any(head=False)

            def reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None,
                      head: bool = False, cut: int | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.close_connection = True

            def handle_any(self, head: bool) -> None:
                fake.log.append((self.command, self.path, dict(self.headers)))
                path, _, query = self.path.partition("?")
                if path == "/token":
                    return self.token(query)
                m = re.match(r"^/v2/(.+)/(manifests|blobs)/([^/]+)$", path)
                if not m:
                    return self.reply(404)
                repo, kind, ref = m.groups()
                if not self.authorized(repo):
                    return
                if kind == "manifests":
                    if (repo, ref) not in fake.manifests:
                        return self.reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
                    data, ct = fake.manifests[(repo, ref)]
                    return self.reply(200, data, {"Content-Type": ct, "Docker-Content-Digest": sha(data)}, head)
                if ref not in fake.blobs:
                    return self.reply(404)
                if fake.redirect:
                    return self.reply(307, headers={"Location": f"{fake.redirect}/storage/{ref}"}, head=head)
                data = fake.blobs[ref]
                rng = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
                if rng and fake.ranges:
                    start = int(rng.group(1))
                    return self.reply(206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
                                      head, cut=fake.cut_after)
                return self.reply(200, data, {}, head, cut=fake.cut_after)

            def authorized(self, repo: str) -> bool:
                got = self.headers.get("Authorization", "")
                if fake.auth == "basic":
                    user, _, pw = base64.b64decode(got[6:] or b"").decode().partition(":") if got.startswith("Basic ") \
                        else ("", "", "")
                    if fake.users.get(user) == pw and user:
                        return True
                    self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                               {"WWW-Authenticate": 'Basic realm="fake"'})
                    return False
                if fake.auth == "bearer":
                    tok = fake.tokens.get(got[7:]) if got.startswith("Bearer ") else None
                    if tok and f"repository:{repo}:pull" in tok[0] and (repo in fake.public or tok[1]):
                        return True
                    realm = f"http://127.0.0.1:{fake.port}/token"
                    self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {
                        "WWW-Authenticate": f'Bearer realm="{realm}",service="fake",scope="repository:{repo}:pull"'})
                    return False
                return True

            def token(self, query: str) -> None:
                from urllib.parse import parse_qs
                q = parse_qs(query)
                got = self.headers.get("Authorization", "")
                user = None
                if got.startswith("Basic "):
                    u, _, pw = base64.b64decode(got[6:]).decode().partition(":")
                    if fake.users.get(u) != pw:
                        return self.reply(401, b'{"details":"bad login"}')
                    user = u
                tok = f"t{len(fake.tokens)}"
                fake.tokens[tok] = (" ".join(q.get("scope", [])) + " service=" + "".join(q.get("service", [])), user)
                self.reply(200, json.dumps({"token": tok}).encode(), {"Content-Type": "application/json"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeRegistry":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Storage(FakeRegistry):
    """A second host that serves ``/storage/<digest>`` (where the registry redirects blob GETs)."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        super().__init__()
        self.blobs = blobs
        handler = self.server.RequestHandlerClass
        orig = handler.handle_any

        def handle_any(h: Any, head: bool) -> None:
            if h.path.startswith("/storage/"):
                self.log.append((h.command, h.path, dict(h.headers)))
                return h.reply(200, self.blobs[h.path.rsplit("/", 1)[1]], {}, head)
            return orig(h, head)

        handler.handle_any = handle_any  # type: ignore[method-assign]


def test_fetch_blob_digest_mismatch_is_refused(tmp_path: Path) -> None:
    good, evil = blob("good", 50_000), blob("evil", 50_000)
    with FakeRegistry() as fake:
        fake.blobs[sha(good)] = evil
        c = RegistryClient(fake.address, credentials=Credentials.none())
        dest = tmp_path / "x"
        with pytest.raises(BlobDigestError) as err:
            c.fetch_blob("library/mongo", sha(good), dest, expected_size=len(good))
        assert isinstance(err.value, IntegrityError)
        assert fake.address in err.value.message and "library/mongo" in err.value.message
        assert not dest.exists() and not list(tmp_path.iterdir())  # the partial file is gone
        fake.blobs[sha(good)] = good + b"extra"
        with pytest.raises(BlobDigestError):
            c.fetch_blob("library/mongo", sha(good), dest, expected_size=len(good))
        assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("ranges", [True, False])
def test_fetch_blob_resume_or_restart(tmp_path: Path, ranges: bool) -> None:
    data = blob("rr", 200_000)
    with FakeRegistry(ranges=ranges) as fake:
        fake.blobs[sha(data)] = data
        dest = tmp_path / "d"
        (tmp_path / "d.partial").write_bytes(data[:70_000])
        got: list[int] = []
        RegistryClient(fake.address, credentials=Credentials.none()).fetch_blob(
            "r/x", sha(data), dest, on_bytes=got.append)
        assert dest.read_bytes() == data
        assert fake.log[-1][2].get("Range") == "bytes=70000-"
        assert sum(got) == (len(data) - 70_000 if ranges else len(data))


@pytest.mark.parametrize("kept", [70_000, 200_000])
def test_a_bad_kept_partial_is_fetched_again_from_byte_0(tmp_path: Path, kept: int) -> None:
    """The build's blob store writes without fsync (durable=False): after a crash a kept partial file may
    hold zeros. Its bytes then miss the digest, and the download starts over once instead of failing."""
    data = blob("crash", 200_000)
    with FakeRegistry() as fake:
        fake.blobs[sha(data)] = data
        dest = tmp_path / "d"
        (tmp_path / "d.partial").write_bytes(b"\0" * kept)
        RegistryClient(fake.address, credentials=Credentials.none()).fetch_blob(
            "r/x", sha(data), dest, expected_size=len(data), durable=False)
        assert dest.read_bytes() == data and not (tmp_path / "d.partial").exists()
        ranges = [h.get("Range") for _, _, h in fake.log]
        assert ranges == (["bytes=70000-", None] if kept < len(data) else [None])  # a full-size one: no resume


def test_interrupted_download_keeps_partial_and_resumes(tmp_path: Path) -> None:
    data = blob("cut", 300_000)
    with FakeRegistry() as fake:
        fake.blobs[sha(data)] = data
        fake.cut_after = 100_000
        c = RegistryClient(fake.address, credentials=Credentials.none())
        dest = tmp_path / "d"
        with pytest.raises(RegistryUnreachableError) as err:
            c.fetch_blob("r/x", sha(data), dest, retries=0)
        assert "partial download is kept" in err.value.message and "resumes" in err.value.hint
        assert (tmp_path / "d.partial").stat().st_size == 100_000
        c.fetch_blob("r/x", sha(data), dest, retries=5)   # each attempt gets 100 kB further
        assert dest.read_bytes() == data
        assert [h.get("Range") for _, _, h in fake.log] == [None, "bytes=100000-", "bytes=200000-"]


def test_redirect_drops_authorization(tmp_path: Path) -> None:
    data = blob("redir", 10_000)
    with FakeRegistry(auth="basic", users={"u": "pw"}) as fake, Storage({sha(data): data}) as storage:
        fake.blobs[sha(data)] = data
        fake.redirect = f"http://{storage.address}"
        c = RegistryClient(fake.address, credentials=Credentials.static({fake.address: ("u", "pw")}))
        c.fetch_blob("r/x", sha(data), tmp_path / "b")
        assert (tmp_path / "b").read_bytes() == data
        assert fake.log[-1][2].get("Authorization", "").startswith("Basic ")
        assert storage.log and "Authorization" not in storage.log[-1][2]


def test_basic_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = b'{"schemaVersion": 2}'
    with FakeRegistry(auth="basic", users={"alice": "s3cret"}) as fake:
        fake.manifests[("r/x", "1")] = (manifest, OCI_MANIFEST)
        with pytest.raises(RegistryAuthError) as err:
            RegistryClient(fake.address, credentials=Credentials.none()).get_manifest("r/x", "1")
        assert fake.address in err.value.message and f"docker login {fake.address}" in err.value.hint
        config = tmp_path / "cfg"
        config.mkdir()
        (config / "config.json").write_text(json.dumps(
            {"auths": {fake.address: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(config))
        assert RegistryClient(fake.address).get_manifest("r/x", "1").data == manifest
        (config / "config.json").write_text(json.dumps(
            {"auths": {f"https://{fake.address}": {"auth": base64.b64encode(b"alice:wrong").decode()}}}))
        with pytest.raises(RegistryAuthError) as err:
            RegistryClient(fake.address).get_manifest("r/x", "1")
        assert "refused" in err.value.message and "docker login" in err.value.hint


def test_bearer_token_flow(tmp_path: Path) -> None:
    manifest = b'{"schemaVersion": 2, "config": {}, "layers": []}'
    with FakeRegistry(auth="bearer", users={"bob": "pw"}, public=("library/pub",)) as fake:
        fake.manifests[("library/pub", "1")] = (manifest, DOCKER_MANIFEST)
        fake.manifests[("team/private", "1")] = (manifest, DOCKER_MANIFEST)
        anon = RegistryClient(fake.address, credentials=Credentials.none())
        assert anon.get_manifest("library/pub", "1").data == manifest
        assert anon.get_manifest("library/pub", "1").data == manifest   # token reused
        token_calls = [p for _, p, _ in fake.log if p.startswith("/token")]
        assert len(token_calls) == 1 and "scope=repository%3Alibrary%2Fpub%3Apull" in token_calls[0]
        assert "service=fake" in token_calls[0]
        with pytest.raises(RegistryAuthError) as err:
            anon.get_manifest("team/private", "1")
        assert "anonymous" in err.value.message and f"docker login {fake.address}" in err.value.hint
        bob = RegistryClient(fake.address, credentials=Credentials.static({fake.address: ("bob", "pw")}))
        assert bob.get_manifest("team/private", "1").data == manifest
        last_token_call = [h for _, p, h in fake.log if p.startswith("/token")][-1]
        assert last_token_call["Authorization"] == "Basic " + base64.b64encode(b"bob:pw").decode()
        assert fake.log[-1][2]["Authorization"].startswith("Bearer ")   # the registry only ever sees the token
        eve = RegistryClient(fake.address, credentials=Credentials.static({fake.address: ("bob", "nope")}))
        with pytest.raises(RegistryAuthError) as err:
            eve.get_manifest("team/private", "1")
        assert "token service" in err.value.message and "refused the login" in err.value.message


def test_schema1_is_refused_clearly() -> None:
    with FakeRegistry() as fake:
        fake.manifests[("old/img", "1")] = (b'{"schemaVersion": 1, "fsLayers": []}',
                                            "application/vnd.docker.distribution.manifest.v1+prettyjws")
        with pytest.raises(UnsupportedManifestError) as err:
            RegistryClient(fake.address, credentials=Credentials.none()).resolve("old/img", "1", "linux/amd64")
        assert "schema 1" in err.value.message and err.value.exit_code == 21


# --- credentials from the Docker config file ----------------------------------------------------
def _helper(bin_dir: Path, name: str, servers: dict[str, tuple[str, str]], log: Path) -> None:
    script = bin_dir / f"docker-credential-{name}"
    table = json.dumps({k: {"ServerURL": k, "Username": u, "Secret": s} for k, (u, s) in servers.items()})
    script.write_text("#!/usr/bin/env python3\n"
                      "import json, sys\n"
                      f"assert sys.argv[1:] == ['get']\n"
                      "server = sys.stdin.read().strip()\n"
                      f"open({str(log)!r}, 'a').write('{name} ' + server + '\\n')\n"
                      f"table = json.loads({table!r})\n"
                      "if server in table:\n    print(json.dumps(table[server]))\n"
                      "else:\n    print('credentials not found in native keychain'); sys.exit(1)\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_creds_store_and_cred_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "helper.log"
    _helper(bin_dir, "test", {"127.0.0.1:5000": ("store-user", "p1"),
                              "https://index.docker.io/v1/": ("hub-user", "p2")}, log)
    _helper(bin_dir, "other", {"quay.io": ("quay-user", "p3")}, log)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credsStore": "test", "credHelpers": {"quay.io": "other"},
                               "auths": {"ghcr.io": {"auth": base64.b64encode(b"gh:p4").decode()}}}))
    creds = Credentials.from_docker_config(cfg)
    assert (creds.lookup("127.0.0.1:5000").username, creds.lookup("127.0.0.1:5000").secret) == ("store-user", "p1")
    assert creds.lookup("docker.io").username == "hub-user"
    assert creds.lookup("registry-1.docker.io").username == "hub-user"
    assert creds.lookup("quay.io").username == "quay-user"
    assert creds.lookup("ghcr.io").secret == "p4"          # not in the store: falls back to auths
    assert creds.lookup("example.org") is None
    lines = log.read_text().splitlines()
    assert "test 127.0.0.1:5000" in lines and "test https://index.docker.io/v1/" in lines and "other quay.io" in lines
    assert not any(line.startswith("test quay.io") for line in lines)   # credHelpers wins for quay.io
    assert "p1" not in repr(creds.lookup("127.0.0.1:5000"))

    cfg.write_text(json.dumps({"credsStore": "absent"}))
    with pytest.raises(CredentialsError) as err:
        Credentials.from_docker_config(cfg).lookup("quay.io")
    assert "docker-credential-absent" in err.value.message
    cfg.write_text("{not json")
    with pytest.raises(CredentialsError):
        Credentials.from_docker_config(cfg).lookup("quay.io")
    assert Credentials.from_docker_config(tmp_path / "missing.json").lookup("quay.io") is None


# --- pure parts ------------------------------------------------------------------------------
def test_platforms_and_challenges() -> None:
    assert Platform.parse("linux/arm64") == Platform.parse("linux/arm64/v8") == Platform.of("linux", "aarch64")
    assert Platform.parse("linux/amd64") == Platform.of("linux", "amd64", "v1")
    assert Platform.parse("linux/arm") == Platform.parse("linux/arm/v7") != Platform.parse("linux/arm/v6")
    with pytest.raises(RegistryError):
        Platform.parse("linux")
    entries = [{"digest": "a", "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
               {"digest": "b", "platform": {"os": "linux", "architecture": "arm64"}},
               {"digest": "c", "platform": {"os": "unknown", "architecture": "unknown"}},
               {"digest": "d", "platform": {"os": "linux", "architecture": "amd64"}}]
    assert select_platform(entries, "linux/arm64/v8")["digest"] == "b"
    assert select_platform(entries, "linux/arm/v7") is None
    assert index_platforms(entries) == ["linux/arm/v6", "linux/arm64/v8", "linux/amd64"]
    ch = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                         'scope="repository:library/mongo:pull"')
    assert ch is not None and ch.scheme == "bearer" and ch.params["realm"] == "https://auth.docker.io/token"
    assert ch.params["scope"] == "repository:library/mongo:pull"
    assert parse_challenge('Basic realm="x"').scheme == "basic" and parse_challenge("Negotiate") is None


def test_manifest_and_config_checks() -> None:
    cfg = {"mediaType": DOCKER_CONFIG_TYPE, "digest": sha(b"c"), "size": 1}
    layer = {"mediaType": DOCKER_LAYER, "digest": sha(b"l"), "size": 1}
    good = json.dumps({"schemaVersion": 2, "config": cfg, "layers": [layer]}).encode()
    m = parse_manifest(good, DOCKER_MANIFEST, "x:1")
    assert m.config.digest == sha(b"c") and [d.digest for d in m.layers] == [sha(b"l")]
    foreign = dict(layer, mediaType="application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                   urls=["https://go.microsoft.com/x"])
    with pytest.raises(UnsupportedManifestError, match="foreign"):
        parse_manifest(json.dumps({"schemaVersion": 2, "config": cfg, "layers": [foreign]}).encode(),
                       DOCKER_MANIFEST, "win:1")
    with pytest.raises(UnsupportedManifestError, match="not a container image"):
        parse_manifest(json.dumps({"schemaVersion": 2, "config": dict(cfg, mediaType="application/vnd.cncf.helm.config"),
                                   "layers": []}).encode(), OCI_MANIFEST, "chart:1")
    conf = parse_config(json.dumps({"os": "linux", "architecture": "amd64",
                                    "rootfs": {"type": "layers", "diff_ids": [sha(b"1"), sha(b"2")]}}).encode(), "x:1")
    with pytest.raises(RegistryError, match="1 layers but its config 2 diff_ids"):
        check_image("x:1", m, conf, "linux/amd64")
    conf1 = parse_config(json.dumps({"os": "linux", "architecture": "amd64",
                                     "rootfs": {"type": "layers", "diff_ids": [sha(b"1")]}}).encode(), "x:1")
    check_image("x:1", m, conf1, "linux/amd64")
    with pytest.raises(RegistryError, match="is for linux/amd64, not linux/arm64"):
        check_image("x:1", m, conf1, "linux/arm64")


# --- the download stage ----------------------------------------------------------------------
def test_fetch_images_dedups_and_reruns_nothing(client: RegistryClient, registry, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")   # no engine anywhere
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    base, mid = blob("base", 400_000), blob("mid", 150_000)
    amd_data, amd = push_image(client, "library/mongo", "amd64", OCI_MANIFEST, [base, mid, blob("m1", 5000)])
    arm_data, _ = push_image(client, "library/mongo", "arm64", OCI_MANIFEST, [base, blob("m2", 5000)], variant="v8")
    index = index_of(OCI_INDEX, [(arm_data, OCI_MANIFEST, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
                                 (amd_data, OCI_MANIFEST, {"os": "linux", "architecture": "amd64"})])
    client.put_manifest("library/mongo", "8.0", index, OCI_INDEX)
    push_image(client, "library/redis", "amd64", DOCKER_MANIFEST, [base, blob("r1", 7000)], tag="7.4")
    push_image(client, "sharelatex/sharelatex", "amd64", DOCKER_MANIFEST, [base, mid, blob("s1", 9000)], tag="5.5.8")

    calls: Counter[str] = Counter()
    orig = RegistryClient.fetch_blob

    def counting(self: RegistryClient, repo: str, digest: str, *a: Any, **kw: Any) -> Path:
        calls[digest] += 1
        return orig(self, repo, digest, *a, **kw)

    monkeypatch.setattr(RegistryClient, "fetch_blob", counting)
    store = BlobStore(tmp_path / "store")
    mirrors = Mirrors.parse([f"docker.io={registry.address}"])
    refs = ["mongo:8.0", "redis:7.4", "sharelatex/sharelatex:5.5.8", "docker.io/library/mongo:8.0"]
    got: list[int] = []
    lock = threading.Lock()

    def on_bytes(n: int) -> None:
        with lock:
            got.append(n)

    lines: list[str] = []
    images = fetch_images(refs, mirrors, "linux/amd64", store, workers=3, on_bytes=on_bytes, log=lines.append)
    assert [i.ref for i in images] == ["mongo:8.0", "redis:7.4", "sharelatex/sharelatex:5.5.8"]
    mongo = images[0]
    assert mongo.pulled_from == f"{registry.address}/library/mongo:8.0" and mongo.registry == registry.address
    assert (mongo.manifest_digest, mongo.upstream_digest, mongo.upstream_media_type) == (amd, sha(index), OCI_INDEX)
    assert mongo.index_entry is not None and mongo.index_entry["platform"]["architecture"] == "amd64"
    assert mongo.platform == "linux/amd64" and len(mongo.diff_ids) == len(mongo.layers) == 3
    assert [layer.digest for layer in mongo.layers] == [sha(base), sha(mid), sha(blob("m1", 5000))]
    assert images[1].upstream_digest == images[1].manifest_digest and images[1].index_entry is None
    assert len(lines) == 3

    unique_layers = {layer.digest: layer.size for i in images for layer in i.layers}
    assert all(n == 1 for n in calls.values()) and set(calls) == set(unique_layers) | {i.config_digest for i in images}
    assert sum(got) == sum(unique_layers.values()) + sum(i.config.size for i in images)
    for i in images:
        assert store.read_bytes(i.manifest_digest) and json.loads(store.read_bytes(i.config_digest))
        for layer in i.layers:
            assert sha(store.path(layer.digest).read_bytes()) == layer.digest
    assert store.read_bytes(sha(index)) == index
    assert not any(p.is_file() for p in (store.root / "partial").rglob("*"))
    assert [FetchedImage.from_dict(json.loads(json.dumps(i.to_dict()))) for i in images] == images

    calls.clear()
    got.clear()
    again = fetch_images(refs, mirrors, "linux/amd64", store, workers=3, on_bytes=on_bytes)
    assert again == images and sum(got) == 0 and not calls

    # the other platform from the same index, and clear errors
    arm_images = fetch_images(["mongo:8.0"], mirrors, "linux/arm64", store)
    assert arm_images[0].platform == "linux/arm64/v8" and arm_images[0].upstream_digest == sha(index)
    with pytest.raises(RegistryError) as err:
        fetch_images(["redis:7.4"], mirrors, "linux/arm64", store, needed_by=lambda ref: "2")
    assert "is for linux/amd64, not linux/arm64" in err.value.message and "redis:7.4" in err.value.message
    with pytest.raises(RegistryNotFoundError) as err:
        fetch_images(["mongo:6.0"], mirrors, "linux/amd64", store, needed_by=lambda ref: "1, 2")
    assert "mongo:6.0" in err.value.message and "plan step(s) 1, 2" in err.value.message


def test_fetch_images_layer_digest_mismatch_names_image(tmp_path: Path) -> None:
    layer, evil = blob("layer", 20_000), blob("evil", 20_000)
    config = json.dumps({"os": "linux", "architecture": "amd64",
                         "rootfs": {"type": "layers", "diff_ids": [sha(b"d")]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                           "config": {"mediaType": DOCKER_CONFIG_TYPE, "digest": sha(config), "size": len(config)},
                           "layers": [{"mediaType": DOCKER_LAYER, "digest": sha(layer), "size": len(layer)}]}).encode()
    with FakeRegistry() as fake:
        fake.manifests[("library/mongo", "8.0")] = (manifest, DOCKER_MANIFEST)
        fake.blobs[sha(config)] = config
        fake.blobs[sha(layer)] = evil
        store = BlobStore(tmp_path / "store")
        with pytest.raises(BlobDigestError) as err:
            fetch_images(["mongo:8.0"], Mirrors.parse([f"docker.io={fake.address}"]), "linux/amd64", store)
        assert "mongo:8.0" in err.value.message and fake.address in err.value.message
        assert not store.has(sha(layer)) and store.has(sha(config))
