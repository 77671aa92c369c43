"""GPU readings: the provider protocol, its implementations and the monitor cache."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import TypeVar

from nbsched.config import PROVIDERS
from nbsched.errors import InvalidValueError

from .base import GpuProcess, GPUProvider, GpuSnapshot
from .gputil import GputilProvider
from .monitor import GPUMonitor, external_usage_changed
from .nvml import NvmlProvider
from .simulated import (
    SimulatedGpu,
    SimulatedJob,
    SimulatedProvider,
    parse_simulated_gpus,
    write_simulated_gpus,
)

__all__ = [
    "GPUMonitor",
    "GPUProvider",
    "GpuProcess",
    "GpuSnapshot",
    "GputilProvider",
    "NvmlProvider",
    "PROVIDER_KINDS",
    "SimulatedGpu",
    "SimulatedJob",
    "SimulatedProvider",
    "external_usage_changed",
    "make_provider",
    "parse_simulated_gpus",
    "provider_choice_shown_by_caller",
    "write_simulated_gpus",
]

logger = logging.getLogger(__name__)

_P = TypeVar("_P", bound=NvmlProvider | GputilProvider | SimulatedProvider)

PROVIDER_KINDS = PROVIDERS

#: Set while a front end that prints the provider choice itself creates the provider.
_CHOICE_SHOWN_BY_CALLER: ContextVar[bool] = ContextVar("nbsched_choice_shown", default=False)

_HARDWARE_HELP = {
    "nvml": "no NVIDIA driver/NVML library found",
    "gputil": "nvidia-smi is missing or lists no GPU",
}


def make_provider(
    kind: str,
    *,
    num_gpus: int | None,
    simulated_gpus_file: str | os.PathLike[str] | None,
    usage: Callable[[], Mapping[int, float]] | None = None,
    own_pids: Callable[[], set[int]] | None = None,
    jobs: Callable[[], Iterable[SimulatedJob]] | None = None,
) -> GPUProvider:
    """The provider for ``kind`` (auto|nvml|gputil|simulated), its choice in ``selection_note``.

    ``"auto"`` tries NVML, then GPUtil, then simulated GPUs.  With ``num_gpus``,
    hardware providers report GPUs ``0..num_gpus-1``; asking for more than exist
    raises InvalidValueError.  An explicit hardware kind that is unavailable too.
    ``jobs()``: nbsched's running jobs, which simulated GPUs show as processes.
    """
    if kind not in PROVIDER_KINDS:
        raise InvalidValueError(
            f"gpu_provider={kind!r}: accepted values are {', '.join(PROVIDER_KINDS)}"
        )
    indices = list(range(num_gpus)) if num_gpus is not None else None
    reasons: list[str] = []
    for hardware in ("nvml", "gputil"):
        if kind not in ("auto", hardware):
            continue
        provider: NvmlProvider | GputilProvider = (
            NvmlProvider(indices, own_pids) if hardware == "nvml" else GputilProvider(indices)
        )
        if provider.is_available():
            count = _check_count(provider, kind, num_gpus)
            used = num_gpus if num_gpus is not None else count
            note = f"{hardware} sees {count} GPU(s): using {used}"
            if kind == "auto" and simulated_gpus_file is not None:
                note += f" (simulated_gpus_file {os.fspath(simulated_gpus_file)} is ignored)"
            return _chosen(provider, note)
        provider.close()
        if kind == hardware:
            raise InvalidValueError(
                f"gpu_provider={kind!r}: {_HARDWARE_HELP[hardware]} "
                f"({provider.unavailable_reason}); use 'simulated' to run without GPUs, "
                "or 'auto' to take the first provider that works"
            )
        reasons.append(f"{hardware}: {provider.unavailable_reason}")
    simulated = SimulatedProvider(num_gpus, simulated_gpus_file, usage, jobs=jobs)
    source = f" described in {simulated.gpus_file}" if simulated.gpus_file else ""
    note = f"using {simulated.num_gpus} simulated GPUs{source}"
    if not reasons:
        return _chosen(simulated, note)
    # "auto" found no NVIDIA GPU: jobs will run on none, which nobody may have meant.  An
    # INFO line is shown by neither a notebook nor a terminal; a WARNING is.
    note = f"no NVIDIA GPU found ({'; '.join(reasons)}): {note}"
    if _CHOICE_SHOWN_BY_CALLER.get():  # the caller prints it: log it once, quietly
        return _chosen(simulated, note)
    simulated.selection_note = note
    logger.warning("gpu_provider='auto': %s, so jobs get no real GPU", note)
    return simulated


@contextlib.contextmanager
def provider_choice_shown_by_caller() -> Iterator[None]:
    """Within it (in this thread or task), ``"auto"`` falling back to simulated GPUs is
    logged at INFO instead of WARNING: for a front end that prints the provider it took
    itself (``nbsched demo``, ``%gpusched start``), so the user reads it once."""
    token = _CHOICE_SHOWN_BY_CALLER.set(True)
    try:
        yield
    finally:
        _CHOICE_SHOWN_BY_CALLER.reset(token)


def _check_count(provider: NvmlProvider | GputilProvider, kind: str, num_gpus: int | None) -> int:
    try:
        count = provider.device_count()
    except Exception as exc:
        provider.close()
        raise InvalidValueError(
            f"gpu_provider={kind!r}: {provider.name} cannot count the GPUs ({exc})"
        ) from exc
    if num_gpus is not None and num_gpus > count:
        provider.close()
        raise InvalidValueError(
            f"num_gpus={num_gpus}: {provider.name} sees only {count} GPU(s) on this machine"
        )
    return count


def _chosen(provider: _P, note: str) -> _P:
    provider.selection_note = note
    logger.info("GPU provider %s: %s", provider.name, note)
    return provider
