"""README-OFFLINE.txt: what the offline admin runs, in order, in plain text.

The first commands need nothing but stock tools, and each one only trusts what the
one before checked: (a) ``openssl pkeyutl -verify`` checks ``manifest.json`` against
the key the admin received out of band; (b) a python3 one-liner (standard library
only) checks every listed file against the now-trusted manifest and refuses any file
in ``wheels/`` the manifest does not list (exit code 1); (c) ``pip install --no-index
--require-hashes -r wheels/requirements.txt`` installs only the pinned, listed wheels.
The commands are indented by exactly five spaces (continued lines end with a
backslash), so that tests can run them as written (:func:`commands`).

    text = offline_readme(edition="ce", from_version="5.5.3", ..., wheels=True, toolkit=None, delta=None)
    commands(text)[:3]     # the signature check, the file check, the venv
"""
from __future__ import annotations

import textwrap
from typing import Any, Sequence

from manifests.bundle import MANIFEST_NAME, PUBKEY_NAME, SIGNATURE_NAME
from manifests.units import human_size


VENV = "~/overleaf-airgap-venv"
INDENT = "     "
# (b): stdlib only; reads the manifest that (a) verified; exit code 1 and "BAD: ..." on any problem
CHECK_FILES = (
    "python3 -c 'import hashlib,json,os,sys; m=json.load(open(\"manifest.json\",\"rb\")); "
    "h={f[\"name\"]: f[\"sha256\"] for f in m[\"files\"]}; "
    "bad=[n for n in sorted(h) if os.path.islink(n) or not os.path.isfile(n) or "
    "hashlib.sha256(open(n,\"rb\").read()).hexdigest()!=h[n]]; "
    "bad+=[\"wheels/\"+n+\" (not in the manifest)\" for n in sorted(os.listdir(\"wheels\") "
    "if os.path.isdir(\"wheels\") else []) if \"wheels/\"+n not in h]; "
    "sys.exit(\"BAD: \"+\", \".join(bad)) if bad else "
    "print(\"OK: every listed file matches and wheels/ holds nothing else\")'")
INSTALL = (f"{VENV}/bin/python3 -m pip install --no-index --require-hashes --find-links wheels \\\n"
           f"{INDENT}    -r wheels/requirements.txt")


def commands(text: str) -> list[str]:
    """Every command of a README-OFFLINE text, in order (lines indented by five spaces, joined where a
    line ends with a backslash)."""
    out: list[str] = []
    cont = False
    for line in text.splitlines():
        if cont:
            out[-1] = out[-1][:-1].rstrip() + " " + line.strip()
        elif line.startswith(INDENT) and not line.startswith(INDENT + " ") and line.strip():
            out.append(line.strip())
        else:
            continue
        cont = out[-1].endswith("\\")
    return out


def _wrap(text: str, indent: str = "   ") -> str:
    return textwrap.fill(text, width=78, initial_indent=indent, subsequent_indent=indent + "  ")


def offline_readme(*, edition: str, from_version: str, to_version: str, bundle_id: str, created: str,
                   expires: str, sequence: int, key_id: str, platform: str, plan: dict[str, Any],
                   images: Sequence[tuple[str, str]], parts: Sequence[tuple[str, int]], payload_size: int,
                   wheels: bool, toolkit: dict[str, str] | None, delta: dict[str, Any] | None) -> str:
    product = "Overleaf Server Pro" if edition == "pro" else "Overleaf Community Edition"
    L: list[str] = []
    L += [f"{product} upgrade bundle: {from_version} -> {to_version}",
          "=" * 78, "",
          f"Bundle id:   {bundle_id}",
          f"Created:     {created}    Expires: {expires}",
          f"Sequence:    {sequence}",
          f"Signed by:   {key_id}",
          f"Platform:    {platform}", ""]
    L += ["WHAT IS HERE", "------------",
          f"  {MANIFEST_NAME}        the signed list of everything below (sizes, sha256)",
          f"  {SIGNATURE_NAME}    its Ed25519 signature (64 raw bytes)",
          f"  {PUBKEY_NAME}      the signer's public key, FOR INFORMATION ONLY:",
          "                       trust the copy you received separately, not this one",
          f"  payload.000 ...      the images, {len(parts)} part(s), {human_size(payload_size)} in all; the parts may",
          "                       be spread over several discs: keep each disc's parts together"]
    if wheels:
        L.append("  wheels/              the importer (overleaf-import) and its Python dependencies")
    if toolkit:
        L.append(f"  {toolkit['file']}    the Overleaf Toolkit, commit {toolkit['commit'][:12]} (git bundle)")
    L += ["", f"Images ({len(images)}):"]
    L += [f"  {ref}   {iid[:19]}" for ref, iid in images]
    if delta:
        L += ["", _wrap(f"This is a DELTA bundle: {len(delta.get('omitted_layers', []))} layer(s) are left out "
                        "because the offline host already had them (per its inventory receipt). Load it only on "
                        "that host.", "  ")]
    L += ["", "WHAT TO RUN, IN ORDER", "---------------------", "",
          "Run everything in this folder (cd into it first). Each step trusts only what the",
          "step before it checked: do not skip one, and stop at the first failure.", "",
          "1. Check the signature FIRST, with the public key you obtained out of band",
          "   (from the online operator directly, not from this medium):", "",
          f"{INDENT}openssl pkeyutl -verify -pubin -inkey TRUSTED-KEY.pub -rawin \\",
          f"{INDENT}    -in {MANIFEST_NAME} -sigfile {SIGNATURE_NAME}", "",
          '   It must print "Signature Verified Successfully". If it does not, stop: the',
          "   bundle is damaged or not from your operator. (OpenSSL 3.0 or later.)", ""]
    step = 2
    if wheels or toolkit:
        L += [f"{step}. Check every small file against the signed {MANIFEST_NAME}, and that wheels/",
              "   holds nothing the manifest does not list (python3 standard library only):", "",
              f"{INDENT}{CHECK_FILES}", "",
              '   It must print "OK: ...". "BAD: ..." (exit code 1) names each damaged, missing',
              "   or unlisted file: stop, and copy the bundle again from the original media.", ""]
        step += 1
    if wheels:
        L += [f"{step}. Install the importer from this bundle (no internet needed; Python 3.11+).",
              "   pip installs exactly the wheels pinned by sha256 in wheels/requirements.txt",
              "   (checked in step 2), and refuses anything else:", "",
              f"{INDENT}python3 -m venv {VENV}",
              f"{INDENT}{INSTALL}",
              f"{INDENT}export PATH={VENV}/bin:$PATH", ""]
        step += 1
    L += [f"{step}. Trust the operator's public key on this host (once), then verify the whole",
          "   bundle (signature, expiry, sequence, every part's sha256):", "",
          "     sudo install -D -m 0644 TRUSTED-KEY.pub /etc/overleaf-airgap/trusted.d/operator.pub",
          "     overleaf-import verify .", "",
          "   (Or pass --trust TRUSTED-KEY.pub to verify, load and upgrade.) A bad or missing",
          "   part is named: copy only that part again. Parts on other discs: --parts-from DIR.", ""]
    step += 1
    L += [f"{step}. Load the images into the Docker engine (parts are read in place):", "",
          "     overleaf-import load .", ""]
    step += 1
    if toolkit:
        L += [f"{step}. If the Toolkit itself must be updated, fetch it from the git bundle:", "",
              f"     git -C /path/to/overleaf-toolkit fetch \"$PWD/{toolkit['file']}\" HEAD",
              f"     (the bundled commit is {toolkit['commit']})", ""]
        step += 1
    L += [f"{step}. Upgrade, step by step (backups, migrations and health checks included):", "",
          "     overleaf-import upgrade . --toolkit /path/to/overleaf-toolkit", "",
          "   It stops at the first problem and says how to continue or roll back.", ""]
    L += ["THE UPGRADE PLAN", "----------------", ""]
    for i, s in enumerate(plan.get("steps", []), 1):
        L.append(_wrap(f"{i:2d}. [{s['kind']}] {s['description']}", "  "))
        if s.get("images"):
            L.append(_wrap("images: " + ", ".join(s["images"]), "        "))
    for w in plan.get("warnings", []):
        L += ["", _wrap(f"! {w}", "  ")]
    L.append("")
    return "\n".join(L)
