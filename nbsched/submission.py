"""Checks of what a user submits: each raises, naming the value and what is accepted,
before anything is stored (``GPUJobScheduler.make_spec`` and ``wait`` call them)."""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping, Sequence

from .config import is_real, to_float
from .errors import InvalidTypeError, InvalidValueError, MissingFileError
from .gpus.base import GpuSnapshot


def check_timeout(timeout: object) -> float | None:
    """``wait()``'s ``timeout`` in seconds: a real number >= 0; None or inf: no limit."""
    if timeout is None:
        return None
    if not is_real(timeout):
        raise InvalidTypeError(
            f"timeout={timeout!r}: expected seconds (a number >= 0), or None for no limit"
        )
    seconds = to_float(timeout)
    if math.isnan(seconds) or seconds < 0:
        raise InvalidValueError(
            f"timeout={timeout!r}: expected seconds >= 0, or None (or inf) for no limit"
        )
    return None if math.isinf(seconds) else seconds


def check_one_node(
    shown: str, required: float, allowed: Sequence[int] | None, snapshots: Sequence[GpuSnapshot]
) -> None:
    """A multi-GPU job runs on one node: one must have enough (allowed) GPUs.  ``shown``
    is the requirement as messages say it."""
    per_node: dict[str, int] = {}
    for snap in snapshots:
        if snap.node is not None and (allowed is None or snap.index in allowed):
            per_node[snap.node] = per_node.get(snap.node, 0) + 1
    if len(per_node) > 1 and required > max(per_node.values()):
        raise InvalidValueError(
            f"{shown}: a multi-GPU job runs on one node, and no node has "
            f"{required:g} GPUs{' among allowed_gpus' if allowed is not None else ''} "
            f"(largest: {max(per_node.values())})"
        )


def job_folder(cwd: object) -> str:
    """The job's folder, absolute: ``cwd`` with ``~`` expanded, relative to the
    submitter's current folder (the job's engine may run elsewhere); None: that folder."""
    if cwd is None:
        try:
            return os.getcwd()
        except FileNotFoundError:
            raise MissingFileError(
                "the current folder no longer exists; give the job a folder with cwd="
            ) from None
    if not isinstance(cwd, (str, os.PathLike)) or not isinstance(os.fspath(cwd), str):
        raise InvalidTypeError(f"cwd={cwd!r}: expected a folder path (str or os.PathLike) or None")
    text = os.fspath(cwd)
    if not text:
        raise InvalidValueError("cwd='': expected a folder path, or None for the current folder")
    no_nul("cwd", text)
    path = os.path.abspath(os.path.expanduser(text))
    if not os.path.isdir(path):
        raise MissingFileError(f"cwd={text!r}: no such folder (looked for {path})")
    return path


def no_nul(field: str, value: str) -> str:
    """``value``, refused if it holds a NUL byte: no program can be given one (in its
    arguments, its environment or a path), so the job could only fail when started."""
    if "\0" in value:
        raise InvalidValueError(
            f"{field}={value!r}: contains a NUL byte (\\x00), which no program can be given"
        )
    return value


def check_env(env: object) -> dict[str, str]:
    """A job's own environment: a mapping of variable names to values, both strings."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise InvalidTypeError(f"env={env!r}: expected a dict of variable name -> value (str)")
    out: dict[str, str] = {}
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidTypeError(f"env: {k!r}={v!r}: names and values must be strings")
        if not k or "=" in k or "\0" in k:
            raise InvalidValueError(
                f"env: name {k!r}: a variable name must be non-empty, without '=' or NUL bytes"
            )
        if "\0" in v:
            raise InvalidValueError(f"env: {k}={v!r}: contains a NUL byte (\\x00)")
        out[k] = v
    return out


def as_args(args: Sequence[str] | str | None) -> tuple[str, ...]:
    if args is None:
        return ()
    if isinstance(args, str):
        try:
            split = tuple(shlex.split(args))
        except ValueError as exc:
            raise InvalidValueError(f"args={args!r}: {exc}") from exc
        for a in split:
            if "\0" in a:
                raise InvalidValueError(f"args={args!r}: contains a NUL byte (\\x00)")
        return split
    if isinstance(args, (bytes, Mapping)) or not isinstance(args, Sequence):
        raise InvalidTypeError(f"args={args!r}: expected a list of strings")
    out = []
    for a in args:
        if not isinstance(a, str) and not is_real(a):
            raise InvalidTypeError(f"args: {a!r} is not a string")
        if isinstance(a, str) and "\0" in a:
            raise InvalidValueError(f"args: {a!r} contains a NUL byte (\\x00)")
        out.append(str(a))
    return tuple(out)
