"""Every failure a user can meet, as an exception that explains itself: the one errors module.

Each class carries an exit code (the README's table is checked against this module by
``tests/test_exit_codes.py``), a ``message`` (what is wrong), a ``hint`` (what the
admin should do next) and optional ``details`` (a dict for ``--json`` output, given at
construction). :meth:`AirgapError.diagnostics` is the text the CLIs print; ``--verbose``
adds the cause. Errors are never changed after they are raised: :meth:`AirgapError.with_hint`
returns a copy with more advice. Nothing here imports Docker or does I/O.

    try:
        plan = make_plan(catalog, request)
    except AirgapError as err:
        print(err.diagnostics())
        raise SystemExit(err.exit_code)

Exit codes by family: 1 unexpected, 2 usage, 3-5 planning and questions, 10-15 bundle trust
and integrity, 20-25 the host's engine, registries, disk and state, 30-35 and 40 the Toolkit
and its upgrade, 130 interrupted.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

EXIT_OK = 0
"""Success (not an error class: the one code of the README's table without one)."""


class AirgapError(Exception):
    """Base of every expected failure; also the code of an unexpected one (1: report it)."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "", *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  -> {self.hint}"

    def diagnostics(self) -> str:
        """What happened and what to do next, as the CLIs print it (no traceback)."""
        lines = [f"error: {self.message}"]
        if self.hint:
            lines.append(f"  -> {self.hint}")
        return "\n".join(lines)

    def with_hint(self, more: str) -> "AirgapError":
        """A copy of this error whose hint ends with ``more`` (the original is left as it is)."""
        twin = copy.copy(self)
        twin.hint = f"{self.hint} {more}".strip()
        twin.details = dict(self.details)
        return twin

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form: ``{"error", "hint", "exit_code", **details}``."""
        return {"error": self.message, "hint": self.hint, "exit_code": self.exit_code, **self.details}


# --- usage ------------------------------------------------------------------------------------
class UsageError(AirgapError):
    """A command-line value is invalid or missing (exit code 2, like any usage error)."""

    exit_code = 2


class ReceiptError(UsageError):
    """The ``--have`` receipt cannot be read or does not follow the schema."""


class RegistryAddressError(UsageError):
    """``--registry`` is not HOST[:PORT][/PREFIX]."""


# --- catalog, planning, questions -----------------------------------------------------------------
class PlanError(AirgapError):
    """The requested upgrade cannot be planned (downgrade, unknown or retracted version...)."""

    exit_code = 3


class CatalogError(AirgapError):
    """The release catalog (or an overlay) is malformed: names the bad entry."""

    exit_code = 4


class DeclinedError(AirgapError):
    """A question was answered no (or could not be asked: no terminal, no --yes); nothing was changed."""

    exit_code = 5


# --- bundle trust and integrity -------------------------------------------------------------------
class BundleError(AirgapError):
    """Something about a bundle on disk is wrong (a delta bundle this host cannot take, for one)."""

    exit_code = 10


class ManifestFormatError(BundleError):
    """The manifest does not parse or breaks the schema (after its signature checked out)."""


class PlanMismatchError(ManifestFormatError):
    """The bundle's signed plan is not the plan this importer makes."""


class SignatureError(BundleError):
    """The manifest's signature is missing, bad, or by a key we do not trust."""

    exit_code = 11


class ExpiredBundleError(BundleError):
    """The bundle is past its expiry date (``--allow-expired`` accepts it with a warning)."""

    exit_code = 12


class RollbackError(BundleError):
    """The bundle is older than (or replays) one this host already accepted."""

    exit_code = 13


class IntegrityError(BundleError):
    """A part or file is missing, truncated, altered, or unexpected."""

    exit_code = 14


class PayloadFormatError(IntegrityError):
    """The payload holds something the builder never writes (after its bytes verified: a bad signer)."""


class BlobDigestError(IntegrityError):
    """Bytes received from (or refused by) a registry do not match their digest."""


class ReencodeError(IntegrityError):
    """A layer's content does not match its image's config (or its own digest): nothing is kept for it."""


class CacheError(IntegrityError):
    """A fetched blob in the build's work folder is damaged (it has been removed; the next run fetches it)."""


class KeyError_(AirgapError):
    """A signing key cannot be read (wrong passphrase, wrong format, bad permissions)."""

    exit_code = 15


# --- the host: engine, registries, disk, state ------------------------------------------------------
class EngineError(AirgapError):
    """The Docker engine is unreachable or misbehaves."""

    exit_code = 20


class LocalExportError(EngineError):
    """The engine's export of a local-only image is not what it should be."""


class RegistryError(AirgapError):
    """A registry is unreachable or lacks an image."""

    exit_code = 21


class RegistryAuthError(RegistryError):
    """The registry (or its token service) refused access: anonymous, or with the stored login."""


class RegistryUnreachableError(RegistryError):
    """No answer: DNS, refused connection, TLS failure, timeout, or a dropped download."""


class RegistryNotFoundError(RegistryError):
    """The registry has no such repository, tag, manifest or blob."""


class RegistryRateLimitError(RegistryError):
    """HTTP 429: the registry refuses more requests for now."""


class PlatformNotFoundError(RegistryError):
    """An image index has no entry for the requested platform (the message lists those it has)."""


class UnsupportedManifestError(RegistryError):
    """A manifest kind this tool does not carry (schema 1, artifacts, nested indexes...)."""


class CredentialsError(RegistryError):
    """The Docker config file or a credential helper cannot be used."""


class MissingLayersError(RegistryError):
    """A delta bundle left out layers that the target registry does not have."""


class LocalImageMissingError(RegistryError):
    """A local-only image of the plan is not in the local engine (an image is missing)."""


class WheelError(RegistryError):
    """The importer's wheels cannot be built or downloaded."""


class DiskSpaceError(AirgapError):
    """Not enough free space (work folder, output medium, or the engine's data root)."""

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


# --- the Toolkit and its upgrade ---------------------------------------------------------------------
class ToolkitError(AirgapError):
    """The Overleaf Toolkit folder is missing, invalid, locked or at an unexpected version."""

    exit_code = 30


class ConfigValueError(ToolkitError):
    """A value the importer was about to write into the Toolkit's config breaks its grammar."""


class PreflightError(AirgapError):
    """The upgrade's preflight found problems; nothing was changed."""

    exit_code = 31


class HealthCheckError(AirgapError):
    """A service did not become healthy after an upgrade step."""

    exit_code = 32


class StepFailed(AirgapError):
    """An upgrade step (a migration, a service start) failed."""

    exit_code = 33


class SiteReadError(AirgapError):
    """The running site cannot be read (its MongoDB or Redis does not answer, a data path is unreadable):
    nothing was measured and nothing was changed."""

    exit_code = 34


class RehearsalFailed(AirgapError):
    """The upgrade failed in a rehearsal's sandbox; the real site was left as it was."""

    exit_code = 35


class PausedForCheck(AirgapError):
    """A step needs a person: not a failure, but the run stops here (``--resume`` continues)."""

    exit_code = 40


class Interrupted(AirgapError):
    """Ctrl-C or SIGTERM: the command stopped; running it again continues."""

    exit_code = 130


def all_error_classes() -> list[type[AirgapError]]:
    """Every error class of this module, base first (for the README check and the docs)."""
    out: list[type[AirgapError]] = []
    todo: list[type[AirgapError]] = [AirgapError]
    while todo:
        cls = todo.pop(0)
        if cls.__module__ == __name__ and cls not in out:
            out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def exit_codes() -> dict[int, list[str]]:
    """``{exit code: [class names]}`` for every class of this module."""
    codes: dict[int, list[str]] = {}
    for cls in all_error_classes():
        codes.setdefault(cls.exit_code, []).append(cls.__name__)
    return dict(sorted(codes.items()))
