"""Ed25519 keys and detached signatures that stock tools can check too.

The signature file is the raw 64-byte Ed25519 signature over the exact bytes of
``manifest.json``; the public key is PEM SubjectPublicKeyInfo. So, besides this tool:

    openssl pkeyutl -verify -pubin -inkey signing-key.pub -rawin \\
        -in manifest.json -sigfile manifest.json.sig

The key id is ``ed25519:`` + the first 32 hex digits of sha256 over the raw 32-byte key.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import atomic_write_bytes
from .errors import KeyError_
from .limits import LIMITS
from .safeio import read_regular

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# cryptography is imported in the functions that use it: it costs start-up time to the commands
# (help, a verify that stops before any key is read) that never touch a key.

PASSPHRASE_ENV = "OVERLEAF_AIRGAP_KEY_PASSPHRASE"


def key_id(public: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def public_pem(public: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_keypair(out: Path, passphrase: bytes | None) -> tuple[Path, Path, str]:
    """Write ``out`` (private, PEM PKCS8, 0600, encrypted when a passphrase is given) and ``out.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out)
    pub_path = out.with_name(out.name + ".pub")
    for p in (out, pub_path):
        if p.exists():
            raise KeyError_(f"{p} already exists", "Choose another --out path; keys are never overwritten.")
    key = Ed25519PrivateKey.generate()
    enc = (serialization.BestAvailableEncryption(passphrase) if passphrase
           else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    atomic_write_bytes(out, pem, mode=0o600)
    atomic_write_bytes(pub_path, public_pem(key.public_key()), mode=0o644)
    return out, pub_path, key_id(key.public_key())


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """The Ed25519 key in ``path``; an encrypted one needs ``passphrase`` (see ``bundler.keys`` for where from)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyError_(f"cannot read the signing key {path}: {exc.strerror}",
                        "Check the --key path (overleaf-bundle keygen makes one).") from exc
    encrypted = b"ENCRYPTED" in data
    if encrypted and passphrase is None:
        raise KeyError_(f"the signing key {path} is encrypted and no passphrase was given",
                        f"Run interactively to be asked, or set {PASSPHRASE_ENV} (or --passphrase-env VAR).")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except (ValueError, TypeError) as exc:
        if encrypted:
            raise KeyError_(f"wrong passphrase for the signing key {path}",
                            "Type the passphrase given to `overleaf-bundle keygen`.") from exc
        raise KeyError_(f"{path} is not a PEM private key", "Use the key written by `overleaf-bundle keygen`.") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(f"{path} is not an Ed25519 key", "Make one with `overleaf-bundle keygen`.")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path)
    try:  # bounded and non-blocking: a FIFO or a huge file in the trust folder cannot hang the importer
        data = read_regular(path, LIMITS.public_key, "the public key", KeyError_, follow_symlinks=True,
                            hint="Trust the .pub file written by `overleaf-bundle keygen`.")
    except FileNotFoundError:
        raise KeyError_(f"cannot read the public key {path}: no such file") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyError_(f"{path} is not a PEM public key",
                        "Trust the .pub file written by `overleaf-bundle keygen`.") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyError_(f"{path} is not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify(public: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(signature, data)
        return True
    except InvalidSignature:
        return False
