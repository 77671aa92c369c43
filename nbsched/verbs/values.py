"""What the verbs' words mean, for both front ends: argument types (argparse's adapters
of :mod:`nbsched.checks`, where each value's rule and message are written once), the
rule that turns the words after ``--`` into a shell command, the GPU settings of
``--simulate``/``--provider``/``--num-gpus``, and "check every id, then act".

One copy, so ``nbsched`` and ``%gpusched`` cannot drift apart again.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from nbsched import checks
from nbsched.config import SchedulerConfig
from nbsched.errors import InvalidTypeError, InvalidValueError
from nbsched.scheduler import GPUJobScheduler

_T = TypeVar("_T")

# -- argument types: argparse's adapters of nbsched.checks ------------------------------------
# Each rule (what a GPU requirement, a priority, a number of seconds... may be) and its
# message are written once, in nbsched.checks; argparse only wants its own error kind,
# whose text it shows as "argument --gpus: TEXT".


def _argument(read: Callable[[str], _T], text: str) -> _T:
    try:
        return read(text)
    except (InvalidTypeError, InvalidValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: ``--gpus 0,1`` / ``--gpus 0-3,5``: the original program's ``add --gpus`` (the GPUs a
#: job may use), which nbsched's ``--gpus`` (how many) refuses.
_GPU_LIST = re.compile(r"\d+(?:-\d+)?(?:,\d+(?:-\d+)?)+|\d+-\d+")


#: ``--mem``'s help.
MEM_HELP = (
    "GPU memory it needs free on each of its GPUs: 18G, 512M (G = GiB) or MiB; alone, "
    "without --gpus, it books the smallest share of a GPU"
)


def memory_type(text: str) -> float:
    """GPU memory a job needs (``--mem``): ``18G``, ``512M`` or a number of MiB."""
    return _argument(lambda t: float(checks.check_gpu_memory("--mem", t) or 0.0), text)


def gpus_type(text: str) -> float:
    """A GPU requirement: a fraction in (0, 1] or a whole number.  A GPU list is
    refused with a pointer to ``--allowed`` (the original's ``--gpus``)."""
    if _GPU_LIST.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of GPUs: --gpus is how many a job needs; for the "
            f"GPUs it may use (the original program's --gpus), write --allowed {text.strip()}"
        )
    return _argument(checks.gpus_from_text, text)


def gpus_note(ns: Any) -> str | None:
    """A note for ``add --gpus N`` (N whole, 2 or more, and no ``--allowed``): the
    original program's ``add --gpus 3`` meant "only GPU 3", nbsched's means 3 GPUs."""
    gpus, allowed = getattr(ns, "gpus", None), getattr(ns, "allowed", None)
    if gpus is None or allowed is not None or gpus < 2:
        return None
    return (
        f"--gpus {gpus:g}: the job needs {gpus:g} whole GPUs (to run it on GPU {gpus:g} "
        f"only, as the original program's add --gpus {gpus:g} did, write --allowed {gpus:g})"
    )


def after_type(kind: str | None) -> Callable[[str], str]:
    """``--after IDS`` (``kind`` None: ids wait for success, or ``ok:12;any:sw3``) and
    ``--after-KIND IDS``: the dependencies' canonical text (see :func:`checks.check_after`)."""
    flag = "--after" if kind is None else f"--after-{kind}"

    def read(text: str) -> str:
        value = checks.check_after(text, flag, kind)
        return value or ""

    read.__name__ = "IDS"  # (argparse names a bad value by its type's name)
    return lambda text: _argument(read, text)


def count_type(text: str) -> int:
    """A number of GPUs: 1, 2, ..."""
    return _argument(checks.gpu_count_from_text, text)


def lines_type(text: str) -> int | None:
    """``-n N``: the last N lines (0: none); ``-n all``: every line (``None``)."""
    return _argument(checks.lines_from_text, text)


def gpu_index_type(text: str) -> int:
    return _argument(lambda t: checks.whole_from_text(t, 0, "a GPU index"), text)


def limit_type(text: str) -> int:
    return _argument(checks.sweep_limit_from_text, text)


def rows_type(text: str) -> int:
    return _argument(checks.rows_from_text, text)


def retries_type(text: str) -> int:
    return _argument(checks.retries_from_text, text)


def priority_type(text: str) -> int:
    return _argument(checks.priority_from_text, text)


def seconds_type(text: str) -> float:
    return _argument(checks.seconds_from_text, text)


def time_limit_type(text: str) -> float:
    """``--time 2h30m`` (or seconds): a job's ``time_limit``."""
    return _argument(lambda t: checks.duration_from_text(t, "time_limit"), text)


def expected_type(text: str) -> float:
    """``--expected 10m`` (or seconds): a job's ``expected_s``."""
    return _argument(lambda t: checks.duration_from_text(t, "expected_s"), text)


def reserve_after_type(text: str) -> float:
    """``--reserve-after 10m`` (or seconds): the config's ``reserve_after_s``."""
    return _argument(checks.reserve_after_from_text, text)


def threshold_type(text: str) -> float:
    """``--mem-threshold`` / ``--load-threshold``: a fraction from 0 to 1."""
    return _argument(checks.threshold_from_text, text)


def url_type(text: str) -> str:
    """``--notify URL``: a webhook's http(s) URL."""
    return _argument(lambda t: checks.check_url("--notify", t), text)


def address_type(text: str) -> str:
    """``--notify-email ADDRESS``: as ``notify="mailto:ADDRESS"``."""
    return "mailto:" + _argument(lambda t: checks.check_address("--notify-email", t), text)


def interval_type(text: str) -> float:
    """``dashboard --interval S``: as ``Dashboard(interval=S)`` (``checks.check_interval``)."""
    try:
        return checks.check_interval(float(text))
    except ValueError:  # (not a number, or not accepted: InvalidValueError is one)
        low, high = checks.INTERVAL_S
        raise argparse.ArgumentTypeError(
            f"{text!r} is not accepted: expected seconds between refreshes, from {low:g} to "
            f"{high:g}"
        ) from None


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


def show_ids(s: GPUJobScheduler, ns: Any, ids: list[str] | str) -> None:
    """How ``nbsched hold``/``release``/``priority`` print the jobs they changed (a line
    each; ``--json``: ``{"hold": [ids]}``), and ``nbsched notebook`` the jobs it queued
    (as ``add`` and ``sweep`` print theirs): kept here, ``cli.py`` being full."""
    if ns.verb == "notebook":
        _show_queued(ns, ids)
    else:
        print(json.dumps({ns.verb: ids}) if ns.json else "\n".join(ids))


def _show_queued(ns: Any, ids: list[str] | str) -> None:
    """A job's id (``{"id": ..}``), or a sweep's ids (``{"sweep": .., "ids": [..]}``)."""
    if isinstance(ids, str):
        print(json.dumps({"id": ids}) if ns.json else ids)
        return
    sweep_id = getattr(ids, "sweep_id", None)
    queued = list(getattr(ids, "queued", ids))
    if ns.json:
        print(json.dumps({"sweep": sweep_id, "ids": list(ids), "queued": queued}))
    else:
        print(f"{sweep_id}: {len(queued)} job(s) queued" + "".join(f" {i}" for i in queued))


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
    for flag in ("slurm_partition", "slurm_account"):
        if getattr(ns, flag, None) is not None and executor != "slurm":
            raise InvalidValueError(
                f"--{flag.replace('_', '-')} {getattr(ns, flag)} applies to --executor slurm; "
                "add --executor slurm"
            )
    if getattr(ns, "jobs_file_gpu_arg", None) is not None and not getattr(ns, "jobs_file", None):
        raise InvalidValueError(
            f"--gpu-arg {ns.jobs_file_gpu_arg} applies to the jobs file's lines: add --jobs-file F "
            "(for one job: nbsched add --gpu-arg OPTION)"
        )
    names = {"state_dir": "state_dir", "executor": "executor", "jobs_file": "jobs_file"}
    names.update(llm_config="llm_config_file", ray_address="ray_address")
    names.update(slurm_partition="slurm_partition", slurm_account="slurm_account")
    names.update(max_retries="max_retries", jobs_file_gpu_arg="jobs_file_gpu_arg")
    names.update(mem_threshold="gpu_memory_threshold", load_threshold="gpu_load_threshold")
    names.update(reserve_after_s="reserve_after_s")
    for flag, field in names.items():
        value = getattr(ns, flag, None)
        if value is not None:  # ('' is refused by the config, not taken as unset)
            fields[field] = value
    notify = (getattr(ns, "default_notify", None) or []) + (
        getattr(ns, "default_notify_email", None) or []
    )
    if notify:
        fields["notify"] = notify
    return fields


def engine_config(ns: Any) -> SchedulerConfig:
    """The config of the engine options as given (``--llm-config ''``: none)."""
    fields = engine_fields(ns)
    if fields.get("llm_config_file") == "":
        del fields["llm_config_file"]
    return SchedulerConfig(**fields)


def engine_scheduler(ns: Any, config: SchedulerConfig) -> tuple[GPUJobScheduler, str | None]:
    """The scheduler ``start`` and ``serve`` make of ``config`` (:func:`engine_config`),
    and a note to show, if any.  With a jobs file and no ``--llm-config``, it is the
    original program's call, which reads ``./llm_config.json`` where it exists (the
    note says so); ``--llm-config ''`` reads none."""
    if not config.jobs_file or getattr(ns, "llm_config", None) is not None:
        return GPUJobScheduler(config=config), None
    s = GPUJobScheduler(jobs_file_path=config.jobs_file, config=config)
    found = s.config.llm_config_file
    if found is None:
        return s, None
    return s, (
        f"reading the LLM config {found} (found in the current folder, as the original "
        "program did; --llm-config F names another, --llm-config '' none)"
    )
