"""The command-line options ``plan`` and ``build`` share, and the plan request they make.

Both commands describe the upgrade the same way, with the same option objects (so the same
names, defaults and help), and turn them into a :class:`manifests.planner.PlanRequest` with
:func:`plan_request`: options given on the command line win over what ``--toolkit DIR``
reads from that Toolkit's ``config/`` (``--toolkit`` always means "read this Toolkit's
settings"; ``build --carry-toolkit CHECKOUT`` is the one that carries a Toolkit's code).

    def plan(from_: Optional[str] = FromOpt, to: str = ToOpt, ...): ...
    request = plan_request(from_="5.5.4", to="6.2.2", edition=None, git_bridge=None, tls_proxy=None,
                           texlive=None, mongo="6.0", redis=None, toolkit=None, allow_rc=False)
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from manifests.errors import UsageError
from manifests.planner import PlanRequest
from manifests.toolkit_config import read_toolkit

EDITIONS = ("ce", "pro")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output on stdout (same as the global --json).")

FromOpt = typer.Option(None, "--from", metavar="VERSION",
                       help="Current Overleaf version on the offline host (config/version); or give --toolkit.")
ToOpt = typer.Option("latest", "--to", metavar="VERSION", help="Target: a version, 'latest' or 'latest-patch'.")
EditionOpt = typer.Option(None, "--edition", metavar="ce|pro",
                          help="ce (Community Edition, the default) or pro (Server Pro).")
GitBridgeOpt = typer.Option(None, "--git-bridge/--no-git-bridge", help="Include Server Pro's git-bridge.")
TlsProxyOpt = typer.Option(None, "--tls-proxy/--no-tls-proxy", help="Include the Toolkit's nginx TLS proxy.")
TexliveOpt = typer.Option(None, "--texlive", metavar="IMAGE",
                          help="TeX Live image (or YYYY.N) for Server Pro's sibling containers; repeatable.")
MongoOpt = typer.Option(None, "--mongo", metavar="X.Y", help="MongoDB version the host runs now, e.g. 5.0.")
RedisOpt = typer.Option(None, "--redis", metavar="X.Y", help="Redis version the host runs now, e.g. 6.2.")
ToolkitOpt = typer.Option(None, "--toolkit", metavar="DIR",
                          help="Read the current version and settings from this Overleaf Toolkit's config/ "
                               "(options given here win).")
AllowRcOpt = typer.Option(False, "--allow-rc", help="Allow release candidates.")


def plan_request(from_: Optional[str], to: str, edition: Optional[str], git_bridge: Optional[bool],
                 tls_proxy: Optional[bool], texlive: Optional[List[str]], mongo: Optional[str],
                 redis: Optional[str], toolkit: Optional[Path], allow_rc: bool) -> PlanRequest:
    """The plan request of these options; UsageError (exit 2) when neither --from nor --toolkit is given, or
    when --edition is neither ce nor pro."""
    if edition is not None and edition not in EDITIONS:
        raise UsageError(f"--edition {edition!r}: not an edition",
                         "Use --edition ce (Community Edition) or --edition pro (Server Pro).")
    base: dict = {}
    if toolkit is not None:
        base = read_toolkit(toolkit).plan_options()
    if from_ is not None:
        base["current"] = from_
    if "current" not in base:
        raise UsageError("the current version is missing",
                         "Give --from VERSION (e.g. --from 5.5.4), or --toolkit DIR to read it from config/version.")
    for key, val in (("edition", edition), ("git_bridge", git_bridge), ("tls_proxy", tls_proxy),
                     ("mongo", mongo), ("redis", redis)):
        if val is not None:
            base[key] = val
    if texlive:
        base["texlive"] = tuple(texlive)
    base["target"] = to
    base["allow_rc"] = allow_rc
    base.setdefault("edition", "ce")
    return PlanRequest(**base)
