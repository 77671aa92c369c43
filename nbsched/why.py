"""``why(job_id)``: why a queued job has not started, in words.

The answer comes from the queue, the running jobs, the pauses and the GPUs as they
are now, by the dispatcher's own rules (:func:`nbsched.allocation.explain_one`), so
any process can ask, the dispatching one or not.  Only the jobs ahead of the one asked
about count, and of those only as many as the plan takes before nothing is left to
hand out: they are read a page at a time, light, in dispatch order
(:meth:`~nbsched.store.queue_read.QueueReadPart.queued_ahead`), so ``why()`` of a job
behind 100,000 others reads a page or a few, not the whole queue.

:class:`Why` keeps the GPUs' states and its answers while the store's revision is
unchanged, for at most :data:`MAX_AGE_S` (the GPUs change by themselves): a status
that lists several waiting jobs reads the GPUs once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast, overload

from .allocation import GpuState, _clock, explain_one, gpu_states, plan
from .backfill import Policy, running_of
from .dispatcher.memory import MemoryBook
from .executors.slurm import why_slurm
from .formats.after import describe_unmet
from .gpus.base import GpuSnapshot
from .gpus.memory_fit import MemoryFit
from .jobs import Job, JobStatus
from .simulation import queue_replay
from .store import Store
from .store.estimates import Estimator

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

#: (whether this process dispatches, and its dispatcher's first job in line and since when)
Lined = tuple[bool, "tuple[str, float] | None"]

#: ``why()`` replays the queue ahead of a job for its expected start only where at
#: most this many jobs are ahead of it.
ETA_AHEAD = 100

#: How ``why()`` says the expected start its replay of the queue found.
REPLAYED = "expected to start ≈ {} (by the estimates, if nothing else arrives)"

#: How long reasons worked out at one store revision are kept (for the GPUs' changes).
MAX_AGE_S = 1.0

#: What :meth:`Why.why` says of a held job.
HELD = "held (release it with release(...))"
NO_ENGINE = " (no engine runs on this state directory: nothing starts until one does)"


def lined(dispatcher: Dispatcher | None) -> Lined:
    """What :class:`Why` is told of this process's ``dispatcher`` (None: none here)."""
    return (False, None) if dispatcher is None else (True, dispatcher.head_since)


class _Ahead(Sequence[Job]):
    """The queue up to ``job``, in dispatch order: the jobs ahead of it, read lazily
    (a page at a time, as iterated), then ``job``.  :func:`plan` iterates it once and
    stops where it stops; indexing or ``len`` reads the rest."""

    def __init__(self, store: Store, job: Job) -> None:
        self._pages: Iterator[Job] | None = store.queued_ahead(job.priority, job.seq)
        self._job = job
        self._read: list[Job] = []

    def __iter__(self) -> Iterator[Job]:
        yield from self._read
        while self._pages is not None:
            for ahead in self._pages:
                self._read.append(ahead)
                yield ahead
            self._pages = None
            self._read.append(self._job)
            yield self._job

    def _all(self) -> list[Job]:
        for _ in self:
            pass
        return self._read

    def __len__(self) -> int:
        return len(self._all())

    @overload
    def __getitem__(self, index: int) -> Job: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Job]: ...
    def __getitem__(self, index: int | slice) -> Job | Sequence[Job]:
        return self._all()[index]


class _Planned(NamedTuple):
    """A queued job as ``why()``'s plan sees it (:class:`~nbsched.allocation.QueuedJob`),
    with the estimate the dispatcher's entries give it: learned ones too."""

    id: str
    seq: int
    priority: int
    required_gpus: float
    allowed_gpus: tuple[int, ...] | None
    not_before: float | None
    estimate_s: float | None
    estimate_source: str | None

    @classmethod
    def of(cls, job: Job, learned: Estimator) -> _Planned:
        spec = job.spec
        return cls(
            job.id,
            job.seq,
            spec.priority,
            spec.required_gpus,
            spec.allowed_gpus,
            job.not_before,
            *learned.of_grounds((spec.time_limit, spec.expected_s, spec.sweep, spec.estimate_key)),
        )


class _Lazy(Iterable[_Planned]):
    """The jobs of ``queue`` (an :class:`_Ahead`), each as a :class:`_Planned`, as
    iterated (the plan reads no further than it needs)."""

    def __init__(self, queue: Iterable[Job], learned: Estimator) -> None:
        self._queue = queue
        self._learned = learned

    def __iter__(self) -> Iterator[_Planned]:
        return (_Planned.of(job, self._learned) for job in self._queue)


class Why:
    """Explains the queue of ``store``.

    ``snapshot()``: the GPUs' readings now; ``rules()``: the placement rules in force
    (those of :data:`nbsched.engine.record.PLACEMENT_RULES`, of the engine that
    places the jobs); ``engine_pid()``: the dispatching engine's pid, None if none runs;
    ``first_in_line()``: whether this process dispatches, and its dispatcher's
    ``head_since`` (see :func:`nbsched.allocation.plan`).
    """

    def __init__(
        self,
        store: Store,
        snapshot: Callable[[], Sequence[GpuSnapshot]],
        rules: Callable[[], Mapping[str, Any]],
        engine_pid: Callable[[], int | None],
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
        first_in_line: Callable[[], Lined] = lambda: (False, None),
    ) -> None:
        self._store = store
        self._snapshot = snapshot
        self._rules = rules
        self._engine_pid = engine_pid
        self._clock = clock
        self._now = now
        self._first_in_line = first_in_line
        #: (revision, when, GPU states, precision, the answers given at that revision)
        self._seen: tuple[int, float, list[GpuState], float, dict[str, str]] | None = None
        #: The estimates, as the dispatcher's (kept while the revision is unchanged: a
        #: job's end, which teaches a new estimate, moves it on).
        self._learned: tuple[int, Estimator] | None = None
        self._book, self._fit = MemoryBook(store), cast("MemoryFit | None", None)  # (issue 14)

    def why(self, job_id: str) -> str:
        """Why job ``job_id`` has not started (or what it is, if it is not queued)."""
        job = self._store.get(job_id)
        if job.status == JobStatus.RUNNING and job.executor == "slurm":
            return why_slurm(job, Path(self._store.path).parent / "run")  # Slurm's reason
        if job.status != JobStatus.QUEUED:
            return f"job {job.id} is {job.status.value}"
        if job.held:
            return HELD
        if job.waiting and job.dep_group is not None:
            return describe_unmet(self._store.unmet_dependencies(job.dep_group))
        reason = self.reason(job)
        if self._engine_pid() is None:
            reason += NO_ENGINE
        return reason

    def reason(self, job: Job) -> str:
        """:func:`explain_one` for the queued ``job``, worked out once per store
        revision (and at most once per :data:`MAX_AGE_S`)."""
        rev = self._store.revision()
        at = self._clock()
        seen = self._seen
        if seen is None or seen[0] != rev or at - seen[1] >= MAX_AGE_S:
            rules, reading = self._rules(), self._snapshot()
            states = gpu_states(
                reading,
                self._store.allocation(),
                self._store.paused(),
                rules["gpu_memory_threshold"],
                rules["gpu_load_threshold"],
            )
            seen = self._seen = (rev, at, states, rules["gpu_allocation_precision"], {})
            self._fit = self._book.fit(reading)  # (GPU memory requests: issue 14)
        _, _, states, precision, answers = seen
        if self._learned is None or self._learned[0] != rev:
            self._learned = (rev, Estimator(self._store))
        if job.id not in answers:
            text = self._explain(job, states, precision, self._learned[1])
            answers[job.id] = name_unusable(text, states, job.allowed_gpus)
        return answers[job.id]

    def _explain(
        self, job: Job, states: list[GpuState], precision: float, learned: Estimator
    ) -> str:
        """:func:`explain_one` by the engine's policy, with the jobs' estimates as the
        dispatcher has them (learned ones too, queued and running) and the first job in
        line's time of queueing (for ``reserve_after_s``)."""
        queue, now = _Ahead(self._store, job), self._now()
        planned = _Lazy(queue, learned)
        busy = self._store.find(statuses=[JobStatus.RUNNING])
        running = [running_of(r, learned.of_spec(r.spec)) for r in busy]
        policy = Policy(reserve_after_s=float(self._rules().get("reserve_after_s", 0.0)))
        dispatching, since = self._first_in_line()
        if policy.reserve_after_s > 0 and not dispatching:
            # (another process's dispatcher knows since when its first job in line has
            # been there; this one counts from that job's submission: the soonest)
            first = plan(planned, states, now, precision, running=running, policy=policy)
            if first.head_waiting is not None:
                head_id = first.head_waiting[0]
                head = next((j for j in queue if j.id == head_id), None)
                since = (head_id, head.submitted) if head is not None else None
        text = explain_one(
            planned,
            _Planned.of(job, learned),
            states,
            now,
            precision,
            running=running,
            policy=policy,
            head_since=since,
            memory=self._fit,
        )
        if "≈" in text or not all(g.eligible for g in states):
            return text  # (the plan's own expected start; the replay knows no pause)
        ahead = list(islice(queue, ETA_AHEAD + 1))
        if len(ahead) > ETA_AHEAD:
            return text
        replayed = queue_replay(
            ahead, busy, len(states), policy, precision, now, since, learned.of_spec
        )
        start = replayed.outcomes[job.id].start
        if start is None or start <= now:
            return text
        return f"{text}; {REPLAYED.format(_clock(start))}"


#: The allocator's words for "some GPUs take no job", which :func:`name_unusable`
#: replaces with which GPUs and why.
_VAGUE = ("(others paused or busy elsewhere)", "(paused, or busy with others' work)")


def name_unusable(text: str, states: Sequence[GpuState], allowed: Sequence[int] | None) -> str:
    """``text`` with the allocator's vague "(paused, or busy with others' work)" made
    exact: which GPUs are paused, and which are busy with others' work and how
    (of the job's allowed GPUs where the words are about those)."""
    for phrase in _VAGUE:
        if phrase in text:
            own = not text.startswith("job ")  # (not "job 9 comes first (...)": its GPUs)
            named = unusable_gpus(states, allowed if own else None)
            text = text.replace(phrase, f"({named})") if named else text
    return text


def unusable_gpus(states: Sequence[GpuState], among: Sequence[int] | None = None) -> str:
    """``GPU 0,1 paused; GPU 2 busy with others' work (load from others 95% > 90%)``
    ("" if none is)."""
    chosen = [g for g in states if among is None or g.index in among]
    paused = [str(g.index) for g in chosen if g.paused]
    parts = [f"GPU {','.join(paused)} paused"] if paused else []
    parts += [
        f"GPU {g.index} busy with others' work ({g.blocked})"
        for g in chosen
        if not g.paused and g.blocked
    ]
    return "; ".join(parts)


__all__ = ["HELD", "MAX_AGE_S", "NO_ENGINE", "Why", "lined", "name_unusable", "unusable_gpus"]
