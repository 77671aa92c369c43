"""Bad numbers in submissions and the config: numpy's, below the allocation precision,
and from an LLM config; each raises at once, naming it, and stores nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from validation_support import N_GPUS, rejects

from nbsched import GPUJobScheduler, SchedulerConfig


@pytest.fixture
def scheduler_config() -> dict[str, object]:
    """sched (tests/conftest.py): not started, as validation happens before anything
    reaches the engine."""
    return {"num_gpus": N_GPUS}


# ------------------------------------------------------------------ numpy's numbers


def test_numpy_numbers_are_taken_as_plain_ones(sched: GPUJobScheduler, script: str) -> None:
    """Any numbers.Real / numbers.Integral is a number (never a bool), everywhere a
    number is taken, and is stored as a plain float or int."""
    half = sched.store.get(
        sched.add_command(
            "true",
            required_gpus=np.float32(0.5),
            priority=np.int64(1),
            max_retries=np.uint8(2),
            allowed_gpus=[np.int64(1)],
        )
    )
    assert (half.required_gpus, half.priority, half.spec.max_retries) == (0.5, 1, 2)
    assert type(half.required_gpus) is float and type(half.priority) is int
    assert type(half.spec.max_retries) is int and half.allowed_gpus == (1,)
    two = sched.store.get(
        sched.add_job(script, args=[np.int64(3), np.float64(0.5)], required_gpus=np.int64(2))
    )
    assert two.required_gpus == 2.0 and type(two.required_gpus) is float
    assert two.spec.args == ("3", "0.5")
    sched.pause_gpu(np.int64(3))
    assert sched.store.paused() == {3}
    sched.resume_gpu(np.int32(3))
    assert sched.logs(half.id, tail=np.int64(5)) == ""
    assert list(sched.jobs(first=np.int64(1))["id"]) == [half.id]
    ids = sched.add_sweep(
        script, args="--x {1,2}", required_gpus=np.float64(0.25), limit=np.int16(2)
    )
    again = sched.add_sweep(script, args="--x {1,2}", required_gpus=0.25)
    assert len(ids) == 2 and again.sweep_id == ids.sweep_id and not again.queued
    assert again == ids  # (every combination's job, already there)


@pytest.mark.parametrize(
    "kwargs",
    [{"required_gpus": np.bool_(True)}, {"priority": np.bool_(False)}, {"priority": np.float64(1)}],
)
def test_numpy_bools_and_floats_for_integers_are_refused(
    sched: GPUJobScheduler, kwargs: dict[str, Any]
) -> None:
    rejects(sched, lambda: sched.add_command("true", **kwargs), (TypeError,), next(iter(kwargs)))


def test_numpy_numbers_in_the_config(tmp_path: Path) -> None:
    config = SchedulerConfig(
        state_dir=tmp_path / "s",
        num_gpus=np.int64(2),
        kill_grace_s=np.float32(0.5),
        retry_backoff_s=np.int32(2),
        default_requirement=np.float64(0.5),
        gpu_allocation_precision=np.float64(0.05),
        max_retries=np.int64(1),
        max_sweep_jobs=np.int64(10),
    )
    for name, kind in (
        ("num_gpus", int), ("kill_grace_s", float), ("retry_backoff_s", float),
        ("default_requirement", float), ("gpu_allocation_precision", float),
        ("max_retries", int), ("max_sweep_jobs", int),
    ):  # fmt: skip
        assert type(getattr(config, name)) is kind, name
    assert (config.num_gpus, config.kill_grace_s, config.default_requirement) == (2, 0.5, 0.5)
    with pytest.raises(TypeError, match="num_gpus"):
        SchedulerConfig(state_dir=tmp_path / "s", num_gpus=np.float64(2))


# ------------------------------------------------------------------ the allocation precision


def test_fractions_below_the_allocation_precision(tmp_path: Path, script: str) -> None:
    """The allocator places a fraction below one step of gpu_allocation_precision as one
    step but books what it asked: required_gpus=1e-9 let jobs without end share a GPU."""
    llm = tmp_path / "llm.json"
    llm.write_text('{"default_requirement": 1, "models": {"tinier": 0.001}}')
    s = GPUJobScheduler(
        config=SchedulerConfig(
            state_dir=tmp_path / "s",
            gpu_provider="simulated",
            num_gpus=N_GPUS,
            gpu_allocation_precision=0.05,
            llm_config_file=str(llm),
        )
    )
    try:
        for value in (1e-9, 0.01, 0.049):
            msg = rejects(
                s,
                lambda v=value: s.add_command("true", required_gpus=v),
                (ValueError,),
                "required_gpus",
            )
            assert repr(value) in msg and "gpu_allocation_precision=0.05" in msg
        assert s.store.get(s.add_command("true", required_gpus=0.05)).required_gpus == 0.05
        msg = rejects(
            s, lambda: s.add_job(script, args=["--llm", "tinier"]), (ValueError,), "required_gpus"
        )
        assert "gpu_allocation_precision=0.05" in msg and "LLM config" in msg
    finally:
        s.close()


# ------------------------------------------------------------------ the LLM config


@pytest.fixture
def llm_sched(tmp_path: Path, make_sched: Callable[..., GPUJobScheduler]) -> GPUJobScheduler:
    llm = tmp_path / "llm_config.json"
    llm.write_text('{"default_requirement": 8, "models": {"small": 0.5, "llama-70b": 8}}')
    return make_sched(state_dir=tmp_path / "llm-state", llm_config_file=str(llm))


def test_a_model_needing_too_many_gpus_is_named(llm_sched: GPUJobScheduler, script: str) -> None:
    """The number comes from the LLM config, not from the call: the message says which
    model asked for it, and in a sweep which combination."""
    s = llm_sched
    msg = rejects(
        s, lambda: s.add_job(script, args=["--llm", "llama-70b"]), (ValueError,), "llama-70b"
    )
    assert "required_gpus=8" in msg and "LLM config" in msg and "has only 4 GPU(s)" in msg
    msg = rejects(s, lambda: s.add_job(script, args="--llm=unlisted"), (ValueError,), "unlisted")
    assert "default_requirement" in msg and "has only 4 GPU(s)" in msg
    msg = rejects(
        s,
        lambda: s.add_sweep(script, args="--llm {small,llama-70b} --seed {1,2}"),
        (ValueError,),
        "llama-70b",
    )
    assert "combination llm=llama-70b, seed=1" in msg
    assert s.store.sweeps() == []
    # The call's own number is taken as it is, and said as it was given.
    msg = rejects(
        s,
        lambda: s.add_job(script, args=["--llm", "small"], required_gpus=5),
        (ValueError,),
        "required_gpus",
    )
    assert msg.startswith("required_gpus=5: this machine has only 4 GPU(s)")
    assert s.store.get(s.add_job(script, args=["--llm", "small"])).required_gpus == 0.5
