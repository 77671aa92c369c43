"""Sending the notifications of ended jobs and sweeps, from the engine that dispatches.

:class:`Deliverer` runs beside the engine of every process (a helper, as the jobs-file
watcher), and works only while its process holds the dispatcher's lease, so exactly
one process sends, whichever one that is (a kernel, ``nbsched serve``), even when the
kernel that submitted the job is gone.  Two threads:

- the collector reads the jobs that ended for good since the revision it last read (kept
  in the database; the first collector of a state directory takes the ends since its
  engine started), and writes one row per target to the notifications outbox, with the
  message (the job's fields and its last log lines), and the new revision, in one
  transaction.  A sweep with targets gets its summary
  when its last job ends.  Woken by this process's engine at each change it records,
  and once a second for other processes' (a queued job cancelled elsewhere).
- the sender sends the rows due, a bounded batch at a time; a failed try is logged and
  tried again after a back-off that doubles, until the target's ``tries`` are spent:
  then it is given up, logged and kept in the notices.  The job is never touched.

A notification is marked sent once it is; an engine that dies before that leaves it
pending, and the next one sends it (so at least once; twice only if it died between
sending and marking).  Ends the feed shows after a restart are queued again under the
same key, which the outbox takes once.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable

from ..errors import ClosedError
from ..frames import read_tail
from ..jobs import Job
from ..store import Store
from .message import job_end, job_message, sweep_message
from .send import SendError, send
from .targets import Notifier, dumps, from_dict, loads

logger = logging.getLogger(__name__)

#: How often the collector looks at the store unwoken, and a standby at the lease.
POLL_S = 1.0
#: The collector's looks are this far apart at least (a busy engine wakes it at each
#: change it records: this keeps it to a few looks a second).
GAP_S = 0.25
#: The revision read up to is written with the notifications it queued, else at most
#: this often: after a crash the feed is read again from there (each end is queued once).
SAVE_S = 30.0
#: Notifications sent per batch (the sender's bounded queue).
BATCH = 50
#: Sent and given-up notifications older than this are forgotten.
KEEP_S = 7 * 24 * 3600.0
#: At most this many failed jobs are named in a sweep's summary.
SWEEP_FAILED_SHOWN = 10


def sweep_key(sweep: str) -> str:
    """The meta key of a sweep's notification targets (see :func:`sweep_targets`)."""
    return f"notify:{sweep}"


class Deliverer:
    """The collector and sender threads (see the module).  ``is_dispatcher()``: whether
    this process holds the lease now; ``default``: the engine's own targets, for jobs
    submitted without ``notify=``."""

    def __init__(
        self, store: Store, default: tuple[Notifier, ...], is_dispatcher: Callable[[], bool]
    ) -> None:
        self.store = store
        self.default = default
        self._is_dispatcher = is_dispatcher
        self.wake = threading.Event()  # set by the engine at each change it records
        self._send_wake = threading.Event()
        self._stop = threading.Event()
        self._rev: int | None = None
        self._created = time.time()
        self._saved: tuple[int, float] = (0, 0.0)  # (revision written, when: monotonic)
        self._threads: list[threading.Thread] = []

    def start(self) -> Deliverer:
        for name, loop in (("collect", self._collect_loop), ("send", self._send_loop)):
            thread = threading.Thread(target=loop, name=f"nbsched-notify-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self._send_wake.set()
        for thread in self._threads:
            thread.join(timeout=2.0)  # (a send in progress ends at its own time limit)

    # -- the collector --------------------------------------------------------------------

    def _collect_loop(self) -> None:
        while not self._stop.is_set():
            self.wake.wait(POLL_S)
            self.wake.clear()
            if not self._guarded(self.collect) or self._stop.wait(GAP_S):
                return

    def _guarded(self, step: Callable[[], object]) -> bool:
        """Run a step; False once the store is closed.  A failure is logged, not raised."""
        try:
            if self._is_dispatcher():
                step()
            else:
                self._rev = None  # (read it again when this process dispatches)
        except ClosedError:
            return False
        except Exception:
            logger.exception("nbsched notifications: a step failed; trying again")
            self._stop.wait(POLL_S)
        return True

    def collect(self) -> int:
        """Queue the notifications of the jobs that ended since the last look; how many."""
        store = self.store
        after = None
        if self._rev is None:
            rev = store.notify_rev()
            self._saved = (-1, -math.inf) if rev is None else (rev, time.monotonic())
            if rev is None:  # (the first notifier here: the ends since its engine started)
                rev, after = 0, self._created - 1.0
            self._rev = rev
            store.prune_notifications(time.time() - KEEP_S)
        rev, ended = store.ended_since(self._rev, every=bool(self.default), after=after)
        rows = self._rows(ended) if ended else []
        self._rev = rev
        saved, at = self._saved
        if rows or (rev != saved and time.monotonic() - at >= SAVE_S):
            store.queue_notifications(rows, rev, time.time())
            self._saved = (rev, time.monotonic())
        if rows:
            self._send_wake.set()
        return len(rows)

    def _rows(self, ended: list[tuple[int, str | None, str | None]]) -> list[tuple[str, str, str]]:
        """The outbox rows of those ended jobs (``(seq, notify, sweep)``): theirs, and
        their sweeps'."""
        wanted: dict[int, tuple[Notifier, ...]] = {}
        sweeps: set[str] = set()
        for seq, notify, sweep in ended:
            if notify is not None:
                targets = loads(notify)
            else:
                targets = () if sweep is not None else self.default
            if targets:
                wanted[seq] = targets
            if sweep is not None:
                sweeps.add(sweep)
        rows: list[tuple[str, str, str]] = []
        for job in self.store.get_many(wanted) if wanted else []:
            if job.status.ended:
                rows += _job_rows(job, wanted[job.seq])
        for sweep in sorted(sweeps):
            rows += self._sweep_rows(sweep)
        return rows

    def _sweep_rows(self, sweep: str) -> list[tuple[str, str, str]]:
        """The summary of a sweep whose last job has ended, once per last end."""
        text = self.store.kv_get(sweep_key(sweep))
        targets = loads(text) if text is not None else self.default
        if not targets or self.store.sweep_unended(sweep):
            return []
        last, failed = self.store.sweep_ends(sweep, SWEEP_FAILED_SHOWN)
        counts = {k: n for k, n in self.store.counts(sweep=sweep).items() if n}
        record = self.store.sweep_spec(sweep) or {}
        definition = " ".join(
            str(x) for x in (record.get("script"), record.get("args")) if x is not None
        )
        message = json.dumps(sweep_message(sweep, counts, failed, definition or None))
        return [(f"sweep:{sweep}:{last!r}:{i}", dumps([t]), message) for i, t in enumerate(targets)]

    # -- the sender -----------------------------------------------------------------------

    def _send_loop(self) -> None:
        wait = 0.0
        while not self._stop.is_set():
            self._send_wake.wait(wait)
            self._send_wake.clear()
            if self._stop.is_set():
                return
            wait = POLL_S
            if not self._guarded(self._send_due):
                return
            if self._is_dispatcher():
                wait = self._until_next()

    def _until_next(self) -> float:
        try:
            due = self.store.next_notification_at()
        except Exception:
            return POLL_S
        return POLL_S * 30 if due is None else min(POLL_S * 30, max(0.0, due - time.time()))

    def _send_due(self) -> int:
        """Send the notifications due now, a batch at a time; how many were tried."""
        tried = 0
        while not self._stop.is_set():
            batch = self.store.due_notifications(time.time(), BATCH)
            for row_id, key, target_text, message_text, tries in batch:
                if self._stop.is_set() or not self._is_dispatcher():
                    return tried
                self.try_one(
                    row_id, key, from_dict(json.loads(target_text)[0]), message_text, tries
                )
                tried += 1
            if len(batch) < BATCH:
                return tried
        return tried

    def try_one(self, row_id: int, key: str, target: Notifier, message: str, tries: int) -> bool:
        """Send one notification once; record how it went.  True: sent."""
        tries += 1
        try:
            send(target, json.loads(message))
        except SendError as exc:
            error = str(exc)
        except Exception as exc:  # (a thread boundary: nothing a target does stops the rest)
            logger.exception("nbsched notifications: sending %s failed", key)
            error = f"{type(exc).__name__}: {exc}"
        else:
            self.store.notification_tried(row_id, tries, "sent", time.time(), None)
            logger.info("nbsched: sent the notification %s (%s)", key, target.describe())
            return True
        what = _what(key)
        if tries >= target.tries:
            text = (
                f"the notification of {what} to {target.describe()} was not sent after "
                f"{tries} tries: {error}"
            )
            logger.warning("nbsched: %s", text)
            self.store.notification_tried(row_id, tries, "failed", time.time(), error)
            self.store.add_notice("notifications", text)
            return False
        delay = target.backoff_s * 2 ** (tries - 1)
        logger.warning(
            "nbsched: the notification of %s to %s failed (try %d of %d): %s; trying again "
            "in %.1f s",
            what, target.describe(), tries, target.tries, error, delay,
        )  # fmt: skip
        self.store.notification_tried(row_id, tries, "pending", time.time() + delay, error)
        return False


def _what(key: str) -> str:
    kind, name = key.split(":")[:2]
    return f"{kind} {name}"


def _job_rows(job: Job, targets: tuple[Notifier, ...]) -> list[tuple[str, str, str]]:
    """One outbox row per target of an ended job, with its message."""
    end = job_end(job)
    rows = []
    for i, target in enumerate(targets):
        tail = read_tail(job.log_path, target.log_lines) if target.log_lines else ""
        message = json.dumps(job_message(end, tail))
        rows.append((f"job:{job.seq}:{job.ended!r}:{i}", dumps([target]), message))
    return rows


__all__ = ["BATCH", "POLL_S", "Deliverer", "sweep_key"]
