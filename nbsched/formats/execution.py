"""The execution type of the original program's 6-field jobs-file lines.

The latest original program reads ``priority,script_path,conda_env,execution_type,
arguments,allowed_gpus``, where the execution type is ``python`` (run the script),
``torchrun`` (under torchrun, one process, one GPU) or ``torchrun-Ngpu`` (under
torchrun with N processes, on N whole GPUs; this overrides the LLM config).
nbsched says the same with ``launcher="torchrun"`` and ``required_gpus=N``.

Why a word is recognised only when it stands alone and unquoted in the fourth field:
in the 5-field form that field holds the arguments, and a quoted ``'python'`` is how a
line says "this is an argument".  A word that starts like one (``torchrun-2GPU``,
``python3``) but is none of the three is refused, not guessed.
"""

from __future__ import annotations

import hashlib
import re

from ..errors import InvalidValueError

ACCEPTED = "python, torchrun, torchrun-Ngpu (N a whole number of GPUs, 1 or more)"

_LOOKS = re.compile(r"(?:torchrun|python)[A-Za-z0-9_.+-]*", re.ASCII | re.IGNORECASE)
_KNOWN = re.compile(r"python|torchrun(?:-([0-9]{1,4})gpu)?", re.ASCII)


def looks_like_execution(field: str) -> bool:
    """Whether a raw (unsplit, unquoted) fourth field reads as an execution type."""
    return _LOOKS.fullmatch(field.strip()) is not None


def parse_execution(word: str) -> tuple[str | None, int | None]:
    """``(launcher, required_gpus)`` of an execution type: ``python`` -> ``(None, None)``
    (the GPUs come from the LLM config, as for a 5-field line), ``torchrun`` ->
    ``("torchrun", 1)``, ``torchrun-4gpu`` -> ``("torchrun", 4)``.

    Anything else raises ``InvalidValueError`` naming the accepted ones.
    """
    match = _KNOWN.fullmatch(word)
    if match is None:
        raise InvalidValueError(f"unknown execution type {word!r}: accepted are {ACCEPTED}")
    if word == "python":
        return None, None
    count = int(match.group(1) or 1)
    if count < 1:
        raise InvalidValueError(f"execution type {word!r}: N must be 1 or more")
    return "torchrun", count


def execution_hash(base: str, word: str | None) -> str:
    """A jobs-file line's identity given its execution type: ``python`` (or none) keeps
    the 5-field line's hash (the same job runs), so rewriting a file in the 6-field form
    queues nothing again; torchrun adds its GPU count (``torchrun`` = ``torchrun-1gpu``)."""
    if word is None:
        return base
    launcher, count = parse_execution(word)
    if launcher is None:
        return base
    payload = f"{base}\0{launcher}-{count}gpu"
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


__all__ = ["ACCEPTED", "execution_hash", "looks_like_execution", "parse_execution"]
