"""``overleaf-import``: the offline side. Thin: parse options, call the importer's modules, print.

    overleaf-import verify BUNDLE_DIR [--trust K.pub] [--parts-from DIR ...] [--allow-expired] [--allow-downgrade]
    overleaf-import load BUNDLE_DIR [same] [--replace-tags]
    overleaf-import push BUNDLE_DIR --registry HOST[:PORT][/PREFIX] [--insecure] [same]
    overleaf-import inventory --out receipt.json

Every command talks to the engine DOCKER_HOST names (the local one by default).
Global options ``--verbose`` and ``--json`` come before the command (``--json`` is
also accepted after it). Expected failures print what is wrong and what to do, and
exit with the error's code (see manifests/errors.py). More commands (``upgrade``,
``rollback``, ``status``) register on :data:`app` from their own modules.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from manifests.console import CTX, command, emit_json, progress, safe, say, warn

from importer.cli_common import load_verified as _load, verified as _verified
from importer.options import BundleArg, DowngradeOpt, ExpiredOpt, JsonOpt, PartsOpt, TrustOpt

if TYPE_CHECKING:
    from importer.images.verify import VerifiedBundle

# Start-up time: the Docker SDK, requests, YAML, zstandard, the planner and the upgrade package are imported
# in the commands that use them, not here (tests/test_startup.py checks `--help` and `verify` stay light).

app = typer.Typer(name="overleaf-import", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Verify, load and push signed Overleaf image bundles on an offline host.")


@app.callback()
def _global(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show causes of errors (tracebacks)."),
            json_out: bool = typer.Option(False, "--json", help="Print results as JSON on stdout.")) -> None:
    CTX.reset(verbose=verbose, json=json_out)


def _verify_json(vb: VerifiedBundle) -> dict:
    from importer.images.hoststate import state_path
    from importer.images.verify import summary

    r = vb.report
    return {"ok": True, "bundle": summary(vb), "signer": vb.signer, "warnings": vb.warnings,
            "checked": {"files": sorted(r.checked), "bytes": r.bytes, "seconds": round(r.seconds, 3),
                        "mb_per_s": round(r.mb_per_s, 1)},
            "state": {"path": str(state_path()), "recorded": vb.recorded, "accepted": vb.accepted.to_dict()}}


@app.command()
@command
def verify(bundle_dir: Path = BundleArg, trust: Optional[List[Path]] = TrustOpt,
           parts_from: Optional[List[Path]] = PartsOpt, allow_expired: bool = ExpiredOpt,
           allow_downgrade: bool = DowngradeOpt, json_out: bool = JsonOpt) -> None:
    """Check the signature, expiry, sequence and every part and file of a bundle. Touches no engine."""
    vb = _verified(bundle_dir, trust, parts_from, allow_expired, allow_downgrade)
    if CTX.json:
        emit_json(_verify_json(vb))
    else:
        say("OK: the bundle is intact and trusted. Next: overleaf-import load " + safe(bundle_dir))


@app.command()
@command
def load(bundle_dir: Path = BundleArg, trust: Optional[List[Path]] = TrustOpt,
         parts_from: Optional[List[Path]] = PartsOpt, allow_expired: bool = ExpiredOpt,
         allow_downgrade: bool = DowngradeOpt,
         replace_tags: bool = typer.Option(False, "--replace-tags",
                                           help="Move tags that name other images here to the bundle's images."),
         json_out: bool = JsonOpt) -> None:
    """Verify, then stream the bundle's images into the engine and check each tag's pinned image ID."""
    vb = _verified(bundle_dir, trust, parts_from, allow_expired, allow_downgrade, stream_parts=True)
    _client, result, seconds = _load(vb, replace_tags)
    if CTX.json:
        emit_json({**_verify_json(vb), "load": {**result.plan.to_dict(), "requests": result.requests, "seconds": round(seconds, 3)}})
    else:
        say(f"OK: {len(vb.manifest.images)} image(s) on the engine, each at its pinned ID ({seconds:.1f} s).")


@app.command()
@command
def push(bundle_dir: Path = BundleArg,
         registry: str = typer.Option(..., "--registry", metavar="HOST[:PORT][/PREFIX]",
                                      help="The internal registry, optionally with a repository prefix."),
         insecure: bool = typer.Option(False, "--insecure",
                                       help="The registry speaks plain HTTP (loopback registries always may)."),
         trust: Optional[List[Path]] = TrustOpt, parts_from: Optional[List[Path]] = PartsOpt,
         allow_expired: bool = ExpiredOpt, allow_downgrade: bool = DowngradeOpt,
         json_out: bool = JsonOpt) -> None:
    """Push every image straight from the bundle to REGISTRY (no engine): same path and tag, same digests."""
    from importer.images.push import overleaf_rc, parse_registry, push_bundle
    from importer.images.verify import accept_bundle

    target = parse_registry(registry)
    vb = _verified(bundle_dir, trust, parts_from, allow_expired, allow_downgrade, stream_parts=True)
    m = vb.manifest
    bar = progress(m.payload_size, "push")
    try:
        pushed = push_bundle(m, vb.folders.locate_for_reading(m.parts), target, insecure=insecure,
                             on_bytes=bar.update,
                             on_image=lambda ref, to: say(f"Tagging {safe(ref)} -> {safe(to)}"))
    finally:
        bar.close()
    accept_bundle(vb)
    rc, warnings = overleaf_rc(m, pushed.pushed)
    kept = [r for r in m.upgrade_plan.assumed_present if r not in pushed.pushed]
    if kept:
        warnings.append("not pushed, because this bundle does not carry them (the plan assumes the host runs "
                        "them): " + ", ".join(kept) + "; their overleaf.rc settings stay as they are")
    unconfirmed = [i.target for i in pushed.images if not i.confirmed]
    if unconfirmed:
        warnings.append("the registry reported no digest for " + ", ".join(unconfirmed) + " and the manifests "
                        "could not be read back: their digests are unconfirmed (pull one by digest to check)")
    for w in warnings:
        warn(safe(w))
    if CTX.json:
        emit_json({"ok": True, **pushed.to_dict(), "overleaf_rc": rc, "warnings": warnings})
        return
    for img in pushed.images:
        say(f"  {safe(img.target)} = {img.registry_digest[:19]}  ({img.describe()})")
    say(f"OK: {len(pushed.images)} image(s) pushed to {safe(target.address)} "
        f"({len(pushed.uploaded)} blob(s) uploaded, {len(pushed.skipped)} already there, "
        f"{len(pushed.mounted)} mounted).")
    if rc:
        say("Set these in config/overleaf.rc on each Overleaf host (they then pull from the registry):")
        for k, v in rc.items():
            say(f"  {safe(k)}={safe(v)}")


@app.command()
@command
def inventory(out: Path = typer.Option(..., "--out", metavar="FILE", help="Where to write the receipt (JSON)."),
              json_out: bool = JsonOpt) -> None:
    """Write a receipt of the images this engine holds, for `overleaf-bundle build --have FILE`."""
    from manifests.bundle import utc_now
    from importer.images import engine as eng
    from importer.images.hoststate import HostState
    from importer.images.inventory import make_receipt, write_receipt

    client = eng.connect()
    info = eng.preflight(client)
    host = eng.HostImages.scan(client, info.image_store)
    state = HostState.load()
    receipt = make_receipt(host, info, state, utc_now())
    digest = write_receipt(out, receipt)
    if CTX.json:
        emit_json({"ok": True, "out": str(out), "sha256": digest, "images": len(receipt["images"]),
                   "accepted": receipt["accepted"]})
    else:
        say(f"Wrote {safe(out)}: {len(receipt['images'])} image(s), sha256 {digest}")
        say("Carry it to the online side: overleaf-bundle build ... --have " + safe(out.name))


# upgrade, rollback, status: the Toolkit side, in their own module
from importer.cli_upgrade import register as _register_toolkit_commands  # noqa: E402

_register_toolkit_commands(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
