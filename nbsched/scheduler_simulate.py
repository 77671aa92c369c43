"""``simulate()`` and ``simulate_trace()``: the queue, or a trace, replayed on a
virtual clock through the dispatcher's own plan (:mod:`nbsched.simulation`); and the
``eta`` column of ``jobs()``.

A mixin of ``GPUJobScheduler`` only, like :mod:`nbsched.scheduler_control`; the
attributes it uses are declared below.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import frames
from .backfill import POLICIES, Policy
from .checks import check_count
from .config import SchedulerConfig
from .errors import InvalidValueError
from .gpus.monitor import GPUMonitor
from .jobs import Job, JobStatus
from .simulation import Replay, figures, queue_replay, read_trace, replay
from .store import Store
from .store.estimates import Estimator
from .why import MAX_AGE_S

if TYPE_CHECKING:
    import pandas as pd

    from .dispatcher import Dispatcher

#: The columns of :meth:`Simulating.simulate`.
SIMULATE_COLUMNS = ("id", "status", "required_gpus", "start", "end", "estimate_source")

#: ``jobs()``'s ``eta`` is worked out for this many jobs at the head of the queue (in
#: dispatch order), once per store revision (and at most once per ``MAX_AGE_S``);
#: the jobs behind them have none (NaT), nor has any while no engine runs.  (A replay
#: of 100 jobs with estimates on 8 GPUs takes ~40 ms here; of 200, ~190 ms.)
ETA_HEAD = 100

#: (whole queue, in dispatch order, for :meth:`Store.queued_ahead`)
_LAST = 2**62


class Simulating:
    """``simulate``, ``simulate_trace`` and the ``eta`` of ``jobs()`` (see the module)."""

    store: Store
    config: SchedulerConfig
    #: (store revision, monotonic time, job id -> expected start) of the last ETAs
    _etas_seen: tuple[int, float, dict[str, float]] | None = None

    @property
    def monitor(self) -> GPUMonitor:  # (GPUJobScheduler's)
        raise NotImplementedError

    @property
    def _dispatcher(self) -> Dispatcher | None:  # (GPUJobScheduler's)
        raise NotImplementedError

    @property
    def engine_pid(self) -> int | None:  # (GPUJobScheduler's)
        raise NotImplementedError

    def _gpu_count(self) -> tuple[int, str]:  # (GPUJobScheduler's)
        raise NotImplementedError

    def simulate(self, first: int | None = None) -> pd.DataFrame:
        """If nothing else arrives and every job runs as long as its estimate says:
        when each running job and each queued one (only the ``first`` N in dispatch
        order, with it) starts and ends.  A job without an estimate never ends here,
        and what waits for its GPUs gets no time (NaT)."""
        import pandas as pd

        limit = None if first is None else check_count("first", first, " or None")
        result, jobs = self._replay(limit, len(self.monitor.snapshot()))
        learned = Estimator(self.store).of_spec
        rows = []
        for job in jobs:
            out = result.outcomes[job.id]
            rows.append(
                (job.id, job.status.value, job.required_gpus,
                 _stamp(out.start), _stamp(out.end), learned(job.spec)[1])
            )  # fmt: skip
        return pd.DataFrame(rows, columns=list(SIMULATE_COLUMNS))

    def _replay(self, limit: int | None, gpus: int) -> tuple[Replay, list[Job]]:
        """The queue's replay from now on ``gpus`` GPUs (the ``limit`` first queued
        jobs), and the running and queued jobs replayed."""
        now = time.time()
        running = self.store.find(statuses=[JobStatus.RUNNING])
        queued = list(islice(self.store.queued_ahead(_LAST, _LAST), limit))
        dispatcher = self._dispatcher
        since = dispatcher.head_since if dispatcher is not None else None
        policy = Policy(reserve_after_s=self.config.reserve_after_s)
        precision = self.config.gpu_allocation_precision
        learned = Estimator(self.store).of_spec  # (learned estimates, where there are)
        result = queue_replay(queued, running, gpus, policy, precision, now, since, learned)
        return result, [*running, *queued]

    def _with_eta(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` (a jobs table) with the ``eta`` of its queued jobs at the head of the
        queue (see :data:`ETA_HEAD`)."""
        queued = df["status"] == JobStatus.QUEUED.value
        if not queued.any() or self.engine_pid is None:
            return df  # (no engine: nothing starts until one does)
        rev, at, seen = self.store.revision(), time.monotonic(), self._etas_seen
        if seen is None or seen[0] != rev or at - seen[1] >= MAX_AGE_S:
            # (the dispatching engine's GPUs, as it published them: no reading here)
            found = self._replay(ETA_HEAD, self._gpu_count()[0])[0].outcomes
            starts = {k: o.start for k, o in found.items() if o.start is not None}
            seen = self._etas_seen = (rev, at, starts)
        etas = seen[2]
        df["eta"] = frames.times(
            [etas.get(i) if q else None for i, q in zip(df["id"], queued, strict=True)]
        )
        return df

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


def _stamp(when: float | None) -> Any:
    import pandas as pd

    return pd.NaT if when is None else frames.times([when]).iloc[0]
