"""``wait()``: blocking until jobs have ended, and how the engine wakes the waits.

Each :meth:`GPUJobScheduler.wait` registers a :class:`Waiter` with its process's
:class:`Waits`.  The engine of that process tells :meth:`Waits.notify` of each end it
records, and a wait wakes (and reads the store) only once none of its jobs may be left
to end; any other change (a cancel, a stop) wakes every wait; a wait that shows a
progress bar wakes at every change.  Other processes' changes are seen by each wait's
own look at the store every 50 ms.  The ends told while a wait reads the store are
kept, so none is missed between its read and its sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from . import frames
from .checks import is_real
from .errors import InvalidTypeError, UnknownJobError
from .progress import WaitProgress
from .progress import wanted as progress_wanted
from .store import Store, parse_job_id
from .store.estimates import Estimator

if TYPE_CHECKING:
    import pandas as pd

#: How often a wait looks at the store for other processes' changes.
POLL_S = 0.05


def check_ids(ids: object) -> Iterable[str] | None:
    """The ``ids`` argument of ``wait()``: one job id, ids, or None (every queued and
    running job); raises ``TypeError`` for anything else (a time limit given first)."""
    if isinstance(ids, str):
        return [ids]
    if ids is not None and (isinstance(ids, (bytes, bytearray)) or not isinstance(ids, Iterable)):
        hint = f"; for a time limit, pass timeout={ids!r}" if is_real(ids) else ""
        raise InvalidTypeError(
            f"ids={ids!r}: expected a job id such as '17', a list of job ids, or None "
            f"for every queued and running job{hint}"
        )
    return ids


class Waiter:
    """A ``wait()`` in progress, as :meth:`Waits.notify` sees it."""

    __slots__ = ("left", "seen", "every", "event")

    def __init__(self) -> None:
        self.left: set[int] = set()  # its jobs not ended at its last look, nor told since
        self.seen: set[int] = set()  # the ends told since its last look began
        self.every = False  # woken at every change (it shows progress)
        self.event = threading.Event()


class Waits:
    """The ``wait()`` calls in progress in one process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiters: set[Waiter] = set()

    def notify(self, ended: Collection[int] | None = None) -> None:
        """Wake the wait()s a change may concern.  ``ended``: the jobs this process's
        engine just recorded as ended (or may have), which wake a wait() only once none
        of its jobs is left to end; None: any other change, which wakes them all.  (A
        wait() showing progress wakes at every change; other processes' changes are
        seen by each wait()'s own look every 50 ms.)"""
        with self.lock:
            for w in self.waiters:
                if ended is None or w.every:
                    w.event.set()
                elif ended:
                    w.seen.update(ended)
                    w.left.difference_update(ended)
                    if not w.left:
                        w.event.set()

    def wait(
        self,
        store: Store,
        ids: Iterable[str] | None,
        timeout: float | None,
        progress: bool | None,
    ) -> pd.DataFrame:
        """Block until the jobs ``ids`` (None: every queued or running one) have ended;
        their table.  ``TimeoutError`` after ``timeout`` s (None: no limit)."""
        waiter = Waiter()
        with self.lock:  # (before the first look: no end told after it is missed)
            self.waiters.add(waiter)
        try:
            return self._wait(waiter, store, ids, timeout, progress)
        finally:
            with self.lock:
                self.waiters.discard(waiter)

    def _wait(
        self,
        waiter: Waiter,
        store: Store,
        ids: Iterable[str] | None,
        timeout: float | None,
        progress: bool | None,
    ) -> pd.DataFrame:
        # (the revision with the first look, in one read: later changes are seen below)
        if ids is None:
            rev, pending = store.unended_at(None)
            wanted = sorted(pending)
        else:
            wanted = sorted({parse_job_id(i) for i in ids})
            rev, pending = store.unended_at(set(wanted))
            unsure = set(wanted) - pending  # ended, or no such job: look only at these
            missing = unsure - store.existing(unsure) if unsure else set()
            if missing:
                raise UnknownJobError(f"no job {str(min(missing))!r} in {store.path}")
        wanted_set = set(wanted)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = WaitProgress(len(wanted), progress_wanted(progress))
        with self.lock:
            waiter.every = bar.enabled
            waiter.left = pending - waiter.seen
        try:
            while True:
                if bar.enabled:
                    bar.update(len(wanted) - len(pending), store.status_counts(wanted_set))
                if not pending:
                    return frames.jobs_frame(store.table(ids=wanted), Estimator(store))
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    left = ", ".join(map(str, sorted(pending)))
                    raise TimeoutError(f"after {timeout}s, job(s) {left} had not ended")
                # Woken by this process's engine once all its jobs may have ended (not at
                # every end: each wake-up took the GIL from the engine); POLL_S covers
                # another process's.
                waiter.event.wait(POLL_S if remaining is None else min(POLL_S, remaining))
                with self.lock:
                    waiter.event.clear()
                    waiter.seen = set()  # (ends told from now on may be missed below)
                # Read only what changed since the last look (not every wanted row: decoding
                # them on each wake-up held the GIL and starved the engine threads).
                rev, changes, _ = store.changes_since(rev)
                for job_id, status, _, _ in changes:
                    seq = int(job_id)
                    if seq in wanted_set:
                        (pending.discard if status.ended else pending.add)(seq)
                with self.lock:
                    waiter.left = pending - waiter.seen
                    if pending and not waiter.left:
                        waiter.event.set()  # (they ended while the store was read: look again)
        finally:
            bar.close()


__all__ = ["Waiter", "Waits", "check_ids"]
