"""What sweeps and the jobs-file watcher may ask of the engine, and nothing more.

:mod:`nbsched.sweeps` and :mod:`nbsched.jobsfile_watch` queue jobs and read back
what they queued; they take a :class:`Submitter` (the watcher) or a
:class:`SweepSubmitter` (sweeps), never the scheduler or its store, so each is
tested with a fake and neither can reach into the engine.  :class:`EngineSubmitter`
is the engine's one: ``GPUJobScheduler`` makes it from its store and its own
``make_spec``/``submit``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from .config import SchedulerConfig
from .formats.llmconfig import LLMConfig
from .jobs import Job, JobSpec, JobStatus
from .store import Store


class Submitter(Protocol):
    """Validates and queues jobs, and keeps notices for people (``nbsched status``)."""

    @property
    def config(self) -> SchedulerConfig: ...

    @property
    def num_gpus(self) -> int: ...

    def llm_config(self) -> LLMConfig | None:
        """The LLM config now in force, if one is set."""
        ...

    def make_spec(self, **fields: Any) -> JobSpec:
        """A validated spec (the arguments of ``GPUJobScheduler.make_spec``)."""
        ...

    def submit(
        self, specs: Iterable[JobSpec], *, skip_hash_statuses: Iterable[JobStatus] | None = None
    ) -> list[str]:
        """Queue specs in one transaction, skipping those whose hash a job in
        ``skip_hash_statuses`` has; the ids of those queued."""
        ...

    def notices(self, limit: int) -> list[dict[str, Any]]:
        """The latest notices, oldest first (dicts with ``source`` and ``message``)."""
        ...

    def add_notice(self, source: str, message: str) -> None: ...


class SweepSubmitter(Submitter, Protocol):
    """A :class:`Submitter` that also keeps sweeps' definitions and finds their jobs."""

    def sweep_record(self, sweep_id: str) -> dict[str, Any] | None: ...

    def sweep_records(self) -> list[tuple[str, float, dict[str, Any]]]:
        """Every sweep as ``(id, created, record)``, oldest first."""
        ...

    def sweep_of_key(self, key: str) -> str | None:
        """The id of the sweep recorded under ``key`` (a hash of its definition)."""
        ...

    def record_sweep(self, key: str, record: dict[str, Any]) -> str:
        """Record a new sweep under ``key``; its id."""
        ...

    def find_jobs(
        self,
        *,
        sweep: str | None = None,
        hash: str | None = None,
        statuses: Iterable[JobStatus] | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[Job]: ...

    def counts(self, sweep: str | None = None) -> dict[str, int]: ...


class EngineSubmitter:
    """The engine's :class:`SweepSubmitter`: its store, config and checks."""

    def __init__(
        self,
        store: Store,
        config: SchedulerConfig,
        *,
        make_spec: Callable[..., JobSpec],
        submit: Callable[..., list[str]],
        num_gpus: Callable[[], int],
        llm_config: Callable[[], LLMConfig | None],
    ) -> None:
        self._store = store
        self._config = config
        self._make_spec = make_spec
        self._submit = submit
        self._num_gpus = num_gpus
        self._llm_config = llm_config

    @property
    def config(self) -> SchedulerConfig:
        return self._config

    @property
    def num_gpus(self) -> int:
        return self._num_gpus()

    def llm_config(self) -> LLMConfig | None:
        return self._llm_config()

    def make_spec(self, **fields: Any) -> JobSpec:
        return self._make_spec(**fields)

    def submit(
        self, specs: Iterable[JobSpec], *, skip_hash_statuses: Iterable[JobStatus] | None = None
    ) -> list[str]:
        return self._submit(specs, skip_hash_statuses=skip_hash_statuses)

    def notices(self, limit: int) -> list[dict[str, Any]]:
        return self._store.notices(limit)

    def add_notice(self, source: str, message: str) -> None:
        self._store.add_notice(source, message)

    def sweep_record(self, sweep_id: str) -> dict[str, Any] | None:
        return self._store.sweep_spec(sweep_id)

    def sweep_records(self) -> list[tuple[str, float, dict[str, Any]]]:
        return self._store.sweeps()

    def sweep_of_key(self, key: str) -> str | None:
        return self._store.kv_get(key)

    def record_sweep(self, key: str, record: dict[str, Any]) -> str:
        sweep_id = self._store.new_sweep(record)
        self._store.kv_set(key, sweep_id)
        return sweep_id

    def find_jobs(
        self,
        *,
        sweep: str | None = None,
        hash: str | None = None,
        statuses: Iterable[JobStatus] | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[Job]:
        return self._store.find(
            sweep=sweep, hash=hash, statuses=statuses, limit=limit, newest=newest
        )

    def counts(self, sweep: str | None = None) -> dict[str, int]:
        return self._store.counts(sweep=sweep)
