"""The Ray executor: each job a Ray task on a cluster, nbsched still deciding when.

nbsched keeps its queue, priorities and reservations; the dispatcher's plan runs
over the cluster's GPUs (numbered as :mod:`nbsched.raycluster` says, grouped by
node so a multi-GPU job lands whole on one node), and a job is handed to Ray only
when the plan gives it GPUs, so Ray never holds a queue of its own.

Each job is one call of :func:`~nbsched.executors.ray_worker.run_job`, asking Ray
for ``num_gpus=required_gpus`` (fractions rounded as the plan books them),
``num_cpus=config.ray_num_cpus`` (Ray's default of one CPU per task would cap the
GPU queue at the core count), ``max_retries=0`` (nbsched retries, not Ray: a
re-run after a cancel would be wrong) and a hard affinity to the node the plan
chose.

**Which GPUs of the node.**  Ray accounts the shares per node and sets
``CUDA_VISIBLE_DEVICES`` to the GPUs *it* picked; the job is given the ones the
plan picked instead (translated to that node's device ids through Ray's list of
them).  Both pick best-fit with the lowest index first, so they agree whenever every
GPU of the node is open to the job; where ``allowed_gpus`` or a paused GPU rule
some out, only the plan's choice honours them, and following Ray's for some jobs
and the plan's for others would let two jobs meet on one GPU.  So the ``gpus`` of
a job are the GPUs it really uses, and Ray's own pick is only logged (debug).
This assumes nbsched hands out the cluster's GPUs: a task another Ray program
puts on a GPU is not seen per GPU.

**Worker reuse.**  Ray gives a task that names ``num_gpus`` in ``@ray.remote`` a
fresh worker process each time (``max_calls=1``, so the GPU memory a task leaves
in its worker is freed) -- 130-270 ms per job.  Here the task never touches the GPU
itself (the job is a subprocess), so the function is declared with ``max_calls=0``
and ``num_gpus`` is given per call: workers are reused, while each job still gets
its own GPU share and ``CUDA_VISIBLE_DEVICES`` from Ray.

**Output** comes back as the task's stream of results and is appended to the job's
log under the state directory of the machine running nbsched; the job's result
file comes back with its exit code.  **Cancel** ends the job's whole tree on its
node (a small Ray task there runs :func:`~nbsched.executors.base.kill_tree`), as
``ray.cancel(force=True)`` would kill only the worker and its direct child.

**After the engine stops.**  A Ray task belongs to the driver that submitted it, so
a new engine in another process cannot follow it: at recovery such a job is marked
failed with the reason (retried if it has retries left), after its leftover
processes on the cluster are ended.  Within one process (``stop()`` then
``start()``) running jobs are followed on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..allocation import rounded_requirement
from ..config import SchedulerConfig
from ..jobs import Job
from ..raycluster import RayCluster, cluster_for, import_ray, ray_installed
from .base import Executor, Exit, Launch, OnExit, OnStarted, Started
from .process import kill_tree, open_log

logger = logging.getLogger(__name__)

#: Ray's smallest GPU share.
MIN_RAY_FRACTION = 0.0001

FOREIGN_REASON = (
    "its Ray task belonged to an engine that stopped, and a Ray task cannot be followed "
    "by another driver; marked failed (leftover processes on the cluster were ended)"
)


class _Attempt:
    """One attempt in flight: its Ray task and what is known of it."""

    def __init__(self, job: Job, token: str, gen: Any, node_id: str, result_path: str | None):
        self.lock = threading.Lock()
        self.job = job
        self.token = token
        self.gen = gen
        self.node_id = node_id
        self.result_path = result_path
        self.on_exit: OnExit | None = None
        self.owner: RayExecutor | None = None
        self.started: dict[str, Any] | None = None
        self.applied = False
        self.outcome: Exit | None = None
        self.reported = False


# Process-wide, like the Ray connection: a new engine in this process follows the
# attempts an earlier one started.
_ATTEMPTS: dict[str, _Attempt] = {}
_LOCK = threading.Lock()
_LOOP: asyncio.AbstractEventLoop | None = None
_OPEN_EXECUTORS = 0


def _loop() -> asyncio.AbstractEventLoop:
    """The event loop (one thread) that follows every attempt's stream of results; it
    runs while an executor is open or an attempt is in flight."""
    global _LOOP
    with _LOCK:
        if _LOOP is None:
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=_run_loop, args=(loop,), name="nbsched-ray-results", daemon=True
            ).start()
            _LOOP = loop
        return _LOOP


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_forever()
    finally:
        loop.close()


def _stop_loop_if_idle() -> None:
    global _LOOP
    with _LOCK:
        if _LOOP is None or _OPEN_EXECUTORS > 0 or _ATTEMPTS:
            return
        loop, _LOOP = _LOOP, None
    loop.call_soon_threadsafe(loop.stop)


class RayExecutor(Executor):
    name = "ray"
    #: The job's processes are not on this machine: recovery asks :meth:`watch`, not ``/proc``.
    local_processes = False

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.cluster: RayCluster = cluster_for(config.ray_address, config.num_gpus)
        global _OPEN_EXECUTORS
        with _LOCK:
            _OPEN_EXECUTORS += 1
        self._report_lock = threading.Lock()  # guards _closed and _on_started
        self._closed = False
        #: Where a job's node, pid and start time go once its task began (the engine
        #: records them): see :meth:`report_starts`.
        self._on_started: OnStarted | None = None
        self._run: Any = None
        self._kill: Any = None

    def is_available(self) -> bool:
        return ray_installed()

    def _remotes(self) -> tuple[Any, Any, Any]:
        ray = self.cluster.connect()
        if self._run is None:
            from . import ray_worker

            # Shipped by value: a worker runs jobs without importing nbsched (and pandas).
            ray.cloudpickle.register_pickle_by_value(ray_worker)
            self._run = ray.remote(max_calls=0)(ray_worker.run_job)
            self._kill = ray.remote(max_retries=0)(ray_worker.kill_job)
        return ray, self._run, self._kill

    # -- starting -------------------------------------------------------------------------

    def start(self, launch: Launch) -> Started:
        ray, run, _ = self._remotes()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        where = self.cluster.locate(launch.gpus)
        node_id = where[0].node_id
        token = launch.env["NBSCHED_JOB_TOKEN"]
        gen = run.options(
            num_gpus=self.ray_gpus(launch.job.required_gpus),
            num_cpus=self.config.ray_num_cpus,
            max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            name=f"nbsched-job-{launch.job.id}",
        ).remote(
            tuple(launch.argv),
            dict(launch.env),
            launch.cwd,
            self.config.kill_grace_s,
            [g.local_id for g in where],
        )
        attempt = _Attempt(launch.job, token, gen, node_id, launch.env.get("NBSCHED_RESULT_FILE"))
        with _LOCK:
            _ATTEMPTS[token] = attempt
        asyncio.run_coroutine_threadsafe(_follow(attempt, launch.log_path), _loop())
        return Started(pid=None, proc_start=None, node=where[0].node)

    def ray_gpus(self, required: float) -> float:
        """What Ray is asked for: whole GPUs as they are, a fraction as the plan books it."""
        if required >= 1:
            return float(int(required))
        booked = rounded_requirement(required, self.config.gpu_allocation_precision)
        return max(MIN_RAY_FRACTION, round(booked, 4))

    # -- following ------------------------------------------------------------------------

    def watch(self, job: Job, on_exit: OnExit) -> None:
        with _LOCK:
            attempt = _ATTEMPTS.get(job.token or "")
        if attempt is None:
            self._forget_foreign(job, on_exit)
            return
        with attempt.lock:
            attempt.on_exit, attempt.job, attempt.owner = on_exit, job, self
            outcome = attempt.outcome if not attempt.reported else None
            attempt.reported = attempt.reported or outcome is not None
        self._apply_started(attempt)
        if outcome is not None:
            _report(attempt, on_exit, job, outcome)

    def report_starts(self, on_started: OnStarted) -> None:
        """A job's pid, node and start time are known only once its task began on a
        worker: they go to ``on_started`` (the engine records them)."""
        with self._report_lock:
            self._on_started = on_started

    def _apply_started(self, attempt: _Attempt) -> None:
        """Report where the job runs (node, its pid there, when it began) once it is watched."""
        with attempt.lock:
            info = attempt.started
            if info is None or attempt.applied or attempt.on_exit is None:
                return
            attempt.applied = True
            job = attempt.job
        if info.get("visible") != ",".join(info.get("ray_gpu_ids") or []):
            logger.debug(
                "job %s: runs on CUDA devices %s of its node (Ray's own pick: %s)",
                job.id,
                info.get("visible"),
                info.get("ray_gpu_ids"),
            )
        with self._report_lock:
            on_started = None if self._closed else self._on_started
        if on_started is None:
            return
        started = Started(
            pid=info.get("pid"),
            proc_start=info.get("proc_start"),
            node=self.cluster.label(info["node_id"]),
            began=time.time(),
        )
        try:
            on_started(job, started)
        except Exception:
            logger.exception("job %s: could not report where it runs", job.id)

    def _forget_foreign(self, job: Job, on_exit: OnExit) -> None:
        """A job another engine started: end what is left of it, then mark it failed."""

        def run() -> None:
            try:
                self._kill_on_nodes(job.node, job.pid, job.proc_start, job.token or "", 0.5)
            except Exception as exc:
                logger.warning("job %s: could not look for its leftover processes: %s", job.id, exc)
            on_exit(job, Exit(None, FOREIGN_REASON))

        threading.Thread(target=run, name=f"nbsched-ray-recover-{job.id}", daemon=True).start()

    # -- ending ---------------------------------------------------------------------------

    def kill(self, job: Job, grace_s: float) -> None:
        token = job.token or ""
        with _LOCK:
            attempt = _ATTEMPTS.get(token)
        pid, proc_start, node = job.pid, job.proc_start, job.node
        if attempt is not None:
            with attempt.lock:
                info = attempt.started
            if info is None:
                # Not started on the worker yet (as far as we know): a pending task is
                # dropped; a just-started one is interrupted and ends its own tree.
                try:
                    import_ray().cancel(attempt.gen, force=False)
                except Exception as exc:
                    logger.debug("job %s: ray.cancel: %s", job.id, exc)
            else:
                pid, proc_start = info.get("pid"), info.get("proc_start")
            node = self.cluster.label(attempt.node_id)
        try:
            self._kill_on_nodes(node, pid, proc_start, token, grace_s)
        except Exception as exc:
            if attempt is None:
                raise
            # The node cannot be reached: at least end the task (its worker and the
            # worker's guard take the job's process group with them).
            logger.warning("job %s: could not end its processes on %s (%s)", job.id, node, exc)
            import_ray().cancel(attempt.gen, force=True)

    def _kill_on_nodes(
        self,
        node: str | None,
        pid: int | None,
        proc_start: float | None,
        token: str,
        grace_s: float,
    ) -> None:
        """Run :func:`kill_tree` for the job on its node (on every node if unknown)."""
        ray = import_ray()
        if self.config.ray_address is None and not ray.is_initialized():
            # No Ray here, and nbsched's Ray is a local one: the job ran on this machine.
            kill_tree(pid, proc_start, token, grace_s)
            return
        _, _, kill = self._remotes()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node_id = self.cluster.node_id_of(node)
        alive = self.cluster.alive_nodes()
        targets = [node_id] if node_id in alive else alive
        here = self.cluster.local_node_id()
        refs = []
        for target in targets:
            # pid and start time identify the process on its own node only.
            own = (pid, proc_start) if target == node_id else (None, None)
            if target == here:
                kill_tree(own[0], own[1], token, grace_s)
                continue
            strategy = NodeAffinitySchedulingStrategy(node_id=target, soft=False)
            refs.append(
                kill.options(num_cpus=0, scheduling_strategy=strategy).remote(
                    own[0], own[1], token, grace_s
                )
            )
        if refs:
            ray.get(refs, timeout=grace_s + 60)

    def close(self) -> None:
        """Stop reporting to this engine.  Ray, and jobs still running, go on."""
        global _OPEN_EXECUTORS
        with self._report_lock:
            if self._closed:
                return
            self._closed = True
            self._on_started = None
        with _LOCK:
            _OPEN_EXECUTORS -= 1
        _stop_loop_if_idle()


async def _follow(attempt: _Attempt, log_path: Path) -> None:
    """Append the attempt's output to its log; report how it ended, once."""
    outcome: Exit | None = None
    fd = open_log(log_path)
    try:
        async for ref in attempt.gen:
            item = await ref
            if isinstance(item, bytes):
                _write_all(fd, item)
                continue
            event = item.get("event")
            if event == "started":
                with attempt.lock:
                    attempt.started = item
                    owner = attempt.owner
                if owner is not None:
                    owner._apply_started(attempt)
            elif event == "exit":
                _write_all(fd, item.get("tail") or b"")
                _save_result(attempt.result_path, item.get("result"))
                outcome = Exit(int(item["code"]))
            elif event == "error":
                outcome = Exit(None, str(item.get("message")))
                _write_all(fd, f"nbsched: {outcome.reason}\n".encode())
        if outcome is None:
            outcome = Exit(None, "the Ray task ended without saying how the job ended")
    except Exception as exc:
        outcome = Exit(None, _describe(exc))
        try:
            _write_all(fd, f"\nnbsched: {outcome.reason}\n".encode())
        except OSError:
            pass
    finally:
        os.close(fd)
    with attempt.lock:
        attempt.outcome = outcome
        callback, job = attempt.on_exit, attempt.job
        report = callback is not None and not attempt.reported
        attempt.reported = attempt.reported or report
    if report:
        assert callback is not None
        _report(attempt, callback, job, outcome)


def _report(attempt: _Attempt, on_exit: OnExit, job: Job, outcome: Exit) -> None:
    with _LOCK:
        if _ATTEMPTS.get(attempt.token) is attempt:
            del _ATTEMPTS[attempt.token]
    try:
        on_exit(job, outcome)
    except Exception:
        logger.exception("recording the end of job %s failed", job.id)
    _stop_loop_if_idle()


def _describe(exc: BaseException) -> str:
    """Why a Ray task ended without an exit code, in one line."""
    kind = type(exc).__name__
    text = str(exc).strip().splitlines()
    first = text[-1] if text else ""
    if "TaskCancelled" in kind or "TaskCancelledError" in first:
        return "the Ray task was cancelled"
    if "WorkerCrashed" in kind or "WorkerCrashedError" in first:
        return "the Ray worker running the job died"
    if "NodeDied" in kind or "NodeDiedError" in first:
        return "the Ray node running the job died"
    return f"the Ray task failed: {kind}: {first[:300]}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _save_result(path: str | None, text: str | None) -> None:
    if not path or text is None:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, text.encode())
    finally:
        os.close(fd)
