"""Loopback servers that play a compromised or broken registry, and the foreign host it points at.

:class:`HostileRegistry` speaks enough of the Registry HTTP API v2 for the client
(``/v2/``, tokens, blobs and uploads, manifests, ``tags/list``, ``_catalog``); a test then
bends one answer: an upload ``Location`` or a token realm on another host, a plain-HTTP
address from an HTTPS registry, a ``Link`` to ``file:///``, a body that never ends, a
response dripped one byte at a time, no ``Docker-Content-Digest``, malformed JSON.
:class:`Recorder` is the foreign host: it logs every request (with its headers) and
answers each the same way. Both run ``ThreadingHTTPServer`` in a daemon thread, over
TLS when given :func:`make_tls` files (the client then trusts them via ``REQUESTS_CA_BUNDLE``).

    with Recorder() as evil, HostileRegistry(users={"u": "pw"}) as reg:
        reg.upload_location = f"http://localhost:{evil.port}/steal"
        ...
        assert not any("Authorization" in h for _, _, h in evil.log)
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable


def sha(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""

    cert: Path
    key: Path


def make_tls(folder: Path) -> TlsFiles:
    """Write a fresh self-signed certificate (CA and server at once) for 127.0.0.1/localhost into ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile-registry")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / "cert.pem", folder / "key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.owner.dispatch(self)   # type: ignore[attr-defined]

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class LoopbackServer:
    """A threaded HTTP(S) server on 127.0.0.1 that logs ``(method, path, headers)`` of every request."""

    def __init__(self, tls: TlsFiles | None = None) -> None:
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.owner = self          # type: ignore[attr-defined]
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls.cert, tls.key)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"{self.scheme}://{self.address}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def dispatch(self, h: _Handler) -> None:
        self.log.append((h.command, h.path, dict(h.headers)))
        self.handle(h)

    def handle(self, h: _Handler) -> None:
        """Answer one request (subclasses)."""
        h.reply(404)

    def saw_authorization(self) -> bool:
        """True when any request that reached this server carried an ``Authorization`` header."""
        return any(k.lower() == "authorization" for _, _, hdrs in self.log for k in hdrs)


class Recorder(LoopbackServer):
    """The foreign host: answers every request with ``status`` and ``body`` (JSON when a dict)."""

    def __init__(self, status: int = 201, body: Any = b"", tls: TlsFiles | None = None) -> None:
        super().__init__(tls)
        self.status = status
        self.body = json.dumps(body).encode() if isinstance(body, (dict, list)) else body

    def handle(self, h: _Handler) -> None:
        h.body()
        h.reply(self.status, self.body, {"Content-Type": "application/json"})


class HostileRegistry(LoopbackServer):
    """A registry stand-in whose answers a test can bend (attributes below, set before or between requests).

    auth: ``None``, ``"basic"`` (``users``) or ``"bearer"`` (``realm``, default its own ``/token``;
    any bearer token is accepted). ``upload_location`` replaces the ``Location`` of a started upload;
    ``send_digest`` False drops ``Docker-Content-Digest``; ``manifest_get_status`` answers manifest
    GETs with that status instead; ``tags``/``page_size``/``link`` drive ``tags/list`` (``link``
    replaces the next-page ``Link``); ``raw[path]`` serves ``(status, headers, body)`` for that path;
    ``endless`` paths stream ``[`` until the client hangs up; ``drip`` paths send the whole answer
    one byte every ``drip_interval`` seconds (with ``drip_body[path]``: the headers at once, then
    that body byte by byte).
    """

    def __init__(self, *, auth: str | None = None, users: dict[str, str] | None = None,
                 tls: TlsFiles | None = None) -> None:
        super().__init__(tls)
        self.auth = auth if auth is not None else ("basic" if users else None)
        self.users = users or {}
        self.realm: str | None = None
        self.upload_location: str | None = None
        self.send_digest = True
        self.manifest_get_status: int | None = None
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.tags: list[Any] = []
        self.page_size = 1000
        self.link: str | None = None
        self.repositories: list[Any] = []
        self.raw: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.endless: set[str] = set()
        self.drip: set[str] = set()
        self.drip_interval = 5.0
        self.drip_body: dict[str, bytes] = {}
        self.on_request: Callable[[_Handler], bool] | None = None
        self._uploads: dict[str, bytearray] = {}

    # -- auth --
    def _authorized(self, h: _Handler) -> bool:
        got = h.headers.get("Authorization", "")
        if self.auth == "basic":
            if got.startswith("Basic "):
                user, _, pw = base64.b64decode(got[6:]).decode().partition(":")
                if user and self.users.get(user) == pw:
                    return True
            h.reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                    {"WWW-Authenticate": 'Basic realm="hostile"'})
            return False
        if self.auth == "bearer":
            if got.startswith("Bearer ") and len(got) > 7:
                return True
            realm = self.realm or f"{self.url}/token"
            h.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                    {"WWW-Authenticate": f'Bearer realm="{realm}",service="hostile"'})
            return False
        return True

    # -- the API --
    def handle(self, h: _Handler) -> None:
        if self.on_request is not None and self.on_request(h):
            return
        path, _, query = h.path.partition("?")
        if path in self.drip:
            return self._drip(h, path)
        if path in self.endless:
            return self._endless(h)
        if path == "/token":
            return h.reply(200, json.dumps({"token": "registry-token"}).encode(), {"Content-Type": "application/json"})
        if not self._authorized(h):
            return
        if path in self.raw:
            status, headers, body = self.raw[path]
            return h.reply(status, body, headers)
        if path == "/v2/":
            return h.reply(200, b"{}", {"Content-Type": "application/json"})
        if path == "/v2/_catalog":
            return h.reply(200, json.dumps({"repositories": self.repositories}).encode())
        m = re.match(r"^/v2/(.+)/(tags/list|manifests/[^/]+|blobs/uploads/?[^/]*|blobs/[^/]+)$", path)
        if not m:
            return h.reply(404)
        repo, rest = m.groups()
        if rest == "tags/list":
            return self._tags(h, repo, query)
        if rest.startswith("manifests/"):
            return self._manifest(h, repo, rest.split("/", 1)[1])
        if rest.startswith("blobs/uploads"):
            return self._upload(h, repo, rest, query)
        digest = rest.split("/", 1)[1]
        if digest not in self.blobs:
            return h.reply(404)
        return h.reply(200, self.blobs[digest], {"Docker-Content-Digest": digest} if self.send_digest else {})

    def _tags(self, h: _Handler, repo: str, query: str) -> None:
        last = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("last")
        start = self.tags.index(last) + 1 if last in self.tags else 0
        page = self.tags[start:start + self.page_size]
        headers = {"Content-Type": "application/json"}
        if self.link is not None:
            headers["Link"] = self.link
        elif start + self.page_size < len(self.tags):
            headers["Link"] = f'</v2/{repo}/tags/list?n={self.page_size}&last={page[-1]}>; rel="next"'
        h.reply(200, json.dumps({"name": repo, "tags": page}).encode(), headers)

    def _manifest(self, h: _Handler, repo: str, ref: str) -> None:
        if h.command == "PUT":
            data = h.body()
            ctype = h.headers.get("Content-Type", "")
            self.manifests[(repo, ref)] = self.manifests[(repo, sha(data))] = (data, ctype)
            return h.reply(201, b"", {"Docker-Content-Digest": sha(data)} if self.send_digest else {})
        if self.manifest_get_status is not None and h.command == "GET":
            return h.reply(self.manifest_get_status, b'{"errors":[{"code":"DENIED","message":"no reads"}]}')
        if (repo, ref) not in self.manifests:
            return h.reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
        data, ctype = self.manifests[(repo, ref)]
        headers = {"Content-Type": ctype}
        if self.send_digest:
            headers["Docker-Content-Digest"] = sha(data)
        h.reply(200, data, headers)

    def _upload(self, h: _Handler, repo: str, rest: str, query: str) -> None:
        if h.command == "POST":
            h.body()
            uid = uuid.uuid4().hex
            self._uploads[uid] = bytearray()
            location = self.upload_location or f"/v2/{repo}/blobs/uploads/{uid}"
            return h.reply(202, b"", {"Location": location})
        uid = rest.rsplit("/", 1)[-1]
        if h.command in ("PATCH", "PUT") and uid in self._uploads:
            self._uploads[uid] += h.body()
            if h.command == "PATCH":
                return h.reply(202, b"", {"Location": f"/v2/{repo}/blobs/uploads/{uid}"})
            digest = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("digest", "").replace("%3A", ":")
            self.blobs[digest] = bytes(self._uploads.pop(uid))
            return h.reply(201, b"", {"Docker-Content-Digest": digest} if self.send_digest else {})
        h.reply(404)

    # -- slow and endless answers --
    def _endless(self, h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.end_headers()
        chunk = b"[" * 65536
        try:
            for _ in range(1 << 16):          # 4 GiB at most, far more than any cap
                h.wfile.write(chunk)
        except OSError:
            pass
        h.close_connection = True

    def _drip(self, h: _Handler, path: str) -> None:
        body = self.drip_body.get(path, b"{}")
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        answer = head + body
        start = len(head) if path in self.drip_body else 0
        try:
            h.wfile.write(answer[:start])
            h.wfile.flush()
            for i in range(start, len(answer)):
                h.wfile.write(answer[i:i + 1])
                h.wfile.flush()
                time.sleep(self.drip_interval)
        except OSError:
            pass
        h.close_connection = True


class StrippingProxy(LoopbackServer):
    """A loopback reverse proxy in front of a real registry that drops ``strip`` headers from every answer.

    With ``fail_manifest_get`` it answers manifest GETs 403 itself (a push-only account, say),
    so a client cannot read a manifest back either. Host headers pass through unchanged, so
    the registry's upload ``Location`` names the proxy.
    """

    HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}

    def __init__(self, upstream: str, strip: tuple[str, ...] = ("Docker-Content-Digest",)) -> None:
        super().__init__()
        self.upstream = upstream.split("://", 1)[-1]
        self.strip = {h.lower() for h in strip}
        self.fail_manifest_get = False

    def handle(self, h: _Handler) -> None:
        import http.client

        body = h.body()
        if self.fail_manifest_get and h.command == "GET" and "/manifests/" in h.path:
            return h.reply(403, b'{"errors":[{"code":"DENIED","message":"push only"}]}')
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in self.HOP}
            if body or h.command in ("PUT", "POST", "PATCH"):
                headers["Content-Length"] = str(len(body))
            conn.request(h.command, h.path, body=body or None, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
            kept = {k: v for k, v in answer.getheaders() if k.lower() not in self.HOP | self.strip}
        finally:
            conn.close()
        h.send_response(answer.status)
        for k, v in kept.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
