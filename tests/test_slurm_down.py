"""Slurm's controller down: a submission fails at once with a clear error and stores
nothing; a job already handed to Slurm is not lost, its end is recorded once Slurm is
back.  (Stops and restarts the test Slurm's controller: needs root, as starting it does.)"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from slurm.cluster import SCRIPT, slurm_cluster, slurm_state, wait_until

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.executors.slurm import slurm_id
from nbsched.executors.slurm_status import SlurmError

__all__ = ["slurm_cluster"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_slurm_down_refuses_new_jobs_and_loses_none(slurm_cluster: Path, tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("stopping and restarting the test Slurm's controller needs root")
    pid_file = slurm_cluster / "pids" / "slurmctld.pid"
    if not pid_file.is_file():
        pytest.skip("this Slurm was not started by scripts/slurm.sh: its controller is left alone")
    s = GPUJobScheduler(
        config=SchedulerConfig(state_dir=tmp_path / "state", executor="slurm")
    ).start()
    try:
        handed = s.add_command("sleep 3; echo finished", required_gpus=1)
        sid = wait_until(lambda: slurm_id(s.config.run_dir, s.store.get(handed).token), 10)
        wait_until(lambda: slurm_state(sid) == "RUNNING", 30)
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not _alive(pid), 20)
        started = time.monotonic()
        with pytest.raises(SlurmError, match="Slurm does not answer, so no job was queued"):
            s.add_command("true", required_gpus=1)
        assert time.monotonic() - started < 5  # at once, not after sbatch's retries
        assert list(s.jobs()["id"]) == [handed]  # nothing stored
        assert s.job(handed)["status"] == "running"
    finally:
        env = {**os.environ, "NBSCHED_SLURM_DIR": str(slurm_cluster)}
        subprocess.run(["bash", str(SCRIPT), "up"], env=env, check=True, timeout=120)
    try:
        table = s.wait([handed], timeout=60)
        assert table["status"].tolist() == ["succeeded"]
        assert "finished" in s.logs(handed)
    finally:
        s.stop(kill=True)
        s.close()
