"""README-OFFLINE.txt: what the offline admin runs, in order, in plain text.

    text = offline_readme(manifest_fields, plan_dict, files=[...])
"""
from __future__ import annotations

import textwrap
from typing import Any, Sequence

from manifests.bundle import MANIFEST_NAME, PUBKEY_NAME, SIGNATURE_NAME


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


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
          f"  payload.000 ...      the images, {len(parts)} part(s), {_human(payload_size)} in all; the parts may",
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
          "1. Check the signature FIRST, with the public key you obtained out of band",
          "   (from the online operator directly, not from this medium):", "",
          "     openssl pkeyutl -verify -pubin -inkey TRUSTED-KEY.pub -rawin \\",
          f"         -in {MANIFEST_NAME} -sigfile {SIGNATURE_NAME}", "",
          '   It must print "Signature Verified Successfully". If it does not, stop: the',
          "   bundle is damaged or not from your operator. (OpenSSL 3.0 or later.)", ""]
    step = 2
    if wheels or toolkit:
        L += [f"{step}. Check the small files against the signed {MANIFEST_NAME} before using them:", "",
              "     python3 -c 'import json,hashlib; m=json.load(open(\"manifest.json\")); "
              "bad=[f[\"name\"] for f in m[\"files\"] if hashlib.sha256(open(f[\"name\"],\"rb\")"
              ".read()).hexdigest()!=f[\"sha256\"]]; print(\"BAD:\",bad if bad else \"none\")'", "",
              '   It must print "BAD: none".', ""]
        step += 1
    if wheels:
        L += [f"{step}. Install the importer from this bundle (no internet needed; Python 3.11+):", "",
              "     python3 -m venv ~/overleaf-airgap-venv",
              "     ~/overleaf-airgap-venv/bin/pip install --no-index --find-links wheels overleaf-airgap",
              "     export PATH=~/overleaf-airgap-venv/bin:$PATH", ""]
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
