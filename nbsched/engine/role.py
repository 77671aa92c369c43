"""One process's part in the engine of a state directory: dispatcher, or standby.

:class:`EngineRole` runs a thread that tries the lease; while another process holds
it, the thread waits as a standby, trying again every :data:`STANDBY_POLL_S`, and
when the holder dies (its lock released by the kernel) it takes the dispatcher role
over: it publishes its own engine record, then runs a dispatcher until it is
stopped.  Helpers that run beside the engine (the jobs-file watcher) start and stop
with it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from .lease import DispatcherLease, WakeChannel

logger = logging.getLogger(__name__)

#: How often a standby tries the lease.
STANDBY_POLL_S = 0.25


class Dispatching(Protocol):
    """What the role needs of a dispatcher: its loop, and a way to end it."""

    def run(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


class Helper(Protocol):
    """Something that runs beside the engine while it runs."""

    def stop(self) -> None: ...


D = TypeVar("D", bound=Dispatching)


class EngineRole(Generic[D]):
    """The engine thread of one process for ``state_dir``.

    ``new_dispatcher(fifo)`` makes the dispatcher once the lease is held (``fifo``:
    the descriptor of the wake channel, readable when another process pokes it);
    ``on_take_over()`` runs when a standby takes the lease over (before it
    dispatches); ``on_stop()`` runs when :meth:`stop` has ended the thread, before
    the lease is released.
    """

    def __init__(
        self,
        state_dir: Path,
        new_dispatcher: Callable[[int], D],
        on_take_over: Callable[[], None],
        on_stop: Callable[[], None],
        *,
        poll_s: float = STANDBY_POLL_S,
    ) -> None:
        self.state_dir = state_dir
        self.lease = DispatcherLease(state_dir)
        self.wake_channel = WakeChannel(state_dir)
        self.poll_s = poll_s
        #: The dispatcher while this process dispatches, else None.
        self.dispatcher: D | None = None
        #: The helpers started with the engine (see :meth:`start`).
        self.helpers: list[Helper] = []
        self._new_dispatcher = new_dispatcher
        self._on_take_over = on_take_over
        self._on_stop = on_stop
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def running(self) -> bool:
        """Whether the engine thread runs (as dispatcher or standby)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, claim: Callable[[], None], helpers: Callable[[], Iterable[Helper]]) -> None:
        """Start the engine thread, unless it runs.  The lease is tried here, not
        first in the thread: ``claim()`` (writing the engine record) runs at once if it
        is won, and its error is raised here; a standby must not run it (the record is
        the dispatcher's).  Then ``helpers()`` are started."""
        with self._lock:
            if self.running:
                return
            if self.lease.try_acquire():
                try:
                    claim()
                except BaseException:
                    self.lease.release()
                    raise
            self._stopping.clear()
            self._thread = threading.Thread(target=self._loop, name="nbsched-engine", daemon=True)
            self._thread.start()
            self.helpers.extend(helpers())

    def stop(self) -> bool:
        """Stop the helpers, the dispatcher and the thread; True once the thread has
        ended (then the lease is released).  A thread still dispatching keeps the
        lease (it releases it when it ends): released here, a second dispatcher could
        start beside it."""
        with self._lock:
            self._stopping.set()
            for helper in self.helpers:
                helper.stop()
            self.helpers.clear()
            if self.dispatcher is not None:
                self.dispatcher.stop()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
            if thread.is_alive():  # e.g. a store write waiting out another process's lock
                logger.warning("nbsched: the engine thread is slow to stop; waiting for it")
                thread.join(timeout=60)
        with self._lock:
            alive = thread is not None and thread.is_alive()
            self._thread = thread if alive else None
            if alive:
                logger.error("nbsched: the engine thread did not stop; it keeps the lease")
            else:
                self._on_stop()
                self.lease.release()
        return not alive

    def _loop(self) -> None:
        while not self._stopping.is_set():
            taken_over = not self.lease.held  # (start() took it, and ran claim())
            if self.lease.try_acquire():
                try:
                    if taken_over:
                        logger.warning(
                            "nbsched: the engine dispatching for %s stopped; this one "
                            "(pid %d) dispatches now",
                            self.state_dir,
                            os.getpid(),
                        )
                        self._on_take_over()
                    self._dispatch()
                finally:
                    self.lease.release()
                return
            self._stopping.wait(self.poll_s)

    def _dispatch(self) -> None:
        fifo = self.wake_channel.open_reader()
        try:
            made = self._new_dispatcher(fifo)  # (not under the lock: it may take others)
            with self._lock:
                self.dispatcher = made
                if self._stopping.is_set():
                    return  # stop() ran before this dispatcher existed, so it could not stop it
            logger.info("nbsched: dispatching for %s", self.state_dir)
            made.run()
        except Exception:
            logger.exception("the nbsched dispatcher stopped on an error")
        finally:
            os.close(fifo)
            with self._lock:
                if self.dispatcher is not None:
                    self.dispatcher.close()
                self.dispatcher = None


__all__ = ["STANDBY_POLL_S", "Dispatching", "EngineRole", "Helper"]
