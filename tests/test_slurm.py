"""executor="slurm" against a real one-node Slurm with 4 fake GPUs and 16 shards
(scripts/slurm.sh): requests, CUDA_VISIBLE_DEVICES, exit codes, results, cancel of a
process tree, why(), sweeps, re-attachment after a kernel's death."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from slurm.cluster import slurm_cluster, slurm_state, wait_until

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.executors.slurm import slurm_id

__all__ = ["slurm_cluster"]  # (the fixture, used by name)

pytestmark = pytest.mark.usefixtures("slurm_cluster")


@pytest.fixture
def sched(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = GPUJobScheduler(
        config=SchedulerConfig(state_dir=tmp_path / "state", executor="slurm", kill_grace_s=1)
    ).start()
    yield s
    s.stop(kill=True)
    s.close()


def sid_of(s: GPUJobScheduler, job_id: str) -> str:
    return wait_until(lambda: slurm_id(s.config.run_dir, s.store.get(job_id).token), 10)


def test_whole_multi_and_fractional_gpus_as_slurm_gives_them(sched: GPUJobScheduler) -> None:
    show = "echo CVD=$CUDA_VISIBLE_DEVICES SHARDS=${SLURM_SHARDS_ON_NODE:-none}"
    one = sched.add_command(show, required_gpus=1)
    two = sched.add_command(show, required_gpus=2)
    half = sched.add_command(show, required_gpus=0.5)
    table = sched.wait([one, two, half], timeout=60)
    assert list(table["status"]) == ["succeeded"] * 3
    seen = {j: re.search(r"CVD=(\S*) SHARDS=(\S+)", sched.logs(j)) for j in (one, two, half)}
    assert all(seen.values()), {j: sched.logs(j) for j in seen}
    assert len(seen[one].group(1).split(",")) == 1  # type: ignore[union-attr]
    assert len(seen[two].group(1).split(",")) == 2  # type: ignore[union-attr]
    # 16 shards on 4 GPUs: half a GPU is 2 of its 4 shards, on one GPU
    assert seen[half].group(1).isdigit() and seen[half].group(2) == "2"  # type: ignore[union-attr]
    assert sched.job(one)["started"] is not None


def test_exit_codes_and_results_come_back(sched: GPUJobScheduler) -> None:
    ok = sched.add_command('echo \'{"loss": 0.5}\' > "$NBSCHED_RESULT_FILE"', required_gpus=1)
    bad = sched.add_command("exit 3", required_gpus=0.25)
    table = sched.wait([ok, bad], timeout=60).set_index("id")
    assert table.loc[ok, "status"] == "succeeded" and table.loc[ok, "exit_code"] == 0
    assert table.loc[bad, "status"] == "failed" and table.loc[bad, "exit_code"] == 3
    result = sched.config.state_dir / "results" / f"{ok}.json"
    assert json.loads(result.read_text()) == {"loss": 0.5}


def test_cancel_ends_the_whole_process_tree(sched: GPUJobScheduler) -> None:
    mark = f"{uuid.uuid4().int % 10**6 + 1000}.{os.getpid()}"
    job = sched.add_command(
        f"(sleep {mark} & sleep {mark}) & sleep {mark} & echo up; wait", required_gpus=1
    )
    sid = sid_of(sched, job)
    wait_until(lambda: "up" in sched.logs(job), 30)
    wait_until(lambda: len(_sleepers(mark)) == 3, 10)
    assert sched.cancel(job)
    assert sched.job(job)["status"] == "cancelled"
    wait_until(lambda: not _sleepers(mark), 20)
    assert slurm_state(sid) in ("CANCELLED", "COMPLETED")


def _if_in(part: str, text: str) -> str:
    return text if part in text else ""


def _sleepers(mark: str) -> list[int]:
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] == ["sleep", mark]:
            out.append(proc.pid)
    return out


def test_why_gives_slurms_pending_reason(sched: GPUJobScheduler) -> None:
    hog = sched.add_command("sleep 60", required_gpus=4)
    wait_until(lambda: slurm_state(sid_of(sched, hog)) == "RUNNING", 30)
    waiting = sched.add_command("true", required_gpus=1, priority=-5)
    sid = sid_of(sched, waiting)
    shown = subprocess.run(["scontrol", "-o", "show", "job", sid], capture_output=True, text=True)
    assert " Nice=5 " in shown.stdout  # a lower priority is a higher nice
    reason: str = wait_until(lambda: _if_in("Resources", sched.why(waiting)), 10)
    assert f"Slurm job {sid}" in reason and "pending in Slurm" in reason
    sched.cancel(waiting)
    sched.cancel(hog)


def test_allowed_gpus_and_bad_slurm_settings_are_refused(tmp_path: Path) -> None:
    s = GPUJobScheduler(config=SchedulerConfig(state_dir=tmp_path / "s", executor="slurm"))
    try:
        with pytest.raises(ValueError, match=r"allowed_gpus=\[1\]: executor='slurm' cannot"):
            s.add_command("true", required_gpus=1, allowed_gpus=[1])
        assert s.jobs().empty  # nothing stored
    finally:
        s.close()
    with pytest.raises(ValueError, match="slurm_options.*nbsched sets --gres itself"):
        SchedulerConfig(state_dir=tmp_path / "s", slurm_options=["--gres=gpu:1"])
    with pytest.raises(ValueError, match="slurm_partition='a b'"):
        SchedulerConfig(state_dir=tmp_path / "s", slurm_partition="a b")
    config = SchedulerConfig(state_dir=tmp_path / "s", slurm_options="--time=5 --qos=low")
    assert config.slurm_options == ("--time=5", "--qos=low")


TRAIN = """\
#!/bin/bash
# --lr X --seed Y: sleeps a little, writes its result
sleep "${SLEEP:-0}"
printf '{"lr": %s, "seed": %s}\\n' "$2" "$4" > "$NBSCHED_RESULT_FILE"
"""


def test_a_sweep_runs_with_its_results(sched: GPUJobScheduler, tmp_path: Path) -> None:
    train = tmp_path / "train.sh"
    train.write_text(TRAIN)
    ids = sched.add_sweep(str(train), args="--lr {1,2} --seed {7,8}", required_gpus=0.25)
    arrays = {sid_of(sched, j).split("_")[0] for j in ids}
    assert len(arrays) == 1  # one job array (submitted together: one dispatcher turn)
    sched.wait(ids, timeout=60)
    table = sched.sweep(ids.sweep_id)  # type: ignore[attr-defined]
    assert sorted(table["status"]) == ["succeeded"] * 4
    # the array's task list and id, the attempts' exit records: gone once recorded
    left = lambda: [p.name for p in sched.config.run_dir.iterdir() if not p.name.endswith(".sh")]  # noqa: E731
    wait_until(lambda: not left(), 10)
    assert sorted(zip(table["lr"], table["seed"], strict=True)) == [(1, 7), (1, 8), (2, 7), (2, 8)]


KERNEL = """\
import sys, time
from nbsched import GPUJobScheduler, SchedulerConfig
s = GPUJobScheduler(config=SchedulerConfig(state_dir=sys.argv[1], executor="slurm")).start()
ids = s.add_sweep(sys.argv[2], args="--lr {1,2,3} --seed {5,6}", required_gpus=1,
                  env={"SLEEP": "2"})
print(",".join(ids), flush=True)
time.sleep(600)
"""


def test_a_kernel_killed_mid_sweep_is_reattached(tmp_path: Path) -> None:
    train = tmp_path / "train.sh"
    train.write_text(TRAIN)
    state = tmp_path / "state"
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL, str(state), str(train)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        ids = (kernel.stdout.readline() if kernel.stdout else "").strip().split(",")
        assert len(ids) == 6
        run = state / "run"
        wait_until(lambda: list(run.glob("nbsched-array-*.id")), 30)  # handed to Slurm
    finally:
        kernel.send_signal(signal.SIGKILL)
        kernel.wait()
    s = GPUJobScheduler(config=SchedulerConfig(state_dir=state, executor="slurm")).start()
    try:
        table = s.wait(ids, timeout=60)
        assert list(table["status"]) == ["succeeded"] * 6
        sweep = s.sweep()
        assert sorted(zip(sweep["lr"], sweep["seed"], strict=True)) == [
            (lr, seed) for lr in (1, 2, 3) for seed in (5, 6)
        ]
    finally:
        s.stop(kill=True)
        s.close()


def test_ends_come_from_each_source(tmp_path: Path) -> None:
    """sacct -P (parsed), scontrol within MinJobAge (a real job), the wrapper's record."""
    from nbsched.executors.slurm_status import exit_of, parse_sacct, state_exit

    text = "41|FAILED|3:0\n41.batch|FAILED|3:0\n42|CANCELLED by 0|0:15\n43|COMPLETED|0:0\n"
    parsed = parse_sacct(text)
    assert parsed == {"41": ("FAILED", 3, 0), "42": ("CANCELLED", 0, 15), "43": ("COMPLETED", 0, 0)}
    assert state_exit(*parsed["41"], "41").code == 3
    assert state_exit(*parsed["42"], "42").reason == "Slurm job 42 ended CANCELLED"
    done = subprocess.run(
        ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "exit 4"],
        capture_output=True,
        text=True,
        check=True,
    )
    sid = done.stdout.strip()
    missing = tmp_path / "none.exit"
    end = wait_until(lambda: exit_of(sid, missing, accounting=False), 30)
    assert end.code == 4
    record = tmp_path / "rec.exit"
    record.write_text("5\n")
    forgotten = exit_of("999999999", record, accounting=False)  # Slurm never had it
    assert forgotten is not None and forgotten.code == 5
    gone = exit_of("999999999", missing, accounting=False)
    assert gone is not None and gone.code is None and "no longer knows" in (gone.reason or "")


def test_fractions_become_shards_and_priorities_nice() -> None:
    from nbsched.executors.slurm_script import gres, nice

    assert gres(1, 4) == "gpu:1" and gres(3, None) == "gpu:3" and gres(0, 4) is None
    assert gres(0.5, 4) == "shard:2" and gres(0.3, 4) == "shard:2" and gres(0.01, 4) == "shard:1"
    with pytest.raises(ValueError, match="declare none"):
        gres(0.5, None)
    assert nice(-5) == 5 and nice(3) == 0


def test_gpu_status_comes_from_slurm_in_the_background(sched: GPUJobScheduler) -> None:
    import nbsched.gpus.slurm_provider as sp

    two = sched.add_command("sleep 30", required_gpus=2)
    half = sched.add_command("sleep 30", required_gpus=0.5)
    sids = {sid_of(sched, two), sid_of(sched, half)}
    wait_until(lambda: all(slurm_state(sid) == "RUNNING" for sid in sids), 30)
    provider = sched.provider
    assert isinstance(provider, sp.SlurmGpuProvider)

    def held() -> list[sp.Holder]:
        provider.snapshot()
        return [h for h in provider.holders() if h.job_id in sids]

    holders = wait_until(lambda: len(held()) == 3 and held(), 10)
    shares = sorted((h.job_id, h.share, h.user) for h in holders)
    me = psutil.Process().username()
    assert shares == sorted([(sid_of(sched, two), 1.0, me)] * 2 + [(sid_of(sched, half), 0.5, me)])
    assert len(sched.get_gpu_status()) == 4
    shown = f"job {sid_of(sched, half)}: 2/4 shards"  # (the monitor's reading: within 1 s)
    wait_until(lambda: any(shown in str(n) for n in sched.get_gpu_status()["name"]), 10)
    # A dashboard asking many times a second runs no Slurm command: the thread does, at
    # most once a second.
    calls: list[str] = []
    real = sp.slurm

    def counted(argv: list[str], *args: object, **kwargs: object) -> str:
        calls.append(argv[0])
        return real(argv)

    sp.slurm = counted  # type: ignore[assignment]
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            sched.get_gpu_status()
            time.sleep(0.01)
    finally:
        sp.slurm = real
    assert 1 <= calls.count("squeue") <= 3, calls
    sched.cancel(two)
    sched.cancel(half)


CRASHING = """\
import sys, time
from nbsched import GPUJobScheduler, SchedulerConfig
s = GPUJobScheduler(config=SchedulerConfig(state_dir=sys.argv[1], executor="slurm")).start()
print(s.add_command("echo ran", required_gpus=1), flush=True)
time.sleep(60)
"""


def test_a_kernel_dead_before_sbatch_has_its_job_queued_again(tmp_path: Path) -> None:
    state = tmp_path / "state"
    kernel = subprocess.run(
        [sys.executable, "-c", CRASHING, str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "NBSCHED_TEST_CRASH_AT": "after_mark_running",  # dies before sbatch
        },
        check=False,
    )
    assert kernel.returncode == -signal.SIGKILL
    s = GPUJobScheduler(config=SchedulerConfig(state_dir=state, executor="slurm")).start()
    try:
        (job,) = s.jobs()["id"]  # (the kernel may die before it prints the id)
        assert s.wait([job], timeout=60)["status"].tolist() == ["succeeded"]
        assert s.logs(job).count("ran") == 1
    finally:
        s.stop(kill=True)
        s.close()


def test_serve_and_add_from_a_terminal(tmp_path: Path) -> None:
    """``nbsched serve --executor slurm --slurm-partition gpu``, then ``nbsched run``."""
    state = str(tmp_path / "state")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cli = [sys.executable, "-m", "nbsched.cli"]
    serve = subprocess.Popen(
        [*cli, "serve", "--state-dir", state, "--executor", "slurm", "--slurm-partition", "gpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        added = subprocess.run(
            [*cli, "run", "--state-dir", state, "--gpus", "1", "--", "echo from-cli"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        job = added.stdout.strip().split()[-1]
        subprocess.run(
            [*cli, "wait", "--state-dir", state, job],
            env=env,
            timeout=60,
            check=True,
            capture_output=True,
        )
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(30)
    s = GPUJobScheduler(config=SchedulerConfig(state_dir=state, executor="slurm"))
    try:
        assert s.job(job)["status"] == "succeeded" and "from-cli" in s.logs(job)
    finally:
        s.close()


def test_sbatch_refusing_a_job_fails_it_with_slurms_words(tmp_path: Path) -> None:
    config = SchedulerConfig(
        state_dir=tmp_path / "state",
        executor="slurm",
        slurm_options=["--constraint=no-such-feature"],
    )
    s = GPUJobScheduler(config=config).start()
    try:
        one = s.add_command("true", required_gpus=1)
        train = tmp_path / "train.sh"
        train.write_text(TRAIN)
        sweep = s.add_sweep(str(train), args="--lr 1 --seed {1,2}", required_gpus=1)
        table = s.wait([one, *sweep], timeout=60)
        assert table["status"].tolist() == ["failed"] * 3
        for reason in table["reason"]:
            assert reason.startswith("could not start: sbatch failed (exit 1): sbatch: error:")
            assert "Invalid feature specification" in reason
    finally:
        s.stop()
        s.close()


def test_dependencies_wait_in_nbsched_and_time_limits_go_to_slurm(
    sched: GPUJobScheduler,
) -> None:
    first = sched.add_command("sleep 1; echo first", required_gpus=1, time_limit=90)
    second = sched.add_command("echo second", required_gpus=1, after=[first])
    sid = sid_of(sched, first)
    shown = subprocess.run(["scontrol", "-o", "show", "job", sid], capture_output=True, text=True)
    assert " TimeLimit=00:02:00 " in shown.stdout  # 90 s: two whole minutes
    assert slurm_id(sched.config.run_dir, sched.store.get(second).token) is None  # waits here
    table = sched.wait([first, second], timeout=60).set_index("id")
    assert table["status"].tolist() == ["succeeded", "succeeded"]
    assert table.loc[second, "started"] >= table.loc[first, "ended"]


def test_running_jobs_show_the_gpus_slurm_gave_them(sched: GPUJobScheduler, tmp_path: Path) -> None:
    """Once Slurm runs a job, its ``gpus`` in jobs() are those Slurm gave it (the ones
    its CUDA_VISIBLE_DEVICES names, numbered as the GPU table numbers them), and the GPU
    table lists the job on them."""
    gate = tmp_path / "gate"
    show = f"echo CVD=$CUDA_VISIBLE_DEVICES; while [ ! -e {gate} ]; do sleep 0.1; done"
    two = sched.add_command(show, required_gpus=2)
    half = sched.add_command(show, required_gpus=0.5)
    try:
        for job in (two, half):
            wait_until(lambda j=job: "CVD=" in sched.logs(j), 30)  # type: ignore[misc]
        cvd = {
            j: re.search(r"CVD=(\S+)", sched.logs(j)).group(1)  # type: ignore[union-attr]
            for j in (two, half)
        }

        def given() -> dict[str, list[int]] | None:
            table = sched.jobs().set_index("id")
            found = {j: list(table.loc[j, "gpus"]) for j in (two, half)}
            return found if all(found.values()) else None

        gpus = wait_until(given, 10)
        assert gpus == {j: [int(g) for g in cvd[j].split(",")] for j in (two, half)}
        assert len(gpus[two]) == 2 and len(gpus[half]) == 1
        table = sched.get_gpu_status().set_index("gpu")
        for j in (two, half):
            for g in gpus[j]:
                assert j in list(table.loc[g, "jobs"]), (j, g, table)
    finally:
        gate.touch()
    ended = sched.wait([two, half], timeout=60).set_index("id")
    assert list(ended["status"]) == ["succeeded", "succeeded"]
