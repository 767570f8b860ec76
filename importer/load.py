"""Stream a verified bundle's images into the engine, then prove each tag by its pinned image ID.

No reassembled copy on disk and bounded memory: a writer thread reads the payload
tarball across its parts (:class:`manifests.payload.PartReader`, which re-checks
every part's sha256), checks each member against the signed manifest, decompresses
zstd layers, hashes each blob against its digest, and writes an Engine 20.10
docker-archive (``manifest.json``, ``<id>.json`` configs, ``<diff_id>/layer.tar``)
into a pipe; the main thread streams the pipe's other end into
``client.api.load_image`` and checks every status item.

What is sent is only what the engine lacks: images already there under their tag are
skipped, images there under another name are only tagged, and a layer whose chain
the engine already holds is listed in ``manifest.json`` but not sent (Engine 20.10
then takes its own copy; delta bundles rely on the same behaviour). ``manifest.json``
is written last, after the final part's hash checked out, so a bad byte anywhere
aborts the upload before the engine has an image to register.

On any failure, every reference this run created or moved is removed or pointed
back at its previous image, and images this run added are removed again.

    plan = plan_load(client, vb.manifest, replace_tags=False)
    result = execute(client, vb, plan, on_bytes=bar.update)
"""
from __future__ import annotations

import hashlib
import io
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

from manifests.bundle import BLOB_PATH_RE, BlobEntry, BundleManifest, ImageEntry
from manifests.errors import AirgapError, BundleError, EngineError, IntegrityError, TagConflictError
from manifests.payload import PartReader

from .engine import HostImages, down_error, engine_errors, engine_name, image_id, inspect, split_ref
from .verify import VerifiedBundle

CHUNK = 1024 * 1024
PIPE_READ = 1024 * 1024


# --- what to do -----------------------------------------------------------------------------------
@dataclass
class LoadPlan:
    present: list[ImageEntry] = field(default_factory=list)   # tag already resolves to the pinned ID
    tag_only: list[ImageEntry] = field(default_factory=list)  # the image is here, under another name
    load: list[ImageEntry] = field(default_factory=list)      # must be streamed
    send: dict[str, BlobEntry] = field(default_factory=dict)  # digest -> blob to send
    previous: dict[str, str | None] = field(default_factory=dict)  # ref -> ID before this run (refs we touch)
    ids_before: set[str] = field(default_factory=set)
    replaced: list[str] = field(default_factory=list)         # refs that pointed elsewhere (--replace-tags)

    @property
    def send_bytes(self) -> int:
        return sum(b.size for b in self.send.values())

    def to_dict(self) -> dict[str, Any]:
        return {"present": [i.ref for i in self.present], "tag": [i.ref for i in self.tag_only],
                "load": [i.ref for i in self.load], "send_blobs": len(self.send), "send_bytes": self.send_bytes,
                "replaced_tags": self.replaced}


def missing_omitted(manifest: BundleManifest, images: list[ImageEntry], chains: set[tuple[str, ...]]
                    ) -> list[tuple[str, str]]:
    """(ref, diff_id) for every layer a delta bundle omitted whose chain this host does not hold."""
    in_bundle = {b.digest for b in manifest.blobs}
    missing = []
    for img in images:
        for k, diff in enumerate(img.diff_ids):
            if diff not in in_bundle and tuple(img.diff_ids[:k + 1]) not in chains:
                missing.append((img.ref, diff))
    return missing


def blobs_to_send(manifest: BundleManifest, images: list[ImageEntry], chains: set[tuple[str, ...]]
                  ) -> dict[str, BlobEntry]:
    """Configs of ``images`` and each layer whose chain the host lacks."""
    send: dict[str, BlobEntry] = {}
    for img in images:
        want = [img.id] + [d for k, d in enumerate(img.diff_ids) if tuple(img.diff_ids[:k + 1]) not in chains]
        for digest in want:
            blob = manifest.blob(digest)
            if blob is None:  # an omitted layer the host lacks: missing_omitted() reports it first
                raise BundleError(f"image {img.ref}: blob {digest} is not in the bundle")
            send[digest] = blob
    return send


def plan_load(client: docker.DockerClient, manifest: BundleManifest, *, replace_tags: bool) -> LoadPlan:
    host = HostImages.scan(client)
    plan = LoadPlan(ids_before=set(host.images))
    conflicts = []
    for img in manifest.images:
        current = image_id(client, img.ref)
        if current == img.id:
            plan.present.append(img)
            continue
        plan.previous[img.ref] = current
        if current is not None:
            conflicts.append(f"  {img.ref}: here {current[:19]}, the bundle pins {img.id[:19]}")
            plan.replaced.append(img.ref)
        (plan.tag_only if img.id in host.images else plan.load).append(img)
    if conflicts and not replace_tags:
        raise TagConflictError(
            "these tags already name other images on this engine; they are not moved silently:\n" + "\n".join(conflicts),
            "If the bundle's images should replace them, run again with --replace-tags "
            "(a failed load puts the old images back under these tags).")
    chains = host.chains()
    missing = missing_omitted(manifest, plan.load, chains)
    if missing:
        lines = [f"  {ref}: layer {diff}" for ref, diff in missing]
        raise BundleError(
            "this is a delta bundle, and this host lacks layers it left out:\n" + "\n".join(lines),
            "The receipt it was built from no longer matches this host (images removed since?). Run "
            "`overleaf-import inventory --out receipt.json`, carry it out and build a new bundle with --have, "
            "or build a full bundle.")
    plan.send = blobs_to_send(manifest, plan.load, chains)
    return plan


# --- the docker-archive stream --------------------------------------------------------------------
def archive_manifest(images: list[ImageEntry]) -> bytes:
    """Engine 20.10 docker-archive ``manifest.json``: one entry per image ID, every layer path listed."""
    by_id: dict[str, dict[str, Any]] = {}
    for img in images:
        entry = by_id.setdefault(img.id, {"Config": f"{img.id[7:]}.json", "RepoTags": [],
                                          "Layers": [f"{d[7:]}/layer.tar" for d in img.diff_ids]})
        entry["RepoTags"].append(img.ref)
    return json.dumps(list(by_id.values()), indent=None).encode()


def archive_name(blob: BlobEntry) -> str:
    return f"{blob.digest[7:]}.json" if blob.kind == "config" else f"{blob.digest[7:]}/layer.tar"


def check_member(member: tarfile.TarInfo, by_path: dict[str, BlobEntry]) -> BlobEntry:
    """The manifest's blob for a payload member; IntegrityError for anything else."""
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        raise IntegrityError(f"the payload holds a member {name!r} with an absolute path or '..': refused",
                             "The bundle is malformed or hostile: do not use it; ask its builder for a new one.")
    if not member.isreg():
        kind = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.DIRTYPE: "a folder",
                tarfile.CHRTYPE: "a device", tarfile.BLKTYPE: "a device", tarfile.FIFOTYPE: "a FIFO"}.get(
                    member.type, "not a regular file")
        target = f" pointing to {member.linkname!r}" if member.issym() or member.islnk() else ""
        raise IntegrityError(f"the payload member {name!r} is {kind}{target}: only regular blob files are allowed",
                             "The bundle is malformed or hostile: do not use it; ask its builder for a new one.")
    blob = by_path.get(name) if BLOB_PATH_RE.match(name) else None
    if blob is None:
        raise IntegrityError(f"the payload holds {name!r}, which the signed manifest does not list",
                             "The bundle is malformed: do not use it; ask its builder for a new one.")
    if member.size != blob.stored_size:
        raise IntegrityError(f"the payload member {name} is {member.size} bytes, the manifest says {blob.stored_size}",
                             "The bundle is malformed: ask its builder for a new one.")
    return blob


class _VerifyingReader:
    """A blob's content, at most ``blob.size`` bytes, hashed as it passes; ``finish()`` checks digest and end."""

    def __init__(self, src: IO[bytes], blob: BlobEntry) -> None:
        self.src = src
        self.blob = blob
        self.hash = hashlib.sha256()
        self.left = blob.size

    def read(self, n: int) -> bytes:
        data = self.src.read(min(n, self.left)) if self.left else b""
        if not data and self.left:
            raise IntegrityError(f"blob {self.blob.digest} ends {self.left} bytes early (the manifest says "
                                 f"{self.blob.size} bytes)", "The bundle is malformed: ask its builder for a new one.")
        self.hash.update(data)
        self.left -= len(data)
        return data

    def finish(self) -> None:
        if self.src.read(1):
            raise IntegrityError(f"blob {self.blob.digest} is longer than the manifest says ({self.blob.size} bytes)",
                                 "The bundle is malformed: ask its builder for a new one.")
        if "sha256:" + self.hash.hexdigest() != self.blob.digest:
            raise IntegrityError(f"blob {self.blob.digest} does not match its digest (content altered)",
                                 "The bundle is damaged or altered: ask its builder for a new one.")


class ArchiveWriter:
    """A tar stream written member by member without extra copies (``tarfile`` only makes the headers).

    After ``aborted`` is set it writes nothing more, so a cut stream stays cut: the engine
    never sees a tidy end of an archive that lacks ``manifest.json``.
    """

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.aborted = False

    def _write(self, data: bytes) -> None:
        if not self.aborted:
            self.out.write(data)

    def add(self, name: str, size: int, read: Callable[[int], bytes]) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        left = size
        while left:
            chunk = read(min(CHUNK, left))
            if not chunk:
                raise IntegrityError(f"{name} ended {left} bytes early")
            self._write(chunk)
            left -= len(chunk)
        if size % tarfile.BLOCKSIZE:
            self._write(tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def close(self) -> None:
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))


def write_archive(out: IO[bytes], vb: VerifiedBundle, plan: LoadPlan, on_bytes: Callable[[int], None] | None) -> None:
    """The whole docker-archive for ``plan.load``, read from the payload, into ``out``."""
    manifest = vb.manifest
    by_path = {b.path: b for b in manifest.blobs}
    dctx = zstandard.ZstdDecompressor()
    reader = PartReader(manifest.parts, vb.folders.locate_for_reading(manifest.parts), on_bytes=on_bytes)
    archive = ArchiveWriter(out)
    try:
        payload = tarfile.open(fileobj=reader, mode="r|", bufsize=CHUNK)
        seen: set[str] = set()
        for member in payload:
            blob = check_member(member, by_path)
            if blob.digest in seen:
                raise IntegrityError(f"the payload holds {member.name} twice", "Ask the bundle's builder for a new one.")
            seen.add(blob.digest)
            if blob.digest not in plan.send:
                continue  # tarfile skips its bytes; PartReader still hashes them
            src: IO[bytes] = payload.extractfile(member)  # type: ignore[assignment]
            if blob.encoding == "zstd":
                src = dctx.stream_reader(src, read_size=CHUNK, closefd=False)  # type: ignore[assignment]
            content = _VerifyingReader(src, blob)
            archive.add(archive_name(blob), blob.size, content.read)
            content.finish()
        while reader.read(CHUNK):  # the end-of-archive padding: PartReader checks the last part at its end
            pass
        absent = sorted(set(plan.send) - seen)
        if absent:
            raise IntegrityError(f"the payload lacks {len(absent)} blob(s) the manifest lists: " + ", ".join(absent[:5]),
                                 "The bundle is malformed: ask its builder for a new one.")
        data = io.BytesIO(archive_manifest(plan.load))
        archive.add("manifest.json", len(data.getvalue()), data.read)
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
        fcntl.fcntl(wfd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_READ)
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
            chunk = os.read(rfd, PIPE_READ)
            if not chunk:
                break
            yield chunk
        thread.join()
        if failed:
            raise _Aborted()  # abort the upload mid-body: the engine drops the cut archive

    thread = threading.Thread(target=writer, name="docker-archive-writer", daemon=True)
    thread.start()
    messages: list[str] = []
    errors: list[str] = []
    lost: BaseException | None = None
    try:
        stream = client.api.load_image(data=body(), quiet=True)
        for item in stream:
            if not isinstance(item, dict):
                continue
            if "errorDetail" in item or "error" in item:
                detail = item.get("errorDetail")
                errors.append(str((detail or {}).get("message") if isinstance(detail, dict) else detail or "")
                              or str(item.get("error")))
            text = str(item.get("stream") or item.get("status") or "").strip()
            if text:
                messages.append(text)
                if "Error unpacking" in text or text.lower().startswith("error"):
                    errors.append(text)
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
def check_pinned(client: docker.DockerClient, images: list[ImageEntry]) -> None:
    wrong = []
    for img in images:
        data = inspect(client, img.ref)
        if data is None:
            wrong.append(f"  {img.ref}: not on the engine after the load")
        elif data["Id"] != img.id:
            wrong.append(f"  {img.ref}: is {data['Id']}, the bundle pins {img.id}")
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
                repo, tag = split_ref(ref)
                client.api.tag(before, repo, tag, force=True)
        except (AirgapError, docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            problems.append(f"{ref}: {getattr(exc, 'message', exc)}")
    for img in plan.load:
        if img.id in plan.ids_before:
            continue
        try:
            data = inspect(client, img.id)
            if data is not None and not [t for t in data.get("RepoTags") or [] if t != "<none>:<none>"]:
                client.api.remove_image(img.id)
        except (AirgapError, docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            problems.append(f"{img.id}: {getattr(exc, 'message', exc)}")
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
            repo, tag = split_ref(img.ref)
            with engine_errors(f"tag {img.ref}"):
                client.api.tag(img.id, repo, tag, force=True)
        check_pinned(client, plan.load + plan.tag_only)
    except BaseException as exc:
        problems = rollback(client, plan)
        if problems and isinstance(exc, AirgapError):
            exc.hint = (exc.hint + " " if exc.hint else "") + (
                "Undoing this run's changes failed for: " + "; ".join(problems) + " - check these by hand.")
        raise
    return result
