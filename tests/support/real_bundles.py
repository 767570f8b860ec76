"""Real bundles for the importer's tests: stand-in images pushed to the test registry, then
``overleaf-bundle build`` run as an operator runs it, with no engine (``DOCKER_HOST`` points nowhere).

The upgrade tests need a bundle whose plan is the planner's own and whose images run
the gated stand-ins (tests/support/overleaf_images.py). :func:`build_upgrade_bundle`
builds those stand-ins on the online ``engine``, pushes them into the ``registry``
fixture under a namespace of its own (mirror names: ``docker.io`` -> ``NS``,
``quay.io`` -> ``NS/quay.io``), and runs the real builder with ``--mirror``::

    key = make_release_key(tmp_path / "key")
    b = build_upgrade_bundle(engine, registry, key, tmp_path / "bundle", "5.5.8", "6.2.2", mongo="6.0", redis="7.4")
    b.path, b.pub, b.manifest.images   # the folder, the key to trust offline, the signed manifest
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors

from importer.images.load import pinned_ids
from manifests.bundle import BundleManifest
from manifests.catalog import load_catalog
from manifests.planner import PlanRequest, make_plan
from tests.support.engine import PrivateEngine, PrivateRegistry, push_to_registry
from tests.support.overleaf_images import seed_overleaf_path

REPO = Path(__file__).resolve().parents[2]
PASS_ENV, PASSPHRASE = "OA_TEST_PASS", "upgrade tests only"
NO_ENGINE = "unix:///nonexistent/docker.sock"
NAMESPACE = "airgap-upgrade-test"   # our own corner of the shared registry


def bundle_command() -> list[str]:
    """The installed ``overleaf-bundle`` script of this interpreter, else the same entry point via -m."""
    script = Path(sys.executable).parent / "overleaf-bundle"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bundler.cli"]


def run_bundler(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``overleaf-bundle ARGS`` with no engine reachable, the key's passphrase in the environment."""
    env = {**os.environ, PASS_ENV: PASSPHRASE, "DOCKER_HOST": NO_ENGINE}
    return subprocess.run([*bundle_command(), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@dataclass(frozen=True)
class ReleaseKey:
    key: Path
    pub: Path


@dataclass(frozen=True)
class RealBundle:
    path: Path
    pub: Path
    manifest: BundleManifest
    plan: dict[str, Any]


def make_release_key(folder: Path) -> ReleaseKey:
    """``overleaf-bundle keygen``: an encrypted key and its ``.pub``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "release.key"
    proc = run_bundler("keygen", "--out", str(key), "--passphrase-env", PASS_ENV)
    if proc.returncode != 0:
        raise RuntimeError(f"overleaf-bundle keygen failed: {proc.stderr}")
    return ReleaseKey(key, key.with_name(key.name + ".pub"))


def mirror_prefixes(registry: PrivateRegistry) -> dict[str, str]:
    base = f"{registry.address}/{NAMESPACE}"
    return {"docker.io": base, "quay.io": f"{base}/quay.io"}


def upgrade_plan(frm: str, to: str, **request: Any) -> dict[str, Any]:
    """The planner's plan (no catalog overlay), as the bundle will carry it."""
    return make_plan(load_catalog(overlay=False), PlanRequest(frm, to, **request)).to_dict()


def seed_and_push(engine: PrivateEngine, registry: PrivateRegistry, plan: dict[str, Any], *,
                  edition: str = "ce", **seed: Any) -> list[str]:
    """Build the stand-ins the plan's bundle carries on ``engine`` (app, git-bridge, MongoDB, Redis, nginx and
    TeX Live images, as the plan names them) and push them under mirror names."""
    apps = sorted({s["version"] for s in plan["steps"] if s["kind"] == "app"})
    mongos = sorted({s["version"] for s in plan["steps"] if s["kind"] == "mongo"})
    redis = sorted({s["version"] for s in plan["steps"] if s["kind"] == "redis"})
    options = plan.get("options") or {}
    texlive_repo = "quay.io/sharelatex/texlive-full:"
    seed.setdefault("git_bridge", bool(options.get("git_bridge")))
    seed.setdefault("nginx", sorted(i.split(":", 1)[1] for i in plan["images"] if i.startswith("nginx:")))
    seed.setdefault("texlive", sorted(i.removeprefix(texlive_repo) for i in plan["images"] if i.startswith(texlive_repo)))
    refs = seed_overleaf_path(engine, apps, edition=edition, mongo=mongos, redis=redis, **seed)  # type: ignore[arg-type]
    wanted = [r for r in refs if r in plan["images"]]
    push_to_registry(engine, registry, wanted, mirrors=mirror_prefixes(registry))
    return wanted


def option_args(git_bridge: bool = False, tls_proxy: bool = False, texlive: tuple[str, ...] = ()) -> list[str]:
    """The Server Pro / TLS proxy options as ``overleaf-bundle`` flags."""
    args = ["--git-bridge"] if git_bridge else []
    args += ["--tls-proxy"] if tls_proxy else []
    for t in texlive:
        args += ["--texlive", t]
    return args


def build_bundle(registry: PrivateRegistry, key: ReleaseKey, out: Path, frm: str, to: str, *, edition: str = "ce",
                 mongo: str | None = None, redis: str | None = None, extra: tuple[str, ...] = (),
                 git_bridge: bool = False, tls_proxy: bool = False, texlive: tuple[str, ...] = ()) -> BundleManifest:
    """``overleaf-bundle build`` from the test registry, with no engine; the signed manifest."""
    args = ["build", "--from", frm, "--to", to, "--edition", edition, "--key", str(key.key),
            "--passphrase-env", PASS_ENV, "--out", str(out), "--max-part-size", "8M", "--no-importer"]
    args += ["--mongo", mongo] if mongo else []
    args += ["--redis", redis] if redis else []
    args += option_args(git_bridge, tls_proxy, texlive)
    for source, prefix in mirror_prefixes(registry).items():
        args += ["--mirror", f"{source}={prefix}"]
    proc = run_bundler(*args, *extra)
    if proc.returncode != 0:
        raise RuntimeError(f"overleaf-bundle build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return BundleManifest.from_bytes((out / "manifest.json").read_bytes())


def build_upgrade_bundle(engine: PrivateEngine, registry: PrivateRegistry, key: ReleaseKey, out: Path, frm: str,
                         to: str, *, edition: str = "ce", mongo: str | None = None, redis: str | None = None,
                         extra: tuple[str, ...] = (), git_bridge: bool = False, tls_proxy: bool = False,
                         texlive: tuple[str, ...] = (), **seed: Any) -> RealBundle:
    """Seed, push and build the bundle for ``frm`` -> ``to``; check that it carries the planner's plan.

    ``git_bridge``/``tls_proxy``/``texlive`` (Server Pro options) go to the planner and the builder alike;
    the stand-ins of every image the plan carries are seeded (git-bridge, nginx and TeX Live ones too);
    ``seed`` goes on to :func:`tests.support.overleaf_images.seed_overleaf_path`."""
    options = {"git_bridge": git_bridge, "tls_proxy": tls_proxy, "texlive": tuple(texlive)}
    request = {k: v for k, v in (("mongo", mongo), ("redis", redis)) if v}
    plan = upgrade_plan(frm, to, edition=edition, **request, **options)
    seed_and_push(engine, registry, plan, edition=edition, **seed)
    manifest = build_bundle(registry, key, out, frm, to, edition=edition, mongo=mongo, redis=redis, extra=extra,
                            **options)
    carried = json.loads(json.dumps(manifest.plan))
    if carried["steps"] != plan["steps"]:
        raise AssertionError("the bundle's plan is not the planner's plan")
    return RealBundle(out, key.pub, manifest, carried)


def clear_stale_tags(engine: PrivateEngine, bundle: RealBundle) -> None:
    """Untag the bundle's references that name other images on ``engine`` (same-named stand-ins that other
    tests built there): the load refuses to move such a tag silently, an offline host would not have them."""
    client = engine.client()
    for ref, want in pinned_ids(bundle.manifest, engine.store).items():
        with contextlib.suppress(docker.errors.NotFound):
            if client.images.get(ref).id != want:
                client.images.remove(ref, noprune=True)
