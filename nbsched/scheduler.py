"""GPUJobScheduler: the public API.

Any number of schedulers (in kernels, in the ``nbsched`` command) may open one
state directory.  Each adds, cancels, pauses and reads through the store; the one
holding the lease also runs the :class:`~nbsched.dispatcher.Dispatcher`, and a
standby takes the lease over when the holder dies.  That life of the engine is
:mod:`nbsched.engine`'s; this module checks arguments, calls into the engine's
parts and makes the tables.
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import frames
from .checks import check_count, check_timeout, is_whole
from .config import SchedulerConfig
from .dispatcher import Dispatcher
from .engine import control
from .engine.core import Engine
from .engine.events import JobEvents
from .engine.role import Helper
from .errors import ClosedError, InvalidTypeError, InvalidValueError, NbschedError
from .formats.llmconfig import LLMConfig
from .gpus.base import GPUProvider
from .gpus.monitor import GPUMonitor
from .jobs import JobStatus
from .jobsfile_watch import JobsFileWatcher
from .llmconfig_watch import LLMConfigWatcher, default_llm_config
from .notify.api import Notifying
from .pipeline.api import NotebookJobs
from .scheduler_control import Controlling
from .scheduler_memory import MemoryViews
from .scheduler_simulate import Simulating
from .scheduler_submit import Submitting
from .store import Store, prepare_state_dir
from .store.estimates import Estimator
from .submitter import EngineSubmitter
from .sweep_tables import sweep_frame, sweep_job_ids, sweeps_frame
from .sweeps import SweepIds, submit_sweep
from .waiting import Waits, check_ids
from .why import Why, lined

if TYPE_CHECKING:  # pandas is imported when a table is first asked for, not before
    import pandas as pd

logger = logging.getLogger(__name__)


class GPUJobScheduler(NotebookJobs, Submitting, Controlling, Simulating, Notifying, MemoryViews):
    """Queue jobs on GPUs and run them.

    ``GPUJobScheduler(num_gpus=8, jobs_file_path="jobs.txt")`` (the original
    program's call) and ``GPUJobScheduler(config=SchedulerConfig(...))`` both work;
    keyword arguments override fields of ``config``.  Like the original, the call
    with ``jobs_file_path`` reads ``./llm_config.json`` when it exists and no LLM
    config is named (``llm_config_file=None`` says "none"); the log says so.
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
        if jobs_file_path is not None and "llm_config_file" not in overrides:
            found = default_llm_config(base)
            if found is not None:
                overrides["llm_config_file"] = found
        self.config = base.replace(**overrides) if overrides else base
        prepare_state_dir(self.config.state_dir)
        (self.config.state_dir / "results").mkdir(mode=0o700, exist_ok=True)
        self.store = Store(self.config.db_path)
        self._waits = Waits()  # the wait()s in progress
        self._engine = Engine(self.config, self.store, self._notify)
        self._why = Why(
            self.store,
            lambda: self._engine.monitor.snapshot(),
            lambda: self._engine.record.placement_rules(self.config),
            self._engine.role.lease.holder_pid,
            first_in_line=lambda: lined(self._dispatcher),
        )
        self._llm = (
            LLMConfigWatcher(self.config.llm_config_file, self._llm_config_error)
            if self.config.llm_config_file
            else None
        )
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
        return self._engine.provider

    @property
    def monitor(self) -> GPUMonitor:
        self._check_open()
        return self._engine.monitor

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
        return self._engine.role.running

    @property
    def is_dispatcher(self) -> bool:
        """Whether this scheduler's engine dispatches for its state directory now."""
        return self._engine.role.lease.held

    def engine_settings(self) -> dict[str, Any] | None:
        """What the last engine that dispatched for this state directory published of
        its settings (``gpu_provider``, ``num_gpus``, ``simulated_gpus_file``,
        ``executor``, ``llm_config_file``, ``ray_address``, ``pid``), or None if none has:
        another process uses them to validate and describe jobs as that engine would."""
        self._check_open()
        return self._engine.record.settings()

    def notices(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest warnings kept for people (a jobs-file line skipped, an LLM config
        not reloaded), oldest first: dicts of ``at`` (epoch s), ``level``, ``source``
        and ``message``; ``nbsched status`` shows them."""
        self._check_open()
        return self.store.notices(check_count("limit", limit))

    def job_events(self) -> JobEvents:
        """A reader of this state directory's job starts and ends from now on, whichever
        process runs them: each ``read()`` returns the :class:`JobEvent` s since the last
        (``event.line()``: ``job 12 started on GPU(s) 0,1: ...``; ``nbsched serve``'s lines)."""
        self._check_open()
        return JobEvents(self.store)

    @property
    def engine_pid(self) -> int | None:
        """The pid of the process whose engine dispatches for this state directory
        (this one's, or another's), or None when no engine runs there."""
        self._check_open()
        return self._engine.role.lease.holder_pid()

    def start(self) -> GPUJobScheduler:
        """Start the engine threads (idempotent).  Returns the scheduler."""
        self._check_open()
        self._engine.start(self._start_extensions)
        return self

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
        self._engine.stop()
        self._notify()

    def close(self) -> None:
        """Stop, and release the database and GPU handles.  Every later call but
        ``stop()`` and ``close()`` (which do nothing) raises :class:`ClosedError`."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        self._engine.close()
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

    def _start_extensions(self) -> list[Helper]:
        """Helpers that run beside the engine (the jobs-file watcher, the notifier)."""
        out: list[Helper] = []
        if self.config.jobs_file:
            out.append(JobsFileWatcher(self._submitter()).start())
        return [*out, self._notify_helper(), self._memory_watch.start()]

    def _llm_config_error(self, message: str) -> None:
        """A bad new version of the LLM config: kept where ``nbsched status`` shows it."""
        self.store.add_notice("llm config", message)

    @property
    def _dispatcher(self) -> Dispatcher | None:
        """This process's dispatcher while it dispatches."""
        return self._engine.dispatcher

    def _gpu_count(self) -> tuple[int, str]:
        """How many GPUs jobs may ask for, and whose (see :meth:`EngineRecord.gpu_count`)."""
        return self._engine.gpu_count()

    def _notify(self, ended: Collection[int] | None = None) -> None:
        """Wake the wait()s a change may concern (see :meth:`Waits.notify`)."""
        self._waits.notify(ended)

    def _poke(self) -> None:
        """Wake the dispatcher (ours, or another process's), and the wait()s."""
        self._engine.poke()
        self._notify()

    # -- submitting (add_job, add_command, make_spec, submit: see Submitting) -------------

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
    ) -> SweepIds:
        """Queue one job per combination of a sweep; returns every combination's job id.

        ``args="--lr {0.1,0.01} --seed {1..3}"`` (grammar in :mod:`nbsched.formats.sweep`) and/or
        ``params={"lr": [0.1, 0.01]}`` (``param_style`` makes the flags).  Every job
        shares one sweep id (``.sweep_id`` of the returned list); combinations already
        queued, running or succeeded are not queued again: their jobs' ids are in the
        list too (so ``wait(ids)`` waits for the whole sweep), ``.queued`` has the new
        ones and ``.describe()`` says which.  More than
        ``config.max_sweep_jobs`` jobs are refused unless ``limit`` allows them.
        ``options`` are those of :meth:`add_job` (``max_retries``, ``cwd``, ``env``, ...),
        and ``notify`` (once for the sweep; each job's with ``notify_each=True``), ``on_end``.
        """
        self._check_open()
        return submit_sweep(
            self._notifying(self._submitter(), options),  # (takes notify=... out of options)
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

    def retry(self, job_id: str) -> str:
        """Queue an ended job again (same id); its attempts start afresh."""
        self._check_open()
        job_id = control.retry(self.store, job_id)
        self._poke()
        return job_id

    # -- cancelling, pausing --------------------------------------------------------------

    def cancel(self, job_id: str) -> bool:
        """Cancel a job: a queued job is removed from the queue; a running one has its
        whole process tree ended.  Returns False if it had already ended."""
        self._check_open()
        done = control.cancel(self.store, job_id, self._engine.kill)
        if done:
            self._poke()
        return done

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
            limit = check_count("first" if first is not None else "last", limit)
        rows = self.store.table(statuses=statuses, limit=limit, newest=last is not None)
        return self._with_memory(self._with_eta(frames.jobs_frame(rows, Estimator(self.store))))

    def queue(self, first: int | None = None) -> pd.DataFrame:
        """The queued jobs in the order they start (priority, then submission), the
        columns of :meth:`jobs`; only the ``first`` N with it (a status shows the head
        of a long queue without reading all of it)."""
        self._check_open()
        limit = None if first is None else check_count("first", first, " or None")
        return self._with_eta(
            frames.jobs_frame(self.store.queued_table(limit), Estimator(self.store))
        )

    def job(self, job_id: str) -> dict[str, Any]:
        """The fields of :meth:`jobs` for one job, as a dict."""
        self._check_open()
        row = frames.job_row(self.store.get(job_id), Estimator(self.store))
        return self._with_code(self._with_memory_row(row))

    def logs(self, job_id: str, tail: int | None = 50) -> str:
        """The last ``tail`` lines of a job's output (all of it with ``tail=None``)."""
        self._check_open()
        if tail is not None:
            tail = check_count("tail", tail, " or None")
        job = self.store.get(job_id)
        return frames.read_tail(job.log_path, tail)

    def get_gpu_status(self) -> pd.DataFrame:
        """One row per GPU: readings, allocation, pause and the jobs on it."""
        self._check_open()
        running, paused = self.store.find(statuses=[JobStatus.RUNNING]), self.store.paused()
        snapshots = self.monitor.snapshot()
        return self._with_gpu_memory(frames.gpu_frame(snapshots, running, paused), snapshots)

    def counts(self, sweep: str | None = None) -> dict[str, int]:
        """How many jobs are in each status (of a sweep: one per combination it queued)."""
        self._check_open()
        return self.store.counts(sweep=sweep)

    def screens(self) -> list[dict[str, Any]]:
        """The GNU screen sessions of running jobs: ``[{"id", "session", "pid"}]``.

        ``session`` is the full name (``12345.nbsched-17``) for ``screen -r``."""
        self._check_open()
        from .executors.screen import live_session

        return [
            {"id": job.id, "session": live_session(job), "pid": job.pid}
            for job in self.store.find(statuses=[JobStatus.RUNNING])
            if job.executor == "screen" and job.pid is not None
        ]

    def wait(
        self,
        ids: Iterable[str] | str | None = None,
        timeout: float | None = None,
        progress: bool | None = None,
        *,
        sweep: str | None = None,
    ) -> pd.DataFrame:
        """Block until those jobs (default: every queued or running one; ``sweep``: the
        jobs of that sweep's :meth:`sweep` table) have ended.

        Returns their :meth:`jobs` rows; raises ``TimeoutError`` after ``timeout`` s.
        ``progress`` shows a bar (tqdm's notebook bar in Jupyter, a text bar in a
        terminal); by default only where someone watches (a kernel or a terminal).
        """
        self._check_open()
        limit = check_timeout(timeout)
        if sweep is not None:
            if ids is not None:
                raise InvalidValueError("wait(): give ids or sweep=, not both")
            ids = sweep_job_ids(self._submitter(), sweep)
        return self._waits.wait(self.store, check_ids(ids), limit, progress)

    def why(self, job_id: str) -> str:
        """Why a queued job has not started, in words: from the queue, the running jobs,
        the pauses and the GPUs as they are now (the dispatcher's own rules, in
        :func:`nbsched.allocation.explain_one`), so any process can ask."""
        self._check_open()
        return self._why.why(job_id)
