"""The offline side plans for itself: a bundle's signed plan must be the plan this importer makes.

A bundle carries its upgrade plan (steps, versions, migration commands, images). The
importer does not take it on trust: it plans again with **its own catalog** (plus the
bundle's validated ``catalog_overlay``: newly published patch releases of known majors,
never rules) and the manifest's from, to, edition and options, and refuses the bundle
when the two plans differ in any way. So the commands run in containers, the versions
written into ``config/`` and the step ids all come from this importer's catalog.

A difference usually means the bundle was made by another version of overleaf-airgap
(its catalog knows other releases or rules): the error says which version, and that
the importer it carries (``wheels/``, README-OFFLINE) is the one to use.

    check_plan(manifest)            # None, or PlanMismatchError (exit code 10)

The options a plan records (git-bridge, TLS proxy, TeX Live images, MongoDB and Redis
series, release candidates) are read from ``plan["options"]``; image name overrides
(a site's own registry names) from the images the plan assumes the host runs now.
"""
from __future__ import annotations

from itertools import product
from typing import Any

from manifests.bundle import BundleManifest, canonical_json
from manifests.catalog import Catalog, catalog_with_overlay, load_catalog
from manifests.errors import CatalogError, PlanError, PlanMismatchError
from manifests.planner import PlanRequest, make_plan

TEXLIVE_SUFFIX = "-with-texlive-full"


def own_version() -> str:
    from importlib import metadata  # here: only a refusal names the version (importlib.metadata is start-up time)

    try:
        return metadata.version("overleaf-airgap")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "unknown"


def _newer_hint(manifest: BundleManifest) -> str:
    return (f"This bundle was made by overleaf-airgap {manifest.tool_version} (this importer is "
            f"{own_version()}); install the importer it carries (README-OFFLINE: check wheels/, then "
            "pip install --require-hashes), then run the same command again.")


def _name(ref: str) -> str:
    return ref.rsplit(":", 1)[0]


def _options(plan: dict[str, Any]) -> dict[str, Any]:
    """The PlanRequest keywords recorded in ``plan["options"]``, type-checked."""
    o = plan.get("options")
    if not isinstance(o, dict):
        raise ValueError("the plan records no options")
    out: dict[str, Any] = {}
    for key in ("git_bridge", "tls_proxy", "allow_rc"):
        v = o.get(key, False)
        if not isinstance(v, bool):
            raise ValueError(f"option {key} is not true or false")
        out[key] = v
    tex = o.get("texlive", [])
    if not isinstance(tex, list) or not all(isinstance(t, str) for t in tex):
        raise ValueError("option texlive is not a list of image references")
    out["texlive"] = tuple(tex)
    for key in ("mongo", "redis"):
        v = o.get(key)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"option {key} is not a version")
        out[key] = v
    return out


def candidate_requests(manifest: BundleManifest, cat: Catalog) -> list[PlanRequest]:
    """The requests that could have produced the manifest's plan (image-name overrides are ambiguous
    only for the pinned nginx image and a git-bridge image the current version does not run)."""
    plan = manifest.plan
    opts = _options(plan)
    current = manifest.from_version
    target = manifest.to_version
    if target.endswith(TEXLIVE_SUFFIX):  # the planner carries the suffix over from the current version
        target = target[: -len(TEXLIVE_SUFFIX)]
    assumed = [a for a in plan.get("assumed_present", []) if isinstance(a, str)]
    if len(assumed) < 3:
        raise ValueError("the plan does not name the images the host runs now")
    edition = manifest.edition
    app_default = cat.images["app_pro" if edition == "pro" else "app_ce"]
    names: dict[str, Any] = {
        "app_image": _name(assumed[0]) if _name(assumed[0]) != app_default else None,
        "mongo_image": _name(assumed[1]) if _name(assumed[1]) != cat.images["mongo"] else None,
        "redis_image": _name(assumed[2]) if _name(assumed[2]) != cat.images["redis"] else None,
    }
    rest = assumed[3:]
    nginx: list[str | None] = [None]
    if opts["tls_proxy"] and rest:
        nginx.append(rest[-1])
        rest = rest[:-1]
    bridge: list[str | None] = [None]
    if opts["git_bridge"]:
        known = {names["app_image"] or app_default, names["mongo_image"] or cat.images["mongo"],
                 names["redis_image"] or cat.images["redis"], cat.images["nginx"]}
        known |= {_name(t) for t in opts["texlive"]}
        seen = rest + [i for s in plan.get("steps", []) for i in s.get("images", []) if isinstance(i, str)]
        bridge += sorted({_name(i) for i in seen} - known - {_name(n) for n in nginx if n})
    # a series the admin did not give was assumed (with a warning): the plan records the assumed one
    mongos = [opts["mongo"], None] if opts["mongo"] else [None]
    redises = [opts["redis"], None] if opts["redis"] else [None]
    out = []
    for b, n, mo, re_ in product(bridge, nginx, mongos, redises):
        out.append(PlanRequest(current=current, target=target, edition=edition, git_bridge=opts["git_bridge"],
                               tls_proxy=opts["tls_proxy"], texlive=opts["texlive"], mongo=mo, redis=re_,
                               allow_rc=opts["allow_rc"], git_bridge_image=b, nginx_image=n, **names))
    return out


def _first_difference(mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    ms, ts = mine.get("steps", []), theirs.get("steps", [])
    for i in range(max(len(ms), len(ts))):
        a = ms[i] if i < len(ms) else None
        b = ts[i] if i < len(ts) else None
        if canonical_json(a) != canonical_json(b):
            if a is None or b is None:
                return (f"the bundle's plan has {len(ts)} steps, this importer's {len(ms)} "
                        f"(first extra: {(b or a or {}).get('id')!r})")[:300]
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            return f"step {i + 1} ({str(b.get('id'))[:60]!r}) differs in {', '.join(keys)[:200]}"
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    return f"the plans differ in {', '.join(str(k)[:40] for k in keys)[:200]}"


def check_plan(manifest: BundleManifest, catalog: Catalog | None = None) -> None:
    """Refuse ``manifest`` unless its signed plan equals the plan this importer makes for it.

    ``catalog`` is the importer's own catalog (default: the built-in one, without any
    local overlay file); the bundle's ``catalog_overlay`` is validated and added to it.
    Raises :class:`PlanMismatchError` (exit code 10); returns None when the plans agree.
    """
    cat = catalog if catalog is not None else load_catalog(overlay=False)
    hint = _newer_hint(manifest)
    try:
        cat = catalog_with_overlay(cat, getattr(manifest, "catalog_overlay", None))
    except CatalogError as err:
        raise PlanMismatchError(f"the bundle's catalog overlay is refused: {err.message}", hint) from None
    plan = manifest.plan
    if not isinstance(plan, dict):
        raise PlanMismatchError("the bundle carries no plan", hint)
    for field, value in (("from", manifest.from_version), ("to", manifest.to_version),
                         ("edition", manifest.edition)):
        if plan.get(field) != value:
            raise PlanMismatchError(f"the bundle's plan says {field} {str(plan.get(field))[:40]!r} but its manifest "
                                    f"says {value!r}", hint)
    try:
        requests = candidate_requests(manifest, cat)
    except (ValueError, KeyError, TypeError) as exc:
        raise PlanMismatchError(f"the bundle's plan cannot be planned again: {exc}", hint) from None
    theirs = canonical_json(plan)
    first: dict[str, Any] | None = None
    last_error: PlanError | None = None
    for req in requests:
        try:
            mine = make_plan(cat, req).to_dict()
        except PlanError as err:
            last_error = err
            continue
        if canonical_json(mine) == theirs:
            return None
        first = first or mine
    if first is None:
        assert last_error is not None
        raise PlanMismatchError(f"this importer cannot plan {manifest.from_version} -> {manifest.to_version} "
                                f"({manifest.edition}): {last_error.message}", hint)
    raise PlanMismatchError(
        f"the bundle's signed plan {manifest.from_version} -> {manifest.to_version} is not the plan this "
        f"importer makes from its own catalog: {_first_difference(first, plan)}", hint)

