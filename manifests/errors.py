"""Every failure a user can meet, as an exception that explains itself.

Each class carries an exit code (documented in the README) and a ``hint``: what
the admin should do next. The CLIs print ``message`` and ``hint`` and exit with
``exit_code``; ``--verbose`` adds the cause. Nothing here imports Docker.

    try:
        plan = make_plan(catalog, request)
    except AirgapError as err:
        print(err.message, err.hint)
        raise SystemExit(err.exit_code)
"""
from __future__ import annotations


class AirgapError(Exception):
    """Base of every expected failure."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message if not self.hint else f"{self.message}\n  -> {self.hint}"


class UsageError(AirgapError):
    """A command-line value is invalid (exit code 2, like a usage error)."""

    exit_code = 2


# --- catalog and planning -------------------------------------------------------------
class CatalogError(AirgapError):
    """The release catalog (or an overlay) is malformed: names the bad entry."""

    exit_code = 4


class PlanError(AirgapError):
    """The requested upgrade cannot be planned (downgrade, unknown or retracted version...)."""

    exit_code = 3


# --- bundle trust and integrity -------------------------------------------------------
class BundleError(AirgapError):
    """Something about a bundle on disk is wrong."""

    exit_code = 10


class ManifestFormatError(BundleError):
    """The manifest does not parse or breaks the schema (after its signature checked out)."""


class SignatureError(BundleError):
    """The manifest's signature is missing, bad, or by a key we do not trust."""

    exit_code = 11


class ExpiredBundleError(BundleError):
    exit_code = 12


class RollbackError(BundleError):
    """The bundle is older than (or replays) one this host already accepted."""

    exit_code = 13


class IntegrityError(BundleError):
    """A part or file is missing, truncated, altered, or unexpected."""

    exit_code = 14


class KeyError_(AirgapError):
    """A signing key cannot be read (wrong passphrase, wrong format, bad permissions)."""

    exit_code = 15


# --- environment ----------------------------------------------------------------------
class EngineError(AirgapError):
    """The Docker engine is unreachable or misbehaves."""

    exit_code = 20


class RegistryError(AirgapError):
    """A registry is unreachable or lacks an image."""

    exit_code = 21


class DiskSpaceError(AirgapError):
    exit_code = 22


class OutputError(AirgapError):
    """The output location is unusable (not empty, not writable...)."""

    exit_code = 23


class TagConflictError(AirgapError):
    """A tag the bundle would set already names a different image on this engine."""

    exit_code = 24


class StateError(AirgapError):
    """The host's state file (accepted bundles) is unreadable, malformed or cannot be written."""

    exit_code = 25


class ToolkitError(AirgapError):
    """The Overleaf Toolkit folder is missing, invalid or at an unexpected version."""

    exit_code = 30
