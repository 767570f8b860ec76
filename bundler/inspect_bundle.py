"""``overleaf-bundle inspect``: show what a bundle holds, from its manifest alone.

No key is needed and the signature is NOT checked (the importer's ``verify`` does
that); the manifest is only parsed strictly. Parts are looked for beside it and
reported present or missing by size (not hashed).

    info = inspect_bundle(Path("bundle-6.2.2"))
    print(render_inspect(info))
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from manifests.bundle import MANIFEST_NAME, SIGNATURE_NAME, BundleManifest, parse_iso
from manifests.console import safe
from manifests.errors import IntegrityError
from manifests.limits import LIMITS
from manifests.safeio import read_regular
from manifests.units import human_size


@dataclass(frozen=True)
class Inspection:
    folder: Path
    manifest: BundleManifest
    signature_present: bool
    present: dict[str, str]   # part or file name -> "ok", "missing" or "wrong size"

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {"folder": str(self.folder), "signature_checked": False,
                "signature_present": self.signature_present,
                "summary": {"edition": m.edition, "from": m.from_version, "to": m.to_version,
                            "bundle_id": m.bundle_id, "key_id": m.key_id, "sequence": m.sequence,
                            "created": m.created, "expires": m.expires, "expired": _expired(m),
                            "platform": m.platform, "tool_version": m.tool_version,
                            "images": len(m.images), "blobs": len(m.blobs), "parts": len(m.parts),
                            "payload_size": m.payload_size, "max_part_size": m.max_part_size,
                            "omitted_layers": len(m.omitted_layers)},
                "present": self.present, "manifest": m.to_dict()}


def _expired(m: BundleManifest) -> bool:
    return parse_iso(m.expires) <= datetime.now(timezone.utc)


def inspect_bundle(path: Path) -> Inspection:
    path = Path(path)
    folder = path.parent if path.name == MANIFEST_NAME and path.is_file() else path
    try:  # bounded, regular file only, never blocks on a FIFO
        data = read_regular(folder / MANIFEST_NAME, LIMITS.manifest, "the manifest", IntegrityError, follow_symlinks=True,
                            hint="Pass the bundle folder (the one holding manifest.json).")
    except FileNotFoundError:
        raise IntegrityError(f"cannot read {folder / MANIFEST_NAME}: no such file",
                             "Pass the bundle folder (the one holding manifest.json).") from None
    m = BundleManifest.from_bytes(data)
    present: dict[str, str] = {}
    for ref in (*m.parts, *m.files):
        p = folder / ref.name
        if not p.exists():
            present[ref.name] = "missing"
        else:
            present[ref.name] = "ok" if p.stat().st_size == ref.size else "wrong size"
    return Inspection(folder, m, (folder / SIGNATURE_NAME).exists(), present)


def render_inspect(info: Inspection) -> str:
    m = info.manifest
    product = "Server Pro" if m.edition == "pro" else "Community Edition"
    L = [f"Bundle {info.folder}: Overleaf {product} {m.from_version} -> {m.to_version}",
         "  signature NOT checked (inspect reads the manifest only; run `overleaf-import verify` for that)"
         + ("" if info.signature_present else "; manifest.json.sig is MISSING"),
         f"  bundle id {m.bundle_id}, created {m.created}, tool {m.tool_version}",
         f"  expires   {m.expires}" + ("  (EXPIRED)" if _expired(m) else ""),
         f"  key id    {m.key_id}, sequence {m.sequence}, platform {m.platform}", "",
         "Steps:"]
    plan = m.plan
    for s in plan.get("steps", []):
        L.append(f"  {s['id']:<40s} {s['description']}")
    L += ["", f"Images ({len(m.images)}):"]
    for i in m.images:
        L.append(f"  {i.ref:<48s} {i.id[:19]}  {human_size(i.size):>10s}  {len(i.diff_ids):2d} layers  {i.source}"
                 + (f"  upstream {i.upstream_digest[:19]}" if i.upstream_digest else ""))
    stored = sum(b.stored_size for b in m.blobs)
    raw = sum(b.size for b in m.blobs)
    L += ["", f"Payload: {len(m.blobs)} blobs, {human_size(raw)} uncompressed, {human_size(stored)} stored; "
              f"{len(m.parts)} part(s), {human_size(m.payload_size)}, at most {human_size(m.max_part_size)} each"]
    for p in m.parts:
        L.append(f"  {p.name:<14s} {human_size(p.size):>10s}  sha256 {p.sha256[:16]}  {info.present.get(p.name, '')}")
    if m.files:
        L += ["", f"Files ({len(m.files)}):"]
        for f in m.files:
            L.append(f"  {f.name:<60s} {human_size(f.size):>10s}  {info.present.get(f.name, '')}")
    if m.toolkit:
        L.append(f"Toolkit: commit {m.toolkit['commit']} in {m.toolkit['file']}")
    if m.delta:
        L += ["", f"Delta bundle: {len(m.omitted_layers)} layer(s) left out (the host has them); "
                  f"receipt sha256 {str(m.delta.get('receipt_sha256', ''))[:16]}"]
    else:
        L += ["", "Full bundle (no layers left out)."]
    # every line holds values from an unverified manifest: no control character reaches the terminal
    return "\n".join(safe(line) for line in L)
