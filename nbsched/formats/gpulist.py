"""GPU id lists: ``"0-3,5"`` <-> ``(0, 1, 2, 3, 5)``.

A list is GPU ids and inclusive ranges separated by commas; whitespace around
items is ignored, duplicates are dropped and the result is sorted.  Ids are at
most :data:`MAX_GPU_ID`, so a typo like ``0-99999999`` cannot eat memory.
(Whether the ids exist on a machine: :func:`nbsched.checks.check_allowed_gpus`.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import InvalidTypeError, InvalidValueError

#: The largest GPU id accepted anywhere.
MAX_GPU_ID = 1023

ACCEPTED = "expected GPU ids and inclusive ranges separated by commas, e.g. '0-3,5'"

_ITEM = re.compile(r"\s*([0-9]{1,9})\s*(?:-\s*([0-9]{1,9})\s*)?", re.ASCII)


def parse_gpu_list(text: str, *, field: str = "allowed_gpus") -> tuple[int, ...]:
    """Parse ``"0-3,5"`` into sorted, unique GPU ids; a bad text raises ``InvalidValueError``."""
    if not isinstance(text, str):
        raise InvalidTypeError(f"{field}={text!r}: {ACCEPTED}")
    if not text.strip():
        raise InvalidValueError(f"{field}={text!r}: empty; {ACCEPTED}")
    ids: set[int] = set()
    for item in text.split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            what = "an empty item" if not item.strip() else f"bad item {item.strip()!r}"
            raise InvalidValueError(f"{field}={text!r}: {what}; {ACCEPTED}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high > MAX_GPU_ID or low > MAX_GPU_ID:
            raise InvalidValueError(
                f"{field}={text!r}: GPU id {max(low, high)} is too large (at most {MAX_GPU_ID})"
            )
        if high < low:
            raise InvalidValueError(
                f"{field}={text!r}: range {low}-{high} goes down; write {high}-{low}"
            )
        ids.update(range(low, high + 1))
    return tuple(sorted(ids))


def format_gpu_list(ids: Iterable[int]) -> str:
    """Compress GPU ids into ranges: ``[0, 1, 2, 3, 5]`` -> ``"0-3,5"`` (empty -> ``""``)."""
    parts: list[str] = []
    ordered = sorted(set(ids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def describe_gpus(num_gpus: int) -> str:
    """``"GPUs 0-3"``, ``"GPU 0"`` or ``"no GPUs"`` for a machine with ``num_gpus`` GPUs."""
    if num_gpus <= 0:
        return "no GPUs"
    if num_gpus == 1:
        return "GPU 0"
    return f"GPUs {format_gpu_list(range(num_gpus))}"
