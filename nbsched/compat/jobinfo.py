"""What the original's job tuple says of a job: ``add_job``'s arguments, or what a
job's command says of one this process did not add (a jobs-file line's)."""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Added:
    """What ``add_job`` was given (the original's job tuple keeps it)."""

    script: str
    conda_env: str | None
    args: list[str]
    allowed_gpus: list[int] | None
    job_hash: str | None
    llm_name: str | None
    original_line: str | None


def arg_value(args: Sequence[str], key: str) -> str | None:
    """The word after ``key`` in ``args`` (``--llm MODEL``), as the original read it."""
    args = list(args)
    if key in args and args.index(key) + 1 < len(args):
        return args[args.index(key) + 1]
    return None


def missing(value: object) -> bool:
    """None, NaN, NaT or pandas' NA: what a table cell holds where there is no value."""
    if value is None or isinstance(value, (list, tuple, str)):
        return value is None
    try:
        return bool(value != value)  # (NaN and NaT are not equal to themselves)
    except TypeError:  # (pandas' NA: its comparisons are NA too)
        return True


def line_hash(
    priority: int, script: str, env: str | None, args: list[str], gpus: list[int] | None
) -> str:
    """The original's identity of a job given ``original_line``: added once per run."""
    text = repr((priority, script, env or "", sorted(args), sorted(gpus or [])))
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def from_command(command: str) -> Added:
    """What a job's command says of it (a job this object did not add: the jobs file's)."""
    env = None
    if command.startswith("["):
        env, _, command = command[1:].partition("] ")
    try:
        words = shlex.split(command)
    except ValueError:
        words = [command]
    script, args = (words[0], words[1:]) if words else ("", [])
    return Added(script, env, args, None, None, arg_value(args, "--llm"), None)


__all__ = ["Added", "arg_value", "from_command", "line_hash", "missing"]
