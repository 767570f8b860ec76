"""``overleaf-bundle build``: plan -> fetch from registries -> signed, split bundle.

No Docker engine is needed: every image is fetched straight from its registry (through
``--mirror`` where given) with the Registry HTTP API, and its manifest, config and layer
blobs are kept byte for byte (:mod:`bundler.fetch`). Only images the plan marks as
local (``-with-texlive-full`` builds, which are not published) come from the local
engine (:mod:`bundler.local_export`); ``--recompress zstd`` re-encodes layers for sites
where media size matters more than exact digests (:mod:`bundler.recompress`).

The phases, each a method of :class:`Builder`:

1. **check** everything cheap first (plan, output folder, part size, receipt, Toolkit
   checkout, wheels). The CLI then loads the signing key (a wrong passphrase stops the
   build before anything is downloaded).
2. **fetch** every image into the work folder's content-addressed blob store; a finished
   blob is never fetched twice, a half-fetched one resumes (``<out>.partial/``).
3. **delta**: layers a ``--have`` receipt shows on the offline host are left out.
4. **write** the bundle into a stage folder: payload parts (strict ustar, hashed whole
   and per segment; for images fetched as the registries serve them, written during the
   fetch: each blob goes into the parts, in payload order, as soon as it is complete and
   verified in the store, see :class:`_PayloadPipe`), wheels with a hash-pinned requirements file, the Toolkit git
   bundle, the public key, README-OFFLINE.txt, then ``manifest.json.sig`` and
   ``manifest.json`` last; the manifest is parsed back and its signature checked, then
   the stage is renamed to ``--out``. An interrupted build never leaves a folder that
   verifies, and rerunning it reuses what was fetched.

    builder = Builder(BuildOptions(PlanRequest(current="4.2.8", target="6.2.2"), out=Path("bundle")))
    builder.check()
    summary = builder.run(load_signing_key(Path("release.key")))
"""
from __future__ import annotations

import errno
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manifests.atomic import atomic_write_bytes
from manifests.bundle import (DEFAULT_SEGMENT_SIZE, MANIFEST_NAME, MEDIA_SIZES, MIN_PART_SIZE, PUBKEY_NAME,
                              README_NAME, SIGNATURE_NAME, BlobEntry, BundleManifest, FileRef, iso, utc_now)
from manifests.catalog import load_catalog
from manifests.errors import DiskSpaceError, LocalImageMissingError, OutputError, UsageError
from manifests.imageref import canonical
from manifests.payload import PartWriter
from manifests.planner import PlanRequest, UpgradePlan, make_plan
from manifests.receipt import Receipt
from manifests.safeio import sha256_file
from manifests.signing import key_id, public_pem, sign, verify
from manifests.units import human_size

from .assemble import check_output, fs_type, payload_order, publish, stage_path, write_payload
from .cache import WorkDir
from .delta import registry_layers
from .offline_readme import offline_readme
from .packed import PackedImage
from .registry import Mirrors, check_platform, connect_engine
from .toolkit_bundle import BUNDLE_NAME as TOOLKIT_NAME, ToolkitInfo, check_toolkit, write_toolkit_bundle
from . import wheels as wheels_mod

DEFAULT_EXPIRY = timedelta(days=30)
DEFAULT_OFFLINE_PLATFORM = "manylinux_2_28_x86_64"
RECOMPRESS_CHOICES = ("zstd",)


@dataclass
class BuildOptions:
    request: PlanRequest
    out: Path
    max_part_size: int = MEDIA_SIZES["fat32"]
    platform: str = "linux/amd64"
    mirrors: tuple[str, ...] = ()
    toolkit: Path | None = None
    expires: timedelta = DEFAULT_EXPIRY
    sequence: int | None = None
    have: Path | None = None
    offline_python: str = "3.11"
    offline_platforms: tuple[str, ...] = (DEFAULT_OFFLINE_PLATFORM,)
    importer: bool = True
    force: bool = False
    work_dir: Path | None = None
    keep_work: bool = False
    recompress: str | None = None
    workers: int = 4
    segment_size: int = DEFAULT_SEGMENT_SIZE


class _NullBar:
    def __enter__(self) -> "_NullBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass


class Reporter:
    """What the build tells its user; the CLI gives one with progress bars, the default is silent."""

    def log(self, msg: str) -> None:
        pass

    def warn(self, msg: str) -> None:
        pass

    def bar(self, total: int | None, desc: str, unit: str = "B") -> Any:
        return _NullBar()


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` (a positive whole number and a unit)."""
    t = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if len(t) < 2 or len(t) > 8 or t[-1] not in units or not t[:-1].isdigit() or int(t[:-1]) <= 0:
        raise UsageError(f"--expires {text!r} is not a duration", "Use e.g. 30d, 12h, 2w (s, m, h, d, w).")
    return timedelta(seconds=int(t[:-1]) * units[t[-1]])


def check_part_size(size: int) -> int:
    if size < MIN_PART_SIZE:
        raise UsageError(f"--max-part-size {size} bytes is below the minimum of {MIN_PART_SIZE} bytes (1 MiB)",
                         "Parts must hold at least 1 MiB so that a bundle does not become thousands of files; "
                         "use e.g. 700M (CD), dvd, bd25, fat32 (the default) or a size like 2G.")
    return size


def image_order(plan: UpgradePlan) -> list[str]:
    """The plan's images in the order its steps first use them."""
    seen: list[str] = []
    for s in plan.steps:
        for i in s.images:
            if i not in seen:
                seen.append(i)
    return seen


@dataclass
class _Timer:
    times: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.times[name] = round(self.times.get(name, 0.0) + time.monotonic() - t, 3)


class Builder:
    def __init__(self, opts: BuildOptions, reporter: Reporter | None = None) -> None:
        self.o = opts
        self.r = reporter or Reporter()
        self.out = Path(opts.out).expanduser().absolute()
        self.work_path = (Path(opts.work_dir).expanduser().absolute() if opts.work_dir
                          else self.out.with_name(self.out.name + ".partial"))
        self.plan: UpgradePlan | None = None
        self.receipt: Receipt | None = None
        self.toolkit: ToolkitInfo | None = None
        self.mirrors = Mirrors()
        self.platform = "linux/amd64"

    # --- 1. checks -----------------------------------------------------------------------
    def check(self) -> UpgradePlan:
        o = self.o
        self.platform = check_platform(o.platform)
        self.mirrors = Mirrors.parse(o.mirrors)
        check_part_size(o.max_part_size)
        if o.recompress not in (None, *RECOMPRESS_CHOICES):
            raise UsageError(f"--recompress {o.recompress!r} is not supported", "Use --recompress zstd, or leave it "
                             "out to keep every image exactly as the registry serves it.")
        if not 1 <= o.workers <= 32:
            raise UsageError("--workers must be from 1 to 32")
        if o.expires <= timedelta(0):
            raise UsageError("--expires must be in the future")
        if o.sequence is not None and not 0 <= o.sequence < 2**63:
            raise UsageError("--sequence must be from 0 to 2^63 - 1")
        if self.out.name in ("", ".", "..") or self.out == Path(self.out.anchor):
            raise OutputError(f"--out {o.out} is not a usable folder name",
                              "Name a new folder, e.g. --out bundle-6.2.2.")
        w, out = self.work_path, self.out
        if w == out or out in w.parents or w in out.parents:
            raise UsageError("--work-dir must be outside --out (and the other way round)")
        check_output(self.out, o.force)
        existing = self.out if self.out.exists() else self.out.parent
        if fs_type(existing) in ("vfat", "msdos") and o.max_part_size > MEDIA_SIZES["fat32"]:
            raise UsageError(f"--out {self.out} is on a FAT file system, which cannot hold files over 4 GiB - 1, "
                             f"and --max-part-size is {o.max_part_size}", "Use --max-part-size fat32 (the default).")
        self.plan = make_plan(load_catalog(), o.request)
        if not self.plan.images:
            raise UsageError(f"the plan from {self.plan.current} to {self.plan.target} needs no images: "
                             "there is nothing to bundle", "Check --from and --to (`overleaf-bundle plan`).")
        for ref in self.plan.images:
            canonical(ref)
        if o.have is not None:
            self.receipt = Receipt.load(Path(o.have))
        if o.toolkit is not None:
            self.toolkit = check_toolkit(Path(o.toolkit))
            if self.toolkit.dirty:
                self.r.warn(f"the Toolkit checkout {self.toolkit.path} has uncommitted changes: only the commit "
                            f"{self.toolkit.commit[:12]} is bundled")
        if o.importer:
            wheels_mod.check_available()
        return self.plan

    def needed_by(self, ref: str) -> str:
        assert self.plan is not None
        return ", ".join(s["id"] for s in self.plan.to_dict()["steps"] if ref in s["images"])

    @property
    def local_refs(self) -> list[str]:
        assert self.plan is not None
        return [r for r in image_order(self.plan) if r in self.plan.local_images]

    @property
    def registry_refs(self) -> list[str]:
        assert self.plan is not None
        return [r for r in image_order(self.plan) if r not in self.plan.local_images]

    # --- the build ---------------------------------------------------------------------------
    def run(self, key: Ed25519PrivateKey) -> dict[str, Any]:
        if self.plan is None:
            self.check()
        timer = _Timer()
        t0 = time.monotonic()
        work = WorkDir(self.work_path).open()
        payload: tuple[PartWriter, list[BlobEntry]] | None = None
        try:
            if self.pipelined:
                with timer.phase("fetch+payload"):   # the payload is written while the layers download
                    images, omitted, payload = self._fetch_writing(work)
            else:
                with timer.phase("fetch"):
                    images = self._fetch(work)
                if self.o.recompress:
                    with timer.phase("recompress"):
                        images = self._recompress(work, images)
                omitted = self._delta(images)
            wheel_paths: list[Path] = []
            if self.o.importer:
                with timer.phase("wheels"):
                    self.r.log("collecting the importer's wheels")
                    wheel_paths = wheels_mod.collect_wheels(work.wheels, python=self.o.offline_python,
                                                            platforms=self.o.offline_platforms, log=self.r.log)
            with timer.phase("write" if payload is None else "finish"):   # finish: the files, sign, publish
                summary = self._write_guarded(key, work, images, omitted, wheel_paths, payload)
        finally:
            work.close()
        summary["images"] = len(images)
        summary["upstream_bytes"] = sum(b.size for b, _ in _unique_blobs(images).values())
        summary["omitted_layers"] = len(omitted)
        summary["work_dir"] = str(self.work_path) if self.o.keep_work else None
        if not self.o.keep_work:
            work.remove()
        timer.times["total"] = round(time.monotonic() - t0, 3)
        summary["seconds"] = timer.times
        return summary

    # --- 2. fetch --------------------------------------------------------------------------
    def _fetch(self, work: WorkDir) -> list[PackedImage]:
        from .fetch import BlobStore, fetch_images

        store = BlobStore(work.path / "store")
        images: dict[str, PackedImage] = {}
        refs = self.registry_refs
        if refs:
            self.r.log(f"fetching {len(refs)} image(s) from their registries"
                       + (f" through {', '.join(self.mirrors.to_list())}" if self.mirrors.rules else ""))
            with self.r.bar(None, "fetch") as bar:
                try:
                    fetched = fetch_images(refs, self.mirrors, self.platform, store, workers=self.o.workers,
                                           on_bytes=bar.update, log=self.r.log, needed_by=self.needed_by)
                except OSError as exc:
                    self._raise_if_full(exc, f"while downloading into {store.root}", work)
                    raise
            for f in fetched:
                images[f.ref] = PackedImage.from_fetched(f, store)
        local = self.local_refs
        if local:
            from .local_export import export_local

            self.r.log(f"exporting {len(local)} local-only image(s) from the engine: {', '.join(local)}")
            client = connect_engine()
            with self.r.bar(None, "export") as bar:
                for ref in local:
                    try:
                        images[ref] = PackedImage.from_reencoded(export_local(client, ref, store.root,
                                                                              on_bytes=bar.update))
                    except LocalImageMissingError as exc:
                        raise LocalImageMissingError(f"{exc.message}, needed by plan step(s) {self.needed_by(ref)}",
                                                     exc.hint) from None
                    except OSError as exc:
                        self._raise_if_full(exc, f"while exporting {ref} into {store.root}", work)
                        raise
        return [images[r] for r in image_order(self.plan) if r in images]  # type: ignore[arg-type]

    @property
    def pipelined(self) -> bool:
        """Whether the payload is written during the fetch: every image comes from a registry as it is
        served (no ``--recompress``, no local image: those blobs exist only once the fetch is over)."""
        return not self.o.recompress and not self.local_refs

    def _fetch_writing(self, work: WorkDir) -> tuple[list[PackedImage], set[str], tuple[PartWriter, list]]:
        """The fetch, with the payload written into the stage folder while the layers download.

        Once every image is resolved (manifests and configs in the store) the payload order is known;
        a writer thread then copies each blob into the parts as soon as the fetch has it complete and
        verified, while the later layers still download. A failed write does not stop the fetch (what
        is fetched is kept for the next run); its error is raised once the fetch is over.
        """
        from .fetch import BlobStore, fetch_images

        store = BlobStore(work.path / "store")
        stage, _ = stage_path(self.out, self.work_path)
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)
        pipe = _PayloadPipe(stage, self.o.max_part_size, self.o.segment_size)
        got: dict[str, Any] = {}

        def resolved(fetched: list) -> None:
            by_ref = {f.ref: PackedImage.from_fetched(f, store) for f in fetched}
            images = [by_ref[r] for r in image_order(self.plan) if r in by_ref]  # type: ignore[arg-type]
            got["images"], got["omitted"] = images, self._delta(images)
            items = self._payload_items(stage, images, got["omitted"])
            pipe.start(items, ready={d for i in images for d in (i.manifest_digest, i.id)})

        refs = self.registry_refs
        self.r.log(f"fetching {len(refs)} image(s) from their registries"
                   + (f" through {', '.join(self.mirrors.to_list())}" if self.mirrors.rules else "")
                   + "; the payload is written as the blobs arrive")
        try:
            with self.r.bar(None, "fetch") as bar:
                try:
                    fetch_images(refs, self.mirrors, self.platform, store, workers=self.o.workers,
                                 on_bytes=bar.update, log=self.r.log, needed_by=self.needed_by,
                                 on_resolved=resolved, on_blob=pipe.ready)
                except OSError as exc:
                    self._raise_if_full(exc, f"while downloading into {store.root}", work)
                    raise
        except BaseException:
            pipe.abort()
            shutil.rmtree(stage, ignore_errors=True)
            raise
        try:
            payload = pipe.finish()
        except BaseException as exc:
            shutil.rmtree(stage, ignore_errors=True)
            if isinstance(exc, OSError):
                self._raise_if_full(exc, f"while writing the bundle into {stage}", work)
            raise
        return got["images"], got["omitted"], payload

    def _recompress(self, work: WorkDir, images: list[PackedImage]) -> list[PackedImage]:
        from .fetch import BlobStore
        from .recompress import recompress_image

        store = BlobStore(work.path / "store")
        out = []
        with self.r.bar(sum(i.size for i in images if i.exact), "recompress") as bar:
            for img in images:
                if not img.exact:
                    out.append(img)
                    continue
                self.r.log(f"{img.ref}: re-encoding its layers (zstd); its digest will differ from upstream")
                out.append(PackedImage.from_reencoded(recompress_image(
                    store.root, img.ref, img.manifest_digest, upstream_digest=img.upstream_digest,
                    on_bytes=bar.update)))
        return out

    # --- 3. delta --------------------------------------------------------------------------
    def _delta(self, images: list[PackedImage]) -> set[str]:
        if self.receipt is None:
            return set()
        if self.receipt.store == "containerd":
            found = self.receipt.resolve_blobs(registry_layers(self.mirrors, self.platform))
            self.r.log(f"receipt (containerd store): the registry knows {found} of its "
                       f"{len(self.receipt.images)} image(s), whose layer blobs the host holds")
        omitted = self.receipt.omitted([(i.diff_ids, i.layers) for i in images])
        self.r.log(f"receipt ({self.receipt.store} store): {len(omitted)} layer(s) are on the offline host "
                   "already and are left out")
        return omitted

    # --- 4. write --------------------------------------------------------------------------
    def _raise_if_full(self, exc: OSError, where: str, work: WorkDir) -> None:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskSpaceError(f"no space left on the device {where}; nothing that looks like a bundle was "
                                 f"left behind, and what was fetched into {work.path} is kept",
                                 "Free space (or choose another --out, or a --work-dir on a bigger disk), then "
                                 "run the same build again: fetched blobs are reused.") from exc

    def _write_guarded(self, key: Ed25519PrivateKey, work: WorkDir, images: list[PackedImage], omitted: set[str],
                       wheel_paths: list[Path], payload: tuple[PartWriter, list] | None = None) -> dict[str, Any]:
        stage, mode = stage_path(self.out, self.work_path)
        try:
            return self._write(key, stage, mode, images, omitted, wheel_paths, payload)
        except BaseException as exc:
            shutil.rmtree(stage, ignore_errors=True)
            if isinstance(exc, OSError):
                self._raise_if_full(exc, f"while writing the bundle into {stage}", work)
            raise

    def _payload_items(self, stage: Path, images: list[PackedImage],
                       omitted: set[str]) -> list[tuple[BlobEntry, Path]]:
        """The payload's blobs in payload order (said in the log; a warning when the stage lacks the room)."""
        blobs = _unique_blobs(images)
        order = payload_order([(i.manifest_digest, i.id, i.layers) for i in images], set(blobs) - omitted)
        total = sum(blobs[d][0].stored_size for d in order)
        free = shutil.disk_usage(stage).free
        if free < total + 1024 * 1024:
            self.r.warn(f"only {human_size(free)} free where the bundle is written ({stage.parent}), and it needs about "
                        f"{human_size(total)}: the write will probably run out of space")
        self.r.log(f"writing {len(order)} blob(s), {human_size(total)}, into parts of at most "
                   f"{human_size(self.o.max_part_size)}")
        return [blobs[d] for d in order]

    def _write_payload(self, stage: Path, images: list[PackedImage], omitted: set[str]) -> tuple[PartWriter, list]:
        items = self._payload_items(stage, images, omitted)
        with self.r.bar(sum(e.stored_size for e, _ in items), "write") as bar:
            writer = PartWriter(stage, self.o.max_part_size, self.o.segment_size)
            try:
                write_payload(writer, items, on_bytes=bar.update)
            finally:
                writer.close()
        return writer, [e for e, _ in items]

    def _write_files(self, stage: Path, wheel_paths: list[Path]) -> tuple[list[FileRef], dict | None]:
        files: list[FileRef] = []
        if wheel_paths:
            (stage / "wheels").mkdir()
            for w in wheel_paths:
                shutil.copyfile(w, stage / "wheels" / w.name)
                files.append(_file_ref(stage, f"wheels/{w.name}"))
            name = wheels_mod.write_requirements(stage / "wheels", [stage / "wheels" / w.name for w in wheel_paths])
            files.append(_file_ref(stage, f"wheels/{Path(name).name}"))
        toolkit = None
        if self.toolkit is not None:
            write_toolkit_bundle(self.toolkit, stage / TOOLKIT_NAME)
            files.append(_file_ref(stage, TOOLKIT_NAME))
            toolkit = {"commit": self.toolkit.commit, "file": TOOLKIT_NAME}
            if self.toolkit.branch:
                toolkit["branch"] = self.toolkit.branch
        return files, toolkit

    def _write(self, key: Ed25519PrivateKey, stage: Path, mode: str, images: list[PackedImage], omitted: set[str],
               wheel_paths: list[Path], payload: tuple[PartWriter, list] | None = None) -> dict[str, Any]:
        plan = self.plan
        assert plan is not None
        o = self.o
        if payload is None:
            if stage.exists():
                shutil.rmtree(stage)
            stage.mkdir(parents=True)
            writer, stored = self._write_payload(stage, images, omitted)
        else:   # written during the fetch (_fetch_writing), into this stage
            writer, stored = payload
        files, toolkit = self._write_files(stage, wheel_paths)

        created = utc_now()
        expires = created + o.expires
        kid = key_id(key.public_key())
        sequence = o.sequence if o.sequence is not None else int(time.time())
        delta = None
        if self.receipt is not None:
            delta = {"receipt_sha256": self.receipt.sha256, "store": self.receipt.store,
                     "omitted_layers": sorted(omitted)}
        bundle_id = uuid.uuid4().hex
        plan_dict = plan.to_dict()
        entries = [i.entry() for i in images]
        readme = offline_readme(
            edition=plan.edition, from_version=plan.current, to_version=plan.target, bundle_id=bundle_id,
            created=iso(created), expires=iso(expires), sequence=sequence, key_id=kid, platform=self.platform,
            plan=plan_dict, images=[(i.ref, i.manifest_digest if i.exact else i.id) for i in entries],
            parts=[(p.name, p.size) for p in writer.parts], payload_size=writer.total,
            wheels=bool(wheel_paths), toolkit=toolkit, delta=delta)
        atomic_write_bytes(stage / README_NAME, readme.encode("utf-8"))
        files.append(_file_ref(stage, README_NAME))
        atomic_write_bytes(stage / PUBKEY_NAME, public_pem(key.public_key()))

        manifest = BundleManifest(
            bundle_id=bundle_id, tool_version=_tool_version(), product="overleaf", edition=plan.edition,
            from_version=plan.current, to_version=plan.target, created=iso(created), expires=iso(expires),
            sequence=sequence, key_id=kid, platform=self.platform, plan=plan_dict, images=tuple(entries),
            blobs=tuple(stored), parts=tuple(writer.parts), payload_size=writer.total,
            max_part_size=o.max_part_size, segment_size=o.segment_size, files=tuple(files), toolkit=toolkit,
            delta=delta, catalog_overlay=_catalog_overlay(plan), recompress=o.recompress)
        data = manifest.to_bytes()
        signature = sign(key, data)
        # self-check before anything is published: the manifest parses and the signature verifies
        BundleManifest.from_bytes(data)
        if not verify(key.public_key(), signature, data):
            raise OutputError("internal error: the fresh signature does not verify")
        atomic_write_bytes(stage / SIGNATURE_NAME, signature)
        atomic_write_bytes(stage / MANIFEST_NAME, data)   # last: its presence makes the folder a bundle
        publish(stage, self.out, mode)
        extra = sum((self.out / n).stat().st_size for n in (MANIFEST_NAME, SIGNATURE_NAME, PUBKEY_NAME))
        return {
            "bundle": str(self.out), "bundle_id": bundle_id, "key_id": kid, "sequence": sequence,
            "created": iso(created), "expires": iso(expires), "edition": plan.edition,
            "from": plan.current, "to": plan.target, "platform": self.platform,
            "exact": o.recompress is None, "recompress": o.recompress,
            "payload_bytes": writer.total, "blobs": len(stored),
            "bundle_bytes": writer.total + sum(f.size for f in files) + extra,
            "max_part_size": o.max_part_size,
            "parts": [{"name": p.name, "size": p.size, "sha256": p.sha256} for p in writer.parts],
            "files": [{"name": f.name, "size": f.size} for f in files],
            "image_digests": [{"ref": e.ref, "manifest_digest": e.manifest_digest, "upstream_digest":
                               e.upstream_digest, "config_digest": e.id, "exact": e.exact} for e in entries],
            "toolkit": toolkit, "delta": ({"receipt_sha256": delta["receipt_sha256"], "store": delta["store"],
                                           "omitted_layers": len(omitted)} if delta else None),
        }


class _Aborted(Exception):
    """The fetch failed: the payload writer stops waiting for blobs that will not come."""


class _PayloadPipe:
    """The payload written on a thread of its own while the fetch runs (:meth:`Builder._fetch_writing`).

    :meth:`start` gets the blobs in payload order; the writer copies each into a
    :class:`~manifests.payload.PartWriter` as soon as :meth:`ready` named it (the fetch stage calls it when
    the blob is complete and verified in the store), so the parts grow while later layers download.
    The blob store stays the source of truth: an interrupted build resumes from it, and the size of each
    blob is checked again as it is copied (:func:`bundler.assemble.write_payload`).
    """

    def __init__(self, stage: Path, max_part_size: int, segment_size: int) -> None:
        self.stage, self.max_part_size, self.segment_size = stage, max_part_size, segment_size
        self._cond = threading.Condition()
        self._ready: set[str] = set()
        self._aborted = False
        self._thread: threading.Thread | None = None
        self._result: tuple[PartWriter, list[BlobEntry]] | None = None
        self._error: BaseException | None = None

    def ready(self, digest: str) -> None:
        """``digest`` is complete and verified in the store (called from the fetch threads)."""
        with self._cond:
            self._ready.add(digest)
            self._cond.notify_all()

    def start(self, items: list[tuple[BlobEntry, Path]], ready: set[str]) -> None:
        """Start writing ``items`` (payload order); ``ready``: the digests the store holds already."""
        with self._cond:
            self._ready |= ready
        self._thread = threading.Thread(target=self._run, args=(items,), name="payload-writer", daemon=True)
        self._thread.start()

    def _in_order(self, items: list[tuple[BlobEntry, Path]]) -> Iterator[tuple[BlobEntry, Path]]:
        for entry, path in items:
            with self._cond:
                while entry.digest not in self._ready and not self._aborted:
                    self._cond.wait()
                if self._aborted:
                    raise _Aborted()
            yield entry, path

    def _run(self, items: list[tuple[BlobEntry, Path]]) -> None:
        try:
            writer = PartWriter(self.stage, self.max_part_size, self.segment_size)
            try:
                write_payload(writer, self._in_order(items))
            finally:
                writer.close()
            self._result = (writer, [e for e, _ in items])
        except BaseException as exc:  # noqa: BLE001 - raised by finish() in the build's thread
            self._error = exc

    def abort(self) -> None:
        """The fetch failed: stop the writer (it may be waiting for a blob) and wait for it."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def finish(self) -> tuple[PartWriter, list[BlobEntry]]:
        """After a fetch that succeeded: wait for the last blobs to be written; the writer's error, if any."""
        if self._thread is None:
            raise OutputError("internal error: the payload writer was never started")
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def _unique_blobs(images: list[PackedImage]) -> dict[str, tuple[BlobEntry, Path]]:
    blobs: dict[str, tuple[BlobEntry, Path]] = {}
    for img in images:
        for entry, path in img.blobs:
            blobs.setdefault(entry.digest, (entry, path))
    return blobs


def _catalog_overlay(plan: UpgradePlan) -> dict[str, Any] | None:
    """The catalog overlay the plan was made with (newly published patches), for the importer to plan alike."""
    from manifests.catalog import overlay_for_manifest

    return overlay_for_manifest(plan)


def _file_ref(stage: Path, name: str) -> FileRef:
    return FileRef(name, *sha256_file(stage / name))


def _tool_version() -> str:
    try:
        return metadata.version("overleaf-airgap")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def format_summary(s: dict[str, Any]) -> str:
    up, bundle = s["upstream_bytes"], s["bundle_bytes"]
    lines = [f"Bundle written to {s['bundle']}",
             f"  Overleaf {s['edition']} {s['from']} -> {s['to']}, {s['platform']}",
             f"  {s['images']} image(s), {s['blobs']} blob(s) "
             + ("exactly as the registries serve them" if s["exact"] else f"(layers re-encoded: {s['recompress']})")
             + (f", {s['omitted_layers']} layer(s) left out (the offline host has them)" if s["omitted_layers"]
                else ""),
             f"  upstream {human_size(up)} -> bundle {human_size(bundle)}",
             f"  payload {human_size(s['payload_bytes'])} in {len(s['parts'])} part(s) of at most "
             f"{human_size(s['max_part_size'])}" + (f", plus {len(s['files'])} file(s)" if s["files"] else "")]
    for d in s["image_digests"]:
        lines.append(f"    {d['ref']}  {d['manifest_digest'] if d['exact'] else d['config_digest'] + ' (config)'}")
    lines.append(f"  signed by {s['key_id']}, sequence {s['sequence']}, expires {s['expires']}")
    t = s["seconds"]
    lines.append("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    if s.get("work_dir"):
        lines.append(f"  work folder kept: {s['work_dir']}")
    return "\n".join(lines)
