"""Tables for people: jobs and GPUs as pandas DataFrames, and log tails."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .allocation import booked_share
from .errors import InvalidTypeError, InvalidValueError
from .gpus.base import GpuSnapshot
from .jobs import Job, JobStatus
from .store import TABLE_COLUMNS
from .store.estimates import GIVEN_ONLY, Estimator

if TYPE_CHECKING:
    import pandas as pd

#: The columns of ``GPUJobScheduler.jobs()``, in order.
JOB_COLUMNS = (
    "id",
    "status",
    "priority",
    "command",
    "required_gpus",
    "gpus",
    "submitted",
    "started",
    "ended",
    "exit_code",
    "attempts",
    "log",
    "name",
    "sweep",
    "node",
    "reason",
    "held",
    "after",
    "waiting",
    "estimate",
    "estimate_source",
    "eta",
    "gpu_memory_request",
    "gpu_memory",
    "gpu_memory_peak",
)

#: The columns of ``GPUJobScheduler.get_gpu_status()``, in order (memory in MiB, load 0..1).
GPU_COLUMNS = (
    "gpu",
    "name",
    "memory_used",
    "memory_total",
    "load",
    "allocated",
    "paused",
    "jobs",
    "memory_jobs",
    "memory_others",
    "who",
)


def parse_statuses(status: str | Iterable[str] | None) -> list[JobStatus] | None:
    if status is None:
        return None
    accepted = ", ".join([s.value for s in JobStatus] + ["ended", "active"])
    if isinstance(status, str):
        items: list[object] = [status]
    elif isinstance(status, Iterable) and not isinstance(status, (bytes, bytearray)):
        items = list(status)
    else:
        raise InvalidTypeError(
            f"status={status!r}: expected a status name or a list of them ({accepted}), "
            "or None for every job"
        )
    out = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidTypeError(f"status: {item!r} is not a status name ({accepted})")
        for part in item.split(","):
            part = part.strip().lower()
            if part == "ended":
                out += [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]
                continue
            if part == "active":
                out += [JobStatus.QUEUED, JobStatus.RUNNING]
                continue
            try:
                out.append(JobStatus(part))
            except ValueError:
                raise InvalidValueError(
                    f"status={part!r}: accepted values are {accepted}"
                ) from None
    return out


def local_zone() -> Any:
    """This machine's time zone (``TZ``, else the system's), the zone times are shown
    in: tz-aware, so they are not taken for UTC (``.timestamp()`` is right, and a
    comparison with another zone's time too).

    A named zone (``zoneinfo``) where one can be found: pandas formats times of dateutil's
    ``tzlocal()`` one at a time in Python (10,000 rows took seconds to print)."""
    key = os.environ.get("TZ", "").lstrip(":")
    if not key:
        target = os.path.realpath("/etc/localtime")
        key = target.split("/zoneinfo/", 1)[1] if "/zoneinfo/" in target else ""
    if key:
        try:
            from zoneinfo import ZoneInfo

            return ZoneInfo(key)
        except (KeyError, ValueError, OSError, ImportError):  # (unknown, or a POSIX TZ rule)
            pass
    from dateutil.tz import gettz, tzfile, tzlocal  # (pandas' own dependency)

    # (a POSIX rule such as "CET-1CEST,M3.5.0,M10.5.0/3" gives a tzstr, which pandas
    # cannot use: this process's own zone, as the C library reads the rule, can)
    zone = gettz()
    return zone if isinstance(zone, tzfile) else tzlocal()


def _ts(value: float | None) -> pd.Timestamp | None:
    import pandas as pd  # (lazily: `nbsched add` from a shell never needs it)

    if value is None:
        return None
    return pd.Timestamp(value, unit="s", tz="UTC").tz_convert(local_zone())


def job_row(job: Job, estimates: Estimator = GIVEN_ONLY) -> dict[str, Any]:
    """The row of :func:`jobs_frame` of one job, as a dict (``estimates``: where its
    estimate comes from; by default only its time limit or hint)."""
    row = _raw_row(job)
    row["estimate"], row["estimate_source"] = estimates.of_spec(job.spec)
    for col in _TIME_COLUMNS:
        row[col] = _ts(row[col])
    return row


_TIME_COLUMNS = ("submitted", "started", "ended", "eta")


def _raw_row(job: Job) -> dict[str, Any]:
    """:func:`job_row` with the times still in seconds since the epoch."""
    return {
        "id": job.id,
        "status": job.status.value,
        "priority": job.priority,
        "command": job.display_command(),
        "required_gpus": job.required_gpus,
        "gpus": list(job.gpus),
        "submitted": job.submitted,
        "started": job.started,
        "ended": job.ended,
        "exit_code": job.exit_code,
        "attempts": job.attempts,
        "log": job.log_path,
        "name": job.spec.name,
        "sweep": job.spec.sweep,
        "node": job.node,
        "reason": job.reason,
        "held": job.held,
        "after": job.spec.after,
        "waiting": job.waiting,
        # (when a queued job is expected to start: filled by the scheduler's jobs(),
        # from a replay of the head of the queue; see nbsched.scheduler_simulate)
        "eta": None,
        "gpu_memory_request": job.spec.gpu_memory_request,
        "gpu_memory": None,  # (current: filled in by the scheduler for a running job)
        "gpu_memory_peak": job.gpu_memory_peak,
    }


#: The text columns of the jobs table.
TEXT_COLUMNS = (
    "id", "status", "command", "log", "name", "sweep", "node", "reason", "after",
    "estimate_source",
)  # fmt: skip

#: The store's name (:data:`TABLE_COLUMNS`) of each jobs-table column that it renames.
_FROM_TABLE = {"id": "seq", "log": "log_path"}


def jobs_frame(rows: Sequence[Sequence[Any]], estimates: Estimator = GIVEN_ONLY) -> pd.DataFrame:
    """The jobs table (:data:`JOB_COLUMNS`) of rows as :meth:`Store.table` returns them
    (:data:`TABLE_COLUMNS`).

    Its column types are the same whether it has rows or not: ``priority`` and
    ``attempts`` int64, ``required_gpus`` float64, ``exit_code`` Int64 (``<NA>`` when
    there is none), ``submitted``/``started``/``ended`` datetime64[ns] in this machine's
    time zone (tz-aware; ``NaT`` for none),
    ``gpus`` lists, and the text columns (:data:`TEXT_COLUMNS`) the type pandas gives a
    column of strings, all with the same missing value: with pandas 3 its ``str`` type,
    where a missing text (a job with no ``name``, ``sweep``, ``node``, ``reason`` or
    ``log`` yet) is NaN; with pandas 2, ``object``, where it is None.  (``job(id)``, a
    dict, has None for each of them.)

    Built a column at a time from the raw values: no :class:`Job` per row, each column
    converted once, and the JSON columns (``args``, ``gpus``) decoded in one call each
    (100,000 queued jobs of a sweep: ~0.4 s of CPU, against ~0.55 s a value at a time
    and several seconds a :class:`Job` at a time).

    ``estimate`` (seconds, float64, NaN: none) and ``estimate_source`` (text) come from
    ``estimates`` (:mod:`nbsched.store.estimates`; by default a job's own time limit or
    hint only), looked up once per distinct set of grounds (a sweep's: once).
    """
    import pandas as pd

    raw = dict(zip(TABLE_COLUMNS, zip(*rows, strict=True), strict=True)) if rows else None
    text = _text_dtype()
    typed: dict[str, Any] = {}
    estimated: tuple[list[float | None], list[str | None]] | None = None
    for col in JOB_COLUMNS:
        if raw is None:
            values: Sequence[Any] = ()
        elif col == "command":
            values = _commands(raw)
        elif col == "gpus":
            values = _json_lists(raw["gpus"])
        elif col in ("estimate", "estimate_source"):
            if estimated is None:
                estimated = _estimates(raw, estimates)
            values = estimated[col == "estimate_source"]
        elif col == "eta":
            values = [None] * len(rows)
        elif col == "gpu_memory":  # (current: filled in by the scheduler)
            values = [None] * len(raw["seq"])
        else:
            values = raw[_FROM_TABLE.get(col, col)]
            if col == "id":
                values = list(map(str, values))
        if col in _TIME_COLUMNS:
            typed[col] = times(values)
        else:
            typed[col] = pd.Series(list(values), dtype=_JOB_DTYPES.get(col, text))
    return pd.DataFrame(typed)


#: The types of the jobs table's columns but its text and times.
_JOB_DTYPES: dict[str, Any] = {
    "priority": "int64",
    "required_gpus": "float64",
    "attempts": "int64",
    "exit_code": "Int64",
    "estimate": "float64",
    "gpus": object,
    "held": "bool",
    "waiting": "bool",
    "gpu_memory_request": "float64",
    "gpu_memory": "float64",
    "gpu_memory_peak": "float64",
}


def _estimates(
    raw: Mapping[str, Sequence[Any]], estimates: Estimator
) -> tuple[list[float | None], list[str | None]]:
    """The ``estimate`` and ``estimate_source`` columns (see :func:`jobs_frame`)."""
    known: dict[tuple[Any, ...], tuple[float | None, str | None]] = {}
    seconds, sources = [], []
    grounds = list(
        zip(raw["time_limit"], raw["expected_s"], raw["sweep"], raw["estimate_key"], strict=True)
    )
    estimates.prefetch(set(grounds))
    for ground in grounds:
        found = known.get(ground)
        if found is None:
            found = known[ground] = estimates.estimate(*ground)
        seconds.append(found[0])
        sources.append(found[1])
    return seconds, sources


def _json_lists(texts: Sequence[str]) -> list[list[Any]]:
    """JSON arrays (as the store writes them), decoded in one call: a list of its own for
    each (users may change one), ~10x faster than one ``json.loads`` a row."""
    return list(json.loads("[" + ",".join(texts) + "]"))


def _commands(raw: Mapping[str, Sequence[Any]]) -> list[str]:
    """The ``command`` column: :func:`nbsched.jobs.display_command` of each row.

    A script's arguments are a JSON array of strings; where none of its words needs
    quoting (no character ``shlex.quote`` quotes, no empty word: most sweeps), the line
    is cut from that text directly, without decoding it; other rows go through
    ``shlex.join`` as ``display_command`` does."""
    import shlex

    unsafe = re.compile(r"[^\w@%+=:,./-]", re.ASCII).search  # (what shlex.quote quotes)
    quoted: dict[str, str] = {}  # (each script's path quoted once)
    out = []
    rows = zip(
        raw["kind"], raw["command"], raw["script"], raw["args"], raw["conda_env"], strict=True
    )
    for kind, command, script, args, env in rows:
        if kind == "command":
            out.append(command or "")
            continue
        script = script or ""
        head = quoted.get(script) or quoted.setdefault(script, shlex.quote(script))
        inner = args[2:-2]  # (["a","b"] -> a","b: a quote or backslash in a word is unsafe)
        if args == "[]":
            line = head
        elif '""' not in args and unsafe(inner.replace('","', "")) is None:
            line = head + " " + inner.replace('","', " ")
        else:
            line = shlex.join([script, *json.loads(args)])
        out.append(f"[{env}] {line}" if env else line)
    return out


def _text_dtype() -> Any:
    """The type pandas gives a column of strings (pandas 3: ``str``; 2: ``object``)."""
    import pandas as pd

    return pd.Series(["x"]).dtype


def times(values: Sequence[float | None]) -> Any:
    """Seconds since the epoch (or None) as datetime64[ns] in :func:`local_zone`, at once
    (one array: numpy makes None NaN; ~7 us a value less than one by one, and half the
    time of going through a Series).  (pandas picks the unit from the values: s for none
    at all, us for whole seconds.)"""
    import numpy as np
    import pandas as pd

    seconds = np.array(values, dtype="float64")
    times = pd.to_datetime(seconds, unit="s", utc=True)
    return pd.Series(times.as_unit("ns").tz_convert(local_zone()))


def gpu_frame(
    snapshots: Sequence[GpuSnapshot], running: Sequence[Job], paused: Iterable[int]
) -> pd.DataFrame:
    import pandas as pd

    paused = set(paused)
    alloc: dict[int, float] = {}
    on: dict[int, list[str]] = {}
    for job in running:
        share = booked_share(job.required_gpus, len(job.gpus))
        for g in job.gpus:
            alloc[g] = alloc.get(g, 0.0) + share
            on.setdefault(g, []).append(job.id)
    rows = [
        {
            "gpu": s.index,
            "name": s.name,
            "memory_used": s.memory_used_mb,
            "memory_total": s.memory_total_mb,
            "load": s.load,
            "allocated": round(alloc.get(s.index, 0.0), 4),
            "paused": s.index in paused,
            "jobs": on.get(s.index, []),
            # (who holds the memory: filled in by the scheduler, see scheduler_memory)
            "memory_jobs": None,
            "memory_others": None,
            "who": None,
            **({"node": s.node} if s.node else {}),
        }
        for s in snapshots
    ]
    cols = list(GPU_COLUMNS) + (["node"] if any(s.node for s in snapshots) else [])
    return pd.DataFrame(rows, columns=cols)


def read_tail(path: str | None, lines: int | None) -> str:
    """The last ``lines`` lines of a file, reading only as much of its end as needed."""
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as fh:
        if lines is None:
            return fh.read().decode("utf-8", errors="replace")
        if lines == 0:
            return ""
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        block, data = 8192, b""
        pos = end
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
            block *= 2
    text = data.decode("utf-8", errors="replace")
    parts = text.splitlines(keepends=True)
    return "".join(parts[-lines:])
