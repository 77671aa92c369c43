"""``nbsched demo``: a small mixed sweep on this machine's GPUs (simulated where there are none)."""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd

from . import provider_choice_shown_by_caller
from .config import SchedulerConfig
from .scheduler import GPUJobScheduler

TRAIN = textwrap.dedent(
    """\
    # A stand-in for a training script: reports its GPUs, "trains", exits.
    import argparse, os, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fail", action="store_true")
    a = p.parse_args()
    print(f"lr={a.lr} seed={a.seed} on CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}")
    time.sleep(0.3)
    if a.fail:
        sys.exit("diverged: loss is NaN")  # exit code 1
    print("done")
    """
)


def run_demo(config: SchedulerConfig | None, ns: argparse.Namespace | None = None) -> int:
    tmp = None
    if config is None:
        tmp = tempfile.TemporaryDirectory(prefix="nbsched-demo-")
        config = SchedulerConfig(state_dir=Path(tmp.name) / "state")
    if ns is not None and ns.simulate is not None:
        config = config.replace(gpu_provider="simulated", num_gpus=ns.simulate)
    try:
        return _demo(config)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _show_busy_gpus(s: GPUJobScheduler, timeout_s: float = 10.0) -> None:
    """Print the GPU table once the first jobs run, so it shows them sharing GPUs."""
    deadline = time.monotonic() + timeout_s
    while s.counts()["running"] < 2 and s.counts()["queued"] and time.monotonic() < deadline:
        time.sleep(0.02)  # display only: the engine itself never polls
    s.monitor.invalidate()
    print("GPUs while the first jobs run (allocated: the fraction nbsched has booked):")
    with pd.option_context("display.width", 200):
        print(s.get_gpu_status().to_string(index=False))


def _demo(config: SchedulerConfig) -> int:
    s = GPUJobScheduler(config=config)
    with provider_choice_shown_by_caller():  # said on the next line, not also as a warning
        provider = s.provider
    note = getattr(provider, "selection_note", "") or f"using the {provider.name} provider"
    print(f"nbsched demo: {note}")
    n = s.num_gpus
    print(f"state directory: {config.state_dir}; {n} GPU(s)\n")
    script = config.state_dir / "train.py"
    script.write_text(TRAIN)
    ids: list[str] = []
    with s:
        # A sweep: one half-GPU job per combination of --lr and --seed.
        ids += s.add_sweep(
            str(script), args="--lr {0.1,0.01} --seed {1,2}", required_gpus=0.5, name="half-GPU"
        )
        ids.append(s.add_job(str(script), args=["--lr", "0.001"], required_gpus=1, name="one GPU"))
        if n >= 2:
            ids.append(
                s.add_job(str(script), args=["--lr", "0.3"], required_gpus=2, name="two GPUs")
            )
        failing = s.add_job(str(script), args=["--fail"], required_gpus=0.25, name="fails")
        ids.append(failing)
        s.add_command(
            "nvidia-smi -L 2>/dev/null || echo no nvidia-smi here",
            required_gpus=0.1,
            name="command",
        )
        print(f"queued {len(ids) + 1} jobs; waiting for them to end ...\n")
        _show_busy_gpus(s)
        s.wait(timeout=120)
        with pd.option_context("display.width", 200):
            print("\nJobs:")
            jobs = s.jobs()
            print(
                jobs[
                    ["id", "name", "status", "required_gpus", "gpus", "exit_code", "command"]
                ].to_string(index=False)
            )
        print(f"\nlog of the failing job {failing}:\n{s.logs(failing, tail=3)}")
    s.close()
    by_id = jobs.set_index("id")
    ok = by_id.loc[failing, "status"] == "failed" and all(
        by_id.loc[i, "status"] == "succeeded" for i in ids if i != failing
    )
    print("demo finished: every job ended as expected" if ok else "demo: UNEXPECTED RESULTS")
    return 0 if ok else 1
