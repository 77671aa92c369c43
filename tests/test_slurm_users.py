"""Two unprivileged users (made with useradd here) share one Slurm through nbsched:
each job runs as its owner, each log is its owner's and unreadable by the other,
cancelling the other's job is refused in nbsched's words, and no GPU is ever given to
two jobs at once.  Needs root (useradd, and the users' kernels drop to them)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm.cluster import slurm_cluster, slurm_state, wait_until

from nbsched.gpus.slurm_provider import SlurmGpuProvider

__all__ = ["slurm_cluster"]

USERS = ("nbsched-ta", "nbsched-tb")
KERNEL = Path(__file__).parent / "slurm" / "user_kernel.py"


@pytest.fixture(scope="module")
def users(slurm_cluster: Path) -> Iterator[tuple[str, str]]:
    if os.getuid() != 0:
        pytest.skip("making users and running their kernels needs root")
    made = []
    for user in USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", user], check=True)
            made.append(user)
    yield USERS
    for user in made:
        subprocess.run(["pkill", "-KILL", "-u", user], check=False)
        subprocess.run(["userdel", "-r", user], check=False, capture_output=True)


def kernel(user: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(
        [sys.executable, str(KERNEL), user, *args], stdout=subprocess.PIPE, text=True, env=env
    )


def test_two_users_share_one_slurm(users: tuple[str, str]) -> None:
    a, b = users
    ka, kb = kernel(a, "run", "4"), kernel(b, "run", "4")
    try:
        assert ka.stdout is not None and kb.stdout is not None
        long_a = json.loads(ka.stdout.readline())["long"]
        long_b = json.loads(kb.stdout.readline())["long"]
        # a cannot cancel b's job: Slurm refuses, nbsched says so in its words
        said = subprocess.run(
            [sys.executable, str(KERNEL), a, "cancel", long_b],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            check=True,
        ).stdout
        assert said.startswith(f"refused: Slurm job {long_b} belongs to another user")
        assert slurm_state(long_b) in ("RUNNING", "PENDING")
        # the GPUs' view shows both users' jobs, by owner (a's kernel would see b's)
        wait_until(lambda: slurm_state(long_a) == "RUNNING" and slurm_state(long_b) == "RUNNING")
        holders = SlurmGpuProvider().read()[1]
        assert {(h.job_id, h.user) for h in holders} >= {(long_a, a), (long_b, b)}
        rows = {a: json.loads(ka.stdout.readline()), b: json.loads(kb.stdout.readline())}
        assert ka.wait(60) == 0 and kb.wait(60) == 0
    finally:
        for k in (ka, kb):
            if k.poll() is None:
                k.kill()
    wait_until(lambda: slurm_state(long_a) == "CANCELLED" and slurm_state(long_b) == "CANCELLED")
    spans = []
    for user, jobs in rows.items():
        other = b if user == a else a
        for job in jobs:
            assert job["status"] == "succeeded", job
            assert f"user={user} " in job["text"]  # ran as its owner
            log = Path(job["log"])
            assert log.stat().st_uid == pwd.getpwnam(user).pw_uid
            peek = subprocess.run(
                ["setpriv", f"--reuid={other}", f"--regid={other}", "--init-groups", "cat", log],
                capture_output=True,
                text=True,
                check=False,
            )
            assert peek.returncode != 0 and "Permission denied" in peek.stderr
            fields = dict(w.split("=", 1) for w in job["text"].split() if "=" in w)
            spans.append((fields["gpus"], float(fields["start"]), float(fields["end"])))
    # No GPU held by two jobs at once, across both users.
    for i, (gpu, start, end) in enumerate(spans):
        for gpu2, start2, end2 in spans[i + 1 :]:
            if gpu == gpu2:
                assert end <= start2 or end2 <= start, (spans, gpu)
