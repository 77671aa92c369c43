"""GPUMonitor: a thread-safe cache of GPU readings, with a history and subscribers."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from nbsched.errors import InvalidValueError

from .base import GPUProvider, GpuSnapshot

logger = logging.getLogger(__name__)

Reading = tuple[GpuSnapshot, ...]
Subscriber = Callable[[Reading], None]

_MAX_REMEMBERED_ERRORS = 100


def external_usage_changed(
    before: Sequence[GpuSnapshot],
    after: Sequence[GpuSnapshot],
    *,
    memory_tolerance_mb: float = 1.0,
    load_tolerance: float = 0.01,
) -> bool:
    """Whether what others use on the GPUs differs beyond the tolerances (or the GPUs do)."""
    if [g.index for g in before] != [g.index for g in after]:
        return True
    for old, new in zip(before, after, strict=True):
        pairs = (
            (old.external_memory_used_mb, new.external_memory_used_mb, memory_tolerance_mb),
            (old.external_load, new.external_load, load_tolerance),
        )
        for a, b, tolerance in pairs:
            if (a is None) != (b is None):
                return True
            if a is not None and b is not None and abs(a - b) > tolerance:
                return True
    return False


class GPUMonitor:
    """Asks the provider at most once per ``interval_s`` and hands out the cached reading.

    A provider error is logged (once per distinct message) and the previous reading
    returned; the provider is asked again after another interval.  With no reading
    yet, the error propagates.
    """

    def __init__(
        self,
        provider: GPUProvider,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        history_len: int = 600,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s < 0:
            raise InvalidValueError(f"interval_s={interval_s!r}: must be >= 0")
        self.provider = provider
        self.interval_s = float(interval_s)
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._reading: Reading | None = None
        self._read_at = 0.0  # monotonic time of the last attempt, success or not
        self._stale = True
        self._errors_logged: set[str] = set()
        self._subscribers: list[Subscriber] = []
        #: ``(wall time, reading)`` for each fresh reading, oldest first.
        self.history: deque[tuple[float, Reading]] = deque(maxlen=history_len)
        #: The error of the last attempt, if it failed (``None`` after a success).
        self.last_error: Exception | None = None

    def snapshot(self, max_age_s: float | None = None) -> Reading:
        """The GPUs, read afresh if the cached reading is older than ``max_age_s``
        (default ``interval_s``)."""
        limit = self.interval_s if max_age_s is None else max_age_s
        with self._lock:
            now = self._clock()
            if self._reading is not None and not self._stale and now - self._read_at < limit:
                return self._reading
            self._read_at = now
            self._stale = False
            try:
                reading = tuple(self.provider.snapshot())
            except Exception as exc:
                self.last_error = exc
                self._log_error(exc)
                if self._reading is None:
                    self._stale = True
                    raise
                return self._reading
            self.last_error = None
            self._errors_logged.clear()
            self._reading = reading
            self.history.append((self._wall_clock(), reading))
            subscribers = list(self._subscribers)
        for callback in subscribers:  # outside the lock: a callback may call snapshot()
            try:
                callback(reading)
            except Exception:
                logger.exception("GPU reading subscriber %r failed", callback)
        return reading

    def _log_error(self, exc: Exception) -> None:
        key = f"{type(exc).__name__}: {exc}"
        if key in self._errors_logged or len(self._errors_logged) >= _MAX_REMEMBERED_ERRORS:
            return
        self._errors_logged.add(key)
        keeps = "keeping the previous reading" if self._reading is not None else "no reading yet"
        logger.exception("GPU provider %r failed (%s)", getattr(self.provider, "name", "?"), keeps)

    @property
    def latest(self) -> Reading | None:
        """The cached reading without asking the provider (``None`` before the first)."""
        with self._lock:
            return self._reading

    def invalidate(self) -> None:
        """Make the next :meth:`snapshot` ask the provider."""
        with self._lock:
            self._stale = True

    def history_items(self) -> list[tuple[float, Reading]]:
        """A copy of :attr:`history`, safe to iterate while readings arrive."""
        with self._lock:
            return list(self.history)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(reading)`` on each fresh reading; returns an unsubscribe function."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def changed_since(self, previous: Sequence[GpuSnapshot]) -> bool:
        """Whether the latest reading's external usage differs from ``previous``."""
        latest = self.latest
        return latest is None or external_usage_changed(previous, latest)
