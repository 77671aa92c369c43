"""The check of ``after=``: what a job waits for, as the API, the magics, the command
line and the form take it, made into the canonical text the job keeps
(:mod:`nbsched.formats.after`).

Whether the jobs named exist, and whether waiting for them can end, is the store's to
say at submission (:mod:`nbsched.store.deps`): that needs the jobs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InvalidTypeError, InvalidValueError
from ..formats.after import KINDS, Dependency, format_after
from .values import is_whole

#: What ``after=`` takes (see :data:`ACCEPTED`).
AfterValue = int | str | Iterable[int | str] | Mapping[str, Any] | None

_TARGET = re.compile(r"(?:[1-9][0-9]*|sw[1-9][0-9]*)")
ACCEPTED = (
    "a job id (12), a sweep id (sw3), a list of them (succeeded: 'ok'), or a dict of "
    f"kind -> ids with the kinds {', '.join(KINDS)}"
)


def check_after(value: object, name: str = "after", kind: str | None = None) -> str | None:
    """``value`` (see :data:`ACCEPTED`; also the text ``ok:12,13;any:sw3``) as the
    canonical text of its dependencies; None: none.  With ``kind``, ``value`` is the
    ids of that kind (``--after-ok 12,13``)."""
    if value is None:
        return None
    pairs: list[tuple[object, object]]
    if kind is not None:
        pairs = [(kind, value)]
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, str) and ":" in value:
        pairs = [(k.strip(), t) for k, _, t in (p.partition(":") for p in value.split(";"))]
    else:
        pairs = [("ok", value)]
    deps: list[Dependency] = []
    for each, targets in pairs:
        if each not in KINDS:
            raise InvalidValueError(
                f"{name}={value!r}: unknown kind {each!r}; the kinds are {', '.join(KINDS)}"
            )
        deps += [(str(each), t) for t in _targets(name, value, targets)]
    return format_after(deps)


def _targets(name: str, whole: object, value: object) -> list[str]:
    """The job and sweep ids ``value`` names (a comma list in a string, a list, one id)."""
    if is_whole(value):
        items: list[object] = [value]
    elif isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray, Mapping)):
        items = list(value)
    else:
        raise InvalidTypeError(f"{name}={whole!r}: expected {ACCEPTED}")
    out = []
    for item in items:
        text = str(int(item)) if is_whole(item) else item
        if not isinstance(text, str) or not _TARGET.fullmatch(text.strip()):
            raise InvalidValueError(
                f"{name}={whole!r}: {item!r} is not a job id (12) or a sweep id (sw3)"
            )
        out.append(text.strip())
    if not out:
        raise InvalidValueError(f"{name}={whole!r}: names no job; expected {ACCEPTED}")
    return out


__all__ = ["ACCEPTED", "AfterValue", "check_after"]
