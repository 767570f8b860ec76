"""Image references, registry mirrors, and getting the plan's images into the online engine.

A plan names images the way the Overleaf Toolkit does (``mongo:8.0``,
``sharelatex/sharelatex:5.5.8``, ``quay.io/sharelatex/sharelatex-pro:6.2.2``).
:func:`normalize` spells such a reference out (``docker.io/library/mongo:8.0``);
:class:`Mirrors` maps it onto a mirror registry (``--mirror docker.io=127.0.0.1:5000``
pulls ``127.0.0.1:5000/library/mongo:8.0``). After a pull the image is tagged with its
canonical short name in the online engine, so that the export and the bundle carry
the names the Toolkit expects.

:class:`Puller` talks to the engine (docker-py; registry credentials come from the
``docker login`` configuration, as for ``docker pull``):

    engine = connect_engine()
    puller = Puller(engine, Mirrors.parse(["docker.io=127.0.0.1:5000"]), "linux/amd64")
    info = puller.pull("mongo:8.0")            # PulledImage(ref, id, diff_ids, upstream_digest, ...)
    info = puller.take_local("sharelatex/sharelatex:5.5.8-with-texlive-full")
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Mapping

from manifests.errors import AirgapError, DiskSpaceError, EngineError, RegistryError, UsageError  # noqa: F401 (re-exported)

DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_DOMAIN_RE = re.compile(r"^(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::[0-9]+)?$")
_PLATFORM_RE = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?$")
ENGINE_TIMEOUT = 3600  # seconds: a big export or pull keeps the engine busy before the first byte


# --- references --------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageName:
    """A tagged reference split the way Docker does."""

    domain: str   # docker.io, quay.io, 127.0.0.1:5000
    path: str     # library/mongo, sharelatex/sharelatex
    tag: str

    @property
    def full(self) -> str:
        """``docker.io/library/mongo:8.0``"""
        return f"{self.domain}/{self.path}:{self.tag}"

    @property
    def short(self) -> str:
        """The canonical short name Docker prints: ``mongo:8.0``, ``quay.io/x/y:1``."""
        if self.domain == DOCKER_HUB:
            path = self.path[len("library/"):] if self.path.startswith("library/") else self.path
            return f"{path}:{self.tag}"
        return self.full

    @property
    def repository(self) -> str:
        """The repository part of :attr:`short` (what ``docker tag`` takes before the colon)."""
        return self.short.rsplit(":", 1)[0]


def normalize(ref: str) -> ImageName:
    """``mongo:8.0`` -> docker.io/library/mongo:8.0. Only tagged references (no digests)."""
    if not isinstance(ref, str) or not ref or "@" in ref or any(c.isspace() for c in ref):
        raise UsageError(f"{ref!r} is not a tagged image reference", "Use NAME:TAG, e.g. mongo:8.0.")
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        name, tag = ref, "latest"
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = DOCKER_HUB, name
    if domain in _HUB_ALIASES:
        domain = DOCKER_HUB
        if "/" not in path:
            path = "library/" + path
    if not path or path != path.lower() or not tag:
        raise UsageError(f"{ref!r} is not a valid image reference", "Use lower-case NAME:TAG, e.g. mongo:8.0.")
    return ImageName(domain, path, tag)


def canonical(ref: str) -> str:
    """The short canonical name: ``docker.io/library/mongo:8.0`` -> ``mongo:8.0``."""
    return normalize(ref).short


def same_repository(a: str, b: str) -> bool:
    """True when two repository names (no tags) name the same repository."""
    na, nb = normalize(a + ":x"), normalize(b + ":x")
    return (na.domain, na.path) == (nb.domain, nb.path)


# --- mirrors -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Mirrors:
    """``--mirror SOURCE=HOST[:PORT][/PREFIX]``: where to pull each source registry's images from."""

    rules: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, specs: Iterable[str]) -> "Mirrors":
        rules: dict[str, str] = {}
        for spec in specs:
            src, sep, dest = spec.partition("=")
            src, dest = src.strip().lower(), dest.strip().rstrip("/")
            if src in _HUB_ALIASES:
                src = DOCKER_HUB
            host = dest.split("/", 1)[0]
            if not sep or not _DOMAIN_RE.match(src) or not dest or not _DOMAIN_RE.match(host) \
                    or ("." not in host and ":" not in host and host != "localhost"):
                raise UsageError(f"--mirror {spec!r} is not SOURCE=HOST[:PORT][/PREFIX]",
                                 "For example --mirror docker.io=registry.example.org:5000 "
                                 "--mirror quay.io=registry.example.org:5000/quay.io")
            if src in rules and rules[src] != dest:
                raise UsageError(f"--mirror gives two places for {src}: {rules[src]} and {dest}")
            rules[src] = dest
        return cls(tuple(sorted(rules.items())))

    def map(self, ref: str) -> str:
        """The reference to pull ``ref`` from (itself, spelled out, when no mirror applies)."""
        n = normalize(ref)
        dest = dict(self.rules).get(n.domain)
        if dest is None:
            return n.short
        return f"{dest}/{n.path}:{n.tag}"

    def to_list(self) -> list[str]:
        return [f"{s}={d}" for s, d in self.rules]


# --- platforms ---------------------------------------------------------------------------
def check_platform(text: str) -> str:
    t = text.strip().lower()
    if not _PLATFORM_RE.match(t):
        raise UsageError(f"--platform {text!r} is not OS/ARCH[/VARIANT]", "For example linux/amd64 or linux/arm64.")
    return t


def image_platform(attrs: Mapping[str, Any]) -> str:
    plat = f"{attrs.get('Os') or '?'}/{attrs.get('Architecture') or '?'}"
    return plat + (f"/{attrs['Variant']}" if attrs.get("Variant") else "")


def platform_matches(wanted: str, attrs: Mapping[str, Any]) -> bool:
    w = wanted.split("/")
    if attrs.get("Os") != w[0] or attrs.get("Architecture") != w[1]:
        return False
    return len(w) < 3 or not attrs.get("Variant") or attrs.get("Variant") == w[2]


# --- the engine --------------------------------------------------------------------------
def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect_engine(timeout: int = ENGINE_TIMEOUT):
    """A docker-py client for the engine of ``DOCKER_HOST`` (or the default socket), or EngineError."""
    import docker
    import docker.errors

    where = engine_address()
    try:
        client = docker.from_env(timeout=timeout, version="auto")
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        raise EngineError(f"cannot reach the Docker engine at {where}: {_short(exc)}",
                          "Start the engine (e.g. `systemctl start docker`), or point DOCKER_HOST at a running "
                          "one, and check that you may use its socket.") from exc
    try:
        info = client.info()
    except docker.errors.DockerException as exc:
        raise EngineError(f"the Docker engine at {where} does not answer: {_short(exc)}") from exc
    driver_status = " ".join(" ".join(map(str, x)) for x in (info.get("DriverStatus") or []))
    if "io.containerd.snapshotter" in driver_status:
        raise EngineError(f"the Docker engine at {where} uses the containerd image store",
                          "The bundler exports from the classic image store (overlay2), where an image ID is its "
                          "config digest. Build on an engine without the containerd image store.")
    return client


def _short(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(str(text).split())[:400]


# --- pulling -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PulledImage:
    """One plan image as it is in the online engine, tagged with its canonical name."""

    ref: str                      # canonical short name
    id: str                       # sha256:... image ID (= config digest)
    diff_ids: tuple[str, ...]
    platform: str
    upstream_digest: str | None
    source: str                   # "registry" or "local"
    pulled_from: str | None       # the reference actually pulled

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["diff_ids"] = list(self.diff_ids)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PulledImage":
        return cls(str(d["ref"]), str(d["id"]), tuple(d["diff_ids"]), str(d["platform"]),
                   d.get("upstream_digest"), str(d["source"]), d.get("pulled_from"))


class MissingImageError(RegistryError):
    """The registry has no such image (or refuses to say)."""


_UNREACHABLE = ("connection refused", "no such host", "dial tcp", "i/o timeout", "timeout", "tls:",
                "certificate", "server gave http response", "network is unreachable", "no route to host",
                "connection reset", "eof")
_MISSING = ("manifest unknown", "not found", "does not exist", "name unknown")
_DENIED = ("unauthorized", "denied", "authentication required", "forbidden")


class Puller:
    """Pulls plan images through the mirrors, or takes them from the local engine."""

    def __init__(self, client, mirrors: Mirrors, platform: str,
                 needed_by: Callable[[str], str] = lambda ref: "") -> None:
        self.client = client
        self.mirrors = mirrors
        self.platform = platform
        self.needed_by = needed_by

    # -- queries --
    def local(self, ref: str):
        """The local image tagged ``ref``, or None."""
        import docker.errors

        try:
            return self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.DockerException as exc:
            raise EngineError(f"the engine failed to inspect {ref}: {_short(exc)}") from exc

    def describe(self, ref: str, img, source: str, pulled_from: str | None) -> PulledImage:
        attrs = img.attrs
        if not platform_matches(self.platform, attrs):
            raise RegistryError(
                f"{ref} is for {image_platform(attrs)}, not {self.platform}"
                + (f" (pulled from {pulled_from})" if pulled_from else " (local image)"),
                "Check --platform, and that the registry holds an image for that platform "
                "(a multi-platform manifest list or a single image of the right architecture).")
        rootfs = attrs.get("RootFS") or {}
        diff_ids = tuple(rootfs.get("Layers") or ())
        upstream = None
        if pulled_from:
            repo = pulled_from.rsplit(":", 1)[0]
            for rd in attrs.get("RepoDigests") or ():
                name, _, digest = rd.partition("@")
                if digest.startswith("sha256:") and same_repository(name, repo):
                    upstream = digest
                    break
        return PulledImage(ref, img.id, diff_ids, image_platform(attrs), upstream, source, pulled_from)

    # -- actions --
    def take_local(self, ref: str) -> PulledImage:
        img = self.local(ref)
        if img is None:
            raise MissingImageError(
                f"{ref} is not in the local engine" + self._steps(ref),
                "The plan takes this image from the online engine (it is built locally, not published): "
                "build and tag it there first, then run the build again.")
        return self.describe(ref, img, "local", None)

    def pull(self, ref: str, on_status: Callable[[dict], None] | None = None) -> PulledImage:
        """Pull ``ref`` through the mirrors, tag it ``ref``, return what the engine now has."""
        import docker.errors

        source = self.mirrors.map(ref)
        repo, _, tag = source.rpartition(":")
        try:
            for status in self.client.api.pull(repo, tag=tag, platform=self.platform, stream=True, decode=True):
                if "errorDetail" in status or "error" in status:
                    detail = status.get("errorDetail") or {}
                    raise _PullFailed(detail.get("message") or str(status.get("error")))
                if on_status is not None:
                    on_status(status)
        except _PullFailed as exc:
            raise self._classify(ref, source, str(exc)) from None
        except docker.errors.APIError as exc:
            raise self._classify(ref, source, _short(exc)) from None
        except docker.errors.DockerException as exc:
            raise EngineError(f"the engine failed while pulling {source}: {_short(exc)}",
                              "Check that the engine is still running (DOCKER_HOST).") from exc
        except OSError as exc:
            raise EngineError(f"lost the connection to the engine while pulling {source}: {exc}",
                              "Check that the engine is still running (DOCKER_HOST).") from exc
        img = self.local(source)
        if img is None:
            raise EngineError(f"the engine reported pulling {source} but does not have it")
        if source != ref:
            try:
                img.tag(normalize(ref).repository, normalize(ref).tag)
            except docker.errors.DockerException as exc:
                raise EngineError(f"cannot tag {source} as {ref}: {_short(exc)}") from exc
            img = self.local(ref)
        return self.describe(ref, img, "registry", source)

    def _steps(self, ref: str) -> str:
        steps = self.needed_by(ref)
        return f", needed by plan step(s) {steps}" if steps else ""

    def _classify(self, ref: str, source: str, text: str) -> AirgapError:
        low = text.lower()
        host = normalize(source).domain
        if "no space left" in low:
            return DiskSpaceError(f"the Docker engine ran out of disk space while pulling {source}: {text}",
                                  "Free space in the engine's data root (`docker system df`, `docker image prune`), "
                                  "then run the same build again.")
        if any(k in low for k in _MISSING) and not any(k in low for k in ("dial tcp", "connection refused")):
            hint = (f"Put {ref} into the registry (or mirror) as {source}, or fix --mirror"
                    + (f" (for a private repository: `docker login {host}`). " if "denied" in low else ". "))
            if self.local(ref) is not None:
                hint += ("It exists in the local engine, but only images the plan marks as local "
                         "(-with-texlive-full builds) are taken from there.")
            return MissingImageError(f"the registry has no image {source}" + (f" (for {ref})" if source != ref else "")
                                     + self._steps(ref) + f": {text}", hint.strip())
        if "toomanyrequests" in low or "rate limit" in low:
            return RegistryError(f"the registry {host} refused {source} for now (rate limit): {text}",
                                 f"Wait, log in (`docker login {host}`: logged-in users get more pulls), or pull "
                                 "through a mirror (--mirror).")
        if any(k in low for k in _DENIED):
            return RegistryError(f"the registry {host} refused {source}{self._steps(ref)}: {text}",
                                 f"Log in with `docker login {host}` (the bundler uses the same credentials), "
                                 "or check the name.")
        if any(k in low for k in _UNREACHABLE):
            return RegistryError(f"cannot reach the registry {host} to pull {source}: {text}",
                                 "Check the network, the registry address and --mirror; the engine pulls, so the "
                                 "engine's host must reach the registry (and trust it, for HTTPS).")
        return RegistryError(f"pulling {source} failed: {text}", "Check the registry and --mirror.")


class _PullFailed(Exception):
    pass
