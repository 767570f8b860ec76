"""The benchmark's synthetic upgrade path, pushed straight into a registry (no engine, no ``docker build``).

The plan benchmarked is CE 4.2.8 -> 6.2.2 with MongoDB 5.0 -> 8.0 and Redis 6.2 -> 7.4
(``overleaf-bundle plan --from 4.2.8 --to 6.2.2 --mongo 5.0 --redis 6.2``): seven images,
``sharelatex/sharelatex`` 4.2.9, 5.5.8 and 6.2.2, ``mongo`` 6.0, 7.0 and 8.0, ``redis:7.4``.
Their layers, at ``scale=1`` (MiB; ``text`` compresses about 3.8x with zstd -3 and 3x with
gzip, ``random`` not at all):

=========================  ==========================  ======================================
image                      on top of                   its own layers
=========================  ==========================  ======================================
every image               -                           a 1 MiB text "OS" layer, shared
app base (no tag)          OS layer                    300 text (TeX Live, docs) + 250 random
sharelatex 4.2.9, 5.5.8,   app base                    160 text (JavaScript) + 100 random
6.2.1                                                  (native modules, assets), per version
sharelatex 6.2.2           sharelatex 6.2.1            a hotfix: 12 text + 3 random
mongo base (no tag)        OS layer                    60 text + 20 random
mongo 6.0, 7.0, 8.0        mongo base                  110 random (mongod) + 50 text, each
redis base (no tag)        OS layer                    30 text + 10 random
redis 7.4                  redis base                  15 random
=========================  ==========================  ======================================

As on Docker Hub, ``sharelatex/sharelatex`` tags are Docker schema 2 manifests and the
``mongo`` and ``redis`` tags are OCI image indexes with two platforms (linux/amd64, the one
benchmarked, and a small linux/arm64/v8 image), pushed through the Registry API with
:class:`manifests.distribution.RegistryClient`. Layers are gzip'd tars like the ones
``docker push`` uploads (gzip -6; -1 for the incompressible ones: the same size, made faster).
About 2.06 GB of unique raw layer data goes into the plan's images
at ``scale=1``; every layer scales linearly (at least 1 MiB).

    with PrivateRegistry() as registry:
        path = push_path(registry.address, scale=0.25, work=Path("gen"))
        path.unique_raw_bytes, path.upstream_bytes, path.images["mongo:8.0"].upstream_digest
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from manifests.distribution import Credentials, RegistryClient
from tests.support.engine import MiB, DataLayer, mirror_reference, split_reference

PLAN_ARGS = ["--from", "4.2.8", "--to", "6.2.2", "--edition", "ce", "--mongo", "5.0", "--redis", "6.2"]
PLAN_IMAGES = ["sharelatex/sharelatex:4.2.9", "mongo:6.0", "sharelatex/sharelatex:5.5.8", "mongo:7.0",
               "mongo:8.0", "redis:7.4", "sharelatex/sharelatex:6.2.2"]
# the patch hop of the delta bundle: a host on 6.2.1 (with the stack 6.2.1 runs) moves to 6.2.2
DELTA_PLAN_ARGS = ["--from", "6.2.1", "--to", "6.2.2", "--edition", "ce"]
DELTA_HOST_IMAGES = ["sharelatex/sharelatex:6.2.1", "mongo:8.0", "redis:7.4"]
DELTA_NEW_IMAGE = "sharelatex/sharelatex:6.2.2"
DELTA_OLD_IMAGE = "sharelatex/sharelatex:6.2.1"
ALL_IMAGES = PLAN_IMAGES + [DELTA_OLD_IMAGE]

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

Kind = Literal["text", "random"]
_MTIME = 1_700_000_000
GZIP_LEVEL = 6


@dataclass(frozen=True)
class LayerSpec:
    path: str
    mib: float          # size at scale 1
    kind: Kind
    seed: str           # what makes its bytes unique (shared layers share it)

    def size(self, scale: float) -> int:
        return max(MiB, int(self.mib * scale * MiB))


@dataclass(frozen=True)
class ImageSpec:
    ref: str
    layers: tuple[LayerSpec, ...]
    oci_index: bool            # True: an OCI index with linux/amd64 and linux/arm64/v8 (mongo, redis)
    cmd: tuple[str, ...]


_OS = (LayerSpec("/etc/os-release.d/base.txt", 1, "text", "os"),)
_APP_BASE = _OS + (LayerSpec("/usr/local/texlive/texmf-dist/doc.txt", 300, "text", "app-base"),
                   LayerSpec("/usr/local/texlive/bin/fonts.bin", 250, "random", "app-base"))


def _app_layers(version: str) -> tuple[LayerSpec, ...]:
    return (LayerSpec("/overleaf/services/bundle.js", 160, "text", version),
            LayerSpec("/overleaf/node_modules/native.node", 100, "random", version))


_HOTFIX = (LayerSpec("/overleaf/hotfix/patch.js", 12, "text", "6.2.2"),
           LayerSpec("/overleaf/hotfix/assets.bin", 3, "random", "6.2.2"))
_MONGO_BASE = _OS + (LayerSpec("/usr/lib/os.txt", 60, "text", "mongo-base"),
                     LayerSpec("/usr/lib/os.bin", 20, "random", "mongo-base"))
_REDIS_BASE = _OS + (LayerSpec("/usr/lib/os.txt", 30, "text", "redis-base"),
                     LayerSpec("/usr/lib/os.bin", 10, "random", "redis-base"))
_APP_CMD = ("httpd", "-f", "-p", "80")


def _mongo(v: str) -> ImageSpec:
    return ImageSpec(f"mongo:{v}", _MONGO_BASE + (LayerSpec("/usr/bin/mongod", 110, "random", v),
                                                  LayerSpec("/usr/share/mongo/shell.js", 50, "text", v)),
                     True, ("mongod",))


SPECS: tuple[ImageSpec, ...] = (
    ImageSpec("sharelatex/sharelatex:4.2.9", _APP_BASE + _app_layers("4.2.9"), False, _APP_CMD),
    ImageSpec("sharelatex/sharelatex:5.5.8", _APP_BASE + _app_layers("5.5.8"), False, _APP_CMD),
    ImageSpec("sharelatex/sharelatex:6.2.1", _APP_BASE + _app_layers("6.2.1"), False, _APP_CMD),
    ImageSpec("sharelatex/sharelatex:6.2.2", _APP_BASE + _app_layers("6.2.1") + _HOTFIX, False, _APP_CMD),
    _mongo("6.0"), _mongo("7.0"), _mongo("8.0"),
    ImageSpec("redis:7.4", _REDIS_BASE + (LayerSpec("/usr/local/bin/redis-server", 15, "random", "7.4"),),
              True, ("redis-server",)),
)


@dataclass
class Layer:
    diff_id: str
    digest: str
    size: int           # gzip bytes (the blob)
    raw_size: int       # tar bytes


@dataclass
class PushedImage:
    ref: str
    mirror_ref: str              # HOST:PORT/REPO:TAG in the registry
    manifest_digest: str         # the linux/amd64 manifest
    upstream_digest: str         # what the tag serves: the index for mongo and redis
    config_digest: str
    layers: list[Layer]
    blob_bytes: int              # manifest + config + layers (linux/amd64)


@dataclass
class SyntheticPath:
    scale: float
    images: dict[str, PushedImage] = field(default_factory=dict)

    def plan_layers(self, refs: list[str] | None = None) -> dict[str, Layer]:
        out: dict[str, Layer] = {}
        for ref in refs or PLAN_IMAGES:
            for layer in self.images[ref].layers:
                out.setdefault(layer.digest, layer)
        return out

    @property
    def unique_raw_bytes(self) -> int:
        return sum(x.raw_size for x in self.plan_layers().values())

    @property
    def upstream_bytes(self) -> int:
        """Compressed bytes of the plan's linux/amd64 images as the registry serves them (blobs deduplicated)."""
        seen: dict[str, int] = {}
        for ref in PLAN_IMAGES:
            img = self.images[ref]
            seen[img.manifest_digest] = 0
            for layer in img.layers:
                seen[layer.digest] = layer.size
        layers = sum(seen.values())
        meta = sum(self.images[r].blob_bytes - sum(x.size for x in self.images[r].layers) for r in PLAN_IMAGES)
        return layers + meta

    def describe(self) -> dict[str, Any]:
        return {"scale": self.scale, "plan_images": list(PLAN_IMAGES), "unique_layers": len(self.plan_layers()),
                "unique_raw_bytes": self.unique_raw_bytes, "upstream_bytes": self.upstream_bytes,
                "indexes": sorted(r for r in PLAN_IMAGES if self.images[r].upstream_digest
                                  != self.images[r].manifest_digest),
                "per_image_raw_bytes": {r: sum(x.raw_size for x in self.images[r].layers) for r in PLAN_IMAGES}}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer_key(spec: LayerSpec) -> str:
    return f"{spec.seed}|{spec.path}"


def make_layer(path: str, size: int, kind: Kind, seed: str, out: str) -> dict[str, Any]:
    """Write one gzip'd layer tar (parent folders + one file of filler) to ``out``; its digests and sizes."""
    data = DataLayer(path, size, kind, zlib.crc32(seed.encode()))
    raw_hash, gz_hash = hashlib.sha256(), hashlib.sha256()
    gz = zlib.compressobj(GZIP_LEVEL if kind == "text" else 1, zlib.DEFLATED, 31)   # same size, much faster
    raw_size = gz_size = 0
    with open(out, "wb") as fh:
        def emit(chunk: bytes) -> None:
            nonlocal raw_size, gz_size
            raw_hash.update(chunk)
            raw_size += len(chunk)
            packed = gz.compress(chunk)
            if packed:
                gz_hash.update(packed)
                gz_size += len(packed)
                fh.write(packed)

        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            d = tarfile.TarInfo("/".join(parts[:i]) + "/")
            d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, _MTIME
            emit(d.tobuf(format=tarfile.USTAR_FORMAT))
        f = tarfile.TarInfo("/".join(parts))
        f.size, f.mode, f.mtime = size, 0o755, _MTIME
        emit(f.tobuf(format=tarfile.USTAR_FORMAT))
        for chunk in data.chunks():
            emit(chunk)
        emit(b"\0" * ((-size) % 512) + b"\0" * 1024)
        tail = gz.flush()
        gz_hash.update(tail)
        gz_size += len(tail)
        fh.write(tail)
    return {"diff_id": "sha256:" + raw_hash.hexdigest(), "digest": "sha256:" + gz_hash.hexdigest(),
            "size": gz_size, "raw_size": raw_size}


def _config(arch: str, variant: str | None, diff_ids: list[str], cmd: tuple[str, ...], ref: str) -> bytes:
    doc: dict[str, Any] = {
        "architecture": arch, "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Cmd": list(cmd), "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Labels": {"org.opencontainers.image.ref.name": ref}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(len(diff_ids))],
    }
    if variant:
        doc["variant"] = variant
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _manifest(oci: bool, config: bytes, layers: list[tuple[str, int]]) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
           "config": {"mediaType": OCI_CONFIG if oci else DOCKER_CONFIG, "digest": _sha(config), "size": len(config)},
           "layers": [{"mediaType": OCI_LAYER if oci else DOCKER_LAYER, "digest": d, "size": n} for d, n in layers]}
    return json.dumps(doc, indent=3).encode()


def push_path(address: str, scale: float, work: Path, log: Callable[[str], None] = print,
              workers: int | None = None) -> SyntheticPath:
    """Generate every layer of :data:`SPECS` at ``scale`` and push the images (and indexes) to ``address``."""
    work.mkdir(parents=True, exist_ok=True)
    specs: dict[str, LayerSpec] = {}
    for spec in SPECS:
        for layer in spec.layers:
            specs.setdefault(_layer_key(layer), layer)
    log(f"  generating {len(specs)} layers "
        f"({sum(s.size(scale) for s in specs.values()) / 1e6:.0f} MB raw)")
    files = {key: work / f"layer-{i}.tar.gz" for i, key in enumerate(specs)}
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        futures = {key: pool.submit(make_layer, s.path, s.size(scale), s.kind, s.seed, str(files[key]))
                   for key, s in specs.items()}
        made = {key: Layer(**f.result()) for key, f in futures.items()}
    path = SyntheticPath(scale)
    with RegistryClient(address, credentials=Credentials.none(), timeout=120) as client:
        for spec in SPECS:
            _domain, repo, tag = split_reference(spec.ref)
            layers = [made[_layer_key(x)] for x in spec.layers]
            for x, key in zip(layers, (_layer_key(s) for s in spec.layers)):
                client.push_blob(repo, x.digest, x.size, lambda p=files[key]: open(p, "rb"))
            config = _config("amd64", None, [x.diff_id for x in layers], spec.cmd, spec.ref)
            client.push_blob(repo, _sha(config), len(config), lambda c=config: _bytes(c))
            manifest = _manifest(spec.oci_index, config, [(x.digest, x.size) for x in layers])
            digest = client.put_manifest(repo, _sha(manifest), manifest,
                                         OCI_MANIFEST if spec.oci_index else DOCKER_MANIFEST)
            upstream = digest
            if spec.oci_index:
                upstream = _push_index(client, repo, tag, manifest, layers[0])
            else:
                client.put_manifest(repo, tag, manifest, DOCKER_MANIFEST)
            path.images[spec.ref] = PushedImage(
                spec.ref, mirror_reference(spec.ref, address), digest, upstream, _sha(config), layers,
                len(manifest) + len(config) + sum(x.size for x in layers))
            log(f"  pushed {spec.ref}: {len(layers)} layers, "
                f"{sum(x.raw_size for x in layers) / 1e6:.0f} MB raw" + (", an OCI index" if spec.oci_index else ""))
    for f in files.values():
        f.unlink(missing_ok=True)
    return path


def _bytes(data: bytes) -> Any:
    import io
    return io.BytesIO(data)


def _push_index(client: RegistryClient, repo: str, tag: str, amd64_manifest: bytes, shared: Layer) -> str:
    """A small linux/arm64/v8 image beside the amd64 one, and the OCI index of both under ``tag``."""
    arm_layer = f"{repo}:{tag} arm64 only\n".encode() * 64
    arm_tar = io_tar("arm64.txt", arm_layer)
    arm_gz = _gzip(arm_tar)
    client.push_blob(repo, _sha(arm_gz), len(arm_gz), lambda: _bytes(arm_gz))
    config = _config("arm64", "v8", [shared.diff_id, _sha(arm_tar)], ("true",), f"{repo}:{tag}")
    client.push_blob(repo, _sha(config), len(config), lambda: _bytes(config))
    arm_manifest = _manifest(True, config, [(shared.digest, shared.size), (_sha(arm_gz), len(arm_gz))])
    client.put_manifest(repo, _sha(arm_manifest), arm_manifest, OCI_MANIFEST)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": _sha(amd64_manifest), "size": len(amd64_manifest),
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": OCI_MANIFEST, "digest": _sha(arm_manifest), "size": len(arm_manifest),
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}]}
    data = json.dumps(index, indent=2).encode()
    return client.put_manifest(repo, tag, data, OCI_INDEX)


def io_tar(name: str, content: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(content), 0o644, _MTIME
    return info.tobuf(format=tarfile.USTAR_FORMAT) + content + b"\0" * ((-len(content)) % 512) + b"\0" * 1024


def _gzip(data: bytes) -> bytes:
    gz = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return gz.compress(data) + gz.flush()
