"""What a user submits, checked: :func:`build_spec` makes a job's validated
:class:`JobSpec` (``GPUJobScheduler.make_spec``), raising at the first bad value, naming
it and what is accepted, before anything is stored.  The checks of single values are
:mod:`nbsched.checks`; here are those that need the machine (the folder, the script,
the GPUs there are)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .checks import (
    AfterValue,
    below_precision,
    check_after,
    check_allowed_gpus,
    check_args,
    check_duration,
    check_env,
    check_gpu_arg,
    check_priority,
    check_requirement,
    check_retries,
    check_word,
    no_nul,
)
from .checks.memory import memory_text
from .errors import InvalidTypeError, InvalidValueError, MissingFileError
from .gpus.base import GpuSnapshot
from .gpus.memory_fit import check_request
from .jobs import JobSpec
from .launch import check_launcher
from .store.durations import estimate_key


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
    after: AfterValue = None,
    time_limit: float | str | None = None,
    expected_s: float | str | None = None,
    gpu_memory: object = None,
) -> JobSpec:
    """A validated :class:`JobSpec` for a submission (:meth:`GPUJobScheduler.make_spec`),
    against ``n_gpus`` GPUs (``owner``'s, for messages), or the first error, naming the
    value and what is accepted.  ``default_requirement(args)``: the GPUs (and whence) of
    a job that names none; ``snapshot()``: the GPUs, for a job of several (one node);
    ``gpu_memory``: MiB (or "18G") needed on each of its GPUs."""
    checked_priority = check_priority(priority)
    workdir = job_folder(cwd)
    kind, script_path, argv = _what_runs(script, command, args, workdir)
    check_word("conda_env", conda_env, "an environment name", blank=False)
    allowed = check_allowed_gpus(allowed_gpus, n_gpus, owner=owner)
    memory = check_request(gpu_memory, snapshot, allowed)
    req, shown, other = _requirement(required_gpus, memory, precision, default_requirement, argv)
    _check_fits(shown, other, req, allowed, n_gpus, owner, snapshot)
    return JobSpec(
        kind=kind,
        required_gpus=req,
        priority=checked_priority,
        script=script_path,
        args=argv,
        command=command,
        conda_env=conda_env,
        allowed_gpus=allowed,
        cwd=workdir,
        sweep=sweep,
        params=params,
        hash=hash,
        after=check_after(after),
        **_estimation(time_limit, expected_s, kind, script_path, argv, command),
        gpu_memory_request=memory,
        **_options(max_retries, default_retries, launcher, gpu_arg, env, name),
    )


def _estimation(
    time_limit: object,
    expected_s: object,
    kind: str,
    script: str | None,
    args: Sequence[str],
    command: str | None,
) -> dict[str, Any]:
    """The fields a job's estimate comes from, checked: its time limit and its hint
    (seconds, or a duration such as ``"2h30m"``), and the key of the jobs it is like."""
    return {
        "time_limit": check_duration("time_limit", time_limit),
        "expected_s": check_duration("expected_s", expected_s),
        "estimate_key": estimate_key(kind, script, args, command),
    }


def _requirement(
    required_gpus: float | None,
    memory: float | None,
    precision: float,
    default: Callable[[Sequence[str]], tuple[float, str]],
    argv: Sequence[str],
) -> tuple[float, str, str]:
    """The GPUs a job books, as ``(required, shown, other)`` (see :func:`_default_gpus`):
    ``required_gpus``, else the smallest share where it asks for memory alone, else the
    default."""
    if required_gpus is None and memory is not None:
        return precision, f"gpu_memory={memory_text(memory)}", ""
    if required_gpus is None:
        return _default_gpus(default(argv), precision)
    required = check_requirement("required_gpus", required_gpus, precision)
    return required, f"required_gpus={required:g}", ""


def _what_runs(
    script: object, command: object, args: object, workdir: str
) -> tuple[str, str | None, tuple[str, ...]]:
    """``(kind, script path, arguments)``: a shell command, or a script that exists
    (relative to the job's folder) with its arguments."""
    if command is not None:
        if not isinstance(command, str):
            raise InvalidTypeError(f"command={command!r}: expected a string")
        if not command.strip():
            raise InvalidValueError("command='': expected a shell command")
        no_nul("command", command)
        return "command", None, ()
    if (
        not isinstance(script, (str, os.PathLike))
        or not isinstance(os.fspath(script), str)
        or not os.fspath(script)
    ):
        raise InvalidTypeError(f"script={script!r}: expected a path to a script")
    text = os.fspath(script)
    assert isinstance(text, str)
    no_nul("script", text)
    path = Path(workdir, Path(text).expanduser())
    if not path.is_file():
        raise MissingFileError(f"script {text!r} not found (looked in {path})")
    return "script", str(path.resolve()), check_args(args)


def _default_gpus(found: tuple[float, str], precision: float) -> tuple[float, str, str]:
    """The GPUs of a job that names none, as ``(required, shown, other)``: the number,
    how messages show it (with where it comes from: an LLM config's model, say) and
    what they add."""
    required, source = found
    shown = f"required_gpus={required:g} (for {source})"
    other = "; pass required_gpus= to ask for another number"
    if below_precision(required, precision):  # (an LLM config's model)
        raise InvalidValueError(
            f"{shown}: below gpu_allocation_precision={precision:g}, the smallest "
            f"share of a GPU that is booked{other}"
        )
    return required, shown, other


def _check_fits(
    shown: str,
    other: str,
    required: float,
    allowed: tuple[int, ...] | None,
    n_gpus: int,
    owner: str,
    snapshot: Callable[[], Sequence[GpuSnapshot]],
) -> None:
    """There are as many (allowed) GPUs as the job needs, on one node."""
    limit = len(allowed) if allowed is not None else n_gpus
    if required > limit:
        where = f"allowed_gpus {list(allowed)}" if allowed is not None else owner
        raise InvalidValueError(f"{shown}: {where} has only {limit} GPU(s){other}")
    if required > 1:
        check_one_node(shown, required, allowed, snapshot())


def _options(
    max_retries: object,
    default_retries: int,
    launcher: str | None,
    gpu_arg: object,
    env: object,
    name: object,
) -> dict[str, Any]:
    """The job's other fields, checked: retries, launcher, GPU option, environment, name."""
    retries = check_retries(default_retries if max_retries is None else max_retries, max_retries)
    check_launcher(launcher)
    return {
        "max_retries": retries,
        "launcher": launcher,
        "gpu_arg": check_gpu_arg(gpu_arg),
        "env": check_env(env),
        "name": check_word("name", name, "a string or None"),
    }


class ArgsVariants:
    """Validated specs of one submission with other arguments each (a sweep's
    combinations), validating in full only what the arguments can change.

    ``make(args)`` is the whole validation (:func:`build_spec` through ``make_spec``);
    the arguments change the spec's ``args`` and, for a job that names no GPUs, its
    requirement, through ``key(args)`` alone (the LLM config's model: ``--llm``).  So
    the first arguments of each key are validated by ``make``; the others of that key
    only for what :func:`~nbsched.checks.check_args` refuses in arguments that are all
    strings (a NUL byte: then ``make`` raises its own error), and their spec is the
    key's with these arguments.  A sweep of 100,000 jobs validated each in full spent
    half its time there.
    """

    def __init__(
        self, make: Callable[[tuple[str, ...]], JobSpec], key: Callable[[tuple[str, ...]], object]
    ) -> None:
        self._make = make
        self._key = key
        self._specs: dict[object, JobSpec] = {}

    def spec(self, args: tuple[str, ...]) -> JobSpec:
        """The spec of the submission with ``args`` (strings, as a sweep's expansion
        makes them), or ``make``'s error.  Its ``args`` may be another's: the caller
        sets them (with what else differs: :meth:`JobSpec.evolve`)."""
        key = self._key(args)
        known = self._specs.get(key)
        if known is not None and "\0" not in "".join(args):
            return known
        spec = self._make(args)
        self._specs.setdefault(key, spec)
        return spec
