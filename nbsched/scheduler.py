"""GPUJobScheduler: the public API, and the owner of the engine's threads.

Any number of schedulers (in kernels, in the ``nbsched`` command) may open one
state directory.  Each adds, cancels, pauses and reads through the store; the one
holding the lease also runs the :class:`~nbsched.dispatcher.Dispatcher`.  A
standby scheduler takes the lease over when the holder dies.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import frames
from .allocation import explain, gpu_states, queue_key
from .checks import check_timeout, is_real, is_whole
from .config import SchedulerConfig
from .dispatcher import Dispatcher
from .errors import (
    ClosedError,
    InvalidTypeError,
    InvalidValueError,
    NbschedError,
    PermissionDeniedError,
)
from .executors.base import Executor
from .formats.llmconfig import LLMConfig
from .gpus import make_provider
from .gpus.base import GPUProvider
from .gpus.monitor import GPUMonitor
from .jobs import Job, JobSpec, JobStatus
from .jobsfile_watch import JobsFileWatcher
from .lease import DispatcherLease, WakeChannel
from .llmconfig_watch import LLMConfigWatcher
from .store import Store, prepare_state_dir
from .submission import build_spec
from .submitter import EngineSubmitter
from .sweeps import submit_sweep, sweep_frame, sweeps_frame
from .waiting import Waits

if TYPE_CHECKING:  # pandas is imported when a table is first asked for, not before
    import pandas as pd

logger = logging.getLogger(__name__)

STANDBY_POLL_S = 0.25
#: How long the GPU count another process's engine published is trusted before it is
#: read again (submissions are validated against it).
ENGINE_INFO_TTL_S = 1.0
_INT64 = 2**63  # integers the store keeps must lie in [-_INT64, _INT64)


class GPUJobScheduler:
    """Queue jobs on GPUs and run them.

    ``GPUJobScheduler(num_gpus=8, jobs_file_path="jobs.txt")`` (the original
    program's call) and ``GPUJobScheduler(config=SchedulerConfig(...))`` both work;
    keyword arguments override fields of ``config``.
    """

    def __init__(
        self,
        num_gpus: int | None = None,
        jobs_file_path: str | os.PathLike[str] | None = None,
        *,
        config: SchedulerConfig | None = None,
        **overrides: Any,
    ) -> None:
        if config is not None and not isinstance(config, SchedulerConfig):
            raise InvalidTypeError(f"config={config!r}: expected a SchedulerConfig")
        if num_gpus is not None:
            overrides["num_gpus"] = num_gpus
        if jobs_file_path is not None:
            overrides["jobs_file"] = os.fspath(jobs_file_path)
        base = config or SchedulerConfig()
        self.config = base.replace(**overrides) if overrides else base
        prepare_state_dir(self.config.state_dir)
        (self.config.state_dir / "results").mkdir(mode=0o700, exist_ok=True)
        self.store = Store(self.config.db_path)
        self._lock = threading.RLock()
        self._waits = Waits()  # the wait()s in progress
        self._provider: GPUProvider | None = None
        self._monitor: GPUMonitor | None = None
        self._executors: dict[str, Executor] = {}
        self._lease = DispatcherLease(self.config.state_dir)
        self._wake = WakeChannel(self.config.state_dir)
        self._dispatcher: Dispatcher | None = None
        self._role_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._llm = (
            LLMConfigWatcher(self.config.llm_config_file, self._llm_config_error)
            if self.config.llm_config_file
            else None
        )
        self._extensions: list[Any] = []
        self._explained: tuple[int, float, dict[str, str]] | None = None  # see why()
        # (when read, the GPU count the dispatching engine published, and its pid)
        self._engine_gpus: tuple[float, int | None, int | None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self.running else "stopped"
        return (
            f"<GPUJobScheduler {state}: {self.config.gpu_provider} GPUs, "
            f"{self.config.executor} executor, state_dir={str(self.config.state_dir)!r}>"
        )

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def provider(self) -> GPUProvider:
        self._check_open()
        with self._lock:
            if self._provider is None and self.config.executor == "ray":
                from .gpus.ray_provider import RayGpuProvider
                from .raycluster import cluster_for, import_ray

                import_ray()  # NotSupportedError naming `pip install 'nbsched[ray]'`
                cluster = cluster_for(self.config.ray_address, self.config.num_gpus)
                self._provider = RayGpuProvider(cluster)
            if self._provider is None:
                self._provider = make_provider(
                    self.config.gpu_provider,
                    num_gpus=self.config.num_gpus,
                    simulated_gpus_file=self.config.simulated_gpus_file,
                    usage=self.store.allocation,
                )
            return self._provider

    @property
    def monitor(self) -> GPUMonitor:
        self._check_open()
        with self._lock:
            if self._monitor is None:
                self._monitor = GPUMonitor(self.provider, self.config.gpu_monitor_interval_s)
            return self._monitor

    @property
    def llm_config(self) -> LLMConfig | None:
        """The LLM config now in force (re-read when its file changes), if one is set."""
        self._check_open()
        return self._llm.current() if self._llm is not None else None

    @property
    def num_gpus(self) -> int:
        self._check_open()
        return len(self.monitor.snapshot())

    @property
    def running(self) -> bool:
        """Whether this scheduler's engine threads are running."""
        return self._role_thread is not None and self._role_thread.is_alive()

    @property
    def is_dispatcher(self) -> bool:
        """Whether this scheduler's engine dispatches for its state directory now."""
        return self._lease.held

    def engine_settings(self) -> dict[str, Any] | None:
        """What the last engine that dispatched for this state directory published of
        its settings (``gpu_provider``, ``num_gpus``, ``simulated_gpus_file``,
        ``executor``, ``llm_config_file``, ``ray_address``, ``pid``), or None if none has:
        another process uses them to validate and describe jobs as that engine would."""
        self._check_open()
        try:
            info = json.loads(self.store.kv_get("engine") or "null")
        except ValueError:
            return None
        return info if isinstance(info, dict) else None

    def notices(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest warnings kept for people (a jobs-file line skipped, an LLM config
        not reloaded), oldest first: dicts of ``at`` (epoch s), ``level``, ``source``
        and ``message``; ``nbsched status`` shows them."""
        self._check_open()
        if isinstance(limit, bool) or not isinstance(limit, numbers.Integral):
            raise InvalidTypeError(f"limit={limit!r}: expected a whole number >= 0")
        if limit < 0:
            raise InvalidValueError(f"limit={limit!r}: expected a whole number >= 0")
        return self.store.notices(int(limit))

    @property
    def engine_pid(self) -> int | None:
        """The pid of the process whose engine dispatches for this state directory
        (this one's, or another's), or None when no engine runs there."""
        self._check_open()
        return self._lease.holder_pid()

    def start(self) -> GPUJobScheduler:
        """Start the engine threads (idempotent).  Returns the scheduler."""
        self._check_open()
        with self._lock:
            if self.running:
                return self
            self.monitor.snapshot()  # fail here, not in a thread, if GPUs can't be read
            info = json.dumps(self._engine_info())
            # The lease is tried here, not first in the thread: the engine record is the
            # dispatcher's (other processes validate jobs against it), so a standby must
            # not overwrite it; it writes its own when it takes over.
            if self._lease.try_acquire():
                try:
                    self.store.kv_set("engine", info)
                except BaseException:
                    self._lease.release()
                    raise
            self._stopping.clear()
            self._role_thread = threading.Thread(
                target=self._role_loop, name="nbsched-engine", daemon=True
            )
            self._role_thread.start()
            for ext in self._start_extensions():
                self._extensions.append(ext)
        return self

    def _llm_config_error(self, message: str) -> None:
        """A bad new version of the LLM config: kept where ``nbsched status`` shows it."""
        self.store.add_notice("llm config", message)

    def _engine_info(self) -> dict[str, Any]:
        """What another process (the CLI) needs to validate jobs as this engine would."""
        info = {
            "gpu_provider": self.provider.name,
            "num_gpus": self.num_gpus,
            "simulated_gpus_file": self.config.simulated_gpus_file,
            "executor": self.config.executor,
            "llm_config_file": _abspath(self.config.llm_config_file),
            # (the rules it places jobs by: why() in another process follows them)
            "gpu_memory_threshold": self.config.gpu_memory_threshold,
            "gpu_load_threshold": self.config.gpu_load_threshold,
            "gpu_allocation_precision": self.config.gpu_allocation_precision,
            "pid": os.getpid(),
        }
        if self.config.executor == "ray":  # other processes join the same Ray
            from .raycluster import cluster_for

            cluster = cluster_for(self.config.ray_address, self.config.num_gpus)
            info.update(gpu_provider=self.config.gpu_provider, ray_address=cluster.gcs_address)
        return info

    def stop(self, kill: bool = False) -> None:
        """Stop the engine threads.  Running jobs go on (the next engine adopts them)
        unless ``kill=True``, which cancels them.  After :meth:`close`, nothing to do."""
        if self._closed:
            return
        if kill:
            for job in self.store.find(statuses=[JobStatus.RUNNING]):
                try:
                    self.cancel(job.id)
                except NbschedError as exc:
                    logger.warning("stop(kill=True): job %s: %s", job.id, exc)
        with self._lock:
            self._stopping.set()
            for ext in self._extensions:
                ext.stop()
            self._extensions.clear()
            if self._dispatcher is not None:
                self._dispatcher.stop()
            thread = self._role_thread
        if thread is not None:
            thread.join(timeout=10)
            if thread.is_alive():  # e.g. a store write waiting out another process's lock
                logger.warning("nbsched: the engine thread is slow to stop; waiting for it")
                thread.join(timeout=60)
        with self._lock:
            alive = thread is not None and thread.is_alive()
            # A thread still dispatching keeps the lease (it releases it when it ends):
            # released here, a second dispatcher could start beside it.
            self._role_thread = thread if alive else None
            if alive:
                logger.error("nbsched: the engine thread did not stop; it keeps the lease")
            else:
                for ex in self._executors.values():
                    ex.close()
                self._executors.clear()
                self._lease.release()
        self._notify()

    def close(self) -> None:
        """Stop, and release the database and GPU handles.  Every later call but
        ``stop()`` and ``close()`` (which do nothing) raises :class:`ClosedError`."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        if self._provider is not None:
            self._provider.close()
        self.store.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(
                f"this scheduler is closed (close() was called); create a new "
                f"GPUJobScheduler for {str(self.config.state_dir)!r} to go on"
            )

    def __enter__(self) -> GPUJobScheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_extensions(self) -> list[Any]:
        """Helpers that run beside the engine (the jobs-file watcher)."""
        out: list[Any] = []
        if self.config.jobs_file:
            out.append(JobsFileWatcher(self._submitter()).start())
        return out

    def _role_loop(self) -> None:
        while not self._stopping.is_set():
            taken_over = not self._lease.held  # (start() took it, and wrote the record)
            if self._lease.try_acquire():
                try:
                    if taken_over:
                        logger.warning(
                            "nbsched: the engine dispatching for %s stopped; this one "
                            "(pid %d) dispatches now",
                            self.config.state_dir,
                            os.getpid(),
                        )
                        self._publish_engine()
                    self._dispatch()
                finally:
                    self._lease.release()
                return
            self._stopping.wait(STANDBY_POLL_S)

    def _publish_engine(self) -> None:
        """Write this engine's record (a standby that took the lease over)."""
        try:
            self.store.kv_set("engine", json.dumps(self._engine_info()))
        except Exception:
            logger.exception("nbsched: could not record this engine's GPUs in the store")

    def _gpu_count(self) -> tuple[int, str]:
        """How many GPUs jobs may ask for, and whose they are (for messages): the
        dispatching engine's (it is the one that runs them), as it published them in
        the store; this process's own where it dispatches, or where no engine has
        published any.  Another process's count is read again once a second at most."""
        if not self._lease.held:
            now = time.monotonic()
            known = self._engine_gpus
            if known is None or now - known[0] > ENGINE_INFO_TTL_S:
                count, pid = self._published_gpus()
                if pid is not None and pid != self._lease.holder_pid():
                    count = None  # a stopped engine's record: its GPUs may be gone too
                known = self._engine_gpus = (now, count, pid)
            _, count, pid = known
            if count is not None:
                who = f" (pid {pid})" if pid is not None else ""
                return count, f"the engine of this state directory{who}"
        return self.num_gpus, "this machine"

    def _published_gpus(self) -> tuple[int | None, int | None]:
        """The GPU count and pid in the engine record, if there is a usable one."""
        info = self.engine_settings()
        if info is None:
            return None, None
        count, pid = info.get("num_gpus"), info.get("pid")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            return None, None
        return count, pid if isinstance(pid, int) and not isinstance(pid, bool) else None

    def _dispatch(self) -> None:
        fifo = self._wake.open_reader()
        try:
            with self._lock:
                self._dispatcher = Dispatcher(
                    self.config,
                    self.store,
                    self.monitor,
                    self._executor,
                    fifo,
                    self._notify,
                )
                if self._stopping.is_set():
                    return  # stop() ran before this dispatcher existed, so it could not stop it
            logger.info("nbsched: dispatching for %s", self.config.state_dir)
            self._dispatcher.run()
        except Exception:
            logger.exception("the nbsched dispatcher stopped on an error")
        finally:
            os.close(fifo)
            with self._lock:
                if self._dispatcher is not None:
                    self._dispatcher.close()
                self._dispatcher = None

    def _executor(self, name: str) -> Executor:
        with self._lock:
            ex = self._executors.get(name)
            if ex is None:
                ex = self._make_executor(name)
                self._executors[name] = ex
            return ex

    def _make_executor(self, name: str) -> Executor:
        if name == "direct":
            from .executors.direct import DirectExecutor

            return DirectExecutor(self.config.run_dir)
        if name == "screen":
            from .executors.screen import ScreenExecutor

            return ScreenExecutor(self.config.run_dir)
        if name == "ray":
            from .executors.ray import RayExecutor

            return RayExecutor(self.config)
        raise InvalidValueError(f"executor={name!r}: accepted values are direct, screen, ray")

    def _notify(self, ended: Collection[int] | None = None) -> None:
        """Wake the wait()s a change may concern (see :meth:`Waits.notify`)."""
        self._waits.notify(ended)

    def _poke(self) -> None:
        """Wake the dispatcher: ours directly, another process's through the FIFO."""
        d = self._dispatcher
        if d is not None:
            d.wake()
        else:
            self._wake.poke()
        self._notify()

    # -- submitting -----------------------------------------------------------------------

    def add_job(
        self,
        script: str | os.PathLike[str],
        conda_env: str | None = None,
        args: Sequence[str] | str | None = None,
        priority: int = 0,
        required_gpus: float | None = None,
        allowed_gpus: Iterable[int] | str | None = None,
        *,
        max_retries: int | None = None,
        launcher: str | None = None,
        gpu_arg: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> str:
        """Queue ``python -u script args`` (``bash`` for ``.sh``); returns the job id."""
        self._check_open()
        spec = self.make_spec(
            script=script,
            conda_env=conda_env,
            args=args,
            priority=priority,
            required_gpus=required_gpus,
            allowed_gpus=allowed_gpus,
            max_retries=max_retries,
            launcher=launcher,
            gpu_arg=gpu_arg,
            cwd=cwd,
            env=env,
            name=name,
        )
        return self.submit([spec])[0]

    def add_command(
        self,
        command: str,
        required_gpus: float | None = None,
        priority: int = 0,
        allowed_gpus: Iterable[int] | str | None = None,
        *,
        max_retries: int | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> str:
        """Queue a shell command (``bash -c command``); returns the job id."""
        self._check_open()
        spec = self.make_spec(
            command=command,
            priority=priority,
            required_gpus=required_gpus,
            allowed_gpus=allowed_gpus,
            max_retries=max_retries,
            cwd=cwd,
            env=env,
            name=name,
        )
        return self.submit([spec])[0]

    def add_sweep(
        self,
        script: str | os.PathLike[str],
        args: str | Sequence[str] | None = None,
        conda_env: str | None = None,
        priority: int = 0,
        required_gpus: float | None = None,
        allowed_gpus: Iterable[int] | str | None = None,
        *,
        params: Mapping[str, Sequence[Any]] | None = None,
        param_style: str = "--{name}",
        limit: int | None = None,
        **options: Any,
    ) -> list[str]:
        """Queue one job per combination of a sweep; returns the ids it queued.

        ``args="--lr {0.1,0.01} --seed {1..3}"`` (grammar in :mod:`nbsched.formats.sweep`) and/or
        ``params={"lr": [0.1, 0.01]}`` (``param_style`` makes the flags).  Every job
        shares one sweep id (``.sweep_id`` of the returned list); combinations already
        queued, running or succeeded are not queued again.  More than
        ``config.max_sweep_jobs`` jobs are refused unless ``limit`` allows them.
        ``options`` are those of :meth:`add_job` (``max_retries``, ``cwd``, ``env``, ...).
        """
        self._check_open()
        return submit_sweep(
            self._submitter(),
            script,
            args,
            conda_env,
            priority,
            required_gpus,
            allowed_gpus,
            params=params,
            param_style=param_style,
            limit=limit,
            **options,
        )

    def sweep(self, sweep_id: str | None = None) -> pd.DataFrame:
        """One row per combination of a sweep (default: the latest): its parameters,
        status, duration (s), exit_code, id and the keys of the JSON object the job
        wrote to ``$NBSCHED_RESULT_FILE``."""
        self._check_open()
        return sweep_frame(self._submitter(), sweep_id)

    def sweeps(self) -> pd.DataFrame:
        """One row per sweep: id, definition, and how many combinations are in each status."""
        self._check_open()
        return sweeps_frame(self._submitter())

    # -- formats-split: the Submitter that sweeps and the jobs-file watcher are given ----

    def _submitter(self) -> EngineSubmitter:
        """This scheduler as :class:`~nbsched.submitter.SweepSubmitter`: what sweeps and
        the jobs-file watcher may do (validate, queue, read sweeps, keep notices)."""
        return EngineSubmitter(
            self.store,
            self.config,
            make_spec=self.make_spec,
            submit=self.submit,
            num_gpus=lambda: self.num_gpus,
            llm_config=lambda: self.llm_config,
        )

    # -- end of formats-split's block ------------------------------------------------------

    def make_spec(
        self,
        *,
        script: str | os.PathLike[str] | None = None,
        command: str | None = None,
        conda_env: str | None = None,
        args: Sequence[str] | str | None = None,
        priority: int = 0,
        required_gpus: float | None = None,
        allowed_gpus: Iterable[int] | str | None = None,
        max_retries: int | None = None,
        launcher: str | None = None,
        gpu_arg: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        sweep: str | None = None,
        params: Mapping[str, Any] | None = None,
        hash: str | None = None,
    ) -> JobSpec:
        """Validate a submission; raises before anything is stored."""
        self._check_open()
        n_gpus, owner = self._gpu_count()
        return build_spec(
            n_gpus=n_gpus,
            owner=owner,
            precision=self.config.gpu_allocation_precision,
            default_retries=self.config.max_retries,
            default_requirement=self._default_requirement,
            snapshot=self.monitor.snapshot,
            script=script,
            command=command,
            conda_env=conda_env,
            args=args,
            priority=priority,
            required_gpus=required_gpus,
            allowed_gpus=allowed_gpus,
            max_retries=max_retries,
            launcher=launcher,
            gpu_arg=gpu_arg,
            cwd=cwd,
            env=env,
            name=name,
            sweep=sweep,
            params=params,
            hash=hash,
        )

    def _default_requirement(self, args: Sequence[str]) -> tuple[float, str]:
        """GPUs for a job that names none, and where that number comes from: the LLM
        config's for the model ``--llm`` names (or its default), else the config's."""
        if self._llm is not None:
            llm = self._llm.current()
            where = f"the LLM config {self._llm.path}"
            required, model = llm.requirement_for(args), llm.model_of(args)
            if required is None:
                return llm.default_requirement, f"the default_requirement of {where}"
            if llm.unknown_model(args):
                return required, (
                    f"--llm {model}: the default_requirement of {where}, which lists no {model}"
                )
            return required, f"--llm {model} in {where}"
        return self.config.default_requirement, "the default_requirement of the config"

    def submit(
        self, specs: Sequence[JobSpec], *, skip_hash_statuses: Iterable[JobStatus] | None = None
    ) -> list[str]:
        """Store validated specs as queued jobs (one transaction) and wake the dispatcher.

        With ``skip_hash_statuses``, specs whose hash matches a job in those statuses
        are skipped (their ids are missing from the result).
        """
        self._check_open()
        rev, jobs = self.store.add_jobs_at(
            specs,
            owner_uid=os.getuid(),
            executor=self.config.executor,
            skip_hash_statuses=skip_hash_statuses,
        )
        d = self._dispatcher
        if d is not None:  # our own engine: it need not read the new rows back
            d.offer(rev, [j for j in jobs if j is not None])  # (and wakes it)
            self._notify(())  # (ends nothing: only a wait() showing progress cares)
        else:
            self._poke()
        return [j.id for j in jobs if j is not None]

    def retry(self, job_id: str) -> str:
        """Queue an ended job again (same id); its attempts start afresh."""
        self._check_open()
        job = self.store.get(job_id)
        if not job.status.ended:
            raise InvalidValueError(f"job {job.id} is {job.status.value}; only ended jobs retry")
        self._check_owner(job)
        moved = self.store.transition(
            job.id,
            JobStatus.QUEUED,
            expect={JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED},
            reason="retry requested",
            attempts=0,
            not_before=None,
            cancel_requested=False,
            # (a fresh job: not the last run's code, GPUs and times while it waits)
            exit_code=None,
            gpus=(),
            started=None,
            ended=None,
            pid=None,
            proc_start=None,
            node=None,
        )
        if moved is None:
            raise InvalidValueError(f"job {job.id} changed meanwhile; look at it again")
        self._poke()
        return job.id

    # -- cancelling, pausing --------------------------------------------------------------

    def cancel(self, job_id: str) -> bool:
        """Cancel a job: a queued job is removed from the queue; a running one has its
        whole process tree ended.  Returns False if it had already ended."""
        self._check_open()
        job = self.store.get(job_id)
        self._check_owner(job)
        if job.status == JobStatus.QUEUED:
            done = self.store.transition(
                job.id,
                JobStatus.CANCELLED,
                expect={JobStatus.QUEUED},
                reason="cancelled while queued",
                ended=time.time(),
            )
            if done is not None:
                self._poke()
                return True
            job = self.store.get(job_id)
        if job.status != JobStatus.RUNNING:
            return False
        self.store.update(job.id, cancel_requested=True)
        self._executor(job.executor or self.config.executor).kill(job, self.config.kill_grace_s)
        self.store.transition(
            job.id,
            JobStatus.CANCELLED,
            expect={JobStatus.RUNNING},
            guard=lambda j: j.token == job.token,
            reason="cancelled",
            ended=time.time(),
        )
        self._poke()
        return True

    def _check_owner(self, job: Job) -> None:
        if job.owner_uid is not None and job.owner_uid != os.getuid():
            raise PermissionDeniedError(
                f"job {job.id} belongs to uid {job.owner_uid}; only its owner may change it"
            )

    def pause_gpu(self, gpu: int) -> None:
        """No new job starts on ``gpu`` (running ones go on) until :meth:`resume_gpu`."""
        self._check_open()
        self.store.set_paused(self._check_gpu(gpu), True)
        self._poke()

    def resume_gpu(self, gpu: int) -> None:
        self._check_open()
        self.store.set_paused(self._check_gpu(gpu), False)
        self._poke()

    def _check_gpu(self, gpu: object) -> int:
        if not is_whole(gpu):
            raise InvalidTypeError(f"gpu={gpu!r}: expected a GPU index")
        assert isinstance(gpu, numbers.Integral)
        index = int(gpu)
        n, owner = self._gpu_count()
        if not 0 <= index < n:
            whose = "" if owner == "this machine" else f" ({owner})"
            raise InvalidValueError(f"gpu={index}: GPUs are 0-{n - 1}{whose}")
        return index

    # -- reading --------------------------------------------------------------------------

    def jobs(
        self,
        status: str | Iterable[str] | None = None,
        *,
        first: int | None = None,
        last: int | None = None,
    ) -> pd.DataFrame:
        """One row per job (columns in :data:`nbsched.frames.JOB_COLUMNS`), in
        submission order; only the ``first`` or the ``last`` N with those."""
        self._check_open()
        statuses = frames.parse_statuses(status)
        if first is not None and last is not None:
            raise InvalidValueError("jobs(): give first= or last=, not both")
        limit = first if first is not None else last
        if limit is not None:
            which = "first" if first is not None else "last"
            if not is_whole(limit):
                raise InvalidTypeError(f"{which}={limit!r}: expected a whole number >= 0")
            if limit < 0:
                raise InvalidValueError(f"{which}={limit!r}: expected a whole number >= 0")
            limit = int(limit)
        rows = self.store.table(statuses=statuses, limit=limit, newest=last is not None)
        return frames.jobs_frame(rows)

    def job(self, job_id: str) -> dict[str, Any]:
        """The fields of :meth:`jobs` for one job, as a dict."""
        self._check_open()
        return frames.job_row(self.store.get(job_id))

    def logs(self, job_id: str, tail: int | None = 50) -> str:
        """The last ``tail`` lines of a job's output (all of it with ``tail=None``)."""
        self._check_open()
        if tail is not None:
            if not is_whole(tail):
                raise InvalidTypeError(f"tail={tail!r}: expected a whole number >= 0 or None")
            if tail < 0:
                raise InvalidValueError(f"tail={tail!r}: expected a whole number >= 0 or None")
            tail = int(tail)
        job = self.store.get(job_id)
        return frames.read_tail(job.log_path, tail)

    def get_gpu_status(self) -> pd.DataFrame:
        """One row per GPU: readings, allocation, pause and the jobs on it."""
        self._check_open()
        return frames.gpu_frame(
            self.monitor.snapshot(),
            self.store.find(statuses=[JobStatus.RUNNING]),
            self.store.paused(),
        )

    def counts(self, sweep: str | None = None) -> dict[str, int]:
        """How many jobs are in each status (of a sweep: one per combination it queued)."""
        self._check_open()
        return self.store.counts(sweep=sweep)

    def screens(self) -> list[dict[str, Any]]:
        """The GNU screen sessions of running jobs: ``[{"id", "session", "pid"}]``.

        ``session`` is the full name (``12345.nbsched-17``) for ``screen -r``."""
        self._check_open()
        from .executors.process import same_process_alive
        from .executors.screen import session_of

        out = []
        for job in self.store.find(statuses=[JobStatus.RUNNING]):
            if job.executor == "screen" and job.pid is not None:
                alive = same_process_alive(job.pid, job.proc_start)
                session = session_of(job.pid) if alive else None
                out.append({"id": job.id, "session": session, "pid": job.pid})
        return out

    def wait(
        self,
        ids: Iterable[str] | str | None = None,
        timeout: float | None = None,
        progress: bool | None = None,
    ) -> pd.DataFrame:
        """Block until those jobs (default: every queued or running one) have ended.

        Returns their :meth:`jobs` rows; raises ``TimeoutError`` after ``timeout`` s.
        ``progress`` shows a bar (tqdm's notebook bar in Jupyter, a text bar in a
        terminal); by default only where someone watches (a kernel or a terminal).
        """
        self._check_open()
        limit = check_timeout(timeout)
        if isinstance(ids, str):
            ids = [ids]
        elif ids is not None and (
            isinstance(ids, (bytes, bytearray)) or not isinstance(ids, Iterable)
        ):
            hint = f"; for a time limit, pass timeout={ids!r}" if is_real(ids) else ""
            raise InvalidTypeError(
                f"ids={ids!r}: expected a job id such as '17', a list of job ids, or None "
                f"for every queued and running job{hint}"
            )
        return self._waits.wait(self.store, ids, limit, progress)

    def why(self, job_id: str) -> str:
        """Why a queued job has not started, in words: from the queue, the running jobs,
        the pauses and the GPUs as they are now (the dispatcher's own rules, in
        :func:`nbsched.allocation.explain`), so any process can ask."""
        self._check_open()
        job = self.store.get(job_id)
        if job.status != JobStatus.QUEUED:
            return f"job {job.id} is {job.status.value}"
        reason = self._waiting_reasons().get(job.id, "it was queued just now: look again")
        if self.engine_pid is None:
            reason += " (no engine runs on this state directory: nothing starts until one does)"
        return reason

    def _waiting_reasons(self) -> dict[str, str]:
        """:func:`explain` for the whole queue, worked out once per store revision (and
        at most once a second, for the GPUs' own changes): a status lists several."""
        rev = self.store.revision()
        now = time.monotonic()
        cached = self._explained
        if cached is not None and cached[0] == rev and now - cached[1] < 1.0:
            return cached[2]
        queue = sorted(self.store.find(statuses=[JobStatus.QUEUED]), key=queue_key)
        rules = {
            k: getattr(self.config, k)
            for k in ("gpu_memory_threshold", "gpu_load_threshold", "gpu_allocation_precision")
        }
        if not self.is_dispatcher:  # the rules of the engine that places the jobs
            info = self.engine_settings() or {}
            if info.get("pid") is not None and info.get("pid") == self.engine_pid:
                rules.update({k: info[k] for k in rules if is_real(info.get(k))})
        states = gpu_states(
            self.monitor.snapshot(),
            self.store.allocation(),
            self.store.paused(),
            rules["gpu_memory_threshold"],
            rules["gpu_load_threshold"],
        )
        reasons = explain(queue, states, time.time(), rules["gpu_allocation_precision"])
        self._explained = (rev, now, reasons)
        return reasons


def _abspath(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None
