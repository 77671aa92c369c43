"""Value checks: a value and what is accepted -> the value, or an error naming both.

Each check returns the value as the engine keeps it (a plain ``int``, ``float``,
``str`` or tuple; numpy's numbers are accepted too) or raises
:class:`~nbsched.errors.InvalidTypeError` (a ``TypeError``: the wrong kind of value)
or :class:`~nbsched.errors.InvalidValueError` (a ``ValueError``: the right kind, but
not accepted), with a message such as ``"required_gpus=1.5: above 1 it must be a
whole number"``.  :mod:`nbsched.checks` exports them with the checks of typed words
(:mod:`nbsched.checks.typed`), so that the config, a submission, the command line, the
magics and the form refuse a value with the same words.
"""

from __future__ import annotations

import math
import numbers
import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeGuard

from ..errors import InvalidTypeError, InvalidValueError
from ..formats.duration import EXAMPLES, parse_duration
from ..formats.gpulist import MAX_GPU_ID, describe_gpus, parse_gpu_list

INT64 = 2**63  # integers the store keeps must lie in [-INT64, INT64)

# -- numbers ------------------------------------------------------------------------------


def is_real(value: object) -> TypeGuard[numbers.Real]:
    """A real number: an int or float, numpy's too (any :class:`numbers.Real`), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_whole(value: object) -> TypeGuard[numbers.Integral]:
    """A whole number: an int, numpy's too (any :class:`numbers.Integral`), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def to_float(value: object) -> float:
    """``float(value)`` of a real number, but an int too large for a float becomes +-inf
    (not OverflowError)."""
    assert isinstance(value, numbers.Real)
    try:
        return float(value)
    except OverflowError:
        assert isinstance(value, numbers.Integral)
        return math.inf if int(value) > 0 else -math.inf


def check_whole(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """``value`` as a plain int in ``minimum..maximum``."""
    if not is_whole(value):
        raise InvalidTypeError(f"{name}={value!r}: expected a whole number >= {minimum}")
    number = int(value)
    if number < minimum:
        raise InvalidValueError(f"{name}={value!r}: must be >= {minimum}")
    if maximum is not None and number > maximum:
        raise InvalidValueError(f"{name}={value!r}: must be <= {maximum}")
    return number


def check_count(name: str, value: object, also: str = "") -> int:
    """``value`` as a whole number >= 0 (a number of lines, of rows); ``also`` adds to
    what is accepted in the message (``" or None"``)."""
    expected = f"expected a whole number >= 0{also}"
    if not is_whole(value):
        raise InvalidTypeError(f"{name}={value!r}: {expected}")
    if value < 0:
        raise InvalidValueError(f"{name}={value!r}: {expected}")
    return int(value)


def check_number(name: str, value: object, low: float, high: float, low_open: bool = True) -> float:
    """``value`` as a plain float, if it lies in ``(low, high]`` (``[low, high]`` when
    not ``low_open``)."""
    if not is_real(value):
        raise InvalidTypeError(f"{name}={value!r}: expected a number")
    v = to_float(value)
    bad_low = v <= low if low_open else v < low
    if not math.isfinite(v) or bad_low or v > high:
        if math.isinf(high):
            accepted = f"a finite number {'>' if low_open else '>='} {low:g}"
        else:
            accepted = f"in {'(' if low_open else '['}{low}, {high}]"
        raise InvalidValueError(f"{name}={value!r}: must be {accepted}")
    return v


def check_requirement(name: str, value: object, precision: float | None = None) -> float:
    """A GPU requirement: a fraction in (0, 1], or a whole number above 1; with
    ``precision`` (``gpu_allocation_precision``), a fraction of at least that."""
    if not is_real(value):
        raise InvalidTypeError(f"{name}={value!r}: expected a number of GPUs")
    v = to_float(value)
    if not math.isfinite(v) or v <= 0:
        raise InvalidValueError(
            f"{name}={value!r}: must be a fraction in (0, 1] or a whole number of GPUs"
        )
    if v > 1 and not v.is_integer():
        raise InvalidValueError(f"{name}={value!r}: above 1 it must be a whole number")
    if precision is not None and below_precision(v, precision):
        raise InvalidValueError(
            f"{name}={value!r}: below gpu_allocation_precision={precision:g}, the smallest "
            f"share of a GPU that is booked; ask for at least {precision:g}"
        )
    return v


def below_precision(required: float, precision: float) -> bool:
    """Whether a requirement is less than one step of ``precision``: the allocator
    (:func:`nbsched.allocation.plan`) places such a job as if it needed one step but
    books only what it asked, so ever more of them would fit on one GPU.  (A float
    just under one step, such as ``np.float32(0.01)``, counts as one step.)"""
    return required < precision * (1 - 1e-6)


def check_priority(priority: object) -> int:
    """A job's priority: a whole number the store can keep (64 bits); lower runs first."""
    if not is_whole(priority):
        raise InvalidTypeError(f"priority={priority!r}: expected an integer")
    number = int(priority)
    if not -INT64 <= number < INT64:  # SQLite stores 64-bit integers
        raise InvalidValueError(f"priority={priority!r}: must be in {-INT64}..{INT64 - 1}")
    return number


def check_retries(retries: object, shown: object) -> int:
    """How often a failed job is re-queued: a whole number in 0..2**63-1; ``shown`` is
    the value as the caller gave it (``None``: the config's default was used)."""
    accepted = f"max_retries={shown!r}: expected a whole number in 0..{INT64 - 1}"
    if not is_whole(retries):
        raise InvalidTypeError(accepted)
    if not 0 <= int(retries) < INT64:
        raise InvalidValueError(accepted)
    return int(retries)


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


def check_duration(name: str, value: object) -> float | None:
    """A job's ``time_limit`` or ``expected_s``: seconds (a finite number > 0) or a
    duration such as ``"2h30m"`` (:mod:`nbsched.formats.duration`); None: none."""
    if value is None:
        return None
    if isinstance(value, str):
        seconds = parse_duration(value)
        if seconds is None:
            raise InvalidValueError(f"{name}={value!r}: expected {EXAMPLES}")
    elif is_real(value):
        seconds = to_float(value)
    else:
        raise InvalidTypeError(f"{name}={value!r}: expected {EXAMPLES}, or None")
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidValueError(f"{name}={value!r}: must be more than 0 s; expected {EXAMPLES}")
    return seconds


def check_sweep_limit(limit: object) -> int:
    """``add_sweep``'s ``limit``: the most jobs a sweep may have, a whole number >= 1."""
    if not is_whole(limit):
        raise InvalidTypeError(f"limit={limit!r}: expected a whole number of jobs >= 1")
    if limit < 1:
        raise InvalidValueError(f"limit={limit!r}: expected a whole number of jobs >= 1")
    return int(limit)


#: The dashboard's refresh period (s): faster only burns CPU; over a day overflows a wait.
INTERVAL_S = (0.1, 86400.0)


def check_interval(interval: object) -> float:
    """The dashboard's refresh period: seconds in ``INTERVAL_S`` (numpy's numbers too)."""
    low, high = INTERVAL_S
    accepted = f"expected seconds between refreshes, from {low:g} to {high:g} (e.g. 1.0)"
    if not is_real(interval):
        raise InvalidTypeError(f"interval={interval!r}: {accepted}")
    if not low <= to_float(interval) <= high:  # (NaN fails too)
        raise InvalidValueError(f"interval={interval!r}: {accepted}")
    return to_float(interval)


# -- names, strings and paths -------------------------------------------------------------


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value``, if it is one of ``choices``."""
    if value not in choices:
        raise InvalidValueError(f"{name}={value!r}: accepted values are {', '.join(choices)}")
    assert isinstance(value, str)
    return value


def check_path(name: str, value: object) -> Path:
    """A non-empty path, absolute (``~`` expanded): the kernel may change folder later,
    and the spawner runs in ``/``."""
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if not text:
            raise InvalidValueError(f"{name}={value!r}: must not be empty")
        return Path(os.path.abspath(Path(text).expanduser()))
    raise InvalidTypeError(f"{name}={value!r}: expected a path")


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


def check_patterns(name: str, value: object) -> tuple[str, ...]:
    """Variable-name patterns (shell wildcards, ``*TOKEN*``): a list or tuple of
    non-empty strings; one string alone is refused (it would be read letter by letter)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple, frozenset, set)):
        raise InvalidTypeError(
            f"{name}={value!r}: expected a tuple of name patterns, like ('*TOKEN*', '*_KEY')"
        )
    out = []
    for pattern in value:
        if not isinstance(pattern, str) or not pattern or "=" in pattern or "\0" in pattern:
            raise InvalidValueError(
                f"{name}={value!r}: {pattern!r}: a pattern is a non-empty string without '=' or NUL"
            )
        out.append(pattern)
    return tuple(out)


def check_args(args: object) -> tuple[str, ...]:
    """A script's arguments: a list (numbers are ``str()``-ed), or one string split like
    a shell; ``None``: none."""
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


def check_word(name: str, value: object, accepted: str, *, blank: bool = True) -> str | None:
    """An optional string without NUL bytes (``None`` passes); ``accepted`` says what is
    wanted (``"an environment name"``); ``blank=False`` refuses an empty or blank one."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidTypeError(f"{name}={value!r}: expected {accepted}")
    if not blank and not value.strip():
        raise InvalidValueError(f"{name}={value!r}: expected {accepted}")
    return no_nul(name, value)


def check_flag(name: str, value: object) -> bool:
    """A yes/no setting: ``True`` or ``False`` (not a truthy string such as ``"no"``)."""
    if not isinstance(value, bool):
        raise InvalidTypeError(f"{name}={value!r}: expected True or False")
    return value


def check_gpu_arg(gpu_arg: object, name: str = "gpu_arg") -> str | None:
    """The option a job's GPU ids are passed with (``"--cuda"``), or None; ``name``: the
    field it comes as (``jobs_file_gpu_arg``: the config's, for the jobs file's lines)."""
    if gpu_arg is None:
        return None
    accepted = f"{name}={gpu_arg!r}: expected an option such as '--cuda'"
    if not isinstance(gpu_arg, str):
        raise InvalidTypeError(accepted)
    if not gpu_arg.startswith("-"):
        raise InvalidValueError(accepted)
    return no_nul(name, gpu_arg)


# -- GPU ids ------------------------------------------------------------------------------


def _gpu_ids(value: Iterable[object], field: str) -> tuple[tuple[int, ...], str]:
    items = list(value)
    shown = repr(items)
    found: set[int] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise InvalidTypeError(f"{field}={shown}: {item!r} is not a whole GPU id")
        gpu = int(item)
        if gpu < 0:
            raise InvalidValueError(f"{field}={shown}: GPU ids are >= 0, got {gpu}")
        if gpu > MAX_GPU_ID:
            raise InvalidValueError(
                f"{field}={shown}: GPU id {gpu} is too large (at most {MAX_GPU_ID})"
            )
        found.add(gpu)
    if not found:
        raise InvalidValueError(
            f"{field}={shown}: empty; give at least one GPU id, or None for any GPU"
        )
    return tuple(sorted(found)), shown


def check_allowed_gpus(
    value: object, num_gpus: int | None, field: str = "allowed_gpus", owner: str = "this machine"
) -> tuple[int, ...] | None:
    """``None``, a ``"0-3,5"`` string or an iterable of ints -> sorted unique ids or ``None``.

    Ids must exist on a machine with ``num_gpus`` GPUs (not checked when it is ``None``);
    ``owner`` says whose GPUs they are in the message.
    """
    if value is None:
        return None
    if isinstance(value, str):
        ids, shown = parse_gpu_list(value, field=field), repr(value)
    elif isinstance(value, (bytes, bytearray, dict)) or not isinstance(value, Iterable):
        raise InvalidTypeError(
            f"{field}={value!r}: expected None, a list of GPU ids or a string like '0-3,5'"
        )
    else:
        ids, shown = _gpu_ids(value, field)
    if num_gpus is not None:
        for gpu in ids:
            if gpu >= num_gpus:
                raise InvalidValueError(
                    f"{field}={shown}: GPU {gpu} does not exist; "
                    f"{owner} has {describe_gpus(num_gpus)}"
                )
    return ids
