"""``overleaf-bundle``: the online side. Thin Typer commands over the library modules.

Commands: ``plan``, ``catalog show``, ``catalog refresh`` (here), and ``keygen``,
``build``, ``inspect`` (bundler/cli_build.py). Every expected failure exits with the
code of its :mod:`manifests.errors` class and a message that says what to do.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from manifests.catalog import default_overlay_path, load_catalog
from manifests.console import CTX, emit_json, run, safe, say
from manifests.planner import PlanRequest, UpgradePlan, make_plan
from manifests.toolkit_config import read_toolkit

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Online side of overleaf-airgap: plan stepped Overleaf upgrades and build signed bundles.")
catalog_app = typer.Typer(no_args_is_help=True, help="The release catalog the planner uses.")
app.add_typer(catalog_app, name="catalog")


@app.callback()
def _global(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the cause of errors (tracebacks)."),
            json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout.")) -> None:
    CTX.verbose = verbose
    CTX.json = json_out


def plan_request(from_: Optional[str], to: str, edition: Optional[str], git_bridge: Optional[bool],
                 tls_proxy: Optional[bool], texlive: Optional[List[str]], mongo: Optional[str],
                 redis: Optional[str], toolkit: Optional[Path], allow_rc: bool) -> PlanRequest:
    """Options given on the command line win over what ``--toolkit`` reads from config/."""
    base: dict = {}
    if toolkit is not None:
        base = read_toolkit(toolkit).plan_options()
    if from_ is not None:
        base["current"] = from_
    if "current" not in base:
        raise typer.BadParameter("give --from VERSION, or --toolkit DIR to read it from config/version")
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


def render_plan(plan: UpgradePlan) -> str:
    d = plan.to_dict()
    apps = [s["version"] for s in d["steps"] if s["kind"] == "app"]
    lines = [f"Upgrade plan: Overleaf {'Server Pro' if plan.edition == 'pro' else 'Community Edition'} "
             f"{plan.current} -> {plan.target}" + (f" via {' -> '.join(apps)}" if apps else "")]
    for i, s in enumerate(d["steps"], 1):
        lines.append(f"{i:3d}. [{s['kind']}] {s['description']}")
        for key in ("fcv_before", "fcv_after"):
            if key in s:
                lines.append(f"       {key.replace('_', ' ')}: {s[key]}")
        if s["kind"] == "migration":
            lines.append(f"       runs: {s['command']}")
            if s.get("success_text"):
                lines.append(f"       success: exit 0 and {s['success_text']!r}")
            if s.get("manual_check"):
                lines.append(f"       check by hand: {s['manual_check']}")
        if s["images"]:
            lines.append(f"       images: {', '.join(s['images'])}")
    lines.append(f"Images to carry ({len(d['images'])}):")
    lines += [f"  {i}" for i in d["images"]] or ["  (none)"]
    if d["assumed_present"]:
        lines.append("Assumed already on the host (the current stack): " + ", ".join(d["assumed_present"]))
    for w in d["warnings"]:
        lines.append(f"! {w}")
    return "\n".join(safe(line) for line in lines)


@app.command()
def plan(
    from_: Optional[str] = typer.Option(None, "--from", help="Current Overleaf version (config/version)."),
    to: str = typer.Option("latest", "--to", help="Target: a version, 'latest' or 'latest-patch'."),
    edition: Optional[str] = typer.Option(None, "--edition", help="ce (Community Edition) or pro (Server Pro)."),
    git_bridge: Optional[bool] = typer.Option(None, "--git-bridge/--no-git-bridge", help="Server Pro git-bridge."),
    tls_proxy: Optional[bool] = typer.Option(None, "--tls-proxy/--no-tls-proxy", help="The Toolkit's nginx TLS proxy."),
    texlive: Optional[List[str]] = typer.Option(None, "--texlive", help="TeX Live image (or YYYY.N), repeatable."),
    mongo: Optional[str] = typer.Option(None, "--mongo", help="MongoDB version running now, e.g. 4.4."),
    redis: Optional[str] = typer.Option(None, "--redis", help="Redis version running now, e.g. 6.2."),
    toolkit: Optional[Path] = typer.Option(None, "--toolkit", help="Read the current settings from this Toolkit."),
    allow_rc: bool = typer.Option(False, "--allow-rc", help="Allow release candidates."),
) -> None:
    """Work out the stepped upgrade path and the images each step needs."""
    def go() -> None:
        req = plan_request(from_, to, edition, git_bridge, tls_proxy, texlive, mongo, redis, toolkit, allow_rc)
        p = make_plan(load_catalog(), req)
        if CTX.json:
            emit_json(p.to_dict())
        else:
            say(render_plan(p))
    run(go)


@catalog_app.command("show")
def catalog_show() -> None:
    """List every release the planner knows, with its status and source."""
    def go() -> None:
        cat = load_catalog()
        if CTX.json:
            emit_json(cat.to_dict())
            return
        for r in cat.releases:
            flags = [] if r.status == "published" else [r.status]
            if r.editions != ("ce", "pro"):
                flags.append("+".join(r.editions) + " only")
            if r.fixed_in:
                flags.append(f"use {r.fixed_in}")
            if r.from_overlay:
                flags.append("overlay")
            say(f"{str(r.version):10s} {safe(r.date or ''):10s} {', '.join(flags):28s} {safe(r.source)}")
        say(f"latest: CE {cat.latest('ce')}, Server Pro {cat.latest('pro')}")
    run(go)


@catalog_app.command("refresh")
def catalog_refresh(
    registry: str = typer.Option(..., "--registry", help="Registry URL, e.g. https://registry-1.docker.io or https://quay.io."),
    repository: Optional[List[str]] = typer.Option(None, "--repository", help="Repository to read (repeatable); "
                                                   "default sharelatex/sharelatex, or sharelatex/sharelatex-pro on quay.io."),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="Overlay file (default: the user's config folder)."),
) -> None:
    """Record newly published patch releases of known majors from a registry's tag list."""
    from .catalog_refresh import refresh

    def go() -> None:
        repos = repository or (["sharelatex/sharelatex-pro"] if "quay.io" in registry else ["sharelatex/sharelatex"])
        res = refresh(load_catalog(), registry, repos, overlay or default_overlay_path())
        if CTX.json:
            emit_json({"added": res.added, "new_majors": res.new_majors, "tags_seen": res.known,
                       "overlay": str(res.overlay)})
            return
        say(f"{res.known} tags read; new releases recorded in {safe(res.overlay)}: "
            f"{safe(', '.join(res.added) or 'none')}")
        for t in res.new_majors:
            say(f"! {safe(t)} belongs to a major this tool has no upgrade rules for: it is reported, never planned "
                "through. Update overleaf-airgap for it.")
    run(go)


try:  # build, keygen, inspect live in their own module
    from .cli_build import register as _register_build
except ImportError:  # pragma: no cover - only while that module is being written
    _register_build = None
if _register_build is not None:
    _register_build(app)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
