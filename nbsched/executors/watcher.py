"""Event-driven waiting for processes to end: one thread, one ``pidfd`` per process.

Linux's ``pidfd_open`` gives a file descriptor that becomes readable when a
process ends, for our own children and for processes we adopted after a restart
alike.  One selector thread waits on all of them, so a job's end is seen at once
(no polling).  Where ``pidfd_open`` is missing, it falls back to checking each
process every ``fallback_poll_s``.

A host with an event loop of its own (the dispatcher) can *drive* the watcher
instead: :meth:`ProcessWatcher.drive` hands it the watcher's epoll descriptor, which
becomes readable when a watched process ends, and the host calls
:meth:`ProcessWatcher.process_ready` then, in its own thread.  A job's end then
costs no thread switch, no wake-up pipe and no second thread competing for the GIL.

Any other descriptor that becomes readable at an end can be watched the same way
(:meth:`ProcessWatcher.add_fd`): the direct executor's jobs are children of the
spawner (:mod:`nbsched.executors.spawner`), which closes a pipe once it has recorded
a job's exit code.
"""

from __future__ import annotations

import itertools
import logging
import os
import selectors
import threading
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: Called once, when what was watched has ended.
EndCallback = Callable[[], None]


@dataclass
class _Watch:
    pid: int | None  # None for a plain descriptor (add_fd)
    callback: EndCallback
    fd: int | None = None


class ProcessWatcher:
    def __init__(self, name: str = "nbsched-watcher", fallback_poll_s: float = 0.2) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._watches: dict[int, _Watch] = {}  # by a key of their own
        self._keys = itertools.count()
        self._rpipe, self._wpipe = os.pipe()
        os.set_blocking(self._rpipe, False)
        self._sel.register(self._rpipe, selectors.EVENT_READ, None)
        self._fallback_poll_s = fallback_poll_s
        self._has_pidfd = hasattr(os, "pidfd_open")
        self._closed = False
        self._name = name
        self._driven = False
        self._thread: threading.Thread | None = None

    def drive(self) -> int | None:
        """Let the caller's event loop drive this watcher: returns a descriptor that
        becomes readable when a watched process ends (then call :meth:`process_ready`),
        or None where the watcher needs its own thread (no ``pidfd_open``, or a thread
        already started)."""
        with self._lock:
            if not self._has_pidfd or self._thread is not None:
                return None
            self._driven = True
            return self._sel.fileno()

    def process_ready(self) -> None:
        """Report the watched processes that have ended (for a driving event loop)."""
        if not self._closed:
            self._report(self._sel.select(0))

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def add(self, pid: int, callback: EndCallback) -> None:
        """Call ``callback`` once when process ``pid`` ends (at once if it already has)."""
        watch = _Watch(pid, callback)
        if self._has_pidfd:
            try:
                watch.fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self._finish(watch)
                return
            except OSError:
                self._has_pidfd = False
        self._add(watch)

    def add_fd(self, fd: int, callback: EndCallback) -> None:
        """Call ``callback`` once when ``fd`` becomes readable (e.g. the other end of a
        pipe is closed); the watcher owns ``fd`` from now on and closes it after the
        callback, which may read it."""
        self._add(_Watch(None, callback, fd))

    def _add(self, watch: _Watch) -> None:
        key = next(self._keys)
        with self._lock:
            self._watches[key] = watch
            if watch.fd is not None:
                self._sel.register(watch.fd, selectors.EVENT_READ, key)
        if watch.fd is None or not self._driven:
            self._ensure_thread()  # (a driving loop sees the new descriptor by itself)
            self._poke()

    def close(self) -> None:
        """Stop the thread and release the descriptors; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for watch in self._watches.values():
                if watch.fd is not None:
                    os.close(watch.fd)
            self._watches.clear()
        self._sel.close()
        os.close(self._rpipe)
        os.close(self._wpipe)

    def __len__(self) -> int:
        return len(self._watches)

    def _poke(self) -> None:
        try:
            os.write(self._wpipe, b"x")
        except OSError:
            pass

    def _run(self) -> None:
        while not self._closed:
            timeout = None if self._has_pidfd else self._fallback_poll_s
            try:
                events = self._sel.select(timeout)
            except OSError:  # pragma: no cover - selector closed under us
                return
            self._report(events)

    def _report(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        ended: list[_Watch] = []
        for key, _ in events:
            if key.data is None:
                try:
                    os.read(self._rpipe, 4096)
                except BlockingIOError:
                    pass
                continue
            with self._lock:
                watch = self._watches.pop(key.data, None)
                if watch is not None and watch.fd is not None:
                    self._sel.unregister(watch.fd)
            if watch is not None:
                ended.append(watch)
        if not self._has_pidfd:
            with self._lock:
                gone = [k for k, w in self._watches.items() if w.fd is None and not _alive(w)]
                ended.extend(self._watches.pop(k) for k in gone)
        for watch in ended:
            self._finish(watch)

    def _finish(self, watch: _Watch) -> None:
        try:
            watch.callback()
        except Exception:
            logger.exception("callback for the end of %s failed", _what(watch))
        if watch.fd is not None:
            try:
                os.close(watch.fd)
            except OSError:
                pass


def _what(watch: _Watch) -> str:
    return f"process {watch.pid}" if watch.pid is not None else f"descriptor {watch.fd}"


def _alive(watch: _Watch) -> bool:
    assert watch.pid is not None  # (descriptors are always in the selector)
    try:
        os.kill(watch.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{watch.pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
