"""Ed25519 signing keys for test bundles, and re-signing a manifest a test has bent.

Real bundles are signed by ``overleaf-bundle build`` (tests/support/real_bundles.py);
the hostile bundles of tests/support/registry_bundles.py are signed here, so that a
test can sign what the real builder never would.

    key = make_key(tmp_path / "keys")
    m = read_manifest(bundle); m["sequence"] = 9; sign(bundle, m, key)   # signed, yet edited
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manifests.bundle import MANIFEST_NAME, SIGNATURE_NAME, canonical_json
from manifests.signing import key_id, public_pem


@dataclass
class SigningKey:
    private: Ed25519PrivateKey
    pub_path: Path
    id: str


def make_key(folder: Path, name: str = "signer") -> SigningKey:
    """A new key; its public half is written to ``folder/<name>.pub``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pub = folder / f"{name}.pub"
    pub.write_bytes(public_pem(key.public_key()))
    return SigningKey(key, pub, key_id(key.public_key()))


def sign(bundle: Path, manifest: dict[str, Any], key: SigningKey) -> bytes:
    """Write ``manifest`` (canonical JSON, not validated) and its signature by ``key``."""
    data = canonical_json(manifest)
    (bundle / MANIFEST_NAME).write_bytes(data)
    (bundle / SIGNATURE_NAME).write_bytes(key.private.sign(data))
    return data


def read_manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / MANIFEST_NAME).read_bytes())
