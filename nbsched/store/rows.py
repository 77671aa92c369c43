"""The ``jobs`` table's columns, derived from :class:`Job` and :class:`JobSpec`, and
the encoding of a job to a row and back.

The columns are the dataclasses' fields, in their order: ``seq``, ``status``, the
spec's fields, then the rest of :class:`Job`'s (``id`` is ``seq`` as text).  Their
SQL types and how each is stored come from the fields' annotations: a tuple or a
mapping is JSON text, a bool an integer, ``| None`` a nullable column.  A field
added to a dataclass is thus a column everywhere (schema, insert, decode) at once.

Rows are read by position, in :data:`JOB_COLUMNS` order, and a job is built
without the dataclass ``__init__`` (as :meth:`Job.evolve` does): looking columns
up by name, and the frozen ``__init__``'s per-field work, made decoding several
times slower, and the engine decodes whole queues.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from ..errors import UnknownJobError
from ..jobs import Job, JobSpec, JobStatus, compact_json

#: The spec's fields, written once per job at submission.
SPEC_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(JobSpec))
#: What a run changes (and who submitted it, where it runs).
RUN_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Job) if f.name not in ("id", "seq", "status", "spec")
)
#: Every column of a job, in the order :func:`decode_job` reads them.
JOB_COLUMNS: tuple[str, ...] = ("seq", "status", *SPEC_COLUMNS, *RUN_COLUMNS)
JOB_SQL = ", ".join(JOB_COLUMNS)

#: The columns :meth:`Store.table` returns, in this order (:mod:`nbsched.frames` makes
#: them into the table users see).
TABLE_COLUMNS = (
    "seq", "status", "priority", "kind", "script", "args", "command", "conda_env",
    "required_gpus", "gpus", "submitted", "started", "ended", "exit_code", "attempts",
    "log_path", "name", "sweep", "node", "reason", "held", "after", "waiting",
    "time_limit", "expected_s", "estimate_key", "gpu_memory_request", "gpu_memory_peak",
)  # fmt: skip
TABLE_SQL = ", ".join(TABLE_COLUMNS)

#: The columns a transition (or an update of a running job) may set; the others are
#: the spec (fixed at submission), who submitted it and where, and those the store
#: itself keeps (``status``, ``reason``, ``rev``).  A keyword outside it is refused.
SETTABLE = frozenset({
    "started", "ended", "exit_code", "attempts", "gpus", "pid", "proc_start", "token",
    "log_path", "node", "not_before", "cancel_requested",
})  # fmt: skip

_SPEC_START = 2
_RUN_START = _SPEC_START + len(SPEC_COLUMNS)
_FIELD_TYPES: dict[str, str] = {
    f.name: str(f.type) for cls in (JobSpec, Job) for f in dataclasses.fields(cls)
}


def _base_type(name: str) -> str:
    """The annotation of field ``name`` without ``| None``."""
    return _FIELD_TYPES[name].split("|")[0].strip()


def nullable(name: str) -> bool:
    """Whether the field ``name`` may be None (a column without NOT NULL)."""
    return "| None" in _FIELD_TYPES[name]


def sql_type(name: str) -> str:
    """The column type of field ``name``: what SQLite stores its values as."""
    base = _base_type(name)
    if base in ("int", "bool"):
        return "INTEGER"
    return "REAL" if base == "float" else "TEXT"


#: JSON as the store writes it (compact, not ASCII-escaped; its encoder made once).
dumps: Callable[[Any], str] = compact_json


def _dump_seq(value: Sequence[Any]) -> str:
    return dumps(list(value)) if value else "[]"


def _dump_map(value: Any) -> str:
    return dumps(dict(value)) if value else "{}"


def _load_seq(text: str) -> tuple[Any, ...]:
    return () if text == "[]" else tuple(json.loads(text))


def _load_map(text: str) -> Any:
    return {} if text == "{}" else json.loads(text)


_STATUSES = {s.value: s for s in JobStatus}


def _codec(name: str) -> tuple[Callable[[Any], Any], Callable[[Any], Any]] | None:
    """(encode, decode) of a column's non-null values; None: stored as it is."""
    base = _base_type(name)
    if base.startswith("tuple["):
        return _dump_seq, _load_seq
    if base.startswith("Mapping["):
        return _dump_map, _load_map
    if base == "bool":
        return int, bool
    if base == "JobStatus":
        return attrgetter("value"), _STATUSES.__getitem__
    if base not in ("int", "float", "str"):  # (a new field's type: say how to store it)
        raise TypeError(f"the store cannot keep {name}: {_FIELD_TYPES[name]}; add a codec")
    return None


_CODECS = {name: c for name in JOB_COLUMNS if (c := _codec(name)) is not None}
_DECODERS = [(i, _CODECS[name][1]) for i, name in enumerate(JOB_COLUMNS) if name in _CODECS]
_SPEC_ENCODERS = [(i, _CODECS[name][0]) for i, name in enumerate(SPEC_COLUMNS) if name in _CODECS]
_spec_values = attrgetter(*SPEC_COLUMNS)
_RUN_DEFAULTS = {
    name: f.default for f in dataclasses.fields(Job) if (name := f.name) in RUN_COLUMNS
}


def run_default_sql(name: str) -> str | None:
    """The SQL default of a run column (its dataclass default), None: NULL."""
    value = _RUN_DEFAULTS[name]
    if value is None or value is dataclasses.MISSING:
        return None
    if name in _CODECS:
        value = _CODECS[name][0](value)
    return f"'{value}'" if isinstance(value, str) else str(value)


def encode_spec(spec: JobSpec) -> list[Any]:
    """The spec's column values, in :data:`SPEC_COLUMNS` order."""
    values = list(_spec_values(spec))
    for i, encode in _SPEC_ENCODERS:
        value = values[i]
        if value is not None:
            values[i] = encode(value)
    return values


def encode_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Column values of the run ``fields`` a caller sets (names from :data:`SETTABLE`)."""
    unknown = fields.keys() - SETTABLE
    if unknown:
        raise TypeError(
            f"the store does not set {', '.join(sorted(unknown))} on a job; settable: "
            f"{', '.join(sorted(SETTABLE))}"
        )
    out = dict(fields)
    for key, value in fields.items():
        if value is not None and key in _CODECS:
            out[key] = _CODECS[key][0](value)
    return out


def normalized(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as a :class:`Job` holds them (a tuple of GPUs, a bool)."""
    out = dict(fields)
    if out.get("gpus") is not None:
        out["gpus"] = tuple(out["gpus"])
    if "cancel_requested" in out:
        out["cancel_requested"] = bool(out["cancel_requested"])
    return out


_JOB_NAMES = ("id", "seq", "status", "spec", *RUN_COLUMNS)


def decode_job(row: Sequence[Any]) -> Job:
    """The job of a row of :data:`JOB_COLUMNS`."""
    values = list(row)
    for i, decode in _DECODERS:
        value = values[i]
        if value is not None:
            values[i] = decode(value)
    spec = object.__new__(JobSpec)
    spec.__dict__.update(zip(SPEC_COLUMNS, values[_SPEC_START:_RUN_START], strict=True))
    job = object.__new__(Job)
    seq = values[0]
    job.__dict__.update(
        zip(_JOB_NAMES, (str(seq), seq, values[1], spec, *values[_RUN_START:]), strict=True)
    )
    return job


def new_jobs(
    now: float, owner_uid: int, executor: str, environment: int | None = None
) -> Callable[[int, JobSpec], Job]:
    """``make(seq, spec)``: a job just submitted, as its row says (without reading it
    back), built on the fields every job of one submission shares."""
    shared = {
        **_RUN_DEFAULTS,
        "status": JobStatus.QUEUED,
        "submitted": now,
        "owner_uid": owner_uid,
        "executor": executor,
        "environment": environment,
    }

    def make(seq: int, spec: JobSpec) -> Job:
        job = object.__new__(Job)
        fields = job.__dict__
        fields.update(shared)
        fields["id"], fields["seq"], fields["spec"] = str(seq), seq, spec
        return job

    return make


def parse_job_id(job_id: object) -> int:
    """The row number behind a job id (``"17"`` or ``17``)."""
    if isinstance(job_id, bool):
        raise UnknownJobError(f"no job {job_id!r}: job ids are numbers like '17'")
    if isinstance(job_id, int):
        return job_id
    if isinstance(job_id, str) and job_id.strip().isdigit():
        return int(job_id.strip())
    raise UnknownJobError(f"no job {job_id!r}: job ids are numbers like '17'")
