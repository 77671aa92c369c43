"""This process's engine for one state directory: its parts, and their life together.

:class:`Engine` makes each part when first needed (the GPU provider and its monitor,
the executors), owns the role (dispatcher or standby) and the engine record, and is
the one place the :class:`~nbsched.dispatcher.Dispatcher` is made.
``GPUJobScheduler`` drives it; nothing here checks a user's arguments.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from ..config import SchedulerConfig
from ..dispatcher import Dispatcher
from ..dispatcher.entries import Entries, Queued, entry_maker
from ..gpus.base import GPUProvider
from ..gpus.monitor import GPUMonitor
from ..jobs import Job, JobSpec
from ..pipeline.snapshots import settle as settle_snapshots
from ..store import Store
from .record import EngineRecord, engine_info
from .registry import Executors, make_gpu_provider
from .role import EngineRole, Helper


class Engine:
    """The engine parts of one process.  ``notify(ended)`` is told of the changes the
    dispatcher records (see :meth:`nbsched.waiting.Waits.notify`)."""

    def __init__(
        self,
        config: SchedulerConfig,
        store: Store,
        notify: Callable[[Collection[int] | None], None],
    ) -> None:
        self.config = config
        self.store = store
        self._notify = notify
        self._lock = threading.RLock()
        self._provider: GPUProvider | None = None
        self._monitor: GPUMonitor | None = None
        self.executors = Executors(config)
        self.role: EngineRole[Dispatcher] = EngineRole(
            config.state_dir,
            self._new_dispatcher,
            on_take_over=lambda: self.record.publish(self.info),
            on_stop=self.executors.close,
        )
        self.record = EngineRecord(store, self.role.lease)

    @property
    def provider(self) -> GPUProvider:
        with self._lock:
            if self._provider is None:
                jobs = partial(self.store.simulated_jobs, self.config.state_dir / "results")
                self._provider = make_gpu_provider(self.config, self.store.allocation, jobs)
            return self._provider

    @property
    def monitor(self) -> GPUMonitor:
        with self._lock:
            if self._monitor is None:
                self._monitor = GPUMonitor(self.provider, self.config.gpu_monitor_interval_s)
            return self._monitor

    @property
    def dispatcher(self) -> Dispatcher | None:
        """This process's dispatcher while it dispatches."""
        return self.role.dispatcher

    def info(self) -> dict[str, Any]:
        """The engine record this engine publishes (see :mod:`nbsched.engine.record`)."""
        return engine_info(self.config, self.provider.name, len(self.monitor.snapshot()))

    def start(self, helpers: Callable[[], Iterable[Helper]]) -> None:
        """Start the engine thread, and ``helpers()`` beside it (idempotent)."""
        with self._lock:
            if self.role.running:
                return
            self.monitor.snapshot()  # fail here, not in a thread, if GPUs can't be read
            info = self.info()
            self.role.start(lambda: self.record.write(info), helpers)

    def stop(self) -> None:
        """Stop the engine thread (see :meth:`EngineRole.stop`)."""
        self.role.stop()  # (then closes the executors, if the engine thread ended)

    def close(self) -> None:
        """Release the GPU handles (after :meth:`stop`), once no thread of ours will read
        the store (the code snapshots' removal), which the caller closes next."""
        settle_snapshots(self.config.state_dir)
        if self._provider is not None:
            self._provider.close()

    def gpu_count(self) -> tuple[int, str]:
        """How many GPUs jobs may ask for, and whose (see :meth:`EngineRecord.gpu_count`)."""
        return self.record.gpu_count(lambda: len(self.monitor.snapshot()))

    def kill(self, job: Job) -> None:
        """End a running job's whole process tree, through the executor that runs it."""
        self.executors(job.executor or self.config.executor).kill(job, self.config.kill_grace_s)

    @contextmanager
    def storing(self) -> Iterator[Callable[[int, int, JobSpec], Queued]]:
        """Around storing jobs to :meth:`offer` as entries: how to make a job's entry as
        it is stored (see :func:`~nbsched.dispatcher.entries.entry_maker`); our
        dispatcher, if any, reads no change meanwhile (see
        :meth:`~nbsched.dispatcher.inbox.Inbox.storing_offer`)."""
        d = self.role.dispatcher
        if d is None:
            yield entry_maker(None)
            return
        with d.inbox.storing_offer():
            yield entry_maker(d.inbox.estimates)

    def offer(self, rev: int, jobs: list[Job] | Entries) -> bool:
        """Jobs this process just stored (or their entries, from :meth:`entry_maker`),
        as written at ``rev``: True if our own
        dispatcher took them (it need not read the new rows back), else False (another
        process's dispatcher was woken to read them)."""
        d = self.role.dispatcher
        if d is None:
            self.role.wake_channel.poke()
            return False
        d.offer(rev, jobs)  # (and wakes it)
        return True

    def poke(self) -> None:
        """Wake the dispatcher: ours directly, another process's through the FIFO."""
        d = self.role.dispatcher
        if d is not None:
            d.wake()
        else:
            self.role.wake_channel.poke()

    def _new_dispatcher(self, fifo: int) -> Dispatcher:
        """The dispatcher, once this process holds the lease (``fifo``: the wake channel)."""
        return Dispatcher(self.config, self.store, self.monitor, self.executors, fifo, self._notify)


__all__ = ["Engine"]
