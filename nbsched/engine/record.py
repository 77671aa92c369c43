"""The engine record: what the dispatching engine publishes of itself in the store.

The engine that holds the lease writes its settings under the store key ``engine``
(its GPU provider and count, executor, LLM config, the rules it places jobs by, its
pid).  Another process (a kernel without an engine, the ``nbsched`` command) reads it
to validate a submission against the GPUs of the engine that will run it, and to
explain the queue by that engine's rules, not by its own config.  A standby writes
nothing until it takes the lease over: the record is the dispatcher's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..checks import is_real
from ..config import SchedulerConfig
from ..store import Store
from .lease import DispatcherLease

logger = logging.getLogger(__name__)

#: The store key of the record.
KEY = "engine"
#: How long the GPU count another process's engine published is trusted before it is
#: read again (submissions are validated against it).
ENGINE_INFO_TTL_S = 1.0
#: The config fields by which the engine places jobs (``why()`` elsewhere follows them).
PLACEMENT_RULES = (
    "gpu_memory_threshold",
    "gpu_load_threshold",
    "gpu_allocation_precision",
    "reserve_after_s",
)


def engine_info(config: SchedulerConfig, provider_name: str, num_gpus: int) -> dict[str, Any]:
    """What another process (the CLI) needs to validate jobs as this engine would."""
    info: dict[str, Any] = {
        "gpu_provider": provider_name,
        "num_gpus": num_gpus,
        "simulated_gpus_file": config.simulated_gpus_file,
        "executor": config.executor,
        "llm_config_file": _abspath(config.llm_config_file),
        # (the rules it places jobs by: why() in another process follows them)
        **{k: getattr(config, k) for k in PLACEMENT_RULES},
        "pid": os.getpid(),
    }
    if config.executor == "ray":  # other processes join the same Ray
        from ..raycluster import cluster_for

        cluster = cluster_for(config.ray_address, config.num_gpus)
        info.update(gpu_provider=config.gpu_provider, ray_address=cluster.gcs_address)
    if config.executor == "slurm":  # (its GPUs are Slurm's whatever the provider says)
        info.update(gpu_provider=config.gpu_provider, slurm_partition=config.slurm_partition)
    return info


class EngineRecord:
    """Reading and writing the record of the engine of one state directory."""

    def __init__(
        self,
        store: Store,
        lease: DispatcherLease,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._lease = lease
        self._clock = clock
        # (when read, the GPU count the dispatching engine published, and its pid)
        self._engine_gpus: tuple[float, int | None, int | None] | None = None

    def write(self, info: Mapping[str, Any]) -> None:
        """Write this engine's record (it holds the lease); raises if the store fails."""
        self._store.kv_set(KEY, json.dumps(info))

    def publish(self, info: Callable[[], Mapping[str, Any]]) -> None:
        """Write this engine's record from a thread (a standby that took the lease
        over): a failure is logged, and the engine dispatches all the same."""
        try:
            self.write(info())
        except Exception:
            logger.exception("nbsched: could not record this engine's GPUs in the store")

    def settings(self) -> dict[str, Any] | None:
        """The record as last written, or None if there is none (or it is unreadable)."""
        try:
            info = json.loads(self._store.kv_get(KEY) or "null")
        except ValueError:
            return None
        return info if isinstance(info, dict) else None

    def published_gpus(self) -> tuple[int | None, int | None]:
        """The GPU count and pid in the record, if there is a usable one."""
        info = self.settings()
        if info is None:
            return None, None
        count, pid = info.get("num_gpus"), info.get("pid")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            return None, None
        return count, pid if isinstance(pid, int) and not isinstance(pid, bool) else None

    def gpu_count(self, own: Callable[[], int]) -> tuple[int, str]:
        """How many GPUs jobs may ask for, and whose they are (for messages): the
        dispatching engine's (it is the one that runs them), as it published them;
        ``own()`` where this process dispatches, or where no live engine published
        any.  Another process's count is read again once a second at most."""
        if not self._lease.held:
            now = self._clock()
            known = self._engine_gpus
            if known is None or now - known[0] > ENGINE_INFO_TTL_S:
                count, pid = self.published_gpus()
                if pid is not None and pid != self._lease.holder_pid():
                    count = None  # a stopped engine's record: its GPUs may be gone too
                known = self._engine_gpus = (now, count, pid)
            _, count, pid = known
            if count is not None:
                who = f" (pid {pid})" if pid is not None else ""
                return count, f"the engine of this state directory{who}"
        return own(), "this machine"

    def placement_rules(self, config: SchedulerConfig) -> dict[str, Any]:
        """The rules by which jobs are placed (:data:`PLACEMENT_RULES`): ``config``'s
        where this process dispatches (or no live engine published its own), else
        those of the engine that dispatches."""
        rules = {k: getattr(config, k) for k in PLACEMENT_RULES}
        if not self._lease.held:
            info = self.settings() or {}
            if info.get("pid") is not None and info.get("pid") == self._lease.holder_pid():
                rules.update({k: info[k] for k in rules if is_real(info.get(k))})
        return rules


def _abspath(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


__all__ = ["ENGINE_INFO_TTL_S", "KEY", "PLACEMENT_RULES", "EngineRecord", "engine_info"]
