"""Byte sizes for people: the one formatter both tools print sizes with.

    human_size(512)              # '512 B'
    human_size(3 * 1024**3)      # '3.0 GiB'
    human_size(64 * 1024 * 1024) # '64.0 MiB'
"""
from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n: float) -> str:
    """``n`` bytes in binary units: whole bytes below 1 KiB, else one decimal (``1.5 GiB``)."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
