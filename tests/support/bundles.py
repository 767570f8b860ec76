"""Signed bundles in exactly the manifests/bundle.py format, made from images in an engine (tests, benchmarks).

A stand-in for ``overleaf-bundle build`` that the importer's tests can bend: any
sequence, expiry or key; layers left out as a delta; extra payload members; a
manifest edited and re-signed (or edited after signing).

    key = make_key(tmp_path / "keys")
    m = make_bundle(engine.client(), ["mongo:8.0"], tmp_path / "b", key, sequence=3)
    m["images"][0]["ref"] = "mongo:8.0;rm -rf /"; sign(tmp_path / "b", m, key)   # signed, yet invalid
"""
from __future__ import annotations

import hashlib
import io
import re
import tarfile
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import docker
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manifests.bundle import (MANIFEST_NAME, PUBKEY_NAME, README_NAME, SIGNATURE_NAME, canonical_json, iso,
                              utc_now)
from manifests.payload import PartWriter
from manifests.signing import key_id, public_pem

CHUNK = 1024 * 1024
Member = tuple[tarfile.TarInfo, bytes | None]  # an extra payload member: header and content


@dataclass
class SigningKey:
    private: Ed25519PrivateKey
    pub_path: Path
    id: str


def make_key(folder: Path, name: str = "signer") -> SigningKey:
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pub = folder / f"{name}.pub"
    pub.write_bytes(public_pem(key.public_key()))
    return SigningKey(key, pub, key_id(key.public_key()))


def export_blobs(client: docker.DockerClient, refs: Sequence[str], work: Path) -> dict[str, Path]:
    """``docker save`` of all ``refs`` at once, streamed: {digest: file of the uncompressed blob}."""
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    resp = client.api._get(client.api._url("/images/get"), params={"names": list(refs)}, stream=True)
    client.api._raise_for_status(resp)
    resp.raw.decode_content = True
    with tarfile.open(fileobj=resp.raw, mode="r|", bufsize=CHUNK) as tar:
        for member in tar:
            is_layer = member.isreg() and member.name.endswith("/layer.tar")
            is_config = member.isreg() and re.fullmatch(r"[0-9a-f]{64}\.json", member.name)
            if not (is_layer or is_config):
                continue  # manifest.json, repositories, v1 json, VERSION, links to shared layers
            h, tmp = hashlib.sha256(), work / "incoming"
            src = tar.extractfile(member)
            with open(tmp, "wb") as fh:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    fh.write(chunk)
            digest = "sha256:" + h.hexdigest()
            tmp.replace(work / digest[7:])
            out[digest] = work / digest[7:]
    return out


def _plan(refs: Sequence[str], from_v: str, to_v: str) -> dict[str, Any]:
    step = {"id": f"01-app-{to_v}", "kind": "app", "description": "test step", "images": list(refs), "version": to_v}
    return {"schema": 1, "from": from_v, "to": to_v, "edition": "ce", "options": {}, "steps": [step],
            "images": sorted(set(refs)), "assumed_present": [], "local_images": [], "warnings": []}


def _header(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0o644, 0, 0, 0, "", ""
    return info


def make_bundle(client: docker.DockerClient, refs: Sequence[str], out: Path, key: SigningKey, *, sequence: int = 1,
                created_delta: timedelta = timedelta(0), lifetime: timedelta = timedelta(days=30),
                max_part_size: int = 1024 * 1024, omit: Iterable[str] = (), compress: bool = True,
                files: dict[str, bytes] | None = None, extra_members: Sequence[Member] = (), corrupt: Iterable[str] = (),
                edit: Callable[[dict[str, Any]], None] | None = None, work: Path | None = None) -> dict[str, Any]:
    """Build a signed bundle in ``out``; return its manifest dict.

    ``omit``: diff_ids left out (a delta); ``corrupt``: digests whose content gets one byte flipped
    before it is stored (same size, still listed under its digest: the parts hash fine, the blob does not).
    """
    out.mkdir(parents=True, exist_ok=True)
    work = work or out.with_name(out.name + ".work")
    files_on_disk = export_blobs(client, refs, work)
    omit = set(omit)
    images, blobs, stored = [], {}, {}
    cctx = zstandard.ZstdCompressor(level=3)
    for ref in refs:
        data = client.api.inspect_image(ref)
        layers = data["RootFS"]["Layers"]
        images.append({"ref": ref, "id": data["Id"], "diff_ids": layers, "platform": f"{data['Os']}/{data['Architecture']}",
                       "upstream_digest": None, "source": "local",
                       "size": sum(files_on_disk[d].stat().st_size for d in [data["Id"], *layers] if d in files_on_disk)})
        for digest, kind in [(data["Id"], "config"), *[(d, "layer") for d in layers]]:
            if digest in blobs or digest in omit:
                continue
            raw = files_on_disk[digest]
            if digest in corrupt:
                data = bytearray(raw.read_bytes())
                data[len(data) // 2] ^= 0x01
                raw = raw.with_suffix(".bad")
                raw.write_bytes(bytes(data))
            path = raw
            if kind == "layer" and compress:
                path = raw.with_name(raw.name + ".zst")
                with open(raw, "rb") as src, open(path, "wb") as dst:
                    cctx.copy_stream(src, dst, read_size=CHUNK, write_size=CHUNK)
            enc = "zstd" if path != raw else "none"
            blobs[digest] = {"digest": digest, "kind": kind, "size": raw.stat().st_size, "encoding": enc,
                             "stored_size": path.stat().st_size}
            stored[digest] = path
    writer = PartWriter(out, max_part_size)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK) as tar:
        for digest in sorted(blobs, key=lambda d: (blobs[d]["kind"] != "config", d)):
            name = f"blobs/sha256/{digest[7:]}" + (".zst" if blobs[digest]["encoding"] == "zstd" else "")
            with open(stored[digest], "rb") as fh:
                tar.addfile(_header(name, blobs[digest]["stored_size"]), fh)
        for info, content in extra_members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    writer.close()
    file_refs = []
    for name, content in (files or {}).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
        file_refs.append({"name": name, "size": len(content), "sha256": hashlib.sha256(content).hexdigest()})
    now = utc_now() + created_delta
    manifest = {
        "format": "overleaf-airgap-bundle", "schema": 1, "bundle_id": str(uuid.uuid4()), "tool_version": "test",
        "product": "overleaf", "edition": "ce", "from_version": "5.5.3", "to_version": "5.5.4",
        "created": iso(now), "expires": iso(now + lifetime), "sequence": sequence, "key_id": key.id,
        "platform": images[0]["platform"] if images else "linux/amd64", "plan": _plan(refs, "5.5.3", "5.5.4"),
        "images": images, "blobs": list(blobs.values()),
        "parts": [{"name": p.name, "size": p.size, "sha256": p.sha256} for p in writer.parts],
        "payload_size": writer.total, "max_part_size": max_part_size, "files": file_refs, "toolkit": None,
        "delta": {"receipt_sha256": "0" * 64, "omitted_layers": sorted(omit)} if omit else None,
    }
    if edit:
        edit(manifest)
    (out / README_NAME).write_text("Run: overleaf-import verify . && overleaf-import load .\n")
    (out / PUBKEY_NAME).write_bytes(key.pub_path.read_bytes())
    sign(out, manifest, key)
    return manifest


def sign(bundle: Path, manifest: dict[str, Any], key: SigningKey) -> bytes:
    """Write ``manifest`` (canonical JSON, not validated) and its signature by ``key``."""
    data = canonical_json(manifest)
    (bundle / MANIFEST_NAME).write_bytes(data)
    (bundle / SIGNATURE_NAME).write_bytes(key.private.sign(data))
    return data


def read_manifest(bundle: Path) -> dict[str, Any]:
    import json
    return json.loads((bundle / MANIFEST_NAME).read_bytes())
