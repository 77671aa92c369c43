"""executor="ray" on a two-node local Ray cluster (ray.cluster_utils), 2 GPUs a node.

Both nodes run on this machine, so a job's processes on the second node are still
visible here through their token; nbsched reaches them only through Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import wait_for

from nbsched import GPUJobScheduler
from nbsched.errors import InvalidValueError
from nbsched.executors.process import find_by_token

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_gpus": 2, "num_cpus": 1, "include_dashboard": False},
    )
    c.add_node(num_gpus=2, num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, logging_level="WARNING")
    yield c.address
    # Every engine stopped and every job reported: nbsched leaves no thread behind.
    wait_for(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("nbsched-")],
        "nbsched's threads to end",
        timeout=30,
    )
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def scheduler_config(cluster: str) -> dict[str, object]:
    """sched (tests/conftest.py) here: started, on the two-node cluster."""
    return {"start": True, "executor": "ray", "ray_address": cluster, "kill_grace_s": 2.0}


def gate_cmd(gate: Path, first: str = "") -> str:
    return f"{first}while [ ! -e {gate} ]; do sleep 0.05; done; echo cvd=$CUDA_VISIBLE_DEVICES"


def test_gpu_status_shows_each_nodes_gpus(sched: GPUJobScheduler) -> None:
    df = sched.get_gpu_status()
    assert list(df["gpu"]) == [0, 1, 2, 3]
    head, other = df["node"][0], df["node"][2]
    assert head != other
    assert list(df["node"]) == [head, head, other, other]  # numbered node by node, head first
    assert list(df["name"]) == [f"GPU (Ray GPU {i})" for i in (0, 1, 0, 1)]
    assert df["memory_total"].isna().all() and df["load"].isna().all()


def test_a_two_gpu_job_lands_whole_on_one_node(sched: GPUJobScheduler, tmp_path: Path) -> None:
    nodes = sched.get_gpu_status()["node"]
    gate_a, gate_b = tmp_path / "a", tmp_path / "b"
    # One GPU busy on each node: three GPUs are free in all, but no node has two.
    on_a = sched.add_command(gate_cmd(gate_a), required_gpus=1, allowed_gpus=[0])
    on_b = sched.add_command(gate_cmd(gate_b), required_gpus=1, allowed_gpus=[2])
    wait_for(
        lambda: sched.jobs(status="running")["node"].notna().sum() == 2,
        "both blockers to run",
    )
    pair = sched.add_command("echo cvd=$CUDA_VISIBLE_DEVICES", required_gpus=2)
    # A half-GPU job behind it starts on the free GPU outside the pair's reservation...
    behind = sched.add_command("true", required_gpus=0.5)
    assert sched.wait([behind], timeout=TIMEOUT)["status"].tolist() == ["succeeded"]
    # ...while the pair still waits rather than being split over the nodes.
    assert sched.job(pair)["status"] == "queued"
    assert "held for it" in sched.why(pair)

    gate_a.touch()
    row = sched.wait([pair], timeout=TIMEOUT).iloc[0]
    assert row["status"] == "succeeded"
    assert row["gpus"] == [0, 1] and row["node"] == nodes[0]
    assert sched.logs(pair).strip() == "cvd=0,1"

    # On the second node the same Ray ids 0,1 are nbsched's GPUs 2,3.
    gate_b.touch()
    second = sched.add_command(
        "echo cvd=$CUDA_VISIBLE_DEVICES", required_gpus=2, allowed_gpus="2-3"
    )
    row = sched.wait([second], timeout=TIMEOUT).iloc[0]
    assert (row["status"], row["gpus"], row["node"]) == ("succeeded", [2, 3], nodes[2])
    assert sched.logs(second).strip() == "cvd=0,1"
    assert sched.wait([on_a, on_b], timeout=TIMEOUT)["status"].tolist() == ["succeeded"] * 2
    assert sched.logs(on_b).strip() == "cvd=0"  # GPU 2 is Ray's GPU 0 on its node


def test_a_job_needing_more_than_any_node_has_is_refused(sched: GPUJobScheduler) -> None:
    with pytest.raises(InvalidValueError, match="no node has 3 GPUs"):
        sched.add_command("true", required_gpus=3)
    assert sched.counts()["queued"] == 0


def test_fractions_share_a_gpu_and_exit_codes_come_back(
    sched: GPUJobScheduler, tmp_path: Path
) -> None:
    met = tmp_path / "met"
    met.mkdir()
    both = (
        f"touch {met}/$NBSCHED_JOB_ID; for i in $(seq 2400); do "
        f"[ $(ls {met} | wc -l) -ge 2 ] && break; sleep 0.05; done; "
        f'echo "on $CUDA_VISIBLE_DEVICES"; exit $(( NBSCHED_JOB_ID % 2 ? 5 : 0 ))'
    )
    ids = [sched.add_command(both, required_gpus=0.5, allowed_gpus=[3]) for _ in range(2)]
    rows = sched.wait(ids, timeout=TIMEOUT).set_index("id")
    for job_id in ids:
        assert rows.loc[job_id, "gpus"] == [3]
        assert sched.logs(job_id) == "on 1\n"  # nbsched GPU 3 = Ray GPU 1 of node two
        assert rows.loc[job_id, "exit_code"] == (5 if int(job_id) % 2 else 0)
    assert sorted(rows["status"]) == ["failed", "succeeded"]


def test_cancel_ends_the_tree_on_another_node(sched: GPUJobScheduler) -> None:
    job_id = sched.add_command(
        "sleep 300 & setsid sleep 300 & echo ready; wait", required_gpus=1, allowed_gpus=[3]
    )
    wait_for(lambda: "ready" in sched.logs(job_id), "the job to start")
    token = sched.store.get(job_id).token
    assert token and len(find_by_token(token)) >= 3
    assert sched.job(job_id)["node"] == sched.get_gpu_status()["node"][3]
    assert sched.cancel(job_id) is True  # a Ray task on that node ends the tree
    assert find_by_token(token) == []
    assert sched.job(job_id)["status"] == "cancelled"


def test_another_process_sees_the_cluster_and_cancels(sched: GPUJobScheduler) -> None:
    """The `nbsched` command joins the engine's Ray: the same GPUs, and cancel works."""
    job_id = sched.add_command("sleep 300 & echo ready; wait", required_gpus=1, allowed_gpus=[2])
    wait_for(lambda: "ready" in sched.logs(job_id), "the job to start")
    token = sched.store.get(job_id).token
    assert token
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "nbsched.cli"]
    state = ["--state-dir", str(sched.config.state_dir)]
    out = subprocess.run(
        [*base, "gpus", *state, "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    gpus = json.loads(out.stdout)
    assert [g["node"] for g in gpus] == list(sched.get_gpu_status()["node"])
    assert gpus[2]["jobs"] == [job_id]
    out = subprocess.run(
        [*base, "cancel", job_id, *state], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert find_by_token(token) == []
    wait_for(lambda: sched.job(job_id)["status"] == "cancelled", "the cancel to be recorded")
