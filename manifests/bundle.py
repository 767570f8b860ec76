"""The bundle manifest: what a bundle holds, in one small signed JSON file.

A bundle folder (possibly spread over several discs) holds::

    manifest.json          this model, canonical JSON (sorted keys, UTF-8)
    manifest.json.sig      raw 64-byte Ed25519 signature over manifest.json
    signing-key.pub        the signer's public key (informational: trust comes from the host)
    README-OFFLINE.txt     what the offline admin runs, in order
    payload.000, ...       the payload tarball split into parts of at most max_part_size
    wheels/*.whl           the importer and its dependencies, for an offline pip install
    toolkit.gitbundle      optionally, the Overleaf Toolkit checkout as a git bundle

The payload tarball's members are ``blobs/sha256/<hex>`` (stored as is) or
``blobs/sha256/<hex>.zst`` (zstd-compressed). ``<hex>`` is the digest of the
*uncompressed* content: for a layer its diff_id, for an image config its image ID.
Each member's header is deterministic (mode 0644, mtime 0, owner 0), so a rebuild of
the same images gives the same bytes.

    m = BundleManifest.from_bytes(data)       # strict: raises ManifestFormatError
    m.part("payload.000").sha256
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from .errors import ManifestFormatError, PlanError
from .planner import UpgradePlan, check_image_ref

FORMAT = "overleaf-airgap-bundle"
SCHEMA = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"
PUBKEY_NAME = "signing-key.pub"
README_NAME = "README-OFFLINE.txt"
PAYLOAD_PREFIX = "payload."

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
HEX_RE = re.compile(r"^[0-9a-f]{64}$")
PART_RE = re.compile(r"^payload\.[0-9]{3,6}$")
FILE_RE = re.compile(r"^(?:wheels/)?[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")
BLOB_PATH_RE = re.compile(r"^blobs/sha256/[0-9a-f]{64}(?:\.zst)?$")
ENCODINGS = ("none", "zstd")


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        raise ManifestFormatError(f"bad timestamp {text!r} in the manifest") from None


def canonical_json(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


@dataclass(frozen=True)
class ImageEntry:
    ref: str                      # canonical name:tag, as the Toolkit expects it
    id: str                       # sha256:<config digest> = image ID on the legacy store
    diff_ids: tuple[str, ...]     # uncompressed layer digests, bottom first
    platform: str                 # os/arch[/variant]
    upstream_digest: str | None   # repository digest the registry gave, when pulled
    source: str                   # "registry" or "local"
    size: int                     # bytes of the uncompressed layers + config


@dataclass(frozen=True)
class BlobEntry:
    digest: str      # sha256 of the uncompressed content
    kind: str        # "layer" or "config"
    size: int        # uncompressed bytes
    encoding: str    # "none" or "zstd"
    stored_size: int

    @property
    def path(self) -> str:
        return f"blobs/sha256/{self.digest[7:]}" + (".zst" if self.encoding == "zstd" else "")


@dataclass(frozen=True)
class FileRef:
    name: str
    size: int
    sha256: str      # hex


@dataclass(frozen=True)
class BundleManifest:
    bundle_id: str
    tool_version: str
    product: str
    edition: str
    from_version: str
    to_version: str
    created: str
    expires: str
    sequence: int
    key_id: str
    platform: str
    plan: dict[str, Any]
    images: tuple[ImageEntry, ...]
    blobs: tuple[BlobEntry, ...]
    parts: tuple[FileRef, ...]
    payload_size: int
    max_part_size: int
    files: tuple[FileRef, ...] = ()
    toolkit: dict[str, str] | None = None
    delta: dict[str, Any] | None = None
    format: str = FORMAT
    schema: int = SCHEMA

    # --- queries --------------------------------------------------------------------
    @property
    def product_key(self) -> str:
        return f"{self.product}-{self.edition}"

    def part(self, name: str) -> FileRef:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(name)

    def blob(self, digest: str) -> BlobEntry | None:
        for b in self.blobs:
            if b.digest == digest:
                return b
        return None

    @property
    def upgrade_plan(self) -> UpgradePlan:
        return UpgradePlan.from_dict(self.plan)

    @property
    def omitted_layers(self) -> tuple[str, ...]:
        return tuple((self.delta or {}).get("omitted_layers", ()))

    # --- encoding -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["images"] = [dict(asdict(i), diff_ids=list(i.diff_ids)) for i in self.images]
        return d

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> "BundleManifest":
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestFormatError(f"manifest.json is not valid JSON: {exc}") from None
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, d: Any) -> "BundleManifest":
        try:
            return _validate(d)
        except ManifestFormatError:
            raise
        except PlanError as exc:
            raise ManifestFormatError(f"manifest: {exc.message}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestFormatError(f"manifest does not follow the schema: {type(exc).__name__}: {exc}") from None


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ManifestFormatError(f"manifest: {msg}")


def _int(v: Any, what: str) -> int:
    _need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"{what} must be a non-negative integer")
    return v


def _fileref(d: dict, pattern: re.Pattern, what: str) -> FileRef:
    name = d["name"]
    _need(isinstance(name, str) and bool(pattern.match(name)) and ".." not in name,
          f"{what} name {name!r} is not allowed (no folders, no '..')")
    _need(isinstance(d["sha256"], str) and bool(HEX_RE.match(d["sha256"])), f"{what} {name}: bad sha256")
    return FileRef(name, _int(d["size"], f"{what} {name} size"), d["sha256"])


def _validate(d: dict[str, Any]) -> BundleManifest:
    _need(isinstance(d, dict), "must be a JSON object")
    _need(d.get("format") == FORMAT, f"format is {d.get('format')!r}, not {FORMAT!r}")
    _need(d.get("schema") == SCHEMA, f"schema {d.get('schema')!r} is not supported (this tool reads {SCHEMA})")
    images = []
    for i in d["images"]:
        _need(bool(DIGEST_RE.match(i["id"])), f"image {i.get('ref')!r}: bad id")
        _need(all(isinstance(x, str) and DIGEST_RE.match(x) for x in i["diff_ids"]), f"image {i['ref']}: bad diff_ids")
        _need(i["source"] in ("registry", "local"), f"image {i['ref']}: bad source")
        _need(i["upstream_digest"] is None or bool(DIGEST_RE.match(i["upstream_digest"])),
              f"image {i['ref']}: bad upstream_digest")
        images.append(ImageEntry(check_image_ref(i["ref"]), i["id"], tuple(i["diff_ids"]), str(i["platform"]),
                                 i["upstream_digest"], i["source"], _int(i["size"], "image size")))
    refs = [i.ref for i in images]
    _need(len(refs) == len(set(refs)), "an image reference is listed twice")
    blobs = []
    for b in d["blobs"]:
        _need(bool(DIGEST_RE.match(b["digest"])), f"blob {b.get('digest')!r}: bad digest")
        _need(b["kind"] in ("layer", "config"), f"blob {b['digest']}: bad kind")
        _need(b["encoding"] in ENCODINGS, f"blob {b['digest']}: bad encoding")
        blobs.append(BlobEntry(b["digest"], b["kind"], _int(b["size"], "blob size"), b["encoding"],
                               _int(b["stored_size"], "blob stored_size")))
    digests = [b.digest for b in blobs]
    _need(len(digests) == len(set(digests)), "a blob is listed twice")
    parts = tuple(_fileref(p, PART_RE, "part") for p in d["parts"])
    files = tuple(_fileref(f, FILE_RE, "file") for f in d.get("files", ()))
    names = [p.name for p in parts] + [f.name for f in files]
    _need(len(names) == len(set(names)), "a file name is listed twice")
    payload_size = _int(d["payload_size"], "payload_size")
    max_part = _int(d["max_part_size"], "max_part_size")
    _need(sum(p.size for p in parts) == payload_size, "the parts do not add up to payload_size")
    _need(all(p.size <= max_part for p in parts), "a part is larger than max_part_size")
    have = set(digests) | set((d.get("delta") or {}).get("omitted_layers", ()))
    for img in images:
        _need(img.id in digests, f"image {img.ref}: its config blob is not in the bundle")
        for diff in img.diff_ids:
            _need(diff in have, f"image {img.ref}: layer {diff} is neither in the bundle nor omitted as a delta")
    toolkit = d.get("toolkit")
    if toolkit is not None:
        _need(isinstance(toolkit.get("commit"), str) and bool(re.match(r"^[0-9a-f]{40,64}$", toolkit["commit"])),
              "toolkit.commit must be a git commit id")
        _need(toolkit.get("file") in [f.name for f in files], "toolkit.file is not among the files")
    seq = _int(d["sequence"], "sequence")
    created, expires = parse_iso(d["created"]), parse_iso(d["expires"])
    _need(expires > created, "expires must be after created")
    UpgradePlan.from_dict(d["plan"])
    _need(d["edition"] in ("ce", "pro"), "edition must be ce or pro")
    return BundleManifest(
        bundle_id=str(d["bundle_id"]), tool_version=str(d["tool_version"]), product=str(d["product"]),
        edition=d["edition"], from_version=str(d["from_version"]), to_version=str(d["to_version"]),
        created=d["created"], expires=d["expires"], sequence=seq, key_id=str(d["key_id"]),
        platform=str(d["platform"]), plan=d["plan"], images=tuple(images), blobs=tuple(blobs),
        parts=parts, payload_size=payload_size, max_part_size=max_part, files=files,
        toolkit=toolkit, delta=d.get("delta"))


# sizes accepted by --max-part-size
MEDIA_SIZES = {
    "fat32": 4 * 1024**3 - 1,          # 4 GiB - 1 byte: FAT32's file size limit
    "dvd": 4_700_000_000 - 64 * 1024**2,  # DVD-5, less room for the file system and the small files
    "bd25": 25_000_000_000 - 256 * 1024**2,
}
MIN_PART_SIZE = 1024 * 1024


def parse_size(text: str) -> int:
    """``fat32``/``dvd``/``bd25`` or a number with an optional K/M/G/T (binary) suffix."""
    t = str(text).strip().lower()
    if t in MEDIA_SIZES:
        return MEDIA_SIZES[t]
    m = re.match(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$", t)
    if not m:
        raise ValueError(f"{text!r} is not a size (use e.g. 700M, 4G, fat32, dvd, bd25)")
    mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2)]
    return int(float(m.group(1)) * mult)
