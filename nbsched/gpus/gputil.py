"""GPU readings through GPUtil, which runs ``nvidia-smi`` (the original program's source)."""

from __future__ import annotations

import importlib
import logging
import math
import shutil
import threading
from collections.abc import Sequence
from typing import Any

from .base import GpuSnapshot

logger = logging.getLogger(__name__)


def _gputil() -> Any:
    return importlib.import_module("GPUtil")


def _number(value: object) -> float | None:
    """GPUtil turns "[N/A]" into NaN; nbsched says None."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class GputilProvider:
    """Readings from ``nvidia-smi`` through GPUtil.

    GPUtil cannot tell nbsched's processes from others', so ``external_*`` are the
    device totals: thresholds then apply to all use, ours included.  Nor can it list a
    GPU's processes: ``processes`` is ``None`` (per-job memory unknown; said once).
    """

    name = "gputil"

    def __init__(self, indices: Sequence[int] | None = None) -> None:
        self.selection_note = ""
        #: Why :meth:`is_available` said no ("" while it has not).
        self.unavailable_reason = ""
        self._indices = list(indices) if indices is not None else None
        self._available: bool | None = None
        self._count = 0
        self._lock = threading.Lock()
        self._warned = False

    def _gpus(self) -> list[Any]:
        try:
            return list(_gputil().getGPUs())
        except Exception as exc:  # nvidia-smi printed an error instead of its table
            raise RuntimeError(f"GPUtil could not read nvidia-smi: {exc}") from exc

    def is_available(self) -> bool:
        """Whether ``nvidia-smi`` is on PATH and lists GPUs (asked once; cached; never raises)."""
        with self._lock:
            if self._available is None:
                self._available = False
                if shutil.which("nvidia-smi") is None:
                    self.unavailable_reason = "nvidia-smi not found on PATH"
                else:
                    try:
                        self._count = len(self._gpus())
                    except Exception as exc:
                        self.unavailable_reason = str(exc)
                    else:
                        self._available = self._count > 0
                        if not self._available:
                            self.unavailable_reason = "nvidia-smi lists no GPU"
            return self._available

    def device_count(self) -> int:
        """How many GPUs nvidia-smi lists."""
        return len(self._gpus())

    def snapshot(self) -> tuple[GpuSnapshot, ...]:
        if not self._warned:
            self._warned = True
            logger.warning(
                "gpu_provider='gputil': GPUtil reads nvidia-smi's totals only, so which "
                "process (and which job) holds GPU memory is unknown; install nvidia-ml-py "
                "for per-process readings"
            )
        by_index = {int(gpu.id): gpu for gpu in self._gpus()}
        indices = self._indices if self._indices is not None else sorted(by_index)
        result = []
        for index in indices:
            gpu = by_index.get(index)
            if gpu is None:
                result.append(GpuSnapshot(index, None, None, None, None, None))
                continue
            used = _number(gpu.memoryUsed)
            load = _number(gpu.load)
            result.append(
                GpuSnapshot(
                    index=index,
                    uuid=str(gpu.uuid) if gpu.uuid else None,
                    name=str(gpu.name) if gpu.name else None,
                    memory_used_mb=used,
                    memory_total_mb=_number(gpu.memoryTotal),
                    load=load,
                    external_memory_used_mb=used,
                    external_load=load,
                )
            )
        return tuple(result)

    def close(self) -> None:
        """Nothing to release."""
