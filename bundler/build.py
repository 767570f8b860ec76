"""``overleaf-bundle build``: plan -> pull -> export -> signed, split bundle.

The order of work, and why:

1. **Check** everything cheap first (:meth:`Builder.check`): the plan, the output
   folder, the part size, the receipt, the Toolkit checkout, whether the importer's
   wheels can be made. The CLI then loads the signing key (a wrong passphrase stops
   the build before anything is pulled).
2. **Pull** each image of the plan, in the order the steps use them, through the
   mirrors (or take it from the local engine when the plan marks it local), and tag
   it with its canonical name. Recorded in the work folder's state.
3. **Export** in one ``/images/get`` stream only the images whose config or layers are
   not cached yet; layers are hashed and zstd-compressed into the cache on the way
   (:mod:`bundler.export`). Layers a ``--have`` receipt shows on the host are left out.
4. **Write** the bundle into a stage folder: payload parts (:mod:`bundler.assemble`),
   wheels, Toolkit git bundle, public key, README-OFFLINE.txt, then ``manifest.json.sig``
   and ``manifest.json`` last. The manifest is parsed back and its signature checked,
   then the stage is renamed to ``--out``. So an interrupted build never leaves a
   folder that verifies; rerunning it reuses the cached blobs and pulls.

    builder = Builder(BuildOptions(PlanRequest(current="4.2.8", target="6.2.2"), out=Path("bundle")))
    builder.check()
    summary = builder.run(load_signing_key(Path("release.key")))
"""
from __future__ import annotations

import errno
import hashlib
import shutil
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
from manifests.bundle import (MANIFEST_NAME, MEDIA_SIZES, MIN_PART_SIZE, PUBKEY_NAME, README_NAME, SIGNATURE_NAME,
                              BundleManifest, FileRef, ImageEntry, canonical_json, iso, utc_now)
from manifests.catalog import load_catalog
from manifests.errors import DiskSpaceError, EngineError, OutputError
from manifests.payload import PartWriter
from manifests.planner import PlanRequest, UpgradePlan, make_plan
from manifests.signing import key_id, public_pem, sign, verify

from .assemble import blob_order, check_output, fs_type, publish, stage_path, write_payload
from .cache import BlobCache, WorkDir
from .delta import Receipt, omitted_layers
from .export import docker_save_estimate, export_images
from .offline_readme import offline_readme
from .registry import Mirrors, PulledImage, Puller, UsageError, canonical, check_platform, connect_engine
from .toolkit_bundle import BUNDLE_NAME as TOOLKIT_NAME, ToolkitInfo, check_toolkit, write_toolkit_bundle
from . import wheels as wheels_mod

DEFAULT_EXPIRY = timedelta(days=30)
DEFAULT_OFFLINE_PLATFORM = "manylinux_2_28_x86_64"


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


class _NullBar:
    def __enter__(self) -> "_NullBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
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
    if len(t) < 2 or t[-1] not in units or not t[:-1].isdigit() or int(t[:-1]) <= 0:
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


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"  # pragma: no cover


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
        if o.expires <= timedelta(0):
            raise UsageError("--expires must be in the future")
        if o.sequence is not None and o.sequence < 0:
            raise UsageError("--sequence must not be negative")
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
    def fingerprint(self) -> str:
        assert self.plan is not None
        return hashlib.sha256(canonical_json({"plan": self.plan.to_dict(), "platform": self.platform,
                                              "mirrors": self.mirrors.to_list()})).hexdigest()

    # --- 2-4. the build ---------------------------------------------------------------------
    def run(self, key: Ed25519PrivateKey) -> dict[str, Any]:
        if self.plan is None:
            self.check()
        assert self.plan is not None
        timer = _Timer()
        t0 = time.monotonic()
        work = WorkDir(self.work_path).open()
        try:
            return self._run(key, work, timer, t0)
        finally:
            work.close()

    def _run(self, key: Ed25519PrivateKey, work: WorkDir, timer: _Timer, t0: float) -> dict[str, Any]:
        plan = self.plan
        assert plan is not None
        o = self.o
        cache = work.blobs
        debris = cache.clean_tmp()
        if debris:
            self.r.log(f"removed {debris} unfinished cache file(s) of an interrupted build")
        state = work.load_state()
        same_build = state.get("fingerprint") == self.fingerprint
        pulled_before: dict[str, Any] = dict(state.get("images") or {}) if same_build else {}
        layer_sizes: dict[str, int] = dict(state.get("layer_sizes") or {})
        state.update({"fingerprint": self.fingerprint, "images": dict(pulled_before), "layer_sizes": layer_sizes,
                      "out": self.out.name})
        work.save_state(state)

        client = connect_engine()
        puller = Puller(client, self.mirrors, self.platform, self.needed_by)
        refs = image_order(plan)
        images: list[PulledImage] = []
        n_pulled = n_reused_pulls = 0

        # 2. pull
        with timer.phase("pull"), self.r.bar(len(refs), "pull", unit="img") as bar:
            for ref in refs:
                bar.set_postfix_str(ref)
                if ref in plan.local_images:
                    info = puller.take_local(ref)
                    self.r.log(f"{ref}: taken from the local engine ({info.id[:19]})")
                else:
                    prev = pulled_before.get(ref)
                    img = puller.local(ref) if prev else None
                    if prev and img is not None and img.id == prev.get("id"):
                        info = puller.describe(ref, img, "registry", prev.get("pulled_from"))
                        n_reused_pulls += 1
                        self.r.log(f"{ref}: pulled by the interrupted build, reused ({info.id[:19]})")
                    else:
                        self.r.log(f"{ref}: pulling {self.mirrors.map(ref)}")
                        info = puller.pull(ref, on_status=_pull_progress(bar, ref))
                        n_pulled += 1
                images.append(info)
                state["images"][ref] = info.to_dict()
                work.save_state(state)
                bar.update(1)

        # delta: what the host has already
        omitted: set[str] = set()
        if self.receipt is not None:
            omitted = omitted_layers([i.diff_ids for i in images], self.receipt.chain_ids)
            self.r.log(f"receipt: {len(omitted)} layer(s) are on the offline host already and are left out")

        # 3. export what is not cached
        configs = list(dict.fromkeys(i.id for i in images))
        layers = list(dict.fromkeys(d for i in images for d in i.diff_ids))
        stored = [d for d in layers if d not in omitted]
        wanted = configs + stored
        cached_before = {d for d in wanted if cache.has(d)}

        for d in cached_before:   # sizes of cached layers come with their cache entries
            if d in layers:
                layer_sizes.setdefault(d, cache.get(d).size)  # type: ignore[union-attr]

        def complete(img: PulledImage) -> bool:
            return img.id in cached_before and all(
                (d in cached_before or d in omitted) and d in layer_sizes for d in img.diff_ids)

        to_export = [i for i in images if not complete(i)]
        stream_bytes = 0
        with timer.phase("export"):
            if to_export:
                self.r.log(f"exporting {len(to_export)} image(s) in one stream"
                           + (f"; {len(cached_before)} blob(s) are cached already" if cached_before else ""))
                with self.r.bar(None, "export") as bar:
                    try:
                        res = export_images(client, to_export, cache, keep=lambda d: d not in omitted,
                                            on_bytes=bar.update)
                    except OSError as exc:
                        self._raise_if_full(exc, f"while caching blobs in {cache.root}", work)
                        raise
                stream_bytes = res.stream_bytes
                layer_sizes.update(res.layer_sizes)
                work.save_state(state)
            else:
                self.r.log(f"all {len(wanted)} blob(s) are cached already: nothing to export")
        missing = [d for d in wanted if not cache.has(d)]
        if missing:
            raise EngineError(f"{len(missing)} blob(s) are still missing after the export (e.g. {missing[0]})",
                              "Run the same build again.")

        # wheels
        wheel_paths: list[Path] = []
        if o.importer:
            with timer.phase("wheels"):
                self.r.log("collecting the importer's wheels")
                wheel_paths = wheels_mod.collect_wheels(work.wheels, python=o.offline_python,
                                                        platforms=o.offline_platforms, log=self.r.log)

        # 4. write
        blobs = {d: cache.get(d) for d in wanted}
        order = blob_order([(i.id, i.diff_ids) for i in images], set(wanted))
        stage, mode = stage_path(self.out, self.work_path)
        with timer.phase("write"):
            try:
                summary = self._write(key, stage, mode, images, blobs, order, omitted, layer_sizes, wheel_paths,
                                      cache)
            except BaseException as exc:
                shutil.rmtree(stage, ignore_errors=True)
                if isinstance(exc, OSError):
                    self._raise_if_full(exc, f"while writing the bundle into {stage}", work)
                raise

        reused = [d for d in wanted if d in cached_before]
        all_sizes = [layer_sizes.get(d, 0) for d in layers]
        full_export = len(to_export) == len(images)
        summary.update({
            "images": len(images),
            "unique_layers": len(layers),
            "omitted_layers": len(omitted),
            "blobs": len(wanted),
            "raw_bytes": sum(blobs[d].size for d in wanted),  # type: ignore[union-attr]
            "docker_save_bytes": stream_bytes if full_export else docker_save_estimate(
                all_sizes, [blobs[c].size for c in configs], len(images)),  # type: ignore[union-attr]
            "docker_save_measured": full_export,
            "pulled": n_pulled,
            "reused": {"blobs": len(reused), "blob_bytes": sum(blobs[d].stored_size for d in reused),  # type: ignore
                       "pulls": n_reused_pulls},
            "exported": {"images": len(to_export), "stream_bytes": stream_bytes},
            "work_dir": str(self.work_path) if o.keep_work else None,
        })
        if not o.keep_work:
            work.remove()
        timer.times["total"] = round(time.monotonic() - t0, 3)
        summary["seconds"] = timer.times
        return summary

    def _raise_if_full(self, exc: OSError, where: str, work: WorkDir) -> None:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskSpaceError(f"no space left on the device {where}; nothing that looks like a bundle was "
                                 f"left behind, and what is cached in {work.path} is kept",
                                 "Free space (or choose another --out, or a --work-dir on a bigger disk), then "
                                 "run the same build again: cached blobs are reused.") from exc

    def _write(self, key: Ed25519PrivateKey, stage: Path, mode: str, images: list[PulledImage], blobs: dict,
               order: list[str], omitted: set[str], layer_sizes: dict[str, int], wheel_paths: list[Path],
               cache: BlobCache) -> dict:
        plan = self.plan
        assert plan is not None
        o = self.o
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)
        total = sum(blobs[d].stored_size for d in order)
        need = total + sum(w.stat().st_size for w in wheel_paths) + 1024 * 1024
        free = shutil.disk_usage(stage).free
        if free < need:
            self.r.warn(f"only {_human(free)} free where the bundle is written ({stage.parent}), and it needs about "
                        f"{_human(need)}: the write will probably run out of space")
        self.r.log(f"writing {len(order)} blob(s), {_human(total)}, into parts of at most {_human(o.max_part_size)}")
        with self.r.bar(total, "write") as bar:
            writer = PartWriter(stage, o.max_part_size)
            try:
                write_payload(writer, [blobs[d] for d in order], on_bytes=bar.update,
                              on_damaged=lambda b: cache.remove(b.digest))
            finally:
                writer.close()

        files: list[FileRef] = []
        if wheel_paths:
            (stage / "wheels").mkdir()
            for w in wheel_paths:
                shutil.copyfile(w, stage / "wheels" / w.name)
                files.append(_file_ref(stage, f"wheels/{w.name}"))
        toolkit = None
        if self.toolkit is not None:
            write_toolkit_bundle(self.toolkit, stage / TOOLKIT_NAME)
            files.append(_file_ref(stage, TOOLKIT_NAME))
            toolkit = {"commit": self.toolkit.commit, "file": TOOLKIT_NAME}

        created = utc_now()
        expires = created + o.expires
        kid = key_id(key.public_key())
        sequence = o.sequence if o.sequence is not None else int(time.time())
        delta = None
        if self.receipt is not None:
            delta = {"receipt_sha256": self.receipt.sha256, "omitted_layers": sorted(omitted)}
        bundle_id = uuid.uuid4().hex
        plan_dict = plan.to_dict()
        readme = offline_readme(
            edition=plan.edition, from_version=plan.current, to_version=plan.target, bundle_id=bundle_id,
            created=iso(created), expires=iso(expires), sequence=sequence, key_id=kid, platform=self.platform,
            plan=plan_dict, images=[(i.ref, i.id) for i in images],
            parts=[(p.name, p.size) for p in writer.parts], payload_size=writer.total,
            wheels=bool(wheel_paths), toolkit=toolkit, delta=delta)
        atomic_write_bytes(stage / README_NAME, readme.encode("utf-8"))
        files.append(_file_ref(stage, README_NAME))
        atomic_write_bytes(stage / PUBKEY_NAME, public_pem(key.public_key()))

        entries = []
        for i in images:
            size = blobs[i.id].size + sum(layer_sizes.get(d, 0) for d in i.diff_ids)
            entries.append(ImageEntry(i.ref, i.id, i.diff_ids, i.platform, i.upstream_digest, i.source, size))
        manifest = BundleManifest(
            bundle_id=bundle_id, tool_version=_tool_version(), product="overleaf", edition=plan.edition,
            from_version=plan.current, to_version=plan.target, created=iso(created), expires=iso(expires),
            sequence=sequence, key_id=kid, platform=self.platform, plan=plan_dict, images=tuple(entries),
            blobs=tuple(blobs[d].entry for d in order), parts=tuple(writer.parts), payload_size=writer.total,
            max_part_size=o.max_part_size, files=tuple(files), toolkit=toolkit, delta=delta)
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
            "payload_bytes": writer.total,
            "bundle_bytes": writer.total + sum(f.size for f in files) + extra,
            "max_part_size": o.max_part_size,
            "parts": [{"name": p.name, "size": p.size, "sha256": p.sha256} for p in writer.parts],
            "files": [{"name": f.name, "size": f.size} for f in files],
            "toolkit": toolkit, "delta": ({"receipt_sha256": delta["receipt_sha256"],
                                           "omitted_layers": len(omitted)} if delta else None),
        }


def _pull_progress(bar: Any, ref: str):
    """Show the bytes downloaded so far for one image, from the engine's per-layer status."""
    layers: dict[str, tuple[int, int]] = {}
    last = [0.0]

    def on_status(status: dict) -> None:
        detail = status.get("progressDetail") or {}
        if status.get("status") == "Downloading" and detail.get("total"):
            layers[str(status.get("id"))] = (int(detail.get("current") or 0), int(detail["total"]))
            now = time.monotonic()
            if now - last[0] > 0.5:
                last[0] = now
                cur = sum(c for c, _ in layers.values())
                tot = sum(t for _, t in layers.values())
                bar.set_postfix_str(f"{ref} {_human(cur)}/{_human(tot)}")
    return on_status


def _file_ref(stage: Path, name: str) -> FileRef:
    h = hashlib.sha256()
    size = 0
    with open(stage / name, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
            size += len(chunk)
    return FileRef(name, size, h.hexdigest())


def _tool_version() -> str:
    try:
        return metadata.version("overleaf-airgap")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def format_summary(s: dict[str, Any]) -> str:
    raw, save, bundle = s["raw_bytes"], s["docker_save_bytes"], s["bundle_bytes"]
    lines = [f"Bundle written to {s['bundle']}",
             f"  Overleaf {s['edition']} {s['from']} -> {s['to']}, {s['platform']}",
             f"  {s['images']} image(s), {s['unique_layers']} unique layer(s)"
             + (f", {s['omitted_layers']} left out (the offline host has them)" if s["omitted_layers"] else ""),
             f"  raw {_human(raw)} (docker save: {_human(save)}{'' if s['docker_save_measured'] else ', estimated'})"
             f" -> bundle {_human(bundle)} ({bundle / save * 100 if save else 0:.0f} % of docker save)",
             f"  payload {_human(s['payload_bytes'])} in {len(s['parts'])} part(s) of at most "
             f"{_human(s['max_part_size'])}" + (f", plus {len(s['files'])} file(s)" if s["files"] else "")]
    r = s["reused"]
    if r["blobs"] or r["pulls"]:
        lines.append(f"  reused from the interrupted build: {r['blobs']} blob(s) ({_human(r['blob_bytes'])}), "
                     f"{r['pulls']} pull(s)")
    lines.append(f"  signed by {s['key_id']}, sequence {s['sequence']}, expires {s['expires']}")
    t = s["seconds"]
    lines.append("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    if s.get("work_dir"):
        lines.append(f"  work folder kept: {s['work_dir']}")
    return "\n".join(lines)
