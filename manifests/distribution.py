"""A small, engine-free client for the Registry HTTP API v2 (OCI distribution).

Both sides use it: the online build downloads images byte for byte (manifests,
configs, layers exactly as the registry serves them, each checked against its
digest while it streams), and the offline ``push`` uploads them again so that the
internal registry's manifest digest equals the upstream one. No Docker engine is
involved anywhere: ``DOCKER_HOST`` does not matter.

    client = RegistryClient("docker.io")                 # talks to registry-1.docker.io
    res = client.resolve("library/mongo", "8.0", "linux/amd64")
    res.upstream_digest                                  # what the tag served (the index)
    res.manifest_digest                                  # the linux/amd64 image manifest
    client.fetch_blob("library/mongo", layer_digest, Path("blob"), expected_size=n)

    target = RegistryClient("127.0.0.1:5000")            # loopback: plain HTTP
    target.push_blob("library/mongo", digest, size, lambda: open(path, "rb"))
    target.put_manifest("library/mongo", "8.0", res.manifest_bytes, res.manifest_media_type)

Authentication follows what ``docker pull`` does: the anonymous bearer-token flow
(Docker Hub, quay.io), Basic auth, and bearer tokens obtained with the credentials
of ``docker login`` (the Docker config file: ``auths``, ``credsStore``,
``credHelpers``). A registry is trusted with nothing beyond its own origin: a login
or token goes only to its scheme, host and port (an upload ``Location``, a cancel, a
redirect or a token realm elsewhere gets none, Docker Hub's ``auth.docker.io`` excepted),
an HTTPS registry cannot downgrade any address to plain HTTP, every answer is read
within a cap of :data:`manifests.limits.LIMITS`, each request has an overall deadline
(a drip fails; blobs get ``size / min_rate`` more), and a blob is fetched only onto a
disk with room for it. Every expected failure raises a :class:`RegistryError` subclass
(or :class:`BlobDigestError` for bytes that do not match their digest) whose message
names the registry and whose hint says what to do (the classes live in
:mod:`manifests.errors`; they are importable from here too).
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import requests
import requests.adapters
import requests.auth
import urllib3.connection
import urllib3.connectionpool
import urllib3.poolmanager

from .atomic import fsync_dir
from .errors import (BlobDigestError, CredentialsError, DiskSpaceError, PlatformNotFoundError, RegistryAuthError,
                     RegistryError, RegistryNotFoundError, RegistryRateLimitError, RegistryUnreachableError,
                     UnsupportedManifestError)
from .imageref import DOCKER_HUB, HUB_ALIASES as _HUB_ALIASES
from .limits import LIMITS
from .units import human_size

USER_AGENT = "overleaf-airgap (registry client)"
DEFAULT_TIMEOUT = 60.0          # seconds without data before a request fails
DEFAULT_DEADLINE = 300.0        # seconds one request may take in all (headers and body), however it drips
MIN_RATE = 32 * 1024            # bytes/s a blob transfer is given on top of the deadline (1 GB: about 9 hours)
CHUNK = 1 << 20                 # streaming buffer
MANIFEST_LIMIT = LIMITS.image_manifest  # containerd refuses manifests above 4 MiB too

# --- media types ----------------------------------------------------------------------------
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
IMAGE_MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
ALL_MANIFEST_TYPES = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX)
# an index entry as the bundle keeps it: the OCI 1.1 descriptor fields (artifactType included) and platform
DESCRIPTOR_FIELDS = ("mediaType", "digest", "size", "platform", "annotations", "artifactType")
MEDIA_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,126}/[a-z0-9][a-z0-9.+_-]{0,126}\Z")   # as manifests/bundle.py

DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"   # where `docker login` keeps Hub credentials
_REALM_HOSTS = {DOCKER_HUB: ("auth.docker.io",)}     # token services on another host trusted with the login

_DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
_HOST_RE = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::[0-9]{1,5})?\Z")


# --- digests --------------------------------------------------------------------------------
def check_digest(digest: str) -> str:
    """``digest`` if it is a well-formed ``sha256:``/``sha512:`` digest, else RegistryError."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise RegistryError(f"{digest!r} is not a valid content digest (sha256:<64 hex>)")
    return digest


def _hasher(digest: str) -> "hashlib._Hash":
    return hashlib.new(digest.split(":", 1)[0])


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


# --- platforms ------------------------------------------------------------------------------
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "armel": "arm",
                 "i386": "386", "i686": "386"}


@dataclass(frozen=True)
class Platform:
    """``os/arch[/variant]``, normalized the way containerd matches platforms.

    ``arm64`` without variant means ``v8``, ``arm`` without variant ``v7``; ``amd64/v1`` is plain ``amd64``.
    """

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: "str | Platform") -> "Platform":
        if isinstance(text, Platform):
            return text
        parts = str(text).strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise RegistryError(f"{text!r} is not a platform OS/ARCH[/VARIANT]", "For example linux/amd64 or linux/arm64.")
        return cls.of(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def of(cls, os_: str | None, arch: str | None, variant: str | None = None) -> "Platform":
        o, a, v = (os_ or "").lower(), (arch or "").lower(), (variant or "").lower()
        a = _ARCH_ALIASES.get(a, a)
        if a == "arm64" and v in ("", "8", "v8"):
            v = "v8"
        elif a == "arm":
            v = {"": "v7", "7": "v7", "6": "v6", "5": "v5", "8": "v8"}.get(v, v)
        elif a == "amd64" and v == "v1":
            v = ""
        return cls(o, a, v)

    @classmethod
    def from_descriptor(cls, desc: Mapping[str, Any]) -> "Platform | None":
        p = desc.get("platform")
        if not isinstance(p, Mapping) or not p.get("os") or not p.get("architecture"):
            return None
        return cls.of(str(p["os"]), str(p["architecture"]), str(p.get("variant") or ""))

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def select_platform(entries: Sequence[Mapping[str, Any]], wanted: "str | Platform") -> Mapping[str, Any] | None:
    """The first index entry for ``wanted`` (index order, like Docker), or None."""
    want = Platform.parse(wanted)
    for entry in entries:
        if Platform.from_descriptor(entry) == want:
            return entry
    return None


def index_platforms(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The platforms an index offers, without attestation entries (``unknown/unknown``)."""
    seen: list[str] = []
    for entry in entries:
        p = Platform.from_descriptor(entry)
        if p is not None and p.os != "unknown" and str(p) not in seen:
            seen.append(str(p))
    return seen


def parse_registry_json(data: bytes, what: str, host: str) -> Any:
    """``data`` parsed as JSON; :class:`RegistryError` (exit 21) quoting it when it is not (or nests too deep)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise RegistryError(f"the registry {host} sent {what} that is not valid JSON: {excerpt(data)}",
                            "The registry (or a proxy in between) is broken; try again, or use another mirror.") from None


def manifest_kind(data: bytes, header_type: str | None) -> str:
    """The media type of a manifest: the Content-Type when it is a manifest type, else from the JSON."""
    ct = (header_type or "").split(";", 1)[0].strip().lower()
    if ct in ALL_MANIFEST_TYPES or ct in DOCKER_SCHEMA1:
        return ct
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return ct or "unknown"
    if not isinstance(doc, dict):
        return ct or "unknown"
    if isinstance(doc.get("mediaType"), str) and doc["mediaType"]:
        return doc["mediaType"]
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[0]
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    return ct or "unknown"


# --- credentials ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Credential:
    """A login for one registry. ``identity_token`` is an OAuth2 refresh token (username ``<token>``)."""

    username: str
    secret: str
    identity_token: bool = False

    def __repr__(self) -> str:  # never print the secret
        return f"Credential(username={self.username!r}, secret=***)"


def _auth_keys(host: str) -> list[str]:
    """The keys under which `docker login` may have stored credentials for ``host``."""
    if host in _HUB_ALIASES:
        return [DOCKER_HUB_AUTH_KEY, "index.docker.io", "docker.io", "registry-1.docker.io",
                "https://index.docker.io/v1", "https://registry-1.docker.io"]
    return [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]


def _key_host(key: str) -> str:
    """``https://host:5000/v1/`` -> ``host:5000``"""
    k = key.strip()
    if "://" in k:
        k = urllib.parse.urlsplit(k).netloc
    return k.split("/", 1)[0].lower()


class Credentials:
    """Registry logins, read lazily from the Docker config file (or given directly, for tests and flags).

    ``Credentials.from_docker_config()`` reads ``$DOCKER_CONFIG/config.json`` or
    ``~/.docker/config.json``: ``credHelpers[host]`` first, then ``credsStore``, then the
    base64 ``auth`` (or ``username``/``password``, ``identitytoken``) of ``auths``, as Docker does.
    Helpers run as ``docker-credential-<name> get`` with the server on stdin.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, *, source: str = "the given credentials",
                 static: Mapping[str, tuple[str, str]] | None = None) -> None:
        self._config: Mapping[str, Any] | None = config
        self._path: Path | None = None
        self.source = source
        self._static = {_key_host(k): Credential(u, p) for k, (u, p) in (static or {}).items()}
        self._cache: dict[str, Credential | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def none(cls) -> "Credentials":
        return cls({}, source="no credentials")

    @classmethod
    def static(cls, logins: Mapping[str, tuple[str, str]]) -> "Credentials":
        """``Credentials.static({"127.0.0.1:5000": ("user", "password")})``"""
        return cls({}, source="the given credentials", static=logins)

    @staticmethod
    def default_path() -> Path:
        base = os.environ.get("DOCKER_CONFIG")
        return (Path(base) if base else Path.home() / ".docker") / "config.json"

    @classmethod
    def from_docker_config(cls, path: str | os.PathLike[str] | None = None) -> "Credentials":
        creds = cls(None, source="")
        creds._path = Path(path) if path is not None else cls.default_path()
        creds.source = str(creds._path)
        return creds

    def _load(self) -> Mapping[str, Any]:
        if self._config is None:
            path = self._path or self.default_path()
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                self._config = {}
                return self._config
            except OSError as exc:
                raise CredentialsError(f"cannot read the Docker config file {path}: {exc.strerror or exc}",
                                       "Check its permissions, or point DOCKER_CONFIG at another folder.") from exc
            try:
                doc = json.loads(text) if text.strip() else {}
            except ValueError as exc:
                raise CredentialsError(f"the Docker config file {path} is not valid JSON: {exc}",
                                       "Fix or move the file (`docker login` rewrites it).") from exc
            self._config = doc if isinstance(doc, dict) else {}
        return self._config

    def lookup(self, host: str) -> Credential | None:
        """The login for ``host`` (``docker.io``, ``quay.io``, ``127.0.0.1:5000``), or None."""
        host = host.lower()
        if host in _HUB_ALIASES:
            host = DOCKER_HUB
        with self._lock:
            if host in self._cache:
                return self._cache[host]
        found = self._lookup(host)
        with self._lock:
            self._cache[host] = found
        return found

    def _lookup(self, host: str) -> Credential | None:
        if host in self._static:
            return self._static[host]
        cfg = self._load()
        helpers = cfg.get("credHelpers") if isinstance(cfg.get("credHelpers"), dict) else {}
        keys = _auth_keys(host)
        wanted = {_key_host(k) for k in keys}
        for name, helper in helpers.items():
            if _key_host(name) in wanted and helper:
                return self._from_helper(str(helper), keys, f"credHelpers of {self.source}")
        if cfg.get("credsStore"):
            found = self._from_helper(str(cfg["credsStore"]), keys, f"credsStore of {self.source}")
            if found is not None:
                return found
        auths = cfg.get("auths") if isinstance(cfg.get("auths"), dict) else {}
        for key, entry in auths.items():
            if _key_host(key) in wanted and isinstance(entry, dict):
                cred = self._from_entry(key, entry)
                if cred is not None:
                    return cred
        return None

    def _from_entry(self, key: str, entry: Mapping[str, Any]) -> Credential | None:
        if entry.get("identitytoken"):
            return Credential(str(entry.get("username") or "<token>"), str(entry["identitytoken"]), True)
        if entry.get("auth"):
            try:
                user, sep, pw = base64.b64decode(str(entry["auth"]), validate=False).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise CredentialsError(f"the login for {key} in {self.source} is not valid base64 user:password",
                                       f"Log in again: `docker login {_key_host(key)}`.") from exc
            if not sep:
                raise CredentialsError(f"the login for {key} in {self.source} has no password",
                                       f"Log in again: `docker login {_key_host(key)}`.")
            return Credential(user, pw)
        if entry.get("username") and entry.get("password"):
            return Credential(str(entry["username"]), str(entry["password"]))
        return None

    def _from_helper(self, helper: str, keys: Sequence[str], where: str) -> Credential | None:
        program = f"docker-credential-{helper}"
        if shutil.which(program) is None:
            raise CredentialsError(f"the credential helper {program} (named in {where}) is not installed",
                                   f"Install {program}, or remove it from the Docker config file and log in again.")
        for server in keys[:2]:
            try:
                done = subprocess.run([program, "get"], input=server.encode(), capture_output=True, timeout=60,
                                      check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise CredentialsError(f"the credential helper {program} failed: {exc}",
                                       "Check the helper (it may wait for a keyring unlock).") from exc
            out = done.stdout.decode("utf-8", "replace").strip()
            if done.returncode != 0:
                if "not found" in (out + done.stderr.decode("utf-8", "replace")).lower():
                    continue
                raise CredentialsError(f"the credential helper {program} failed for {server}: "
                                       f"{(out or done.stderr.decode('utf-8', 'replace')).strip()[:300]}",
                                       "Check the helper, or log in again with `docker login`.")
            try:
                doc = json.loads(out)
                user, secret = str(doc.get("Username") or ""), str(doc.get("Secret") or "")
            except (ValueError, AttributeError) as exc:
                raise CredentialsError(f"the credential helper {program} did not answer JSON") from exc
            if not secret:
                continue
            if user == "<token>":
                return Credential(user, secret, True)
            return Credential(user, secret)
        return None


# --- results --------------------------------------------------------------------------------
class FetchedManifest(NamedTuple):
    data: bytes
    media_type: str
    digest: str                    # computed from the bytes: this is what we trust
    served_digest: str | None      # the registry's Docker-Content-Digest header, for the record


class StoredManifest(NamedTuple):
    """A manifest PUT: its digest, and how the registry confirmed it (see :meth:`RegistryClient.store_manifest`)."""

    digest: str
    confirmed_by: str              # "registry" (its Docker-Content-Digest), "read back" (a GET), "" (unconfirmed)


@dataclass(frozen=True)
class Resolved:
    """A tag resolved to one platform's image manifest."""

    manifest_bytes: bytes
    manifest_media_type: str
    manifest_digest: str
    upstream_digest: str                        # what the tag served: the index digest, or the manifest's
    index_entry: Mapping[str, Any] | None = None   # the descriptor chosen from the index
    index_bytes: bytes | None = field(default=None, repr=False)
    index_media_type: str | None = None


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.x.x.x`` and ``[::1]`` (with or without a port)."""
    h = host.lower()
    if h.startswith("["):
        h = h[1:h.find("]")] if "]" in h else h[1:]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


class _NoNetrc(requests.auth.AuthBase):
    """Stops requests from adding ~/.netrc logins: we decide which host sees which credential."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


@dataclass(frozen=True)
class _Challenge:
    scheme: str                  # "bearer" or "basic"
    params: Mapping[str, str]


def parse_challenge(header: str) -> _Challenge | None:
    """``Bearer realm="...",service="...",scope="..."`` -> _Challenge, or None."""
    m = re.match(r"\s*(\w+)\s*(.*)$", header or "", re.S)
    if not m:
        return None
    scheme = m.group(1).lower()
    if scheme not in ("bearer", "basic"):
        return None
    params = {k.lower(): (v1 if v1 or q else v2)
              for k, q, v1, v2 in re.findall(r'(\w+)\s*=\s*(?:(")((?:[^"\\]|\\.)*)"|([^,\s]*))', m.group(2))}
    return _Challenge(scheme, params)


class _Reader:
    """A sized, iterable upload body that reports progress and hashes what it sends."""

    def __init__(self, fh: IO[bytes], size: int, on_bytes: Callable[[int], None] | None, algorithm: str) -> None:
        self.fh, self.size, self.on_bytes = fh, size, on_bytes
        self.hasher = hashlib.new(algorithm)
        self.sent = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        left = self.size
        while left > 0:
            chunk = self.fh.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            self.sent += len(chunk)
            self.hasher.update(chunk)
            if self.on_bytes is not None:
                self.on_bytes(len(chunk))
            yield chunk


# --- the overall deadline of a request ------------------------------------------------------
_WATCH = threading.local()      # the running thread's current _Watch, seen by the connections it uses


class _Watch:
    """The overall deadline of one client operation: when it passes, every connection it used is shut down.

    A per-read timeout never fires for a server that drips one byte every few seconds; this
    does. The blocked read then fails, and :meth:`RegistryClient._network_error` reports the
    deadline (``fired``) instead of a dropped connection.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._expires = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._conns: list[Any] = []
        self._timer: threading.Timer | None = None
        self._arm()

    def _arm(self) -> None:
        self._timer = threading.Timer(max(0.0, self._expires - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def extend(self, seconds: float) -> None:
        """Give the operation ``seconds`` more (a blob whose size is learnt from its headers)."""
        with self._lock:
            if self.fired or seconds <= 0 or self._timer is None:
                return
            self._timer.cancel()
            self._expires += seconds
            self.seconds += seconds
            self._arm()

    def watch(self, conn: Any) -> None:
        """Shut ``conn`` down when the deadline passes (at once if it has)."""
        with self._lock:
            self._conns.append(conn)
            fired = self.fired
        if fired:
            _shut(conn)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            conns = list(self._conns)
        for conn in conns:
            _shut(conn)

    def close(self) -> None:
        """The operation is over: stop the timer and forget its connections."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            self._conns.clear()


def _shut(conn: Any) -> None:
    """Shut down a connection's socket from another thread, so that a blocked read returns."""
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)   # the plain socket call, also under TLS
    except OSError:
        return


def _watched(conn: Any) -> None:
    watch = getattr(_WATCH, "current", None)
    if watch is not None:
        watch.watch(conn)


class _Watched:
    """Mixed into a urllib3 connection: the running operation's :class:`_Watch` can shut it down."""

    def connect(self) -> None:
        _watched(self)
        super().connect()  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watched(self)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    """An HTTP connection under the operation's deadline."""


class _WatchedHTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    """An HTTPS connection under the operation's deadline."""


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections a :class:`_Watch` can shut down (direct and through HTTP proxies)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> urllib3.poolmanager.PoolManager:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if type(manager) is urllib3.poolmanager.ProxyManager:   # not SOCKS: it has connection classes of its own
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


# --- the client -----------------------------------------------------------------------------
class RegistryClient:
    """One registry (``docker.io``, ``quay.io``, ``127.0.0.1:5000``), talked to over HTTP API v2.

    HTTPS, except plain HTTP for loopback hosts (``insecure_loopback``) or when ``insecure``
    is set. Thread-safe: one client may serve several download threads.

    ``timeout`` bounds each wait for data; ``deadline`` bounds one operation in all (a
    manifest, a token, a page of tags), and a blob transfer gets ``size / min_rate`` seconds
    more. Every JSON answer is read up to a cap of :data:`manifests.limits.LIMITS`.
    """

    def __init__(self, host: str, *, insecure: bool = False, insecure_loopback: bool = True,
                 credentials: Credentials | None = None, timeout: float = DEFAULT_TIMEOUT,
                 pool_size: int = 16, deadline: float = DEFAULT_DEADLINE, min_rate: float = MIN_RATE) -> None:
        host = host.strip().rstrip("/")
        if "://" in host:
            scheme, _, host = host.partition("://")
            insecure = insecure or scheme.lower() == "http"
        if not _HOST_RE.match(host):
            raise RegistryError(f"{host!r} is not a registry host", "Give HOST[:PORT], e.g. registry.example.org:5000.")
        self.host = DOCKER_HUB if host.lower() in _HUB_ALIASES else host
        self.api_host = DOCKER_HUB_API if self.host == DOCKER_HUB else host
        self.scheme = "http" if insecure or (insecure_loopback and is_loopback(self.api_host)) else "https"
        self.base = f"{self.scheme}://{self.api_host}"
        self.origin = origin(self.base)     # the one origin that is sent credentials
        self.timeout = timeout
        self.deadline = deadline
        self.min_rate = min_rate
        self.credentials = credentials if credentials is not None else Credentials.from_docker_config()
        self._session = requests.Session()
        self._session.auth = _NoNetrc()
        adapter = _Adapter(pool_connections=4, pool_maxsize=max(4, pool_size))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = USER_AGENT
        self._lock = threading.Lock()
        self._challenge: _Challenge | None = None
        self._tokens: dict[str, str] = {}
        self._known_blobs: dict[str, str] = {}      # digest -> a repository of this registry that has it

    def __repr__(self) -> str:
        return f"RegistryClient({self.host!r}, base={self.base!r})"

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    @contextmanager
    def _deadline(self, nbytes: int = 0) -> Iterator[_Watch]:
        """The overall deadline of one operation moving ``nbytes`` of blob (an outer one, if running, is kept)."""
        outer = getattr(_WATCH, "current", None)
        if outer is not None:
            yield outer
            return
        watch = _Watch(self.deadline + max(0, nbytes) / self.min_rate)
        _WATCH.current = watch
        try:
            yield watch
        finally:
            watch.close()
            _WATCH.current = None

    def _deadline_error(self, url: str, what: str) -> RegistryUnreachableError | None:
        """The error for an operation whose deadline passed, or None while it has not."""
        watch = getattr(_WATCH, "current", None)
        if watch is None or not watch.fired:
            return None
        return RegistryUnreachableError(
            f"{_host_of(url)} did not finish {what} within {watch.seconds:g} s (the deadline of one request): it "
            "answers far too slowly, or keeps the connection open without answering",
            "Check the network, the registry and any proxy in between, then run the same command again "
            "(finished downloads are kept).")

    # -- plumbing --
    def _url(self, repo: str, kind: str, ref: str = "") -> str:
        if not repo or repo != repo.lower() or repo.startswith("/") or ".." in repo:
            raise RegistryError(f"{repo!r} is not a repository name")
        return f"{self.base}/v2/{repo}/{kind}/{ref}" if ref else f"{self.base}/v2/{repo}/{kind}/"

    def _login_hint(self) -> str:
        return (f"Log in with `docker login {self.host}` (credentials are read from {self.credentials.source}), "
                "or check the repository name and your access to it.")

    def _credential(self) -> Credential | None:
        return self.credentials.lookup(self.host)

    def _auth_header(self, scopes: Sequence[str]) -> str | None:
        ch = self._challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            cred = self._credential()
            if cred is None:
                raise RegistryAuthError(f"the registry {self.host} requires a login and none is stored",
                                        self._login_hint())
            return "Basic " + base64.b64encode(f"{cred.username}:{cred.secret}".encode()).decode()
        key = " ".join(sorted(scopes))
        with self._lock:
            cached = self._tokens.get(key)
        if cached:
            return cached
        token = "Bearer " + self._fetch_token(ch, scopes)
        with self._lock:
            self._tokens[key] = token
        return token

    def _trusts_realm(self, realm: str) -> bool:
        """True when the token service ``realm`` may see this registry's login.

        Only the registry's own origin (scheme, host and port) does, and for Docker Hub its
        token service ``https://auth.docker.io``; any other realm gets an anonymous request.
        """
        there = origin(realm)
        if there == self.origin:
            return True
        return there[0] == "https" and there[1] in _REALM_HOSTS.get(self.host, ()) and there[2] == 443

    def _fetch_token(self, ch: _Challenge, scopes: Sequence[str]) -> str:
        realm = ch.params.get("realm")
        if not realm:
            raise RegistryAuthError(f"the registry {self.host} asked for a bearer token without naming a token service")
        what = f"an access token for {self.host}"
        self._check_url(realm, what)
        trusted = self._trusts_realm(realm)
        cred = self._credential() if trusted else None
        all_scopes = list(dict.fromkeys([*scopes, *(ch.params.get("scope") or "").split()]))
        params: list[tuple[str, str]] = []
        if ch.params.get("service"):
            params.append(("service", ch.params["service"]))
        params += [("scope", s) for s in all_scopes if s]
        headers: dict[str, str] = {}
        if cred is not None and cred.identity_token:
            method, url = "POST", realm
            data: Any = urllib.parse.urlencode([*params, ("grant_type", "refresh_token"),
                                                ("refresh_token", cred.secret), ("client_id", "overleaf-airgap")])
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            method, url, data = "GET", _add_query(realm, params), None
            if cred is not None:
                headers["Authorization"] = "Basic " + base64.b64encode(
                    f"{cred.username}:{cred.secret}".encode()).decode()
        resp = self._send(method, url, headers, data, what, auth_origin=origin(realm))
        with resp:
            if resp.status_code in (401, 403):
                who = (f"the login stored for {self.host}" if cred is not None else "anonymous access"
                       if trusted else f"anonymous access (no login is sent to {_host_of(realm)}: it is not the "
                                       f"registry's own address {self.host})")
                raise RegistryAuthError(f"the token service of {self.host} ({_host_of(realm)}) refused {who} "
                                        f"(HTTP {resp.status_code}{_error_detail(resp)})", self._login_hint())
            if resp.status_code != 200:
                raise RegistryError(f"the token service of {self.host} ({realm}) answered HTTP {resp.status_code}"
                                    f"{_error_detail(resp)}", "Try again later; check the network and proxy settings.")
            body = self._read_json(resp, what, LIMITS.registry_json)
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not token or not isinstance(token, str):
            raise RegistryAuthError(f"the token service of {self.host} ({realm}) returned no token: {excerpt(body)}")
        return token

    def _check_url(self, url: str, what: str) -> None:
        """Refuse an address that is not http(s), or plain HTTP where the registry speaks HTTPS (no downgrade)."""
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise RegistryError(f"the registry {self.host} sent an address that is not http(s) for {what}: "
                                f"{url[:200]!r}; it was not opened",
                                "The registry (or a proxy in between) is misconfigured or hostile.")
        if scheme == "http" and self.scheme == "https":
            raise RegistryError(f"the registry {self.host} speaks HTTPS but sent a plain-HTTP address for {what} "
                                f"({url[:200]}): refused, a connection is never downgraded to plain HTTP",
                                "The registry (or a proxy in between) is misconfigured or tampered with; fix its "
                                "configured URLs (token realm, upload locations) to https://.")

    def _send(self, method: str, url: str, headers: dict[str, str], data: Any,
              what: str, *, auth_origin: tuple[str, str, int] | None) -> requests.Response:
        """One request, following redirects by hand: ``Authorization`` is sent only to ``auth_origin``.

        Every hop is checked (:meth:`_check_url`); once a redirect leaves ``auth_origin`` the
        credentials are dropped for good, even if a later hop comes back. The response is
        streamed: its body is read by the caller, within a cap.
        """
        for _hop in range(8):
            self._check_url(url, what)
            if origin(url) != auth_origin:
                auth_origin = None
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            try:
                resp = self._session.request(method, url, headers=headers, data=data, stream=True,
                                             timeout=self.timeout, allow_redirects=False)
            except requests.exceptions.RequestException as exc:
                raise self._network_error(exc, url, what) from None
            if resp.status_code in (301, 302, 303, 307, 308) and resp.headers.get("Location") \
                    and method in ("GET", "HEAD"):
                url = urllib.parse.urljoin(url, resp.headers["Location"])
                resp.close()
                continue
            return resp
        raise RegistryError(f"the registry {self.host} redirected {what} too many times")

    def _request(self, method: str, url: str, scopes: Sequence[str], *, what: str,
                 headers: Mapping[str, str] | None = None, body: Any = None,
                 ok: Iterable[int] = (200,)) -> requests.Response:
        """Send with the right credentials; on 401 learn the challenge, authenticate, retry once.

        Credentials (a login or a token) go only to the registry's own origin: an address the
        registry names elsewhere (an upload ``Location`` on another host or port) is sent
        nothing, and its 401 challenge is not followed.
        ``body`` may be a callable that makes a fresh body for each attempt (for streams).
        Returns a streamed response whose status is in ``ok`` (the caller reads its body within
        a cap, inside a :meth:`_deadline`, and closes it); else raises.
        """
        with self._deadline():
            return self._request_once(method, url, scopes, what, headers, body, tuple(ok))

    def _request_once(self, method: str, url: str, scopes: Sequence[str], what: str,
                      headers: Mapping[str, str] | None, body: Any, ok: tuple[int, ...]) -> requests.Response:
        own = origin(url) == self.origin
        for attempt in (0, 1):
            hdrs = dict(headers or {})
            auth = self._auth_header(scopes) if own else None
            if auth:
                hdrs["Authorization"] = auth
            data = body() if callable(body) else body
            resp = self._send(method, url, hdrs, data, what, auth_origin=self.origin)
            if resp.status_code in ok:
                return resp
            if resp.status_code != 401 or attempt == 1 or not own:
                break
            challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
            resp.close()
            if challenge is None:
                raise RegistryAuthError(f"the registry {self.host} refused {what} (HTTP 401) without saying how "
                                        "to authenticate", self._login_hint())
            with self._lock:
                self._challenge = challenge
                self._tokens.pop(" ".join(sorted(scopes)), None)
        raise self._status_error(resp, what)

    def _status_error(self, resp: requests.Response, what: str) -> RegistryError:
        code = resp.status_code
        detail = _error_detail(resp)
        resp.close()
        own = origin(resp.url or self.base) == self.origin
        where = f"the registry {self.host}" if own else \
            f"{_host_of(resp.url)} (an address the registry {self.host} named)"
        if code == 401:
            who = ("no credentials (they are sent to the registry's own address only)" if not own
                   else "the stored login" if self._credential() is not None else "anonymous access")
            return RegistryAuthError(f"{where} refused {what} with {who} (HTTP 401{detail})", self._login_hint())
        if code == 403:
            return RegistryAuthError(f"{where} denied {what} (HTTP 403{detail})", self._login_hint())
        if code == 404:
            return RegistryNotFoundError(f"{where} has no {what} (HTTP 404{detail})",
                                         "Check the name and tag (and --mirror), and that the image was pushed there.")
        if code == 429:
            return RegistryRateLimitError(f"{where} refused {what} for now: too many requests (HTTP 429{detail})",
                                          f"Wait and run the same command again (finished downloads are kept), log in "
                                          f"(`docker login {self.host}`: logged-in users get more pulls), or use a "
                                          "mirror (--mirror).")
        if code == 400 and any(k in detail for k in ("DIGEST_INVALID", "SIZE_INVALID")):
            return BlobDigestError(f"{where} rejected {what}: the bytes do not match their digest or size{detail}",
                                   "The source file is damaged: verify the bundle again.")
        if code >= 500:
            return RegistryError(f"{where} failed on {what} (HTTP {code}{detail})",
                                 "The registry has a problem: try again later, or check its logs.")
        return RegistryError(f"{where} answered HTTP {code} to {what}{detail}", "Check the registry and the reference.")

    def _network_error(self, exc: BaseException, url: str, what: str) -> RegistryError:
        late = self._deadline_error(url, what)
        if late is not None:
            return late
        host = _host_of(url)
        text = " ".join(str(exc).split())[:300]
        low = text.lower()
        if isinstance(exc, requests.exceptions.SSLError):
            return RegistryUnreachableError(
                f"TLS with {host} failed (for {what}): {text}",
                "If the registry speaks plain HTTP, use the insecure-registry option for it; if it uses a private CA, "
                "add the CA to the system's trust store or set REQUESTS_CA_BUNDLE.")
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return RegistryUnreachableError(f"connecting to {host} timed out (for {what})",
                                            "Check the network, the proxy (HTTPS_PROXY/NO_PROXY) and the address.")
        if isinstance(exc, requests.exceptions.ReadTimeout):
            return RegistryUnreachableError(f"{host} stopped answering ({self.timeout:g} s without data) "
                                            f"(for {what})", "Run the same command again: finished downloads are kept.")
        if any(k in low for k in ("name or service not known", "nodename nor servname", "temporary failure in name",
                                  "nameresolutionerror", "failed to resolve", "getaddrinfo failed",
                                  "no address associated")):
            return RegistryUnreachableError(f"cannot resolve the registry host {host} (DNS) (for {what})",
                                            "Check the name, the DNS settings, and --mirror.")
        if "connection refused" in low:
            return RegistryUnreachableError(f"{host} refused the connection: nothing listens there (for {what})",
                                            "Check the address and port, and that the registry is running.")
        return RegistryUnreachableError(f"cannot reach {host} (for {what}): {text}",
                                        "Check the network, the proxy settings and the registry address.")

    # -- reading --
    def ping(self) -> None:
        """``GET /v2/``: raises when the registry is unreachable or refuses us."""
        with self._deadline():
            resp = self._request("GET", f"{self.base}/v2/", (), what="the API version check")
            self._finish(resp, "the API version check", LIMITS.registry_json)

    def get_manifest(self, repo: str, reference: str,
                     accept: Sequence[str] = ALL_MANIFEST_TYPES) -> FetchedManifest:
        """The manifest ``repo:reference`` as served, its media type and its (computed) digest.

        When ``reference`` is a digest, the bytes must hash to it.
        """
        by_digest = reference.startswith(("sha256:", "sha512:"))
        if by_digest:
            check_digest(reference)
        what = f"manifest {repo}{'@' if by_digest else ':'}{reference}"
        with self._deadline():
            resp = self._request("GET", self._url(repo, "manifests", reference), (f"repository:{repo}:pull",),
                                 what=what, headers={"Accept": ", ".join(accept)})
            with resp:
                data = self._read_capped(resp, what, MANIFEST_LIMIT)
                served = resp.headers.get("Docker-Content-Digest")
                media_type = manifest_kind(data, resp.headers.get("Content-Type"))
        algorithm = reference.split(":", 1)[0] if by_digest else "sha256"
        digest = digest_bytes(bytes(data), algorithm)
        if by_digest and digest != reference:
            raise BlobDigestError(f"the registry {self.host} served bytes for {what} that hash to {digest}",
                                  "The registry (or a proxy) is broken or tampered with; try another mirror.")
        return FetchedManifest(bytes(data), media_type, digest, served)

    def list_tags(self, repo: str, *, page_size: int = 1000, max_pages: int | None = None,
                  warn: Callable[[str], None] | None = None) -> list[str]:
        """Every tag of ``repo`` (``GET /v2/<repo>/tags/list``), following ``Link: <...>; rel="next"``.

        A next-page link must be http(s) on this registry's own origin, else :class:`RegistryError`
        (nothing is opened). At most ``max_pages`` pages (``LIMITS.tag_pages``) are read: beyond
        that ``warn`` is told and the tags read so far are returned. A page that is not
        ``{"tags": [strings]}`` is a :class:`RegistryError` quoting what the registry sent.
        """
        limit = max_pages if max_pages is not None else LIMITS.tag_pages
        what = f"tags of {repo}"
        url = f"{self._url(repo, 'tags/list').rstrip('/')}?n={page_size}"
        tags: list[str] = []
        for _page in range(limit):
            with self._deadline():
                resp = self._request("GET", url, (f"repository:{repo}:pull",), what=what)
                with resp:
                    body = self._read_json(resp, what, LIMITS.registry_json)
                    link = _next_link(resp.headers.get("Link", ""))
            page = body.get("tags") if isinstance(body, dict) else None
            if isinstance(body, dict) and page is None:
                page = []                       # Distribution answers {"tags": null} for a repository without tags
            if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                raise RegistryError(f"the registry {self.host} sent a malformed {what}: {excerpt(body)}",
                                    "Expected {\"tags\": [\"6.2.2\", ...]}; check the registry address and name.")
            tags.extend(page)
            if not link:
                return tags
            url = urllib.parse.urljoin(url, link)
            self._check_url(url, f"the next page of {what}")
            if origin(url) != self.origin:
                raise RegistryError(f"the registry {self.host} sent a next-page link for {what} to another address "
                                    f"({url[:200]}): refused, pages are read from the registry itself only",
                                    "The registry (or a proxy in between) is misconfigured or hostile.")
        if warn is not None:
            warn(f"the registry {self.host} has more than {limit} pages of tags for {repo}: only the first "
                 f"{len(tags)} tags were read")
        return tags

    def _read_json(self, resp: requests.Response, what: str, cap: int) -> Any:
        """The JSON body of ``resp``, at most ``cap`` bytes; else :class:`RegistryError` with an excerpt."""
        return parse_registry_json(self._read_capped(resp, what, cap), what, self.host)

    def _read_capped(self, resp: requests.Response, what: str, cap: int) -> bytes:
        """The body of a streamed ``resp``, refused (:class:`RegistryError`) beyond ``cap`` bytes."""
        if resp.request is not None and resp.request.method == "HEAD":
            return b""                      # its Content-Length is that of the body a GET would get
        length = _content_length(resp)
        too_big = RegistryError(f"the registry {self.host} sent more than {cap} bytes for {what}: refused",
                                "That is far more than such an answer holds; check the registry and any proxy.")
        if length is not None and length > cap:
            raise too_big
        data = bytearray()
        try:
            for chunk in resp.iter_content(65536):
                data += chunk
                if len(data) > cap:
                    raise too_big
        except requests.exceptions.RequestException as exc:
            raise self._network_error(exc, resp.url, what) from None
        late = self._deadline_error(resp.url, what)     # a body cut short by the deadline is no answer
        if late is not None:
            raise late
        return bytes(data)

    def _finish(self, resp: requests.Response, what: str, cap: int = LIMITS.registry_error) -> requests.Response:
        """Read (within ``cap``) and close a response whose body is not needed; returns it for its headers."""
        with resp:
            self._read_capped(resp, what, cap)
        return resp

    def catalog(self, limit: int = 1000) -> list[str]:
        """The registry's repository names (``GET /v2/_catalog``, one page of ``limit``), checked and capped."""
        what = "the repository list"
        with self._deadline():
            resp = self._request("GET", f"{self.base}/v2/_catalog?n={limit}", ("registry:catalog:*",), what=what)
            with resp:
                body = self._read_json(resp, what, LIMITS.registry_json)
        names = body.get("repositories") if isinstance(body, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise RegistryError(f"the registry {self.host} sent a malformed {what}: {excerpt(body)}")
        return names

    def head_manifest(self, repo: str, reference: str, accept: Sequence[str] = ALL_MANIFEST_TYPES) -> str | None:
        """The digest the registry reports for ``repo:reference``, or None when it has no such manifest."""
        what = f"manifest {repo}:{reference}"
        try:
            with self._deadline():
                resp = self._request("HEAD", self._url(repo, "manifests", reference), (f"repository:{repo}:pull",),
                                     what=what, headers={"Accept": ", ".join(accept)})
                return self._finish(resp, what).headers.get("Docker-Content-Digest")
        except RegistryNotFoundError:
            return None

    def resolve(self, repo: str, reference: str, platform: "str | Platform") -> Resolved:
        """Resolve a tag (or digest) to the image manifest for ``platform``."""
        want = Platform.parse(platform)
        top = self.get_manifest(repo, reference)
        name = f"{self.host}/{repo}:{reference}"
        if top.media_type in IMAGE_MANIFEST_TYPES:
            return Resolved(top.data, top.media_type, top.digest, top.digest, None)
        if top.media_type not in INDEX_TYPES:
            raise _unsupported(name, top.media_type)
        entries = self._index_entries(top.data, name)
        entry = select_platform(entries, want)
        if entry is None:
            have = index_platforms(entries)
            raise PlatformNotFoundError(
                f"{name} has no image for {want}; it has: {', '.join(have) or 'no platforms at all'}",
                "Choose one of those with --platform (the platform of the offline host's engine).")
        entry = self._checked_entry(entry, name)
        digest = entry["digest"]
        child = self.get_manifest(repo, digest, accept=IMAGE_MANIFEST_TYPES)
        if child.media_type not in IMAGE_MANIFEST_TYPES:
            raise _unsupported(f"{name} ({want})", child.media_type)
        if entry["size"] != len(child.data):
            raise BlobDigestError(f"the image index of {name} gives {entry['size']} bytes for {digest}, "
                                  f"the registry {self.host} served {len(child.data)}")
        return Resolved(child.data, child.media_type, child.digest, top.digest, entry, top.data, top.media_type)

    def _index_entries(self, data: bytes, name: str) -> list[Mapping[str, Any]]:
        """The ``manifests`` of an image index, each an object; else :class:`RegistryError` quoting the registry."""
        doc = parse_registry_json(data, f"the image index of {name}", self.host)
        entries = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise RegistryError(f"the image index of {name} served by {self.host} has no list of manifests: "
                                f"{excerpt(doc)}", "The registry serves a broken index; use another tag or mirror.")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise RegistryError(f"entry {i + 1} of the image index of {name} served by {self.host} is not an "
                                    f"object: {excerpt(entry)}",
                                    "The registry serves a broken index; use another tag or mirror.")
        return entries

    def _checked_entry(self, entry: Mapping[str, Any], name: str) -> dict[str, Any]:
        """The chosen index entry, checked as an OCI 1.1 descriptor and cut to its known fields.

        ``mediaType``, ``digest``, ``size`` are required; ``platform``, ``annotations`` and
        ``artifactType`` (OCI 1.1) are kept when well-formed; other keys are dropped.
        """
        def bad(key: str) -> RegistryError:
            return RegistryError(f"the image index of {name} served by {self.host} has an entry with a malformed "
                                 f"{key}: {excerpt({key: entry.get(key)})}",
                                 "The registry serves a broken index; use another tag or mirror.")

        digest = entry.get("digest")
        if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
            raise bad("digest")
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MANIFEST_LIMIT:
            raise bad("size")
        for key in ("mediaType", "artifactType"):
            value = entry.get(key)
            if (key == "mediaType" or value is not None) and not (isinstance(value, str)
                                                                  and MEDIA_TYPE_RE.match(value)):
                raise bad(key)
        annotations = entry.get("annotations")
        if annotations is not None and not (isinstance(annotations, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())):
            raise bad("annotations")
        platform = entry.get("platform")
        if not isinstance(platform, dict) or len(json.dumps(platform)) >= 1000:
            raise bad("platform")
        return {k: entry[k] for k in DESCRIPTOR_FIELDS if k in entry}

    def fetch_blob(self, repo: str, digest: str, dest: Path, *, expected_size: int | None = None,
                   on_bytes: Callable[[int], None] | None = None, partial: Path | None = None,
                   retries: int = 3, durable: bool = True) -> Path:
        """Download blob ``digest`` of ``repo`` into ``dest``, checked while it streams.

        Bytes go to ``partial`` (default ``dest`` + ``.partial``); an existing partial file is
        re-hashed and resumed with ``Range: bytes=N-`` when the registry answers 206, else the
        download restarts. A dropped connection resumes up to ``retries`` times; if it still
        fails, the partial file stays for the next run. Wrong bytes remove the partial file and
        raise :class:`BlobDigestError`. On success: fsync (unless not ``durable``), rename to ``dest``.
        ``durable=False`` is for a cache that re-hashes every file before it reuses one (the build's
        blob store): a blob cut short by a crash is then fetched again, and a blob that lives only for
        one build need never reach the disk. A kept partial file whose bytes turn out wrong is fetched
        again from byte 0, once.
        """
        check_digest(digest)
        dest = Path(dest)
        part = Path(partial) if partial is not None else dest.with_name(dest.name + ".partial")
        part.parent.mkdir(parents=True, exist_ok=True)
        what = f"blob {digest} of {repo}"
        for attempt in (1, 2):   # a second time from byte 0 when a kept partial file was bad
            resumed = part.exists()
            failures = 0
            while True:
                offset, hasher = _rehash(part, digest, expected_size)
                if expected_size is not None and offset == expected_size:
                    break
                remaining = expected_size - offset if expected_size is not None else 0
                check_room(part.parent, remaining, what)
                with self._deadline(remaining) as watch:
                    headers = {"Range": f"bytes={offset}-"} if offset else {}
                    resp = self._request("GET", self._url(repo, "blobs", digest), (f"repository:{repo}:pull",),
                                         what=what, headers=headers, ok=(200, 206, 416))
                    with resp:
                        if resp.status_code == 416 or (resp.status_code == 206 and not _range_starts_at(resp, offset)):
                            part.unlink(missing_ok=True)
                            failures += 1
                            if failures > retries:
                                raise RegistryError(f"the registry {self.host} answered a resumed download of {what} wrongly")
                            continue
                        if resp.status_code == 200 and offset:
                            offset, hasher = 0, _hasher(digest)
                        length = _content_length(resp)
                        if expected_size is None and length:
                            watch.extend(length / self.min_rate)
                        received = 0
                        # count short bodies ourselves, so that bytes before a dropped connection are kept
                        if hasattr(resp.raw, "enforce_content_length"):
                            resp.raw.enforce_content_length = False
                        try:
                            with open(part, "ab" if offset else "wb") as fh:
                                for chunk in resp.iter_content(CHUNK):
                                    received += len(chunk)
                                    if expected_size is not None and offset + received > expected_size:
                                        fh.close()
                                        part.unlink(missing_ok=True)
                                        raise BlobDigestError(
                                            f"the registry {self.host} sent more than the {expected_size} bytes of {what}",
                                            "The registry (or a proxy) is broken; try again or use another mirror.")
                                    fh.write(chunk)
                                    hasher.update(chunk)
                                    if on_bytes is not None:
                                        on_bytes(len(chunk))
                                fh.flush()
                                if durable:
                                    os.fsync(fh.fileno())
                            if length is not None and received < length:
                                raise requests.exceptions.ChunkedEncodingError(f"got {received} of {length} bytes")
                        except requests.exceptions.RequestException as exc:
                            failures += 1
                            if failures > retries or watch.fired:      # a drip is not retried
                                err = self._network_error(exc, resp.url, what)
                                raise type(err)(err.message + " (the partial download is kept)",
                                                "Run the same command again: the download resumes where it stopped.") from None
                            continue
                        late = self._deadline_error(resp.url, what)     # cut short without an error: no content length
                        if late is not None:
                            raise type(late)(late.message + " (the partial download is kept)", late.hint)
                break
            actual = f"{digest.split(':', 1)[0]}:{hasher.hexdigest()}"
            size = part.stat().st_size
            if actual == digest and (expected_size is None or size == expected_size):
                break
            part.unlink(missing_ok=True)
            if attempt == 1 and resumed:   # bytes kept from an earlier run (cut short by a crash?): start over
                continue
            raise BlobDigestError(
                f"the registry {self.host} served bytes for {what} that do not match: got {actual}, {size} bytes"
                + (f" (expected {expected_size})" if expected_size is not None else ""),
                "The registry, a mirror or a proxy is broken or tampered with; the partial file was removed. "
                "Run again, or fetch from another mirror.")
        os.replace(part, dest)
        if durable:
            fsync_dir(dest.parent)
        return dest

    # -- writing --
    def blob_exists(self, repo: str, digest: str) -> bool:
        """True when ``repo`` in this registry has blob ``digest`` (HEAD)."""
        check_digest(digest)
        what = f"blob {digest} of {repo}"
        try:
            with self._deadline():
                self._finish(self._request("HEAD", self._url(repo, "blobs", digest), (f"repository:{repo}:pull,push",),
                                           what=what), what)
        except RegistryNotFoundError:
            return False
        with self._lock:
            self._known_blobs.setdefault(digest, repo)
        return True

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount; True when the registry mounted it, False when it did not."""
        check_digest(digest)
        query = urllib.parse.urlencode({"mount": digest, "from": from_repo})
        what = f"mount of blob {digest} from {from_repo} into {repo}"
        with self._deadline():
            resp = self._finish(self._request("POST", self._url(repo, "blobs/uploads") + "?" + query,
                                              (f"repository:{repo}:pull,push", f"repository:{from_repo}:pull"),
                                              what=what, headers={"Content-Length": "0"}, ok=(201, 202)), what)
            mounted = resp.status_code == 201
            location = resp.headers.get("Location")
            cancel = urllib.parse.urljoin(self.base + "/", location) if location else ""
            if not mounted and cancel and origin(cancel) == self.origin:   # it opened an upload instead: cancel it
                try:
                    self._finish(self._request("DELETE", cancel, (f"repository:{repo}:pull,push",),
                                               what="cancel of an upload", ok=(200, 202, 204, 404)),
                                 "cancel of an upload")
                except RegistryError:
                    pass
        if mounted:
            with self._lock:
                self._known_blobs.setdefault(digest, repo)
        return mounted

    def push_blob(self, repo: str, digest: str, size: int, open_stream: Callable[[], IO[bytes]], *,
                  mount_from: Sequence[str] = (), chunk_size: int | None = None,
                  on_bytes: Callable[[int], None] | None = None) -> str:
        """Make blob ``digest`` exist in ``repo``; returns ``"exists"``, ``"mounted"`` or ``"uploaded"``.

        Tries a cross-repository mount first (from ``mount_from`` and from repositories this
        client has seen the blob in). Uploads monolithically (POST + PUT), or in PATCH chunks
        of ``chunk_size`` bytes when given and the blob is larger. ``open_stream()`` returns a
        fresh binary file object positioned at the blob's first byte (it may be called again).
        The whole operation has the deadline of a request plus ``size / min_rate`` seconds.
        """
        check_digest(digest)
        with self._deadline(size):
            return self._push_blob(repo, digest, size, open_stream, mount_from, chunk_size, on_bytes)

    def _push_blob(self, repo: str, digest: str, size: int, open_stream: Callable[[], IO[bytes]],
                   mount_from: Sequence[str], chunk_size: int | None, on_bytes: Callable[[int], None] | None) -> str:
        if self.blob_exists(repo, digest):
            return "exists"
        with self._lock:
            seen = self._known_blobs.get(digest)
        for source in dict.fromkeys([*mount_from, *([seen] if seen else [])]):
            if source and source != repo and self.mount_blob(repo, digest, source):
                return "mounted"
        scope = (f"repository:{repo}:pull,push",)
        what = f"upload of blob {digest} to {repo}"
        resp = self._request("POST", self._url(repo, "blobs/uploads"), scope, what=what,
                             headers={"Content-Length": "0"}, ok=(202,))
        location = self._location(self._finish(resp, what), what)
        algorithm = digest.split(":", 1)[0]
        if chunk_size and size > chunk_size:
            hasher = hashlib.new(algorithm)
            with open_stream() as fh:
                offset = 0
                while offset < size:
                    n = min(chunk_size, size - offset)
                    piece = fh.read(n)
                    if len(piece) != n:
                        raise BlobDigestError(f"blob {digest} is shorter than its {size} bytes", "Verify the bundle.")
                    hasher.update(piece)
                    resp = self._request("PATCH", location, scope, what=what, body=piece, ok=(202, 204),
                                         headers={"Content-Type": "application/octet-stream",
                                                  "Content-Range": f"{offset}-{offset + n - 1}",
                                                  "Content-Length": str(n)})
                    location = self._location(self._finish(resp, what), what)
                    offset += n
                    if on_bytes is not None:
                        on_bytes(n)
            if f"{algorithm}:{hasher.hexdigest()}" != digest:
                raise BlobDigestError(f"the bytes given for blob {digest} hash to something else",
                                      "The source file is damaged: verify the bundle again.")
            resp = self._request("PUT", _with_query(location, digest=digest), scope, what=what,
                                 headers={"Content-Length": "0"}, ok=(201,))
        else:
            files: list[IO[bytes]] = []

            def body() -> _Reader | bytes:
                if size == 0:
                    return b""
                for f in files:
                    f.close()
                files.append(open_stream())
                return _Reader(files[-1], size, on_bytes, algorithm)

            try:
                resp = self._request("PUT", _with_query(location, digest=digest), scope, what=what, body=body,
                                     headers={"Content-Type": "application/octet-stream",
                                              "Content-Length": str(size)}, ok=(201,))
            finally:
                for f in files:
                    f.close()
        reported = self._finish(resp, what).headers.get("Docker-Content-Digest")
        if reported and reported != digest:
            raise BlobDigestError(f"the registry {self.host} stored blob {digest} of {repo} as {reported}",
                                  "The registry is misbehaving; check it.")
        with self._lock:
            self._known_blobs.setdefault(digest, repo)
        return "uploaded"

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        """Store ``data`` as manifest ``repo:reference`` byte for byte; returns its digest (sha256 of ``data``).

        :meth:`store_manifest` also says how the registry confirmed it.
        """
        return self.store_manifest(repo, reference, data, media_type).digest

    def store_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> StoredManifest:
        """PUT ``data`` as manifest ``repo:reference``, and confirm what the registry stored.

        The registry's ``Docker-Content-Digest`` must equal the bytes' digest (``confirmed_by``
        ``"registry"``). A registry that sends none is asked for the manifest back (GET): the
        bytes it serves must hash to the same digest (``"read back"``); if it cannot be read,
        the digest is unconfirmed (``""``), never claimed. A different digest either way is a
        :class:`BlobDigestError`: the registry rewrote the manifest.
        """
        digest = digest_bytes(data)
        if reference.startswith(("sha256:", "sha512:")) and digest_bytes(data, reference.split(":")[0]) != reference:
            raise BlobDigestError(f"the manifest bytes given for {repo}@{reference} hash to {digest}")
        what = f"manifest {repo}:{reference}"
        with self._deadline(len(data)):
            resp = self._request("PUT", self._url(repo, "manifests", reference), (f"repository:{repo}:pull,push",),
                                 what=what, body=bytes(data), headers={"Content-Type": media_type}, ok=(200, 201))
            reported = self._finish(resp, what).headers.get("Docker-Content-Digest")
        if reported and reported != digest:
            raise BlobDigestError(f"the registry {self.host} stored {what} under {reported}, not {digest}",
                                  "The registry rewrote the manifest, so digests would not be preserved.")
        if reported:
            return StoredManifest(digest, "registry")
        try:
            back = self.get_manifest(repo, reference, accept=tuple(dict.fromkeys([media_type, *ALL_MANIFEST_TYPES])))
        except RegistryError:
            return StoredManifest(digest, "")
        if back.digest != digest:
            raise BlobDigestError(f"the registry {self.host} sent no digest for {what} and serves it back as "
                                  f"{back.digest}, not {digest}",
                                  "The registry rewrote the manifest, so digests would not be preserved.")
        return StoredManifest(digest, "read back")

    def _location(self, resp: requests.Response, what: str) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"the registry {self.host} gave no upload location for {what}")
        return urllib.parse.urljoin(self.base + "/", loc)


# --- helpers --------------------------------------------------------------------------------
def _host_of(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``url``, the port filled in (``https://Reg.lan/x`` -> ``("https", "reg.lan", 443)``).

    Credentials go only to the registry's own origin: a different scheme, host or port is a
    different origin (RFC 6454), so ``http://`` on the same host is another origin too.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme, 0)


def _add_query(url: str, params: Sequence[tuple[str, str]]) -> str:
    """``url`` with ``params`` appended to its query (names may repeat: ``scope=a&scope=b``)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(params)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _with_query(url: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _next_link(header: str) -> str:
    """The target of ``rel="next"`` in a ``Link`` header (RFC 8288), or ''."""
    for m in re.finditer(r'<([^>]*)>\s*((?:;\s*[^;,]*)*)', header or ""):
        params = m.group(2).lower().replace(" ", "")
        if not params or 'rel="next"' in params or "rel=next" in params:
            return m.group(1)
    return ""


def excerpt(value: Any, limit: int = 120) -> str:
    """A short, printable quote of what a registry sent (bytes or parsed JSON)."""
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value[:limit * 4]).decode("utf-8", "replace")
    else:
        try:
            text = json.dumps(value)[:limit * 4]
        except (TypeError, ValueError, RecursionError):
            text = repr(value)[:limit * 4]
    text = "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _error_detail(resp: requests.Response) -> str:
    """``: MANIFEST_UNKNOWN manifest unknown`` from a registry's JSON error body, or ''."""
    try:
        if resp.raw is not None and not resp._content_consumed:  # type: ignore[attr-defined]
            text = resp.raw.read(LIMITS.registry_error, decode_content=True)
        else:
            text = resp.content[:LIMITS.registry_error]
        errors = json.loads(text).get("errors") or []
        parts = [f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors if isinstance(e, dict)]
        return (": " + "; ".join(parts))[:300] if parts else ""
    except Exception:  # noqa: BLE001 - the body is only decoration for the message
        return ""


def _content_length(resp: requests.Response) -> int | None:
    if resp.headers.get("Content-Encoding"):
        return None
    try:
        return int(resp.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _range_starts_at(resp: requests.Response, offset: int) -> bool:
    m = re.match(r"\s*bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
    return bool(m) and int(m.group(1)) == offset


def check_room(folder: Path, nbytes: int, what: str) -> None:
    """:class:`DiskSpaceError` (exit 22) when ``folder``'s file system has less than ``nbytes`` free for ``what``."""
    free = shutil.disk_usage(folder).free
    if nbytes > free:
        raise DiskSpaceError(f"not enough free space in {folder} for {what}: it needs {human_size(nbytes)}, "
                             f"{human_size(free)} are free",
                             "Free space there, or use a work folder on a bigger disk (--work-dir), then run the "
                             "same command again: finished downloads are kept.")


def _rehash(part: Path, digest: str, expected_size: int | None) -> "tuple[int, hashlib._Hash]":
    """Size and running hash of an existing partial download (removed when it is too long)."""
    hasher = _hasher(digest)
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        return 0, hasher
    if expected_size is not None and size > expected_size:
        part.unlink(missing_ok=True)
        return 0, hasher
    with open(part, "rb") as fh:
        while chunk := fh.read(CHUNK):
            hasher.update(chunk)
    return size, hasher


def _unsupported(name: str, media_type: str) -> UnsupportedManifestError:
    if media_type in DOCKER_SCHEMA1:
        return UnsupportedManifestError(
            f"{name} is a Docker schema 1 manifest (a format retired in 2019)",
            "Use a newer tag, or pull and push the image again with a current Docker so the registry holds schema 2.")
    return UnsupportedManifestError(f"{name} is not a container image (media type {media_type or 'unknown'})",
                                    "Check the reference: only Docker schema 2 and OCI images and indexes are supported.")

