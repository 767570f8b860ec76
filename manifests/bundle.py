"""The bundle manifest (format 2): what a bundle holds, in one small signed JSON file.

A bundle folder (possibly spread over several discs) holds::

    manifest.json          this model, canonical JSON (sorted keys, UTF-8)
    manifest.json.sig      raw 64-byte Ed25519 signature over manifest.json
    signing-key.pub        the signer's public key (informational: trust comes from the host)
    README-OFFLINE.txt     what the offline admin runs, in order
    payload.000, ...       the payload tarball split into parts of at most max_part_size
    wheels/*.whl           the importer and its dependencies, for an offline pip install
    wheels/requirements.txt  the same wheels, hash-pinned, for ``pip install --require-hashes``
    toolkit.gitbundle      optionally, the Overleaf Toolkit checkout as a git bundle

**Images are stored upstream-exact.** For each image the bundle carries the registry's
own manifest (its exact bytes), its config blob and its layer blobs as the registry
served them, so the manifest digest survives: it is the image ID on a containerd-store
engine after ``load``, and the digest an internal registry reports after ``push``. The
config digest is the image ID on a classic-store engine. :class:`ImageEntry` records
both, the upstream repository digest (an image index's digest for a multi-platform
tag) and the index entry the platform manifest was chosen from.

An image is *re-encoded* (``exact`` false) when it came from a local engine (no registry
manifest exists) or the build ran with ``--recompress zstd``: its layers are then the
uncompressed layer tars (blob digest = diff_id, media type
``application/vnd.oci.image.layer.v1.tar``), stored zstd-compressed in the payload,
and its manifest is an OCI manifest the bundler wrote; identity is then pinned on the
config digest and the diff_ids.

The payload tarball is strict ustar (no PAX or GNU extension headers, regular files
only, sizes of 8 GiB and more in base-256 as GNU tar does). Its members are
``blobs/sha256/<hex>`` (stored as is: ``<hex>`` is the blob digest) or
``blobs/sha256/<hex>.zst`` (the blob zstd-compressed). Headers are deterministic
(mode 0644, mtime 0, owner 0): a rebuild of the same images gives the same bytes.
Members come in this order: every manifest and config first, then the layers in the
order the images need them.

**Every part is hashed whole and per segment**: ``PartRef.segments`` holds the sha256 of
each ``segment_size`` slice of the part (the last one shorter), so a reader checks every
few MiB before a byte of it is parsed, decompressed or sent to an engine, and ``verify``
hashes segments in parallel.

    m = BundleManifest.from_bytes(data)       # strict: raises ManifestFormatError
    m.part("payload.000").sha256
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .errors import ManifestFormatError, PlanError
from .imageref import check_image_ref
from .safeio import loads_json

if TYPE_CHECKING:
    from .planner import UpgradePlan

FORMAT = "overleaf-airgap-bundle"
SCHEMA = 2
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"
PUBKEY_NAME = "signing-key.pub"
README_NAME = "README-OFFLINE.txt"
PAYLOAD_PREFIX = "payload."
MANIFEST_MAX_BYTES = 64 * 1024 * 1024     # a manifest larger than this is refused unread
DEFAULT_SEGMENT_SIZE = 4 * 1024 * 1024
MIN_SEGMENT_SIZE = 64 * 1024
MAX_SEGMENT_SIZE = 64 * 1024 * 1024
MAX_SEQUENCE = 2**63 - 1

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
HEX_RE = re.compile(r"^[0-9a-f]{64}\Z")
PART_RE = re.compile(r"^payload\.[0-9]{3,6}\Z")
FILE_RE = re.compile(r"^(?:wheels/)?[A-Za-z0-9][A-Za-z0-9._+-]{0,200}\Z")
BLOB_PATH_RE = re.compile(r"^blobs/sha256/[0-9a-f]{64}(?:\.zst)?\Z")
PLATFORM_RE = re.compile(r"^[a-z0-9]{1,20}/[a-z0-9_]{1,20}(?:/[a-z0-9]{1,10})?\Z")
INDEX_ENTRY_FIELDS = frozenset({"mediaType", "digest", "size", "platform", "annotations", "artifactType"})
MEDIA_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,126}/[a-z0-9][a-z0-9.+_-]{0,126}\Z")
ENCODINGS = ("none", "zstd")
KINDS = ("manifest", "config", "layer")

# media types
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
LAYER_TYPES = {  # media type -> compression of the blob
    DOCKER_LAYER_GZIP: "gzip", OCI_LAYER_GZIP: "gzip", OCI_LAYER_ZSTD: "zstd", OCI_LAYER_TAR: "none",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
}


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
    ref: str                          # canonical name:tag, as the Toolkit expects it
    id: str                           # config digest = image ID on the classic store
    diff_ids: tuple[str, ...]         # uncompressed layer digests, bottom first
    layers: tuple[str, ...]           # the manifest's layer blob digests, same order
    platform: str                     # os/arch[/variant]
    manifest_digest: str              # the carried manifest = image ID on the containerd store
    upstream_digest: str | None       # repository digest the tag had upstream (index digest if multi-platform)
    index_entry: dict[str, Any] | None  # the descriptor the manifest was chosen from, if from an index
    exact: bool                       # manifest, config and layers are the registry's own bytes
    source: str                       # "registry" or "local"
    size: int                         # bytes of the blobs (manifest + config + layers)

    def expected_id(self, store: str) -> str:
        """The image ID this image has on an engine with ``store`` ("classic" or "containerd")."""
        return self.manifest_digest if store == "containerd" else self.id


@dataclass(frozen=True)
class BlobEntry:
    digest: str      # sha256 of the blob (what manifests reference)
    kind: str        # "manifest", "config" or "layer"
    media_type: str
    size: int        # bytes of the blob
    encoding: str    # how the payload stores it: "none" or "zstd"
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
class PartRef:
    name: str
    size: int
    sha256: str                  # hex, of the whole part
    segments: tuple[str, ...]    # hex, of each segment_size slice


def segment_count(size: int, segment_size: int) -> int:
    return max(1, -(-size // segment_size)) if size else 0


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
    parts: tuple[PartRef, ...]
    payload_size: int
    max_part_size: int
    segment_size: int = DEFAULT_SEGMENT_SIZE
    files: tuple[FileRef, ...] = ()
    toolkit: dict[str, str] | None = None
    delta: dict[str, Any] | None = None
    catalog_overlay: dict[str, Any] | None = None
    recompress: str | None = None      # None (exact) or "zstd"
    format: str = FORMAT
    schema: int = SCHEMA

    # --- queries --------------------------------------------------------------------
    @property
    def product_key(self) -> str:
        return f"{self.product}-{self.edition}"

    def part(self, name: str) -> PartRef:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(name)

    def blob(self, digest: str) -> BlobEntry | None:
        return self.blob_map.get(digest)

    @property
    def blob_map(self) -> dict[str, BlobEntry]:
        return {b.digest: b for b in self.blobs}

    @property
    def upgrade_plan(self) -> UpgradePlan:
        from .planner import UpgradePlan  # here: the planner (and its catalog) is not start-up cost

        return UpgradePlan.from_dict(self.plan)

    @property
    def omitted_layers(self) -> tuple[str, ...]:
        """Layer blob digests a delta bundle left out (the offline host has them)."""
        return tuple((self.delta or {}).get("omitted_layers", ()))

    # --- encoding -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["images"] = [dict(asdict(i), diff_ids=list(i.diff_ids), layers=list(i.layers)) for i in self.images]
        d["parts"] = [dict(asdict(p), segments=list(p.segments)) for p in self.parts]
        return d

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> "BundleManifest":
        if len(data) > MANIFEST_MAX_BYTES:
            raise ManifestFormatError(f"manifest.json is {len(data)} bytes, over the limit of {MANIFEST_MAX_BYTES}")
        return cls.from_dict(loads_json(data, "manifest.json", ManifestFormatError))

    @classmethod
    def from_dict(cls, d: Any) -> "BundleManifest":
        try:
            return _validate(d)
        except ManifestFormatError:
            raise
        except PlanError as exc:
            raise ManifestFormatError(f"manifest: {exc.message}") from None
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as exc:
            raise ManifestFormatError(f"manifest does not follow the schema: {type(exc).__name__}: {exc}") from None


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ManifestFormatError(f"manifest: {msg}")


def _int(v: Any, what: str, maximum: int = 2**62) -> int:
    _need(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= maximum,
          f"{what} must be a whole number from 0 to {maximum}")
    return v


def _str(v: Any, what: str, pattern: re.Pattern | None = None, limit: int = 200) -> str:
    _need(isinstance(v, str) and 0 < len(v) <= limit and v.isprintable(), f"{what} must be a short printable text")
    if pattern is not None:
        _need(bool(pattern.match(v)), f"{what} {v!r} is not of the expected form")
    return v


def _digest(v: Any, what: str) -> str:
    _need(isinstance(v, str) and bool(DIGEST_RE.match(v)), f"{what} is not a sha256 digest")
    return v


def _fileref(d: dict, pattern: re.Pattern, what: str) -> FileRef:
    name = d["name"]
    _need(isinstance(name, str) and bool(pattern.match(name)) and ".." not in name,
          f"{what} name {name!r} is not allowed (no folders, no '..')")
    _need(isinstance(d["sha256"], str) and bool(HEX_RE.match(d["sha256"])), f"{what} {name}: bad sha256")
    return FileRef(name, _int(d["size"], f"{what} {name} size"), d["sha256"])


def _partref(d: dict, segment_size: int) -> PartRef:
    f = _fileref(d, PART_RE, "part")
    segs = d["segments"]
    _need(isinstance(segs, list) and all(isinstance(s, str) and HEX_RE.match(s) for s in segs),
          f"part {f.name}: bad segment hashes")
    _need(len(segs) == segment_count(f.size, segment_size),
          f"part {f.name}: {len(segs)} segment hashes for {f.size} bytes in segments of {segment_size}")
    return PartRef(f.name, f.size, f.sha256, tuple(segs))


def _index_entry(v: Any, ref: str) -> dict[str, Any] | None:
    if v is None:
        return None
    _need(isinstance(v, dict) and set(v) <= INDEX_ENTRY_FIELDS, f"image {ref}: bad index_entry")
    _digest(v.get("digest"), f"image {ref}: index_entry.digest")
    _str(v.get("mediaType"), f"image {ref}: index_entry.mediaType", MEDIA_TYPE_RE)
    if v.get("artifactType") is not None:     # OCI 1.1
        _str(v["artifactType"], f"image {ref}: index_entry.artifactType", MEDIA_TYPE_RE)
    _int(v.get("size"), f"image {ref}: index_entry.size")
    plat = v.get("platform")
    _need(plat is None or (isinstance(plat, dict) and len(json.dumps(plat)) < 1000), f"image {ref}: bad platform")
    return v


def _image(i: dict) -> ImageEntry:
    ref = check_image_ref(i["ref"])
    diff_ids = tuple(_digest(x, f"image {ref}: a diff_id") for x in i["diff_ids"])
    layers = tuple(_digest(x, f"image {ref}: a layer digest") for x in i["layers"])
    _need(len(diff_ids) == len(layers), f"image {ref}: {len(layers)} layers but {len(diff_ids)} diff_ids")
    _need(i["source"] in ("registry", "local"), f"image {ref}: bad source")
    _need(isinstance(i["exact"], bool), f"image {ref}: exact must be true or false")
    _need(not (i["exact"] and i["source"] == "local"), f"image {ref}: a local image cannot be exact")
    up = i["upstream_digest"]
    _need(up is None or bool(DIGEST_RE.match(up)), f"image {ref}: bad upstream_digest")
    entry = _index_entry(i.get("index_entry"), ref)
    manifest_digest = _digest(i["manifest_digest"], f"image {ref}: manifest_digest")
    if entry is not None:
        _need(entry["digest"] == manifest_digest or not i["exact"],
              f"image {ref}: the index entry names another manifest")
    return ImageEntry(ref, _digest(i["id"], f"image {ref}: id"), diff_ids, layers,
                      _str(i["platform"], f"image {ref}: platform", PLATFORM_RE), manifest_digest, up, entry,
                      i["exact"], i["source"], _int(i["size"], f"image {ref}: size"))


def _blob(b: dict) -> BlobEntry:
    digest = _digest(b["digest"], "a blob digest")
    _need(b["kind"] in KINDS, f"blob {digest}: bad kind")
    _need(b["encoding"] in ENCODINGS, f"blob {digest}: bad encoding")
    return BlobEntry(digest, b["kind"], _str(b["media_type"], f"blob {digest}: media_type", MEDIA_TYPE_RE),
                     _int(b["size"], "blob size"), b["encoding"], _int(b["stored_size"], "blob stored_size"))


def _validate(d: dict[str, Any]) -> BundleManifest:
    _need(isinstance(d, dict), "must be a JSON object")
    _need(d.get("format") == FORMAT, f"format is {str(d.get('format'))[:60]!r}, not {FORMAT!r}")
    _need(d.get("schema") == SCHEMA,
          f"schema {str(d.get('schema'))[:20]} is not supported (this importer reads schema {SCHEMA}); "
          "install the importer the bundle carries (README-OFFLINE)")
    segment_size = _int(d["segment_size"], "segment_size", MAX_SEGMENT_SIZE)
    _need(segment_size >= MIN_SEGMENT_SIZE, f"segment_size must be at least {MIN_SEGMENT_SIZE}")
    images = tuple(_image(i) for i in d["images"])
    refs = [i.ref for i in images]
    _need(len(refs) == len(set(refs)), "an image reference is listed twice")
    blobs = tuple(_blob(b) for b in d["blobs"])
    by_digest = {b.digest: b for b in blobs}
    _need(len(by_digest) == len(blobs), "a blob is listed twice")
    parts = tuple(_partref(p, segment_size) for p in d["parts"])
    files = tuple(_fileref(f, FILE_RE, "file") for f in d.get("files", ()))
    names = [p.name for p in parts] + [f.name for f in files]
    _need(len(names) == len(set(names)), "a file name is listed twice")
    _need([p.name for p in parts] == [f"{PAYLOAD_PREFIX}{k:03d}" for k in range(len(parts))],
          "the parts are not numbered payload.000, payload.001, ... in order")
    payload_size = _int(d["payload_size"], "payload_size")
    max_part = _int(d["max_part_size"], "max_part_size")
    _need(sum(p.size for p in parts) == payload_size, "the parts do not add up to payload_size")
    _need(all(p.size <= max_part for p in parts), "a part is larger than max_part_size")
    delta = d.get("delta")
    omitted: set[str] = set()
    if delta is not None:
        _need(isinstance(delta, dict) and delta.get("store") in ("classic", "containerd"), "delta: bad store")
        _need(isinstance(delta.get("receipt_sha256"), str) and bool(HEX_RE.match(delta["receipt_sha256"])),
              "delta: bad receipt_sha256")
        omitted = {_digest(x, "delta: an omitted layer") for x in delta.get("omitted_layers", ())}
        _need(not (omitted & set(by_digest)), "delta: a layer is both omitted and carried")
    for img in images:
        for digest, kind in ((img.manifest_digest, "manifest"), (img.id, "config")):
            _need(digest in by_digest and by_digest[digest].kind == kind,
                  f"image {img.ref}: its {kind} blob is not in the bundle")
        for layer in img.layers:
            _need((layer in by_digest and by_digest[layer].kind == "layer") or layer in omitted,
                  f"image {img.ref}: layer {layer} is neither in the bundle nor omitted as a delta")
    _need(sum(b.stored_size for b in blobs) <= payload_size, "the blobs are larger than the payload")
    toolkit = d.get("toolkit")
    if toolkit is not None:
        _need(isinstance(toolkit, dict) and isinstance(toolkit.get("commit"), str)
              and bool(re.match(r"^[0-9a-f]{40,64}\Z", toolkit["commit"])), "toolkit.commit must be a git commit id")
        _need(toolkit.get("file") in [f.name for f in files], "toolkit.file is not among the files")
        branch = toolkit.get("branch")
        _need(branch is None or (isinstance(branch, str) and bool(re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,100}\Z",
                                                                           branch)) and ".." not in branch),
              "toolkit.branch is not a plain branch name")
    seq = _int(d["sequence"], "sequence", MAX_SEQUENCE)
    created, expires = parse_iso(d["created"]), parse_iso(d["expires"])
    _need(expires > created, "expires must be after created")
    from .planner import UpgradePlan

    UpgradePlan.from_dict(d["plan"])
    _need(d["edition"] in ("ce", "pro"), "edition must be ce or pro")
    _need(d.get("recompress") in (None, "zstd"), "recompress must be null or zstd")
    overlay = d.get("catalog_overlay")
    _need(overlay is None or isinstance(overlay, dict), "catalog_overlay must be an object")
    version_re = re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?:-[A-Za-z0-9.-]{1,40})?\Z")
    return BundleManifest(
        bundle_id=_str(d["bundle_id"], "bundle_id", re.compile(r"^[0-9a-f]{8,64}\Z")),
        tool_version=_str(d["tool_version"], "tool_version", re.compile(r"^[0-9A-Za-z.+_-]{1,40}\Z")),
        product=_str(d["product"], "product", re.compile(r"^[a-z][a-z0-9-]{0,30}\Z")),
        edition=d["edition"], from_version=_str(d["from_version"], "from_version", version_re),
        to_version=_str(d["to_version"], "to_version", version_re),
        created=d["created"], expires=d["expires"], sequence=seq,
        key_id=_str(d["key_id"], "key_id", re.compile(r"^[A-Za-z0-9:_-]{1,100}\Z")),
        platform=_str(d["platform"], "platform", PLATFORM_RE), plan=d["plan"], images=images, blobs=blobs,
        parts=parts, payload_size=payload_size, max_part_size=max_part, segment_size=segment_size, files=files,
        toolkit=toolkit, delta=delta, catalog_overlay=overlay, recompress=d.get("recompress"))


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
    m = re.match(r"^(\d{1,15}(?:\.\d{1,6})?)\s*([kmgt]?)(i?b)?\Z", t)
    if not m:
        raise ValueError(f"{text!r} is not a size (use e.g. 700M, 4G, fat32, dvd, bd25)")
    mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2)]
    return int(float(m.group(1)) * mult)
