"""Signed format-2 bundles made straight from a test registry (no engine): a stand-in for the builder.

The importer's tests need bundles they can bend (a delta, a flipped blob byte, a
re-encoded image, any sequence); this helper downloads each image's manifest, config
and layer blobs with plain HTTP from a Distribution registry (the ``registry``
fixture, images pushed with ``push_to_registry``) and writes them in exactly the
format of ``manifests/bundle.py``: upstream-exact by default, or re-encoded
(``recompress=True``: uncompressed layer tars stored zstd-compressed, an OCI
manifest written here).

    pushed = push_to_registry(engine, registry, ["mongo:8.0"])
    key = make_key(tmp_path / "keys")
    m = make_registry_bundle(registry.url, pushed, tmp_path / "b", key, sequence=3)
    m["images"][0]["id"]      # config digest; m["images"][0]["manifest_digest"]: the registry's manifest
"""
from __future__ import annotations

import gzip
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import requests
import zstandard

from manifests.bundle import DOCKER_MANIFEST, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST, PUBKEY_NAME, README_NAME, iso, utc_now
from manifests.payload import END_OF_ARCHIVE, PartWriter, member_header, padding
from tests.support.signing_keys import SigningKey, make_key, read_manifest, sign  # noqa: F401 - re-exported

ACCEPT = ", ".join([DOCKER_MANIFEST, OCI_MANIFEST])
SEGMENT = 64 * 1024


@dataclass
class Blob:
    digest: str
    kind: str
    media_type: str
    data: bytes


@dataclass
class FetchedImage:
    ref: str
    manifest: Blob
    config: Blob
    layers: list[Blob]
    diff_ids: list[str]
    platform: str


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fetch_image(registry_url: str, ref: str, pushed: str) -> FetchedImage:
    """Manifest, config and layers of ``pushed`` (``127.0.0.1:PORT/repo:tag``) from the registry, checked."""
    host_repo, _, tag = pushed.rpartition(":")
    repo = host_repo.split("/", 1)[1]
    r = requests.get(f"{registry_url}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT}, timeout=60)
    r.raise_for_status()
    mbytes = r.content
    mdoc = json.loads(mbytes)
    mtype = mdoc.get("mediaType") or r.headers["Content-Type"]
    assert r.headers.get("Docker-Content-Digest", _sha(mbytes)) == _sha(mbytes)

    def blob(desc: dict, kind: str) -> Blob:
        got = requests.get(f"{registry_url}/v2/{repo}/blobs/{desc['digest']}", timeout=60)
        got.raise_for_status()
        assert _sha(got.content) == desc["digest"]
        return Blob(desc["digest"], kind, desc["mediaType"], got.content)

    config = blob(mdoc["config"], "config")
    cfg = json.loads(config.data)
    layers = [blob(d, "layer") for d in mdoc["layers"]]
    return FetchedImage(ref, Blob(_sha(mbytes), "manifest", mtype, mbytes), config, layers,
                        list(cfg["rootfs"]["diff_ids"]), f"{cfg['os']}/{cfg['architecture']}")


def reencode(img: FetchedImage, top: bytes | None = None) -> FetchedImage:
    """The image as a re-encoded bundle carries it: uncompressed layer tars, an OCI manifest.

    ``top``: another tar as the top layer (named by its own digest everywhere, but the config's
    diff_ids unchanged): a bundle that only the engine can find wrong.
    """
    layers = []
    for layer, diff in zip(img.layers, img.diff_ids):
        raw = gzip.decompress(layer.data) if layer.data[:2] == b"\x1f\x8b" else layer.data
        assert _sha(raw) == diff
        layers.append(Blob(diff, "layer", OCI_LAYER_TAR, raw))
    if top is not None:
        layers[-1] = Blob(_sha(top), "layer", OCI_LAYER_TAR, top)
    config = Blob(img.config.digest, "config", OCI_CONFIG, img.config.data)
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": len(config.data)},
           "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": len(b.data)} for b in layers]}
    mbytes = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return FetchedImage(img.ref, Blob(_sha(mbytes), "manifest", OCI_MANIFEST, mbytes), config, layers,
                        img.diff_ids, img.platform)


def _plan(refs: list[str]) -> dict[str, Any]:
    """A real plan (the importer re-plans and compares); the bundle's images are the test's own."""
    from manifests.catalog import load_catalog
    from manifests.planner import PlanRequest, make_plan

    return make_plan(load_catalog(overlay=False),
                     PlanRequest(current="5.5.3", target="5.5.4", mongo="6.0", redis="7.4")).to_dict()


def make_registry_bundle(registry_url: str, pushed: Mapping[str, str], out: Path, key: SigningKey, *,
                         recompress: bool = False, omit: Iterable[str] = (), delta_store: str = "classic",
                         sequence: int = 1, max_part_size: int = 256 * 1024, segment_size: int = SEGMENT,
                         files: Mapping[str, bytes] | None = None, corrupt: Iterable[str] = (),
                         edit: Callable[[dict[str, Any]], None] | None = None, wrong_top: Mapping[str, bytes] = {},
                         lifetime: timedelta = timedelta(days=30)) -> dict[str, Any]:
    """Write a signed bundle of ``pushed`` ({ref: pushed ref}) into ``out``; return its manifest dict.

    ``omit``: layer blob digests left out (a delta); ``corrupt``: blob digests whose stored
    bytes get one byte flipped (still listed under their digest: the parts hash fine, the blob does not);
    ``wrong_top`` (with ``recompress``): {ref: a tar that replaces the image's top layer}.
    """
    out.mkdir(parents=True, exist_ok=True)
    omit, corrupt = set(omit), set(corrupt)
    fetched = [fetch_image(registry_url, ref, src) for ref, src in pushed.items()]
    if recompress:
        fetched = [reencode(i, wrong_top.get(i.ref)) for i in fetched]
    images, blobs, order = [], {}, []
    cctx = zstandard.ZstdCompressor(level=3)
    for img in fetched:
        images.append({
            "ref": img.ref, "id": img.config.digest, "diff_ids": img.diff_ids,
            "layers": [b.digest for b in img.layers], "platform": img.platform,
            "manifest_digest": img.manifest.digest, "upstream_digest": None if recompress else img.manifest.digest,
            "index_entry": None, "exact": not recompress, "source": "registry",
            "size": len(img.manifest.data) + len(img.config.data) + sum(len(b.data) for b in img.layers)})
        for b in [img.manifest, img.config, *img.layers]:
            if b.digest in blobs or b.digest in omit:
                continue
            stored = b.data
            if b.digest in corrupt:
                flipped = bytearray(stored)
                flipped[len(flipped) // 2] ^= 0x01
                stored = bytes(flipped)
            enc = "zstd" if recompress and b.kind == "layer" else "none"
            if enc == "zstd":
                stored = cctx.compress(stored)
            blobs[b.digest] = ({"digest": b.digest, "kind": b.kind, "media_type": b.media_type, "size": len(b.data),
                                "encoding": enc, "stored_size": len(stored)}, stored)
            order.append(b.digest)
    order.sort(key=lambda d: blobs[d][0]["kind"] == "layer")  # manifests and configs first (stable)
    writer = PartWriter(out, max_part_size, segment_size)
    for d in order:
        entry, stored = blobs[d]
        name = f"blobs/sha256/{d[7:]}" + (".zst" if entry["encoding"] == "zstd" else "")
        writer.write(member_header(name, len(stored)))
        writer.write(stored)
        writer.write(padding(len(stored)))
    writer.write(END_OF_ARCHIVE)
    writer.close()
    file_refs = []
    for name, content in (files or {}).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
        file_refs.append({"name": name, "size": len(content), "sha256": hashlib.sha256(content).hexdigest()})
    now = utc_now()
    refs = [i["ref"] for i in images]
    manifest = {
        "format": "overleaf-airgap-bundle", "schema": 2, "bundle_id": secrets.token_hex(16), "tool_version": "test",
        "product": "overleaf", "edition": "ce", "from_version": "5.5.3", "to_version": "5.5.4",
        "created": iso(now), "expires": iso(now + lifetime), "sequence": sequence, "key_id": key.id,
        "platform": images[0]["platform"], "plan": _plan(refs), "images": images,
        "blobs": [blobs[d][0] for d in order],
        "parts": [{"name": p.name, "size": p.size, "sha256": p.sha256, "segments": list(p.segments)}
                  for p in writer.parts],
        "payload_size": writer.total, "max_part_size": max_part_size, "segment_size": segment_size,
        "files": file_refs, "toolkit": None, "catalog_overlay": None, "recompress": "zstd" if recompress else None,
        "delta": ({"receipt_sha256": "0" * 64, "store": delta_store, "omitted_layers": sorted(omit)}
                  if omit else None),
    }
    if edit:
        edit(manifest)
    (out / README_NAME).write_text("Run: overleaf-import verify . && overleaf-import load .\n")
    (out / PUBKEY_NAME).write_bytes(key.pub_path.read_bytes())
    sign(out, manifest, key)
    return manifest
