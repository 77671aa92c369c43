"""Jobs: the :class:`Job` record, its :class:`JobStatus` and the allowed transitions.

A job is one command run on some GPUs.  Its record is immutable here; the store
(:mod:`nbsched.store`) holds the current version and every transition.

Statuses and the transitions between them (written down once, enforced by the store)::

    queued   -> running | cancelled
    running  -> succeeded | failed | cancelled | queued   (retry, or a spawn that never happened)
    succeeded | failed | cancelled -> queued               (an explicit ``retry(id)``)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def ended(self) -> bool:
        return self in ENDED_STATUSES


ENDED_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
    ),
    JobStatus.SUCCEEDED: frozenset({JobStatus.QUEUED}),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),
}


def can_transition(old: JobStatus, new: JobStatus) -> bool:
    return new in TRANSITIONS[old]


@dataclass(frozen=True)
class JobSpec:
    """What a user asked for: everything needed to run a job, nothing about its run.

    ``kind`` is ``"script"`` (``python -u script args`` or ``bash script args``)
    or ``"command"`` (``bash -c command``).
    """

    kind: str
    required_gpus: float
    priority: int = 0
    script: str | None = None
    args: tuple[str, ...] = ()
    command: str | None = None
    conda_env: str | None = None
    allowed_gpus: tuple[int, ...] | None = None
    max_retries: int = 0
    launcher: str | None = None
    gpu_arg: str | None = None
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    name: str | None = None
    sweep: str | None = None
    params: Mapping[str, Any] | None = None
    hash: str | None = None
    #: What the job waits for before it may start (:mod:`nbsched.formats.after`'s
    #: canonical text, ``ok:12,13``); None: nothing.
    after: str | None = None
    #: Seconds the job may run; at the limit it is ended as a cancel is (SIGTERM to its
    #: process tree, SIGKILL after the grace) and fails with the reason ``time limit``.
    time_limit: float | None = None
    #: Seconds the submitter expects it to run: a hint for the plan, it ends nothing.
    expected_s: float | None = None
    #: Which ended jobs it is like, for a learned estimate (:mod:`nbsched.store.durations`):
    #: ``"script:"`` + a digest of the script and its argument names, or ``"command:"``
    #: + a digest of the command.
    estimate_key: str | None = None
    #: Where its end is announced: the notifiers as JSON (:mod:`nbsched.notify`);
    #: None: the engine's default, ``"[]"``: nowhere.
    notify: str | None = None
    #: GPU memory asked for (MiB, on each of its GPUs): it starts only where that is free.
    gpu_memory_request: float | None = None

    def evolve(self, **changes: Any) -> JobSpec:
        """A copy with ``changes``, as :meth:`Job.evolve` (a sweep makes one per
        combination from its validated first spec: :func:`dataclasses.replace` was
        a sixth of its time)."""
        unknown = changes.keys() - _SPEC_FIELDS
        if unknown:
            raise TypeError(f"JobSpec has no field(s) {', '.join(sorted(unknown))}")
        new = object.__new__(JobSpec)
        fields = new.__dict__  # (frozen: assignment is refused, the dict is not)
        fields.update(self.__dict__)
        fields.update(changes)
        return new


@dataclass(frozen=True)
class Job:
    """One job as the store holds it: the spec plus where it stands."""

    id: str
    seq: int
    status: JobStatus
    spec: JobSpec
    submitted: float
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    attempts: int = 0
    gpus: tuple[int, ...] = ()
    pid: int | None = None
    proc_start: float | None = None
    log_path: str | None = None
    reason: str | None = None
    owner_uid: int | None = None
    executor: str | None = None
    node: str | None = None
    not_before: float | None = None
    #: A random value per attempt, set as ``NBSCHED_JOB_TOKEN`` in the job's environment:
    #: how the engine finds the job's processes and its exit-code file.
    token: str | None = None
    cancel_requested: bool = False
    #: The number of the submitter's stored environment the job starts from (see
    #: :func:`nbsched.launch.capture_env`); None: the engine's.
    environment: int | None = None
    #: Held by its owner (:meth:`~nbsched.scheduler.GPUJobScheduler.hold`): a queued
    #: job that no dispatcher starts until it is released.
    held: bool = False
    #: The number of the job's set of dependencies (:mod:`nbsched.store.deps`), shared
    #: by the jobs submitted together with the same ``after``; None: it has none.
    dep_group: int | None = None
    #: Whether a dependency is still unmet: a queued job that no dispatcher starts yet.
    waiting: bool = False
    #: What earlier runs of its kind peaked at (MiB), looked up at submission
    #: (:mod:`nbsched.gpus.peaks`): its charge where it has no request.
    gpu_memory_learned: float | None = None
    #: The most GPU memory (MiB, on one GPU) seen held by this job's processes.
    gpu_memory_peak: float | None = None
    #: It ran out of GPU memory and was queued once more with more room (once only).
    oom_retried: bool = False

    def evolve(self, **changes: Any) -> Job:
        """A copy with ``changes``: :func:`dataclasses.replace` without its per-field
        work (~6x faster), for the dispatcher's path, which copies each job it starts a
        few times.  Job has no ``__post_init__`` for this to skip."""
        unknown = changes.keys() - _JOB_FIELDS
        if unknown:
            raise TypeError(f"Job has no field(s) {', '.join(sorted(unknown))}")
        new = object.__new__(Job)
        fields = new.__dict__  # (frozen: assignment is refused, the dict is not)
        fields.update(self.__dict__)
        fields.update(changes)
        return new

    # Convenience pass-throughs, so callers need not reach into ``spec``.
    @property
    def priority(self) -> int:
        return self.spec.priority

    @property
    def required_gpus(self) -> float:
        return self.spec.required_gpus

    @property
    def allowed_gpus(self) -> tuple[int, ...] | None:
        return self.spec.allowed_gpus

    # What the plan reads of its run time (nbsched.allocation.QueuedJob; for a running
    # job, nbsched.backfill.running_of): its time limit, else its hint.  (A learned
    # estimate needs the store: the dispatcher's entries carry it, see
    # nbsched.store.estimates.)
    @property
    def estimate_s(self) -> float | None:
        return self.spec.time_limit if self.spec.time_limit is not None else self.spec.expected_s

    @property
    def estimate_source(self) -> str | None:
        if self.spec.time_limit is not None:
            return "time limit"
        return "hint" if self.spec.expected_s is not None else None

    def display_command(self) -> str:
        """The command as a user would type it."""
        s = self.spec
        return display_command(s.kind, s.command, s.script, s.args, s.conda_env)


_JOB_FIELDS = frozenset(f.name for f in fields(Job))
_SPEC_FIELDS = frozenset(f.name for f in fields(JobSpec))


def display_command(
    kind: str, command: str | None, script: str | None, args: Sequence[str], conda_env: str | None
) -> str:
    """A job's command as a user would type it (``[env] script 'arg'`` for a script)."""
    if kind == "command":
        return command or ""
    import shlex

    text = shlex.join([script or "", *args])
    if conda_env:
        text = f"[{conda_env}] {text}"
    return text


def job_hash(
    script: str,
    conda_env: str | None,
    args: Sequence[str],
    allowed_gpus: Sequence[int] | None,
) -> str:
    """Identity of a jobs-file line: script, env, arguments *in their order*, allowed GPUs.

    The original program sorted the arguments, so ``--lr 1 --bs 2`` and
    ``--lr 2 --bs 1`` collided; here order matters.
    """
    return job_hasher(script, conda_env, allowed_gpus)(args)


def _compact_json() -> Callable[[Any], str]:
    """``json.dumps(value, ensure_ascii=False, separators=(",", ":"))``, 3x faster: its
    C encoder made once, not once a call (and without the check for a value that holds
    itself, which none of a job's does)."""
    plain = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # (an interpreter without json's C part)
        return plain.encode
    encode = make(
        None, plain.default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )

    def dumps(value: Any) -> str:
        return "".join(encode(value, 0))

    return dumps


#: JSON as the store writes it and a job's hash is made of.
compact_json: Callable[[Any], str] = _compact_json()


def job_hasher(
    script: str, conda_env: str | None, allowed_gpus: Sequence[int] | None
) -> Callable[[Sequence[str]], str]:
    """:func:`job_hash` of jobs that differ only in their arguments (a sweep's), as a
    function of the arguments: the payload's other parts are encoded once."""
    head = compact_json([script, conda_env or ""])[:-1] + ","
    tail = "," + compact_json(list(allowed_gpus) if allowed_gpus else None) + "]"
    sha256 = hashlib.sha256

    def digest(args: Sequence[str]) -> str:
        payload = head + compact_json(list(args)) + tail
        return sha256(payload.encode("utf-8")).hexdigest()[:32]

    return digest
