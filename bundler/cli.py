"""``overleaf-bundle``: the online side. Thin Typer commands over the library modules.

Commands: ``plan``, ``catalog show``, ``catalog refresh`` (here), and ``keygen``,
``build``, ``inspect`` (bundler/cli_build.py). ``plan`` and ``build`` share their option
objects (:mod:`bundler.options`). Every command takes ``--json`` after its name as well as
before it; every expected failure exits with the code of its :mod:`manifests.errors` class
and a message that says what to do (usage errors: 2).

    overleaf-bundle plan --from 5.5.4 --to 6.2.2 --json
    overleaf-bundle catalog show --json
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from manifests.catalog import default_overlay_path, load_catalog
from manifests.console import CTX, command, emit_json, safe, say, warn
from manifests.planner import UpgradePlan, make_plan

from .cli_build import register as register_build
from .options import (AllowRcOpt, EditionOpt, FromOpt, GitBridgeOpt, JsonOpt, MongoOpt, RedisOpt, TexliveOpt,
                      TlsProxyOpt, ToolkitOpt, ToOpt, plan_request)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Online side of overleaf-airgap: plan stepped Overleaf upgrades and build signed bundles.")
catalog_app = typer.Typer(no_args_is_help=True, help="The release catalog the planner uses.")
app.add_typer(catalog_app, name="catalog")


@app.callback()
def _global(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the cause of errors (tracebacks)."),
            json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout (every command "
                                                                "also takes --json after its name).")) -> None:
    CTX.reset(verbose=verbose, json=json_out)


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
@command
def plan(from_: Optional[str] = FromOpt, to: str = ToOpt, edition: Optional[str] = EditionOpt,
         git_bridge: Optional[bool] = GitBridgeOpt, tls_proxy: Optional[bool] = TlsProxyOpt,
         texlive: Optional[List[str]] = TexliveOpt, mongo: Optional[str] = MongoOpt, redis: Optional[str] = RedisOpt,
         toolkit: Optional[Path] = ToolkitOpt, allow_rc: bool = AllowRcOpt, json_out: bool = JsonOpt) -> None:
    """Work out the stepped upgrade path and the images each step needs."""
    req = plan_request(from_, to, edition, git_bridge, tls_proxy, texlive, mongo, redis, toolkit, allow_rc)
    p = make_plan(load_catalog(), req)
    if CTX.json:
        emit_json(p.to_dict())
    else:
        say(render_plan(p))


@catalog_app.command("show")
@command
def catalog_show(json_out: bool = JsonOpt) -> None:
    """List every release the planner knows, with its status and source."""
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


@catalog_app.command("refresh")
@command
def catalog_refresh(
    registry: str = typer.Option(..., "--registry", help="Registry URL, e.g. https://registry-1.docker.io or https://quay.io."),
    repository: Optional[List[str]] = typer.Option(None, "--repository", help="Repository to read (repeatable); "
                                                   "default sharelatex/sharelatex, or sharelatex/sharelatex-pro on quay.io."),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="Overlay file (default: the user's config folder)."),
    json_out: bool = JsonOpt,
) -> None:
    """Record newly published patch releases of known majors from a registry's tag list."""
    from .catalog_refresh import refresh


    repos = repository or (["sharelatex/sharelatex-pro"] if "quay.io" in registry else ["sharelatex/sharelatex"])
    res = refresh(load_catalog(), registry, repos, overlay or default_overlay_path())
    if CTX.json:
        emit_json({"added": res.added, "new_majors": res.new_majors, "tags_seen": res.known,
                   "overlay": str(res.overlay), "warnings": res.warnings})
        return
    for w in res.warnings:
        warn(safe(w))
    say(f"{res.known} tags read; new releases recorded in {safe(res.overlay)}: "
        f"{safe(', '.join(res.added) or 'none')}")
    for t in res.new_majors:
        say(f"! {safe(t)} belongs to a major this tool has no upgrade rules for: it is reported, never planned "
            "through. Update overleaf-airgap for it.")


register_build(app)   # build, keygen, inspect: bundler/cli_build.py


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
