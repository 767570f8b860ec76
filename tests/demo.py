"""The whole story on a built-in demo, with no internet (README: `bash tests/demo.sh`).

A private registry stands in for Docker Hub: synthetic Overleaf CE, MongoDB and Redis
images for 3.5.10 -> 6.2.2 are built on a private "publisher" engine and pushed there
under mirror names. The online host has **no Docker engine** (``DOCKER_HOST`` points
nowhere): `overleaf-bundle` plans and builds a signed, upstream-exact bundle straight
from the registry (--mirror), split into 8 MiB parts, "burned" onto two "discs"
(folders). The offline host is Docker Engine 26 with the **containerd image store**
and Compose v2 (what new installs get): it runs a Toolkit stand-in at 3.5.10, and
`overleaf-import` verifies the discs, loads the images (each tag's ID is the registry's
manifest digest), estimates the maintenance window from the site's own data, rehearses the
whole upgrade on a sandbox copy beside the real site, writes the change report (HTML and
Markdown), then walks the Toolkit through every step, pausing once for the
binary-files check, resumes to 6.2.2, and finally pushes the images to an internal
registry with their digests unchanged.

    python3 -m tests.demo [--keep] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.engine import PrivateEngine, PrivateRegistry, push_to_registry
from tests.support.overleaf_images import seed_overleaf_path
from tests.support.toolkit import make_toolkit

FROM, TO = "3.5.10", "latest"


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def cli(tool: str, *args: str, env: dict, ok=(0,), quiet: bool = False) -> subprocess.CompletedProcess:
    print(f"$ {tool} {' '.join(args)}" + ("  (output used by the demo)" if quiet else ""), flush=True)
    proc = subprocess.run([tool, *args], env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL if quiet else subprocess.STDOUT)
    if not quiet:
        print(proc.stdout.rstrip(), flush=True)
    if proc.returncode not in ok:
        raise SystemExit(f"demo: `{tool} {args[0]}` exited {proc.returncode}")
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="oa-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tk = None
    try:
        with PrivateEngine(name="publisher") as online, PrivateRegistry() as registry, \
                PrivateEngine(name="offline", store="containerd", compose="v2") as offline, \
                PrivateRegistry() as internal:
            on_env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock",
                      "OVERLEAF_AIRGAP_CATALOG_OVERLAY": str(work / "no-overlay.yaml")}
            off_env = {**offline.env(), "OVERLEAF_AIRGAP_STATE": str(work / "offline-state.json"),
                       "OVERLEAF_AIRGAP_TRUST_DIR": str(work / "trusted.d")}

            banner("Online: plan the stepped upgrade")
            plan_args = ["--from", FROM, "--to", TO, "--mongo", "4.4", "--redis", "6.2"]
            cli("overleaf-bundle", "plan", *plan_args, env=on_env)
            plan = json.loads(cli("overleaf-bundle", "--json", "plan", *plan_args, env=on_env, quiet=True).stdout)

            banner("Publishers: synthetic images in a private registry (standing in for Docker Hub)")
            steps = plan["steps"]
            refs = seed_overleaf_path(online, [s["version"] for s in steps if s["kind"] == "app"],
                                      mongo=[s["version"] for s in steps if s["kind"] == "mongo"],
                                      redis=[s["version"] for s in steps if s["kind"] == "redis"])
            mirror = f"{registry.address}/hub"
            push_to_registry(online, registry, refs, mirrors={"docker.io": mirror, "quay.io": f"{registry.address}/quay.io"})
            t0 = time.monotonic()  # the baseline: one plain `docker save` of the same images
            saved = work / "docker-save.tar"
            subprocess.run(["docker", "save", "-o", str(saved), *refs], env=online.env(), check=True)
            save_s, save_b = time.monotonic() - t0, saved.stat().st_size
            saved.unlink()
            print(f"pushed {len(refs)} images to {registry.address}")

            banner("Online (no Docker engine here: DOCKER_HOST points nowhere): a signing key and the bundle")
            cli("overleaf-bundle", "keygen", "--out", str(work / "keys" / "signing.key"), "--no-passphrase", env=on_env)
            out = work / "bundle"
            t0 = time.monotonic()
            cli("overleaf-bundle", "build", *plan_args, "--key", str(work / "keys" / "signing.key"), "--out", str(out),
                "--mirror", f"docker.io={mirror}", "--mirror", f"quay.io={registry.address}/quay.io",
                "--max-part-size", "8M", "--expires", "30d", "--no-importer", env=on_env)
            build_s = time.monotonic() - t0
            bundle_b = sum(p.stat().st_size for p in out.iterdir() if p.name.startswith("payload."))
            print(f"measured: docker save {save_b:,} B in {save_s:.1f} s on the publisher's engine; bundle payload "
                  f"{bundle_b:,} B ({bundle_b / save_b:.2f}x) fetched and written in {build_s:.1f} s with no engine")
            cli("overleaf-bundle", "inspect", str(out), env=on_env)
            print("$ openssl pkeyutl -verify -pubin -inkey signing.key.pub -rawin -in manifest.json -sigfile manifest.json.sig")
            subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(work / "keys" / "signing.key.pub"),
                            "-rawin", "-in", str(out / "manifest.json"), "-sigfile", str(out / "manifest.json.sig")],
                           check=True)

            banner("The courier: two discs")
            disc1, disc2 = work / "disc1", work / "disc2"
            parts = sorted(p for p in out.iterdir() if p.name.startswith("payload."))
            shutil.copytree(out, disc1, ignore=lambda d, names: [n for n in names if n in {p.name for p in parts[len(parts) // 2:]}])
            disc2.mkdir()
            for p in parts[len(parts) // 2:]:
                shutil.copy2(p, disc2 / p.name)
            print(f"disc1: {len(list(disc1.iterdir()))} files, disc2: {len(list(disc2.iterdir()))} parts")
            (work / "trusted.d").mkdir()
            shutil.copy2(work / "keys" / "signing.key.pub", work / "trusted.d" / "site-builder.pub")

            banner("Offline: Docker Engine 26, containerd image store, Compose v2; Overleaf 3.5.10 with the Toolkit")
            seed_overleaf_path(offline, [FROM], mongo=["4.4"], redis=["6.2"])
            tk = make_toolkit(work, FROM, engine=offline, mongo="4.4", redis="6.2")
            tk.run("up", "-d")
            tk.wait_healthy()
            print(f"Toolkit at {os.fspath(tk)}: Overleaf {tk.version()}, running {tk.running_images()}")

            banner("Offline: verify, load")
            media = [str(disc1), "--parts-from", str(disc2)]
            cli("overleaf-import", "verify", *media, env=off_env)
            cli("overleaf-import", "load", *media, env=off_env)

            banner("Offline: plan the maintenance window: estimate, rehearsal on a copy, change report")
            cli("overleaf-import", "estimate", *media, "--toolkit", os.fspath(tk), "--backup-dir",
                str(work / "backups"), env=off_env)
            cli("overleaf-import", "rehearse", *media, "--toolkit", os.fspath(tk), "--yes", env=off_env)
            cli("overleaf-import", "report", *media, "--toolkit", os.fspath(tk), "--backup-dir", str(work / "backups"),
                "--html", str(work / "change-report.html"), "--markdown", str(work / "change-report.md"), env=off_env)

            banner("Offline: upgrade")
            up = ["upgrade", *media, "--toolkit", os.fspath(tk), "--yes", "--generate-secrets",
                  "--backup-dir", str(work / "backups")]
            cli("overleaf-import", *up, "--dry-run", env=off_env)
            cli("overleaf-import", *up, env=off_env, ok=(40,))
            print("\n(the admin opens a few projects, checks that images and PDFs still open, then resumes)")
            cli("overleaf-import", *up, "--resume", env=off_env)
            cli("overleaf-import", "status", "--toolkit", os.fspath(tk), env=off_env)

            banner("Offline: push the images to an internal registry, digests unchanged")
            cli("overleaf-import", "push", *media, "--registry", f"{internal.address}/overleaf", env=off_env)
            print(f"\nDone in {time.monotonic() - started:.0f} s: Overleaf {tk.version()}, running {tk.running_images()}")
            tk.down()
            tk = None
    finally:
        if tk is not None:
            tk.down()
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep or args.workdir:
            print(f"work folder kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
