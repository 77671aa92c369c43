"""Recovery: the jobs a previous dispatcher left running are adopted or ended.

Crash windows, and how the next dispatcher repairs them (:func:`recover`):

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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..executors.base import Executor, Exit, OnExit
from ..executors.process import (
    find_job_process,
    process_start_time,
    read_exit_file,
    same_process_alive,
)
from ..jobs import Job, JobStatus
from ..store import Store

logger = logging.getLogger(__name__)


def recover(
    store: Store,
    run_dir: Path,
    executor_of: Callable[[Job], Executor],
    on_exit: OnExit,
) -> None:
    """Re-attach the jobs a previous dispatcher left running (see the module doc):
    each is watched again (its end then reported to ``on_exit``), queued again, or
    reported ended."""
    running = store.find(statuses=[JobStatus.RUNNING])
    for job in running:
        try:
            _recover_one(store, run_dir, executor_of(job), job, on_exit)
        except Exception:
            logger.exception("could not recover job %s", job.id)
    # Exit files of attempts that are no longer running (e.g. cancelled while no
    # engine was alive) are read by nobody: remove them.
    keep = {f"{job.token}.exit" for job in running if job.token}
    for path in run_dir.glob("*.exit"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


def _recover_one(
    store: Store, run_dir: Path, executor: Executor, job: Job, on_exit: OnExit
) -> None:
    if job.token is None:
        _requeue_unstarted(store, job)
        return
    if not executor.local_processes:
        if executor.never_started(job):  # (Slurm: no job of it there)
            _requeue_unstarted(store, job)
        else:
            executor.watch(job, on_exit)  # e.g. Ray: its processes are not here
        return
    # The direct executor's spawner knows its jobs: running (or ended, end not
    # reported yet) ones are watched again; any other has its exit file.
    pid = executor.adopt(job, on_exit)
    if pid is not None:
        if job.pid != pid:
            store.update(job.id, pid=pid, proc_start=process_start_time(pid))
            logger.info("job %s: adopted process %d from the spawner", job.id, pid)
        return
    exit_file = run_dir / f"{job.token}.exit"
    if not same_process_alive(job.pid, job.proc_start) and read_exit_file(exit_file) is None:
        # No pid, or one that is not the job's process any more: look by token.
        found = find_job_process(job.token)
        if found is not None:
            pid, start = found
            store.update(job.id, pid=pid, proc_start=start)
            job = job.evolve(pid=pid, proc_start=start)
            logger.info("job %s: adopted process %d found by its token", job.id, pid)
        elif read_exit_file(exit_file) is not None:
            pass  # it ended between the two looks; the watch below records its code
        elif job.pid is None:
            _requeue_unstarted(store, job)
            return
        else:
            on_exit(job, Exit(None, gone_reason(job.pid)))
            return
    executor.watch(job, on_exit)


def _requeue_unstarted(store: Store, job: Job) -> None:
    store.transition(
        job.id,
        JobStatus.QUEUED,
        expect={JobStatus.RUNNING},
        reason="the engine stopped before the job started; queued again",
        attempts=max(0, job.attempts - 1),
        token=None,
        gpus=[],
    )


def gone_reason(pid: int) -> str:
    """Why a job whose process ``pid`` is gone, and left no exit code, is failed."""
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
