"""``simulate()`` and ``simulate_trace()``: the queue, or a trace, replayed on a
virtual clock through the dispatcher's own plan (:mod:`nbsched.simulation`).

A mixin of ``GPUJobScheduler`` only, like :mod:`nbsched.scheduler_control`; the
attributes it uses are declared below.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backfill import POLICIES, Policy
from .checks import check_count
from .config import SchedulerConfig
from .errors import InvalidValueError
from .gpus.monitor import GPUMonitor
from .jobs import Job, JobStatus
from .simulation import SimJob, figures, read_trace, replay
from .store import Store

if TYPE_CHECKING:
    import pandas as pd

#: The columns of :meth:`Simulating.simulate`.
SIMULATE_COLUMNS = ("id", "status", "required_gpus", "start", "end", "estimate_source")


class Simulating:
    """``simulate`` and ``simulate_trace`` (see the module)."""

    store: Store
    config: SchedulerConfig

    @property
    def monitor(self) -> GPUMonitor:  # (GPUJobScheduler's)
        raise NotImplementedError

    def simulate(self) -> pd.DataFrame:
        """If nothing else arrives and every job runs as long as its estimate says:
        when each queued and running job starts and ends (a job without an estimate
        never ends here, and what waits for its GPUs gets no time: NaT)."""
        import pandas as pd

        now = time.time()
        running = self.store.find(statuses=[JobStatus.RUNNING])
        queued = [j for j in self.store.find(statuses=[JobStatus.QUEUED]) if not j.held]
        gpus = max([len(self.monitor.snapshot()), *(g + 1 for j in running for g in j.gpus)])
        policy = Policy(reserve_after_s=self.config.reserve_after_s)
        result = replay(
            [_sim(j, min(j.submitted, now)) for j in queued],
            gpus,
            policy,
            self.config.gpu_allocation_precision,
            running=[(_sim(j, j.submitted), j.gpus, j.started or now) for j in running],
            now=now,
        )
        rows = []
        for job in [*running, *queued]:
            out = result.outcomes[job.id]
            rows.append(
                (job.id, job.status.value, job.required_gpus,
                 _stamp(out.start), _stamp(out.end), job.estimate_source)
            )  # fmt: skip
        return pd.DataFrame(rows, columns=list(SIMULATE_COLUMNS))

    @staticmethod
    def simulate_trace(
        trace: str | Path,
        gpus: int = 8,
        policy: str = "backfill",
        scale: float = 1.0,
        reserve_after_s: float = 0.0,
    ) -> dict[str, Any]:
        """Replay the jobs of ``trace`` (a Tiresias CSV, or a ``jobs()`` table saved
        with ``to_csv``) on ``gpus`` GPUs under ``policy`` (one of ``fifo``,
        ``easy``, ``backfill``), times divided by ``scale``: its figures (seconds)."""
        gpus = check_count("gpus", gpus)
        if gpus < 1:
            raise InvalidValueError(f"gpus={gpus!r}: must be at least 1")
        if policy not in POLICIES:
            raise InvalidValueError(f"policy={policy!r}: must be one of {', '.join(POLICIES)}")
        rules = Policy(policy, reserve_after_s=reserve_after_s)
        return asdict(figures(replay(read_trace(trace, scale, max_gpus=gpus), gpus, rules)))


def _sim(job: Job, submit: float) -> SimJob:
    return SimJob(
        job.id, job.required_gpus, submit, job.estimate_s, job.estimate_s,
        job.estimate_source, job.priority, job.seq, job.allowed_gpus,
    )  # fmt: skip


def _stamp(when: float | None) -> Any:
    import pandas as pd

    return pd.NaT if when is None else pd.Timestamp(when, unit="s")
