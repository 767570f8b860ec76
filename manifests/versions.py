"""Version strings of Overleaf and its companions, parsed and ordered.

``config/version`` holds ``MAJOR.MINOR.PATCH`` with an optional ``-RCn`` and an
optional ``-with-texlive-full`` suffix (toolkit-contract.md). Versions compare
numerically, never as strings (the Toolkit's ``bin/upgrade`` compares strings,
so 5.5.10 < 5.5.9 there; overleaf-facts.md 4.2).

    >>> AppVersion.parse("5.5.10") > AppVersion.parse("5.5.9")
    True
    >>> str(AppVersion.parse("5.0.1-RC4-with-texlive-full"))
    '5.0.1-RC4-with-texlive-full'
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import PlanError

_APP_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-RC(\d+))?(-with-texlive-full)?\Z")
_MM_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?\Z")


@dataclass(frozen=True, order=True)
class AppVersion:
    """An Overleaf release. RCs sort before their final release; the texlive suffix is kept aside."""

    major: int
    minor: int
    patch: int
    rc_order: int = 1_000_000  # final release sorts after every RC
    texlive_full: bool = False

    @classmethod
    def parse(cls, text: str) -> "AppVersion":
        m = _APP_RE.match(str(text).strip())
        if not m:
            raise PlanError(
                f"'{text}' is not an Overleaf version",
                "Versions look like 5.5.8 (optionally -RC1 and/or -with-texlive-full), as in config/version.",
            )
        rc = int(m.group(4)) if m.group(4) is not None else 1_000_000
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)), rc, bool(m.group(5)))

    @property
    def is_rc(self) -> bool:
        return self.rc_order != 1_000_000

    @property
    def release(self) -> "AppVersion":
        """The same version without the ``-with-texlive-full`` suffix."""
        return AppVersion(self.major, self.minor, self.patch, self.rc_order, False)

    @property
    def minor_key(self) -> tuple[int, int]:
        return (self.major, self.minor)

    def __str__(self) -> str:
        s = f"{self.major}.{self.minor}.{self.patch}"
        if self.is_rc:
            s += f"-RC{self.rc_order}"
        if self.texlive_full:
            s += "-with-texlive-full"
        return s


@dataclass(frozen=True, order=True)
class MajorMinor:
    """A MongoDB / Redis / nginx series such as ``6.0`` or ``7.4`` (a patch, if given, is kept)."""

    major: int
    minor: int
    patch: int = -1

    @classmethod
    def parse(cls, text: str) -> "MajorMinor":
        m = _MM_RE.match(str(text).strip())
        if not m:
            raise PlanError(f"'{text}' is not a MAJOR.MINOR version", "Use a form such as 6.0 or 7.4.")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)) if m.group(3) else -1)

    @property
    def series(self) -> "MajorMinor":
        return MajorMinor(self.major, self.minor)

    def __str__(self) -> str:
        base = f"{self.major}.{self.minor}"
        return base if self.patch < 0 else f"{base}.{self.patch}"


def version_major(version: str) -> int:
    """The major of an Overleaf version string (``"5.5.8"`` -> 5); 0 when it does not start with a number."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def mongo_shell(series: MajorMinor | str) -> str:
    """The MongoDB shell of a series: ``mongosh`` from 6.0 on (the legacy ``mongo`` shell is gone there),
    ``mongo`` before (facts 3.1)."""
    mm = series if isinstance(series, MajorMinor) else MajorMinor.parse(series)
    return "mongosh" if mm.major >= 6 else "mongo"
