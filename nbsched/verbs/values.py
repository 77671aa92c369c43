"""What the verbs' words mean, for both front ends: argument types (each refuses a bad
value with one line naming it and what is accepted), the rule that turns the words after
``--`` into a shell command, the GPU settings of ``--simulate``/``--provider``/
``--num-gpus``, and "check every id, then act".

One copy, so ``nbsched`` and ``%gpusched`` cannot drift apart again.
"""

from __future__ import annotations

import argparse
import math
import shlex
from collections.abc import Sequence
from typing import Any

from nbsched.checks import check_requirement
from nbsched.errors import InvalidValueError
from nbsched.scheduler import GPUJobScheduler

# -- argument types: each raises ArgumentTypeError with the value and what is accepted --


def gpus_type(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of GPUs; use a fraction in (0, 1] or a whole number"
        )
    try:
        return check_requirement("--gpus", value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text} is not accepted: use a fraction in (0, 1] or a whole number of GPUs "
            "(1, 2, 3, ...)"
        ) from None


def _whole(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not accepted: expected {what} (a whole number >= {minimum})"
        ) from None
    if value < minimum:
        raise argparse.ArgumentTypeError(
            f"{text} is not accepted: expected {what} (a whole number >= {minimum})"
        )
    return value


def count_type(text: str) -> int:
    """A number of GPUs: 1, 2, ..."""
    return _whole(text, 1, "a number of GPUs")


#: ``logs -n all``: the whole log (``-n 0`` is no line at all, like ``tail -n 0``).
ALL_LINES = "all"


def lines_type(text: str) -> int | None:
    """``-n N``: the last N lines (0: none); ``-n all``: every line (``None``)."""
    if text == ALL_LINES:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"{text} is not accepted: expected a number of lines >= 0, or {ALL_LINES}"
        )
    return value


def gpu_index_type(text: str) -> int:
    return _whole(text, 0, "a GPU index")


def limit_type(text: str) -> int:
    return _whole(text, 1, "a number of jobs")


def rows_type(text: str) -> int:
    return _whole(text, 0, "a number of jobs")


def retries_type(text: str) -> int:
    return _whole(text, 0, "a number of re-runs")


def priority_type(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not accepted: expected a whole number (lower runs first)"
        ) from None


def seconds_type(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:  # (NaN too)
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted: expected seconds >= 0")
    return value


# -- the words after ``--`` -----------------------------------------------------------------


def command_line(words: Sequence[str] | None, typed: str | None = None) -> str:
    """The shell command (``bash -c``) of ``run -- WORDS``.

    ``words`` are the words after ``--`` as a shell splits them.  One word is the
    command line itself (``run -- 'sleep 3; echo hi'`` runs ``sleep 3; echo hi``);
    several are the command line as typed: ``typed`` where the front end has the text
    (the magic), else the words joined with their quoting kept (the CLI, whose shell
    removed it), so each reaches the job as the one word it was.  ``words=None``: the
    text could not be split (the shell in the job will say why): as typed.
    """
    if words is not None and len(words) == 1:
        return words[0]
    if typed is not None:
        return typed
    return shlex.join(words or ())


# -- GPU settings ---------------------------------------------------------------------------


def gpu_fields(simulate: int | None, provider: str | None, num_gpus: int | None) -> dict[str, Any]:
    """The config fields of ``--simulate N`` / ``--provider P`` / ``--num-gpus N``;
    ``--simulate N`` is short for ``--provider simulated --num-gpus N``, so it refuses a
    provider or a count that says otherwise."""
    fields: dict[str, Any] = {}
    if simulate is not None:
        if provider not in (None, "simulated"):
            raise InvalidValueError(
                f"--simulate {simulate} means --provider simulated, not --provider {provider}"
            )
        if num_gpus not in (None, simulate):
            raise InvalidValueError(
                f"--simulate {simulate} gives {simulate} GPUs, not --num-gpus {num_gpus}"
            )
        fields.update(gpu_provider="simulated", num_gpus=simulate)
    if provider is not None:
        fields["gpu_provider"] = provider
    if num_gpus is not None:
        fields["num_gpus"] = num_gpus
    return fields


# -- ids --------------------------------------------------------------------------------------


def checked_ids(s: GPUJobScheduler, ids: Sequence[str], *, ended: bool = False) -> list[str]:
    """Every id checked before any is acted on (a bad one: nothing is done), each once.

    ``ended``: each job must have ended (``retry``)."""
    unique = list(dict.fromkeys(ids))
    statuses = [s.job(job_id)["status"] for job_id in unique]  # (an unknown id first)
    for job_id, status in zip(unique, statuses, strict=True):
        if ended and status in ("queued", "running"):
            raise InvalidValueError(f"job {job_id} is {status}; only ended jobs retry")
    return unique


def engine_fields(ns: Any) -> dict[str, Any]:
    """The config fields of the engine options (``start``, ``serve``, and the CLI's on
    every verb): those of ``ns`` that were given."""
    fields = gpu_fields(ns.simulate, ns.provider, ns.num_gpus)
    ray_address = getattr(ns, "ray_address", None)
    executor = getattr(ns, "executor", None)
    if ray_address is not None and executor != "ray":
        raise InvalidValueError(
            f"--ray-address {ray_address} applies to --executor ray: only with --executor ray "
            f"is it used (the executor would be {executor or 'direct'}); add --executor ray"
        )
    names = {"state_dir": "state_dir", "executor": "executor", "jobs_file": "jobs_file"}
    names.update(llm_config="llm_config_file", ray_address="ray_address")
    names.update(max_retries="max_retries")
    for flag, field in names.items():
        value = getattr(ns, flag, None)
        if value is not None:  # ('' is refused by the config, not taken as unset)
            fields[field] = value
    return fields
