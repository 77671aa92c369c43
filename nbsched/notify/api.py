"""Notifications on :class:`~nbsched.scheduler.GPUJobScheduler`: the mixin that gives
``add_job``, ``add_command`` and ``add_sweep`` their ``notify=`` and ``on_end=``, starts
the engine's :class:`~.deliver.Deliverer`, and shows the outbox (``notifications()``).

A mixin of ``GPUJobScheduler`` only; the attributes it uses are declared below.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from typing import Any, cast

from ..checks import check_count
from ..config import SchedulerConfig
from ..engine.core import Engine
from ..errors import InvalidTypeError
from ..jobs import JobSpec
from ..store import Store
from ..submitter import EngineSubmitter, SweepSubmitter
from ..waiting import Waiter, Waits
from .callbacks import EndCallbacks, OnEnd
from .deliver import Deliverer, sweep_key
from .targets import Notifier, check_on_end, dumps, parse_notify

#: The notification options of ``add_sweep`` (beside those of ``add_job``).
SWEEP_NOTIFY_OPTIONS = ("notify", "on_end", "notify_each")


class Notifying:
    """``notify=``/``on_end=`` for submissions, the deliverer, ``notifications()``."""

    config: SchedulerConfig
    store: Store
    _engine: Engine
    _waits: Waits
    _end_callbacks: EndCallbacks | None = None

    def _check_open(self) -> None:  # (GPUJobScheduler's)
        raise NotImplementedError

    def notifications(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest notifications of ended jobs and sweeps, oldest first: dicts of
        ``key`` (``job:12:...``, ``sweep:sw3:...``), ``state`` (``pending``, ``sent``,
        ``failed``: given up), ``tries``, ``error`` (the last failure), ``created``
        (epoch s) and ``title``."""
        self._check_open()
        return self.store.notifications(check_count("limit", limit))

    # -- submissions ----------------------------------------------------------------------

    def _targets(self, notify: object) -> tuple[Notifier, ...] | None:
        """``notify=`` checked; None (not given): the config's default, if it has one."""
        targets = parse_notify(notify)
        if targets is None and self.config.notify:
            targets = tuple(self.config.notify)
        return targets

    def _notified(self, spec: JobSpec, notify: object, on_end: object) -> JobSpec:
        """``spec`` with its notification targets; raises on a bad ``notify=`` or
        ``on_end=`` before anything is stored."""
        check_on_end(on_end)
        targets = self._targets(notify)
        return spec if targets is None else spec.evolve(notify=dumps(targets))

    def _watched(self, on_end: OnEnd | None, submit: Callable[[], str]) -> str:
        """``submit()``'s job, with ``on_end`` called at its end."""
        if on_end is None:
            return submit()
        with self._callbacks().registering() as add:
            job_id = submit()
            add([job_id], on_end)
        return job_id

    def _callbacks(self) -> EndCallbacks:
        if self._end_callbacks is None:
            self._end_callbacks = EndCallbacks(self.store, self._listen, self._unlisten)
        return self._end_callbacks

    def _notifying(self, submitter: EngineSubmitter, options: dict[str, Any]) -> SweepSubmitter:
        """``add_sweep``'s submitter, taking its notification options out of
        ``options``: ``notify`` (once for the sweep, when its last job ends; with
        ``notify_each=True``, for each job instead) and ``on_end`` (for each job)."""
        notify, on_end = options.pop("notify", None), options.pop("on_end", None)
        each = options.pop("notify_each", False)
        if not isinstance(each, bool):
            raise InvalidTypeError(f"notify_each={each!r}: expected True or False")
        check_on_end(on_end)
        targets = self._targets(notify)
        if targets is None and on_end is None:
            return submitter
        inner = submitter.submit

        def submit(specs: Iterable[JobSpec], **kw: Any) -> list[str]:
            it = iter(specs)
            first = next(it, None)
            if first is None:
                return inner([], **kw)
            specs = itertools.chain([first], it)
            if targets is not None and first.sweep is not None:  # (before its jobs)
                self.store.kv_set(sweep_key(first.sweep), dumps(() if each else targets))
            if targets is not None and each:
                text = dumps(targets)
                specs = (spec.evolve(notify=text) for spec in specs)
            if on_end is None:
                return inner(specs, **kw)
            with self._callbacks().registering() as add:
                ids = inner(specs, **kw)
                add(ids, on_end)
            return ids

        return cast(SweepSubmitter, _Submitter(submitter, submit))

    # -- the engine's side ----------------------------------------------------------------

    def _notify_helper(self) -> _Helper:
        """The deliverer, started beside the engine (it sends while this process
        dispatches), woken by this process's engine at each change it records."""
        deliverer = Deliverer(
            self.store, tuple(self.config.notify), lambda: self._engine.role.lease.held
        )
        self._listen(deliverer.wake)
        return _Helper(deliverer.start(), lambda: self._unlisten(deliverer.wake))

    def _listen(self, event: threading.Event) -> None:
        """Have this process's engine set ``event`` at each change it records (as a
        ``wait()`` showing progress is woken)."""
        waiter = Waiter()
        waiter.every = True
        waiter.event = event
        with self._waits.lock:
            self._waits.waiters.add(waiter)

    def _unlisten(self, event: threading.Event) -> None:
        with self._waits.lock:
            for waiter in [w for w in self._waits.waiters if w.event is event]:
                self._waits.waiters.discard(waiter)


class _Submitter:
    """A sweep submitter whose ``submit`` is another (the rest is ``inner``'s)."""

    def __init__(self, inner: EngineSubmitter, submit: Callable[..., list[str]]) -> None:
        self._inner = inner
        self.submit = submit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Helper:
    """The deliverer as the engine's helper: stopped, it stops listening too."""

    def __init__(self, deliverer: Deliverer, unlisten: Callable[[], None]) -> None:
        self.deliverer = deliverer
        self._unlisten = unlisten

    def stop(self) -> None:
        self._unlisten()
        self.deliverer.stop()


__all__ = ["SWEEP_NOTIFY_OPTIONS", "Notifying"]
