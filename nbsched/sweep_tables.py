"""A sweep's jobs and its tables: which job stands for each combination, and
``GPUJobScheduler.sweep(id)`` / ``.sweeps()``.

``sweep(id)`` is one row per combination: its parameters, the status, duration and
exit code of the job that stands for it (the newest job with its hash, the sweep's own
first) and the keys of the JSON object that job wrote to the path in
``$NBSCHED_RESULT_FILE``.  ``wait(sweep=id)`` waits for those same jobs.

Read through a :class:`~nbsched.submitter.SweepSubmitter`, as :mod:`nbsched.sweeps`
submits through one.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from typing import TYPE_CHECKING, Any

from .errors import InvalidTypeError, InvalidValueError
from .frames import local_zone
from .jobs import Job, JobStatus
from .submitter import SweepSubmitter

if TYPE_CHECKING:
    import pandas as pd

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


def _checked_id(sweep_id: object) -> str:
    if not isinstance(sweep_id, str):
        raise InvalidTypeError(f"sweep_id={sweep_id!r}: expected a sweep id such as 'sw1'")
    return sweep_id


def _record(s: SweepSubmitter, sweep_id: object) -> dict[str, Any]:
    sweep_id = _checked_id(sweep_id)
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


def sweep_job_ids(s: SweepSubmitter, sweep_id: object) -> list[str]:
    """The ids of the jobs a sweep's table shows, each once: what ``wait(sweep=id)``
    waits for.  ``sweep_id``: an id, or what ``add_sweep`` returned."""
    sid = _checked_id(getattr(sweep_id, "sweep_id", sweep_id))  # (a SweepIds: its sweep)
    jobs = combination_jobs(s, sid)
    return list(dict.fromkeys(str(job.seq) for _, job in jobs if job is not None))


def sweep_frame(s: SweepSubmitter, sweep_id: object = None) -> pd.DataFrame:
    """One row per combination: parameters, status, duration, exit code, id, results."""
    import pandas as pd

    sweep_id = getattr(sweep_id, "sweep_id", sweep_id)  # (a SweepIds: its sweep)
    sid = latest_sweep(s) if sweep_id is None else _checked_id(sweep_id)
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
    """One row per sweep: its definition, its combinations, and per status the jobs
    that hold them (its own, or another sweep's that had already queued or done one)."""
    import pandas as pd

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
