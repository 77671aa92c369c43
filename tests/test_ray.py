"""executor="ray" on a real local Ray that declares 4 GPUs (nbsched starts it).

Ray starts once for this module and is shut down at its end; the two-node cluster
tests are in test_ray_cluster.py (one Ray per process at a time).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import transitions
from waiting import wait_for

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.executors.process import find_by_token
from nbsched.jobs import JobStatus
from nbsched.raycluster import cluster_for

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120.0


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    assert not ray.is_initialized()
    cluster = cluster_for(None, 4)
    cluster.connect()  # nbsched's own start of a local Ray declaring 4 GPUs
    assert cluster.started_here
    yield
    # Every engine stopped and every job reported: nbsched leaves no thread behind.
    wait_for(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("nbsched-")],
        "nbsched's threads to end: "
        + ", ".join(t.name for t in threading.enumerate() if t.name.startswith("nbsched-")),
        timeout=30,
    )
    ray.shutdown()


def config(tmp_path: Path, **kw: object) -> SchedulerConfig:
    values: dict[str, object] = dict(
        state_dir=tmp_path / "state",
        executor="ray",
        gpu_provider="simulated",
        num_gpus=4,
        kill_grace_s=2.0,
    )
    values.update(kw)
    return SchedulerConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def scheduler_config(local_ray: None, tmp_path: Path) -> dict[str, object]:
    """sched (tests/conftest.py) here: started, on the local Ray, as config() says."""
    return {"start": True, "config": config(tmp_path)}


def wait_log(s: GPUJobScheduler, job_id: str, text: str) -> None:
    wait_for(lambda: text in s.logs(job_id, tail=None), f"{text!r} in the log of job {job_id}")


def barrier(folder: Path, n: int) -> str:
    """A command that waits until ``n`` jobs have reached it, so they provably overlap."""
    folder.mkdir()
    return (
        f"touch {folder}/$NBSCHED_JOB_ID; for i in $(seq 2400); do "
        f"[ $(ls {folder} | wc -l) -ge {n} ] && break; sleep 0.05; done; "
        f'[ $(ls {folder} | wc -l) -ge {n} ] || exit 9; echo "cvd=$CUDA_VISIBLE_DEVICES"'
    )


def test_gpu_status_shows_rays_gpus(sched: GPUJobScheduler) -> None:
    df = sched.get_gpu_status()
    assert list(df["gpu"]) == [0, 1, 2, 3]
    assert df["node"].nunique() == 1
    assert list(df["name"]) == [f"GPU (Ray GPU {i})" for i in range(4)]
    # Ray does not know memory or load: unknown, never a made-up 0.
    assert df["memory_used"].isna().all() and df["load"].isna().all()
    assert sched.provider.name == "ray"


def test_exit_codes_logs_results_and_arguments(sched: GPUJobScheduler, tmp_path: Path) -> None:
    script = tmp_path / "show.py"
    script.write_text(
        "import json, os, sys\n"
        "print(json.dumps(sys.argv[1:]))\n"
        "print('job', os.environ['NBSCHED_JOB_ID'], 'cvd', os.environ['CUDA_VISIBLE_DEVICES'])\n"
        "with open(os.environ['NBSCHED_RESULT_FILE'], 'w') as fh:\n"
        "    json.dump({'acc': 0.9}, fh)\n"
    )
    args = ["a b", "it's", '"q"', "$(echo no)", "`x`;y", "ünï", "*"]
    ok = sched.add_job(str(script), args=args, required_gpus=0.5)
    failed = sched.add_command("echo out; echo err >&2; exit 3", required_gpus=1)
    killed = sched.add_command("kill -9 $$", required_gpus=0.25)
    big = sched.add_command(
        f"{sys.executable} -c \"import sys; [print('x' * 99) for _ in range(30000)]\"",
        required_gpus=0.25,
    )
    rows = sched.wait([ok, failed, killed, big], timeout=TIMEOUT).set_index("id")

    assert rows.loc[ok, "status"] == "succeeded" and rows.loc[ok, "exit_code"] == 0
    lines = sched.logs(ok, tail=None).splitlines()
    assert json.loads(lines[0]) == args  # byte-identical through Ray and the worker
    gpu = rows.loc[ok, "gpus"]
    assert lines[1] == f"job {ok} cvd {gpu[0]}"  # one node: cluster index == Ray's id
    result = sched.config.state_dir / "results" / f"{ok}.json"
    assert json.loads(result.read_text()) == {"acc": 0.9}

    assert rows.loc[failed, "status"] == "failed" and rows.loc[failed, "exit_code"] == 3
    assert sched.logs(failed) == "out\nerr\n"
    assert rows.loc[killed, "exit_code"] == 128 + signal.SIGKILL
    assert rows.loc[big, "exit_code"] == 0
    log = Path(rows.loc[big, "log"])
    assert log.stat().st_size == 30000 * 100  # every chunk arrived, in order
    assert oct(log.stat().st_mode & 0o777) == oct(0o600)
    assert set(rows["node"]) == {sched.get_gpu_status()["node"][0]}


def test_a_job_that_cannot_start_on_its_node_fails_with_the_reason(
    sched: GPUJobScheduler, tmp_path: Path
) -> None:
    gate, work = tmp_path / "gate", tmp_path / "work"
    work.mkdir()
    blocker = sched.add_command(f"while [ ! -e {gate} ]; do sleep 0.05; done", required_gpus=4)
    job_id = sched.add_command("pwd", required_gpus=1, cwd=work)
    work.rmdir()  # gone by the time the job reaches its node
    gate.touch()
    rows = sched.wait([blocker, job_id], timeout=TIMEOUT).set_index("id")
    assert rows.loc[job_id, "status"] == "failed"
    assert "could not start on node" in rows.loc[job_id, "reason"]
    assert str(work) in sched.logs(job_id)


def test_fractional_jobs_share_a_gpu(sched: GPUJobScheduler, tmp_path: Path) -> None:
    cmd = barrier(tmp_path / "met", 4)
    ids = [sched.add_command(cmd, required_gpus=0.5) for _ in range(4)]
    rows = sched.wait(ids, timeout=TIMEOUT)
    assert (rows["status"] == "succeeded").all(), rows[["id", "status", "reason"]]
    per_gpu: dict[int, int] = {}
    for job_id, gpus in zip(rows["id"], rows["gpus"], strict=True):
        (gpu,) = gpus
        per_gpu[gpu] = per_gpu.get(gpu, 0) + 1
        assert sched.logs(job_id).strip() == f"cvd={gpu}"  # the GPU it was given is the one it saw
    assert sorted(per_gpu.values()) == [2, 2]  # four halves packed on two GPUs


def test_priorities_hold(sched: GPUJobScheduler, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    blocker = sched.add_command(
        f"while [ ! -e {gate} ]; do sleep 0.05; done", required_gpus=4, name="blocker"
    )
    wait_for(lambda: sched.job(blocker)["status"] == "running", "the blocker to run")
    prios = [5, 1, 3, 0, 1]
    ids = [sched.add_command("true", required_gpus=4, priority=p) for p in prios]
    gate.touch()
    rows = sched.wait([blocker, *ids], timeout=TIMEOUT)
    assert (rows["status"] == "succeeded").all()
    started = rows.set_index("id")["started"]
    order = sorted(ids, key=lambda i: started[i])
    expected = [i for _, i in sorted(zip(prios, ids, strict=True), key=lambda pi: pi[0])]
    assert order == expected  # priority first, then first come


def _token(s: GPUJobScheduler, job_id: str) -> str:
    token = s.store.get(job_id).token
    assert token
    return token


def test_cancel_ends_the_whole_remote_tree(sched: GPUJobScheduler) -> None:
    job_id = sched.add_command(
        "sleep 300 & setsid sleep 300 & trap '' TERM; echo ready; wait", required_gpus=1
    )
    wait_log(sched, job_id, "ready")
    token = _token(sched, job_id)
    assert len(find_by_token(token)) >= 3  # bash, its child, and one that left the group
    assert sched.cancel(job_id) is True
    assert find_by_token(token) == []
    assert sched.job(job_id)["status"] == "cancelled"
    # Its GPU is free again: a whole-machine job starts.
    after = sched.add_command("true", required_gpus=4)
    assert sched.wait([after], timeout=TIMEOUT)["status"].tolist() == ["succeeded"]


def test_cancel_before_ray_starts_the_task(sched: GPUJobScheduler, tmp_path: Path) -> None:
    """Another Ray program holds every GPU, so Ray keeps nbsched's task pending: a cancel
    drops it there, and the job never runs."""
    import ray

    @ray.remote(num_gpus=4, num_cpus=0)
    class Hog:
        def ready(self) -> bool:
            return True

    hog = Hog.remote()  # type: ignore[attr-defined]
    assert ray.get(hog.ready.remote(), timeout=TIMEOUT)
    marker = tmp_path / "ran"
    job_id = sched.add_command(f"touch {marker}", required_gpus=1)
    wait_for(lambda: sched.job(job_id)["node"] is not None, "the job to be handed to Ray")
    assert sched.cancel(job_id) is True
    ray.kill(hog)
    after = sched.add_command("true", required_gpus=4)  # the GPUs are Ray's again
    assert sched.wait([after], timeout=TIMEOUT)["status"].tolist() == ["succeeded"]
    assert sched.job(job_id)["status"] == "cancelled"
    assert not marker.exists()


def test_worker_death_ends_the_job_and_its_processes(sched: GPUJobScheduler) -> None:
    job_id = sched.add_command("sleep 300 & echo ready; wait", required_gpus=0.5)
    wait_log(sched, job_id, "ready")
    token = _token(sched, job_id)
    leader = min(find_by_token(token), key=lambda p: p.create_time())
    worker = psutil.Process(leader.ppid())
    assert "ray" in " ".join(worker.cmdline()).lower() or "python" in worker.name()
    # What a dying driver makes Ray do: kill the worker and its children (the job's main
    # process among them; the guard must not be one of them).
    children = worker.children()
    os.kill(worker.pid, signal.SIGKILL)
    for child in children:
        child.send_signal(signal.SIGKILL)
    rows = sched.wait([job_id], timeout=TIMEOUT)
    assert rows["status"].tolist() == ["failed"]
    assert "worker" in rows["reason"][0]
    # The worker's guard ends the job's process group once the worker is gone.
    wait_for(lambda: find_by_token(token) == [], "the job's processes to end", timeout=30)


def test_same_process_engine_restart_follows_running_jobs(local_ray: None, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    first = GPUJobScheduler(config=config(tmp_path)).start()
    job_id = first.add_command(
        f"echo before; while [ ! -e {gate} ]; do sleep 0.05; done; echo after; exit 4",
        required_gpus=1,
    )
    wait_log(first, job_id, "before")
    first.close()  # the engine stops; its Ray task goes on in this process
    second = GPUJobScheduler(config=config(tmp_path)).start()
    try:
        gate.touch()
        row = second.wait([job_id], timeout=TIMEOUT).iloc[0]
        assert (row["status"], row["exit_code"]) == ("failed", 4)
        assert second.logs(job_id) == "before\nafter\n"
    finally:
        second.stop(kill=True)
        second.close()


def test_recovery_fails_jobs_another_engine_left(local_ray: None, tmp_path: Path) -> None:
    """A Ray job marked running by an engine that died cannot be followed: it is marked
    failed (or retried), and processes carrying its token are ended."""
    s = GPUJobScheduler(config=config(tmp_path))
    try:
        once = s.submit([s.make_spec(command="true", required_gpus=1)])[0]
        again = s.submit([s.make_spec(command="echo rerun", required_gpus=1, max_retries=1)])[0]
        tokens = {}
        for job_id in (once, again):
            tokens[job_id] = f"orphan-{job_id}-{os.getpid()}"
            s.store.transition(
                job_id,
                JobStatus.RUNNING,
                token=tokens[job_id],
                gpus=[0],
                attempts=1,
                started=time.time(),
                node=s.get_gpu_status()["node"][0],
            )
        # A process the dead engine's job left behind (not our child: someone else's).
        orphan = int(
            subprocess.check_output(
                ["bash", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"],
                env={**os.environ, "NBSCHED_JOB_TOKEN": tokens[once]},
                start_new_session=True,
            )
        )
        s.start()
        rows = s.wait([once, again], timeout=TIMEOUT).set_index("id")
        assert rows.loc[once, "status"] == "failed"
        assert "cannot be followed" in rows.loc[once, "reason"]
        wait_for(lambda: not _alive(orphan), "the orphan to end", timeout=30)
        # With a retry left, the job runs again, afresh.
        assert rows.loc[again, "status"] == "succeeded"
        assert rows.loc[again, "attempts"] == 2
        assert "rerun" in s.logs(again)
        history = " ".join(h["reason"] or "" for h in transitions.history(s.store.path, again))
        assert "cannot be followed" in history
    finally:
        s.stop(kill=True)
        s.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.without_ray  # (it hides Ray itself: it runs where Ray is not installed too)
def test_missing_ray_gives_the_install_command(tmp_path: Path) -> None:
    code = f"""
import sys
sys.modules["ray"] = None  # as if Ray were not installed
from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.errors import NotSupportedError
s = GPUJobScheduler(config=SchedulerConfig(state_dir={str(tmp_path / "st")!r}, executor="ray",
                                           gpu_provider="simulated", num_gpus=4))
for call in (s.start, lambda: s.add_command("true", required_gpus=1)):
    try:
        call()
    except NotSupportedError as exc:
        print("ERROR:", exc)
    else:
        print("no error")
print("running:", s.running, "queued:", s.counts()["queued"])
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert (
        lines[:2]
        == [
            "ERROR: executor='ray' needs Ray, which is not installed in this Python "
            "environment: pip install 'ray>=2.40' (from a checkout of nbsched: pip install "
            "-e '.[ray]')"
        ]
        * 2
    )
    assert lines[2] == "running: False queued: 0"
