"""Starting attempts: the executors, the spawn, and the pids still to be written.

The dispatcher marks jobs running in its cycle's transaction, then spawns them here.
Their pids go into the *next* transaction (the next cycle's, or one of their own
before the loop sleeps): a busy queue costs one commit per cycle however many jobs
start in it.  An executor driven by the loop may even return before the pid is known
(:attr:`~nbsched.executors.base.Executor.defer_identity`): the loop asks it later
(:meth:`Starts.stamp`), so the next job's start does not wait for this one's ``exec``.
An executor whose jobs begin later still (Ray: a task waits for its worker) reports
where they run through :meth:`~nbsched.executors.base.Executor.report_starts`; those
reports are written with the pids too.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import SchedulerConfig
from ..executors.base import Executor, Launch, OnExit, Started
from ..executors.process import process_start_time
from ..gpus.oom import retry_note
from ..jobs import Job
from ..launch import build_argv, build_env, submitter_env
from ..pipeline.snapshots import after_ends as after_ends  # (the loop's, once ends are in)
from ..pipeline.snapshots import from_copy
from ..store import Store
from .inbox import Inbox
from .queue import QueueCache

logger = logging.getLogger(__name__)

#: The test-only crash hook (see :func:`crash_hook`): called with a point's name.
CrashHook = Callable[[str], None]


def crash_hook() -> CrashHook | None:
    """With ``NBSCHED_TEST_CRASH_AT=POINT[:N]`` in the environment, a function that
    SIGKILLs this process the N-th time (default 1st) it is called with POINT; None
    (the cost of one ``None`` check per launch) without it.  Only tests set it."""
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


@dataclass(frozen=True)
class Paths:
    """Where a job's files go, as folder strings ending in a separator (joined by hand:
    pathlib's joins were ~10% of the dispatcher's CPU per job)."""

    logs: str
    run: str
    results: str

    @classmethod
    def of(cls, config: SchedulerConfig) -> Paths:
        return cls(
            os.path.join(config.logs_dir, ""),
            os.path.join(config.run_dir, ""),
            os.path.join(config.state_dir, "results", ""),
        )

    def exit_file(self, token: str) -> str:
        return f"{self.run}{token}.exit"


@dataclass
class Unrecorded:
    """A started attempt whose pid (and where it runs) is not written yet."""

    #: The job as started, with what is known of its process.
    job: Job
    executor: Executor
    #: When the job began, where its executor reported it later than the start.
    began: float | None = None
    #: The GPUs its executor reported it got once it ran (Slurm's), else None.
    gpus: tuple[int, ...] | None = None

    @property
    def awaiting(self) -> bool:
        """Whether its pid is still to come from its executor (:meth:`Executor.identify`)."""
        return self.job.pid is None and self.executor.defer_identity


def pid_records(items: list[Unrecorded]) -> list[tuple[int, str, dict[str, Any]]]:
    """``(seq, token, fields)`` for :meth:`Store.record_starts`."""
    out = []
    for item in items:
        job = item.job
        fields: dict[str, Any] = {"pid": job.pid, "proc_start": job.proc_start, "node": job.node}
        if item.gpus is not None:  # (learned once it ran: Slurm's)
            fields["gpus"] = item.gpus
        if item.began is not None:
            fields["started"] = item.began
        out.append((job.seq, job.token or "", fields))
    return out


class Executors:
    """The executors this dispatcher uses, by name.  The first time one is used, its
    process watcher joins the loop's ``select`` (when the loop runs): a job's end then
    wakes the loop directly, with no watcher thread and no pipe."""

    def __init__(
        self,
        make: Callable[[str], Executor],
        on_started: Callable[[Executor, Job, Started], None],
    ) -> None:
        self._make = make
        self._on_started = on_started
        self._known: dict[str, Executor] = {}
        #: The loop's selector, once it runs.
        self.sel: selectors.BaseSelector | None = None

    def get(self, name: str) -> Executor:
        known = self._known.get(name)
        if known is not None:
            return known
        executor = self._make(name)
        if self.sel is not None:  # (before the loop runs, the next use asks again)
            self._known[name] = executor
            found = executor.event_source()
            if found is not None:
                fd, handler = found
                self.sel.register(fd, selectors.EVENT_READ, handler)
                # Ends are handled in this thread, so pids can wait for Starts.stamp.
                executor.defer_identity = True
        on_started = self._on_started

        def report(job: Job, started: Started) -> None:
            on_started(executor, job, started)

        executor.report_starts(report)
        return executor


class Starts:
    """Spawning the attempts a cycle marked running, and writing their pids later."""

    def __init__(
        self,
        config: SchedulerConfig,
        store: Store,
        cache: QueueCache,
        inbox: Inbox,
        executors: Executors,
    ) -> None:
        self.config = config
        self.store = store
        self.cache = cache
        self.inbox = inbox
        self.executors = executors
        self.paths = Paths.of(config)
        self.env = dict(os.environ)
        #: Submitters' environments read so far, by number (a sweep's jobs share one).
        self._envs: dict[int, dict[str, str] | None] = {}
        self.crash = crash_hook()
        #: Started attempts whose pids are not written yet.
        self.unrecorded: list[Unrecorded] = []

    def waiting(self) -> bool:
        """Whether pids (or later reports of where jobs run) are still to be written."""
        return bool(self.unrecorded or self.inbox.identified)

    # -- spawning -------------------------------------------------------------------------

    def start(
        self,
        running: list[Job | None],
        reruns: Collection[str],
        on_exit: OnExit,
        fail: Callable[[Job, str], None],
    ) -> None:
        """Spawn the attempts just marked running (None: a start that no longer applied),
        and watch them; ``fail`` records one that could not start.  ``reruns``: those
        that ran before (their logs may hold an earlier run)."""
        spawned: list[tuple[Job, Started, Executor]] = []
        batches: dict[str, tuple[Executor, list[Launch]]] = {}
        for job in running:
            if job is None:
                continue  # cancelled meanwhile
            if self.crash:
                self.crash("after_mark_running")
            self.cache.running[job.id] = job
            self.cache.deadlines.add(job)
            try:
                executor = self.executors.get(job.executor or self.config.executor)
                launch = self.launch(job, job.id in reruns)
                if executor.batches:  # (started together below: one Slurm job array)
                    batches.setdefault(executor.name, (executor, []))[1].append(launch)
                    continue
                started = executor.start(launch)
            except Exception as exc:
                _note_failed_start(job, exc)
                fail(job, f"could not start: {exc}")
                continue
            spawned.append((job, started, executor))
            if self.crash:
                self.crash("after_spawn")
        for executor, launches in batches.values():
            for launch, outcome in zip(launches, executor.start_many(launches), strict=True):
                if isinstance(outcome, Exception):
                    _note_failed_start(launch.job, outcome)
                    fail(launch.job, f"could not start: {outcome}")
                else:
                    spawned.append((launch.job, outcome, executor))
        for job, started, executor in spawned:
            job = job.evolve(pid=started.pid, proc_start=started.proc_start, node=started.node)
            self.cache.running[job.id] = job
            executor.watch(job, on_exit)
            self.unrecorded.append(Unrecorded(job, executor))

    def launch(self, running: Job, rerun: bool) -> Launch:
        """What starts one attempt.  Its output goes on in the job's log after a line
        that says which attempt it is, when an attempt came before: a retry, or
        (``rerun``) a run before a ``retry()``, whose attempts count from 1 again."""
        running = from_copy(running, self.config.state_dir, self.store)  # (its code's copy)
        assert running.log_path is not None and running.token is not None
        log_path = Path(running.log_path)
        gpus = running.gpus
        note = retry_note(running.oom_retried, running.gpu_memory_learned)  # (issue 14)
        separator = f"\n--- nbsched: attempt {running.attempts}{note} ---\n"
        if running.attempts > 1:
            append_log(log_path, separator)
        elif rerun:  # (if a run made the log: one marked running that never started did not)
            append_log(log_path, separator, only_to_a_log=True)
        result = f"{self.paths.results}{running.id}.json"
        base = self.base_env(running)
        return Launch(
            job=running,
            gpus=gpus,
            argv=build_argv(running, gpus, base),
            env=build_env(running, gpus, running.token, result, base),
            cwd=running.spec.cwd,
            log_path=log_path,
            exit_path=Path(self.paths.exit_file(running.token)),
        )

    def base_env(self, job: Job) -> dict[str, str]:
        """The environment ``job`` starts from: its submitter's, if it was stored with
        one (the variables withheld as secret from this engine's), else this engine's."""
        key = job.environment
        if key is None:
            return self.env
        if key not in self._envs:
            text = self.store.environment(key)
            self._envs[key] = None if text is None else submitter_env(text, self.env)
        env = self._envs[key]
        if env is None:  # (not in the database: never, unless a person removed it)
            logger.warning("job %s: its submitter's environment is gone; the engine's", job.id)
            return self.env
        return env

    # -- the pids -------------------------------------------------------------------------

    def stamp(self, wait: bool) -> None:
        """Take in the pids and start times the executors left to us: without ``wait``,
        only those that have come; and the reports of where jobs began.

        Done later than the start (by the next loop turn, before any end is handled):
        reading them all at once costs less than one after each start.  An attempt that
        could not start has no pid to write: its end (code 127) says why.
        """
        for job, started, executor in self.inbox.take_identified():
            self._learn(job, started, executor)
        kept: list[Unrecorded] = []
        for item in self.unrecorded:
            job = item.job
            if item.awaiting:
                found = item.executor.identify(job, wait=wait)
                if found is None:
                    kept.append(item)  # not known yet
                    continue
                pid, proc_start = found
                if pid is None:
                    continue
                item.job = job = job.evolve(pid=pid, proc_start=proc_start)
            elif job.pid is not None and job.proc_start is None:
                item.job = job = job.evolve(proc_start=process_start_time(job.pid))
            kept.append(item)
            self._update_running(job)
        self.unrecorded = kept

    def _learn(self, job: Job, started: Started, executor: Executor) -> None:
        """Where a started attempt turned out to run: written with the next pids (in
        place of its start's record, if that is not written yet)."""
        job = job.evolve(
            pid=started.pid,
            proc_start=started.proc_start,
            node=started.node or job.node,
            gpus=job.gpus if started.gpus is None else started.gpus,
        )
        for item in self.unrecorded:
            if item.job.id == job.id and item.job.token == job.token:
                item.job, item.began, item.gpus = job, started.began, started.gpus
                break
        else:
            self.unrecorded.append(Unrecorded(job, executor, started.began, started.gpus))
        self._update_running(job)

    def _update_running(self, job: Job) -> None:
        known = self.cache.running.get(job.id)
        if known is not None and known.token == job.token:
            self.cache.running[job.id] = job

    def take_known(self) -> list[Unrecorded]:
        """The started attempts whose pids can be written now (off ``unrecorded``)."""
        self.stamp(wait=False)
        taken: list[Unrecorded] = []
        kept: list[Unrecorded] = []
        for item in self.unrecorded:
            (kept if item.awaiting else taken).append(item)
        self.unrecorded = kept
        return taken

    def put_back(self, items: list[Unrecorded]) -> None:
        """Pids a transaction could not write: first in line for the next one."""
        self.unrecorded[:0] = items

    def record(self, wait: bool = False) -> None:
        """Write the pids of the attempts started since the last transaction: those
        known now, or (``wait``) all of them."""
        if wait:
            self.stamp(wait=True)
            items, self.unrecorded = self.unrecorded, []
        else:
            items = self.take_known()
        if not items:
            return
        try:
            missed = self.store.record_starts(pid_records(items))
        except Exception:
            # The processes run and are watched: their ends are recorded when they can
            # be (and the next engine finds them by their tokens).
            logger.exception("could not record the pids of %d started job(s)", len(items))
            return
        kill_cancelled(items, missed)


def kill_cancelled(items: list[Unrecorded], missed: Collection[int]) -> None:
    """End the attempts whose pids were not written because their jobs were cancelled
    between "marked running" and now: a cancel in another process may have looked for
    the process before it existed."""
    for item in items:
        if item.job.seq in missed:
            logger.info("job %s was cancelled while it started; ending it", item.job.id)
            item.executor.kill(item.job, 0.0)


def append_log(path: Path, text: str, only_to_a_log: bool = False) -> None:
    """Append ``text`` to a job's log; with ``only_to_a_log``, only if the log exists
    (an attempt that started made it, even one that wrote nothing)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | (0 if only_to_a_log else os.O_CREAT)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        if only_to_a_log:
            return
        raise
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _note_failed_start(job: Job, exc: Exception) -> None:
    logger.warning("job %s could not start: %s", job.id, exc)
    try:
        append_log(Path(job.log_path or ""), f"nbsched: the job could not start: {exc}\n")
    except OSError:
        pass
