"""The ``keygen``, ``build`` and ``inspect`` commands of ``overleaf-bundle`` (registered by bundler/cli.py).

Thin: parse options, call :mod:`bundler.keys`, :mod:`bundler.build`,
:mod:`bundler.inspect_bundle`, print. Errors go through :func:`manifests.console.run`.
``build`` describes the upgrade with the same options as ``plan`` (:mod:`bundler.options`).

    overleaf-bundle keygen --out release.key
    overleaf-bundle build --from 5.5.4 --to 6.2.2 --key release.key --out bundle --json
    overleaf-bundle inspect bundle --json
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import List, Optional

import typer

from manifests.bundle import parse_size
from manifests.console import CTX, command, emit_json, progress, say, warn

from manifests.errors import UsageError

from .options import (AllowRcOpt, EditionOpt, FromOpt, GitBridgeOpt, JsonOpt, MongoOpt, RedisOpt, TexliveOpt,
                      TlsProxyOpt, ToolkitOpt, ToOpt, plan_request)


class _CliReporter:
    def log(self, msg: str) -> None:
        say(f"  {msg}")

    def warn(self, msg: str) -> None:
        warn(msg)

    def bar(self, total, desc: str, unit: str = "B"):
        return progress(total, desc, unit=unit)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@command
def keygen_cmd(
    out: Path = typer.Option(..., "--out", help="Private key file to write (the public key goes to OUT.pub)."),
    passphrase_env: Optional[str] = typer.Option(None, "--passphrase-env", metavar="VAR",
                                                 help="Read the passphrase from this environment variable."),
    no_passphrase: bool = typer.Option(False, "--no-passphrase", help="Write the private key unencrypted."),
    json_out: bool = JsonOpt,
) -> None:
    """Make an Ed25519 signing key pair (private key 0600, encrypted with a passphrase)."""
    from .keys import write_new_key

    priv, pub, kid, encrypted = write_new_key(out, passphrase_env, no_passphrase)
    if CTX.json:
        emit_json({"key_id": kid, "private_key": str(priv), "public_key": str(pub), "encrypted": encrypted})
        return
    say(f"key id: {kid}")
    say(f"private key: {priv} ({'encrypted' if encrypted else 'NOT encrypted'}, mode 0600): keep it secret")
    say(f"public key:  {pub}: give it to the offline admins through a trusted channel")


@command
def build_cmd(
    from_: Optional[str] = FromOpt,
    to: str = ToOpt,
    edition: Optional[str] = EditionOpt,
    git_bridge: Optional[bool] = GitBridgeOpt,
    tls_proxy: Optional[bool] = TlsProxyOpt,
    texlive: Optional[List[str]] = TexliveOpt,
    mongo: Optional[str] = MongoOpt,
    redis: Optional[str] = RedisOpt,
    toolkit: Optional[Path] = ToolkitOpt,
    allow_rc: bool = AllowRcOpt,
    key: Path = typer.Option(..., "--key", help="Private signing key (from `overleaf-bundle keygen`)."),
    passphrase_env: Optional[str] = typer.Option(None, "--passphrase-env", metavar="VAR",
                                                 help="Read the key's passphrase from this environment variable "
                                                      "(default: OVERLEAF_AIRGAP_KEY_PASSPHRASE, else ask)."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to create (must not exist or be empty)."),
    max_part_size: str = typer.Option("fat32", "--max-part-size", metavar="SIZE",
                                      help="Largest part: a size (700M, 2G) or fat32 (4 GiB - 1), dvd, bd25."),
    platform: str = typer.Option("linux/amd64", "--platform", help="Platform of the offline host's images."),
    mirror: Optional[List[str]] = typer.Option(None, "--mirror", metavar="REGISTRY=HOST[:PORT][/PREFIX]",
                                               help="Pull REGISTRY's images from a mirror, repeatable; e.g. "
                                                    "docker.io=127.0.0.1:5000 quay.io=127.0.0.1:5000/quay.io"),
    carry_toolkit: Optional[Path] = typer.Option(None, "--carry-toolkit", metavar="CHECKOUT",
                                           help="Carry this Overleaf Toolkit git checkout (its code, as a git "
                                                "bundle) so that the offline host can update its Toolkit."),
    recompress: Optional[str] = typer.Option(None, "--recompress", metavar="zstd",
                                             help="Re-encode layers with zstd (smaller on media; image digests "
                                                  "then differ from upstream). Default: exact upstream bytes."),
    workers: int = typer.Option(4, "--workers", help="Parallel blob downloads (1-32)."),
    expires: str = typer.Option("30d", "--expires", metavar="DURATION", help="Validity: 30d, 12h, 2w..."),
    sequence: Optional[int] = typer.Option(None, "--sequence", help="Bundle sequence number (default: unix time)."),
    have: Optional[Path] = typer.Option(None, "--have", metavar="RECEIPT",
                                        help="Receipt of `overleaf-import inventory`: leave out layers the host has."),
    offline_python: str = typer.Option("3.11", "--offline-python", help="Python version of the offline host."),
    offline_platform: Optional[List[str]] = typer.Option(
        None, "--offline-platform", help="Wheel platform of the offline host (default manylinux_2_28_x86_64, i.e. "
                                         "glibc 2.28+); repeatable."),
    no_importer: bool = typer.Option(False, "--no-importer", help="Do not carry the importer's wheels."),
    force: bool = typer.Option(False, "--force", help="Replace a previous bundle in --out (at the very end)."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Cache and resume folder "
                                                                     "(default: OUT.partial beside OUT)."),
    keep_work: bool = typer.Option(False, "--keep-work", help="Keep the work folder (blob cache) after success."),
    json_out: bool = JsonOpt,
) -> None:
    """Fetch the plan's images from their registries (no engine needed) into a signed bundle split into parts."""
    from .build import DEFAULT_OFFLINE_PLATFORM, BuildOptions, Builder, format_summary, parse_duration
    from .keys import load_signing_key
    try:
        part = parse_size(max_part_size)
    except ValueError as exc:
        raise UsageError(f"--max-part-size: {exc}") from None
    request = plan_request(from_, to, edition, git_bridge, tls_proxy, texlive, mongo, redis, toolkit, allow_rc)
    opts = BuildOptions(request, out=out,
        max_part_size=part, platform=platform, mirrors=tuple(mirror or ()), toolkit=carry_toolkit,
        expires=parse_duration(expires), sequence=sequence, have=have, offline_python=offline_python,
        offline_platforms=tuple(offline_platform or (DEFAULT_OFFLINE_PLATFORM,)), importer=not no_importer,
        force=force, work_dir=work_dir, keep_work=keep_work, recompress=recompress, workers=workers)
    builder = Builder(opts, _CliReporter())
    plan = builder.check()
    try:
        if key.stat().st_mode & 0o077:
            warn(f"the signing key {key} can be read by other users: chmod 600 it")
    except OSError:
        pass   # load_signing_key explains
    signing_key = load_signing_key(key, passphrase_env)   # before anything is pulled
    # SIGTERM cleans up like Ctrl-C: the unfinished bundle goes, the cache stays
    signal.signal(signal.SIGTERM, _interrupt)
    say(f"Building a bundle for Overleaf {plan.edition} {plan.current} -> {plan.target}: "
        f"{len(plan.images)} image(s)")
    summary = builder.run(signing_key)
    if CTX.json:
        emit_json(summary)
    else:
        say(format_summary(summary))


@command
def inspect_cmd(
    bundle: Path = typer.Argument(..., metavar="BUNDLE_DIR", help="Bundle folder (or its manifest.json)."),
    json_out: bool = JsonOpt,
) -> None:
    """Show a bundle's steps, images, parts, expiry and key id (signature NOT checked)."""
    from .inspect_bundle import inspect_bundle, render_inspect

    info = inspect_bundle(bundle)
    if CTX.json:
        emit_json(info.to_dict())
    else:
        say(render_inspect(info))


def register(app: typer.Typer) -> None:
    app.command("keygen")(keygen_cmd)
    app.command("build")(build_cmd)
    app.command("inspect")(inspect_cmd)
