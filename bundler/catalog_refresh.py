"""``overleaf-bundle catalog refresh``: learn newly published releases from a registry.

Reads ``/v2/<name>/tags/list`` (Registry HTTP API v2, following ``Link`` pagination).
On ``401`` with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` it gets an
anonymous token from the realm, as Docker Hub and quay.io require, and retries.
New ``X.Y.Z`` tags of majors the catalog has rules for go into the local overlay file;
a new major is only reported: the planner never steps through a major without rules.

    tags = list_tags("https://registry-1.docker.io", "sharelatex/sharelatex")
    result = refresh(load_catalog(), "https://quay.io", ["sharelatex/sharelatex-pro"], default_overlay_path())
    result.added, result.new_majors
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from manifests.bundle import iso, utc_now
from manifests.catalog import TAG_RE, Catalog, Release, load_overlay, write_overlay
from manifests.errors import RegistryError
from manifests.versions import AppVersion

USER_AGENT = "overleaf-airgap catalog refresh"


def _parse_challenge(header: str) -> dict[str, str]:
    if not header.lower().startswith("bearer "):
        return {}
    return {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', header[7:])}


def _open(url: str, token: str | None = None, timeout: float = 30):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - URL given by the operator


def _token(challenge: dict[str, str], name: str) -> str:
    realm = challenge.get("realm")
    if not realm:
        raise RegistryError("the registry asked for authentication without a token realm")
    params = {"scope": challenge.get("scope") or f"repository:{name}:pull"}
    if challenge.get("service"):
        params["service"] = challenge["service"]
    url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(params)
    try:
        with _open(url) as resp:
            body = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RegistryError(f"cannot get an anonymous token from {realm}: {exc}") from exc
    tok = body.get("token") or body.get("access_token")
    if not tok:
        raise RegistryError(f"the token service {realm} returned no token")
    return tok


def list_tags(registry: str, name: str) -> list[str]:
    """All tags of ``name`` in ``registry`` (``https://quay.io``, ``http://127.0.0.1:5000``)."""
    base = registry.rstrip("/")
    if "://" not in base:
        base = "https://" + base
    url = f"{base}/v2/{name}/tags/list?n=1000"
    token: str | None = None
    tags: list[str] = []
    for _ in range(1000):  # pagination bound
        try:
            resp = _open(url, token)
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and token is None:
                token = _token(_parse_challenge(exc.headers.get("WWW-Authenticate", "")), name)
                continue
            if exc.code == 404:
                raise RegistryError(f"{base} has no repository {name}",
                                    "Check --repository (e.g. sharelatex/sharelatex on Docker Hub).") from exc
            raise RegistryError(f"{url} answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(f"cannot reach the registry {base}: {getattr(exc, 'reason', exc)}",
                                "Check the URL and the network (this runs on the online side).") from exc
        with resp:
            try:
                body = json.load(resp)
            except ValueError as exc:
                raise RegistryError(f"{url} did not return JSON") from exc
            tags.extend(body.get("tags") or [])
            link = resp.headers.get("Link")
        m = re.match(r'<([^>]+)>', link or "")
        if not m:
            return tags
        url = urllib.parse.urljoin(base + "/", m.group(1))
    return tags


@dataclass
class RefreshResult:
    added: list[str]
    known: int
    new_majors: list[str]
    ignored: list[str]
    overlay: Path


def refresh(cat: Catalog, registry: str, repositories: list[str], overlay: Path) -> RefreshResult:
    seen: set[str] = set()
    for repo in repositories:
        seen.update(list_tags(registry, repo))
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
    return RefreshResult(sorted(added, key=AppVersion.parse), len(seen), sorted(new_majors), ignored, overlay)
