"""Why queued jobs have not started, in words: :func:`explain` for a queue, and
:func:`explain_one` for one job (``why()``), from the same inputs as
:func:`nbsched.allocation.plan` and by its decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .allocation import GpuState, Plan, QueuedJob, _clock, _need, _round, plan
from .backfill import DEFAULT_POLICY, Policy, Running
from .gpus.memory_fit import MemoryFit


def explain(
    queue: Sequence[QueuedJob],
    gpus: Sequence[GpuState],
    now: float,
    precision: float = 0.01,
    *,
    running: Iterable[Running] = (),
    policy: Policy = DEFAULT_POLICY,
) -> dict[str, str]:
    """Why each job of ``queue`` (in dispatch order, as for :func:`plan`) has not
    started, in words, from the same inputs as :func:`plan`."""
    decision = plan(queue, gpus, now, precision, running=running, policy=policy)
    words = _Reasons(decision, gpus, now, precision, policy)
    head = decision.head_waiting
    out: dict[str, str] = {}
    after_head = False
    for job in queue:
        out[job.id] = words.of(job, after_head)
        after_head = after_head or (head is not None and job.id == head[0])
    return out


def explain_one(
    queue: Iterable[QueuedJob],
    job: QueuedJob,
    gpus: Sequence[GpuState],
    now: float,
    precision: float = 0.01,
    *,
    running: Iterable[Running] = (),
    policy: Policy = DEFAULT_POLICY,
    head_since: tuple[str, float] | None = None,
    memory: MemoryFit | None = None,
) -> str:
    """:func:`explain`'s answer for ``job``, from ``queue``: the jobs ahead of it in
    dispatch order, then ``job`` (``memory``: see :func:`plan`; not changed here).

    The jobs behind it change nothing of its answer (:func:`plan` takes the jobs in
    order), and :func:`plan` iterates ``queue`` only until nothing is left to hand
    out: a queue read lazily is read no further (``why()`` of one job among 100,000
    reads a page or a few, not the whole queue).
    """
    fit = memory.copy() if memory is not None else None
    decision = plan(
        queue, gpus, now, precision, running=running, policy=policy, head_since=head_since,
        memory=fit,
    )  # fmt: skip
    head = decision.head_waiting
    after_head = head is not None and head[0] != job.id  # (the head is ahead of it, if any)
    return _Reasons(decision, gpus, now, precision, policy).of(job, after_head)


class _Reasons:
    """The words for the jobs of one :class:`Plan`."""

    def __init__(
        self,
        decision: Plan,
        gpus: Sequence[GpuState],
        now: float,
        precision: float,
        policy: Policy = DEFAULT_POLICY,
    ) -> None:
        self.placed = {p.job_id: p.gpus for p in decision.placements}
        self.head = head = decision.head_waiting
        self.held = sorted(g for g, j in decision.reserved.items() if head and j == head[0])
        self.usable = sum(1 for g in gpus if g.eligible)
        self.eligible = {g.index for g in gpus if g.eligible}
        self.now = now
        self.precision = precision
        eta = decision.head_eta
        known = eta is not None and eta.at is not None
        self.eta = f"; starts {eta.words(_clock(eta.at))}" if eta and eta.at is not None else ""
        self.backfill = known and policy.mode == "backfill"

    def of(self, job: QueuedJob, after_head: bool) -> str:
        """Why ``job`` has not started; ``after_head``: the plan's head job (the first
        that could not start) comes before it."""
        head = self.head
        if job.not_before is not None and job.not_before > self.now:
            return f"a retry's back-off, until {_clock(job.not_before)}"
        if job.id in self.placed:
            where = ",".join(map(str, self.placed[job.id]))
            return f"it fits now (GPU {where}): it starts at the engine's next turn"
        if head is not None and job.id == head[0]:
            return head[1] + self.eta
        if job.allowed_gpus is not None and not self.eligible & set(job.allowed_gpus):
            allowed = ",".join(map(str, job.allowed_gpus))
            return (
                f"none of the GPUs it may use ({allowed}) takes a job now "
                "(paused, or busy with others' work)"
            )
        if head is not None and after_head:
            text = f"job {head[0]} comes first ({head[1]}{self.eta})"
            need = _need(_round(job.required_gpus, self.precision))
            if self.held and self.backfill:
                text += (
                    f"; it needs {need}, and may use the GPUs that job holds only if its "
                    "estimate says it ends before then"
                )
            elif self.held:
                text += f"; it needs {need}, and may use only GPUs that job does not hold"
            return text
        if self.usable:
            return f"every usable GPU ({self.usable}) is taken by running jobs and jobs ahead of it"
        return "no GPU is usable now (paused, or busy with others' work)"
