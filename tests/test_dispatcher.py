"""The dispatcher alone: a temp-dir store, simulated GPUs, a fake executor, a fake clock.

Each test drives :meth:`Dispatcher.cycle` by hand with the wall clock and the
monotonic clock it chooses, and reports the fake executor's ends when it likes, so
what the loop decides at each turn is checked without threads or processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_support import count_reads

from nbsched.config import SchedulerConfig
from nbsched.dispatcher import Dispatcher
from nbsched.dispatcher.ends import MAX_DOUBLINGS, backoff_s, decide_end
from nbsched.dispatcher.entries import Queued
from nbsched.executors.base import Executor, Exit, Launch, OnExit, OnStarted, Started
from nbsched.executors.process import read_exit, read_exit_file
from nbsched.gpus import make_provider
from nbsched.gpus.monitor import GPUMonitor
from nbsched.jobs import Job, JobSpec, JobStatus
from nbsched.store import Store, prepare_state_dir

T0 = 1_700_000_000.0  # the fake wall clock's start
M0 = 5_000.0  # the fake monotonic clock's start
BACKOFF_S = 10.0


class FakeExecutor(Executor):
    """Starts nothing: records each start, watch and kill, and ends jobs when told."""

    name = "fake"

    def __init__(self, *, local: bool = True, adopts: dict[str, int] | None = None) -> None:
        self.local_processes = local
        self.launches: list[Launch] = []
        self.killed: list[Job] = []
        self.forgotten: list[Job] = []
        self.watchers: dict[str, tuple[Job, OnExit]] = {}
        self.adopts = adopts or {}  # token -> pid of a process this executor still holds
        self.on_started: OnStarted | None = None

    def is_available(self) -> bool:
        return True

    def start(self, launch: Launch) -> Started:
        self.launches.append(launch)
        return Started(pid=None, proc_start=None, node="here")

    def watch(self, job: Job, on_exit: OnExit) -> None:
        self.watchers[job.token or ""] = (job, on_exit)

    def kill(self, job: Job, grace_s: float) -> None:
        self.killed.append(job)

    def adopt(self, job: Job, on_exit: OnExit) -> int | None:
        pid = self.adopts.get(job.token or "")
        if pid is not None:
            self.watch(job, on_exit)
        return pid

    def forget(self, jobs: list[Job]) -> None:
        self.forgotten += jobs

    def report_starts(self, on_started: OnStarted) -> None:
        self.on_started = on_started

    def end(self, job_id: str, code: int | None, reason: str | None = None) -> None:
        """The job's process ended with ``code``."""
        (token,) = [t for t, (job, _) in self.watchers.items() if job.id == job_id]
        job, on_exit = self.watchers.pop(token)
        on_exit(job, Exit(code, reason))


class Rig:
    """A dispatcher on a temp-dir store with two simulated GPUs, and its fake clock."""

    def __init__(self, state_dir: Path, executor: FakeExecutor) -> None:
        self.config = SchedulerConfig(
            state_dir=state_dir,
            gpu_provider="simulated",
            num_gpus=2,
            # (a queued job's longest wait for a look at the GPUs: above the safety net)
            gpu_monitor_interval_s=30.0,
            retry_backoff_s=BACKOFF_S,
        )
        prepare_state_dir(state_dir)
        (state_dir / "results").mkdir(mode=0o700, exist_ok=True)
        self.store = Store(self.config.db_path)
        provider = make_provider(
            "simulated", num_gpus=2, simulated_gpus_file=None, usage=self.store.allocation
        )
        self.executor = executor
        self.changed: list[list[int]] = []
        self._fifo_r, self._fifo_w = os.pipe()
        self.dispatcher = self.make_dispatcher(GPUMonitor(provider, 0.0))
        self.now, self.mono = T0, M0

    def make_dispatcher(self, monitor: GPUMonitor) -> Dispatcher:
        return Dispatcher(
            self.config,
            self.store,
            monitor,
            lambda name: self.executor,
            self._fifo_r,
            self.changed.append,
        )

    def add(self, required: float = 1.0, max_retries: int = 0) -> str:
        spec = JobSpec(
            kind="command", command="true", required_gpus=required, max_retries=max_retries
        )
        _, (job,) = self.store.add_jobs_at(
            [spec], owner_uid=os.getuid(), executor="fake", now=self.now
        )
        assert job is not None
        self.dispatcher.wake()
        return job.id

    def offer(self, n: int, priority: int = 0) -> list[str]:
        """``n`` jobs submitted in this process: offered to the dispatcher, as the
        scheduler does, not read back by it."""
        specs = [
            JobSpec(kind="command", command=f"true {i}", required_gpus=1.0, priority=priority)
            for i in range(n)
        ]
        rev, jobs = self.store.add_jobs_at(
            specs, owner_uid=os.getuid(), executor="fake", now=self.now
        )
        stored = [job for job in jobs if job is not None]
        self.dispatcher.offer(rev, stored)
        return [job.id for job in stored]

    def cycle(self, after_s: float = 0.0) -> float:
        """One turn, ``after_s`` later by both clocks; returns the sleep it asked for."""
        self.now += after_s
        self.mono += after_s
        return self.dispatcher.cycle(self.now, self.mono)

    def job(self, job_id: str) -> Job:
        return self.store.get(job_id)

    def close(self) -> None:
        self.dispatcher.close()
        self.store.close()
        os.close(self._fifo_r)
        os.close(self._fifo_w)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "state", FakeExecutor())
    yield r
    r.close()


def test_a_job_starts_on_a_free_gpu_and_succeeds(rig: Rig) -> None:
    job_id = rig.add()
    rig.cycle()
    job = rig.job(job_id)
    assert job.status == JobStatus.RUNNING and job.attempts == 1
    assert job.started == T0 and len(job.gpus) == 1
    (launch,) = rig.executor.launches
    assert launch.job.id == job_id and launch.gpus == job.gpus
    assert launch.env["CUDA_VISIBLE_DEVICES"] == str(job.gpus[0])
    assert launch.env["NBSCHED_JOB_TOKEN"] == job.token

    rig.executor.end(job_id, 0)
    rig.cycle(5.0)
    job = rig.job(job_id)
    assert job.status == JobStatus.SUCCEEDED and job.exit_code == 0 and job.ended == T0 + 5.0
    assert [j.id for j in rig.executor.forgotten] == [job_id]
    assert [job.seq] in rig.changed


def test_jobs_wait_for_a_gpu_and_start_when_one_frees(rig: Rig) -> None:
    a, b, c = rig.add(), rig.add(), rig.add()
    rig.cycle()
    assert [rig.job(i).status for i in (a, b, c)] == [JobStatus.RUNNING] * 2 + [JobStatus.QUEUED]
    rig.cycle(1.0)
    assert len(rig.executor.launches) == 2  # nothing freed: nothing started
    rig.executor.end(a, 0)
    rig.cycle(1.0)
    assert rig.job(c).status == JobStatus.RUNNING
    assert rig.job(c).gpus == rig.job(a).gpus  # the GPU a freed


def test_a_failure_with_retries_left_waits_out_its_backoff(rig: Rig) -> None:
    job_id = rig.add(max_retries=1)
    rig.cycle()
    rig.executor.end(job_id, 3)
    assert rig.cycle(1.0) == 0.0  # a retry went back to the queue: look again at once
    job = rig.job(job_id)
    assert job.status == JobStatus.QUEUED and job.exit_code == 3
    assert job.not_before == T0 + 1.0 + BACKOFF_S
    assert job.reason is not None and "retrying in 10s" in job.reason

    assert rig.cycle() == 2.0  # (the safety net, sooner than the back-off's end)
    assert len(rig.executor.launches) == 1  # not started before its not_before
    assert rig.cycle(BACKOFF_S - 0.5) == pytest.approx(0.5)  # (until the back-off's end)
    assert len(rig.executor.launches) == 1
    rig.cycle(0.5)
    assert len(rig.executor.launches) == 2
    job = rig.job(job_id)
    assert job.status == JobStatus.RUNNING and job.attempts == 2

    rig.executor.end(job_id, 3)  # no retry left
    rig.cycle(1.0)
    job = rig.job(job_id)
    assert job.status == JobStatus.FAILED and job.reason == "exit code 3"


def test_a_wall_clock_stepped_back_does_not_hold_a_backoff(rig: Rig) -> None:
    job_id = rig.add(max_retries=1)
    rig.cycle()
    rig.executor.end(job_id, 1)
    rig.cycle(1.0)
    rig.cycle()  # (reads the retry back)
    rig.now -= 3600.0  # the wall clock goes back an hour; the monotonic one does not
    rig.cycle(BACKOFF_S + 0.5)
    assert len(rig.executor.launches) == 2


def test_cancel_while_queued_and_while_running(rig: Rig) -> None:
    a, b, c = rig.add(), rig.add(), rig.add()
    rig.cycle()
    assert rig.job(c).status == JobStatus.QUEUED
    # a queued job: as GPUJobScheduler.cancel does it
    rig.store.transition(c, JobStatus.CANCELLED, expect={JobStatus.QUEUED}, reason="cancelled")
    rig.dispatcher.wake()
    # a running job: asked in the store, killed, marked cancelled
    job = rig.job(a)
    rig.store.update(a, cancel_requested=True)
    rig.executor.kill(job, 0.0)
    rig.store.transition(
        a, JobStatus.CANCELLED, expect={JobStatus.RUNNING}, guard=lambda j: j.token == job.token
    )
    rig.dispatcher.wake()
    rig.executor.end(a, -15)  # its process ends on the signal
    rig.cycle(1.0)
    assert rig.job(a).status == JobStatus.CANCELLED  # the end did not overwrite the cancel
    assert rig.job(c).status == JobStatus.CANCELLED
    assert len(rig.executor.launches) == 2  # c never started, though a's GPU is free
    assert rig.job(b).status == JobStatus.RUNNING


def test_a_job_cancelled_while_it_starts_is_killed(rig: Rig) -> None:
    job_id = rig.add()
    rig.cycle()  # marked running and spawned; its pid is written by the next transaction
    rig.store.update(job_id, cancel_requested=True)  # another process cancels it meanwhile
    assert rig.executor.killed == []
    rig.cycle(1.0)
    assert [j.id for j in rig.executor.killed] == [job_id]


def test_a_job_that_cannot_start_fails_with_the_reason(rig: Rig) -> None:
    def refuse(launch: Launch) -> Started:
        raise OSError("no such launcher")

    rig.executor.start = refuse  # type: ignore[method-assign]
    job_id = rig.add()
    rig.cycle()
    job = rig.job(job_id)
    assert job.status == JobStatus.FAILED and job.reason == "could not start: no such launcher"
    assert "could not start: no such launcher" in Path(job.log_path or "").read_text()


def test_where_a_job_runs_is_recorded_when_its_executor_learns_it(rig: Rig) -> None:
    """An executor whose jobs begin after start() returns (Ray) reports where they run;
    the dispatcher writes it with the next pids (no executor opens the store)."""
    job_id = rig.add()
    rig.cycle()
    assert rig.executor.on_started is not None
    job, _ = rig.executor.watchers[rig.job(job_id).token or ""]
    rig.executor.on_started(job, Started(pid=4321, proc_start=12.5, node="node-2", began=T0 + 0.7))
    rig.cycle(1.0)
    job = rig.job(job_id)
    assert (job.pid, job.proc_start, job.node, job.started) == (4321, 12.5, "node-2", T0 + 0.7)


def test_a_big_offered_batch_waits_behind_an_urgent_job_in_the_first_cycle(rig: Rig) -> None:
    """A sweep's jobs are taken as offered, not read back from the store; an urgent job
    submitted after them starts first, in the same turn."""
    sweep = rig.offer(2000)
    (urgent,) = rig.offer(1, priority=-10)
    rows = count_reads(rig.store)
    rig.cycle()
    assert rows[0] < 20  # (the 2,001 new rows were not read back)
    assert [launch.job.id for launch in rig.executor.launches] == [urgent, sweep[0]]
    assert rig.job(urgent).status == rig.job(sweep[0]).status == JobStatus.RUNNING
    cache = rig.dispatcher._cache
    queued = list(cache.ordered())
    assert [e.id for e in queued] == sweep[1:] and not cache.runs  # merged after the starts
    assert all(type(e) is Queued for e in queued)  # light entries, not whole jobs
    rig.executor.end(urgent, 0)
    rig.cycle(1.0)
    assert rig.executor.launches[-1].job.id == sweep[1]  # then in submission order


def test_an_offer_the_store_was_read_past_is_not_taken_again(rig: Rig) -> None:
    """Jobs read from the store before their offer came (the loop looked between the
    commit and the offer) are not queued twice, nor taken off the running jobs."""
    specs = [JobSpec(kind="command", command=f"true {i}", required_gpus=1.0) for i in range(100)]
    rev, jobs = rig.store.add_jobs_at(specs, owner_uid=os.getuid(), executor="fake", now=rig.now)
    ids = [job.id for job in jobs if job is not None]
    rig.cycle()  # reads the 100 rows
    assert [launch.job.id for launch in rig.executor.launches] == ids[:2]
    rig.dispatcher.offer(rev, [job for job in jobs if job is not None])  # then the offer
    rig.cycle(1.0)
    cache = rig.dispatcher._cache
    assert [e.id for e in cache.ordered()] == ids[2:] and set(cache.running) == set(ids[:2])
    assert len(rig.executor.launches) == 2  # the GPUs are still taken
    rig.executor.end(ids[0], 0)
    rig.cycle(1.0)
    assert [launch.job.id for launch in rig.executor.launches] == ids[:3]


def test_the_queue_feed_leaves_out_the_revisions_asked(rig: Rig) -> None:
    """Store.queue_changes: the rows written at the revisions to skip are not read
    (those still at them), the others are, with what a queue entry needs."""
    spec = JobSpec(kind="command", command="x", required_gpus=0.5, allowed_gpus=(1,))
    rev1, _ = rig.store.add_jobs_at([spec] * 3, owner_uid=os.getuid(), executor="fake")
    rev2, (b,) = rig.store.add_jobs_at([spec], owner_uid=os.getuid(), executor="fake")
    rev3, (c,) = rig.store.add_jobs_at([spec], owner_uid=os.getuid(), executor="fake")
    assert b is not None and c is not None
    rig.store.set_paused(0, True)
    feed = rig.store.queue_changes(0, [rev1, rev3])
    assert [row.seq for row in feed.changes] == [b.seq]
    assert feed.rev > rev3 and feed.paused == frozenset({0})
    entry = Queued.read(feed.changes[0])
    assert entry.id == b.id
    assert entry == (0, b.seq, 0.5, (1,), None, 0, rev2, None, None)  # (no estimate)
    assert rig.store.queue_changes(rev1, [rev2]).changes[0].seq == c.seq
    assert len(rig.store.queue_changes(0).changes) == 5


def test_light_entries_see_jobs_changed_by_another_process(rig: Rig) -> None:
    """Queued entries hold no whole job; a cancel or a job added by another process
    (through the store, waking the loop) is seen at the next turn."""
    first, second, third, fourth = rig.offer(4)
    rig.cycle()
    assert {launch.job.id for launch in rig.executor.launches} == {first, second}
    other = Store(rig.config.db_path)  # another process's store on the same state dir
    try:
        other.transition(third, JobStatus.CANCELLED, expect={JobStatus.QUEUED}, reason="x")
        spec = JobSpec(kind="command", command="urgent", required_gpus=1.0, priority=-1)
        _, (foreign,) = other.add_jobs_at([spec], owner_uid=os.getuid(), executor="fake")
    finally:
        other.close()
    assert foreign is not None
    rig.dispatcher._dirty = True  # (what the loop does on the other process's FIFO byte)
    rig.executor.end(first, 0)
    rig.cycle(1.0)
    assert rig.executor.launches[-1].job.id == foreign.id
    assert rig.executor.launches[-1].job.spec.command == "urgent"  # the whole row, read
    rig.executor.end(second, 0)
    rig.cycle(1.0)
    assert rig.executor.launches[-1].job.id == fourth  # not the cancelled one
    assert rig.job(third).status == JobStatus.CANCELLED


def test_recovery_adopts_a_running_job_after_a_crash(tmp_path: Path) -> None:
    first = Rig(tmp_path / "state", FakeExecutor())
    job_id = first.add()
    first.cycle()
    first.cycle(1.0)  # (its pid, None here, is written)
    token = first.job(job_id).token
    assert token is not None
    # The engine dies; a new one opens the same state directory.
    first.dispatcher.close()
    second = Rig(tmp_path / "state", FakeExecutor(adopts={token: 777}))
    try:
        second.dispatcher.recover()
        assert second.job(job_id).pid == 777  # adopted from the executor
        second.executor.end(job_id, 0)
        second.cycle(1.0)
        assert second.job(job_id).status == JobStatus.SUCCEEDED
        assert second.executor.launches == []  # adopted, not started again
    finally:
        second.close()
        first.store.close()


def test_recovery_queues_again_a_job_that_never_started(tmp_path: Path) -> None:
    first = Rig(tmp_path / "state", FakeExecutor())
    job_id = first.add()
    first.cycle()  # marked running; "crashed" before the process existed
    first.dispatcher.close()
    second = Rig(tmp_path / "state", FakeExecutor())
    try:
        second.dispatcher.recover()
        job = second.job(job_id)
        assert job.status == JobStatus.QUEUED and job.attempts == 0 and job.token is None
        second.cycle(1.0)
        assert second.job(job_id).status == JobStatus.RUNNING
        assert len(second.executor.launches) == 1
    finally:
        second.close()
        first.store.close()


def test_recovery_leaves_a_remote_job_to_its_executor(tmp_path: Path) -> None:
    first = Rig(tmp_path / "state", FakeExecutor())
    job_id = first.add()
    first.cycle()
    first.dispatcher.close()
    second = Rig(tmp_path / "state", FakeExecutor(local=False))
    try:
        second.dispatcher.recover()
        assert second.job(job_id).status == JobStatus.RUNNING  # not requeued: watched
        second.executor.end(job_id, 1, None)
        second.cycle(1.0)
        assert second.job(job_id).status == JobStatus.FAILED
    finally:
        second.close()
        first.store.close()


# -- the end decision, alone --------------------------------------------------------------


def _job(attempts: int, max_retries: int, conda_env: str | None = None) -> Job:
    spec = JobSpec(kind="command", command="x", required_gpus=1.0, max_retries=max_retries)
    if conda_env:
        spec = JobSpec(kind="script", script="t.py", conda_env=conda_env, required_gpus=1.0)
    return Job(id="7", seq=7, status=JobStatus.RUNNING, spec=spec, submitted=0.0, attempts=attempts)


def test_end_success() -> None:
    end = decide_end(_job(1, 2), Exit(0), 5.0, 100.0)
    assert (end.status, end.exit_code, end.reason, end.not_before) == (
        JobStatus.SUCCEEDED,
        0,
        None,
        None,
    )


def test_end_retry_doubles_the_backoff_per_attempt() -> None:
    first = decide_end(_job(1, 3), Exit(2), 5.0, 100.0)
    assert first.status == JobStatus.QUEUED and first.not_before == 105.0
    assert first.retry_reason == "attempt 1 failed (exit code 2); retrying in 5s"
    third = decide_end(_job(3, 3), Exit(None, "lost"), 5.0, 100.0)
    assert third.status == JobStatus.QUEUED and third.not_before == 120.0
    assert third.reason == "lost" and third.exit_code is None


def test_an_end_is_recorded_when_the_executor_says_it_ended() -> None:
    """The spawner's time (the job ended while no engine ran, say), kept between the
    attempt's start and now; without one, the time it is recorded."""
    job = _job(1, 0).evolve(started=50.0)
    assert decide_end(job, Exit(0, at=60.0), 5.0, 100.0).at == 60.0
    assert decide_end(job, Exit(3, at=60.0), 5.0, 100.0).at == 60.0
    assert decide_end(job, Exit(0, at=40.0), 5.0, 100.0).at == 50.0  # (clock stepped)
    assert decide_end(job, Exit(0, at=140.0), 5.0, 100.0).at == 100.0
    assert decide_end(job, Exit(0), 5.0, 100.0).at is None
    retry = decide_end(_job(1, 3).evolve(started=50.0), Exit(2, at=60.0), 5.0, 100.0)
    assert retry.at == 60.0 and retry.not_before == 105.0


def test_an_exit_file_gives_its_time(tmp_path: Path) -> None:
    """The spawner's exit file holds ``CODE TIME``; a wrapper shell's (screen) ``CODE``
    alone, written as the job ends: its time is the file's."""
    spawner_file, shell_file = tmp_path / "a.exit", tmp_path / "b.exit"
    spawner_file.write_text("3 1700000000.250000\n")
    shell_file.write_text("4\n")
    os.utime(shell_file, (1700000001.5, 1700000001.5))
    assert read_exit(spawner_file) == (3, 1700000000.25)
    assert read_exit(shell_file) == (4, 1700000001.5)
    assert read_exit_file(spawner_file) == 3 and read_exit(tmp_path / "none") is None


def test_end_final_when_retries_are_used_up() -> None:
    end = decide_end(_job(2, 1), Exit(9), 5.0, 100.0)
    assert (end.status, end.reason, end.not_before) == (JobStatus.FAILED, "exit code 9", None)


def test_end_final_when_the_conda_env_is_missing() -> None:
    end = decide_end(_job(1, 3), Exit(1), 5.0, 100.0, missing_env="conda env 'x' not found")
    assert end.status == JobStatus.FAILED
    assert end.reason == "exit code 1: conda env 'x' not found"


def test_backoff_is_capped() -> None:
    assert backoff_s(1.5, 0) == backoff_s(1.5, 1) == 1.5
    assert backoff_s(1.5, 4) == 12.0
    assert backoff_s(1.0, 10**6) == 2.0**MAX_DOUBLINGS  # no OverflowError
