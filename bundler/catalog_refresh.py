"""``overleaf-bundle catalog refresh``: learn newly published releases from a registry.

Reads ``/v2/<name>/tags/list`` through the one registry client
(:meth:`manifests.distribution.RegistryClient.list_tags`: the token flow of Docker Hub and
quay.io, credentials only to the registry's own origin, ``Link`` pagination on that origin
only and bounded, capped bodies, a deadline per request).
New ``X.Y.Z`` tags of majors the catalog has rules for go into the local overlay file;
a new major is only reported: the planner never steps through a major without rules.

    tags = list_tags("https://registry-1.docker.io", "sharelatex/sharelatex")
    result = refresh(load_catalog(), "https://quay.io", ["sharelatex/sharelatex-pro"], default_overlay_path())
    result.added, result.new_majors
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from manifests.bundle import iso, utc_now
from manifests.catalog import TAG_RE, Catalog, Release, load_overlay, write_overlay
from manifests.distribution import RegistryClient
from manifests.errors import RegistryError, RegistryUnreachableError
from manifests.versions import AppVersion


def client_for(registry: str) -> RegistryClient:
    """The registry client for ``registry`` as the operator gave it (``https://quay.io``, ``http://127.0.0.1:5000``).

    The scheme given is the scheme used (a bare host means HTTPS, plain HTTP for loopback).
    """
    text = registry.strip().rstrip("/")
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        raise RegistryError(f"{registry!r} is not an http(s) registry address",
                            "Give e.g. https://registry-1.docker.io, https://quay.io or http://127.0.0.1:5000.")
    host = urllib.parse.urlsplit(text if sep else f"https://{text}").netloc
    if not host or (sep and rest.rstrip("/") != host):
        raise RegistryError(f"{registry!r} is not a registry address (scheme and host, no path)",
                            "Give e.g. https://registry-1.docker.io, https://quay.io or http://127.0.0.1:5000.")
    if sep:
        return RegistryClient(host, insecure=scheme.lower() == "http", insecure_loopback=False)
    return RegistryClient(host)


def list_tags(registry: str, name: str, warn: Callable[[str], None] | None = None) -> list[str]:
    """All tags of ``name`` in ``registry`` (``https://quay.io``, ``http://127.0.0.1:5000``), via the registry client."""
    with client_for(registry) as client:
        try:
            return client.list_tags(name, warn=warn)
        except RegistryUnreachableError as err:
            raise RegistryUnreachableError(f"cannot reach the registry {registry}: {err.message}", err.hint) from None


@dataclass
class RefreshResult:
    added: list[str]
    known: int
    new_majors: list[str]
    ignored: list[str]
    overlay: Path
    warnings: list[str] = field(default_factory=list)


def refresh(cat: Catalog, registry: str, repositories: list[str], overlay: Path) -> RefreshResult:
    """Read the tags of ``repositories`` and record new patch releases of known majors in ``overlay``."""
    seen: set[str] = set()
    warnings: list[str] = []
    for repo in repositories:
        seen.update(list_tags(registry, repo, warn=warnings.append))
    majors = set(cat.majors())
    existing = load_overlay(overlay) if overlay.exists() else []
    known = {r.version for r in cat.releases}
    added, new_majors, ignored = [], [], []
    fresh: list[Release] = list(existing)
    for tag in sorted(seen):
        if not TAG_RE.match(tag):
            ignored.append(tag)
            continue
        v = AppVersion.parse(tag)
        if v in known:
            continue
        if v.major not in majors:
            new_majors.append(tag)
            continue
        fresh.append(Release(v, source=f"tags/list of {registry} ({', '.join(repositories)}) on {iso(utc_now())}",
                             from_overlay=True))
        known.add(v)
        added.append(tag)
    if added:
        write_overlay(overlay, fresh)
    return RefreshResult(sorted(added, key=AppVersion.parse), len(seen), sorted(new_majors), ignored, overlay,
                         warnings)
