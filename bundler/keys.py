"""Passphrases for the signing key: from an environment variable, or typed at a terminal.

Order for an encrypted key: ``--passphrase-env VAR``, then ``OVERLEAF_AIRGAP_KEY_PASSPHRASE``,
then a hidden prompt when stdin is a terminal; otherwise a clear error (never a hang).

    key = load_signing_key(Path("release.key"), passphrase_env="MY_VAR")
    passphrase_from_env(None)     # OVERLEAF_AIRGAP_KEY_PASSPHRASE's bytes, or None
    write_new_key(Path("release.key"), passphrase_env=None, no_passphrase=False)
"""
from __future__ import annotations

import getpass
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manifests.console import interactive
from manifests.errors import KeyError_
from manifests.signing import PASSPHRASE_ENV, load_private_key, write_keypair


def passphrase_from_env(passphrase_env: str | None) -> bytes | None:
    """The one passphrase look-up: ``--passphrase-env VAR`` (which must be set and non-empty), else
    ``OVERLEAF_AIRGAP_KEY_PASSPHRASE`` when set, else None (the caller may then ask at a terminal)."""
    if passphrase_env:
        value = os.environ.get(passphrase_env)
        if value is None:
            raise KeyError_(f"the environment variable {passphrase_env} (--passphrase-env) is not set",
                            f"Export {passphrase_env} with the key's passphrase, or leave out --passphrase-env.")
        if not value:
            raise KeyError_(f"the environment variable {passphrase_env} (--passphrase-env) is empty",
                            f"Put the passphrase into {passphrase_env}, or leave out --passphrase-env.")
        return value.encode("utf-8")
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value is not None else None


def new_key_passphrase(passphrase_env: str | None, no_passphrase: bool) -> bytes | None:
    """The passphrase for ``keygen``: env, or typed twice; None only with --no-passphrase."""
    if no_passphrase:
        if passphrase_env:
            raise KeyError_("--no-passphrase and --passphrase-env contradict each other",
                            "Give one of them: an unencrypted key, or the variable that holds its passphrase.")
        return None
    passphrase = passphrase_from_env(passphrase_env)
    if passphrase:
        return passphrase
    if not interactive(secret=True):
        raise KeyError_("no passphrase for the new key, and stdin is not a terminal to ask for one",
                        f"Pass --passphrase-env VAR (or set {PASSPHRASE_ENV}), or --no-passphrase for an "
                        "unencrypted key (keep it on an encrypted disk then).")
    first = getpass.getpass("Passphrase for the new signing key: ")
    if not first:
        raise KeyError_("an empty passphrase was typed",
                        "Type a passphrase, or pass --no-passphrase for an unencrypted key.")
    if getpass.getpass("Same passphrase again: ") != first:
        raise KeyError_("the two passphrases differ", "Run keygen again.")
    return first.encode("utf-8")


def write_new_key(out: Path, passphrase_env: str | None, no_passphrase: bool) -> tuple[Path, Path, str, bool]:
    passphrase = new_key_passphrase(passphrase_env, no_passphrase)
    Path(out).expanduser().parent.mkdir(parents=True, exist_ok=True)
    priv, pub, kid = write_keypair(Path(out).expanduser(), passphrase)
    return priv, pub, kid, passphrase is not None


def load_signing_key(path: Path, passphrase_env: str | None = None) -> Ed25519PrivateKey:
    """Load the private key, getting its passphrase when it is encrypted; KeyError_ on any problem."""
    path = Path(path).expanduser()
    try:
        encrypted = b"ENCRYPTED" in path.read_bytes()
    except OSError as exc:
        raise KeyError_(f"cannot read the signing key {path}: {exc.strerror}",
                        "Check the --key path (overleaf-bundle keygen makes one).") from exc
    passphrase = passphrase_from_env(passphrase_env) if encrypted else None
    if encrypted and passphrase is None and interactive(secret=True):
        passphrase = getpass.getpass(f"Passphrase for {path}: ").encode("utf-8")
    return load_private_key(path, passphrase)
