"""The build's download stage: the plan's images straight from their registries, no engine.

Each reference goes through ``--mirror`` (:class:`bundler.registry.Mirrors`), is resolved
to the ``--platform`` image manifest, and its manifest (and index), config and layer
blobs land byte for byte in a content-addressed :class:`BlobStore` in the build's work
folder. Layers are deduplicated by digest across all images and downloaded by a bounded
thread pool, once the disk was found to have room for all the layers' declared sizes; every blob is checked against its digest while it streams, and a finished
blob is never fetched twice (an interrupted one resumes with a Range request).

    store = BlobStore(work / "store")
    images = fetch_images(["mongo:8.0", "sharelatex/sharelatex:5.5.8"],
                          Mirrors.parse([]), "linux/amd64", store, workers=4, on_bytes=bar.update)
    images[0].manifest_digest, images[0].diff_ids, store.path(images[0].layers[0].digest)
"""
from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from manifests.atomic import atomic_write_bytes
from manifests.distribution import (
    IMAGE_MANIFEST_TYPES,
    Credentials,
    Platform,
    RegistryClient,
    UnsupportedManifestError,
    check_digest,
    check_room,
    digest_bytes,
    excerpt,
)
from manifests.errors import AirgapError, IntegrityError, RegistryError

from manifests.imageref import canonical, normalize

from .registry import Mirrors

CONFIG_TYPES = ("application/vnd.docker.container.image.v1+json", "application/vnd.oci.image.config.v1+json")
LAYER_TYPES = (
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
)
FOREIGN_LAYER_TYPES = (
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)
CONFIG_LIMIT = 64 << 20


# --- the blob store ---------------------------------------------------------------------------
class BlobStore:
    """Content-addressed blobs: ``root/blobs/sha256/<hex>`` exists only once complete and verified.

    Downloads in progress live under ``root/partial/``; they are resumed, never trusted.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        algorithm, _, hexpart = check_digest(digest).partition(":")
        return self.root / "blobs" / algorithm / hexpart

    def partial_path(self, digest: str) -> Path:
        algorithm, _, hexpart = check_digest(digest).partition(":")
        return self.root / "partial" / algorithm / hexpart

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read_bytes(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def put_bytes(self, digest: str, data: bytes) -> Path:
        """Store ``data`` (checked against ``digest``) atomically; returns its path."""
        if digest_bytes(data, digest.split(":", 1)[0]) != check_digest(digest):
            raise IntegrityError(f"bytes given for {digest} hash to {digest_bytes(data)}")
        dest = self.path(digest)
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dest, data)
        return dest

    def fetch(self, client: RegistryClient, repo: str, digest: str, size: int | None,
              on_bytes: Callable[[int], None] | None = None) -> tuple[Path, bool]:
        """``(path, downloaded)``: the blob, downloaded from ``client`` unless the store has it."""
        dest = self.path(digest)
        if dest.is_file() and verify_blob(self, digest):   # kept from an interrupted run: checked again
            return dest, False
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.fetch_blob(repo, digest, dest, expected_size=size, on_bytes=on_bytes,
                          partial=self.partial_path(digest), durable=False)   # reused only after a re-hash
        return dest, True


# --- what the build learns about each image -----------------------------------------------------
@dataclass(frozen=True)
class Descriptor:
    """A content descriptor as manifests write it: ``{"mediaType", "digest", "size"}``."""

    media_type: str
    digest: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Descriptor":
        return cls(str(d["mediaType"]), check_digest(str(d["digest"])), int(d["size"]))


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    os: str
    architecture: str
    variant: str
    diff_ids: tuple[str, ...]

    @property
    def platform(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


@dataclass(frozen=True)
class FetchedImage:
    """One plan image, downloaded: everything the bundle needs to carry and pin it."""

    ref: str                               # canonical short name (mongo:8.0)
    pulled_from: str                       # the reference actually read (after --mirror)
    registry: str                          # the host it came from
    repository: str                        # the repository in that registry
    manifest_digest: str
    manifest_media_type: str
    manifest_size: int
    upstream_digest: str                   # what the tag served: index digest for multi-platform images
    upstream_media_type: str
    index_entry: Mapping[str, Any] | None  # the descriptor chosen from the index, or None
    config: Descriptor
    diff_ids: tuple[str, ...]
    layers: tuple[Descriptor, ...]         # in manifest order
    platform: str                          # os/arch[/variant], from the config

    def __hash__(self) -> int:  # index_entry is a dict: hash the identity only
        return hash((self.ref, self.manifest_digest, self.platform))

    @property
    def config_digest(self) -> str:
        return self.config.digest

    @property
    def size(self) -> int:
        """Bytes of the image's blobs (manifest, config and layers) as the registry serves them."""
        return self.manifest_size + self.config.size + sum(layer.size for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref, "pulled_from": self.pulled_from, "registry": self.registry,
            "repository": self.repository, "manifest_digest": self.manifest_digest,
            "manifest_media_type": self.manifest_media_type, "manifest_size": self.manifest_size,
            "upstream_digest": self.upstream_digest, "upstream_media_type": self.upstream_media_type,
            "index_entry": json.loads(json.dumps(self.index_entry)) if self.index_entry is not None else None,
            "config": self.config.to_dict(), "diff_ids": list(self.diff_ids),
            "layers": [layer.to_dict() for layer in self.layers], "platform": self.platform,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FetchedImage":
        try:
            return cls(
                str(d["ref"]), str(d["pulled_from"]), str(d["registry"]), str(d["repository"]),
                check_digest(str(d["manifest_digest"])), str(d["manifest_media_type"]), int(d["manifest_size"]),
                check_digest(str(d["upstream_digest"])), str(d["upstream_media_type"]),
                dict(d["index_entry"]) if d.get("index_entry") is not None else None,
                Descriptor.from_dict(d["config"]), tuple(str(x) for x in d["diff_ids"]),
                tuple(Descriptor.from_dict(x) for x in d["layers"]), str(d["platform"]),
            )
        except (KeyError, TypeError, ValueError, RegistryError) as exc:
            raise ValueError(f"malformed fetched-image record: {exc}") from exc


# --- parsing (pure) --------------------------------------------------------------------------
def _descriptor(raw: Any, what: str, name: str) -> Descriptor:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("size"), int) or isinstance(raw["size"], bool) \
            or raw["size"] < 0:
        raise RegistryError(f"the manifest of {name} has a malformed {what} descriptor: {excerpt(raw)}")
    try:
        digest = check_digest(str(raw.get("digest")))
    except RegistryError:
        raise RegistryError(f"the manifest of {name} has a {what} with a malformed digest {raw.get('digest')!r}") from None
    return Descriptor(str(raw.get("mediaType") or ""), digest, raw["size"])


def parse_manifest(data: bytes, media_type: str, name: str) -> ImageManifest:
    """The config and layer descriptors of a Docker schema 2 or OCI image manifest."""
    if media_type not in IMAGE_MANIFEST_TYPES:
        raise UnsupportedManifestError(f"{name} is not an image manifest (media type {media_type})")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise RegistryError(f"the manifest of {name} is not valid JSON: {excerpt(data)}") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2 or not isinstance(doc.get("layers"), list):
        raise UnsupportedManifestError(f"the manifest of {name} is not a schema 2 image manifest: {excerpt(data)}")
    config = _descriptor(doc.get("config"), "config", name)
    if config.media_type not in CONFIG_TYPES:
        raise UnsupportedManifestError(
            f"{name} is not a container image: its config has media type {config.media_type or 'none'}",
            "Check the reference: only Docker and OCI container images are supported.")
    layers = []
    for i, raw in enumerate(doc["layers"]):
        layer = _descriptor(raw, f"layer {i + 1}", name)
        if layer.media_type in FOREIGN_LAYER_TYPES or (isinstance(raw, Mapping) and raw.get("urls")):
            raise UnsupportedManifestError(
                f"{name} has a foreign (non-distributable) layer {layer.digest} that the registry does not serve "
                "(a Windows base layer)",
                "Only Linux images with distributable layers can be carried; check --platform.")
        if layer.media_type not in LAYER_TYPES:
            raise UnsupportedManifestError(f"{name} has a layer of unsupported media type {layer.media_type!r}",
                                           "Only Docker and OCI tar (gzip/zstd) layers are supported.")
        layers.append(layer)
    return ImageManifest(media_type, config, tuple(layers))


def parse_config(data: bytes, name: str) -> ImageConfig:
    """os, architecture, variant and ``rootfs.diff_ids`` of an image config."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise RegistryError(f"the config of {name} is not valid JSON: {excerpt(data)}") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"the config of {name} is not a JSON object: {excerpt(data)}")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" or not isinstance(rootfs.get("diff_ids"), list):
        raise RegistryError(f"the config of {name} has no rootfs.diff_ids")
    diff_ids = []
    for d in rootfs["diff_ids"]:
        try:
            diff_ids.append(check_digest(str(d)))
        except RegistryError:
            raise RegistryError(f"the config of {name} has a malformed diff_id {d!r}") from None
    return ImageConfig(str(doc.get("os") or ""), str(doc.get("architecture") or ""), str(doc.get("variant") or ""),
                       tuple(diff_ids))


def check_image(name: str, manifest: ImageManifest, config: ImageConfig, platform: str) -> None:
    """The manifest and config agree, and the image is for ``platform``."""
    if len(manifest.layers) != len(config.diff_ids):
        raise RegistryError(f"{name} is inconsistent: its manifest lists {len(manifest.layers)} layers but its config "
                            f"{len(config.diff_ids)} diff_ids", "The image is broken in the registry; use another tag.")
    if Platform.of(config.os, config.architecture, config.variant) != Platform.parse(platform):
        raise RegistryError(f"{name} is for {config.platform}, not {platform}",
                            "Check --platform, and that the registry holds an image for that platform "
                            "(a multi-platform index or a single image of the right architecture).")


# --- the download stage ----------------------------------------------------------------------
class _Cancelled(Exception):
    pass


def fetch_images(
    refs: Iterable[str],
    mirrors: Mirrors,
    platform: str,
    store: BlobStore,
    *,
    workers: int = 4,
    on_bytes: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
    needed_by: Callable[[str], str] | None = None,
    credentials: Credentials | None = None,
    insecure: Sequence[str] = (),
    clients: dict[str, RegistryClient] | None = None,
    on_resolved: Callable[[list[FetchedImage]], None] | None = None,
    on_blob: Callable[[str], None] | None = None,
) -> list[FetchedImage]:
    """Resolve and download ``refs`` (plan references) for ``platform`` into ``store``.

    ``on_bytes(n)`` is called (from worker threads) for each chunk of blob bytes downloaded;
    ``log(line)`` gets one line per resolved image; ``needed_by(ref)`` names the plan steps for
    error messages. ``insecure`` lists registry hosts reached over plain HTTP (loopback always is).
    ``clients`` (host -> client) may be passed in to reuse connections and tokens across calls.
    ``on_resolved(images)`` is called once every image is resolved (its manifest and config are in the
    store), before any layer is fetched; ``on_blob(digest)`` (from worker threads) each time a layer is
    complete and verified in the store: the build writes the payload while the other layers download.
    Returns one :class:`FetchedImage` per distinct reference, in the order given.
    """
    wanted = [canonical(r) for r in refs]
    wanted = list(dict.fromkeys(wanted))
    Platform.parse(platform)
    pool_clients = clients if clients is not None else {}
    lock = threading.Lock()
    cancel = threading.Event()

    def client_for(host: str) -> RegistryClient:
        with lock:
            if host not in pool_clients:
                pool_clients[host] = RegistryClient(host, credentials=credentials, insecure=host in insecure,
                                                    pool_size=workers + 2)
            return pool_clients[host]

    def progress(n: int) -> None:
        if cancel.is_set():
            raise _Cancelled()
        if on_bytes is not None:
            on_bytes(n)

    def context(ref: str, source: str) -> str:
        steps = needed_by(ref) if needed_by is not None else ""
        return f"{ref}" + (f" (from {source})" if source != ref else "") + (f", needed by plan step(s) {steps}" if steps else "")

    def resolve_one(ref: str) -> FetchedImage:
        source = mirrors.map(ref)
        try:
            n = normalize(source)
            client = client_for(n.domain)
            res = client.resolve(n.path, n.tag, platform)
            name = f"{client.host}/{n.path}:{n.tag}"
            store.put_bytes(res.manifest_digest, res.manifest_bytes)
            if res.index_bytes is not None:
                store.put_bytes(res.upstream_digest, res.index_bytes)
            manifest = parse_manifest(res.manifest_bytes, res.manifest_media_type, name)
            if manifest.config.size > CONFIG_LIMIT:
                raise RegistryError(f"the config of {name} is {manifest.config.size} bytes: not an image config")
            cpath, _ = store.fetch(client, n.path, manifest.config.digest, manifest.config.size, progress)
            config = parse_config(cpath.read_bytes(), name)
            check_image(name, manifest, config, platform)
        except _Cancelled:
            raise
        except AirgapError as err:
            raise type(err)(f"cannot fetch {context(ref, source)}: {err.message}", err.hint) from err
        if log is not None:
            log(f"{ref}: {res.manifest_digest} ({config.platform}, {len(manifest.layers)} layers) from {name}"
                + (f", index {res.upstream_digest}" if res.index_entry is not None else ""))
        return FetchedImage(
            ref=ref, pulled_from=source, registry=client.host, repository=n.path,
            manifest_digest=res.manifest_digest, manifest_media_type=res.manifest_media_type,
            manifest_size=len(res.manifest_bytes), upstream_digest=res.upstream_digest,
            upstream_media_type=res.index_media_type or res.manifest_media_type,
            index_entry=res.index_entry, config=manifest.config, diff_ids=config.diff_ids,
            layers=manifest.layers, platform=config.platform)

    def run_all(jobs: Sequence[Callable[[], Any]]) -> list[Any]:
        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fetch") as pool:
            futures: list[Future[Any]] = [pool.submit(job) for job in jobs]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
            if failed:
                cancel.set()
                for f in pending:
                    f.cancel()
                wait(futures)
                errors = [f.exception() for f in futures if f.done() and not f.cancelled()
                          and f.exception() is not None and not isinstance(f.exception(), _Cancelled)]
                raise errors[0] if errors else failed[0].exception()  # type: ignore[misc]
            return [f.result() for f in futures]

    images: list[FetchedImage] = run_all([lambda r=r: resolve_one(r) for r in wanted])
    if on_resolved is not None:
        on_resolved(images)

    # layers, deduplicated by digest across images
    jobs: dict[str, tuple[FetchedImage, Descriptor]] = {}
    for img in images:
        for layer in img.layers:
            first = jobs.get(layer.digest)
            if first is not None and first[1].size != layer.size:
                raise RegistryError(f"layer {layer.digest} has size {first[1].size} in {first[0].ref} "
                                    f"but {layer.size} in {img.ref}", "One of the manifests is broken.")
            if first is None:    # a blob the store has already is re-hashed (in parallel), not fetched
                jobs[layer.digest] = (img, layer)

    missing = [(layer.size, store.partial_path(layer.digest)) for _, layer in jobs.values() if not store.has(layer.digest)]
    need = sum(size - (part.stat().st_size if part.is_file() else 0) for size, part in missing)
    store.root.mkdir(parents=True, exist_ok=True)
    check_room(store.root, need, f"the {len(missing)} layer(s) still to download")

    def fetch_layer(img: FetchedImage, layer: Descriptor) -> None:
        try:
            store.fetch(client_for(img.registry), img.repository, layer.digest, layer.size, progress)
            if on_blob is not None:
                on_blob(layer.digest)
        except _Cancelled:
            raise
        except AirgapError as err:
            raise type(err)(f"cannot fetch {context(img.ref, img.pulled_from)}: {err.message}", err.hint) from err

    run_all([lambda i=i, l=l: fetch_layer(i, l) for i, l in jobs.values()])
    return images


def verify_blob(store: BlobStore, digest: str) -> bool:
    """Re-hash a stored blob (for a paranoid resume); removes it when it does not match."""
    path = store.path(digest)
    h = hashlib.new(digest.split(":", 1)[0])
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    if f"{digest.split(':', 1)[0]}:{h.hexdigest()}" == digest:
        return True
    path.unlink(missing_ok=True)
    return False
