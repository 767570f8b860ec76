"""The stepped upgrade planner: table tests for known paths and properties over random ones."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifests.catalog import load_catalog
from manifests.errors import PlanError
from manifests.planner import PlanRequest, UpgradePlan, make_plan
from manifests.versions import AppVersion, MajorMinor

CAT = load_catalog(overlay=False)


def plan(current, target="latest", **kw):
    return make_plan(CAT, PlanRequest(current=current, target=target, **kw))


def apps(p):
    return [s.version for s in p.steps if s.kind == "app"]


def kinds(p):
    return [(s.kind, s.version or s.name) for s in p.steps]


def index(p, kind, key):
    return kinds(p).index((kind, key))


# --- table tests ----------------------------------------------------------------------
def test_3_5_10_to_latest_ce_follows_the_documented_path():
    p = plan("3.5.10", mongo="4.4", redis="6.2")
    assert apps(p) == ["3.5.13", "4.2.9", "5.5.8", "6.2.2"]
    # FPH migration and cleanup on 3.5.13, before 4.x
    assert index(p, "app", "3.5.13") < index(p, "migration", "history_migration") \
        < index(p, "migration", "history_cleanup") < index(p, "app", "4.2.9")
    assert next(s for s in p.steps if s.name == "history_migration").details["run_on"] == "3.5.13"
    # MongoDB one major at a time, before the app hops that need them
    mongo = [s.version for s in p.steps if s.kind == "mongo"]
    assert mongo == ["5.0", "6.0", "7.0", "8.0"]
    assert index(p, "app", "4.2.9") < index(p, "mongo", "5.0") < index(p, "mongo", "6.0") < index(p, "app", "5.5.8")
    assert index(p, "migration", "binary_files_migration") < index(p, "mongo", "7.0") \
        < index(p, "mongo", "8.0") < index(p, "app", "6.2.2")
    # rename when entering 5.x, Redis 7.4 and the secret before 6.2
    assert index(p, "app", "4.2.9") < index(p, "config", "rename_sharelatex_vars") < index(p, "app", "5.5.8")
    assert index(p, "app", "5.5.8") < index(p, "redis", "7.4") < index(p, "app", "6.2.2")
    assert index(p, "config", "secret_overleaf_invite_token_secret") < index(p, "app", "6.2.2")
    # a backup opens the plan and precedes each major step's group
    assert p.steps[0].kind == "backup"
    for v in ("4.2.9", "5.5.8", "6.2.2"):
        i = index(p, "app", v)
        prev_app = max(j for j, s in enumerate(p.steps[:i]) if s.kind == "app")
        assert any(s.kind == "backup" for s in p.steps[prev_app + 1:i]), v
    # feature compatibility: confirm from 7.0 on
    m8 = next(s for s in p.steps if s.kind == "mongo" and s.version == "8.0")
    assert m8.details["fcv_before"] == 'db.adminCommand({ setFeatureCompatibilityVersion: "7.0", confirm: true })'
    m5 = next(s for s in p.steps if s.kind == "mongo" and s.version == "5.0")
    assert "confirm" not in m5.details["fcv_before"] and m5.details["shell_before"] == "mongo"
    assert any("AVX" in w for w in p.warnings)
    assert "sharelatex/sharelatex:6.2.2" in p.images and "mongo:8.0" in p.images and "redis:7.4" in p.images
    # the starting stack is on the host already and is not carried
    assert "mongo:4.4" not in p.images and "sharelatex/sharelatex:3.5.10" not in p.images


def test_3_3_2_to_latest():
    p = plan("3.3.2")
    assert apps(p) == ["3.5.13", "4.2.9", "5.5.8", "6.2.2"]
    assert any("assumed" in w for w in p.warnings)


def test_2_7_1_to_latest_raises_mongo_through_every_series():
    p = plan("2.7.1")
    assert apps(p) == ["3.5.13", "4.2.9", "5.5.8", "6.2.2"]
    assert [s.version for s in p.steps if s.kind == "mongo"] == ["4.2", "4.4", "5.0", "6.0", "7.0", "8.0"]
    assert index(p, "mongo", "4.4") < index(p, "app", "3.5.13")


def test_older_2x_goes_through_2_7_1_first():
    assert apps(plan("2.5.2"))[:2] == ["2.7.1", "3.5.13"]


def test_4_2_3_to_latest_5_5():
    p = plan("4.2.3", target="5.5.8", mongo="4.4", redis="6.2")
    assert apps(p) == ["4.2.9", "5.5.8"]
    assert [s.version for s in p.steps if s.kind == "mongo"] == ["5.0", "6.0"]
    assert not any(s.name == "binary_files_migration" for s in p.steps)


def test_explicit_target_inside_a_major_is_honoured():
    assert apps(plan("4.2.3", target="5.3.3")) == ["4.2.9", "5.3.3"]
    assert apps(plan("3.5.10", target="3.5.12")) == ["3.5.12"]


def test_latest_patch_stays_in_the_major():
    assert apps(plan("4.1.2", target="latest-patch")) == ["4.2.9"]


def test_retracted_current_5_0_1():
    p = plan("5.0.1", mongo="5.0", redis="6.2")
    assert apps(p) == ["5.5.8", "6.2.2"]
    assert index(p, "migration", "doc_version_recovery") < index(p, "app", "5.5.8")
    assert any("retracted" in w for w in p.warnings)


def test_5_5_4_to_6_2_2_server_pro_with_git_bridge_and_texlive():
    p = plan("5.5.4", target="6.2.2", edition="pro", git_bridge=True, texlive=("2025.1", "2024.1"),
             mongo="6.0", redis="6.2")
    assert apps(p) == ["5.5.8", "6.2.2"]
    mig = next(s for s in p.steps if s.name == "binary_files_migration")
    assert AppVersion.parse(mig.details["run_on"]) >= AppVersion.parse("5.5.5")
    assert index(p, "app", "5.5.8") < index(p, "migration", "binary_files_migration") < index(p, "app", "6.2.2")
    for ref in ("quay.io/sharelatex/sharelatex-pro:5.5.8", "quay.io/sharelatex/sharelatex-pro:6.2.2",
                "quay.io/sharelatex/git-bridge:5.5.8", "quay.io/sharelatex/git-bridge:6.2.2",
                "quay.io/sharelatex/texlive-full:2025.1", "quay.io/sharelatex/texlive-full:2024.1"):
        assert ref in p.images, ref
    last = p.steps[-1]
    assert "quay.io/sharelatex/git-bridge:6.2.2" in last.images and "mongo:8.0" in last.images
    # the running stack is on the host; TeX Live images asked for are carried all the same
    assert "mongo:6.0" in p.assumed_present and "quay.io/sharelatex/texlive-full:2025.1" not in p.assumed_present


def test_tls_proxy_uses_the_nginx_of_the_target_era():
    p = plan("6.1.2", tls_proxy=True, mongo="8.0", redis="7.4")
    assert "nginx:1.30-alpine" in p.steps[-1].images


def test_same_version_is_an_empty_plan():
    p = plan("6.2.2", target="6.2.2", mongo="8.0", redis="7.4")
    assert p.steps == () and any("nothing to do" in w for w in p.warnings)


@pytest.mark.parametrize("current,target,needle,hint", [
    ("6.2.2", "5.5.8", "cannot be downgraded", "rollback"),
    ("9.9.9", "latest", "not in the release catalog", "catalog refresh"),
    ("5.5.4", "5.5.99", "not in the release catalog", "5.5.8"),
    ("4.2.9", "5.0.1", "retracted", "5.0.3"),
    ("4.2.9", "5.0.2", "retracted", "5.0.3"),
    ("3.5.10", "4.0.0", "never published", "4.0.1"),
    ("3.2.2", "3.3.1", "pro only", "3.3.2"),
    ("5.5.4", "6.0.0-RC1", "release candidate", "--allow-rc"),
    ("banana", "latest", "not an Overleaf version", "5.5.8"),
])
def test_refusals_say_what_to_do(current, target, needle, hint):
    with pytest.raises(PlanError) as exc:
        plan(current, target)
    assert needle in exc.value.message
    assert hint in exc.value.hint


def test_texlive_and_git_bridge_need_server_pro():
    with pytest.raises(PlanError, match="Server Pro"):
        plan("5.5.4", texlive=("2025.1",))
    with pytest.raises(PlanError, match="Server Pro"):
        plan("5.5.4", git_bridge=True)
    with pytest.raises(PlanError, match="not a valid image reference"):
        plan("5.5.4", edition="pro", texlive=("quay.io/x;rm -rf /:1",))


def test_3_3_1_is_a_valid_current_version_for_server_pro():
    assert apps(plan("3.3.1", edition="pro"))[0] == "3.5.13"


def test_mongo_never_downgrades():
    p = plan("4.2.3", mongo="8.0", redis="7.4")
    assert not [s for s in p.steps if s.kind in ("mongo", "redis")]


def test_custom_image_names_and_texlive_full():
    p = plan("5.5.4-with-texlive-full", target="5.5.8", app_image="registry.local:5000/overleaf/app",
             mongo="6.0", redis="6.2")
    assert p.images == ["registry.local:5000/overleaf/app:5.5.8-with-texlive-full"]
    assert p.local_images == ("registry.local:5000/overleaf/app:5.5.8-with-texlive-full",)


def test_plan_json_round_trip_and_stable_core():
    p = plan("3.5.10")
    d = p.to_dict()
    assert set(d) >= {"steps", "images"}
    for s in d["steps"]:
        assert s["kind"] in ("backup", "app", "mongo", "redis", "migration", "config")
        assert isinstance(s["description"], str) and isinstance(s["images"], list)
        if s["kind"] in ("app", "mongo", "redis"):
            assert "version" in s
        if s["kind"] == "migration":
            assert "name" in s
    assert d["images"] == sorted({i for s in d["steps"] for i in s["images"]})
    assert UpgradePlan.from_dict(d).to_dict() == d


# --- properties over random (from, to) pairs --------------------------------------------
USABLE = [r.version for r in CAT.releases if r.status == "published"]
MONGO = [str(s) for s in CAT.mongo_series]


@st.composite
def requests(draw):
    edition = draw(st.sampled_from(["ce", "pro"]))
    pool = [v for v in USABLE if edition in CAT.find(v).editions]
    a = draw(st.sampled_from(pool))
    b = draw(st.sampled_from([v for v in pool if v >= a]))
    target = draw(st.sampled_from([str(b), "latest", "latest-patch"]))
    pro_opts = {}
    if edition == "pro":
        pro_opts = {"git_bridge": draw(st.booleans()), "texlive": tuple(draw(st.lists(
            st.sampled_from(["2023.1", "2024.1", "2025.1"]), unique=True, max_size=2)))}
    mongo = draw(st.one_of(st.none(), st.sampled_from(MONGO)))
    return PlanRequest(current=str(a), target=target, edition=edition, mongo=mongo,
                       tls_proxy=draw(st.booleans()), **pro_opts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_plan_properties(req):
    p = make_plan(CAT, req)
    cur = AppVersion.parse(req.current)
    hops = [AppVersion.parse(v) for v in apps(p)]
    # never a major skipped, never backwards, every hop a usable catalog release
    prev = cur
    for h in hops:
        assert h > prev and h.major - prev.major in (0, 1)
        rel = CAT.find(h)
        assert rel is not None and rel.usable(req.edition)
        if h.major > prev.major:  # leaving a major from its latest release
            assert prev == CAT.latest_in_major(prev.major, req.edition)
        prev = h
    # MongoDB never downgrades or skips a series; every app hop has what it needs
    mongo = MajorMinor.parse(p.options["mongo"])
    redis = MajorMinor.parse(p.options["redis"])
    migrated: set[str] = set()
    app = cur
    for s in p.steps:
        if s.kind == "mongo":
            nxt = MajorMinor.parse(s.version)
            assert nxt == CAT.next_mongo(mongo)
            mongo = nxt
        elif s.kind == "redis":
            nxt = MajorMinor.parse(s.version)
            assert nxt > redis
            redis = nxt
        elif s.kind == "migration":
            assert AppVersion.parse(s.details["run_on"]) >= CAT.migration(s.name).run_on_min
            migrated.add(s.name)
        elif s.kind == "app":
            v = AppVersion.parse(s.version)
            need = CAT.requirements(v)
            assert mongo >= need.mongo_required and redis >= need.redis_required
            if app.major == 3 and v.major == 4:
                assert {"history_migration", "history_cleanup"} <= migrated
            if app.major == 5 and v.major == 6:
                assert "binary_files_migration" in migrated
            app = v
    # every step's images are in the plan's image set, and the JSON round-trips
    for s in p.steps:
        assert set(s.images) <= set(p.images)
    assert UpgradePlan.from_dict(p.to_dict()) == p


def test_one_place_for_the_fcv_command_and_the_shell():
    """The plan's MongoDB steps and the importer's runner take the command and shell from one place:
    ``confirm: true`` from 7.0 on, ``mongosh`` from 6.0 on (facts 3.1)."""
    from importer.upgrade.base import fcv_command
    from manifests.versions import mongo_shell

    cat = load_catalog(overlay=False)
    assert cat.fcv_command("6.0") == 'db.adminCommand({ setFeatureCompatibilityVersion: "6.0" })'
    assert cat.fcv_command(MajorMinor(7, 0)).endswith('"7.0", confirm: true })')
    assert [mongo_shell(s) for s in ("4.4", "5.0", "6.0", "8.0")] == ["mongo", "mongo", "mongosh", "mongosh"]
    plan = make_plan(cat, PlanRequest(current="4.2.9", target="6.2.2", edition="ce", mongo="4.4", redis="6.2"))
    hops = [s for s in plan.steps if s.kind == "mongo"]
    assert hops, plan.steps
    for hop in hops:
        frm, to = MajorMinor.parse(hop.details["from_version"]), MajorMinor.parse(hop.version)
        assert hop.details["fcv_before"] == cat.fcv_command(frm) == fcv_command(str(frm))
        assert hop.details["fcv_after"] == cat.fcv_command(to) == fcv_command(str(to))
        assert (hop.details["shell_before"], hop.details["shell_after"]) == (mongo_shell(frm), mongo_shell(to))
