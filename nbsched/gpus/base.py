"""GPU snapshots and the provider protocol.

A provider answers one question: what do the GPUs look like right now?  Metrics
a provider cannot report are ``None``, never a made-up 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class GpuProcess:
    """One process holding memory on one GPU, as the provider reads it.

    ``pid`` is the host's process id (``None``: the provider names no pid, as the
    simulated provider's processes described by user only); ``used_mb`` is ``None``
    where the driver does not say (NVML under some virtualisations).  ``user`` and
    ``command`` are filled by providers that know them without asking the OS (the
    simulated one); :mod:`nbsched.gpus.attribution` fills them from the process table.
    """

    gpu: int
    pid: int | None
    used_mb: float | None
    user: str | None = None
    command: str | None = None


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU at one moment.

    ``memory_used_mb`` and ``load`` (0..1) are totals as the device reports them.
    ``external_memory_used_mb`` and ``external_load`` are the part used by processes
    that are *not* nbsched jobs, where the provider can tell (``None`` otherwise);
    the allocator's thresholds apply to these.

    ``processes`` are the processes holding memory on the GPU, read in the same pass;
    ``None`` where the provider cannot list them (GPUtil), ``()`` where it read none.
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
    processes: tuple[GpuProcess, ...] | None = None

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
        """The GPUs now, ordered by index, each with the processes on it
        (:attr:`GpuSnapshot.processes`) where the provider can read them."""
        ...

    def close(self) -> None:
        """Release what the provider holds (NVML handle, file watches)."""
        ...
