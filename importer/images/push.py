"""Push a bundle's images into an internal registry, digests intact, with no Docker engine.

``overleaf-import push BUNDLE --registry HOST[:PORT][/PREFIX]`` reads the verified payload
ONCE (:class:`manifests.payload.SegmentReader`: no byte is used before its segment's hash
matched the signed manifest) and talks to the registry over its HTTP API v2
(:class:`manifests.distribution.RegistryClient`: ``docker login`` credentials, the token
flow, plain HTTP only for loopback or with ``insecure``):

1. before any upload, every layer a delta bundle left out must already be in the target
   repository (HEAD), or be mountable from another repository of this push (cross-repo
   mount); otherwise :class:`MissingLayersError` names them, and nothing is written;
2. each blob, as its member streams past (manifests and configs first, then layers): a
   blob the repository has is skipped (HEAD), one another repository of this push has is
   mounted, anything else is uploaded (``zstd``-encoded members are decoded on the way,
   and the decoded bytes must hash to the blob's digest);
3. only after the whole payload was read intact, each image's manifest is PUT under its
   tag with its exact bytes and media type. The digest the registry reports must equal
   ``ImageEntry.manifest_digest``: for an exact bundle that is the upstream digest, so
   digest-pinned deployments and signatures keep working. A registry that reports no
   digest is asked for the manifest back; if that fails too, the digest is reported as
   unconfirmed, never as the upstream one. A damaged payload therefore tags nothing.

Name mapping (the registry, and its optional prefix, replace the image's registry host)::

    quay.io/sharelatex/sharelatex-pro:6.2.2  ->  HOST:PORT/sharelatex/sharelatex-pro:6.2.2
    sharelatex/sharelatex:5.5.4              ->  HOST:PORT/PREFIX/sharelatex/sharelatex:5.5.4
    mongo:8.0                                ->  HOST:PORT/mongo:8.0       (no "library/")
    docker.io/library/redis:7.4              ->  HOST:PORT/redis:7.4

A first path component is a registry host when it holds a ``.`` or ``:`` or is
``localhost`` (Docker's rule). Two images that would land on the same name are refused.

    target = parse_registry("registry.lan:5000/overleaf")
    result = push_bundle(manifest, locate, target)
    result.images[0].registry_digest == manifest.images[0].manifest_digest
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from manifests.bundle import BlobEntry, BundleManifest
from manifests.distribution import RegistryClient, is_loopback
from manifests.errors import IntegrityError, MissingLayersError, RegistryAddressError, RegistryError
from manifests.imageref import normalize, split_ref
from manifests.limits import LIMITS
from manifests.payload import SegmentReader, iter_members

from importer.images.blobs import BlobStream

CHUNK = 1024 * 1024
MANIFEST_LIMIT = LIMITS.image_manifest
NOT_PUSHED = "The bundle is malformed or was built by a faulty builder: ask for a new one. No tag was pushed."

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*(?::([0-9]{{1,5}}))?\Z")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")


# --- the registry address ------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistryTarget:
    host: str        # HOST[:PORT]
    prefix: str      # "" or "team/overleaf": put in front of every repository path

    @property
    def address(self) -> str:
        return f"{self.host}/{self.prefix}" if self.prefix else self.host

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def parse_registry(address: str) -> RegistryTarget:
    """``HOST[:PORT][/PREFIX]`` -> :class:`RegistryTarget`; anything else is a usage error (exit 2)."""
    text = (address or "").strip()
    bad = RegistryAddressError(
        f"{address!r} is not a registry address",
        "Give it as HOST[:PORT][/PREFIX], e.g. registry.example.lan:5000 or registry.example.lan/overleaf "
        "(no http:// or https://: plain HTTP is --insecure).")
    if not text or "://" in text or len(text) > 255:
        raise bad
    host, _, prefix = text.rstrip("/").partition("/")
    m = _HOST_RE.match(host)
    if not m or (m.group(1) is not None and not 0 < int(m.group(1)) < 65536):
        raise bad
    if prefix and not all(_PATH_COMPONENT_RE.match(p) for p in prefix.split("/")):
        raise RegistryAddressError(
            f"the repository prefix {prefix!r} in {address!r} is not valid",
            "Use lowercase letters, digits and . _ - between slashes, e.g. registry.lan:5000/team/overleaf.")
    return RegistryTarget(host.lower(), prefix)


def check_registry(address: str) -> str:
    """The normalised ``HOST[:PORT][/PREFIX]`` of ``address``, or :class:`RegistryAddressError` (exit 2)."""
    return parse_registry(address).address


def repository_path(ref: str) -> tuple[str, str]:
    """``(path, tag)`` of a reference without its registry host (and without Docker Hub's ``library/``)."""
    n = normalize(ref)
    return n.hub_path, n.tag


def registry_names(refs: Iterable[str], registry: str) -> dict[str, str]:
    """``{ref: "REGISTRY/path:tag"}``; ``registry`` may carry a prefix (``host:5000/team``)."""
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


# --- overleaf.rc -----------------------------------------------------------------------------------
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


# --- the push ---------------------------------------------------------------------------------------
@dataclass
class PushedImage:
    ref: str
    target: str                  # HOST[:PORT][/PREFIX]/path:tag
    registry_digest: str         # what the registry reports for the tag
    manifest_digest: str         # what the bundle pinned (ImageEntry.manifest_digest)
    upstream_digest: str | None
    exact: bool
    confirmed_by: str = "registry"   # how the registry confirmed registry_digest: "registry", "read back", "" (not)

    @property
    def confirmed(self) -> bool:
        """True when the registry reported the digest, or served the manifest back with it."""
        return bool(self.confirmed_by)

    @property
    def digest_preserved(self) -> bool:
        """True when the registry is known to serve the upstream manifest digest (exact, single-platform upstream)."""
        return self.confirmed and self.exact and self.registry_digest == self.upstream_digest

    def describe(self) -> str:
        """How the pushed digest relates to upstream, as the push prints it; never claims what is unconfirmed."""
        if not self.confirmed:
            return ("unconfirmed: the registry reported no digest and the manifest could not be read back; "
                    "this is the digest of the bytes sent")
        how = "the upstream digest" if self.digest_preserved else "the bundle's pinned digest"
        return how + (", read back from the registry" if self.confirmed_by == "read back" else "")

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "target": self.target, "digest": self.registry_digest,
                "manifest_digest": self.manifest_digest, "upstream_digest": self.upstream_digest,
                "exact": self.exact, "digest_preserved": self.digest_preserved,
                "digest_confirmed_by": self.confirmed_by or None}


@dataclass
class PushResult:
    registry: str
    images: list[PushedImage] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)     # blob digests uploaded (once per repository)
    skipped: list[str] = field(default_factory=list)      # already in the target repository
    mounted: list[str] = field(default_factory=list)      # mounted from another repository
    bytes_uploaded: int = 0

    @property
    def pushed(self) -> dict[str, str]:
        return {i.ref: i.target for i in self.images}

    @property
    def digests(self) -> dict[str, str]:
        return {i.target: i.registry_digest for i in self.images}

    def to_dict(self) -> dict[str, Any]:
        return {"registry": self.registry, "images": [i.to_dict() for i in self.images],
                "pushed": self.pushed, "digests": self.digests,
                "blobs": {"uploaded": len(self.uploaded), "skipped": len(self.skipped), "mounted": len(self.mounted),
                          "bytes_uploaded": self.bytes_uploaded}}


class _OneShotBlob:
    """One payload member's blob for an upload: :class:`importer.images.blobs.BlobStream` (decoded, sized,
    hashed), opened at most once.

    The payload is read once, so the stream can be opened once: a second ``open()`` (a retried
    upload) raises. :meth:`finish` checks size, digest and that nothing follows.
    """

    def __init__(self, member, blob: BlobEntry) -> None:
        self.blob = blob
        self.stream = BlobStream(member, blob, NOT_PUSHED)
        self.opened = False

    @property
    def count(self) -> int:
        return self.stream.count

    def open(self) -> "_OneShotBlob":
        if self.opened:
            raise RegistryError(f"the registry asked for blob {self.blob.digest} twice (a retried upload), which a "
                                "single pass over the bundle cannot give", "Run the same command again.")
        self.opened = True
        return self

    def __enter__(self) -> "_OneShotBlob":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None

    def read(self, n: int = -1) -> bytes:
        return self.stream.read(n)

    def finish(self) -> None:
        if self.opened:
            self.stream.finish()


def _plan_repositories(manifest: BundleManifest, mapping: dict[str, str], prefix_len: int
                       ) -> tuple[dict[str, tuple[str, str]], dict[str, list[str]]]:
    """``{ref: (repository, tag)}`` and ``{blob digest: [repositories that need it]}`` (config + layers)."""
    repos: dict[str, tuple[str, str]] = {}
    needs: dict[str, list[str]] = {}
    for img in manifest.images:
        repo, tag = split_ref(mapping[img.ref])
        repo = repo[prefix_len:]
        repos[img.ref] = (repo, tag)
        for digest in (img.id, *img.layers):
            lst = needs.setdefault(digest, [])
            if repo not in lst:
                lst.append(repo)
    return repos, needs


def check_omitted(client: RegistryClient, manifest: BundleManifest, repos: dict[str, tuple[str, str]],
                  candidates: Sequence[str]) -> list[str]:
    """Make every omitted layer exist in each repository that needs it (HEAD, else mount); return mounted ones.

    Raises :class:`MissingLayersError` naming every layer that is nowhere to be found.
    """
    omitted = set(manifest.omitted_layers)
    mounted: list[str] = []
    missing: list[tuple[str, str]] = []
    catalog: list[str] | None = None     # the registry's other repositories, asked for only when needed
    for img in manifest.images:
        repo, _ = repos[img.ref]
        for digest in img.layers:
            if digest not in omitted:
                continue
            if client.blob_exists(repo, digest):
                continue
            if any(src != repo and client.mount_blob(repo, digest, src) for src in candidates):
                mounted.append(digest)
                continue
            if catalog is None:
                catalog = [r for r in _catalog(client) if r not in candidates]
            if any(src != repo and client.mount_blob(repo, digest, src) for src in catalog):
                mounted.append(digest)
                continue
            missing.append((img.ref, digest))
    if missing:
        shown = "; ".join(f"{ref}: {d}" for ref, d in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise MissingLayersError(
            f"this delta bundle leaves out {len(missing)} layer(s) that the registry {client.host} does not have "
            f"in the target repositories ({shown})",
            "Push the bundle those images came from (the one the inventory receipt was made after) to this registry "
            "first, or build a full bundle (without --have). Nothing was pushed.")
    return mounted


def _catalog(client: RegistryClient, limit: int = 1000) -> list[str]:
    """The registry's repositories (``GET /v2/_catalog``), or [] where the registry does not list them."""
    try:
        return client.catalog(limit)
    except RegistryError:
        return []


def push_bundle(manifest: BundleManifest, locate: Callable[[str], Path], target: RegistryTarget, *,
                insecure: bool = False, client: RegistryClient | None = None,
                on_bytes: Callable[[int], None] | None = None,
                on_image: Callable[[str, str], None] | None = None) -> PushResult:
    """Push every image of a verified bundle to ``target``; see the module docstring for the order.

    ``locate(part_name)`` finds a part on disk (``BundleFolders.locate_for_reading``);
    ``on_bytes`` counts payload bytes read, ``on_image(ref, target)`` is called before each tag.
    """
    mapping = registry_names([i.ref for i in manifest.images], target.address)
    prefix_len = len(target.host) + 1
    repos, needs = _plan_repositories(manifest, mapping, prefix_len)
    own = client is None
    if client is None:
        client = RegistryClient(target.host, insecure=insecure)
    result = PushResult(target.address)
    try:
        client.ping()
        all_repos = list(dict.fromkeys(r for r, _ in repos.values()))
        assumed = [split_ref(t)[0][prefix_len:]
                   for t in registry_names(manifest.upgrade_plan.assumed_present, target.address).values()]
        result.mounted += check_omitted(client, manifest, repos, list(dict.fromkeys(all_repos + assumed)))
        manifests = _stream_blobs(client, manifest, needs, result, locate, on_bytes)
        for img in manifest.images:
            repo, tag = repos[img.ref]
            if on_image is not None:
                on_image(img.ref, mapping[img.ref])
            data, media_type = manifests[img.manifest_digest]
            stored = client.store_manifest(repo, tag, data, media_type)
            got = stored.digest
            if got != img.manifest_digest:
                raise RegistryError(f"the registry {client.host} stored {mapping[img.ref]} as {got}, not as the "
                                    f"bundle's {img.manifest_digest}",
                                    "The registry rewrote the manifest; digest-pinned deployments would not match.")
            result.images.append(PushedImage(img.ref, mapping[img.ref], got, img.manifest_digest,
                                             img.upstream_digest, img.exact, stored.confirmed_by))
    finally:
        if own:
            client.close()
    return result


def _stream_blobs(client: RegistryClient, manifest: BundleManifest, needs: dict[str, list[str]],
                  result: PushResult, locate: Callable[[str], Path],
                  on_bytes: Callable[[int], None] | None) -> dict[str, tuple[bytes, str]]:
    """One pass over the payload: upload what the registry lacks; return ``{digest: (manifest bytes, type)}``."""
    by_path = {b.path: b for b in manifest.blobs}
    wanted_manifests = {i.manifest_digest for i in manifest.images}
    manifests: dict[str, tuple[bytes, str]] = {}
    seen: set[str] = set()
    reader = SegmentReader(manifest.parts, manifest.segment_size, locate, on_bytes=on_bytes)
    try:
        for name, size, member in iter_members(reader):
            blob = by_path.get(name)
            if blob is None or size != blob.stored_size:
                raise IntegrityError(f"the payload holds {name} ({size} bytes), which the manifest does not list so",
                                     "The bundle is malformed: ask its builder for a new one.")
            if blob.digest in seen:
                raise IntegrityError(f"the payload holds {name} twice", "The bundle is malformed.")
            seen.add(blob.digest)
            if blob.kind == "manifest":
                if blob.digest in wanted_manifests:
                    manifests[blob.digest] = (_read_manifest(member, blob), blob.media_type)
                continue
            repos = needs.get(blob.digest, [])
            if not repos:
                continue
            stream = _OneShotBlob(member, blob)
            first = None
            for repo in repos:
                how = client.push_blob(repo, blob.digest, blob.size, stream.open,
                                       mount_from=[first] if first else ())
                {"exists": result.skipped, "mounted": result.mounted, "uploaded": result.uploaded}[how].append(
                    blob.digest)
                first = first or repo
            stream.finish()
            result.bytes_uploaded += stream.count if stream.opened else 0
    finally:
        reader.close()
    absent = sorted((set(needs) - set(manifest.omitted_layers) - seen) | (wanted_manifests - set(manifests)))
    if absent:
        raise IntegrityError(f"the payload lacks {len(absent)} blob(s) the manifest lists: " + ", ".join(absent[:5]),
                             "The bundle is malformed: ask its builder for a new one. No tag was pushed.")
    return manifests


def _read_manifest(member, blob: BlobEntry) -> bytes:
    return BlobStream(member, blob, NOT_PUSHED).read_all(MANIFEST_LIMIT)


__all__ = ["MissingLayersError", "PushResult", "RegistryAddressError", "RegistryTarget", "check_registry",
           "overleaf_rc", "parse_registry", "push_bundle", "registry_names", "repository_path"]
