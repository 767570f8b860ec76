"""Stream a verified bundle's images into the engine, then prove each tag by its pinned image ID.

The payload is read once, in place, through :class:`manifests.payload.SegmentReader`
(no byte of a segment is released before its sha256 matched the signed manifest; a
disc-swapping site is asked for each disc when the reader gets there) and
:func:`manifests.payload.iter_members` (the strict tar reader). This thread turns the
members into the archive form the engine keeps intact and writes it into a pipe; a thread
per load request streams the pipe's other end into ``client.api.load_image`` and checks
every status item (:mod:`importer.images.uploads`). No temporary copy, bounded memory (a
few segments and 1 MiB buffers).

* **classic store** (image ID = config digest): a docker-archive: ``<config hex>.json``,
  ``<layer blob hex>/layer.tar`` and, last, ``manifest.json`` ``[{Config, RepoTags,
  Layers}]``. Layers go as the bundle carries them (gzip or plain tar); zstd layers
  are decoded on the fly for engines older than Engine 23 (API 1.42), which refuse
  zstd layer files. A layer whose diff_id chain the engine already holds is listed
  but not sent (the engine takes its own copy; delta bundles rely on this).
  Engine 20.10 reads a whole request before it registers any layer (gunzipping each on
  one core), so the archive is cut into several requests as images complete
  (:class:`_Requests`): while the engine registers one, the next already streams. Images
  of the earlier requests are registered without tags and tagged at the end.
* **containerd store** (image ID = manifest digest): an OCI layout: ``oci-layout``,
  ``blobs/sha256/<hex>`` (each image's original manifest, its config and its layers,
  exactly as carried) and, last, ``index.json`` naming each manifest by digest, media
  type and size, annotated with the fully qualified name
  (``io.containerd.image.name`` = ``docker.io/library/redis:7.4``) and the tag
  (``org.opencontainers.image.ref.name``). Engine 26 loads it and gives each tag the
  manifest digest as its ID. A delta bundle's omitted layer blobs are left out: the
  engine takes them from its content store (verified on Engine 26: it loads and runs).

Blobs the payload stores zstd-encoded are decoded back to their blob bytes, and every
blob's digest is checked while it streams (the segment hashes already prove the bytes
are the signed ones; this catches a bad signer), manifests and configs also against
the image entries that name them. An index (``manifest.json`` / ``index.json``) names
only blobs whose every byte has checked out, and no tag is set or moved before the last
segment did: a bad byte anywhere cuts the open request (the engine registers nothing
from it) and the run's rollback removes the untagged images earlier requests added.

Images already present under their tag with the right ID are skipped; images present
under another name are only tagged; a tag that names another image is moved only
with ``--replace-tags``. On any failure, every reference this run created or moved is
removed or pointed back at its previous image, and images this run added are removed.

    plan = plan_load(client, vb.manifest, replace_tags=False)
    result = execute(client, vb, plan, on_bytes=bar.update)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import docker
import docker.errors
import requests.exceptions

from manifests.bundle import LAYER_TYPES, BlobEntry, BundleManifest, ImageEntry
from manifests.errors import (AirgapError, BundleError, EngineError, IntegrityError, PayloadFormatError,
                              TagConflictError)
from manifests.limits import LIMITS
from manifests.payload import SegmentReader, iter_members
from manifests.receipt import chain_ids

from importer.images.engine import EngineInfo, HostImages, engine_info, engine_name, image_id, inspect, tag_image
from importer.images.archive import (BAD_BUNDLE, OCI_LAYOUT, ArchiveWriter, ZstdLayerToTar, archive_name,
                                     docker_archive_manifest, oci_index)
from importer.images.blobs import BlobStream
from importer.images.uploads import Uploads
from importer.images.verify import VerifiedBundle

SMALL_BLOB_MAX = LIMITS.small_blob    # manifests and configs are read whole: never more than this


# --- what to do -----------------------------------------------------------------------------------
@dataclass
class LoadPlan:
    store: str = "classic"                                    # the engine's image store
    present: list[ImageEntry] = field(default_factory=list)   # tag already resolves to the pinned ID
    tag_only: list[ImageEntry] = field(default_factory=list)  # the image is here, under another name
    load: list[ImageEntry] = field(default_factory=list)      # must be streamed
    send: dict[str, BlobEntry] = field(default_factory=dict)  # digest -> blob to send
    previous: dict[str, str | None] = field(default_factory=dict)  # ref -> ID before this run (refs we touch)
    ids_before: set[str] = field(default_factory=set)
    replaced: list[str] = field(default_factory=list)         # refs that pointed elsewhere (--replace-tags)
    zstd_layers_ok: bool = True                               # classic: the engine takes zstd layer files

    def expected(self, img: ImageEntry) -> str:
        return img.expected_id(self.store)

    @property
    def gzip_layer_bytes(self) -> int:
        """Bytes of the gzip layers to send (what a classic-store engine decompresses itself)."""
        return sum(b.size for b in self.send.values() if b.kind == "layer" and LAYER_TYPES.get(b.media_type) == "gzip")

    @property
    def send_bytes(self) -> int:
        return sum(b.size for b in self.send.values())

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "present": [i.ref for i in self.present], "tag": [i.ref for i in self.tag_only],
                "load": [i.ref for i in self.load], "send_blobs": len(self.send), "send_bytes": self.send_bytes,
                "replaced_tags": self.replaced}


def pinned_ids(manifest: BundleManifest, store: str) -> dict[str, str]:
    """{ref: the image ID the tag must have after a load} on an engine with ``store``."""
    return {img.ref: img.expected_id(store) for img in manifest.images}


def missing_omitted(manifest: BundleManifest, images: list[ImageEntry], chains: set[str]) -> list[tuple[str, str]]:
    """(ref, layer digest) for every layer a delta bundle omitted whose diff_id chain this host lacks.

    Both stores: the classic store keeps layers by chain; the containerd store needs the unpacked
    snapshot of the chain (named by it) and takes the blob from its content store.
    """
    carried = manifest.blob_map
    missing = []
    for img in images:
        for layer, chain in zip(img.layers, chain_ids(img.diff_ids)):
            if layer not in carried and chain not in chains:
                missing.append((img.ref, layer))
    return missing


def blobs_to_send(manifest: BundleManifest, images: list[ImageEntry], chains: set[str],
                  store: str = "classic") -> dict[str, BlobEntry]:
    """What goes into the archive for ``images``.

    classic: configs, and each carried layer whose chain the host lacks. containerd: manifests,
    configs and every carried layer (the engine's content store dedups by digest).
    """
    send: dict[str, BlobEntry] = {}
    blob_map = manifest.blob_map
    for img in images:
        want = [img.id]
        if store == "containerd":
            want = [img.manifest_digest, img.id] + [d for d in img.layers if d in blob_map]
        else:
            want += [d for d, chain in zip(img.layers, chain_ids(img.diff_ids))
                     if d in blob_map and chain not in chains]
        for digest in want:
            blob = blob_map.get(digest)
            if blob is None:
                raise BundleError(f"image {img.ref}: blob {digest} is not in the bundle", BAD_BUNDLE)
            send[digest] = blob
    return send


def plan_load(client: docker.DockerClient, manifest: BundleManifest, *, replace_tags: bool,
              info: EngineInfo | None = None) -> LoadPlan:
    """What a load must do on this engine; TagConflictError / BundleError (delta) before anything is sent."""
    info = info or engine_info(client)
    host = HostImages.scan(client, info.image_store)
    plan = LoadPlan(store=info.image_store, ids_before=set(host.images), zstd_layers_ok=info.takes_zstd_layers)
    conflicts = []
    for img in manifest.images:
        want = plan.expected(img)
        current = image_id(client, img.ref)
        if current == want:
            plan.present.append(img)
            continue
        plan.previous[img.ref] = current
        if current is not None:
            conflicts.append(f"  {img.ref}: here {current[:19]}, the bundle pins {want[:19]}")
            plan.replaced.append(img.ref)
        (plan.tag_only if want in host.images else plan.load).append(img)
    if conflicts and not replace_tags:
        raise TagConflictError(
            "these tags already name other images on this engine; they are not moved silently:\n" + "\n".join(conflicts),
            "If the bundle's images should replace them, run again with --replace-tags "
            "(a failed load puts the old images back under these tags).")
    chains = host.chains()
    missing = missing_omitted(manifest, plan.load, chains)
    if missing:
        lines = [f"  {ref}: layer {layer}" for ref, layer in missing]
        raise BundleError(
            f"this is a delta bundle, and this host ({plan.store} image store) lacks layers it left out:\n"
            + "\n".join(lines),
            "The receipt it was built from no longer matches this host (images removed since, or another engine?). "
            "Run `overleaf-import inventory --out receipt.json`, carry it out and build a new bundle with --have, "
            "or build a full bundle.")
    plan.send = blobs_to_send(manifest, plan.load, chains, plan.store)
    return plan


def _check_small_blob(blob: BlobEntry, data: bytes, manifest: BundleManifest) -> None:
    """A manifest or config blob against the image entries that name it (consistency of the signed data)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise IntegrityError(f"{blob.kind} blob {blob.digest} is not JSON", BAD_BUNDLE) from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{blob.kind} blob {blob.digest} is not a JSON object", BAD_BUNDLE)
    for img in manifest.images:
        if blob.kind == "manifest" and img.manifest_digest == blob.digest:
            config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
            layers = [d.get("digest") for d in doc.get("layers") or [] if isinstance(d, dict)]
            if config.get("digest") != img.id or layers != list(img.layers) \
                    or doc.get("mediaType", blob.media_type) != blob.media_type:
                raise IntegrityError(f"image {img.ref}: its manifest {blob.digest} names another config or other "
                                     "layers than the bundle's manifest lists", BAD_BUNDLE)
        if blob.kind == "config" and img.id == blob.digest:
            rootfs = doc.get("rootfs") if isinstance(doc.get("rootfs"), dict) else {}
            if list(rootfs.get("diff_ids") or []) != list(img.diff_ids):
                raise IntegrityError(f"image {img.ref}: its config lists other diff_ids than the bundle's manifest",
                                     BAD_BUNDLE)


class _Requests:
    """Which load request each part of the archive goes into, and what each request indexes.

    containerd store: one request (an OCI layout; its ``index.json`` last). classic store: a request may end
    after a layer once every layer it carries belongs to an image whose layers are all on the engine or sent
    by then (the engine drops layer files no image of its request names). Those images are indexed without
    tags, as the payload is not all checked yet; :func:`execute` tags them once every request finished. The
    last request's index, with tags, is written once the whole payload checked out.
    The next request lists the layers it does not carry, and its index waits for the requests that carried
    them, so the engine registers in order while the next request already streams. The archive is cut only
    when each layer to send has one chain among the images to load (else a layer listed but not carried
    could mean another chain than the one registered); otherwise, and with ``split=False``, one request.
    """

    def __init__(self, uploads: Any, manifest: BundleManifest, plan: LoadPlan, split: bool = True) -> None:
        self.uploads, self.manifest, self.plan = uploads, manifest, plan
        self.classic = plan.store != "containerd"
        self.split = split and self.classic and _one_chain_per_layer(plan)
        self.pending = list(plan.load)                  # images not indexed yet
        self.configs: dict[str, bytes] = {}             # classic: checked config blobs, written with their index
        self.carrier: dict[str, Any] = {}               # layer digest -> the request that carried it
        self.current: Any = None
        self.carried: set[str] = set()                  # layers of the current request
        self.untagged: list[ImageEntry] = []            # indexed before the whole payload was checked

    def archive(self) -> ArchiveWriter:
        if self.current is None:
            self.current, self.carried = self.uploads.open(), set()
            if not self.classic:
                self.current.archive.add_bytes("oci-layout", OCI_LAYOUT)
        return self.current.archive

    def small_blob(self, blob: BlobEntry, data: bytes) -> None:
        if self.classic and blob.kind == "config":
            self.configs[blob.digest] = data
        else:
            self.archive().add_bytes(archive_name(blob, self.plan.store), data)

    def layer_sent(self, digest: str) -> None:
        self.carrier[digest] = self.current
        self.carried.add(digest)
        if not self.split:
            return
        ready = [img for img in self.pending
                 if all(d in self.carrier or d not in self.plan.send for d in img.layers)]
        # the last images wait for end(): their index, with tags, is written once the whole payload checked out
        if ready and len(ready) < len(self.pending) and self.carried <= {d for img in ready for d in img.layers}:
            self._close(ready, tags=False)

    def _close(self, images: list[ImageEntry], tags: bool) -> None:
        archive = self.archive()
        if not self.classic:
            self.uploads.finish(self.current, "index.json", oci_index(self.manifest, images))
        else:
            for config in dict.fromkeys(img.id for img in images):
                if config in self.plan.send:
                    archive.add_bytes(archive_name(self.plan.send[config], "classic"), self.configs.pop(config))
            after = {self.carrier[d] for img in images for d in img.layers if d in self.carrier} - {self.current}
            self.uploads.finish(self.current, "manifest.json", docker_archive_manifest(images, tags),
                                after=sorted(after, key=lambda up: up.number))
        if not tags:
            self.untagged += images
        self.pending = [img for img in self.pending if img not in images]
        self.current = None

    def end(self) -> None:
        """The whole payload checked out: the last request indexes every image left, with its tags."""
        if self.pending or self.current is not None:
            self._close(self.pending, tags=True)


def _one_chain_per_layer(plan: LoadPlan) -> bool:
    chain_of: dict[str, str] = {}
    for img in plan.load:
        for digest, chain in zip(img.layers, chain_ids(img.diff_ids)):
            if digest in plan.send and chain_of.setdefault(digest, chain) != chain:
                return False
    return True


def write_archive(uploads: Any, vb: VerifiedBundle, plan: LoadPlan,
                  on_bytes: Callable[[int], None] | None = None, split: bool = True) -> list[ImageEntry]:
    """The archive(s) for ``plan.load`` (docker-archive or OCI layout by ``plan.store``), read from the payload
    once, into requests opened from ``uploads`` (:class:`importer.images.uploads.Uploads`). Every segment of
    every part is checked, even of blobs not sent. Returns the images indexed without their tags."""
    manifest = vb.manifest
    by_path = {b.path: b for b in manifest.blobs}
    diff_of = {layer: diff for img in manifest.images for layer, diff in zip(img.layers, img.diff_ids)}
    reader = SegmentReader(manifest.parts, manifest.segment_size, vb.folders.locate_for_reading(manifest.parts),
                           on_bytes=on_bytes)
    requests = _Requests(uploads, manifest, plan, split)
    try:
        seen: set[str] = set()
        layers_started = False
        for name, size, member in iter_members(reader):
            blob = by_path.get(name)
            if blob is None:
                raise PayloadFormatError(f"the payload holds {name}, which the signed manifest does not list",
                                         BAD_BUNDLE)
            if size != blob.stored_size:
                raise PayloadFormatError(f"the payload member {name} is {size} bytes, the manifest says "
                                         f"{blob.stored_size}", BAD_BUNDLE)
            if blob.digest in seen:
                raise PayloadFormatError(f"the payload holds {name} twice", BAD_BUNDLE)
            seen.add(blob.digest)
            content = BlobStream(member, blob, BAD_BUNDLE)
            if blob.kind != "layer":
                if layers_started:
                    raise PayloadFormatError(f"the payload holds {blob.kind} {blob.digest} after a layer "
                                             "(manifests and configs come first)", BAD_BUNDLE)
                if blob.size > SMALL_BLOB_MAX:
                    raise PayloadFormatError(f"{blob.kind} blob {blob.digest} is {blob.size} bytes, over the limit "
                                             f"of {SMALL_BLOB_MAX}", BAD_BUNDLE)
                data = content.read_all(SMALL_BLOB_MAX)
                _check_small_blob(blob, data, manifest)
                if blob.digest in plan.send:
                    requests.small_blob(blob, data)
                continue
            layers_started = True
            if blob.digest not in plan.send:
                continue  # iter_members skips its bytes; the SegmentReader still checks them
            archive = requests.archive()
            compression = LAYER_TYPES.get(blob.media_type, "none")
            if requests.classic and compression == "zstd" and not plan.zstd_layers_ok:
                tar = ZstdLayerToTar(content, diff_of.get(blob.digest, ""))
                archive.add(archive_name(blob, plan.store), tar.size, tar.read_tar)
                tar.finish()
            else:
                archive.add(archive_name(blob, plan.store), blob.size, content.read)
                content.finish()
            requests.layer_sent(blob.digest)
        absent = sorted(set(plan.send) - seen)
        if absent:
            raise IntegrityError(f"the payload lacks {len(absent)} blob(s) the manifest lists: " + ", ".join(absent[:5]),
                                 BAD_BUNDLE)
        requests.end()
    finally:
        reader.close()
    return requests.untagged


@dataclass
class LoadResult:
    plan: LoadPlan
    messages: list[str] = field(default_factory=list)
    sent_bytes: int = 0
    requests: int = 0


def stream_load(client: docker.DockerClient, vb: VerifiedBundle, plan: LoadPlan,
                on_bytes: Callable[[int], None] | None = None) -> tuple[list[str], list[ImageEntry], int]:
    """Send the archive(s); return the engine's messages, the images still to tag and the number of
    requests; raise on any error from either side (the bundle's fault first)."""
    uploads = Uploads(client)
    try:
        untagged = write_archive(uploads, vb, plan, on_bytes)
    except BrokenPipeError:
        uploads.cut_all()
        for up in uploads.all:
            problem = up.problem()
            if problem is not None:
                raise problem from None
        raise EngineError(f"the Docker engine at {engine_name()} stopped reading the images before their end",
                          "Check the engine's log (journalctl -u docker), then run the same command again.") from None
    except BaseException:
        uploads.cut_all()  # the engine only ever sees cut streams: it registers nothing more
        raise
    return uploads.wait_all(), untagged, len(uploads.all)


# --- after the load -------------------------------------------------------------------------------
def check_pinned(client: docker.DockerClient, images: list[ImageEntry], store: str) -> None:
    """Each tag resolves to the ID pinned for this store, with the bundle's diff_ids."""
    wrong = []
    for img in images:
        want = img.expected_id(store)
        data = inspect(client, img.ref)
        if data is None:
            wrong.append(f"  {img.ref}: not on the engine after the load")
        elif data["Id"] != want:
            wrong.append(f"  {img.ref}: is {data['Id']}, the bundle pins {want}")
        elif list((data.get("RootFS") or {}).get("Layers") or []) != list(img.diff_ids):
            wrong.append(f"  {img.ref}: its layers differ from the bundle's diff_ids")
    if wrong:
        raise IntegrityError("after loading, these tags do not resolve to the images the bundle pins:\n"
                             + "\n".join(wrong), "Nothing was kept. Ask the bundle's builder for a new bundle.")


def rollback(client: docker.DockerClient, plan: LoadPlan) -> list[str]:
    """Point every reference this run touched back at its previous image; drop images this run added."""
    problems = []
    for ref, before in plan.previous.items():
        try:
            now = image_id(client, ref)
            if now == before:
                continue
            if before is None:
                client.api.remove_image(ref, noprune=True)
            else:
                tag_image(client, before, ref)
        except docker.errors.NotFound:
            continue
        except (AirgapError, docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            problems.append(f"{ref}: {getattr(exc, 'message', exc)}")
    for img in plan.load:
        want = plan.expected(img)
        if want in plan.ids_before:
            continue
        try:
            data = inspect(client, want)
            if data is not None and not [t for t in data.get("RepoTags") or [] if t != "<none>:<none>"]:
                client.api.remove_image(want)
        except docker.errors.NotFound:
            continue
        except (AirgapError, docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            problems.append(f"{want}: {getattr(exc, 'message', exc)}")
    return problems


def execute(client: docker.DockerClient, vb: VerifiedBundle, plan: LoadPlan,
            on_bytes: Callable[[int], None] | None = None) -> LoadResult:
    """Load, tag and prove; on failure undo this run's changes and re-raise."""
    result = LoadResult(plan)
    try:
        untagged: list[ImageEntry] = []
        if plan.load:
            result.messages, untagged, result.requests = stream_load(client, vb, plan, on_bytes)
            result.sent_bytes = plan.send_bytes
        for img in untagged + plan.tag_only:
            tag_image(client, plan.expected(img), img.ref)
        check_pinned(client, plan.load + plan.tag_only, plan.store)
    except BaseException as exc:
        problems = rollback(client, plan)
        if problems and isinstance(exc, AirgapError):
            raise exc.with_hint("Undoing this run's changes failed for: " + "; ".join(problems)
                                + " - check these by hand.") from exc
        raise
    return result
