"""What a job hands back: :func:`save_result` writes the JSON object a sweep's table
(``sweep(id)``) shows, to the file ``$NBSCHED_RESULT_FILE`` names, the same for a
script and for a notebook run as a job (a cell calls it)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidTypeError, InvalidValueError

#: The variable that names a job's result file (set by the engine for each attempt).
RESULT_VARIABLE = "NBSCHED_RESULT_FILE"


def save_result(values: Mapping[str, Any] | None = None, /, **more: Any) -> dict[str, Any]:
    """Add ``values`` (and keyword ``more``) to this job's result: a JSON object in
    ``$NBSCHED_RESULT_FILE``, merged with what an earlier call saved (a later value of
    the same key wins).  Returns the whole result so far.

    Outside a job (no ``$NBSCHED_RESULT_FILE``: a notebook run by hand) nothing is
    written and the values are returned, so the same cell works in both.  Values must
    be JSON-serialisable (numbers, strings, booleans, None, lists, dicts).
    """
    given: dict[str, Any] = {}
    if values is not None:
        if not isinstance(values, Mapping):
            raise InvalidTypeError(
                f"save_result({values!r}): expected a mapping of names to values, or keywords"
            )
        given.update(values)
    given.update(more)
    for key in given:
        if not isinstance(key, str):
            raise InvalidTypeError(f"save_result: key {key!r}: result names are strings")
    try:
        json.dumps(given, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"save_result: not JSON-serialisable: {exc}") from None
    path = os.environ.get(RESULT_VARIABLE)
    if not path:
        return given
    result = _read(path)
    result.update(given)
    _write(path, result)
    return result


def _read(path: str) -> dict[str, Any]:
    """What the result file holds (an empty object when it is missing or not an object)."""
    try:
        with open(path, encoding="utf-8") as fh:
            found = json.load(fh)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _write(path: str, result: Mapping[str, Any]) -> None:
    """Replace the result file at once (a reader never sees half of it)."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".result-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(result, fh)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


__all__ = ["RESULT_VARIABLE", "save_result"]
