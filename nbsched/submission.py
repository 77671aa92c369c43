"""Checks of what a user submits: each raises, naming the value and what is accepted,
before anything is stored.  :func:`build_spec` makes a job's validated
:class:`JobSpec` (``GPUJobScheduler.make_spec``); ``wait`` checks its timeout here."""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import below_precision, check_requirement, is_real, is_whole, to_float
from .errors import InvalidTypeError, InvalidValueError, MissingFileError
from .gpus.base import GpuSnapshot
from .gpuspec import normalize_allowed_gpus
from .jobs import JobSpec
from .launch import check_launcher

_INT64 = 2**63  # integers the store keeps must lie in [-_INT64, _INT64)


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


def build_spec(
    *,
    n_gpus: int,
    owner: str,
    precision: float,
    default_retries: int,
    default_requirement: Callable[[Sequence[str]], tuple[float, str]],
    snapshot: Callable[[], Sequence[GpuSnapshot]],
    script: str | os.PathLike[str] | None = None,
    command: str | None = None,
    conda_env: str | None = None,
    args: Sequence[str] | str | None = None,
    priority: int = 0,
    required_gpus: float | None = None,
    allowed_gpus: Iterable[int] | str | None = None,
    max_retries: int | None = None,
    launcher: str | None = None,
    gpu_arg: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    sweep: str | None = None,
    params: Mapping[str, Any] | None = None,
    hash: str | None = None,
) -> JobSpec:
    """A validated :class:`JobSpec` for a submission (:meth:`GPUJobScheduler.make_spec`),
    against ``n_gpus`` GPUs (``owner``'s, for messages), or the first error, naming the
    value and what is accepted.  ``default_requirement(args)``: the GPUs (and where that
    number comes from) of a job that names none; ``snapshot()``: the GPUs, for a job of
    several (one node)."""
    if not is_whole(priority):
        raise InvalidTypeError(f"priority={priority!r}: expected an integer")
    shown_priority, priority = priority, int(priority)
    if not -_INT64 <= priority < _INT64:  # SQLite stores 64-bit integers
        raise InvalidValueError(f"priority={shown_priority!r}: must be in {-_INT64}..{_INT64 - 1}")
    workdir = job_folder(cwd)
    argv: tuple[str, ...] = ()
    if command is not None:
        if not isinstance(command, str):
            raise InvalidTypeError(f"command={command!r}: expected a string")
        if not command.strip():
            raise InvalidValueError("command='': expected a shell command")
        no_nul("command", command)
        kind, script_path = "command", None
    else:
        if (
            not isinstance(script, (str, os.PathLike))
            or not isinstance(os.fspath(script), str)
            or not os.fspath(script)
        ):
            raise InvalidTypeError(f"script={script!r}: expected a path to a script")
        no_nul("script", os.fspath(script))
        path = Path(workdir, Path(os.fspath(script)).expanduser())
        if not path.is_file():
            raise MissingFileError(f"script {os.fspath(script)!r} not found (looked in {path})")
        kind, script_path = "script", str(path.resolve())
        argv = as_args(args)
    if conda_env is not None:
        if not isinstance(conda_env, str):
            raise InvalidTypeError(f"conda_env={conda_env!r}: expected an environment name")
        if not conda_env.strip():
            raise InvalidValueError(f"conda_env={conda_env!r}: expected an environment name")
        no_nul("conda_env", conda_env)
    allowed = normalize_allowed_gpus(allowed_gpus, n_gpus, owner=owner)
    if required_gpus is None:
        required, source = default_requirement(argv)
        # (said in messages: the number comes from an LLM config's model, say)
        shown = f"required_gpus={required:g} (for {source})"
        other = "; pass required_gpus= to ask for another number"
        if below_precision(required, precision):  # (an LLM config's model)
            raise InvalidValueError(
                f"{shown}: below gpu_allocation_precision={precision:g}, the smallest "
                f"share of a GPU that is booked{other}"
            )
    else:
        required = check_requirement("required_gpus", required_gpus, precision)
        shown, other = f"required_gpus={required:g}", ""
    limit = len(allowed) if allowed is not None else n_gpus
    if required > limit:
        where = f"allowed_gpus {list(allowed)}" if allowed is not None else owner
        raise InvalidValueError(f"{shown}: {where} has only {limit} GPU(s){other}")
    if required > 1:
        check_one_node(shown, required, allowed, snapshot())
    retries = default_retries if max_retries is None else max_retries
    if not is_whole(retries):
        raise InvalidTypeError(
            f"max_retries={max_retries!r}: expected a whole number in 0..{_INT64 - 1}"
        )
    retries = int(retries)
    if not 0 <= retries < _INT64:
        raise InvalidValueError(
            f"max_retries={max_retries!r}: expected a whole number in 0..{_INT64 - 1}"
        )
    check_launcher(launcher)
    if gpu_arg is not None:
        if not isinstance(gpu_arg, str):
            raise InvalidTypeError(f"gpu_arg={gpu_arg!r}: expected an option such as '--cuda'")
        if not gpu_arg.startswith("-"):
            raise InvalidValueError(f"gpu_arg={gpu_arg!r}: expected an option such as '--cuda'")
        no_nul("gpu_arg", gpu_arg)
    extra_env = check_env(env)
    if name is not None:
        if not isinstance(name, str):
            raise InvalidTypeError(f"name={name!r}: expected a string or None")
        no_nul("name", name)
    return JobSpec(
        kind=kind,
        required_gpus=required,
        priority=priority,
        script=script_path,
        args=argv,
        command=command,
        conda_env=conda_env,
        allowed_gpus=allowed,
        max_retries=retries,
        launcher=launcher,
        gpu_arg=gpu_arg,
        cwd=workdir,
        env=extra_env,
        name=name,
        sweep=sweep,
        params=params,
        hash=hash,
    )
