"""Submitting: the half of :class:`~nbsched.scheduler.GPUJobScheduler`'s API that
queues jobs one at a time (``add_job``, ``add_command``) and the two steps under
them and under every other way in (sweeps, the jobs file): ``make_spec`` checks a
submission against the GPUs of the engine that will run it, ``submit`` stores the
specs and hands them to the dispatcher.

A mixin of ``GPUJobScheduler`` only, kept apart so that ``scheduler.py`` reads as
the scheduler's life and its questions; the attributes it uses are declared below.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from itertools import chain, islice
from typing import TYPE_CHECKING, Any

from .checks import AfterValue, check_args
from .config import SchedulerConfig
from .dispatcher.entries import SMALL_BATCH, Entries
from .engine.core import Engine
from .executors.slurm_control import admit as slurm_admit
from .formats.jobsfile import JobLine, LineError
from .formats.jobsfile_reader import parse_lines
from .formats.llmconfig import LLMConfig
from .jobs import JobSpec, JobStatus, job_hash
from .jobsfile_watch import ALL_STATUSES, JobsFileWatcher
from .jobspec import build_spec
from .launch import capture_env
from .llmconfig_watch import LLMConfigWatcher
from .store import Store
from .submitter import EngineSubmitter
from .sweeps import DEDUP_STATUSES
from .waiting import Waits


class Submitting:
    """``add_job``, ``add_command``, ``make_spec`` and ``submit`` (see the module)."""

    config: SchedulerConfig
    store: Store
    _engine: Engine
    _llm: LLMConfigWatcher | None
    _waits: Waits

    def _check_open(self) -> None:  # (GPUJobScheduler's: raises once it is closed)
        raise NotImplementedError

    if TYPE_CHECKING:  # (Notifying's: notify= and on_end=)

        def _notified(self, spec: JobSpec, notify: object, on_end: object) -> JobSpec: ...

        def _watched(self, on_end: Any, submit: Callable[[], str]) -> str: ...

    @property
    def num_gpus(self) -> int:  # (GPUJobScheduler's)
        raise NotImplementedError

    @property
    def llm_config(self) -> LLMConfig | None:  # (GPUJobScheduler's)
        raise NotImplementedError

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
        once: bool = False,
        after: AfterValue = None,
        time_limit: float | str | None = None,
        expected_s: float | str | None = None,
        notify: Any = None,
        on_end: Callable[..., Any] | None = None,
        gpu_memory: float | str | None = None,
    ) -> str:
        """Queue ``python -u script args`` (``bash`` for ``.sh``); returns the job id.

        ``once=True`` (a notebook's cell job): when a job of the same script, conda env,
        arguments and allowed GPUs is queued, running or succeeded, nothing is queued
        and that job's id is returned, so a notebook run again finds its jobs.
        ``after``: the jobs it waits for (ids, a sweep id, or ``{"ok"|"notok"|"any"|
        "started": ids}``; bare ids wait for success): see the dependencies page.
        ``time_limit``: seconds, or a duration such as ``"2h30m"``; the job is ended
        there (as a cancel ends it) and fails with the reason ``time limit (2h30m)``.
        ``expected_s``: how long you expect it to run (seconds or a duration): a hint
        for the plan that ends nothing.  See ``docs/estimates.md``.
        ``notify``: where the engine announces its end (a URL, ``"mailto:ADDRESS"``, a
        ``Webhook``/``Email``, a list; ``False``: nowhere); ``on_end(end)``: called here,
        in a thread, with a ``JobEnd`` at its end.  See ``docs/notifications.md``.  And
        ``gpu_memory``: ``"18G"``, ``"512M"`` or MiB free on each of its GPUs."""
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
            after=after,
            time_limit=time_limit,
            expected_s=expected_s,
            gpu_memory=gpu_memory,
        )
        spec = self._notified(spec, notify, on_end)
        submit = (lambda: self._submit_once(spec)) if once else (lambda: self.submit([spec])[0])
        return self._watched(on_end, submit)

    def _submit_once(self, spec: JobSpec) -> str:
        """Queue ``spec`` unless a job of its hash is queued, running or succeeded; the
        id of the job that stands for it.  (Tried again if that job ended in between.)"""
        digest = job_hash(spec.script or "", spec.conda_env, spec.args, spec.allowed_gpus)
        spec = spec.evolve(hash=digest)
        while True:
            ids = self.submit([spec], skip_hash_statuses=DEDUP_STATUSES)
            if ids:
                return ids[0]
            there = self.store.find(hash=digest, statuses=DEDUP_STATUSES, limit=1, newest=True)
            if there:
                return str(there[-1].seq)

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
        after: AfterValue = None,
        time_limit: float | str | None = None,
        expected_s: float | str | None = None,
        notify: Any = None,
        on_end: Callable[..., Any] | None = None,
        gpu_memory: float | str | None = None,
    ) -> str:
        """Queue a shell command (``bash -c command``); returns the job id.
        ``after``, ``time_limit``, ``expected_s``, ``notify``, ``on_end`` and
        ``gpu_memory`` as in :meth:`add_job`."""
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
            after=after,
            time_limit=time_limit,
            expected_s=expected_s,
            gpu_memory=gpu_memory,
        )
        spec = self._notified(spec, notify, on_end)
        return self._watched(on_end, lambda: self.submit([spec])[0])

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
        after: AfterValue = None,
        time_limit: float | str | None = None,
        expected_s: float | str | None = None,
        gpu_memory: float | str | None = None,
    ) -> JobSpec:
        """Validate a submission; raises before anything is stored."""
        self._check_open()
        if gpu_memory is None and self._llm is not None and script is not None:
            gpu_memory, gpus = self._llm.current().memory_request(check_args(args))
            required_gpus = gpus if required_gpus is None else required_gpus
        n_gpus, owner = self._engine.gpu_count()
        return build_spec(
            n_gpus=n_gpus,
            owner=owner,
            precision=self.config.gpu_allocation_precision,
            default_retries=self.config.max_retries,
            default_requirement=self._default_requirement,
            snapshot=self._engine.monitor.snapshot,
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
            after=after,
            time_limit=time_limit,
            expected_s=expected_s,
            gpu_memory=gpu_memory,
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
        self, specs: Iterable[JobSpec], *, skip_hash_statuses: Iterable[JobStatus] | None = None
    ) -> list[str]:
        """Store validated specs as queued jobs (one transaction) and wake the dispatcher.

        With ``skip_hash_statuses``, specs whose hash matches a job in those statuses
        are skipped (their ids are missing from the result).

        The jobs start from this process's environment as it is now
        (``env_policy="submitter"``: read once for all of them), whichever engine
        starts them.
        """
        self._check_open()
        config = self.config
        if config.executor == "slurm":  # (refused or Slurm not answering: nothing stored)
            specs = slurm_admit(specs)
        environment = capture_env(config.env_exclude) if config.env_policy == "submitter" else None
        how: dict[str, Any] = {"owner_uid": os.getuid(), "executor": config.executor}
        how.update(skip_hash_statuses=skip_hash_statuses, environment=environment)
        specs = iter(specs)
        head = list(islice(specs, SMALL_BATCH + 1))
        if len(head) > SMALL_BATCH:
            specs, head = chain(iter(head), specs), []  # (not kept once stored)
            return self._submit_many(specs, how)
        rev, jobs = self.store.add_jobs_at(head, **how)
        stored = [j for j in jobs if j is not None]
        # (a job waiting for a dependency is no dispatcher's yet: its release brings it)
        free = [j for j in stored if not j.waiting]
        ours = self._engine.offer(rev, free)  # (wakes the dispatcher, ours or another's)
        # (ours ends nothing by taking them: only a wait() showing progress cares)
        self._waits.notify(() if ours else None)
        # New strings, made together after the jobs: the jobs' own ids lie among the
        # jobs' objects, and a caller keeping them (a sweep's 100,000 ids) would keep every
        # memory pool of those objects from being given back (~85 MB of RSS).
        return [str(j.seq) for j in stored]

    def _submit_many(self, specs: Iterable[JobSpec], how: dict[str, Any]) -> list[str]:
        """:meth:`submit` of more than a few jobs (a sweep's): of each job only the
        dispatcher's light entry is made, as its row is stored (``Store.add_made_at``);
        no whole job, and no spec kept once its rows are in (a whole job a spec was ~100
        MB more for a sweep of 100,000 jobs, and that much more of the process's RSS
        after)."""
        with self._engine.storing() as make:
            rev, made, waiting = self.store.add_made_at(specs, make, **how)
            free = Entries(e for e, w in zip(made, waiting, strict=True) if e is not None and not w)
            ours = self._engine.offer(rev, free)
        self._waits.notify(() if ours else None)
        return [str(e.seq) for e in made if e is not None]

    def add_jobs_file(
        self,
        path: str | os.PathLike[str],
        *,
        lines: Iterable[str] | None = None,
        already_run: str | None = None,
        gpu_arg: str | None = None,
        after: AfterValue = None,
    ) -> list[str]:
        """Read a jobs file once, as the watcher reads ``config.jobs_file``: its lines
        not seen before (no job in any status has their hash) are queued; returns
        their ids.  A bad line is reported as the watcher reports it.  ``gpu_arg``
        (``"--cuda"``) is given to each job, as :meth:`add_job` gives it, and ``after`` too.

        ``lines`` takes those lines instead of the file's (a relative script is still
        found from the file's folder).  ``already_run=REASON`` stores the new lines as
        jobs that ran elsewhere, status ``cancelled`` with that reason, instead of
        queueing them: the watcher then never queues those lines (how
        :mod:`nbsched.compat` imports the original scheduler's record of jobs run).
        """
        self._check_open()
        if already_run is not None and not isinstance(already_run, str):
            raise TypeError(f"already_run={already_run!r}: expected a reason (str) or None")
        config = self.config.replace(jobs_file=os.fspath(path))
        watcher = JobsFileWatcher(
            EngineSubmitter(
                self.store,
                config,
                make_spec=partial(self.make_spec, gpu_arg=gpu_arg, after=after),
                submit=self.submit if already_run is None else self._ran(already_run),
                num_gpus=lambda: self.num_gpus,
                llm_config=lambda: self.llm_config,
            )
        )
        if lines is not None:
            watcher.reader = _GivenLines(watcher.path, lines)  # type: ignore[assignment]
        return watcher.poll()

    def _ran(self, reason: str) -> Callable[..., list[str]]:
        """A ``submit`` that stores specs as having run elsewhere (see add_jobs_file)."""

        def store_as_run(specs: Iterable[JobSpec], **_: Any) -> list[str]:
            _rev, jobs = self.store.add_jobs_at(
                specs,
                owner_uid=os.getuid(),
                executor=self.config.executor,
                skip_hash_statuses=ALL_STATUSES,
            )
            done = []
            for job in jobs:  # (not offered to the dispatcher: none of them is to run)
                if job is not None and self.store.transition(
                    job.id, JobStatus.CANCELLED, expect=[JobStatus.QUEUED], reason=reason
                ):
                    done.append(str(job.seq))
            return done

        return store_as_run


class _GivenLines:
    """A jobs-file reader over given lines (``add_jobs_file(lines=...)``)."""

    missing = False

    def __init__(self, path: str, lines: Iterable[str]) -> None:
        self.path = path
        self.lines = list(lines)

    def read_new(self) -> tuple[list[JobLine], list[LineError]]:
        return parse_lines(self.lines, self.path)


__all__ = ["Submitting"]
