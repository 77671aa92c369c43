"""``on_end=``: Python callables run in the submitting process when its jobs end.

:class:`EndCallbacks` keeps the callables of this process's jobs in memory, and while
any is pending, a thread reads the store's change feed (woken by this process's engine
at each change it records, and every :data:`POLL_S` for another process's: the
dispatcher may be another kernel or ``nbsched serve``).  A job's final end (after its
retries) hands each of its callables a :class:`~.message.JobEnd`, run by a few worker
threads of their own: a slow callable delays only the callables after it, an
exception is logged, and neither touches the engine.  Each callable is called once;
they are gone with the process (a notification that must outlive it is ``notify=``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import ClosedError
from ..store import Store
from .message import JobEnd, job_end

logger = logging.getLogger(__name__)

#: How often the store is read for another process's changes while callables wait.
POLL_S = 0.2
#: Looks at the store are this far apart at least (a busy engine wakes the thread at
#: each change it records).
GAP_S = 0.05
#: Threads that run the callables.
WORKERS = 4

OnEnd = Callable[[JobEnd], Any]


class EndCallbacks:
    """The ``on_end`` callables of one process's jobs (see the module).  ``listen(event)``
    asks the engine of this process to set ``event`` at each change it records;
    ``unlisten(event)`` stops that."""

    def __init__(
        self,
        store: Store,
        listen: Callable[[threading.Event], None],
        unlisten: Callable[[threading.Event], None],
    ) -> None:
        self._store = store
        self._listen = listen
        self._unlisten = unlisten
        self._lock = threading.Lock()
        self._pending: dict[int, list[OnEnd]] = {}
        self._rev = 0
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._calls: queue.Queue[tuple[OnEnd, JobEnd]] = queue.Queue()
        self._workers: list[threading.Thread] = []

    @contextmanager
    def registering(self) -> Iterator[Callable[[list[str], OnEnd], None]]:
        """``with callbacks.registering() as add: ids = submit(); add(ids, fn)``: no end
        is read between the jobs' submission and their callables' registration, and the
        feed is read from before the submission."""
        with self._lock:
            if self._thread is None:
                self._rev = self._store.revision()
                self._listen(self._wake)
                self._thread = threading.Thread(
                    target=self._run, name="nbsched-on-end", daemon=True
                )
                self._thread.start()
            yield self._add

    def _add(self, ids: list[str], fn: OnEnd) -> None:
        """Call ``fn`` at the end of each of the jobs ``ids``: now for one that has
        ended already (``add_job(once=True)`` found it done)."""
        seqs = {int(i) for i in ids}
        _, unended = self._store.unended_at(seqs)
        for seq in unended:
            self._pending.setdefault(seq, []).append(fn)
        for job in self._store.get_many(seqs - unended) if len(unended) < len(seqs) else []:
            self._call(fn, job_end(job))

    def pending(self) -> int:
        """How many jobs have callables waiting for their end."""
        with self._lock:
            return len(self._pending)

    def _run(self) -> None:
        while True:
            self._wake.wait(POLL_S)
            self._wake.clear()
            try:
                if not self._look():
                    return
            except ClosedError:
                with self._lock:
                    self._pending.clear()
                    self._thread = None
                return
            except Exception:
                logger.exception("nbsched on_end: reading job ends failed; trying again")
            time.sleep(GAP_S)

    def _look(self) -> bool:
        """Hand the jobs that ended to the workers; False once none is pending (the
        thread ends)."""
        with self._lock:
            if not self._pending:
                self._thread = None
                self._unlisten(self._wake)
                return False
            feed = self._store.changes_since(self._rev)
            self._rev = feed.rev
            ended = {
                int(i): self._pending.pop(int(i))
                for i, status, _, _ in feed.changes
                if status.ended and int(i) in self._pending
            }
        if ended:
            jobs = self._store.get_many(ended)
            for job in jobs:
                fns = ended.pop(job.seq)
                if not job.status.ended:  # (queued again since: wait for that end)
                    with self._lock:
                        self._pending.setdefault(job.seq, []).extend(fns)
                    continue
                record = job_end(job)
                for fn in fns:
                    self._call(fn, record)
        return True

    def _call(self, fn: OnEnd, record: JobEnd) -> None:
        self._calls.put((fn, record))
        if len(self._workers) < WORKERS and self._calls.qsize() > 0:
            worker = threading.Thread(target=self._work, name="nbsched-on-end-call", daemon=True)
            self._workers.append(worker)
            worker.start()

    def _work(self) -> None:
        while True:
            fn, record = self._calls.get()
            try:
                fn(record)
            except Exception:
                logger.exception("nbsched: the on_end callback %r of job %s raised", fn, record.id)


__all__ = ["POLL_S", "EndCallbacks", "OnEnd"]
