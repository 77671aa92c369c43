"""Learned peaks: a job without a memory request is charged what earlier runs of its
sweep, or of its kind (same script and option names, or same command), peaked at."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nbsched import GPUJobScheduler
from nbsched.store.durations import estimate_key

G = 1024.0


def test_a_job_is_charged_by_the_estimates_kind_key(tmp_path: Path) -> None:
    """The kind is the one learned estimates use: script and option names, or command."""
    a = estimate_key("script", "/t.py", ["--lr", "0.1", "--seed=3", "x"], None)
    b = estimate_key("script", "/t.py", ["--lr", "-1", "--seed=4", "y"], None)
    assert a == b != estimate_key("script", "/t.py", ["--lr", "0.1"], None)


@pytest.fixture
def scheduler_config() -> dict[str, Any]:
    return {"num_gpus": 2, "gpu_monitor_interval_s": 0.05}


def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


SCRIPT = """\
import os, sys, time
mib = float(sys.argv[sys.argv.index("--mib") + 1])
with open(os.environ["NBSCHED_RESULT_FILE"] + ".gpu_memory", "w") as f:
    f.write(str(mib))
time.sleep(0.6)
"""


def test_a_sweep_run_again_is_charged_what_it_used(
    running: GPUJobScheduler, tmp_path: Path, make_sched: Callable[..., GPUJobScheduler]
) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    # (a simulated job uses its share of the GPU until it reports: a small share here)
    first = running.add_sweep(str(script), args="--mib {3000,5000} --seed 1", required_gpus=0.01)
    running.wait(first, timeout=30)
    assert sorted(running.job(i)["gpu_memory_peak"] for i in first) == [3000, 5000]
    # the watch learns the peaks at its next pass after the ends
    kind = "key:" + str(running.store.get(first[0]).spec.estimate_key)
    _until(lambda: running.store.learned_peaks([kind]) == {kind: 5000})  # (both ends seen)
    again = running.add_sweep(str(script), args="--mib 3000 --seed {2,3}", required_gpus=0.01)
    jobs = [running.store.get(i) for i in again]
    assert [j.gpu_memory_learned for j in jobs] == [5000, 5000]  # its kind's peak
    asked = running.store.get(
        running.add_job(
            str(script), args=["--mib", "1", "--other"], gpu_memory=64, required_gpus=0.01
        )
    )
    assert asked.gpu_memory_learned is None  # (its own request rules)
    other = running.store.get(running.add_command("true", required_gpus=0.01))
    assert other.gpu_memory_learned is None  # (another kind: nothing learned)
    running.wait(timeout=30)
    running.stop()
    running.close()
    # learned peaks are stored, the last run's winning: a restart charges the same
    s = make_sched()
    later = s.store.get(s.add_job(str(script), args=["--mib", "7", "--seed", "9"]))
    assert later.gpu_memory_learned == 3000  # (the second run peaked at 3000)


def test_a_learned_charge_places_the_job_by_memory(running: GPUJobScheduler) -> None:
    cmd = 'echo 50000 > "$NBSCHED_RESULT_FILE.gpu_memory"; sleep 0.5'
    first = running.add_command(cmd, required_gpus=0.01)
    running.wait([first], timeout=30)
    _until(
        lambda: (
            running.store.learned_peaks([f"key:{running.store.get(first).spec.estimate_key}"]) != {}
        )
    )
    # two more of the same command: 50000 MiB each on 80 GiB GPUs: one per GPU
    a, b = (
        running.add_command(cmd, required_gpus=0.01),
        running.add_command(cmd, required_gpus=0.01),
    )
    running.wait([a, b], timeout=30)
    assert {tuple(running.job(a)["gpus"]), tuple(running.job(b)["gpus"])} == {(0,), (1,)}
