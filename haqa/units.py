"""Parsing and printing sizes with units ("4GiB", "512MiB", "1.5G")."""

from __future__ import annotations

import re

from haqa.errors import HaqaError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int | float, *, what: str = "size") -> int:
    """Bytes from a number or a string such as ``4GiB``; a bare number is bytes."""
    if isinstance(text, bool):
        raise HaqaError(f"{what} must be a size such as 4GiB, got {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise HaqaError(f"{what} must not be negative, got {text}")
        return int(text)
    match = _SIZE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise HaqaError(f"{what} must be a size such as 4GiB or 512MiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(n: float | None) -> str:
    """Human-readable binary size: 1536 -> '1.5 KiB'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
