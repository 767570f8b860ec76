"""Verify a bundle folder: the trust rules first, then every byte.

The rules are :class:`manifests.trust.BundleTrust`'s (size cap, signature, strict parse,
expiry, plan check, anti-rollback, in that order); this module does the I/O around it:
it reads ``manifest.json`` and its signature (bounded, :mod:`manifests.safeio`), hands
their bytes, the trusted keys and the host's anti-rollback record to it once, and records
the bundle under the state file's lock when everything passed. Nothing in
``manifest.json`` is read before its signature checked out against a trusted key, and
the manifest is parsed once.
Then every part and file the manifest lists is located (in the bundle folder or in
the ``--parts-from`` folders, one per disc) and its size compared. Parts are checked
segment by segment against the manifest's per-segment hashes
(:func:`manifests.payload.check_part`, several segments at once: the segments cover
every byte, so no whole-part hash is needed); the small files (wheels,
README-OFFLINE, the Toolkit bundle) by their sha256. Several files are checked at
once, but one at a time per read-only file system, where a disc would seek between
files. Every problem is collected, so one run names *every* missing, damaged,
truncated or unexpected file.

``load`` does not hash the parts first: ``verify_bundle(..., stream_parts=True)``
checks everything but the parts' contents (their presence and size only), and the
loader reads the parts once through :class:`manifests.payload.SegmentReader`, which
releases no segment before its hash matched. Such a bundle is recorded as accepted
(:func:`accept_bundle`) only after the load read every part.

    folders = BundleFolders(Path("/media/disc1"), [Path("/media/disc2")])
    vb = verify_bundle(folders, load_trusted([]), HostState.load(), now=utc_now())
    vb.manifest.images, vb.report.bytes
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Sequence

from manifests.bundle import MANIFEST_NAME, PAYLOAD_PREFIX, PUBKEY_NAME, README_NAME, SIGNATURE_NAME, BundleManifest, FileRef
from manifests.errors import IntegrityError, KeyError_, SignatureError
from manifests.payload import check_part
from manifests.limits import LIMITS
from manifests.safeio import read_regular, sha256_file
from manifests.signing import key_id, load_public_key
from manifests.trust import Accepted, BundleTrust

from importer.images.hoststate import HostState, TrustedKeys

ALLOWED_UNLISTED = frozenset({MANIFEST_NAME, SIGNATURE_NAME, PUBKEY_NAME, README_NAME})
# folders that file systems and desktops create on removable media; never read, never reported
FS_ARTEFACTS = frozenset({"lost+found", "System Volume Information", "$RECYCLE.BIN", ".Trashes",
                          ".Spotlight-V100", ".fseventsd"})

Ask = Callable[[list[str]], "Path | None"]


def safe_path(folder: Path, name: str) -> Path:
    """``folder/name``, refusing any name that leaves ``folder`` (``..``, absolute, or a symlink out)."""
    if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in name.split("/")):
        raise IntegrityError(f"the manifest names a file {name!r} outside the bundle folder",
                             "The bundle is malformed: do not use it; ask its builder for a new one.")
    try:
        root = folder.resolve()
        path = (root / name).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop: RuntimeError on Python 3.11, OSError later
        raise IntegrityError(f"{name} in {folder} cannot be resolved ({exc})",
                             f"Replace the link {folder / name} with the real file from the original media.") from None
    if not path.is_relative_to(root):
        raise IntegrityError(f"{name} in {folder} leads outside that folder (to {path})",
                             f"Replace the link {folder / name} with the real file from the original media.")
    return path


class BundleFolders:
    """Where a bundle's files are: the bundle folder first, then each ``--parts-from`` folder in order.

    ``ask(missing_names)`` (interactive runs only) returns another folder to search
    (the next disc), or None to give up.
    """

    def __init__(self, bundle_dir: Path, parts_from: Sequence[Path] = (), ask: Ask | None = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.folders: list[Path] = [self.bundle_dir, *[Path(p) for p in parts_from]]
        self.ask = ask
        self.found: dict[str, Path] = {}

    def add(self, folder: Path) -> None:
        folder = Path(folder)
        if folder not in self.folders:
            self.folders.append(folder)

    def find(self, ref: FileRef) -> Path | None:
        """The first copy of ``ref`` with the right size, else the first copy at all, else None."""
        candidates = []
        for folder in self.folders:
            path = safe_path(folder, ref.name)
            if path.is_file():
                candidates.append(path)
                if path.stat().st_size == ref.size:
                    return path
        return candidates[0] if candidates else None

    def locate_for_reading(self, refs: Sequence[FileRef]) -> Callable[[str], Path]:
        """A ``locate(name)`` for :class:`manifests.payload.SegmentReader`: asks for the next disc if needed."""
        by_name = {r.name: r for r in refs}

        def locate(name: str) -> Path:
            ref = by_name[name]
            while True:
                known = self.found.get(name)
                if known is not None and known.is_file() and known.stat().st_size == ref.size:
                    return known
                path = self.find(ref)
                if path is not None:
                    self.found[name] = path
                    return path
                folder = self.ask([name]) if self.ask else None
                if folder is None:
                    return self.bundle_dir / name  # the SegmentReader reports it as unreadable
                self.add(folder)

        return locate


@dataclass
class Problem:
    name: str
    kind: str          # missing | size | sha256 | unexpected | unsafe
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "problem": self.kind, "detail": self.detail}


@dataclass
class CheckReport:
    checked: dict[str, Path] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    deferred: list[str] = field(default_factory=list)   # parts left to the loader (not found yet, interactive)
    parts_hashed: bool = True

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass
class VerifiedBundle:
    manifest: BundleManifest
    manifest_bytes: bytes
    signer: str
    warnings: list[str]
    report: CheckReport
    folders: BundleFolders
    accepted: Accepted
    recorded: bool
    state: HostState | None = None       # where accept_bundle() records a bundle whose parts were streamed
    allow_downgrade: bool = False

    @property
    def parts_hashed(self) -> bool:
        """Whether every part was already hashed (False: the loader checks them while it reads them)."""
        return self.report.parts_hashed


def check_plan(manifest: BundleManifest) -> None:
    """:func:`importer.images.plan_check.check_plan`, imported on the first call: the planner, its catalog and
    YAML are start-up time that a verify which stops before the plan check (no manifest, no key) never needs."""
    from importer.images.plan_check import check_plan as plan_check

    plan_check(manifest)


def hash_workers() -> int:
    return min(4, max(2, os.cpu_count() or 2))


def check_contents(manifest: BundleManifest, folders: BundleFolders,
                   on_bytes: Callable[[int], None] | None = None, workers: int | None = None, *,
                   hash_parts: bool = True) -> CheckReport:
    """Every part and file, and every unexpected file. Never raises for a bad file.

    Parts: size, then every segment hash (``hash_parts``; without it only presence and size,
    and in an interactive run a part not found yet is left to the loader, which asks for its disc).
    Files: size and sha256.
    """
    report = CheckReport()
    start = time.monotonic()
    lock = threading.Lock()

    def count(n: int) -> None:
        with lock:
            report.bytes += n
            if on_bytes:
                on_bytes(n)

    n_workers = workers or hash_workers()
    per_device: dict[int, tuple[threading.Semaphore, int]] = {}
    part_names = {p.name for p in manifest.parts}

    def device_slot(path: Path) -> tuple[threading.Semaphore, int]:
        """Several files (and segments) at once per device, but one read at a time from read-only
        media (discs seek slowly)."""
        dev = path.stat().st_dev
        with lock:
            if dev not in per_device:
                try:
                    readonly = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
                except OSError:
                    readonly = False
                per_device[dev] = (threading.Semaphore(1), 1) if readonly else (threading.Semaphore(n_workers),
                                                                                 n_workers)
            return per_device[dev]

    def check(ref: FileRef, path: Path) -> Problem | None:
        size = path.stat().st_size
        if size != ref.size:
            how = "truncated" if size < ref.size else "too long"
            return Problem(ref.name, "size", f"{how}: {size} bytes at {path}, the manifest says {ref.size}")
        if ref.name in part_names:
            if not hash_parts:
                return None
            slot, segment_workers = device_slot(path)
            with slot:
                bad = check_part(path, manifest.part(ref.name), manifest.segment_size, workers=segment_workers,
                                 on_bytes=count)
            return None if bad is None else Problem(ref.name, "sha256", f"{bad} (at {path})")
        slot, _ = device_slot(path)
        with slot:
            got_size, digest = sha256_file(path, count)
        if got_size != ref.size:
            return Problem(ref.name, "size", f"changed while it was read: {got_size} bytes at {path}")
        if digest != ref.sha256:
            return Problem(ref.name, "sha256", f"damaged or altered: its sha256 at {path} does not match the manifest")
        return None

    pending: list[FileRef] = list(manifest.parts) + list(manifest.files)
    unsafe: list[Problem] = []
    missing: list[FileRef] = []
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="hash") as pool:
        while pending:
            located: list[tuple[FileRef, Path]] = []
            missing = []
            for ref in pending:
                try:
                    path = folders.find(ref)
                except IntegrityError as err:
                    unsafe.append(Problem(ref.name, "unsafe", err.message))
                    continue
                if path is None:
                    missing.append(ref)
                else:
                    located.append((ref, path))
            # biggest first, so that one big part does not finish alone at the end
            located.sort(key=lambda rp: -rp[0].size)
            futures = [(ref, path, pool.submit(check, ref, path)) for ref, path in located]
            for ref, path, fut in futures:
                try:
                    problem = fut.result()
                except OSError as exc:
                    problem = Problem(ref.name, "missing", f"cannot be read at {path}: {exc.strerror}")
                if problem is None:
                    report.checked[ref.name] = path
                    folders.found[ref.name] = path
                else:
                    report.problems.append(problem)
            pending = []
            if not hash_parts and folders.ask is not None:
                # the loader asks for each missing part's disc when it gets there: one pass over the media
                report.deferred = [r.name for r in missing if r.name in part_names]
                missing = [r for r in missing if r.name not in part_names]
            if missing and folders.ask is not None:
                folder = folders.ask([r.name for r in missing])
                if folder is not None:
                    folders.add(folder)
                    pending = missing
    where = " or ".join(str(f) for f in folders.folders)
    report.problems += unsafe
    report.problems += [Problem(r.name, "missing", f"not found in {where}") for r in missing]
    report.problems += unexpected_files(manifest, folders)
    report.seconds = time.monotonic() - start
    order = {r.name: i for i, r in enumerate(list(manifest.parts) + list(manifest.files))}
    report.problems.sort(key=lambda p: (order.get(p.name, len(order)), p.name))
    return report


def unexpected_files(manifest: BundleManifest, folders: BundleFolders) -> list[Problem]:
    """Files in the bundle folder the manifest does not list (and stray ``payload.*`` in other folders).

    Never recursive: the bundle folder is listed one level, and each folder that holds listed
    files (``wheels/``) one level more; any other folder is reported as a whole, unread.
    """
    listed = {r.name for r in manifest.parts} | {r.name for r in manifest.files}
    allowed = listed | ALLOWED_UNLISTED
    listed_dirs = {n.split("/", 1)[0] for n in listed if "/" in n}
    problems = []
    root = folders.bundle_dir

    def entries(folder: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError:
            return []

    if root.is_dir():
        for entry in entries(root):
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir and entry.name in FS_ARTEFACTS:
                continue
            if is_dir and entry.name in listed_dirs:
                for sub in entries(Path(entry.path)):
                    rel = f"{entry.name}/{sub.name}"
                    if rel not in allowed or sub.is_dir(follow_symlinks=False):
                        problems.append(Problem(rel, "unexpected", f"{sub.path} is not part of this bundle"))
                continue
            if entry.name not in allowed or is_dir:
                problems.append(Problem(entry.name, "unexpected", f"{entry.path} is not part of this bundle"))
    for folder in folders.folders[1:]:
        if folder == root or not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith(PAYLOAD_PREFIX) and path.name not in listed:
                problems.append(Problem(path.name, "unexpected", f"{path} is not part of this bundle"))
    return problems


def integrity_error(report: CheckReport) -> IntegrityError:
    lines = [f"  {p.name}: {p.detail}" for p in report.problems]
    n = len(report.problems)
    recopy = [p.name for p in report.problems if p.kind in ("missing", "size", "sha256")]
    remove = [p.name for p in report.problems if p.kind == "unexpected"]
    hints = []
    if recopy:
        hints.append("copy again from the original media: " + ", ".join(recopy))
    if remove:
        hints.append("remove what is not part of the bundle (or copy the bundle into a clean folder): "
                     + ", ".join(remove))
    if any(p.kind == "unsafe" for p in report.problems):
        hints.append("replace links that point outside the bundle folder with the real files")
    if any(p.kind == "missing" for p in report.problems):
        hints.append("parts on another disc: pass its folder with --parts-from (or run in a terminal to be asked)")
    hint = "; ".join(hints)
    return IntegrityError(f"the bundle has {n} problem{'s' if n != 1 else ''}:\n" + "\n".join(lines),
                          hint[:1].upper() + hint[1:] + ".",
                          details={"problems": [p.to_dict() for p in report.problems]})


def read_signed_manifest(bundle_dir: Path) -> tuple[bytes, bytes | None]:
    """manifest.json and its signature: regular files only, bounded, read without blocking (manifests.safeio)."""
    manifest_path = safe_path(bundle_dir, MANIFEST_NAME)
    try:
        data = read_regular(manifest_path, LIMITS.manifest, "the manifest", IntegrityError,
                            hint="Copy manifest.json again from the original media.")
    except FileNotFoundError:
        raise IntegrityError(f"{bundle_dir} holds no {MANIFEST_NAME}: is it a bundle folder?",
                             "Pass the folder that holds manifest.json (the first disc of the bundle).") from None
    try:
        sig = read_regular(safe_path(bundle_dir, SIGNATURE_NAME), LIMITS.signature, "the signature", SignatureError,
                           hint="Copy manifest.json.sig again from the original media.")
    except FileNotFoundError:
        sig = None
    return data, sig


def _untrusted_hint(bundle_dir: Path, trusted: TrustedKeys) -> str:
    """Which key the bundle's own (informational) signing-key.pub is, next to the keys trusted here."""
    try:
        shipped = key_id(load_public_key(safe_path(bundle_dir, PUBKEY_NAME)))
    except (KeyError_, IntegrityError):
        shipped = None
    text = f"Trusted here: {trusted.describe()}."
    if shipped:
        text += (f" The bundle's {PUBKEY_NAME} is {shipped}; trust it only if its builder confirms that id "
                 f"over another channel.")
    return text


def verify_bundle(folders: BundleFolders, trusted: TrustedKeys, state: HostState, *, now: datetime,
                  allow_expired: bool = False, allow_downgrade: bool = False,
                  on_bytes: Callable[[int], None] | None = None,
                  on_manifest: Callable[[BundleManifest, list[str]], None] | None = None,
                  stream_parts: bool = False) -> VerifiedBundle:
    """The full check; records the bundle in ``state`` only when everything passed.

    ``stream_parts`` (``load``, ``upgrade``): the parts' contents are not hashed here, only found and
    sized; the loader checks every segment as it streams, then calls :func:`accept_bundle`.
    """
    data, sig = read_signed_manifest(folders.bundle_dir)
    if not trusted.keys:
        where = f"the trust folder {trusted.folder}" if trusted.folder else "--trust"
        raise SignatureError(f"no trusted public keys: {where} holds no usable .pub file",
                             "Pass --trust PUBKEY, or copy the signer's .pub file into the trust folder "
                             "(OVERLEAF_AIRGAP_TRUST_DIR overrides its location).")
    # The manifest names its key id, but it is read only after the signature verified: every trusted key is tried.
    trust = BundleTrust(data, sig, trusted.keys, now, record=state.by_key)
    try:
        checked = trust.verify(plan_check=check_plan,   # the signed plan must be the plan this importer makes
                               allow_expired=allow_expired, allow_downgrade=allow_downgrade)
    except SignatureError as err:
        if sig is not None and len(sig) == 64:
            raise SignatureError(err.message, f"{err.hint} {_untrusted_hint(folders.bundle_dir, trusted)}") from None
        raise
    manifest, warnings = checked.manifest, list(checked.warnings)
    if on_manifest:
        on_manifest(manifest, warnings)
    report = check_contents(manifest, folders, on_bytes, hash_parts=not stream_parts)
    report.parts_hashed = not stream_parts
    if report.problems:
        raise integrity_error(report)
    vb = VerifiedBundle(manifest, data, checked.signer, warnings, report, folders, checked.accepted, False, state,
                        allow_downgrade)
    if not stream_parts:
        accept_bundle(vb)
    return vb


def accept_bundle(vb: VerifiedBundle) -> bool:
    """Record ``vb`` as this host's last accepted bundle (anti-rollback checked again, under the state's lock).

    Call it once every part has been read intact: :func:`verify_bundle` does, unless ``stream_parts``;
    then the loader does after its stream ended.
    """
    if vb.state is None or vb.recorded:
        return False
    vb.recorded = vb.state.accept(vb.manifest.product_key, vb.accepted, allow_downgrade=vb.allow_downgrade)
    return vb.recorded


def summary(vb: VerifiedBundle) -> dict:
    m = vb.manifest
    return {
        "bundle_id": m.bundle_id, "product_key": m.product_key, "from_version": m.from_version,
        "to_version": m.to_version, "sequence": m.sequence, "created": m.created, "expires": m.expires,
        "key_id": m.key_id, "images": [i.ref for i in m.images], "parts": len(m.parts), "files": len(m.files),
        "payload_size": m.payload_size, "delta": bool(m.delta),
    }


def describe_missing(names: Iterable[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)} files)"
