"""What the offline host keeps between runs: the keys it trusts and the bundles it accepted.

Trusted keys come from ``--trust PUBKEY`` (repeatable) or, when none is given,
from the ``*.pub`` files of the trust folder::

    /etc/overleaf-airgap/trusted.d/*.pub        (env OVERLEAF_AIRGAP_TRUST_DIR overrides)

The state file records, per product key (``overleaf-ce``, ``overleaf-pro``) and
signing key, the last bundle this host accepted (:class:`manifests.trust.Accepted`),
so that an older bundle cannot be replayed (anti-rollback)::

    /var/lib/overleaf-airgap/state.json         (env OVERLEAF_AIRGAP_STATE overrides)

    {"schema": 2,
     "by_key": {"overleaf-ce": {"ed25519:0a1b...": {"sequence": 7, "bundle_id": "...", "key_id": "ed25519:0a1b...",
                                                   "manifest_sha256": "...", "accepted_at": "..."}}},
     "accepted": {"overleaf-ce": {...the highest of by_key["overleaf-ce"]...}}}

``by_key`` is what counts; ``accepted`` is a summary for people and receipts. A
schema 1 file (``accepted`` only, no key) is read as entries of key ``""``, which
stay a floor for every key. The file is read bounded and strictly (no NaN, no
numbers beyond 2**63), written atomically, and the check and the record of a new
bundle happen under one exclusive lock (:meth:`HostState.accept`); its recorded
sequence is never lowered (not even by ``--allow-downgrade``).

    keys = load_trusted([])                     # from the trust folder
    state = HostState.load()
    state.accept("overleaf-ce", accepted)       # RollbackError, or True when the file changed
"""
from __future__ import annotations

import fcntl
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from manifests.atomic import atomic_write_bytes
from manifests.bundle import canonical_json
from manifests.errors import KeyError_, RollbackError, StateError
from manifests.limits import LIMITS
from manifests.safeio import loads_json, read_regular
from manifests.signing import key_id, load_public_key
from manifests.trust import ROLLBACK_HINT, Accepted, check_sequence, last_accepted, rollback_problem

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TRUST_DIR_ENV = "OVERLEAF_AIRGAP_TRUST_DIR"
DEFAULT_TRUST_DIR = Path("/etc/overleaf-airgap/trusted.d")
STATE_ENV = "OVERLEAF_AIRGAP_STATE"
DEFAULT_STATE = Path("/var/lib/overleaf-airgap/state.json")
STATE_SCHEMA = 2


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
    """The state file: per product key and signing key, the last bundle this host accepted.

    :meth:`accept` is the anti-rollback check *and* the record, done under one exclusive
    lock, so two runs verifying different bundles at once cannot both pass.
    """

    def __init__(self, path: Path, accepted: dict[str, Accepted] | None = None,
                 by_key: dict[str, dict[str, Accepted]] | None = None) -> None:
        self.path = Path(path)
        self.by_key: dict[str, dict[str, Accepted]] = {p: dict(k) for p, k in (by_key or {}).items()}
        for product, acc in (accepted or {}).items():  # entries given without their key: a floor for every key
            self.by_key.setdefault(product, {}).setdefault(acc.key_id, acc)

    @classmethod
    def load(cls, path: Path | None = None) -> "HostState":
        path = Path(path) if path is not None else state_path()
        return cls(path, by_key=_read(path))

    @property
    def accepted(self) -> dict[str, Accepted]:
        """Per product key, the highest accepted bundle of any signing key (for receipts and display)."""
        return {p: max(keys.values(), key=lambda a: a.sequence) for p, keys in sorted(self.by_key.items()) if keys}

    def get(self, product_key: str, key_id: str | None = None) -> Accepted | None:
        """What a bundle of ``product_key`` signed by ``key_id`` must not roll back past.

        That is the entry of that key, or an entry recorded before the state was kept per key
        (key ``""``), whichever is higher. Without ``key_id``: the highest of any key.
        """
        return last_accepted(self.by_key, product_key, key_id)

    def to_dict(self) -> dict:
        return {"schema": STATE_SCHEMA,
                "accepted": {k: v.to_dict() for k, v in self.accepted.items()},
                "by_key": {p: {kid: a.to_dict() for kid, a in sorted(keys.items())}
                           for p, keys in sorted(self.by_key.items())}}

    def accept(self, product_key: str, accepted: Accepted, *, allow_downgrade: bool = False) -> bool:
        """Check ``accepted`` against the state file and record it, under one exclusive lock.

        Raises :class:`RollbackError` when the file (as it is now, whoever wrote it last)
        holds a higher sequence, or the same sequence for another manifest, for this
        product and signing key, unless ``allow_downgrade``. Returns True when the file
        changed; the recorded sequence is never lowered.
        """
        check_sequence(accepted.sequence)
        with self._locked():
            self.by_key = _read(self.path)  # another run may have written since we loaded
            old = self.get(product_key, accepted.key_id)
            problem = rollback_problem(accepted.sequence, accepted.manifest_sha256, old)
            if problem is not None and not allow_downgrade:
                raise RollbackError(problem, ROLLBACK_HINT)
            if old is not None and old.sequence >= accepted.sequence:
                return False
            self.by_key.setdefault(product_key, {})[accepted.key_id] = accepted
            try:
                atomic_write_bytes(self.path, canonical_json(self.to_dict()), mode=0o644, keep=True)
            except OSError as exc:
                raise StateError(f"cannot write the state file {self.path}: {exc.strerror}",
                                 f"Run as root, or point {STATE_ENV} at a writable file.") from exc
            return True

    def record(self, product_key: str, accepted: Accepted) -> bool:
        """Remember ``accepted`` unless an equal or higher sequence is already recorded (never raises
        for a rollback: :meth:`accept` is the check)."""
        try:
            return self.accept(product_key, accepted, allow_downgrade=True)
        except RollbackError:  # pragma: no cover - allow_downgrade never raises it
            return False

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive flock() of ``state.json.lock`` beside the state file (the state file itself is
        replaced by an atomic rename, so a lock on its inode would not outlive a write)."""
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(f"cannot lock the state file {self.path}: {exc.strerror}",
                             f"Run as root, or point {STATE_ENV} at a writable file.") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StateError(f"the state lock {lock} is not a regular file",
                                 "Remove it; it is created again when needed.")
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


_DAMAGED_HINT = ("Restore it from a backup (it records the last accepted bundle per product); delete it only "
                 "if you accept that older bundles will be accepted again.")


def _read(path: Path) -> dict[str, dict[str, Accepted]]:
    """The state file's entries, per product key and signing key (schema 1 files: key ``""``)."""
    try:
        data = read_regular(path, LIMITS.host_state, "the state file", StateError, follow_symlinks=True,
                            hint=f"Point {STATE_ENV} at the state file this tool wrote.")
    except FileNotFoundError:
        return {}
    # never start afresh silently on a bad file: that would switch anti-rollback off
    obj = loads_json(data, f"the state file {path}", StateError, _DAMAGED_HINT)
    try:
        if not isinstance(obj, dict) or obj.get("schema") not in (1, STATE_SCHEMA):
            raise ValueError(f"schema {obj.get('schema') if isinstance(obj, dict) else None!r} "
                             f"is not {STATE_SCHEMA}")
        out: dict[str, dict[str, Accepted]] = {}
        if obj["schema"] == 1:
            for product, entry in _mapping(obj["accepted"]).items():
                acc = Accepted.from_dict(entry)
                out[str(product)] = {"": Accepted(acc.sequence, acc.bundle_id, acc.manifest_sha256,
                                                  acc.accepted_at)}
            return out
        _mapping(obj["accepted"])
        for product, keys in _mapping(obj["by_key"]).items():
            out[str(product)] = {}
            for kid, entry in _mapping(keys).items():
                acc = Accepted.from_dict(entry)
                if acc.key_id != kid:
                    raise ValueError(f"the entry under key {kid!r} names key {acc.key_id!r}")
                out[str(product)][kid] = acc
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateError(f"the state file {path} is damaged ({type(exc).__name__}: {exc})", _DAMAGED_HINT) from None


def _mapping(value: object) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, found {type(value).__name__}")
    return value
