"""Sweeps: one job per combination of parameters, submitted together.

``GPUJobScheduler.add_sweep`` expands a template (:mod:`nbsched.formats.sweep` has the
grammar) and/or a ``params`` dict into argument lists, validates every job as
``add_job`` would (the first of each ``--llm`` model in full, the others for what
their arguments change: :class:`~nbsched.jobspec.ArgsVariants`), and stores them in
one transaction under a shared sweep id (``sw3``).  Each combination has a hash
(script, conda env, arguments in order, allowed GPUs: :func:`nbsched.jobs.job_hash`),
so submitting the same sweep again queues only the combinations not already queued,
running or succeeded, and keeps the sweep id: the same definition maps to the same id.

It returns the id of every combination's job, the new ones and those already there,
so that a notebook run again top to bottom (after its kernel died mid-sweep) waits
for the whole sweep and reads all of its results, not only what it queued anew.

A sweep's tables (``sweep(id)``, ``sweeps()``) are :mod:`nbsched.sweep_tables`'.
Both work through a :class:`~nbsched.submitter.SweepSubmitter`, not the scheduler.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import math
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .checks import check_sweep_limit
from .errors import InvalidTypeError, InvalidValueError, NbschedError
from .formats.sweep import Expansion, check_size, count_combinations, expand_params, iter_args
from .jobs import JobSpec, JobStatus, job_hasher
from .jobspec import ArgsVariants
from .submitter import SweepSubmitter

#: The options ``add_sweep`` passes on to each job (those of ``add_job``).
SWEEP_OPTIONS = (
    "max_retries", "launcher", "gpu_arg", "cwd", "env", "name", "after", "time_limit",
    "expected_s", "gpu_memory",
)  # fmt: skip

#: A sweep of this many jobs or more pauses the cyclic garbage collector while it makes
#: them (see ``_collector_paused``).
PAUSE_GC_FROM = 10_000

#: A combination already in one of these statuses is not queued again (a failed or
#: cancelled one is: its new job stands for it from then on).
DEDUP_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)


class SweepIds(list[str]):
    """The job ids of a sweep's combinations, in their order (a ``list[str]``): the jobs
    it queued now and those already there (queued, running or succeeded, queued by this
    sweep before or by another), so that ``wait(ids)`` waits for the whole sweep.

    ``.queued``: the new ones; ``.already``: how many of the others are in each status;
    ``.sweep_id``; ``describe()``: all of that in one line.
    """

    def __init__(
        self,
        ids: Iterable[str],
        sweep_id: str,
        queued: Sequence[str] | None = None,
        already: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(ids)
        self.sweep_id = sweep_id
        self._queued = None if queued is None else list(queued)  # None: every one
        self.already: dict[str, int] = {k: n for k, n in (already or {}).items() if n}

    @property
    def queued(self) -> list[str]:
        """The ids of the jobs this call queued (the others were already there)."""
        return list(self if self._queued is None else self._queued)

    def describe(self) -> str:
        """One line: the sweep id, what was queued now and what was already there."""
        new = len(self) if self._queued is None else len(self._queued)
        there = len(self) - new
        held = ", ".join(f"{n} {status}" for status, n in self.already.items())
        if not there:
            shown = ", ".join(self) if len(self) <= 8 else f"{self[0]} ... {self[-1]}"
            return f"sweep {self.sweep_id}: queued {new} job(s): {shown}"
        if not new:
            return (
                f"sweep {self.sweep_id}: nothing new to queue: its {there} job(s) are "
                f"already there ({held})"
            )
        return (
            f"sweep {self.sweep_id}: {len(self)} jobs, {new} queued now, {there} already "
            f"there ({held})"
        )

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # how IPython shows it
        p.text(self.describe())


def submit_sweep(
    s: SweepSubmitter,
    script: str | os.PathLike[str],
    args: str | Sequence[str] | None = None,
    conda_env: str | None = None,
    priority: int = 0,
    required_gpus: float | None = None,
    allowed_gpus: Iterable[int] | str | None = None,
    *,
    params: Mapping[str, Sequence[Any]] | None = None,
    param_style: str = "--{name}",
    limit: int | None = None,
    **options: Any,
) -> SweepIds:
    """Validate and queue every combination; see :meth:`GPUJobScheduler.add_sweep`."""
    unknown = sorted(set(options) - set(SWEEP_OPTIONS))
    if unknown:
        raise InvalidTypeError(
            f"add_sweep() got an unexpected keyword argument {unknown[0]!r}; its options "
            f"are params, param_style, limit and those of add_job: {', '.join(SWEEP_OPTIONS)}"
        )
    if isinstance(allowed_gpus, Iterable) and not isinstance(allowed_gpus, str):
        allowed_gpus = list(allowed_gpus)  # iterated once per combination
    fields = {
        "script": script,
        "conda_env": conda_env,
        "priority": priority,
        "required_gpus": required_gpus,
        "allowed_gpus": allowed_gpus,
        **options,
    }
    n, combos = _expand(args, params, param_style, _limit(s, limit))
    with _collector_paused(n >= PAUSE_GC_FROM):
        return _submit(s, fields, combos, args, params, param_style, options)


@contextmanager
def _collector_paused(pause: bool) -> Iterator[None]:
    """With ``pause``, the cyclic garbage collector paused (if it runs): a big sweep
    makes a few objects a job that live until it returns (100,000 specs, jobs and their
    dicts), and the collector's full passes over them as they piled up (7 for 100,000
    jobs) were a sixth of its time, to find nothing (they hold no cycles).  Resumed
    after one full pass, which leaves none due in whichever thread allocates next (the
    engine's, taking the new jobs in)."""
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def _submit(
    s: SweepSubmitter,
    fields: dict[str, Any],
    combos: Iterator[Expansion],
    args: str | Sequence[str] | None,
    params: Mapping[str, Sequence[Any]] | None,
    param_style: str,
    options: dict[str, Any],
) -> SweepIds:
    """Validate, record and queue the combinations (see :func:`submit_sweep`)."""
    required_gpus, priority = fields["required_gpus"], fields["priority"]
    made = _specs(s, combos, fields)
    first = made.specs[0]
    definition = {
        "script": first.script,
        "conda_env": first.conda_env,
        "args": args if isinstance(args, (str, type(None))) else list(args),
        "params": {k: [str(v) for v in vs] for k, vs in (params or {}).items()},
        "param_style": param_style,
        "required_gpus": _plain(required_gpus),
        "allowed_gpus": list(first.allowed_gpus) if first.allowed_gpus is not None else None,
        "priority": _plain(priority),
        "options": {k: _plain(v) for k, v in sorted(options.items())},
    }
    sweep_id = _sweep_id(s, definition, made)
    specs = (
        spec.evolve(args=argv, params=values, hash=digest, sweep=sweep_id)
        for spec, argv, values, digest in zip(
            made.specs, made.argvs, made.values, made.digests, strict=True
        )
    )
    ids = s.submit(specs, skip_hash_statuses=DEDUP_STATUSES)
    if len(ids) == len(made.digests):  # every combination queued now: the usual case
        return SweepIds(ids, sweep_id)
    return _with_those_there(s, sweep_id, made.digests, ids)


def _with_those_there(
    s: SweepSubmitter, sweep_id: str, digests: Sequence[str], queued: list[str]
) -> SweepIds:
    """Every combination's job id, each once: one of ``queued`` (this call's), or the
    job already there (see :func:`_standing`).  Ids are new strings, as ``submit``'s
    are: kept by a caller, none keeps the jobs read here alive."""
    there = _standing(s, sweep_id, set(digests))
    new = {i: i for i in queued}
    ids: dict[str, None] = {}  # (each job once: the same arguments twice are one job)
    already = dict.fromkeys((st.value for st in JobStatus), 0)
    for digest in digests:
        found = there.get(digest)
        if found is None or str(found[0]) in ids:  # (deleted since; or seen)
            continue
        text = str(found[0])
        ids[new.get(text, text)] = None
        if text not in new:
            already[found[1].value] += 1
    return SweepIds(ids, sweep_id, queued, already)


def _standing(
    s: SweepSubmitter, sweep_id: str, wanted: set[str]
) -> dict[str, tuple[int, JobStatus]]:
    """For each hash in ``wanted``, the number and status of the job that stands for it:
    the newest with it in :data:`DEDUP_STATUSES` (this sweep's own first, then any
    other's: an overlapping sweep's, a jobs-file line's), else the newest with it (one
    that ended since it was skipped)."""

    def loose(found: tuple[int, JobStatus] | None) -> bool:
        return found is None or found[1] not in DEDUP_STATUSES

    held: dict[str, tuple[int, JobStatus]] = {}
    for job in s.find_jobs(sweep=sweep_id):  # (in submission order: the newest last)
        digest = job.spec.hash
        if digest in wanted and (job.status in DEDUP_STATUSES or loose(held.get(digest))):
            assert digest is not None
            held[digest] = (job.seq, job.status)
    for digest in wanted:
        for statuses in (DEDUP_STATUSES, None):
            if not loose(held.get(digest)) or (statuses is None and digest in held):
                break
            jobs = s.find_jobs(hash=digest, statuses=statuses, limit=1, newest=True)
            if jobs:
                held[digest] = (jobs[-1].seq, jobs[-1].status)
    return held


@dataclass(frozen=True)
class _Made:
    """A sweep's combinations, validated, a column each (a tuple a combination was one
    more object a job for the garbage collector to go through until the sweep returns)."""

    specs: list[JobSpec] = field(default_factory=list)  # validated (``args`` maybe another's)
    argvs: list[tuple[str, ...]] = field(default_factory=list)
    values: list[dict[str, str]] = field(default_factory=list)  # each parameter's value
    digests: list[str] = field(default_factory=list)  # the job's hash


def _specs(s: SweepSubmitter, combos: Iterable[Expansion], fields: dict[str, Any]) -> _Made:
    """Each combination's validated spec (whose ``args`` may be another's), arguments,
    parameter values and hash (the first bad one raises).  Only what the arguments
    change is validated again for each (:class:`~nbsched.jobspec.ArgsVariants`)."""
    llm = s.llm_config() if fields["required_gpus"] is None else None
    variants = ArgsVariants(
        lambda argv: s.make_spec(args=argv, **fields),
        (lambda argv: None) if llm is None else llm.model_of,
    )
    made = _Made()
    digest: Callable[[Sequence[str]], str] | None = None
    for argv, values in combos:
        try:
            spec = variants.spec(argv)
        except NbschedError as exc:
            if not values or fields["required_gpus"] is not None:
                raise  # (the same for every combination, or naming the bad value itself)
            # The GPUs come from the arguments (`--llm {a,b}`: one model may need more
            # than there are): say which combination.
            combination = ", ".join(f"{k}={v}" for k, v in values.items())
            raise type(exc)(f"{exc} (in the sweep's combination {combination})") from exc
        if digest is None:
            digest = job_hasher(spec.script or "", spec.conda_env, spec.allowed_gpus)
        made.specs.append(spec)
        made.argvs.append(argv)
        made.values.append(values)
        made.digests.append(digest(argv))
    return made


def _plain(value: Any) -> Any:
    """``value`` as JSON has it (numpy's numbers as int and float), so that the same
    definition always has the same sweep id."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _limit(s: SweepSubmitter, limit: int | None) -> int:
    return s.config.max_sweep_jobs if limit is None else check_sweep_limit(limit)


def _expand(
    args: str | Sequence[str] | None,
    params: Mapping[str, Sequence[Any]] | None,
    style: str,
    limit: int,
) -> tuple[int, Iterator[Expansion]]:
    """How many combinations, and the template's times the params dict's (the template
    varies slowest), one at a time; a bad template or params dict raises at once."""
    template: str | Sequence[str] = "" if args is None else args
    if not isinstance(template, (str, Sequence)) or isinstance(template, bytes):
        raise InvalidTypeError(f"args={args!r}: expected a sweep template string or a list")
    if params is not None and not isinstance(params, Mapping):
        raise InvalidTypeError(f"params={params!r}: expected a dict of name -> list of values")
    n_params = 1
    if params:
        try:
            n_params = math.prod(len(v) for v in params.values())
        except TypeError:
            pass  # expand_params below names the bad value
    n = count_combinations(template) * n_params
    check_size(n, limit)
    from_template = iter_args(template)
    if not params:
        return n, from_template
    from_params = expand_params(params, style)
    first = next(from_template)
    clash = set(first[1]) & set(from_params[0][1])
    if clash:
        raise InvalidValueError(
            f"sweep parameter(s) {', '.join(sorted(clash))} appear in both args and params; "
            "name each parameter once"
        )
    return n, (
        ((*argv_a, *argv_p), {**vals_a, **vals_p})
        for argv_a, vals_a in itertools.chain([first], from_template)
        for argv_p, vals_p in from_params
    )


def _sweep_id(s: SweepSubmitter, definition: dict[str, Any], made: _Made) -> str:
    """The id of this definition: the one it had before, or a new one."""
    text = json.dumps(definition, sort_keys=True, ensure_ascii=False, default=str)
    key = "sweep:" + hashlib.sha256(text.encode()).hexdigest()[:32]
    known = s.sweep_of_key(key)
    if known is not None and s.sweep_record(known) is not None:
        return known
    combinations = [
        [digest, values] for digest, values in zip(made.digests, made.values, strict=True)
    ]
    return s.record_sweep(key, {**definition, "combinations": combinations})
