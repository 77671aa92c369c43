"""The dispatcher: the thread that starts queued jobs and records how they end.

It runs in the one process that holds the state directory's lease
(:mod:`nbsched.engine.lease`).  It sleeps in ``select`` until something happens: a
submission, cancel, pause or resume in this process (a byte on a pipe) or in
another one (a byte on the FIFO), or a job's end (the process watcher).  Then it
reads the jobs written since its last look (:meth:`Store.queue_changes`), calls
the pure :func:`nbsched.allocation.plan`, and starts what the plan says.  The only
timed wake-ups are a retry's back-off, a re-read of the GPUs while some job waits
for them (other users' load can only be polled), and a slow safety net.  A wake-up
that brought only this process's submissions, none of which fits on any GPU now
(every GPU full), takes no turn: nothing can start before a job ends, and that end's
turn (or the next timed one) queues them.

One turn is :meth:`Dispatcher.cycle`, given the wall and monotonic clocks (a test
drives it with fake ones): :mod:`.queue`, :mod:`.ends`, :mod:`.starts`; after a crash,
:mod:`.recovery`.  Test hook: with ``NBSCHED_TEST_CRASH_AT=POINT[:N]`` the engine
SIGKILLs itself the N-th time (default 1st) it reaches POINT (``after_mark_running``,
``after_spawn``, before the pid is recorded, or ``before_record_end``); only
``tests/reliability`` sets it, and unset it costs one ``None`` check per launch.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
import uuid
from collections.abc import Callable

from ..allocation import could_start, gpu_states, most_room, plan
from ..backfill import Policy, first_in_line
from ..config import SchedulerConfig
from ..errors import StateDirError
from ..executors.base import Executor, Exit, Started
from ..gpus.monitor import GPUMonitor
from ..jobs import Job, JobStatus
from ..store import AttemptEnd, AttemptStart, Store
from ..store.estimates import Estimator
from .entries import Entries
from .handoff import hand_off, hands_off
from .inbox import Inbox
from .memory import attempt_end, memory_fit
from .queue import QueueCache
from .recovery import recover
from .starts import Executors, Starts, Unrecorded, kill_cancelled, pid_records

logger = logging.getLogger(__name__)

SAFETY_NET_S = 2.0

#: What one cycle wrote: the status each end was recorded with, the running job each
#: start became (None where it no longer applied), the jobs whose pids were not written.
Recorded = tuple[list[JobStatus | None], list[Job | None], set[int]]


class Dispatcher:
    """The loop of the engine holding the lease: :meth:`run` in its own thread, woken by
    :meth:`wake` / :meth:`offer` (this process) or the FIFO (others), stopped by
    :meth:`stop`.  Its state lives in the queue cache, the inbox and the starts."""

    def __init__(
        self,
        config: SchedulerConfig,
        store: Store,
        monitor: GPUMonitor,
        executor_for: Callable[[str], Executor],
        fifo_fd: int,
        on_change: Callable[[list[int]], None],
    ) -> None:
        self.config = config
        self.store = store
        self.monitor = monitor
        self._fifo_fd = fifo_fd
        self._on_change = on_change
        self._rpipe, self._wpipe = os.pipe()
        os.set_blocking(self._rpipe, False)
        os.set_blocking(self._wpipe, False)
        self._stop = threading.Event()
        self._estimates = Estimator(store)  # (the queue's estimates: see store.estimates)
        self._cache = QueueCache(config.retry_backoff_s, estimates=self._estimates)
        self.inbox = self._inbox = Inbox(estimates=self._estimates)  # (offers: engine.core)
        self._executors = Executors(executor_for, self._on_started)
        self._starts = Starts(config, store, self._cache, self._inbox, self._executors)
        #: Why the queue's head waits, and the GPUs held for it (for status displays).
        self.head_waiting: tuple[str, str] | None = None
        self.reserved: dict[int, str] = {}
        self._policy = Policy(reserve_after_s=config.reserve_after_s)
        #: The first job in line that cannot start, and since when (see plan()).
        self.head_since: tuple[str, float] | None = None
        #: Cycles run (recovery is done once the first has).
        self.cycles = 0
        #: Whether the store may hold changes this dispatcher has not read: set by a
        #: wake-up through the FIFO or a marked one through the pipe (every writer sends
        #: one after its commit), a timed turn, and a turn whose writes did not all
        #: apply.  A turn woken only by ends, pids or this process's submissions (taken
        #: from memory) skips reading the store: it knows those writes.
        self._dirty = True
        #: Whether a wake-up other than a submission's came since the loop last looked
        #: (a cancel, a pause, another process's write): see _only_submissions.
        self._asked = False
        #: The most a new job could get of one GPU, as the last plan that started
        #: nothing found the GPUs (None: unknown, plan).  Submissions that cannot fit
        #: in it cannot start before a job ends (an end wakes the loop) or the GPUs
        #: change (a timed turn): their wake-ups need no turn.
        self._room: float | None = None
        self._thread_id: int | None = None

    # -- wake-ups -------------------------------------------------------------------------

    def wake(self) -> None:
        self._asked = True
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._wpipe, b"x")
        except OSError:  # (BlockingIOError: full, a wake-up is pending anyway)
            pass

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    def close(self) -> None:
        for fd in (self._rpipe, self._wpipe):
            try:
                os.close(fd)
            except OSError:
                pass

    def offer(self, rev: int, jobs: list[Job] | Entries) -> None:
        """Jobs this process just stored at ``rev`` (or their entries): taken, not read back."""
        self._inbox.offer(rev, jobs)
        self._poke()

    def _on_exit(self, job: Job, exit: Exit) -> None:
        """From an executor (in this thread when it drives the process watcher; in a
        thread of its own otherwise) or at recovery: an attempt ended.  The next cycle
        records it (with the other ends and starts of that cycle, in one transaction);
        its exit file is deleted once that is committed."""
        self._inbox.add_end(job, exit)
        if threading.get_ident() != self._thread_id:
            self.wake()  # (in this thread, the loop runs a cycle next anyway)

    def _on_started(self, executor: Executor, job: Job, started: Started) -> None:
        """From an executor: where a started attempt turned out to run (see
        :meth:`Executor.report_starts`).  Written with the next pids."""
        self._inbox.add_identified(job, started, executor)
        if threading.get_ident() != self._thread_id:
            self._poke()

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        sel = self._executors.sel = selectors.DefaultSelector()
        sel.register(self._rpipe, selectors.EVENT_READ)
        sel.register(self._fifo_fd, selectors.EVENT_READ)
        self._thread_id = threading.get_ident()
        try:
            self.recover()
            due = time.monotonic()  # the next cycle, at the latest
            while not self._stop.is_set():
                ready, asked = self._wait(sel, due)
                if self._stop.is_set():
                    break
                # (read after the pipe: a waker sets it before writing the pipe)
                other, self._asked = self._asked, False
                if other:
                    self._dirty = True
                later = self._no_turn_until(bool(ready), asked, other, due)
                if later is not None:
                    due = later
                    continue
                if time.monotonic() >= due:
                    self._dirty = True  # (a timed turn: back-offs, GPUs, the safety net)
                try:
                    due = time.monotonic() + self.cycle(time.time(), time.monotonic())
                except Exception:
                    logger.exception("dispatcher cycle failed; retrying in 1 s")
                    due = time.monotonic() + 1.0
        finally:
            if self._starts.waiting():
                self._starts.record(wait=True)
            sel.close()

    def _wait(self, sel: selectors.BaseSelector, due: float) -> tuple[bool, bool]:
        """Sleep until a wake-up or ``due``; handle what came.  Returns whether anything
        came, and whether a submission, cancel, pause, ... came (the pipe or the FIFO)."""
        timeout = max(0.0, due - time.monotonic())
        # (an end reported in this thread, e.g. at recovery, did not wake it)
        pending = self._starts.waiting() or self._inbox.pending()
        ready = sel.select(0.0 if pending else timeout)
        if any(key.data is not None for key, _ in ready):
            self._starts.stamp(wait=False)  # (before the ends below are handled)
        if self._starts.waiting() and not self._inbox.new_ends and not ready and timeout > 0:
            # Nothing else to do: write the new pids known now, then sleep.  (When
            # something is ready, the cycle's own transaction takes them; a pid
            # that comes later wakes the loop, as a job's end does.)
            self._starts.record()
            ready = sel.select(max(0.0, due - time.monotonic()))
        asked = False
        for key, _ in ready:
            if key.data is None:
                _drain(key.fd)
                asked = True
                if key.fd == self._fifo_fd:
                    self._asked = True  # (another process's write)
            else:
                try:
                    key.data()  # an executor's jobs ended, or their pids came
                except Exception:
                    logger.exception("reading the ends of jobs failed")
        return bool(ready), asked

    def _no_turn_until(self, ready: bool, asked: bool, other: bool, due: float) -> float | None:
        """None: take a turn now.  Else this wake-up needs none, and the next turn is due
        at the time returned."""
        if not ready or self._inbox.new_ends or time.monotonic() >= due:
            return None
        if not (asked or other):
            return due  # only pids came: written at the top of the next turn
        if not other and self._only_submissions():
            # Queued at the next turn; it comes within a GPU-monitor interval at the
            # latest, as for any job waiting for a GPU.
            return min(due, time.monotonic() + self._queue_wait_s())
        return None

    def _only_submissions(self) -> bool:
        """Whether the jobs this process submitted since the last turn (when they are
        all its wake-ups brought) can all not start now, no GPU having room for any:
        a turn would only queue them, and the next one (at a job's end, or a timed
        one) does that as well."""
        if self._room is None:
            return False
        # (those offered before were found unable to start by earlier turns, and the
        # room has not changed since: a turn would have taken them in)
        least = self._inbox.take_unchecked()
        precision = self.config.gpu_allocation_precision
        return least is None or not could_start(least, self._room, precision)

    def _queue_wait_s(self) -> float:
        """How long a queued job waits at most before the next look at the GPUs."""
        return max(self.config.gpu_monitor_interval_s, 0.05)

    # -- one turn -------------------------------------------------------------------------

    def cycle(self, now: float, mono: float) -> float:
        """One decision at wall-clock ``now``, monotonic ``mono``: record the ends
        reported since the last one, refresh the caches, plan, start.  Returns how long
        to sleep at most.

        The ends and the starts of one cycle are written in one transaction (ends
        first), with the pids of the attempts the previous cycle started; the pids of
        this cycle's go into the next one, or into a transaction of their own when the
        loop has nothing else to do.  A busy queue costs one commit per cycle however
        many jobs end and start in it.
        """
        ended = self._inbox.take_ends()
        unrecorded = self._starts.take_known()
        try:
            self._read_changes(now, mono)
            ends = [self._decide_end(job, exit, now) for job, exit in ended]
            starts = self._plan(now, mono, gone={end.job.id for end in ends})
            recorded = self._record(ends, starts, unrecorded, now)
        except BaseException as exc:
            return self._unwritten(exc, ended, unrecorded)
        statuses, running, missed = recorded
        self._took(statuses, running)
        # (jobs that ran before: queued again by a retry(), their log kept)
        reruns = {st.job.id for st in starts if st.job.log_path is not None}
        # first: what follows can wait, the next jobs should not
        self._starts.start(
            running, reruns, self._on_exit, lambda job, why: self._fail(job, why, now)
        )
        kill_cancelled(unrecorded, missed)
        self._cache.merge()  # (the runs taken in this turn: after its starts)
        self._cache.deadlines.enforce(now, self._cache.running, self._executors.get, self.config)
        self._after_ends(ends, statuses)
        if ends or starts:
            # (the jobs that ended, or may have: an end that did not apply was another's)
            self._on_change(
                [e.job.seq for e, st in zip(ends, statuses, strict=True) if st is None or st.ended]
            )
        self.cycles += 1
        return self._sleep_s(now, mono, statuses)

    def _read_changes(self, now: float, mono: float) -> None:
        """Bring the queue cache up to date: from the store when it may hold changes
        this dispatcher has not read, else from this process's submissions."""
        if self._dirty and not self._inbox.storing:  # (else: once its batch is in)
            self._dirty = False  # (a wake-up from now on sets it again)
            with self._inbox.closed_offers() as offered:
                feed = self._cache.read(self.store, offered)
            self._cache.apply(self.store, feed, now, mono)
        elif self._inbox.offered:
            self._cache.take(self._inbox.take_offered())

    def _decide_end(self, job: Job, exit: Exit, now: float) -> AttemptEnd:
        """What an attempt's end means (see :func:`~.ends.decide_end`)."""
        return attempt_end(self, job, exit, now)  # (with what its log says: issue 14)

    def _plan(self, now: float, mono: float, gone: set[str]) -> list[AttemptStart]:
        """What to start now, given the queue and the GPUs (without the jobs ``gone``)."""
        states = gpu_states(
            self.monitor.snapshot(),
            self._cache.booked(gone),
            self._cache.paused,
            self.config.gpu_memory_threshold,
            self.config.gpu_load_threshold,
        )
        queue = self._cache.eligible(now, mono)
        if hands_off(self.config.executor):  # (Slurm: its own queue decides)
            decision, self._room = hand_off(queue, now), None
        else:
            decision = plan(queue, states, now, self.config.gpu_allocation_precision,
                            running=self._cache.for_plan(gone), policy=self._policy,
                            head_since=self.head_since, reserved_before=self.reserved,
                            memory=memory_fit(self))  # fmt: skip
            self.head_since = first_in_line(self.head_since, decision.head_waiting, now)
            self._room = None if decision.placements else most_room(states)
        self.head_waiting = decision.head_waiting
        self.reserved = dict(decision.reserved)
        chosen, stale = self._cache.to_start(self.store, decision.placements)
        if stale:
            self._dirty = True  # (a job placed was not queued any more)
        logs = self._starts.paths.logs
        return [
            AttemptStart(job, gpus, uuid.uuid4().hex, f"{logs}{job.id}.log") for job, gpus in chosen
        ]

    def _record(
        self,
        ends: list[AttemptEnd],
        starts: list[AttemptStart],
        unrecorded: list[Unrecorded],
        now: float,
    ) -> Recorded:
        """Write the ends, the starts and the pids of the attempts started before, in
        one transaction."""
        crash = self._starts.crash
        if crash:
            for _ in ends:
                crash("before_record_end")
        moved: list[int] = []  # (jobs that dependencies released or cancelled: read them)
        out = self.store.record_attempts(ends, starts, now, pid_records(unrecorded), moved)
        if moved:
            self.wake()
        return out

    def _unwritten(
        self, exc: BaseException, ended: list[tuple[Job, Exit]], unrecorded: list[Unrecorded]
    ) -> float:
        """Nothing was written (a full disk, say): keep the ends for the next cycle (their
        exit files stay, so no engine loses them) and start nothing."""
        self._inbox.put_back_ends(ended)
        self._starts.put_back(unrecorded)
        self._dirty = True
        if not isinstance(exc, StateDirError):
            raise exc
        logger.warning("recording job ends and starts failed (%s); will retry", exc)
        return 1.0

    def _took(self, statuses: list[JobStatus | None], running: list[Job | None]) -> None:
        """Take the jobs just marked running off the queue; read the store next turn if
        a write did not apply (another process got there first) or an end sent its job
        back to the queue (a retry)."""
        for job in running:
            if job is not None:
                self._cache.forget(job.id, running=False)  # off the queue: it runs now
        if None in running or any(st is None or st == JobStatus.QUEUED for st in statuses):
            self._dirty = True

    def _sleep_s(self, now: float, mono: float, statuses: list[JobStatus | None]) -> float:
        """How long the loop may sleep after a cycle: until a back-off ends, the next
        look at the GPUs while jobs wait, or the safety net."""
        if any(status == JobStatus.QUEUED for status in statuses):
            return 0.0  # a retry went back to the queue: look at it now
        timeout = SAFETY_NET_S
        waits = [w for w in self._cache.backoff_waits(now, mono) if w > 0]
        if waits:
            timeout = min(timeout, min(waits))
        if self._cache.has_queued():
            timeout = min(timeout, self._queue_wait_s())
        return min(timeout, self._cache.deadlines.wait_s(now))  # (a time limit's)

    # -- ends -----------------------------------------------------------------------------

    def _after_ends(self, ends: list[AttemptEnd], statuses: list[JobStatus | None]) -> None:
        """Once the ends are committed: drop the jobs, and let their executors forget
        them (their exit files are read by nobody now)."""
        by_executor: dict[str, list[Job]] = {}
        self._estimates.forget_succeeded([end.job for end in ends], statuses)
        for end, status in zip(ends, statuses, strict=True):
            job = end.job
            known = self._cache.running.get(job.id)
            if known is not None and known.token == job.token:
                self._cache.running.pop(job.id, None)
            if status is None:
                logger.debug("job %s: the end of attempt %s no longer applied", job.id, job.token)
            if job.token:
                by_executor.setdefault(job.executor or self.config.executor, []).append(job)
        for name, jobs in by_executor.items():
            try:
                executor = self._executors.get(name)
            except Exception:  # (an executor this engine cannot make)
                for job in jobs:
                    try:
                        os.unlink(self._starts.paths.exit_file(job.token or ""))
                    except OSError:
                        pass
                continue
            executor.forget(jobs)

    def _fail(self, job: Job, reason: str, now: float) -> None:
        """Record at once that an attempt could not start."""
        self._end(job, JobStatus.FAILED, None, reason, now)

    def _end(
        self, job: Job, status: JobStatus, code: int | None, reason: str | None, now: float
    ) -> None:
        """Record an attempt's end at once (one that never started)."""
        try:
            self.store.record_attempts([AttemptEnd(job, status, code, reason)], [], now)
        except StateDirError:
            self._inbox.put_back_ends([(job, Exit(code, reason))])
        self._cache.running.pop(job.id, None)
        self.wake()
        self._on_change([job.seq])

    # -- recovery -------------------------------------------------------------------------

    def recover(self) -> None:
        """Re-attach the jobs a previous dispatcher left running (see :mod:`.recovery`)."""
        recover(
            self.store,
            self.config.run_dir,
            lambda job: self._executors.get(job.executor or self.config.executor),
            self._on_exit,
        )


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:  # (BlockingIOError: drained)
        pass
