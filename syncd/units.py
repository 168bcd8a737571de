"""Parsing of human-written durations ("2s", "1h30m") and sizes ("5MiB")."""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
_DURATION_FULL = re.compile(r"(?:\s*\d+(?:\.\d+)?\s*(?:ms|s|m|h|d))+\s*", re.IGNORECASE)
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "p": 1000**5,
    "pb": 1000**5,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
    "pi": 1024**5,
    "pib": 1024**5,
}


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``90``, ``2s``, ``1h30m``, ``500ms``, ``1:30:00``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 5m or 2h")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"duration {value!r} is negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 5m or 2h")
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    if re.fullmatch(r"\d+:\d{1,2}(:\d{1,2})?", text):  # Slurm-style H:MM[:SS]
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 2:
            return float(parts[0] * 3600 + parts[1] * 60)
        return float(parts[0] * 3600 + parts[1] * 60 + parts[2])
    if not _DURATION_FULL.fullmatch(text):
        raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 5m, 2h or 1h30m")
    return sum(float(n) * _DURATION_SECONDS[u.lower()] for n, u in _DURATION_PART.findall(text))


def parse_size(value: object) -> int:
    """Bytes from a number or a string like ``512``, ``5MiB``, ``2G``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; write e.g. 512MiB or 4G")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value!r} is negative")
        return value
    if isinstance(value, float):
        return parse_size(int(value))
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a size; write e.g. 512MiB or 4G")
    match = _SIZE.match(value)
    unit = (match.group(2) or "").lower() if match else None
    if not match or unit not in _SIZE_FACTORS:
        raise ValueError(f"{value!r} is not a size; write e.g. 512MiB, 4G or 1000000")
    return int(float(match.group(1)) * _SIZE_FACTORS[unit])
