"""The dispatcher: the thread that starts queued jobs and records how they end.

It runs in the one process that holds the state directory's lease
(:mod:`nbsched.lease`).  It sleeps in ``select`` until something happens: a
submission, cancel, pause or resume in this process (a byte on a pipe) or in
another one (a byte on the FIFO), or a job's end (the process watcher).  Then it
reads the jobs written since its last look (:meth:`Store.changes_since`), calls
the pure :func:`nbsched.allocation.plan`, and starts what the plan says.  The only
timed wake-ups are a retry's back-off, a re-read of the GPUs while some job waits
for them (other users' load can only be polled), and a slow safety net.

Crash windows, and how the next dispatcher repairs them (:meth:`recover`):

1. *Marked running, not yet spawned.*  The job is ``running`` with a token but no
   pid.  No process carries the token and no exit file exists: it never started,
   so it goes back to ``queued`` (its attempt uncounted).
2. *Spawned, pid not yet recorded.*  A process carrying ``NBSCHED_JOB_TOKEN`` is
   found (or its exit file): it is adopted (or its exit code recorded).
3. *Running, engine gone.*  The launcher's pid and start time are checked; a live
   one is adopted and watched; a finished one left its exit code in the exit file.
   A pid whose start time does not match is not trusted: either the pid was reused
   by an unrelated process (never adopted, never signalled) or the wall clock was
   stepped, which shifts the start times psutil reports; so the job's process is
   looked for by its token, as in 2.  With no process and no exit file, the job is
   recorded ``failed`` with the reason.
4. *Ended, end not recorded.*  The exit file stays until the end is committed
   (:meth:`_on_exit` deletes it), so the next dispatcher records the real code.

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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .allocation import booked_share, gpu_states, plan, queue_key
from .config import SchedulerConfig
from .errors import StateDirError
from .executors.base import (
    Executor,
    Exit,
    Launch,
    find_by_token,
    process_start_time,
    read_exit_file,
    same_process_alive,
)
from .gpus.monitor import GPUMonitor
from .jobs import Job, JobStatus
from .launch import build_argv, build_env, conda_failure
from .store import Store

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
        on_change: Callable[[], None],
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
        self._queue: list[Job] = []  # dispatch order
        self._queued: dict[str, Job] = {}
        self._running: dict[str, Job] = {}
        self._env = dict(os.environ)
        self.head_waiting: tuple[str, str] | None = None
        self.reserved: dict[int, str] = {}
        self.cycles = 0
        self._crash = _crash_hook()
        #: job id -> time.monotonic() at which its retry back-off ends (see _eligible).
        self._backoff_until: dict[str, float] = {}
        #: Ends that could not be committed (disk full...): retried each cycle.
        self._unrecorded: list[tuple[Job, Exit]] = []
        self._unrecorded_lock = threading.Lock()

    # -- wake-ups -------------------------------------------------------------------------

    def wake(self) -> None:
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
        sel = selectors.DefaultSelector()
        sel.register(self._rpipe, selectors.EVENT_READ)
        sel.register(self._fifo_fd, selectors.EVENT_READ)
        try:
            self.recover()
            timeout: float | None = 0.0
            while not self._stop.is_set():
                for key, _ in sel.select(timeout):
                    _drain(key.fd)
                if self._stop.is_set():
                    break
                try:
                    timeout = self.cycle(time.time())
                except Exception:
                    logger.exception("dispatcher cycle failed; retrying in 1 s")
                    timeout = 1.0
        finally:
            sel.close()

    def cycle(self, now: float) -> float:
        """One decision: refresh caches, plan, start.  Returns how long to sleep at most."""
        self.cycles += 1
        self._retry_unrecorded()
        self._refresh()
        paused = self.store.paused()
        snaps = self.monitor.snapshot()
        alloc: dict[int, float] = {}
        for run in self._running.values():
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
        queue = self._eligible(now)
        decision = plan(queue, states, now, self.config.gpu_allocation_precision)
        self.head_waiting = decision.head_waiting
        self.reserved = dict(decision.reserved)
        for placement in decision.placements:
            job = self._queued.get(placement.job_id)
            if job is not None:
                self._launch(job, placement.gpus, now)
        if decision.placements:
            self._on_change()
        timeout = SAFETY_NET_S if not self._unrecorded else 1.0
        waits = [w for w in self._backoff_waits(now) if w > 0]
        if waits:
            timeout = min(timeout, min(waits))
        if self._queue:
            timeout = min(timeout, max(self.config.gpu_monitor_interval_s, 0.05))
        return timeout

    def _refresh(self) -> None:
        rev, changes = self.store.changes_since(self._rev)
        self._rev = rev
        wanted = []
        for job_id, status, token in changes:
            known = self._running.get(job_id)
            if status == JobStatus.RUNNING and known is not None and known.token == token:
                self._forget(job_id, running=False)  # off the queue; nothing else to learn:
                continue  # it is this dispatcher's own write (started, pid recorded)
            if status in (JobStatus.QUEUED, JobStatus.RUNNING):
                wanted.append(job_id)
            else:
                self._forget(job_id)  # ended: nothing of the row is needed
        for job in self.store.get_many(wanted) if wanted else ():
            self._forget(job.id)
            if job.status == JobStatus.QUEUED:
                self._queued[job.id] = job
                bisect.insort(self._queue, job, key=queue_key)
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
        if old is not None:
            i = bisect.bisect_left(self._queue, queue_key(old), key=queue_key)
            while i < len(self._queue) and self._queue[i].id != job_id:
                i += 1
            if i < len(self._queue):
                del self._queue[i]
        if running:
            self._running.pop(job_id, None)
        self._backoff_until.pop(job_id, None)

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
                    job = replace(job, not_before=not_before)
            out.append(job)
        return out

    # -- starting and ending --------------------------------------------------------------

    def _launch(self, job: Job, gpus: tuple[int, ...], now: float) -> None:
        token = uuid.uuid4().hex
        log_path = self.config.logs_dir / f"{job.id}.log"
        running = self.store.transition(
            job.id,
            JobStatus.RUNNING,
            expect={JobStatus.QUEUED},
            now=now,
            gpus=gpus,
            started=now,
            ended=None,
            exit_code=None,
            attempts=job.attempts + 1,
            token=token,
            pid=None,
            proc_start=None,
            node=None,
            log_path=str(log_path),
            not_before=None,
            cancel_requested=False,
        )
        if running is None:
            return  # cancelled meanwhile
        if self._crash:
            self._crash("after_mark_running")
        self._running[job.id] = running
        executor = self.executor_for(running.executor or self.config.executor)
        try:
            if running.attempts > 1:
                _append(log_path, f"\n--- nbsched: attempt {running.attempts} ---\n")
            argv = build_argv(running, gpus, self._env)
            env = build_env(running, gpus, token, self.result_path(running), self._env)
            started = executor.start(
                Launch(
                    job=running,
                    gpus=gpus,
                    argv=argv,
                    env=env,
                    cwd=running.spec.cwd,
                    log_path=log_path,
                    exit_path=self.config.run_dir / f"{token}.exit",
                )
            )
        except Exception as exc:
            logger.warning("job %s could not start: %s", job.id, exc)
            _append(log_path, f"nbsched: the job could not start: {exc}\n")
            self._end(running, JobStatus.FAILED, None, f"could not start: {exc}", time.time())
            return
        if self._crash:
            self._crash("after_spawn")
        attempt = replace(
            running, pid=started.pid, proc_start=started.proc_start, node=started.node
        )
        self._running[job.id] = attempt
        try:
            recorded = self.store.record_start(
                job.id, token, pid=started.pid, proc_start=started.proc_start, node=started.node
            )
        except Exception:
            # The process runs: watch it anyway, so its end is recorded when it can be.
            logger.exception("job %s: could not record its pid %s", job.id, started.pid)
            recorded = True
        if not recorded:
            # Cancelled between "marked running" and now: a cancel in another process
            # may have looked for the process before it existed.  End it here.
            logger.info("job %s was cancelled while it started; ending it", job.id)
            executor.kill(attempt, 0.0)
        executor.watch(attempt, self._on_exit)

    def result_path(self, job: Job) -> Path:
        return self.config.state_dir / "results" / f"{job.id}.json"

    def _on_exit(self, job: Job, exit: Exit) -> None:
        """From the watcher thread (or at recovery): record how an attempt ended.

        The exit file is deleted once the end is committed.  An end that cannot be
        committed (a full disk) is kept and retried by each cycle.
        """
        try:
            self._record_exit(job, exit)
        except StateDirError as exc:
            logger.warning("recording the end of job %s failed (%s); will retry", job.id, exc)
            with self._unrecorded_lock:
                self._unrecorded.append((job, exit))
            self.wake()
            return
        except Exception:
            logger.exception("recording the end of job %s failed", job.id)
            return
        if job.token:
            try:
                (self.config.run_dir / f"{job.token}.exit").unlink()
            except OSError:
                pass

    def _retry_unrecorded(self) -> None:
        with self._unrecorded_lock:
            pending, self._unrecorded = self._unrecorded, []
        for job, exit in pending:
            self._on_exit(job, exit)

    def _record_exit(self, job: Job, exit: Exit) -> None:
        if self._crash:
            self._crash("before_record_end")
        now = time.time()
        if exit.code == 0:
            self._end(job, JobStatus.SUCCEEDED, 0, None, now)
            return
        reason = exit.reason or f"exit code {exit.code}"
        missing_env = conda_failure(job, job.log_path) if exit.code else None
        if missing_env:  # retrying cannot help
            reason = f"{reason}: {missing_env}"
        budget = job.spec.max_retries
        if job.attempts <= budget and not missing_env:
            # (exponent capped: 2**1024 does not fit a float; 2**32 s is forever anyway)
            delay = self.config.retry_backoff_s * (2 ** min(job.attempts - 1, 32))
            moved = self.store.transition(
                job.id,
                JobStatus.QUEUED,
                expect={JobStatus.RUNNING},
                guard=lambda j: j.token == job.token and not j.cancel_requested,
                reason=f"attempt {job.attempts} failed ({reason}); retrying in {delay:g}s",
                now=now,
                exit_code=exit.code,
                ended=now,
                not_before=now + delay,
                pid=None,
            )
            if moved is not None:
                self._changed()
                return
        self._end(job, JobStatus.FAILED, exit.code, reason, now)

    def _end(
        self, job: Job, status: JobStatus, code: int | None, reason: str | None, now: float
    ) -> None:
        done = self.store.transition(
            job.id,
            status,
            expect={JobStatus.RUNNING},
            guard=lambda j: j.token == job.token and not j.cancel_requested,
            reason=reason,
            now=now,
            exit_code=code,
            ended=now,
        )
        if done is None:
            # Cancelled by a user (the job's process died of it): say so, once.
            self.store.transition(
                job.id,
                JobStatus.CANCELLED,
                expect={JobStatus.RUNNING},
                guard=lambda j: j.token == job.token and j.cancel_requested,
                reason="cancelled",
                now=now,
                exit_code=code,
                ended=now,
            )
        self._changed()

    def _changed(self) -> None:
        self.wake()
        self._on_change()

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
        executor = self.executor_for(job.executor or self.config.executor)
        if job.token is None:
            self._requeue_unstarted(job)
            return
        if not getattr(executor, "local_processes", True):
            executor.watch(job, self._on_exit)  # e.g. Ray: its processes are not here
            return
        exit_file = self.config.run_dir / f"{job.token}.exit"
        if not same_process_alive(job.pid, job.proc_start) and read_exit_file(exit_file) is None:
            # No pid, or one that is not the job's launcher any more: look by token.
            found = _find_launcher(job.token)
            if found is not None:
                pid, start = found
                self.store.update(job.id, pid=pid, proc_start=start)
                job = replace(job, pid=pid, proc_start=start)
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


def _find_launcher(token: str) -> tuple[int, float] | None:
    """(pid, start time) of the oldest live process carrying ``token`` that leads its
    session (the launcher, unless it died and left children), or None."""
    found = []
    for proc in find_by_token(token):
        start = process_start_time(proc.pid)
        if start is not None:
            found.append((_sid(proc.pid) != proc.pid, start, proc.pid))
    if not found:
        return None
    _, start, pid = min(found)
    return pid, start


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


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, OSError):
        pass


def _append(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
