"""Stream a verified bundle's images into the engine, then prove each tag by its pinned image ID.

The payload is read once, in place, through :class:`manifests.payload.SegmentReader`
(no byte of a segment is released before its sha256 matched the signed manifest; a
disc-swapping site is asked for each disc when the reader gets there) and
:func:`manifests.payload.iter_members` (the strict tar reader). A writer thread turns
the members into the archive form the engine keeps intact and writes it into a pipe;
the main thread streams the pipe's other end into ``client.api.load_image`` and checks
every status item. No temporary copy, bounded memory (a few segments and 1 MiB buffers).

* **classic store** (image ID = config digest): a docker-archive: ``<config hex>.json``,
  ``<layer blob hex>/layer.tar`` and, last, ``manifest.json`` ``[{Config, RepoTags,
  Layers}]``. Layers go as the bundle carries them (gzip or plain tar); zstd layers
  are decoded on the fly for engines older than Engine 23 (API 1.42), which refuse
  zstd layer files. A layer whose diff_id chain the engine already holds is listed
  but not sent (the engine takes its own copy; delta bundles rely on this).
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
the image entries that name them. The archive's index (``manifest.json`` /
``index.json``) is written only after the last segment checked out, so a bad byte
anywhere aborts the upload before the engine has an image to register.

Images already present under their tag with the right ID are skipped; images present
under another name are only tagged; a tag that names another image is moved only
with ``--replace-tags``. On any failure, every reference this run created or moved is
removed or pointed back at its previous image, and images this run added are removed.

    plan = plan_load(client, vb.manifest, replace_tags=False)
    result = execute(client, vb, plan, on_bytes=bar.update)
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import threading
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterator

import docker
import docker.errors
import requests.exceptions
import zstandard

from manifests.bundle import LAYER_TYPES, OCI_INDEX, BlobEntry, BundleManifest, ImageEntry
from manifests.errors import (AirgapError, BundleError, EngineError, IntegrityError, PayloadFormatError,
                              TagConflictError)
from manifests.imageref import normalize, split_ref
from manifests.limits import LIMITS
from manifests.payload import SegmentReader, iter_members, zstd_decompressor
from manifests.receipt import chain_ids

from importer.images.engine import (EngineInfo, HostImages, down_error, engine_info, engine_name, image_id, inspect, stream_error,
                     tag_image)
from importer.images.blobs import BlobStream
from importer.images.verify import VerifiedBundle

CHUNK = 1024 * 1024
PIPE_SIZE = 1024 * 1024
SMALL_BLOB_MAX = LIMITS.small_blob    # manifests and configs are read whole: never more than this
BAD_BUNDLE = "The bundle is malformed or was made by a bad signer: do not use it; ask its builder for a new one."


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


# --- the archives ---------------------------------------------------------------------------------
def qualified_name(ref: str) -> str:
    """``redis:7.4`` -> ``docker.io/library/redis:7.4``; ``quay.io/a/b:1`` stays (Docker's normalisation)."""
    return normalize(ref).full


def docker_archive_manifest(images: list[ImageEntry]) -> bytes:
    """docker-archive ``manifest.json``: one entry per image ID, every layer listed (sent or not)."""
    by_id: dict[str, dict[str, Any]] = {}
    for img in images:
        entry = by_id.setdefault(img.id, {"Config": f"{img.id[7:]}.json", "RepoTags": [],
                                          "Layers": [f"{d[7:]}/layer.tar" for d in img.layers]})
        entry["RepoTags"].append(img.ref)
    return json.dumps(list(by_id.values()), separators=(",", ":")).encode()


def oci_index(manifest: BundleManifest, images: list[ImageEntry]) -> bytes:
    """OCI layout ``index.json``: each image's original manifest, by digest, with both name annotations."""
    entries = []
    for img in images:
        blob = manifest.blob_map[img.manifest_digest]
        _, tag = split_ref(img.ref)
        entries.append({"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size,
                        "annotations": {"io.containerd.image.name": qualified_name(img.ref),
                                        "org.opencontainers.image.ref.name": tag}})
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries},
                      separators=(",", ":")).encode()


OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


def archive_name(blob: BlobEntry, store: str) -> str:
    if store == "containerd":
        return f"blobs/sha256/{blob.digest[7:]}"
    return f"{blob.digest[7:]}.json" if blob.kind == "config" else f"{blob.digest[7:]}/layer.tar"


class ArchiveWriter:
    """A tar stream written member by member (``tarfile`` only makes the headers).

    After ``aborted`` is set it writes nothing more, so a cut stream stays cut: the engine
    never sees a tidy end of an archive that lacks its index.
    """

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.aborted = False

    def _write(self, data: bytes | memoryview) -> None:
        if not self.aborted:
            self.out.write(data)

    def add(self, name: str, size: int, read: Callable[[int], bytes]) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        self._write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict"))
        left = size
        while left:
            chunk = read(min(CHUNK, left))
            if not chunk:
                raise IntegrityError(f"{name} ended {left} bytes early", BAD_BUNDLE)
            if len(chunk) > left:
                raise IntegrityError(f"{name} is longer than its declared {size} bytes", BAD_BUNDLE)
            self._write(chunk)
            left -= len(chunk)
        if size % tarfile.BLOCKSIZE:
            self._write(tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def add_bytes(self, name: str, data: bytes) -> None:
        view = memoryview(data)
        pos = 0

        def read(n: int) -> bytes:
            nonlocal pos
            out = view[pos:pos + n]
            pos += len(out)
            return bytes(out)
        self.add(name, len(data), read)

    def close(self) -> None:
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))


def _decoder() -> zstandard.ZstdDecompressor:
    return zstd_decompressor()


class _ZstdLayerToTar:
    """A zstd-compressed layer blob decoded to its tar, for engines that refuse zstd layer files.

    The tar member's size must be known before its bytes: it comes from the zstd frame header
    (``Frame_Content_Size``); a layer that does not record it cannot be sent to such an engine.
    """

    def __init__(self, blob_reader: BlobStream, diff_id: str) -> None:
        head = blob_reader.read(min(CHUNK, blob_reader.left)) if blob_reader.left else b""
        try:
            size = zstandard.frame_content_size(head)
        except zstandard.ZstdError:
            size = -1
        if size < 0:
            raise EngineError(
                f"the Docker engine at {engine_name()} cannot load zstd-compressed layers (it predates Engine 23), "
                f"and layer {blob_reader.blob.digest} does not record its uncompressed size",
                "Load on Engine 23 or newer, or build the bundle with --recompress zstd (plain layer tars).")
        self.size = size
        self.diff_id = diff_id
        self.hash = hashlib.sha256()
        self.blob_reader = blob_reader
        self._head = head
        self._dec = _decoder().stream_reader(self, read_size=CHUNK, read_across_frames=True)

    def read(self, n: int = -1) -> bytes:
        """The compressed side, for the decoder."""
        if self._head:
            n = len(self._head) if n is None or n < 0 else n
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self.blob_reader.read(n if n and n > 0 else CHUNK) if self.blob_reader.left else b""

    def read_tar(self, n: int) -> bytes:
        try:
            data = self._dec.read(n)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"layer {self.blob_reader.blob.digest} does not decode as zstd ({exc})",
                                 BAD_BUNDLE) from None
        self.hash.update(data)
        return data

    def finish(self) -> None:
        if self.read_tar(1):
            raise IntegrityError(f"layer {self.blob_reader.blob.digest} decodes to more than its frame header says",
                                 BAD_BUNDLE)
        self.blob_reader.finish()
        if "sha256:" + self.hash.hexdigest() != self.diff_id:
            raise IntegrityError(f"layer {self.blob_reader.blob.digest} does not decode to its diff_id {self.diff_id}",
                                 BAD_BUNDLE)


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


def write_archive(out: IO[bytes], vb: VerifiedBundle, plan: LoadPlan,
                  on_bytes: Callable[[int], None] | None = None) -> None:
    """The whole archive for ``plan.load`` (docker-archive or OCI layout by ``plan.store``), read from the
    payload once, into ``out``. Every segment of every part is checked, even of blobs not sent."""
    manifest = vb.manifest
    by_path = {b.path: b for b in manifest.blobs}
    diff_of = {layer: diff for img in manifest.images for layer, diff in zip(img.layers, img.diff_ids)}
    reader = SegmentReader(manifest.parts, manifest.segment_size, vb.folders.locate_for_reading(manifest.parts),
                           on_bytes=on_bytes)
    archive = ArchiveWriter(out)
    containerd = plan.store == "containerd"
    try:
        if containerd:
            archive.add_bytes("oci-layout", OCI_LAYOUT)
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
                    archive.add_bytes(archive_name(blob, plan.store), data)
                continue
            layers_started = True
            if blob.digest not in plan.send:
                continue  # iter_members skips its bytes; the SegmentReader still checks them
            compression = LAYER_TYPES.get(blob.media_type, "none")
            if not containerd and compression == "zstd" and not plan.zstd_layers_ok:
                tar = _ZstdLayerToTar(content, diff_of.get(blob.digest, ""))
                archive.add(archive_name(blob, plan.store), tar.size, tar.read_tar)
                tar.finish()
            else:
                archive.add(archive_name(blob, plan.store), blob.size, content.read)
                content.finish()
        absent = sorted(set(plan.send) - seen)
        if absent:
            raise IntegrityError(f"the payload lacks {len(absent)} blob(s) the manifest lists: " + ", ".join(absent[:5]),
                                 BAD_BUNDLE)
        if containerd:
            archive.add_bytes("index.json", oci_index(manifest, plan.load))
        else:
            archive.add_bytes("manifest.json", docker_archive_manifest(plan.load))
        archive.close()
    except BaseException:
        archive.aborted = True
        raise
    finally:
        reader.close()


class _Aborted(Exception):
    pass


@dataclass
class LoadResult:
    plan: LoadPlan
    messages: list[str] = field(default_factory=list)
    sent_bytes: int = 0


def stream_load(client: docker.DockerClient, vb: VerifiedBundle, plan: LoadPlan,
                on_bytes: Callable[[int], None] | None = None) -> list[str]:
    """Send the archive; return the engine's messages; raise on any error from either side."""
    rfd, wfd = os.pipe()
    try:  # a 1 MiB pipe (Linux): fewer wake-ups between the writer thread and the upload
        import fcntl
        fcntl.fcntl(wfd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except OSError:
        pass
    failed: list[BaseException] = []

    def writer() -> None:
        try:
            # On an error the file is closed without a tar end: the engine only ever sees a cut stream.
            with os.fdopen(wfd, "wb", buffering=CHUNK) as out:
                write_archive(out, vb, plan, on_bytes)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            failed.append(exc)

    def body() -> Iterator[bytes]:
        while True:
            chunk = os.read(rfd, PIPE_SIZE)
            if not chunk:
                break
            yield chunk
        thread.join()
        if failed:
            raise _Aborted()  # abort the upload mid-body: the engine drops the cut archive

    thread = threading.Thread(target=writer, name="image-archive-writer", daemon=True)
    thread.start()
    messages: list[str] = []
    errors: list[str] = []
    lost: BaseException | None = None
    try:
        stream = client.api.load_image(data=body(), quiet=True)
        for item in stream:
            if not isinstance(item, dict):
                continue
            problem = stream_error(item)
            if problem is not None:
                errors.append(problem)
                continue
            text = str(item.get("stream") or item.get("status") or "").strip()
            if text:
                messages.append(text)
    except _Aborted:
        pass
    except docker.errors.APIError as exc:
        errors.append(getattr(exc, "explanation", None) or str(exc))
    except (docker.errors.DockerException, requests.exceptions.RequestException, ConnectionError) as exc:
        lost = exc
    finally:
        os.close(rfd)  # a writer still blocked on the pipe now gets EPIPE and stops
        thread.join(timeout=30)  # (one waiting at a "next disc" prompt is left behind: it is a daemon thread)
    cause = next((e for e in failed if not isinstance(e, BrokenPipeError)), None)
    if cause is not None:
        raise cause  # the bundle's fault (IntegrityError...) comes first: the engine only saw a cut stream
    if errors:
        raise EngineError(f"the Docker engine at {engine_name()} failed to load the images: " + "; ".join(errors),
                          "Nothing was kept. Check the engine's free space and log, then run the same command again.")
    if lost is not None:
        raise down_error(lost, "load images into") from lost
    if failed:
        raise EngineError(f"the Docker engine at {engine_name()} stopped reading the images before their end",
                          "Check the engine's log (journalctl -u docker), then run the same command again.")
    return messages


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
        if plan.load:
            result.messages = stream_load(client, vb, plan, on_bytes)
            result.sent_bytes = plan.send_bytes
        for img in plan.tag_only:
            tag_image(client, plan.expected(img), img.ref)
        check_pinned(client, plan.load + plan.tag_only, plan.store)
    except BaseException as exc:
        problems = rollback(client, plan)
        if problems and isinstance(exc, AirgapError):
            raise exc.with_hint("Undoing this run's changes failed for: " + "; ".join(problems)
                                + " - check these by hand.") from exc
        raise
    return result
