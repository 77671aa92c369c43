"""Durations as people write them: ``"2h30m"``, ``"90m"``, ``"45s"``, ``"1h"``, ``"1d"``,
or a plain number of seconds (``"90"``, ``"2.5"``); and back (:func:`format_duration`).

A duration is one or more ``NUMBER UNIT`` parts, each unit at most once and from the
largest down (``d``, ``h``, ``m``, ``s``), with no spaces inside: ``"1h30m"``,
``"1.5h"``, ``"2m30s"``.  A bare number is seconds.  :func:`parse_duration` returns
seconds or None for a text that is not one (the caller says what is accepted).
"""

from __future__ import annotations

import math
import re

#: Seconds per unit, largest first (the order parts must come in).
UNITS: dict[str, int] = {"d": 86400, "h": 3600, "m": 60, "s": 1}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(
    rf"(?:(?P<d>{_NUMBER})d)?(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m)?(?:(?P<s>{_NUMBER})s)?",
    re.ASCII,
)
_SECONDS = re.compile(rf"{_NUMBER}", re.ASCII)

#: How a duration is written, for messages.
EXAMPLES = "seconds (a number > 0) or a duration like '2h30m', '90m', '45s', '1h'"


def parse_duration(text: str) -> float | None:
    """Seconds of ``text`` (``"2h30m"`` -> 9000.0, ``"90"`` -> 90.0); None if it is not a
    duration.  Case and surrounding blanks do not matter."""
    word = text.strip().lower()
    if not word:
        return None
    if _SECONDS.fullmatch(word):
        return float(word)
    found = _DURATION.fullmatch(word)
    if found is None or not any(found.groupdict().values()):
        return None
    return float(sum(float(n) * UNITS[u] for u, n in found.groupdict().items() if n))


def format_duration(seconds: float) -> str:
    """``seconds`` written as :func:`parse_duration` reads it: 9000 -> ``"2h30m"``, 90 ->
    ``"1m30s"``, 45 -> ``"45s"``, 0.5 -> ``"0.5s"``; whole units where they are whole."""
    if not math.isfinite(seconds) or seconds < 0:
        return f"{seconds:g}s"
    if seconds < 60 and not float(seconds).is_integer():
        return f"{seconds:g}s"
    rest = round(seconds)
    parts = []
    for unit, size in UNITS.items():
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


__all__ = ["EXAMPLES", "UNITS", "format_duration", "parse_duration"]
