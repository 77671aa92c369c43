"""GPU snapshots and the provider protocol.

A provider answers one question: what do the GPUs look like right now?  Metrics
a provider cannot report are ``None``, never a made-up 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU at one moment.

    ``memory_used_mb`` and ``load`` (0..1) are totals as the device reports them.
    ``external_memory_used_mb`` and ``external_load`` are the part used by processes
    that are *not* nbsched jobs, where the provider can tell (``None`` otherwise);
    the allocator's thresholds apply to these.
    """

    index: int
    uuid: str | None
    name: str | None
    memory_used_mb: float | None
    memory_total_mb: float | None
    load: float | None
    external_memory_used_mb: float | None = None
    external_load: float | None = None
    node: str | None = None

    @property
    def memory_fraction(self) -> float | None:
        if self.memory_used_mb is None or not self.memory_total_mb:
            return None
        return self.memory_used_mb / self.memory_total_mb

    @property
    def external_memory_fraction(self) -> float | None:
        if self.external_memory_used_mb is None or not self.memory_total_mb:
            return None
        return self.external_memory_used_mb / self.memory_total_mb


@runtime_checkable
class GPUProvider(Protocol):
    """What the scheduler needs from a source of GPU readings."""

    name: str

    def is_available(self) -> bool:
        """Whether this provider can read GPUs on this machine."""
        ...

    def snapshot(self) -> Sequence[GpuSnapshot]:
        """The GPUs now, ordered by index."""
        ...

    def close(self) -> None:
        """Release what the provider holds (NVML handle, file watches)."""
        ...
