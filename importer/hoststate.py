"""What the offline host keeps between runs: the keys it trusts and the bundles it accepted.

Trusted keys come from ``--trust PUBKEY`` (repeatable) or, when none is given,
from the ``*.pub`` files of the trust folder::

    /etc/overleaf-airgap/trusted.d/*.pub        (env OVERLEAF_AIRGAP_TRUST_DIR overrides)

The state file records, per product key (``overleaf-ce``, ``overleaf-pro``), the
last bundle this host accepted (:class:`manifests.trust.Accepted`), so that an
older bundle cannot be replayed (anti-rollback)::

    /var/lib/overleaf-airgap/state.json         (env OVERLEAF_AIRGAP_STATE overrides)

    {"schema": 1, "accepted": {"overleaf-ce": {"sequence": 7, "bundle_id": "...",
                                               "manifest_sha256": "...", "accepted_at": "..."}}}

It is written atomically, under a lock, only after a bundle verified, and its
recorded sequence is never lowered (not even by ``--allow-downgrade``).

    keys = load_trusted([])                     # from the trust folder
    state = HostState.load()
    state.record("overleaf-ce", accepted)       # True when the file changed
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from manifests.atomic import atomic_write_bytes
from manifests.bundle import canonical_json
from manifests.errors import KeyError_, StateError
from manifests.signing import key_id, load_public_key
from manifests.trust import Accepted

TRUST_DIR_ENV = "OVERLEAF_AIRGAP_TRUST_DIR"
DEFAULT_TRUST_DIR = Path("/etc/overleaf-airgap/trusted.d")
STATE_ENV = "OVERLEAF_AIRGAP_STATE"
DEFAULT_STATE = Path("/var/lib/overleaf-airgap/state.json")
STATE_SCHEMA = 1


def trust_dir() -> Path:
    return Path(os.environ.get(TRUST_DIR_ENV) or DEFAULT_TRUST_DIR)


def state_path() -> Path:
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE)


@dataclass
class TrustedKeys:
    """Trusted public keys by key id, with the file each came from."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    folder: Path | None = None          # the trust folder, when the keys came from it
    skipped: list[str] = field(default_factory=list)  # unreadable files in the trust folder

    def describe(self) -> str:
        where = f"the trust folder {self.folder}" if self.folder else "--trust"
        return f"{len(self.keys)} key(s) from {where}: " + (", ".join(sorted(self.keys)) or "none")


def load_trusted(explicit: Sequence[Path]) -> TrustedKeys:
    """Keys given with ``--trust`` (each must load), else the trust folder's ``*.pub`` files."""
    found = TrustedKeys()
    if explicit:
        for path in explicit:
            pub = load_public_key(Path(path))  # KeyError_ names the file
            found.keys[key_id(pub)] = pub
            found.sources[key_id(pub)] = Path(path)
        return found
    folder = trust_dir()
    found.folder = folder
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.pub")):
        try:
            pub = load_public_key(path)
        except KeyError_ as err:  # a broken file cannot add trust: skip it, but say so
            found.skipped.append(err.message)
            continue
        found.keys[key_id(pub)] = pub
        found.sources[key_id(pub)] = path
    return found


class HostState:
    """The state file: the last accepted bundle per product key."""

    def __init__(self, path: Path, accepted: dict[str, Accepted] | None = None) -> None:
        self.path = Path(path)
        self.accepted: dict[str, Accepted] = dict(accepted or {})

    @classmethod
    def load(cls, path: Path | None = None) -> "HostState":
        path = Path(path) if path is not None else state_path()
        return cls(path, _read(path))

    def get(self, product_key: str) -> Accepted | None:
        return self.accepted.get(product_key)

    def to_dict(self) -> dict:
        return {"schema": STATE_SCHEMA, "accepted": {k: v.to_dict() for k, v in sorted(self.accepted.items())}}

    def record(self, product_key: str, accepted: Accepted) -> bool:
        """Remember ``accepted`` unless an equal or higher sequence is already recorded."""
        with self._locked():
            self.accepted = _read(self.path)  # another run may have written since we loaded
            old = self.accepted.get(product_key)
            if old is not None and old.sequence >= accepted.sequence:
                return False
            self.accepted[product_key] = accepted
            try:
                atomic_write_bytes(self.path, canonical_json(self.to_dict()), mode=0o644)
            except OSError as exc:
                raise StateError(f"cannot write the state file {self.path}: {exc.strerror}",
                                 f"Run as root, or point {STATE_ENV} at a writable file.") from exc
            return True

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"cannot lock the state file {self.path}: {exc.strerror}",
                             f"Run as root, or point {STATE_ENV} at a writable file.") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _read(path: Path) -> dict[str, Accepted]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StateError(f"cannot read the state file {path}: {exc.strerror}",
                         f"Run as root, or point {STATE_ENV} at the right file.") from exc
    try:
        obj = json.loads(data.decode("utf-8"))
        if obj.get("schema") != STATE_SCHEMA:
            raise ValueError(f"schema {obj.get('schema')!r} is not {STATE_SCHEMA}")
        return {str(k): Accepted.from_dict(v) for k, v in obj["accepted"].items()}
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # never start afresh silently: that would switch anti-rollback off
        raise StateError(f"the state file {path} is damaged ({type(exc).__name__}: {exc})",
                         "Restore it from a backup (it records the last accepted bundle per product); "
                         "delete it only if you accept that older bundles will be accepted again.") from None
