"""Which GPU provider and which executors a config names: name -> constructor.

The constructors are imported when first asked for: the Ray and screen back ends
(and their dependencies) load only in the processes that use them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from ..config import SchedulerConfig
from ..errors import InvalidValueError
from ..executors.base import Executor
from ..gpus import make_provider
from ..gpus.base import GPUProvider
from ..gpus.simulated import SimulatedJob

#: The executors a job may name, in the order messages list them.
EXECUTORS = ("direct", "screen", "ray", "slurm")


def make_gpu_provider(
    config: SchedulerConfig,
    usage: Callable[[], Mapping[int, float]],
    jobs: Callable[[], Iterable[SimulatedJob]] | None = None,
) -> GPUProvider:
    """The GPUs ``config`` names: Ray's where jobs run on Ray (its cluster's GPUs are
    the ones jobs get), else ``config.gpu_provider``'s; ``usage`` is what nbsched's jobs
    book of each GPU (the simulated provider derives its readings from it)."""
    if config.executor == "ray":
        from ..gpus.ray_provider import RayGpuProvider
        from ..raycluster import cluster_for, import_ray

        import_ray()  # NotSupportedError naming how to install Ray
        return RayGpuProvider(cluster_for(config.ray_address, config.num_gpus))
    if config.executor == "slurm":
        from ..gpus.slurm_provider import SlurmGpuProvider

        return SlurmGpuProvider(config.slurm_partition)
    return make_provider(
        config.gpu_provider,
        num_gpus=config.num_gpus,
        simulated_gpus_file=config.simulated_gpus_file,
        usage=usage,
        jobs=jobs,
    )


def make_executor(name: str, config: SchedulerConfig) -> Executor:
    """A new executor of the kind ``name``, for the engine of ``config``."""
    if name == "direct":
        from ..executors.direct import DirectExecutor

        return DirectExecutor(config.run_dir)
    if name == "screen":
        from ..executors.screen import ScreenExecutor

        return ScreenExecutor(config.run_dir)
    if name == "ray":
        from ..executors.ray import RayExecutor

        return RayExecutor(config)
    if name == "slurm":
        from ..executors.slurm import SlurmExecutor

        return SlurmExecutor(config)
    raise InvalidValueError(f"executor={name!r}: accepted values are {', '.join(EXECUTORS)}")


class Executors:
    """One engine's executors, each made the first time a job names it.

    Calling it (``executors("direct")``) is the factory the dispatcher takes;
    ``executors["direct"]`` is one already made (``KeyError`` if none is).
    """

    def __init__(self, config: SchedulerConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._made: dict[str, Executor] = {}

    def __call__(self, name: str) -> Executor:
        with self._lock:
            ex = self._made.get(name)
            if ex is None:
                ex = self._made[name] = make_executor(name, self._config)
            return ex

    def __getitem__(self, name: str) -> Executor:
        with self._lock:
            return self._made[name]

    def close(self) -> None:
        """Close every executor made so far; the next call makes a new one."""
        with self._lock:
            for ex in self._made.values():
                ex.close()
            self._made.clear()


__all__ = ["EXECUTORS", "Executors", "make_executor", "make_gpu_provider"]
