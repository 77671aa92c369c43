"""Estimates: how long a job is expected to run, and on what grounds.

A job's estimate comes from the first of these sources that has one (the words are
those ``jobs()`` shows in ``estimate_source``):

1. ``"time limit"``: its ``time_limit`` (a promise: the job is ended there);
2. ``"hint"``: its ``expected_s``, the submitter's word;
3. ``"sweep"``: the runs of its own sweep that succeeded;
4. ``"script"``: the runs of the same script with the same argument names;
5. ``"command"``: the runs of the same shell command.

A learned estimate is :func:`~.durations.typical` (the upper median) of the latest
:data:`~.durations.RECENT` successful runs of its key, read from the ``durations``
table by an index range.  :class:`Estimator` keeps each key's value once read, and
forgets it when a job of that key succeeds (:meth:`Estimator.forget`), so a lookup is
a dict read, and a queue of 100,000 jobs of one sweep costs two queries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ..jobs import Job, JobSpec, JobStatus
from .durations import RECENT, typical

#: The sources, most trusted first.
SOURCES = ("time limit", "hint", "sweep", "script", "command")

#: Keys whose values are kept at most (then all are forgotten and read again).
MAX_KEYS = 20_000
#: :meth:`Estimator.prefetch` reads at once from this many unknown keys on.
PREFETCH_FROM = 8

Estimate = tuple["float | None", "str | None"]
NO_ESTIMATE: Estimate = (None, None)


class Durations(Protocol):
    def recent_durations(self, kind: str, key: str, limit: int = RECENT) -> list[float]: ...

    def durations_of(self, kind: str, keys: Sequence[str]) -> dict[str, list[float]]: ...


class Estimator:
    """Estimates over a store's ``durations`` (see the module); safe across threads."""

    def __init__(self, store: Durations) -> None:
        self._store = store
        self._lock = threading.Lock()
        #: ``(kind, key)`` -> the learned estimate (None: no run yet).
        self._known: dict[tuple[str, str], float | None] = {}
        #: Moved on by each :meth:`forget`: a value read before one is not kept.
        self._generation = 0
        #: :meth:`of_grounds`' answers (forgotten whole by :meth:`forget`).
        self._answers: dict[tuple[Any, ...], Estimate] = {}

    def estimate(
        self,
        time_limit: float | None,
        expected_s: float | None,
        sweep: str | None,
        key: str | None,
    ) -> Estimate:
        """``(seconds, source)`` of a job with these fields; ``(None, None)``: none."""
        if time_limit is not None:
            return time_limit, "time limit"
        if expected_s is not None:
            return expected_s, "hint"
        if sweep is not None:
            found = self.learned("sweep", sweep)
            if found is not None:
                return found, "sweep"
        if key is not None:
            found = self.learned("key", key)
            if found is not None:
                return found, key.split(":", 1)[0]
        return NO_ESTIMATE

    def of_grounds(self, grounds: tuple[Any, ...]) -> Estimate:
        """:meth:`estimate` of ``(time_limit, expected_s, sweep, key)``, remembered until
        the next :meth:`forget` (the rows of a sweep: one dict lookup each)."""
        found = self._answers.get(grounds)
        if found is None:
            generation = self._generation
            found = self.estimate(*grounds)
            with self._lock:
                if len(self._answers) >= MAX_KEYS:
                    self._answers.clear()
                if generation == self._generation:
                    self._answers[grounds] = found
        return found

    def of_spec(self, spec: JobSpec) -> Estimate:
        """The estimate of a job of ``spec``."""
        return self.estimate(spec.time_limit, spec.expected_s, spec.sweep, spec.estimate_key)

    def learned(self, kind: str, key: str) -> float | None:
        """The learned estimate of ``key`` (``kind``: ``"sweep"`` or ``"key"``)."""
        known = self._known
        try:
            return known[kind, key]
        except KeyError:
            pass
        generation = self._generation
        value = typical(self._store.recent_durations(kind, key))
        with self._lock:
            if len(known) >= MAX_KEYS:
                known.clear()
            if generation == self._generation:
                known[kind, key] = value
        return value

    def prefetch(self, grounds: Iterable[tuple[Any, ...]]) -> None:
        """Read at once the learned estimates that :meth:`estimate` of each of these
        ``(time_limit, expected_s, sweep, key)`` may ask for (a table of many distinct
        commands: a few statements, not one a command)."""
        sweeps: set[str] = set()
        keys: set[str] = set()
        for limit, expected, sweep, key in grounds:
            if limit is None and expected is None:
                if sweep is not None and ("sweep", sweep) not in self._known:
                    sweeps.add(sweep)
                if key is not None and ("key", key) not in self._known:
                    keys.add(key)
        if len(sweeps) + len(keys) < PREFETCH_FROM:
            return  # (one by one, as asked: as cheap)
        generation = self._generation
        read = {kind: self._store.durations_of(kind, sorted(wanted))
                for kind, wanted in (("sweep", sweeps), ("key", keys)) if wanted}  # fmt: skip
        with self._lock:
            if generation != self._generation:
                return
            if len(self._known) + len(sweeps) + len(keys) > MAX_KEYS:
                self._known.clear()
            for kind, wanted in (("sweep", sweeps), ("key", keys)):
                runs = read.get(kind, {})
                for key in wanted:
                    self._known[kind, key] = typical(runs.get(key, ()))

    def forget(self, jobs: Iterable[Job]) -> None:
        """These jobs just succeeded: their keys' estimates are read again when next
        asked for (the store has their runs now)."""
        jobs = list(jobs)
        if not jobs:
            return
        with self._lock:
            self._generation += 1
            self._answers = {}
            for job in jobs:
                spec = job.spec
                if spec.sweep is not None:
                    self._known.pop(("sweep", spec.sweep), None)
                if spec.estimate_key is not None:
                    self._known.pop(("key", spec.estimate_key), None)

    def forget_succeeded(self, jobs: Iterable[Job], statuses: Iterable[JobStatus | None]) -> None:
        """:meth:`forget` the jobs of those ends that were recorded as succeeded."""
        self.forget(j for j, st in zip(jobs, statuses, strict=True) if st == JobStatus.SUCCEEDED)


class _NoHistory:
    """No runs to learn from: only a job's own time limit and hint count."""

    def recent_durations(self, kind: str, key: str, limit: int = RECENT) -> list[float]:
        return []

    def durations_of(self, kind: str, keys: Sequence[str]) -> dict[str, list[float]]:
        return {}


#: Estimates from a job's own fields alone (its time limit, its hint).
GIVEN_ONLY = Estimator(_NoHistory())

__all__ = ["GIVEN_ONLY", "NO_ESTIMATE", "SOURCES", "Estimate", "Estimator"]
