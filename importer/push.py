"""Push a bundle's images into an internal registry, and say what the Toolkit must be told.

Name mapping (the registry replaces the image's own registry host; the path stays)::

    quay.io/sharelatex/sharelatex-pro:6.2.2  ->  HOST:PORT/sharelatex/sharelatex-pro:6.2.2
    sharelatex/sharelatex:5.5.4              ->  HOST:PORT/sharelatex/sharelatex:5.5.4
    mongo:8.0                                ->  HOST:PORT/mongo:8.0       (no "library/")
    docker.io/library/redis:7.4              ->  HOST:PORT/redis:7.4

A first path component is a registry host when it holds a ``.`` or ``:`` or is
``localhost`` (Docker's rule). Two images that would land on the same name are refused.

The registry-named tags are temporary: each is created on the local engine, pushed,
and removed again (an older local tag of the same name is put back), unless
``keep_tags`` is set.

    mapping = registry_names(["mongo:8.0"], "registry.lan:5000")   # {"mongo:8.0": "registry.lan:5000/mongo:8.0"}
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import docker
import docker.errors
import requests.exceptions

from manifests.bundle import BundleManifest
from manifests.errors import RegistryError

from .engine import down_error, engine_errors, image_id, split_ref

REGISTRY_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                         r"(?::[0-9]{1,5})?$")


def check_registry(address: str) -> str:
    a = address.strip().rstrip("/")
    for scheme in ("http://", "https://"):
        if a.startswith(scheme):
            a = a[len(scheme):]
    if not REGISTRY_RE.match(a) or "/" in a:
        raise RegistryError(f"{address!r} is not a registry address",
                            "Give it as HOST or HOST:PORT, e.g. registry.example.lan:5000.")
    return a


def repository_path(ref: str) -> tuple[str, str]:
    """``(path, tag)`` of a reference without its registry host (and without Docker Hub's ``library/``)."""
    name, tag = split_ref(ref)
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = "docker.io", name
    if domain in ("docker.io", "index.docker.io") and path.startswith("library/"):
        path = path[len("library/"):]
    return path, tag


def registry_names(refs: Iterable[str], registry: str) -> dict[str, str]:
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for ref in refs:
        path, tag = repository_path(ref)
        target = f"{registry}/{path}:{tag}"
        if target in seen:
            raise RegistryError(f"{seen[target]} and {ref} would both be pushed as {target}",
                                "Push them into different registries, or rename one image before bundling.")
        seen[target] = ref
        out[ref] = target
    return out


def _kind(ref: str) -> str:
    path, _ = repository_path(ref)
    last = path.rsplit("/", 1)[-1]
    if last in ("sharelatex", "sharelatex-pro"):
        return "app"
    if last == "git-bridge":
        return "git_bridge"
    if last in ("mongo", "redis", "nginx"):
        return last
    if last.startswith("texlive"):
        return "texlive"
    return "other"


def overleaf_rc(manifest: BundleManifest, mapping: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """``config/overleaf.rc`` settings for the pushed names, and warnings (TeX Live names)."""
    options = manifest.upgrade_plan.options
    custom = {"app": options.get("app_image"), "git_bridge": options.get("git_bridge_image"),
              "mongo": options.get("mongo_image"), "redis": options.get("redis_image")}
    latest: dict[str, str] = {}
    order = [i for s in manifest.upgrade_plan.steps for i in s.images] + [i.ref for i in manifest.images]
    for ref in order:  # the last one in plan order is where the plan ends
        if ref not in mapping:
            continue
        kind = _kind(ref)
        for k, name in custom.items():
            if name and split_ref(ref)[0] == name:
                kind = k
        latest[kind] = ref
    rc: dict[str, str] = {}
    if "app" in latest:
        rc["OVERLEAF_IMAGE_NAME"] = split_ref(mapping[latest["app"]])[0]
    if "git_bridge" in latest:
        rc["GIT_BRIDGE_IMAGE"] = split_ref(mapping[latest["git_bridge"]])[0]
    if "mongo" in latest:
        repo, tag = split_ref(mapping[latest["mongo"]])
        rc["MONGO_IMAGE"] = repo
        rc["MONGO_VERSION"] = tag
    if "redis" in latest:
        rc["REDIS_IMAGE"] = mapping[latest["redis"]]
    if "nginx" in latest:
        rc["NGINX_IMAGE"] = mapping[latest["nginx"]]
    warnings = []
    texlive = [r for r in mapping if _kind(r) == "texlive"]
    if texlive:
        warnings.append(
            "TeX Live images keep their names: each project records the TeX Live image it compiles with, so "
            "do not switch TEX_LIVE_DOCKER_IMAGE / ALL_TEX_LIVE_DOCKER_IMAGES to the registry names. On each "
            "host, pull them from the registry and tag them back ("
            + "; ".join(f"docker pull {mapping[r]} && docker tag {mapping[r]} {r}" for r in texlive)
            + "), unless you also move every project with `bin/run-script "
            "scripts/update_project_image_name.js <old> <new>`.")
    return rc, warnings


def _is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_insecure_allowed(client: docker.DockerClient, registry: str) -> None:
    """With --insecure (plain HTTP), the engine itself must list the registry as insecure."""
    if _is_loopback(registry):
        return
    with engine_errors("describe its registry settings"):
        cfg = client.info().get("RegistryConfig") or {}
    index = (cfg.get("IndexConfigs") or {}).get(registry) or {}
    if index.get("Secure") is False:
        return
    host = registry.rsplit(":", 1)[0]
    for cidr in cfg.get("InsecureRegistryCIDRs") or []:
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(cidr):
                return
        except ValueError:
            continue
    raise RegistryError(
        f"the Docker engine does not allow plain HTTP to {registry}: the insecure setting belongs to the engine",
        f'Add "insecure-registries": ["{registry}"] to /etc/docker/daemon.json, restart Docker, and run again '
        "(or give the registry a TLS certificate the engine trusts and drop --insecure).")


@dataclass
class PushResult:
    pushed: dict[str, str] = field(default_factory=dict)     # ref -> registry ref
    digests: dict[str, str] = field(default_factory=dict)    # registry ref -> manifest digest


def push_images(client: docker.DockerClient, manifest: BundleManifest, mapping: dict[str, str], *,
                keep_tags: bool = False, on_image: Callable[[str, str], None] | None = None) -> PushResult:
    result = PushResult()
    for img in manifest.images:
        target = mapping[img.ref]
        repo, tag = split_ref(target)
        before = image_id(client, target)
        if on_image:
            on_image(img.ref, target)
        try:
            with engine_errors(f"tag {img.ref} as {target}"):
                client.api.tag(img.id, repo, tag, force=True)
            digest = _push_one(client, repo, tag, target)
        finally:
            if not keep_tags and before != img.id:
                _restore(client, target, before)
        result.pushed[img.ref] = target
        if digest:
            result.digests[target] = digest
    return result


def _push_one(client: docker.DockerClient, repo: str, tag: str, target: str) -> str | None:
    digest = None
    try:
        for item in client.api.push(repo, tag=tag, stream=True, decode=True):
            if not isinstance(item, dict):
                continue
            if "errorDetail" in item or "error" in item:
                detail = item.get("errorDetail")
                message = (detail or {}).get("message") if isinstance(detail, dict) else None
                raise RegistryError(f"pushing {target} failed: {message or item.get('error')}",
                                    "Check that the registry is reachable from this host, that you are logged in "
                                    "(docker login), and for plain HTTP that the engine lists it as insecure.")
            aux = item.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
    except docker.errors.APIError as exc:
        raise RegistryError(f"pushing {target} failed: {getattr(exc, 'explanation', None) or exc}",
                            "Check the registry address and your login (docker login).") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise down_error(exc, f"push {target} with") from exc
    if digest is None:
        raise RegistryError(f"pushing {target} ended without the registry confirming a digest",
                            "Run the same command again; check the registry's log.")
    return digest


def _restore(client: docker.DockerClient, target: str, before: str | None) -> None:
    try:
        if before is None:
            client.api.remove_image(target, noprune=True)
        else:
            repo, tag = split_ref(target)
            client.api.tag(before, repo, tag, force=True)
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        pass  # best effort: a leftover registry-named tag is harmless

