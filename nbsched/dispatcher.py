"""The dispatcher: the thread that starts queued jobs and records how they end.

It runs in the one process that holds the state directory's lease
(:mod:`nbsched.lease`).  It sleeps in ``select`` until something happens: a
submission, cancel, pause or resume in this process (a byte on a pipe) or in
another one (a byte on the FIFO), or a job's end (the process watcher).  Then it
reads the jobs written since its last look (:meth:`Store.changes_since`), calls
the pure :func:`nbsched.allocation.plan`, and starts what the plan says.  The only
timed wake-ups are a retry's back-off, a re-read of the GPUs while some job waits
for them (other users' load can only be polled), and a slow safety net.  A wake-up
that brought only this process's submissions, none of which fits on any GPU now
(every GPU full), takes no turn: nothing can start before a job ends, and that end's
turn (or the next timed one) queues them.

Crash windows, and how the next dispatcher repairs them (:meth:`recover`):

1. *Marked running, not yet spawned.*  The job is ``running`` with a token but no
   pid.  No process carries the token and no exit file exists: it never started,
   so it goes back to ``queued`` (its attempt uncounted).
2. *Spawned, pid not yet recorded.*  The direct executor's spawner still has the
   job (or it ended and left its exit file), or a process carrying
   ``NBSCHED_JOB_TOKEN`` is found: it is adopted (or its exit code recorded).
3. *Running, engine gone.*  The spawner is asked first (it answers for its jobs in
   one step, so a job that just ended is never caught without its exit file); else
   the job's pid and start time are checked; a live one is adopted and watched; a
   finished one left its exit code in the exit file.
   A pid whose start time does not match is not trusted: either the pid was reused
   by an unrelated process (never adopted, never signalled) or the wall clock was
   stepped, which shifts the start times psutil reports; so the job's process is
   looked for by its token, as in 2.  With no process and no exit file, the job is
   recorded ``failed`` with the reason.
4. *Ended, end not recorded.*  The exit code is kept until the end is committed
   (the spawner keeps it, and writes the exit file when this engine's connection
   ends; a screen job's file stays until then), so the next dispatcher records the
   real code.

Because a GPU is booked in the same transaction that marks the job running, and
only the lease holder does that, no GPU is ever booked twice.

Test hook: with ``NBSCHED_TEST_CRASH_AT=POINT[:N]`` in its environment, the engine
process SIGKILLs itself the N-th time (default 1st) it reaches POINT, one of
``after_mark_running``, ``after_spawn`` (before the pid is recorded) and
``before_record_end``.  Only ``tests/reliability`` sets it; unset, it costs one
``None`` check per launch.
"""

from __future__ import annotations

import bisect
import logging
import os
import selectors
import signal
import threading
import time
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from .allocation import booked_share, could_start, gpu_states, most_room, plan, queue_key
from .config import SchedulerConfig
from .errors import StateDirError
from .executors.base import (
    Executor,
    Exit,
    Launch,
    Started,
    find_job_process,
    process_start_time,
    read_exit_file,
    same_process_alive,
)
from .gpus.monitor import GPUMonitor
from .jobs import Job, JobStatus
from .launch import build_argv, build_env, conda_failure
from .store import AttemptEnd, AttemptStart, Store

logger = logging.getLogger(__name__)

SAFETY_NET_S = 2.0


def _crash_hook() -> Callable[[str], None] | None:
    """The test-only crash hook described in the module doc, or None."""
    spec = os.environ.get("NBSCHED_TEST_CRASH_AT")
    if not spec:
        return None
    point, _, nth = spec.partition(":")
    left = {point: int(nth or 1)}

    def reach(name: str) -> None:
        if name in left:
            left[name] -= 1
            if left[name] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    return reach


class Dispatcher:
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
        self.executor_for = executor_for
        self._fifo_fd = fifo_fd
        self._on_change = on_change
        self._rpipe, self._wpipe = os.pipe()
        os.set_blocking(self._rpipe, False)
        os.set_blocking(self._wpipe, False)
        self._stop = threading.Event()
        self._rev = 0
        self._paused: frozenset[int] = frozenset()  # read with the changes (_refresh)
        self._queue: list[Job] = []  # dispatch order
        self._queued: dict[str, Job] = {}
        self._running: dict[str, Job] = {}
        self._env = dict(os.environ)
        # (folders as strings, joined by hand: pathlib's joins were ~10% of the
        # dispatcher's CPU per job)
        self._logs = os.path.join(config.logs_dir, "")
        self._run = os.path.join(config.run_dir, "")
        self._results = os.path.join(config.state_dir, "results", "")
        self.head_waiting: tuple[str, str] | None = None
        self.reserved: dict[int, str] = {}
        self.cycles = 0
        self._crash = _crash_hook()
        #: job id -> time.monotonic() at which its retry back-off ends (see _eligible).
        self._backoff_until: dict[str, float] = {}
        #: Attempts that ended and are not recorded yet: the next cycle records them
        #: (and keeps them while the store cannot be written, e.g. on a full disk).
        self._ended: list[tuple[Job, Exit]] = []
        self._inbox_lock = threading.Lock()  # guards _ended, _new_ends, _offered, _unchecked
        self._new_ends = False  # reported since the last cycle took them
        #: Attempts started whose pids are not written yet: the next transaction (the
        #: next cycle's, or one of their own before the loop sleeps) writes them.
        self._unrecorded: list[tuple[Job, Executor]] = []
        #: Jobs submitted in this process, with the revision they were written at.
        self._offered: dict[str, tuple[int, Job]] = {}
        #: The revision each queued job was last read or taken at (see _take_offered).
        self._queued_rev: dict[str, int] = {}
        self._unchecked: list[Job] = []  # offered jobs _only_submissions has not seen
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
        self._sel: selectors.BaseSelector | None = None
        self._thread_id: int | None = None
        #: Executors whose process watchers this loop drives (see _executor).
        self._driven: dict[str, Executor] = {}

    # -- wake-ups -------------------------------------------------------------------------

    def wake(self) -> None:
        self._asked = True
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._wpipe, b"x")
        except BlockingIOError:
            pass
        except OSError:
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

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        sel = self._sel = selectors.DefaultSelector()
        sel.register(self._rpipe, selectors.EVENT_READ)
        sel.register(self._fifo_fd, selectors.EVENT_READ)
        self._thread_id = threading.get_ident()
        try:
            self.recover()
            due = time.monotonic()  # the next cycle, at the latest
            while not self._stop.is_set():
                timeout = max(0.0, due - time.monotonic())
                # (an end reported in this thread, e.g. at recovery, did not wake it)
                pending = bool(self._unrecorded or self._new_ends)
                ready = sel.select(0.0 if pending else timeout)
                if any(key.data is not None for key, _ in ready):
                    self._stamp(wait=False)  # (before the ends below are handled)
                if self._unrecorded and not self._new_ends and not ready and timeout > 0:
                    # Nothing else to do: write the new pids known now, then sleep.  (When
                    # something is ready, the cycle's own transaction takes them; a pid
                    # that comes later wakes the loop, as a job's end does.)
                    self._record_starts()
                    ready = sel.select(max(0.0, due - time.monotonic()))
                asked = False  # a submission, cancel, pause, ... (the pipe or the FIFO)
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
                if self._stop.is_set():
                    break
                # (read after the pipe: a waker sets it before writing the pipe)
                other, self._asked = self._asked, False
                if other:
                    self._dirty = True
                if ready and not self._new_ends and time.monotonic() < due:
                    if not (asked or other):
                        continue  # only pids came: written at the top of the next turn
                    if not other and self._only_submissions():
                        # Queued at the next turn; it comes within a GPU-monitor
                        # interval at the latest, as for any job waiting for a GPU.
                        due = min(due, time.monotonic() + self._queue_wait_s())
                        continue
                if time.monotonic() >= due:
                    self._dirty = True  # (a timed turn: back-offs, GPUs, the safety net)
                try:
                    due = time.monotonic() + self.cycle(time.time())
                except Exception:
                    logger.exception("dispatcher cycle failed; retrying in 1 s")
                    due = time.monotonic() + 1.0
        finally:
            if self._unrecorded:
                self._record_starts(wait=True)
            sel.close()

    def cycle(self, now: float) -> float:
        """One decision: record the ends reported since the last one, refresh caches,
        plan, start.  Returns how long to sleep at most.

        The ends and the starts of one cycle are written in one transaction (ends
        first), with the pids of the attempts the previous cycle started; the pids of
        this cycle's go into the next one, or into a transaction of their own when the
        loop has nothing else to do.  A busy queue costs one commit per cycle however
        many jobs end and start in it.
        """
        with self._inbox_lock:
            ended, self._ended = self._ended, []
            self._new_ends = False  # (ends put back after a failed write wait a turn)
        unrecorded = self._take_identified()
        try:
            if self._dirty:
                self._refresh()
            elif self._offered:
                self._take_offered()
            ends = [self._decide_end(job, exit, now) for job, exit in ended]
            starts = self._plan(now, gone={end.job.id for end in ends})
            if self._crash:
                for _ in ends:
                    self._crash("before_record_end")
            recorded, running, missed = self.store.record_attempts(
                ends, starts, now, pids=_pid_records(unrecorded)
            )
        except BaseException as exc:
            # Nothing was written (a full disk, say): keep the ends for the next cycle
            # (their exit files stay, so no engine loses them) and start nothing.
            with self._inbox_lock:
                self._ended[:0] = ended
            self._unrecorded[:0] = unrecorded
            self._dirty = True
            if not isinstance(exc, StateDirError):
                raise
            logger.warning("recording job ends and starts failed (%s); will retry", exc)
            return 1.0
        for job in running:
            if job is not None:
                self._forget(job.id, running=False)  # off the queue: it runs now
        if None in running or _unusual(recorded):
            # A write that did not apply (another process got there first), or an end
            # that sent its job back to the queue (a retry): read the store next turn.
            self._dirty = True
        # (jobs that ran before: queued again by a retry(), their log kept)
        reruns = {st.job.id for st in starts if st.job.log_path is not None}
        self._start(running, reruns)  # first: what follows can wait, the next jobs should not
        self._kill_cancelled(unrecorded, missed)
        self._after_ends(ends, recorded)
        if ends or starts:
            # (the jobs that ended, or may have: an end that did not apply was another's)
            self._on_change(
                [e.job.seq for e, st in zip(ends, recorded, strict=True) if st is None or st.ended]
            )
        timeout = SAFETY_NET_S
        waits = [w for w in self._backoff_waits(now) if w > 0]
        if waits:
            timeout = min(timeout, min(waits))
        if self._queue:
            timeout = min(timeout, self._queue_wait_s())
        if any(status == JobStatus.QUEUED for status in recorded):
            timeout = 0.0  # a retry went back to the queue: look at it now
        self.cycles += 1
        return timeout

    def _plan(self, now: float, gone: set[str]) -> list[AttemptStart]:
        """What to start now, given the queue and the GPUs (without the jobs ``gone``)."""
        paused = self._paused
        snaps = self.monitor.snapshot()
        alloc: dict[int, float] = {}
        for run in self._running.values():
            if run.id in gone:
                continue
            share = booked_share(run.required_gpus, len(run.gpus))
            for g in run.gpus:
                alloc[g] = alloc.get(g, 0.0) + share
        states = gpu_states(
            snaps,
            alloc,
            paused,
            self.config.gpu_memory_threshold,
            self.config.gpu_load_threshold,
        )
        decision = plan(self._eligible(now), states, now, self.config.gpu_allocation_precision)
        self._room = None if decision.placements else most_room(states)
        self.head_waiting = decision.head_waiting
        self.reserved = dict(decision.reserved)
        starts = []
        for placement in decision.placements:
            job = self._queued.get(placement.job_id)
            if job is not None:
                token = uuid.uuid4().hex
                log_path = f"{self._logs}{job.id}.log"
                starts.append(AttemptStart(job, tuple(placement.gpus), token, log_path))
        return starts

    def offer(self, rev: int, jobs: list[Job]) -> None:
        """Jobs this process just submitted, as written at ``rev``: the next cycle takes
        them from here instead of reading their rows back (if they are unchanged)."""
        with self._inbox_lock:
            for job in jobs:
                self._offered[job.id] = (rev, job)
            self._unchecked += jobs
        self._poke()

    def _only_submissions(self) -> bool:
        """Whether the jobs this process submitted since the last turn (when they are
        all its wake-ups brought) can all not start now, no GPU having room for any:
        a turn would only queue them, and the next one (at a job's end, or a timed
        one) does that as well."""
        if self._room is None:
            return False
        room, precision = self._room, self.config.gpu_allocation_precision
        with self._inbox_lock:
            # (those offered before were found unable to start by earlier turns, and
            # the room has not changed since: a turn would have taken them in)
            unchecked, self._unchecked = self._unchecked, []
        return not any(could_start(job.required_gpus, room, precision) for job in unchecked)

    def _take_offered(self) -> None:
        """Queue the jobs this process submitted, as they were written, without reading
        the store: when nothing else woke the loop, they are all that changed in it
        (every other writer wakes it, and then it reads).  A job changed meanwhile (a
        cancel) woke it too; and a start applies only to a job still queued."""
        with self._inbox_lock:
            offered, self._offered = self._offered, {}
            self._unchecked = []
        for job_id, (rev, job) in offered.items():
            self._forget(job_id)
            self._queue_job(job, rev)

    def _queue_job(self, job: Job, rev: int) -> None:
        self._queued[job.id] = job
        self._queued_rev[job.id] = rev
        bisect.insort(self._queue, job, key=queue_key)

    def _refresh(self) -> None:
        self._dirty = False  # (a wake-up from now on sets it again)
        with self._inbox_lock:
            offered, self._offered = self._offered, {}
            self._unchecked = []
        rev, changes, self._paused = self.store.changes_since(self._rev)
        self._rev = rev
        revs = {job_id: row_rev for job_id, _, _, row_rev in changes}
        wanted = []
        fresh = []
        for job_id, status, token, row_rev in changes:
            known = self._running.get(job_id)
            if status == JobStatus.RUNNING and known is not None and known.token == token:
                self._forget(job_id, running=False)  # off the queue; nothing else to learn:
                continue  # it is this dispatcher's own write (started, pid recorded)
            if status == JobStatus.QUEUED and self._queued_rev.get(job_id) == row_rev:
                continue  # queued here as it still is (taken from the offers: see above)
            if status in (JobStatus.QUEUED, JobStatus.RUNNING):
                hit = offered.get(job_id)
                if status == JobStatus.QUEUED and hit is not None and hit[0] == row_rev:
                    fresh.append(hit[1])  # the row is still as submitted
                else:
                    wanted.append(job_id)
            else:
                self._forget(job_id)  # ended: nothing of the row is needed
        for job in fresh + (self.store.get_many(wanted) if wanted else []):
            self._forget(job.id)
            if job.status == JobStatus.QUEUED:
                # (the revision it was read at: a job read again since is not queued at it)
                self._queue_job(job, revs.get(job.id, -1))
                if job.not_before is not None:
                    # How long the back-off has left, by the monotonic clock, and never
                    # more than the back-off itself (the wall clock may have been stepped).
                    left = min(job.not_before - time.time(), self._backoff_s(job))
                    self._backoff_until[job.id] = time.monotonic() + max(0.0, left)
            elif job.status == JobStatus.RUNNING:
                self._running[job.id] = job

    def _forget(self, job_id: str, running: bool = True) -> None:
        """Drop a job from the queue cache (and, with ``running``, from the running one)."""
        old = self._queued.pop(job_id, None)
        self._queued_rev.pop(job_id, None)
        if old is not None:
            i = bisect.bisect_left(self._queue, queue_key(old), key=queue_key)
            while i < len(self._queue) and self._queue[i].id != job_id:
                i += 1
            if i < len(self._queue):
                del self._queue[i]
        if running:
            self._running.pop(job_id, None)
        self._backoff_until.pop(job_id, None)

    def _queue_wait_s(self) -> float:
        """How long a queued job waits at most before the next look at the GPUs."""
        return max(self.config.gpu_monitor_interval_s, 0.05)

    def _backoff_waits(self, now: float) -> list[float]:
        """Seconds each job in a back-off has left: the sooner of the wall clock's
        ``not_before`` and the monotonic deadline (see :meth:`_eligible`)."""
        mono = time.monotonic()
        out = []
        for job_id, until in self._backoff_until.items():
            job = self._queued.get(job_id)
            if job is not None and job.not_before is not None:
                out.append(min(job.not_before - now, until - mono))
        return out

    def _backoff_s(self, job: Job) -> float:
        """The back-off :meth:`_on_exit` gave a job after its last failed attempt."""
        return float(self.config.retry_backoff_s * (2 ** min(max(0, job.attempts - 1), 32)))

    def _eligible(self, now: float) -> list[Job]:
        """The queue as :func:`plan` should see it at ``now``.

        A retry's ``not_before`` is wall-clock time (it is stored, and shown to users).
        A job waits out its back-off until the wall clock *or* the monotonic clock says
        it is over, so a wall clock stepped back does not hold it for hours, and one
        stepped forward only shortens the back-off (it never runs a job twice).
        """
        if not self._backoff_until:
            return self._queue
        mono = time.monotonic()
        if all(
            job_id not in self._queued
            or (self._queued[job_id].not_before or 0.0) - now <= until - mono
            for job_id, until in self._backoff_until.items()
        ):
            return self._queue  # the wall clock is not behind: the stored times hold
        out = []
        for job in self._queue:
            until = self._backoff_until.get(job.id)
            if until is not None and job.not_before is not None:
                not_before = min(job.not_before, now + max(0.0, until - mono))
                if not_before != job.not_before:
                    job = job.evolve(not_before=not_before)
            out.append(job)
        return out

    # -- starting and ending --------------------------------------------------------------

    def _start(self, running: list[Job | None], reruns: Collection[str] = ()) -> None:
        """Spawn the attempts just marked running, record their pids, watch them.
        ``reruns``: those that ran before (their logs may hold an earlier run)."""
        spawned: list[tuple[Job, Started, Executor]] = []
        for job in running:
            if job is None:
                continue  # cancelled meanwhile
            if self._crash:
                self._crash("after_mark_running")
            self._running[job.id] = job
            attempt = self._spawn(job, job.id in reruns)
            if attempt is not None:
                spawned.append(attempt)
                if self._crash:
                    self._crash("after_spawn")
        for job, started, executor in spawned:
            job = job.evolve(pid=started.pid, proc_start=started.proc_start, node=started.node)
            self._running[job.id] = job
            executor.watch(job, self._on_exit)
            self._unrecorded.append((job, executor))

    def _stamp(self, wait: bool) -> None:
        """Read the pids and start times the executors left to us (``defer_identity``):
        without ``wait``, only those that have come.

        Done later than the start (by the next loop turn, before any end is handled):
        the next job's start does not wait for this one's ``exec``, and reading them
        all at once costs less than one after each start.  An attempt that could not
        start has no pid to write: its end (code 127) says why.
        """
        kept: list[tuple[Job, Executor]] = []
        for job, executor in self._unrecorded:
            if _awaiting(job, executor):
                found = executor.identify(job, wait=wait)  # type: ignore[attr-defined]
                if found is None:
                    kept.append((job, executor))  # not known yet
                    continue
                pid, proc_start = found
                if pid is None:
                    continue
                job = job.evolve(pid=pid, proc_start=proc_start)
            elif job.pid is not None and job.proc_start is None:
                job = job.evolve(proc_start=process_start_time(job.pid))
            kept.append((job, executor))
            if job.id in self._running and self._running[job.id].token == job.token:
                self._running[job.id] = job
        self._unrecorded = kept

    def _take_identified(self) -> list[tuple[Job, Executor]]:
        """The started attempts whose pids can be written now (off ``_unrecorded``)."""
        self._stamp(wait=False)
        taken: list[tuple[Job, Executor]] = []
        kept: list[tuple[Job, Executor]] = []
        for job, executor in self._unrecorded:
            (kept if _awaiting(job, executor) else taken).append((job, executor))
        self._unrecorded = kept
        return taken

    def _record_starts(self, wait: bool = False) -> None:
        """Write the pids of the attempts started since the last transaction: those
        known now, or (``wait``) all of them."""
        if wait:
            self._stamp(wait=True)
            unrecorded, self._unrecorded = self._unrecorded, []
        else:
            unrecorded = self._take_identified()
        if not unrecorded:
            return
        try:
            missed = self.store.record_starts(_pid_records(unrecorded))
        except Exception:
            # The processes run and are watched: their ends are recorded when they can
            # be (and the next engine finds them by their tokens).
            logger.exception("could not record the pids of %d started job(s)", len(unrecorded))
            return
        self._kill_cancelled(unrecorded, missed)

    def _kill_cancelled(self, started: list[tuple[Job, Executor]], missed: set[int]) -> None:
        for job, executor in started:
            if job.seq in missed:
                # Cancelled between "marked running" and now: a cancel in another process
                # may have looked for the process before it existed.  End it here.
                logger.info("job %s was cancelled while it started; ending it", job.id)
                executor.kill(job, 0.0)

    def _spawn(self, running: Job, rerun: bool = False) -> tuple[Job, Started, Executor] | None:
        """Start one attempt; None (and the job failed, with the reason) if it cannot.

        Its output goes on in the job's log after a line that says which attempt it is,
        when an attempt came before: a retry, or (``rerun``) a run before a ``retry()``,
        whose attempts count from 1 again.
        """
        assert running.log_path is not None and running.token is not None
        log_path = Path(running.log_path)
        gpus = running.gpus
        try:
            executor = self._executor(running.executor or self.config.executor)
            separator = f"\n--- nbsched: attempt {running.attempts} ---\n"
            if running.attempts > 1:
                _append(log_path, separator)
            elif rerun:  # (only after output: a run that never started left none)
                _append(log_path, separator, only_after_output=True)
            argv = build_argv(running, gpus, self._env)
            result = f"{self._results}{running.id}.json"
            env = build_env(running, gpus, running.token, result, self._env)
            started = executor.start(
                Launch(
                    job=running,
                    gpus=gpus,
                    argv=argv,
                    env=env,
                    cwd=running.spec.cwd,
                    log_path=log_path,
                    exit_path=Path(f"{self._run}{running.token}.exit"),
                )
            )
        except Exception as exc:
            logger.warning("job %s could not start: %s", running.id, exc)
            try:
                _append(log_path, f"nbsched: the job could not start: {exc}\n")
            except OSError:
                pass
            self._end(running, JobStatus.FAILED, None, f"could not start: {exc}", time.time())
            return None
        return running, started, executor

    def _executor(self, name: str) -> Executor:
        """The executor ``name``; the first time, its process watcher joins this loop
        (a job's end then wakes this thread directly: no watcher thread, no pipe)."""
        known = self._driven.get(name)
        if known is not None:
            return known
        executor = self.executor_for(name)
        if self._sel is not None:
            self._driven[name] = executor
            source = getattr(executor, "event_source", None)
            found = source() if source is not None else None
            if found is not None:
                fd, handler = found
                self._sel.register(fd, selectors.EVENT_READ, handler)
                # Ends are handled in this thread, so pids can wait for _stamp.
                if hasattr(executor, "defer_identity"):
                    executor.defer_identity = True
        return executor

    def _on_exit(self, job: Job, exit: Exit) -> None:
        """From an executor (in this thread when it drives the process watcher; in a
        thread of its own otherwise) or at recovery: an attempt ended.  The next cycle
        records it (with the other ends and starts of that cycle, in one transaction);
        its exit file is deleted once that is committed."""
        with self._inbox_lock:
            self._ended.append((job, exit))
            self._new_ends = True
        if threading.get_ident() != self._thread_id:
            self.wake()  # (in this thread, the loop runs a cycle next anyway)

    def _decide_end(self, job: Job, exit: Exit, now: float) -> AttemptEnd:
        """What an attempt's end means: succeeded, failed, or queued again for a retry."""
        if exit.code == 0:
            return AttemptEnd(job, JobStatus.SUCCEEDED, 0, None)
        reason = exit.reason or f"exit code {exit.code}"
        try:
            missing_env = conda_failure(job, job.log_path) if exit.code else None
        except Exception:  # (a log that cannot be read must not lose the end)
            logger.exception("job %s: could not read its log", job.id)
            missing_env = None
        if missing_env:  # retrying cannot help
            reason = f"{reason}: {missing_env}"
        if job.attempts <= job.spec.max_retries and not missing_env:
            # (exponent capped: 2**1024 does not fit a float; 2**32 s is forever anyway)
            delay = self.config.retry_backoff_s * (2 ** min(job.attempts - 1, 32))
            return AttemptEnd(
                job,
                JobStatus.QUEUED,
                exit.code,
                reason,
                not_before=now + delay,
                retry_reason=f"attempt {job.attempts} failed ({reason}); retrying in {delay:g}s",
            )
        return AttemptEnd(job, JobStatus.FAILED, exit.code, reason)

    def _after_ends(self, ends: list[AttemptEnd], recorded: list[JobStatus | None]) -> None:
        """Once the ends are committed: drop the jobs, and let their executors forget
        them (their exit files are read by nobody now)."""
        by_executor: dict[str, list[Job]] = {}
        for end, status in zip(ends, recorded, strict=True):
            job = end.job
            known = self._running.get(job.id)
            if known is not None and known.token == job.token:
                self._running.pop(job.id, None)
            if status is None:
                logger.debug("job %s: the end of attempt %s no longer applied", job.id, job.token)
            if job.token:
                by_executor.setdefault(job.executor or self.config.executor, []).append(job)
        for name, jobs in by_executor.items():
            try:
                forget = getattr(self._executor(name), "forget", None)
            except Exception:  # (an executor this engine cannot make)
                forget = None
            if forget is not None:
                forget(jobs)
                continue
            for job in jobs:
                try:
                    os.unlink(f"{self._run}{job.token}.exit")
                except OSError:
                    pass

    def _end(
        self, job: Job, status: JobStatus, code: int | None, reason: str | None, now: float
    ) -> None:
        """Record an attempt's end at once (one that never started)."""
        try:
            self.store.record_attempts([AttemptEnd(job, status, code, reason)], [], now)
        except StateDirError:
            with self._inbox_lock:
                self._ended.append((job, Exit(code, reason)))
        self._running.pop(job.id, None)
        self.wake()
        self._on_change([job.seq])

    # -- recovery -------------------------------------------------------------------------

    def recover(self) -> None:
        """Re-attach the jobs a previous dispatcher left running (see the module doc)."""
        running = self.store.find(statuses=[JobStatus.RUNNING])
        for job in running:
            try:
                self._recover_one(job)
            except Exception:
                logger.exception("could not recover job %s", job.id)
        # Exit files of attempts that are no longer running (e.g. cancelled while no
        # engine was alive) are read by nobody: remove them.
        keep = {f"{job.token}.exit" for job in running if job.token}
        for path in self.config.run_dir.glob("*.exit"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def _recover_one(self, job: Job) -> None:
        executor = self._executor(job.executor or self.config.executor)
        if job.token is None:
            self._requeue_unstarted(job)
            return
        if not getattr(executor, "local_processes", True):
            executor.watch(job, self._on_exit)  # e.g. Ray: its processes are not here
            return
        adopt = getattr(executor, "adopt", None)
        if adopt is not None:
            # The direct executor's spawner knows its jobs: running (or ended, end not
            # reported yet) ones are watched again; any other has its exit file.
            pid = adopt(job, self._on_exit)
            if pid is not None:
                if job.pid != pid:
                    start = process_start_time(pid)
                    self.store.update(job.id, pid=pid, proc_start=start)
                    logger.info("job %s: adopted process %d from the spawner", job.id, pid)
                return
        exit_file = self.config.run_dir / f"{job.token}.exit"
        if not same_process_alive(job.pid, job.proc_start) and read_exit_file(exit_file) is None:
            # No pid, or one that is not the job's process any more: look by token.
            found = find_job_process(job.token)
            if found is not None:
                pid, start = found
                self.store.update(job.id, pid=pid, proc_start=start)
                job = job.evolve(pid=pid, proc_start=start)
                logger.info("job %s: adopted process %d found by its token", job.id, pid)
            elif read_exit_file(exit_file) is not None:
                pass  # it ended between the two looks; the watch below records its code
            elif job.pid is None:
                self._requeue_unstarted(job)
                return
            else:
                self._on_exit(job, Exit(None, _gone_reason(job.pid)))
                return
        executor.watch(job, self._on_exit)

    def _requeue_unstarted(self, job: Job) -> None:
        self.store.transition(
            job.id,
            JobStatus.QUEUED,
            expect={JobStatus.RUNNING},
            reason="the engine stopped before the job started; queued again",
            attempts=max(0, job.attempts - 1),
            token=None,
            gpus=[],
        )


def _awaiting(job: Job, executor: Executor) -> bool:
    """Whether a started attempt's pid is still to come from its executor."""
    return job.pid is None and getattr(executor, "defer_identity", False)


def _unusual(recorded: list[JobStatus | None]) -> bool:
    """Whether recorded ends include one that did not apply or a retry (queued again)."""
    return any(status is None or status == JobStatus.QUEUED for status in recorded)


def _pid_records(started: list[tuple[Job, Executor]]) -> list[tuple[int, str, dict[str, Any]]]:
    return [
        (job.seq, job.token or "", {"pid": job.pid, "proc_start": job.proc_start, "node": job.node})
        for job, _ in started
    ]


def _gone_reason(pid: int) -> str:
    try:
        os.kill(pid, 0)
        taken = True
    except ProcessLookupError:
        taken = False
    except PermissionError:
        taken = True
    if taken:
        return (
            f"the job's process ended without recording an exit code (its pid {pid} now "
            f"belongs to another process, which was left alone)"
        )
    return f"the job's process (pid {pid}) ended without recording an exit code"


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, OSError):
        pass


def _append(path: Path, text: str, only_after_output: bool = False) -> None:
    """Append ``text`` to a job's log (with ``only_after_output``, if it is not empty)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        if not only_after_output or os.fstat(fd).st_size > 0:
            os.write(fd, text.encode())
    finally:
        os.close(fd)
