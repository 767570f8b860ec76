"""Server Pro end to end (issue 11, items 7 and 8): a real bundle, the real ``overleaf-import`` CLI and the
Toolkit stand-in, on a site that runs every Server Pro part the Overleaf docs describe.

The site runs Server Pro 5.5.8 with git-bridge, sandboxed compiles (sibling containers, two TeX Live
images) and the TLS proxy, whose nginx comes from the Toolkit checkout's ``lib/default.rc``
(``nginx:1.28-alpine``), not from ``config/overleaf.rc``. The bundle is the one ``overleaf-bundle build
--edition pro --git-bridge --tls-proxy --texlive 2025.1 --texlive 2024.1`` makes from the test registry with
no engine (tests/support/real_bundles.py): Server Pro and git-bridge 6.2.2, MongoDB 7.0 and 8.0, nginx
1.30-alpine and both TeX Live images.

First the admin trims ``ALL_TEX_LIVE_DOCKER_IMAGES`` to the bundle's two images while projects still use a
third one: preflight asks the database (``db.projects.distinct("imageName")``) and stops (exit 31) with the
documented fix, before anything changes; the same run names the running git-bridge image, untagged in the
engine for that run, which the bundle does not carry and every ``bin/up`` restarts. With the fix applied the upgrade runs to 6.2.2 (pausing once for the
binary files check), and ends healthy with git-bridge and nginx at the planned images, the TeX Live images at
the IDs the bundle pins and the TeX Live variables consistent. The app stand-in refuses to start (as Server
Pro 5.2+ does) when a project's image is missing from the list, so the green end proves the check too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from importer.images.load import pinned_ids
from tests.support.overleaf_images import seed_overleaf_path
from tests.support.real_bundles import RealBundle, build_upgrade_bundle, clear_stale_tags, make_release_key
from tests.support.engine import classic_compose
from tests.support.toolkit import (
    make_toolkit,
    remove_toolkit_containers,
    toolkit_checksums,
)

FROM, TO = "5.5.8", "6.2.2"
TL = "quay.io/sharelatex/texlive-full:"
TEXLIVE = (f"{TL}2025.1", f"{TL}2024.1")   # what the bundle carries
OLD_TEXLIVE = f"{TL}2023.1"                 # listed before the admin trimmed the list; projects still use it
PRO, BRIDGE = "quay.io/sharelatex/sharelatex-pro", "quay.io/sharelatex/git-bridge"


@pytest.fixture(scope="module")
def pro_bundle(engine, registry, tmp_path_factory) -> RealBundle:
    """The real Server Pro bundle 5.5.8 -> 6.2.2 (git-bridge, TLS proxy, two TeX Live images)."""
    key = make_release_key(tmp_path_factory.mktemp("pro-release-key"))
    out = tmp_path_factory.mktemp("pro-bundle") / "bundle"
    return build_upgrade_bundle(engine, registry, key, out, FROM, TO, edition="pro", mongo="6.0", redis="7.4",
                                git_bridge=True, tls_proxy=True, texlive=TEXLIVE)


def importer(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "importer.cli", *args], capture_output=True, text=True, env=env,
                          timeout=900, stdin=subprocess.DEVNULL, check=False)


def upgrade_args(bundle: RealBundle, tk, *extra: str) -> list[str]:
    return ["upgrade", str(bundle.path), "--toolkit", os.fspath(tk), "--trust", str(bundle.pub), "--yes",
            "--generate-secrets", "--health-timeout", "90", "--backup-dir", str(Path(os.fspath(tk)).parent / "backups"),
            *extra]


def started(tk) -> dict[str, str]:
    """``{container: StartedAt}``: a container that was restarted (or recreated) shows a new time."""
    out = {}
    for name in tk.states():
        out[name] = subprocess.run(["docker", "inspect", "-f", "{{.Id}} {{.State.StartedAt}}", name], env=tk.env,
                                   capture_output=True, text=True, check=False).stdout.strip()
    return out


def container_env(tk, name: str) -> dict[str, str]:
    out = subprocess.run(["docker", "inspect", "-f", "{{json .Config.Env}}", name], env=tk.env, capture_output=True,
                         text=True, check=True)
    return dict(item.split("=", 1) for item in json.loads(out.stdout))


def test_server_pro_git_bridge_sandboxed_compiles_tls_proxy_5_5_8_to_6_2_2(pro_bundle, offline_engine, tmp_path):
    plan = pro_bundle.plan
    # the planner's view of this site: the running nginx and git-bridge are assumed, the new ones carried
    assert {"nginx:1.28-alpine", f"{BRIDGE}:{FROM}", f"{PRO}:{FROM}"} <= set(plan["assumed_present"])
    assert {"nginx:1.30-alpine", f"{BRIDGE}:{TO}", f"{PRO}:{TO}", *TEXLIVE} <= set(plan["images"])
    assert list(plan["options"]["texlive"]) == list(TEXLIVE)

    remove_toolkit_containers(offline_engine)
    clear_stale_tags(offline_engine, pro_bundle)  # same-named stand-ins of other tests: an offline host has none
    seed_overleaf_path(offline_engine, [FROM], edition="pro", git_bridge=True, mongo=["6.0"], redis=["7.4"],
                       nginx=["1.28-alpine"])  # what the 5.5.8 site runs (the bundle does not carry it)
    env = {**offline_engine.env(compose=classic_compose()), "OVERLEAF_AIRGAP_STATE": str(tmp_path / "state.json"),
           "OVERLEAF_AIRGAP_TRUST_DIR": str(tmp_path / "no-trust-dir")}
    tk = make_toolkit(tmp_path, FROM, engine=offline_engine.env(compose=classic_compose()), edition="pro", git_bridge=True,
                      nginx="1.28-alpine", nginx_pinned=False, sibling_containers=True, sibling_pull=False,
                      texlive=[*TEXLIVE, OLD_TEXLIVE], mongo="6.0", mongo_legacy=False, redis="7.4", redis_aof=True)
    projects = tk.data("mongo") / "project-images"  # db.projects.distinct("imageName") of the mongo stand-in
    projects.write_text(f"{TEXLIVE[0]}\n{OLD_TEXLIVE}\n")
    try:
        tk.run("up", "-d")
        tk.wait_healthy()
        assert tk.running_images()["nginx"] == "nginx:1.28-alpine" and "NGINX_IMAGE" not in tk.rc()
        assert tk.running_images()["git-bridge"] == f"{BRIDGE}:{FROM}"

        # --- the admin trims the TeX Live list to the bundle's images; projects still use the old one
        tk.set_variables(ALL_TEX_LIVE_DOCKER_IMAGES=",".join(TEXLIVE))
        log = tk.data("mongo") / "commands.log"  # the mongo stand-in logs every shell command it answers
        before, running, logged = toolkit_checksums(tk), started(tk), log.read_text()
        client = offline_engine.client()
        bridge_id = client.images.get(f"{BRIDGE}:{FROM}").id
        client.images.remove(f"{BRIDGE}:{FROM}", force=True)  # the running git-bridge keeps it, untagged
        try:
            out = importer(env, *upgrade_args(pro_bundle, tk))
        finally:
            client.api.tag(bridge_id, BRIDGE, FROM)
        assert out.returncode == 31, out.stdout + out.stderr
        # the plan assumes the running git-bridge is here (the bundle does not carry it); every bin/up restarts it
        assert "not in the engine" in out.stderr and f"{BRIDGE}:{FROM}" in out.stderr
        assert f"projects use the TeX Live image {OLD_TEXLIVE}, which is not in ALL_TEX_LIVE_DOCKER_IMAGES" in out.stderr
        assert f"bin/run-script scripts/update_project_image_name.js {OLD_TEXLIVE} {TEXLIVE[0]}" in out.stderr
        assert "nothing was changed" in out.stderr and "Traceback" not in out.stderr
        asked = log.read_text()[len(logged):].splitlines()
        assert asked and all('db.projects.distinct("imageName")' in line for line in asked), asked  # only read
        before.pop("data/mongo/commands.log")
        after = toolkit_checksums(tk)
        after.pop("data/mongo/commands.log")
        assert after == before and started(tk) == running  # no file, no container touched

        # --- the documented fix (update_project_image_name.js rewrites projects.imageName in MongoDB)
        projects.write_text(f"{TEXLIVE[0]}\n{TEXLIVE[0]}\n")
        out = importer(env, *upgrade_args(pro_bundle, tk))
        assert out.returncode == 40, out.stdout + out.stderr  # paused: binary files must be checked by a person
        assert "binary files" in out.stderr
        out = importer(env, *upgrade_args(pro_bundle, tk, "--resume"))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "NGINX_IMAGE=nginx:1.30-alpine was pinned" in out.stdout + out.stderr

        # --- healthy at 6.2.2, every part at its planned image, pinned by the bundle
        assert tk.version() == TO and tk.app_status() == "ok"
        assert tk.running_images() == {"sharelatex": f"{PRO}:{TO}", "git-bridge": f"{BRIDGE}:{TO}",
                                       "nginx": "nginx:1.30-alpine", "mongo": "mongo:8.0", "redis": "redis:7.4"}
        pinned = pinned_ids(pro_bundle.manifest, offline_engine.store)
        states = tk.states()
        for name in ("sharelatex", "git-bridge", "nginx", "mongo"):
            st = states[name]
            assert st.running and st.image_id == pinned[st.image], (name, st, pinned.get(st.image))
        for ref in TEXLIVE:
            assert client.images.get(ref).id == pinned[ref], ref
        rc, variables = tk.rc(), tk.variables()
        assert rc["NGINX_IMAGE"] == "nginx:1.30-alpine" and rc["SIBLING_CONTAINERS_PULL"] == "false"
        assert any(p.name.startswith("__old-overleaf.rc.") for p in tk.config.iterdir())

        # --- the TeX Live settings are consistent, in config/ and in the running app
        listed = variables["ALL_TEX_LIVE_DOCKER_IMAGES"].split(",")
        assert listed == list(TEXLIVE) and variables["TEX_LIVE_DOCKER_IMAGE"] in listed
        app = container_env(tk, "sharelatex")
        assert app["SANDBOXED_COMPILES"] == "true" and app["ALL_TEX_LIVE_DOCKER_IMAGES"] == ",".join(TEXLIVE)
        assert app["TEX_LIVE_DOCKER_IMAGE"] == TEXLIVE[0]
        versions = [line.split()[0] for line in (tk.data() / "versions.log").read_text().splitlines() if line.strip()]
        assert [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v] == [FROM, TO]
        assert (tk.data() / "binary-files-migration.done").exists()
        assert (tk.data("mongo") / "fcv").read_text().strip() == "8.0"
        st = json.loads(importer(env, "--json", "status", "--toolkit", os.fspath(tk)).stdout)
        assert st["journal"]["finished"] and st["journal"]["done"] == st["journal"]["total"] == len(plan["steps"])

        # --- what preflight guards against: Server Pro 6.2.2 refuses to start while a project uses another image
        projects.write_text(f"{OLD_TEXLIVE}\n")
        tk.compose("restart", "-t", "1", "sharelatex")
        tk.wait_refused("sharelatex", f"projects use the TeX Live image {OLD_TEXLIVE}")
    finally:
        tk.down()
