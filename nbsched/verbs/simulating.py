"""``nbsched simulate TRACE.csv``: the figures of a replay, printed (or as JSON)."""

from __future__ import annotations

import argparse
import json

from nbsched.scheduler import GPUJobScheduler

#: (key of the figures, label, is a duration in seconds)
_ROWS = (
    ("jobs", "jobs", False),
    ("finished", "finished", False),
    ("makespan", "makespan", True),
    ("mean_completion", "mean completion", True),
    ("p95_completion", "p95 completion", True),
    ("mean_wait", "mean wait", True),
    ("p95_wait", "p95 wait", True),
    ("utilisation", "GPU utilisation", False),
    ("lower_bound", "makespan lower bound", True),
)


def show_simulation(ns: argparse.Namespace) -> int:
    """Replay ``ns.trace`` and print its figures (``--json``: one object)."""
    found = GPUJobScheduler.simulate_trace(
        ns.trace, ns.sim_gpus, ns.policy, ns.scale, ns.reserve_after
    )
    if ns.json:
        print(json.dumps({"policy": ns.policy, "gpus": ns.sim_gpus, **found}))
        return 0
    print(f"{ns.trace}: {ns.policy} on {ns.sim_gpus} GPUs (times / {ns.scale:g})")
    for key, label, seconds in _ROWS:
        value = found[key]
        if key == "utilisation":
            text = f"{value:.1%}"
        else:
            text = f"{value:.2f} s" if seconds else str(value)
        print(f"  {label:<22} {text}")
    return 0
