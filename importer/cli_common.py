"""The verify and load front ends both CLI modules share (``load``, ``push``, ``upgrade``).

CLI layer: they print (through :mod:`manifests.console`), show progress and ask for the
next disc; the work itself is :func:`importer.images.verify.verify_bundle` and
:func:`importer.images.load.execute`. Living here, apart from :mod:`importer.cli` and
:mod:`importer.cli_upgrade`, they let each of those import them without an import circle.

    vb = verified(Path("/media/disc1"), trust=None, parts_from=[Path("/media/disc2")],
                  allow_expired=False, allow_downgrade=False, stream_parts=True)
    client, result, seconds = load_verified(vb, replace_tags=False)
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

from manifests.bundle import BundleManifest, utc_now
from manifests.console import interactive, progress, safe, say, warn
from manifests.errors import UsageError
from manifests.units import human_size

from importer.images.hoststate import HostState, load_trusted
from importer.images.verify import BundleFolders, VerifiedBundle, describe_missing, verify_bundle


def _ask(missing: list[str]) -> Path | None:
    say(f"Missing: {safe(describe_missing(missing))}.")
    import typer

    answer = typer.prompt("Insert the next disc and type the folder that holds these parts (empty: stop)",
                          default="", show_default=False, err=True).strip()
    return Path(answer).expanduser() if answer else None


def verified(bundle_dir: Path, trust: Optional[List[Path]], parts_from: Optional[List[Path]],
              allow_expired: bool, allow_downgrade: bool, *, stream_parts: bool = False) -> VerifiedBundle:
    """Signature, expiry, sequence and files; the parts too, unless ``stream_parts`` (then the load checks
    each segment as it streams, one pass over the media, and records the bundle after it: see _load)."""
    trusted = load_trusted(trust or [])
    for message in trusted.skipped:
        warn(f"ignored in the trust folder: {safe(message)}")
    state = HostState.load()
    for folder in parts_from or []:
        if not folder.is_dir():
            raise UsageError(f"--parts-from {safe(folder)}: no such folder", "Check the path (is the disc mounted?).")
    folders = BundleFolders(bundle_dir, parts_from or [], ask=_ask if interactive() else None)
    bar = None

    def on_manifest(m: BundleManifest, warnings: list[str]) -> None:
        nonlocal bar
        source = trusted.sources.get(m.key_id)
        say(f"Signature: good, by {safe(m.key_id)}" + (f" ({safe(source)})" if source else ""))
        say(f"Bundle: {safe(m.product_key)} {safe(m.from_version)} -> {safe(m.to_version)}, sequence {m.sequence}, "
            f"expires {safe(m.expires)}, {len(m.images)} image(s), {len(m.parts)} part(s)")
        for w in warnings:
            warn(safe(w))
        bar = None if stream_parts else progress(sum(p.size for p in m.parts) + sum(f.size for f in m.files),
                                                 "verify")

    try:
        vb = verify_bundle(folders, trusted, state, now=utc_now(), allow_expired=allow_expired,
                           allow_downgrade=allow_downgrade, on_manifest=on_manifest,
                           on_bytes=lambda n: bar.update(n) if bar is not None else None, stream_parts=stream_parts)
    finally:
        if bar is not None:
            bar.close()
    r = vb.report
    if stream_parts:
        say(f"Contents: {len(vb.manifest.files)} file(s) intact, {len(vb.manifest.parts)} part(s) found; "
            "each part is checked as it is read")
        return vb
    say(f"Contents: {len(r.checked)} file(s), {human_size(r.bytes)} checked in {r.seconds:.1f} s "
        f"({r.mb_per_s:.0f} MB/s): all intact")
    if vb.recorded:
        say(f"Recorded as the last accepted {safe(vb.manifest.product_key)} bundle in {safe(state.path)}")
    return vb


def load_verified(vb: VerifiedBundle, replace_tags: bool):
    from importer.images import engine as eng  # here: `verify` needs no Docker SDK (start-up time)
    from importer.images.load import execute, plan_load
    from importer.images.verify import accept_bundle

    client = eng.connect()
    info = eng.preflight(client)
    plan = plan_load(client, vb.manifest, replace_tags=replace_tags, info=info)
    info = eng.preflight(client, need_bytes=plan.send_bytes)
    if plan.send_bytes and info.free_bytes is None:
        warn(f"cannot check free space: the engine's data root ({safe(info.data_root or '?')}) is not on this machine; "
             f"loading needs about {human_size(eng.SPACE_FACTOR * plan.send_bytes)} there")
    for ref in plan.replaced:
        warn(f"{safe(ref)} will be moved to the bundle's image (--replace-tags)")
    say(f"Engine {safe(eng.engine_name())} ({info.version}, {plan.store} image store): {len(plan.load)} image(s) to load ({human_size(plan.send_bytes)} to send), "
        f"{len(plan.tag_only)} to tag, {len(plan.present)} already present")
    hint = eng.unpigz_hint(plan.store, plan.gzip_layer_bytes)
    if hint:
        say(f"note: {hint}")
    start = time.monotonic()
    bar = progress(vb.manifest.payload_size, "load") if plan.load else None
    try:
        result = execute(client, vb, plan, on_bytes=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.monotonic() - start
    if accept_bundle(vb):  # a streamed bundle is recorded once every part was read intact
        say(f"Recorded as the last accepted {safe(vb.manifest.product_key)} bundle in {safe(vb.state.path)}")
    for img in plan.load + plan.tag_only:
        say(f"  {safe(img.ref)} = {safe(plan.expected(img)[:19])}  "
            f"{'loaded' if img in plan.load else 'tagged'}, verified")
    for img in plan.present:
        say(f"  {safe(img.ref)} = {safe(plan.expected(img)[:19])}  already present")
    return client, result, seconds


