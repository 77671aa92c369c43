"""Sweeps: one job per combination of parameters, and their results as one table.

``GPUJobScheduler.add_sweep`` expands a template (:mod:`nbsched.formats.sweep` has the
grammar) and/or a ``params`` dict into argument lists, validates every job as
``add_job`` would (the first of each ``--llm`` model in full, the others for what
their arguments change: :class:`~nbsched.jobspec.ArgsVariants`), and stores them in
one transaction under a shared sweep id (``sw3``).  Each combination has a hash
(script, conda env, arguments in order, allowed GPUs: :func:`nbsched.jobs.job_hash`),
so submitting the same sweep again queues only the combinations not already queued,
running or succeeded, and keeps the sweep id: the same definition maps to the same id.

``GPUJobScheduler.sweep(id)`` is one row per combination: its parameters, the
status, duration and exit code of the job that stands for it (the newest job
with its hash) and the keys of the JSON object that job wrote to the path in
``$NBSCHED_RESULT_FILE``.

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
import shlex
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .checks import check_sweep_limit
from .errors import InvalidTypeError, InvalidValueError, NbschedError
from .formats.sweep import Expansion, check_size, count_combinations, expand_params, iter_args
from .frames import local_zone
from .jobs import Job, JobSpec, JobStatus, job_hasher
from .jobspec import ArgsVariants
from .submitter import SweepSubmitter

if TYPE_CHECKING:
    import pandas as pd

#: The options ``add_sweep`` passes on to each job (those of ``add_job``).
SWEEP_OPTIONS = ("max_retries", "launcher", "gpu_arg", "cwd", "env", "name")

#: A sweep of this many jobs or more pauses the cyclic garbage collector while it makes
#: them (see ``_collector_paused``).
PAUSE_GC_FROM = 10_000

#: A combination already in one of these statuses is not queued again.
DEDUP_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)

#: The fixed columns of a sweep table (parameters come before, results after).
SWEEP_COLUMNS = ("status", "duration", "exit_code", "id")

#: The columns of ``GPUJobScheduler.sweeps()``.
SWEEPS_COLUMNS = (
    "sweep",
    "created",
    "script",
    "args",
    "combinations",
    *(s.value for s in JobStatus),
)


class SweepIds(list[str]):
    """The ids of the jobs a sweep queued (a ``list[str]``), with the sweep's id."""

    def __init__(self, ids: Iterable[str], sweep_id: str) -> None:
        super().__init__(ids)
        self.sweep_id = sweep_id

    def describe(self) -> str:
        """One line: the sweep id and what was queued."""
        if not self:
            return (
                f"sweep {self.sweep_id}: nothing new to queue "
                "(every combination is queued, running or succeeded)"
            )
        shown = ", ".join(self) if len(self) <= 8 else f"{self[0]} ... {self[-1]}"
        return f"sweep {self.sweep_id}: queued {len(self)} job(s): {shown}"

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
    return SweepIds(ids, sweep_id)


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


# -- reading ------------------------------------------------------------------------------


def _record(s: SweepSubmitter, sweep_id: object) -> dict[str, Any]:
    if not isinstance(sweep_id, str):
        raise InvalidTypeError(f"sweep_id={sweep_id!r}: expected a sweep id such as 'sw1'")
    record = s.sweep_record(sweep_id.strip())
    if record is None:
        known = [sid for sid, _, _ in s.sweep_records()[-5:]]
        hint = f"known sweeps: {', '.join(known)}" if known else "no sweep was submitted yet"
        raise InvalidValueError(f"sweep_id={sweep_id!r}: no such sweep ({hint})")
    return record


def latest_sweep(s: SweepSubmitter) -> str:
    """The id of the sweep submitted last."""
    sweeps = s.sweep_records()
    if not sweeps:
        raise InvalidValueError("no sweep was submitted yet; add one with add_sweep()")
    return sweeps[-1][0]


def combination_jobs(
    s: SweepSubmitter, sweep_id: str, record: dict[str, Any] | None = None
) -> list[tuple[dict[str, str], Job | None]]:
    """Each combination of a sweep with the newest job that has its hash."""
    record = _record(s, sweep_id) if record is None else record
    by_hash: dict[str, Job] = {}
    for own in s.find_jobs(sweep=sweep_id):
        if own.spec.hash is not None:
            by_hash[own.spec.hash] = own
    out: list[tuple[dict[str, str], Job | None]] = []
    for digest, values in record["combinations"]:
        job = by_hash.get(digest)
        if job is None:  # queued or done by another sweep (or a jobs-file line)
            found = s.find_jobs(hash=digest, limit=1, newest=True)
            job = found[-1] if found else None
        out.append((values, job))
    return out


def sweep_frame(s: SweepSubmitter, sweep_id: str | None = None) -> pd.DataFrame:
    import pandas as pd

    """One row per combination: parameters, status, duration, exit code, id, results."""
    if isinstance(sweep_id, SweepIds):
        sweep_id = sweep_id.sweep_id
    sid = latest_sweep(s) if sweep_id is None else sweep_id
    record = _record(s, sid)
    pairs = combination_jobs(s, sid, record)
    param_names: list[str] = list(pairs[0][0]) if pairs else []
    fixed = set(SWEEP_COLUMNS)
    param_cols = {p: (f"param_{p}" if p in fixed else p) for p in param_names}
    results_dir = s.config.state_dir / "results"
    now = time.time()
    rows: list[dict[str, Any]] = []
    result_keys: dict[str, str] = {}
    for values, job in pairs:
        row: dict[str, Any] = {param_cols[p]: values.get(p) for p in param_names}
        row.update(_job_columns(job, now))
        if job is not None and job.status != JobStatus.QUEUED:
            for key, value in _read_result(results_dir / f"{job.id}.json").items():
                col = result_keys.get(key)
                if col is None:
                    taken = fixed | set(param_cols.values()) | set(result_keys.values())
                    col = f"result_{key}" if key in taken else key
                    result_keys[key] = col
                row[col] = value
        rows.append(row)
    columns = [*param_cols.values(), *SWEEP_COLUMNS, *result_keys.values()]
    df = pd.DataFrame(rows, columns=columns)
    for col in param_cols.values():
        df[col] = _numeric_if_possible(df[col])
    df["exit_code"] = df["exit_code"].astype("Int64")
    df["duration"] = df["duration"].astype(float)
    df.attrs["sweep"] = sid
    return df


def _job_columns(job: Job | None, now: float) -> dict[str, Any]:
    if job is None:  # its job was deleted from the store
        return {"status": None, "duration": None, "exit_code": None, "id": None}
    duration = None
    if job.started is not None:
        end = job.ended if job.ended is not None else now
        duration = max(0.0, end - job.started)
    return {
        "status": job.status.value,
        "duration": duration,
        "exit_code": job.exit_code,
        "id": job.id,
    }


def _read_result(path: os.PathLike[str]) -> dict[str, Any]:
    """The JSON object a job wrote; ``{}`` when it wrote none (or not a whole object)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _numeric_if_possible(col: pd.Series) -> pd.Series:
    import pandas as pd

    try:
        return pd.to_numeric(col)
    except (ValueError, TypeError):
        return col


def sweeps_frame(s: SweepSubmitter) -> pd.DataFrame:
    import pandas as pd

    """One row per sweep: its definition, its combinations, and per status the jobs
    that hold them (its own, or another sweep's that had already queued or done one)."""
    rows = []
    for sid, created, record in s.sweep_records():
        counts = _status_counts(s, sid, record)
        args = record.get("args") or ""
        if record.get("params"):
            args = f"{args} params={record['params']}".strip()
        rows.append(
            {
                "sweep": sid,
                "created": pd.Timestamp(created, unit="s", tz="UTC").tz_convert(local_zone()),
                "script": record.get("script"),
                "args": args if isinstance(args, str) else shlex.join(args),
                "combinations": len(record.get("combinations", ())),
                **counts,
            }
        )
    return pd.DataFrame(rows, columns=list(SWEEPS_COLUMNS))


def _status_counts(s: SweepSubmitter, sweep_id: str, record: dict[str, Any]) -> dict[str, int]:
    """How many of a sweep's combinations are in each status: one count of its own jobs
    when it queued every one (the usual case), else the status of each one's job (a
    sweep whose combinations another had run showed 0 in every status)."""
    counts = s.counts(sweep=sweep_id)
    if sum(counts.values()) >= len(record.get("combinations", ())):
        return counts
    held = dict.fromkeys(counts, 0)
    for _, job in combination_jobs(s, sweep_id, record):
        if job is not None:
            held[job.status.value] = held.get(job.status.value, 0) + 1
    return held
