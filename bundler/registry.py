"""Registry mirrors, platforms and the online engine (for local-only images): the bundler's host settings.

A plan names images the way the Overleaf Toolkit does (``mongo:8.0``,
``quay.io/sharelatex/sharelatex-pro:6.2.2``; :mod:`manifests.imageref` parses them).
:class:`Mirrors` maps such a reference onto a mirror registry (``--mirror
docker.io=127.0.0.1:5000`` fetches ``127.0.0.1:5000/library/mongo:8.0``). The build
needs no engine except for images the plan takes from the local engine
(``-with-texlive-full`` builds): :func:`connect_engine` reaches it, on either image store.

    mirrors = Mirrors.parse(["docker.io=127.0.0.1:5000"])
    mirrors.map("mongo:8.0")                  # '127.0.0.1:5000/library/mongo:8.0'
    mirrors.repository("mongo:6.0")           # ('127.0.0.1:5000', 'library/mongo')
    platform = check_platform("linux/amd64")
    client = connect_engine()                 # docker-py client, or EngineError (exit 20)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable

from manifests.errors import EngineError, UsageError
from manifests.imageref import DOCKER_HUB, HUB_ALIASES, normalize

_DOMAIN_RE = re.compile(r"^(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::[0-9]+)?\Z")
_PLATFORM_RE = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?\Z")
ENGINE_TIMEOUT = 3600  # seconds: a big export keeps the engine busy before the first byte


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
            if src in HUB_ALIASES:
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

    def repository(self, ref: str) -> tuple[str, str]:
        """``(registry host, repository path)`` to fetch ``ref`` from (a mirror prefix joins the path)."""
        n = normalize(self.map(ref))
        return n.domain, n.path

    def to_list(self) -> list[str]:
        return [f"{s}={d}" for s, d in self.rules]


# --- platforms ---------------------------------------------------------------------------
def check_platform(text: str) -> str:
    t = text.strip().lower()
    if not _PLATFORM_RE.match(t):
        raise UsageError(f"--platform {text!r} is not OS/ARCH[/VARIANT]", "For example linux/amd64 or linux/arm64.")
    return t


# --- the engine --------------------------------------------------------------------------
def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect_engine(timeout: int = ENGINE_TIMEOUT):
    """A docker-py client for the engine of ``DOCKER_HOST`` (or the default socket), or EngineError.

    Either image store will do: :mod:`bundler.local_export` reads both export formats.
    """
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
    return client


def _short(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(str(text).split())[:400]
