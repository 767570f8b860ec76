"""The release catalog: the data matches overleaf-facts.md, and bad entries are named."""
from __future__ import annotations

import copy
from importlib import resources

import pytest
import yaml

from manifests.catalog import apply_overlay, load_catalog, load_overlay, parse_catalog, write_overlay, Release
from manifests.errors import CatalogError
from manifests.versions import AppVersion, MajorMinor

RAW = yaml.safe_load(resources.files("manifests").joinpath("catalog/releases.yaml").read_text())
CAT = load_catalog(overlay=False)
V = AppVersion.parse


def test_catalog_covers_2_7_1_to_6_2_2_with_statuses():
    versions = {str(r.version) for r in CAT.releases}
    for v in ("2.7.1", "3.0.1", "3.5.13", "4.0.1", "4.2.9", "5.0.3", "5.5.8", "6.0.1", "6.2.2"):
        assert v in versions
    assert CAT.find(V("5.0.1")).status == "retracted" and CAT.find(V("5.0.1")).fixed_in == V("5.0.3")
    assert CAT.find(V("5.0.2")).status == "retracted"
    assert CAT.find(V("4.0.0")).status == "unpublished" and CAT.find(V("5.0.0")).status == "unpublished"
    assert CAT.find(V("3.3.1")).editions == ("pro",)
    assert all(r.source for r in CAT.releases)
    assert CAT.latest("ce") == V("6.2.2") and CAT.latest_in_major(5, "ce") == V("5.5.8")
    assert CAT.latest_in_major(3, "pro") == V("3.5.13") and CAT.latest_in_major(4, "ce") == V("4.2.9")


def test_companion_requirements_follow_the_facts():
    r = CAT.requirements
    assert r(V("3.5.13")).mongo_required == MajorMinor(4, 4)
    assert r(V("4.2.9")).redis_required == MajorMinor(6, 2) and r(V("4.2.9")).replica_set
    assert r(V("5.0.3")).mongo_required == MajorMinor(5, 0)
    assert r(V("5.5.8")).mongo_required == MajorMinor(6, 0) and r(V("5.5.8")).mongo_fcv_min == MajorMinor(6, 0)
    six = r(V("6.0.1"))
    assert six.mongo_required == MajorMinor(8, 0) and six.mongo_fcv_min == MajorMinor(7, 0)
    assert six.redis_required == MajorMinor(7, 4)
    assert [s.name for s in r(V("6.2.0")).secrets] == ["OVERLEAF_INVITE_TOKEN_SECRET"]
    assert r(V("6.2.2")).nginx_default == "1.30-alpine" and r(V("3.5.13")).nginx_default == "1.19-alpine"
    assert not r(V("3.5.13")).git_bridge and r(V("4.0.1")).git_bridge
    assert r(V("6.2.2")).texlive_defaults == ("2025.1", "2024.1", "2023.1")


def test_migrations_carry_commands_and_success_markers():
    fph = CAT.migration("history_migration")
    assert fph.run_on_min == V("3.5.13") and "migrate_history.js" in fph.command
    assert fph.success_text == "Projects failed:  0"
    bf = CAT.migration("binary_files_migration")
    assert bf.run_on_min == V("5.5.5") and bf.success_text == "The binary files migration succeeded."
    assert "--report" in bf.extra["report_command"]


def broken(mutate):
    data = copy.deepcopy(RAW)
    mutate(data)
    with pytest.raises(CatalogError) as exc:
        parse_catalog(data, "test")
    return exc.value.message


def test_bad_entries_are_named():
    assert "version 4.2.9" in broken(lambda d: d["releases"].append({"version": "4.2.9", "source": "x"}))
    msg = broken(lambda d: d["releases"][-1].update(status="retracted"))
    assert "6.2.2" in msg and "fixed_in" in msg
    assert "releases[0]" in broken(lambda d: d["releases"][0].update(version="2.0"))
    assert "source" in broken(lambda d: d["releases"][3].pop("source"))
    assert "colour" in broken(lambda d: d["releases"][3].update(colour="red"))
    assert "since 6.0.0" in broken(lambda d: d["requirements"][-2].update(mongo_required="9.9"))
    assert "ascending" in broken(lambda d: d["requirements"].reverse())
    assert "history_cleanup" in broken(lambda d: d["migrations"][1].pop("success_text"))
    assert "schema" in broken(lambda d: d.update(schema=2))


def test_overlay_adds_patches_and_refuses_new_majors(tmp_path):
    path = tmp_path / "overlay.yaml"
    write_overlay(path, [Release(V("6.2.3"), source="test")])
    cat = load_catalog(overlay=path)
    assert cat.latest("ce") == V("6.2.3") and cat.find(V("6.2.3")).from_overlay
    with pytest.raises(CatalogError, match="new major"):
        apply_overlay(CAT, [Release(V("7.0.0"), source="test")])
    path.write_text("schema: 1\nreleases:\n  - {version: 6.2.x, source: t}\n")
    with pytest.raises(CatalogError, match="overlay"):
        load_overlay(path)
