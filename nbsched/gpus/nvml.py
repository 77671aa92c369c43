"""GPU readings through NVML (the ``pynvml`` module of the ``nvidia-ml-py`` package)."""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from .base import GpuProcess, GpuSnapshot

logger = logging.getLogger(__name__)

_MB = 1024 * 1024  # NVML reports bytes; nvidia-smi's "MiB" is what users read


def _pynvml() -> Any:
    return importlib.import_module("pynvml")


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _processes(
    nvml: Any, handle: Any, index: int, get: Callable[[Callable[[], Any]], Any]
) -> tuple[GpuProcess, ...] | None:
    """The compute and graphics processes on one GPU (a process in both lists once,
    with the larger reading); ``None`` if NVML could not list the compute processes."""
    lists = []
    for kind in ("Compute", "Graphics"):
        name = f"nvmlDeviceGet{kind}RunningProcesses"
        procs: Any = None
        for fn in (getattr(nvml, name, None), getattr(nvml, name + "_v2", None)):
            if fn is not None and procs is None:
                procs = get(partial(fn, handle))
        lists.append(procs)
    if lists[0] is None:
        return None
    found: dict[int, float | None] = {}
    for procs in lists:
        for p in procs or ():
            used = getattr(p, "usedGpuMemory", None)
            mb = used / _MB if isinstance(used, int) and 0 <= used < 2**63 else None
            pid = int(p.pid)
            old = found.get(pid)
            found[pid] = mb if old is None else max(old, mb or 0.0)
    return tuple(GpuProcess(index, pid, mb) for pid, mb in sorted(found.items()))


class NvmlProvider:
    """Readings from the NVIDIA driver through NVML.

    ``own_pids()`` returns the process ids of nbsched's jobs; their memory is
    subtracted from the device's to give ``external_memory_used_mb``.  NVML reports
    host pids, so inside a container with its own pid namespace no process matches
    and everything counts as external.  ``external_load`` is known only while no
    job of ours runs on the device (NVML cannot split utilisation by process).
    """

    name = "nvml"

    def __init__(
        self,
        indices: Sequence[int] | None = None,
        own_pids: Callable[[], set[int]] | None = None,
    ) -> None:
        self.selection_note = ""
        #: Why :meth:`is_available` said no ("" while it has not).
        self.unavailable_reason = ""
        self._indices = list(indices) if indices is not None else None
        self._own_pids = own_pids
        self._lock = threading.RLock()
        self._nvml: Any = None  # the pynvml module once nvmlInit succeeded
        self._available: bool | None = None
        self._handles: dict[int, Any] = {}

    def _init(self) -> Any:
        with self._lock:
            if self._nvml is None:
                nvml = _pynvml()
                nvml.nvmlInit()
                self._nvml = nvml
            return self._nvml

    def is_available(self) -> bool:
        """Whether NVML initialises (tried once; the answer is cached)."""
        with self._lock:
            if self._available is None:
                try:
                    self._init()
                    self._available = True
                except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, ...
                    self.unavailable_reason = f"{type(exc).__name__}: {exc}"
                    self._available = False
            return self._available

    def device_count(self) -> int:
        """How many GPUs the driver sees."""
        return int(self._init().nvmlDeviceGetCount())

    def indices(self) -> list[int]:
        """The device indices this provider reports."""
        if self._indices is None:
            self._indices = list(range(self.device_count()))
        return list(self._indices)

    def _handle(self, nvml: Any, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is None:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            self._handles[index] = handle
        return handle

    def snapshot(self) -> tuple[GpuSnapshot, ...]:
        with self._lock:
            nvml = self._init()
            own = set(self._own_pids()) if self._own_pids is not None else set()
            return tuple(self._read(nvml, index, own) for index in self.indices())

    def _read(self, nvml: Any, index: int, own: set[int]) -> GpuSnapshot:
        errors: tuple[type[BaseException], ...] = (nvml.NVMLError,)
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
        if isinstance(mismatch, type) and issubclass(mismatch, BaseException):
            errors += (mismatch,)

        def get(fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except errors:
                return None

        try:
            handle = self._handle(nvml, index)
        except errors:
            return GpuSnapshot(index, None, None, None, None, None)
        uuid = get(lambda: _text(nvml.nvmlDeviceGetUUID(handle)))
        name = get(lambda: _text(nvml.nvmlDeviceGetName(handle)))
        memory = get(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        rates = get(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        used = memory.used / _MB if memory is not None else None
        total = memory.total / _MB if memory is not None else None
        load = rates.gpu / 100.0 if rates is not None else None
        processes = _processes(nvml, handle, index, get)
        external_used, external_load = used, load
        if own:
            mine = [p for p in processes or () if p.pid in own]
            if processes is None:
                external_used, external_load = None, None
            elif mine:
                external_load = None
                ours = [p.used_mb for p in mine]
                if used is None or any(m is None for m in ours):
                    external_used = None
                else:
                    external_used = max(0.0, used - sum(m or 0.0 for m in ours))
        return GpuSnapshot(
            index=index,
            uuid=uuid,
            name=name,
            memory_used_mb=used,
            memory_total_mb=total,
            load=load,
            external_memory_used_mb=external_used,
            external_load=external_load,
            processes=processes,
        )

    def close(self) -> None:
        """Shut NVML down (a later call initialises it again)."""
        with self._lock:
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:
                    logger.debug("nvmlShutdown failed", exc_info=True)
                self._nvml = None
            self._handles.clear()
