"""The benchmark's synthetic upgrade path: images named like the real ones, with a realistic structure.

The plan benchmarked is CE 4.2.8 -> 6.2.2 with MongoDB 5.0 -> 8.0 and Redis 6.2 -> 7.4
(``overleaf-bundle plan --from 4.2.8 --to 6.2.2 --mongo 5.0 --redis 6.2``): seven images,
``sharelatex/sharelatex`` 4.2.9, 5.5.8 and 6.2.2, ``mongo`` 6.0, 7.0 and 8.0, ``redis:7.4``.
Their layers, at ``scale=1`` (MiB; ``text`` compresses about 3.8x with zstd -3, ``random`` not at all):

=========================  ==========================  ======================================
image                      built FROM                  its own layers
=========================  ==========================  ======================================
app base (not tagged       busybox base                300 text (TeX Live, docs) + 250 random
like a real image)                                     (binaries, fonts)
sharelatex 4.2.9, 5.5.8,   app base                    160 text (JavaScript) + 100 random
6.2.1                                                  (native modules, assets), per version
sharelatex 6.2.2           sharelatex 6.2.1            a hotfix: 12 text + 3 random
mongo base                 busybox base                60 text + 20 random
mongo 6.0, 7.0, 8.0        mongo base                  110 random (mongod) + 50 text, each
redis base                 busybox base                30 text + 10 random
redis 7.4                  redis base                  15 random
=========================  ==========================  ======================================

So the app base is shared by every Overleaf version (and ``docker save`` per image repeats
it), 6.2.2 is a hotfix on top of 6.2.1 (the patch hop the delta bundle covers: a host on
6.2.1 lacks only the hotfix layers), and about 2.06 GB of unique raw layer data goes into
the plan's images at ``scale=1``. Every layer scales linearly (at least 1 MiB).

    path = build_path(engine, scale=0.25)
    path.plan_images, path.delta_from_images, path.unique_raw_bytes
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Literal

from tests.support.engine import BASE_IMAGE, MiB, DataLayer, PrivateEngine, build_image

PLAN_ARGS = ["--from", "4.2.8", "--to", "6.2.2", "--edition", "ce", "--mongo", "5.0", "--redis", "6.2"]
PLAN_IMAGES = ["sharelatex/sharelatex:4.2.9", "mongo:6.0", "sharelatex/sharelatex:5.5.8", "mongo:7.0",
               "mongo:8.0", "redis:7.4", "sharelatex/sharelatex:6.2.2"]
# the patch hop of the delta bundle: a host on 6.2.1 (with the stack 6.2.1 runs) moves to 6.2.2
DELTA_PLAN_ARGS = ["--from", "6.2.1", "--to", "6.2.2", "--edition", "ce"]
DELTA_HOST_IMAGES = ["sharelatex/sharelatex:6.2.1", "mongo:8.0", "redis:7.4"]
DELTA_NEW_IMAGE = "sharelatex/sharelatex:6.2.2"
DELTA_OLD_IMAGE = "sharelatex/sharelatex:6.2.1"

APP_BASE = "airgap-bench/app-base:1"
MONGO_BASE = "airgap-bench/mongo-base:1"
REDIS_BASE = "airgap-bench/redis-base:1"

Kind = Literal["text", "random"]


@dataclass(frozen=True)
class LayerSpec:
    path: str
    mib: float          # size at scale 1
    kind: Kind

    def data(self, scale: float, seed: int) -> DataLayer:
        return DataLayer(self.path, max(MiB, int(self.mib * scale * MiB)), self.kind, seed)


@dataclass(frozen=True)
class ImageSpec:
    tag: str
    base: str
    layers: tuple[LayerSpec, ...]
    files: dict[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None


def _app(version: str, base: str, layers: tuple[LayerSpec, ...]) -> ImageSpec:
    return ImageSpec(f"sharelatex/sharelatex:{version}", base, layers, {"/overleaf/VERSION": version + "\n"},
                     cmd=("run-forever", "httpd", "-f", "-p", "80", "-h", "/var/www"))


_APP_LAYERS = (LayerSpec("/overleaf/services/bundle.js", 160, "text"),
               LayerSpec("/overleaf/node_modules/native.node", 100, "random"))
_HOTFIX = (LayerSpec("/overleaf/hotfix/patch.js", 12, "text"), LayerSpec("/overleaf/hotfix/assets.bin", 3, "random"))
_MONGO_LAYERS = (LayerSpec("/usr/bin/mongod", 110, "random"), LayerSpec("/usr/share/mongo/shell.js", 50, "text"))

SPECS: tuple[ImageSpec, ...] = (
    ImageSpec(APP_BASE, BASE_IMAGE, (LayerSpec("/usr/local/texlive/texmf-dist/doc.txt", 300, "text"),
                                     LayerSpec("/usr/local/texlive/bin/fonts.bin", 250, "random"))),
    _app("4.2.9", APP_BASE, _APP_LAYERS),
    _app("5.5.8", APP_BASE, _APP_LAYERS),
    _app("6.2.1", APP_BASE, _APP_LAYERS),
    _app("6.2.2", "sharelatex/sharelatex:6.2.1", _HOTFIX),
    ImageSpec(MONGO_BASE, BASE_IMAGE, (LayerSpec("/usr/lib/os.txt", 60, "text"),
                                       LayerSpec("/usr/lib/os.bin", 20, "random"))),
    *(ImageSpec(f"mongo:{v}", MONGO_BASE, _MONGO_LAYERS, {"/usr/local/share/mongo/version": v + "\n"},
                entrypoint=("sh", "-c", "exec run-forever"), cmd=("mongod",)) for v in ("6.0", "7.0", "8.0")),
    ImageSpec(REDIS_BASE, BASE_IMAGE, (LayerSpec("/usr/lib/os.txt", 30, "text"),
                                       LayerSpec("/usr/lib/os.bin", 10, "random"))),
    ImageSpec("redis:7.4", REDIS_BASE, (LayerSpec("/usr/local/bin/redis-server", 15, "random"),),
              {"/usr/local/share/redis/version": "7.4\n"}, entrypoint=("sh", "-c", "exec run-forever"),
              cmd=("redis-server",)),
)


@dataclass
class SyntheticPath:
    scale: float
    plan_images: list[str]
    layers: dict[str, dict]            # diff_id -> {"size": bytes, "images": [tags]} over the plan's images
    #                                    (sizes: the layer tars of `docker save`, filled in by set_sizes)
    image_layers: dict[str, list[str]]  # tag -> diff_ids, for every tag built

    def set_sizes(self, sizes: dict[str, int]) -> None:
        for d, size in sizes.items():
            if d in self.layers:
                self.layers[d]["size"] = size

    @property
    def unique_raw_bytes(self) -> int:
        return sum(v["size"] for v in self.layers.values())

    def describe(self) -> dict:
        return {"scale": self.scale, "plan_images": self.plan_images, "unique_layers": len(self.layers),
                "unique_raw_bytes": self.unique_raw_bytes,
                "per_image_raw_bytes": {t: sum(self.layers[d]["size"] for d in self.image_layers[t])
                                        for t in self.plan_images}}


def _seed(tag: str, path: str) -> int:
    return zlib.crc32(f"{tag}|{path}".encode())


def build_path(engine: PrivateEngine, scale: float, log=print) -> SyntheticPath:
    """Build every image of :data:`SPECS` at ``scale`` in ``engine``; describe the plan's images."""
    client = engine.client()
    image_layers: dict[str, list[str]] = {}
    for spec in SPECS:
        data = [layer.data(scale, _seed(spec.tag, layer.path)) for layer in spec.layers]
        log(f"  building {spec.tag} ({sum(d.size for d in data) / 1e6:.0f} MB of new layers)")
        img = build_image(client, spec.tag, dict(spec.files), data=data, base=spec.base,
                          entrypoint=spec.entrypoint, cmd=spec.cmd)
        image_layers[spec.tag] = list(img.attrs["RootFS"]["Layers"])
    layers: dict[str, dict] = {}
    for tag in PLAN_IMAGES:
        for d in image_layers[tag]:
            layers.setdefault(d, {"size": 0, "images": []})["images"].append(tag)
    return SyntheticPath(scale, list(PLAN_IMAGES), layers, image_layers)

