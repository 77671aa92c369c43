"""Tests of the engine's parts on their own (nbsched.engine, nbsched.why): a real
state directory and store in tmp_path, fake dispatchers, a fake clock."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from waiting import wait_for

from nbsched.config import SchedulerConfig
from nbsched.engine import control
from nbsched.engine.lease import DispatcherLease
from nbsched.engine.record import KEY, EngineRecord
from nbsched.engine.registry import Executors, make_executor
from nbsched.engine.role import EngineRole
from nbsched.errors import InvalidValueError, PermissionDeniedError
from nbsched.gpus.base import GpuSnapshot
from nbsched.jobs import JobSpec, JobStatus
from nbsched.store import Store
from nbsched.why import NO_ENGINE, Why


def add(store: Store, required: float = 1.0, uid: int | None = None) -> str:
    spec = JobSpec(kind="command", command="true", required_gpus=required)
    _, job = store.add_jobs_at(
        [spec], owner_uid=os.getuid() if uid is None else uid, executor="direct"
    )
    assert job[0] is not None
    return job[0].id


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------ role


class FakeDispatcher:
    """Runs until stopped, as the real one does."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopped = threading.Event()
        self.running = threading.Event()
        self.closed = False

    def run(self) -> None:
        self.running.set()
        self.stopped.wait()

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        self.closed = True


class Probe:
    """One process's role, with what it was told."""

    def __init__(self, state: Path, name: str) -> None:
        self.events: list[str] = []
        self.made: list[FakeDispatcher] = []
        self.role: EngineRole[FakeDispatcher] = EngineRole(
            state,
            self._new,
            on_take_over=lambda: self.events.append("take over"),
            on_stop=lambda: self.events.append("stopped"),
            poll_s=0.01,
        )
        self.name = name

    def _new(self, fifo: int) -> FakeDispatcher:
        assert fifo >= 0
        self.made.append(FakeDispatcher(self.name))
        return self.made[-1]

    def start(self) -> None:
        self.role.start(lambda: self.events.append("claimed"), lambda: [])


def test_the_standby_takes_the_dispatcher_role_over_when_the_holder_stops(state: Path) -> None:
    first, second = Probe(state, "first"), Probe(state, "second")
    first.start()
    wait_for(lambda: first.role.dispatcher is not None, what="the first to dispatch")
    second.start()
    assert first.role.lease.held and first.events == ["claimed"]
    assert second.role.running and not second.role.lease.held
    assert second.events == [] and second.role.dispatcher is None  # a standby claims nothing

    assert first.role.stop()
    assert first.events == ["claimed", "stopped"] and not first.role.lease.held
    assert first.made[0].closed and first.role.dispatcher is None
    wait_for(lambda: second.role.dispatcher is not None, what="the standby to take over")
    assert second.role.lease.held and second.events == ["take over"]
    assert second.role.lease.holder_pid() == os.getpid()

    assert second.role.stop()
    assert not second.role.running and second.role.lease.holder_pid() is None
    assert second.events == ["take over", "stopped"]


def test_a_failed_claim_releases_the_lease_and_starts_nothing(state: Path) -> None:
    probe = Probe(state, "p")

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        probe.role.start(fail, lambda: [])
    assert not probe.role.running and not probe.role.lease.held


def test_helpers_start_and_stop_with_the_engine(state: Path) -> None:
    stopped: list[str] = []

    class Helper:
        def stop(self) -> None:
            stopped.append("helper")

    probe = Probe(state, "p")
    probe.role.start(lambda: None, lambda: [Helper()])
    assert len(probe.role.helpers) == 1
    probe.role.stop()
    assert stopped == ["helper"] and probe.role.helpers == []


# ------------------------------------------------------------------ record


def test_gpu_count_follows_the_live_engines_record(state: Path, store: Store) -> None:
    clock = FakeClock()
    lease = DispatcherLease(state)
    record = EngineRecord(store, lease, clock)
    assert record.gpu_count(lambda: 4) == (4, "this machine")  # no record at all

    holder = DispatcherLease(state)  # "another process" dispatches (flock is per open file)
    assert holder.try_acquire()
    try:
        record.write({"num_gpus": 2, "pid": os.getpid()})
        clock.t += 2  # (the no-record answer above is cached for a second)
        whose = f"the engine of this state directory (pid {os.getpid()})"
        assert record.gpu_count(lambda: 4) == (2, whose)
        record.write({"num_gpus": 3, "pid": os.getpid()})
        assert record.gpu_count(lambda: 4) == (2, whose)  # read again once a second at most
        clock.t += 1.5
        assert record.gpu_count(lambda: 4) == (3, whose)
        record.write({"num_gpus": 3, "pid": os.getpid() + 1})  # a stopped engine's record
        clock.t += 1.5
        assert record.gpu_count(lambda: 4) == (4, "this machine")
    finally:
        holder.release()


def test_placement_rules_are_the_dispatching_engines(state: Path, store: Store) -> None:
    config = SchedulerConfig(state_dir=state, gpu_provider="simulated", num_gpus=1)
    lease = DispatcherLease(state)
    record = EngineRecord(store, lease)
    store.kv_set(KEY, json.dumps({"pid": os.getpid(), "gpu_load_threshold": 0.95}))
    assert record.placement_rules(config)["gpu_load_threshold"] == 0.8  # nobody dispatches
    holder = DispatcherLease(state)
    assert holder.try_acquire()
    try:
        rules = record.placement_rules(config)
        assert rules["gpu_load_threshold"] == 0.95
        assert rules["gpu_memory_threshold"] == config.gpu_memory_threshold
    finally:
        holder.release()
    assert lease.try_acquire()  # this process dispatches: its own rules
    assert record.placement_rules(config)["gpu_load_threshold"] == 0.8
    lease.release()


# ------------------------------------------------------------------ registry


def test_executors_are_made_once_per_name_and_closed_together(state: Path, store: Store) -> None:
    config = SchedulerConfig(state_dir=state, gpu_provider="simulated", num_gpus=1)
    with pytest.raises(InvalidValueError, match="accepted values are direct, screen, ray"):
        make_executor("slurmish", config)
    executors = Executors(config)
    with pytest.raises(KeyError):
        executors["direct"]
    direct = executors("direct")
    assert executors("direct") is direct and executors["direct"] is direct
    executors.close()
    with pytest.raises(KeyError):
        executors["direct"]


# ------------------------------------------------------------------ control


def test_cancel_and_retry_go_through_the_store(store: Store) -> None:
    job_id = add(store)
    killed: list[str] = []
    assert control.cancel(store, job_id, lambda j: killed.append(j.id))
    assert store.get(job_id).status == JobStatus.CANCELLED and killed == []  # (never ran)
    assert not control.cancel(store, job_id, lambda j: killed.append(j.id))
    assert control.retry(store, job_id) == job_id
    assert store.get(job_id).status == JobStatus.QUEUED
    with pytest.raises(InvalidValueError, match="only ended jobs retry"):
        control.retry(store, job_id)
    running = store.transition(job_id, JobStatus.RUNNING, token="t", gpus=(0,))
    assert running is not None
    assert control.cancel(store, job_id, lambda j: killed.append(j.id))
    assert killed == [job_id] and store.get(job_id).status == JobStatus.CANCELLED


def test_only_the_owner_changes_a_job(store: Store) -> None:
    job_id = add(store, uid=os.getuid() + 1)
    with pytest.raises(PermissionDeniedError, match="only its owner may change it"):
        control.cancel(store, job_id, lambda j: None)
    assert store.get(job_id).status == JobStatus.QUEUED


# ------------------------------------------------------------------ why


def gpu(index: int) -> GpuSnapshot:
    return GpuSnapshot(index, None, "Sim", 0.0, 1000.0, 0.0)


RULES = {"gpu_memory_threshold": 0.9, "gpu_load_threshold": 0.8, "gpu_allocation_precision": 0.01}


def test_why_works_the_queue_out_once_per_change(store: Store) -> None:
    clock = FakeClock()
    reads: list[int] = []

    def snapshot() -> list[GpuSnapshot]:
        reads.append(1)
        return [gpu(0)]

    engine: list[int | None] = [os.getpid()]
    why = Why(store, snapshot, lambda: RULES, lambda: engine[0], clock=clock)
    big = add(store, required=2)
    assert (
        why.why(big) == "needs 2 free GPUs; only 1 usable GPU(s) (others paused or busy elsewhere)"
    )
    assert why.why(big) == why.why(big) and len(reads) == 1  # one revision: worked out once

    small = add(store, required=1)  # a change: the queue is worked out again
    assert why.why(small).startswith("it fits now (GPU 0)") and len(reads) == 2
    assert why.why(small) == why.why(small) and len(reads) == 2
    clock.t += 1.5  # the same revision, but the GPUs may have changed by themselves
    why.why(small)
    assert len(reads) == 3

    store.set_paused(0, True)  # a change that is not a job's
    assert not why.why(small).startswith("it fits now") and len(reads) == 4
    engine[0] = None
    assert why.why(big).endswith(NO_ENGINE)
    control.cancel(store, big, lambda j: None)
    assert why.why(big) == f"job {big} is cancelled"
