"""The checks of what a person typed (a command-line word, a form field): each reads
the word as a number and puts it to the rule of :mod:`nbsched.checks.values` that the
engine applies to the same value; a front end turns their errors into its own kind
(``argparse`` wants ``ArgumentTypeError``) without changing the message.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

from ..errors import InvalidTypeError, InvalidValueError
from ..formats.duration import parse_duration
from ..formats.gpulist import MAX_GPU_ID
from .values import (
    INT64,
    check_count,
    check_duration,
    check_number,
    check_priority,
    check_requirement,
    check_retries,
    check_sweep_limit,
    check_timeout,
    check_whole,
)

# -- what a person typed ------------------------------------------------------------------
# A word (a command-line argument, a form field) is read as a number, then put to the
# rule above that the engine applies to the same value: one rule, whichever way the
# value comes.  The message names the word and what is accepted, in a person's terms.

#: ``logs -n all``: the whole log (``-n 0`` is no line at all, like ``tail -n 0``).
ALL_LINES = "all"

_T = TypeVar("_T")


def _read(text: str, number: Callable[[str], _T]) -> _T | None:
    """``text`` read by ``number`` (``int``, ``float``), or ``None`` if it is not one."""
    try:
        return number(text)
    except ValueError:
        return None


def _typed(
    text: str, value: object | None, rule: Callable[[object], _T], accepted: str, quote: bool
) -> _T:
    """``rule(value)``; if ``value`` is ``None`` (``text`` is not a number) or the rule
    refuses it: ``"TEXT is not accepted: expected ACCEPTED"`` (``TEXT`` quoted when it
    is not a number, or when ``quote``)."""
    if value is not None:
        try:
            return rule(value)
        except (InvalidTypeError, InvalidValueError):
            pass
    shown = repr(text) if value is None or quote else text
    raise InvalidValueError(f"{shown} is not accepted: expected {accepted}")


def gpus_from_text(text: str) -> float:
    """A GPU requirement typed as a word (``--gpus 0.5``): :func:`check_requirement`."""
    value = _read(text, float)
    if value is None or math.isnan(value):
        raise InvalidValueError(
            f"{text!r} is not a number of GPUs; use a fraction in (0, 1] or a whole number"
        )
    try:
        return check_requirement("--gpus", value)
    except ValueError:
        raise InvalidValueError(
            f"{text} is not accepted: use a fraction in (0, 1] or a whole number of GPUs "
            "(1, 2, 3, ...)"
        ) from None


def whole_from_text(text: str, minimum: int, what: str, maximum: int | None = None) -> int:
    """A whole number in ``minimum..maximum`` typed as a word (:func:`check_whole`);
    ``what`` names it ("a GPU index")."""
    within = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
    return _typed(
        text,
        _read(text, int),
        lambda v: check_whole(what, v, minimum, maximum),
        f"{what} (a whole number {within})",
        quote=False,
    )


def gpu_count_from_text(text: str) -> int:
    """A number of GPUs (``--num-gpus``, ``--simulate``): as the config's ``num_gpus``."""
    return whole_from_text(text, 1, "a number of GPUs", MAX_GPU_ID + 1)


def retries_from_text(text: str) -> int:
    """How often a failed job is re-queued, typed as a word: :func:`check_retries`."""
    value = _read(text, int)
    within = f"in 0..{INT64 - 1}" if value is not None and value >= INT64 else ">= 0"
    accepted = f"a number of re-runs (a whole number {within})"
    return _typed(text, value, lambda v: check_retries(v, v), accepted, quote=False)


def sweep_limit_from_text(text: str) -> int:
    """``--limit``, typed as a word: :func:`check_sweep_limit`."""
    accepted = "a number of jobs (a whole number >= 1)"
    return _typed(text, _read(text, int), check_sweep_limit, accepted, quote=False)


def priority_from_text(text: str) -> int:
    """A priority typed as a word (lower runs first): :func:`check_priority`."""
    value = _read(text, int)
    within = f" in {-INT64}..{INT64 - 1}" if value is not None else ""  # (too large)
    accepted = f"a whole number{within} (lower runs first)"
    return _typed(text, value, check_priority, accepted, quote=False)


def lines_from_text(text: str) -> int | None:
    """``-n N``: the last N lines (0: none); ``-n all``: every line (``None``)."""
    if text == ALL_LINES:
        return None
    accepted = f"a number of lines >= 0, or {ALL_LINES}"
    return _typed(text, _read(text, int), lambda v: check_count("tail", v), accepted, quote=False)


def rows_from_text(text: str) -> int:
    """``--first N`` / ``--last N`` rows of the job table: as ``jobs(first=N)``."""
    accepted = "a number of jobs (a whole number >= 0)"
    return _typed(text, _read(text, int), lambda v: check_count("first", v), accepted, quote=False)


def seconds_from_text(text: str) -> float:
    """Seconds (>= 0; ``inf``: no limit) typed as a word: :func:`check_timeout`."""

    def rule(value: object) -> float:
        seconds = check_timeout(value)
        return math.inf if seconds is None else seconds

    return _typed(text, _read(text, float), rule, "seconds >= 0", quote=True)


def threshold_from_text(text: str) -> float:
    """``--mem-threshold`` / ``--load-threshold`` (the original program's flags) typed as
    a word: a fraction from 0 to 1, the rule of the config's ``gpu_*_threshold``."""
    return _typed(
        text,
        _read(text, float),
        lambda v: check_number("threshold", v, low=0.0, high=1.0, low_open=False),
        "a fraction of the GPU from 0 to 1 (0.8: 80 %)",
        quote=False,
    )


def duration_from_text(text: str, name: str = "time_limit") -> float:
    """``--time 2h30m`` / ``--expected 90`` typed as a word: :func:`check_duration`."""
    seconds = check_duration(name, text)
    assert seconds is not None
    return seconds


def reserve_after_from_text(text: str) -> float:
    """``--reserve-after S`` (``start``, ``serve``): seconds, or a duration such as
    ``10m``, put to the config's rule for ``reserve_after_s`` (finite, >= 0: it bounds
    how long a blocked job is passed over)."""
    value: float | None = _read(text, float)
    if value is None:
        value = parse_duration(text)
    return _typed(
        text,
        value,
        lambda v: check_number("reserve_after_s", v, 0.0, math.inf, low_open=False),
        "seconds a blocked job waits before GPUs are held for it: a finite number >= 0, "
        "or a duration like '10m', '90s'",
        quote=True,
    )
