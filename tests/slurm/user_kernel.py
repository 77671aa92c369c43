"""A user's kernel for tests/test_slurm_users.py: started as root (so that Python and
nbsched, installed where only root may read, are imported), it then becomes USER and
works as that user's notebook would.

    user_kernel.py USER run N      N one-GPU jobs and one long one; prints
                                   {"long": SLURM_ID} at once, then the jobs' table as JSON
                                   (one object per job) once the N have ended; then
                                   cancels its long job (its own: allowed)
    user_kernel.py USER cancel ID  tries to cancel Slurm job ID; prints what nbsched said
"""

from __future__ import annotations

import _strptime  # noqa: F401  (imported lazily: by time.strptime)
import encodings.idna  # noqa: F401  (imported lazily: by socket's name look-ups)
import json
import os
import pwd
import sys
import time

import nbsched.dispatcher.handoff
import nbsched.engine.registry
import nbsched.executors.slurm
import nbsched.gpus.slurm_provider  # noqa: F401  (imported while root may read them)
from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.errors import PermissionDeniedError
from nbsched.executors.slurm import slurm_id
from nbsched.executors.slurm_control import scancel

SHOW = (
    'echo "user=$(id -un) gpus=$CUDA_VISIBLE_DEVICES start=$(date +%s.%N)"; sleep 1.5; '
    'echo "end=$(date +%s.%N)"'
)


def become(user: str) -> str:
    pw = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    os.environ.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
    os.chdir(pw.pw_dir)
    return pw.pw_dir


def run(home: str, n: int) -> None:
    config = SchedulerConfig(state_dir=os.path.join(home, ".nbsched"), executor="slurm")
    s = GPUJobScheduler(config=config).start()
    long = s.add_command("sleep 120", required_gpus=1)
    while slurm_id(config.run_dir, s.store.get(long).token) is None:
        time.sleep(0.02)
    print(json.dumps({"long": slurm_id(config.run_dir, s.store.get(long).token)}), flush=True)
    ids = [s.add_command(SHOW, required_gpus=1) for _ in range(n)]
    deadline = time.monotonic() + 60  # (the store, not wait(): pandas is root's to read)
    while not all(s.store.get(j).status.ended for j in ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = []
    for j in ids:
        log = config.logs_dir / f"{j}.log"
        rows.append(
            {
                "id": j,
                "status": str(s.store.get(j).status),
                "log": str(log),
                "text": log.read_text(),
            }
        )
    print(json.dumps(rows), flush=True)
    s.cancel(long)
    s.stop()
    s.close()


def cancel(sid: str) -> None:
    try:
        scancel(sid)
    except PermissionDeniedError as exc:
        print(f"refused: {exc}", flush=True)
        return
    print("cancelled", flush=True)


if __name__ == "__main__":
    home = become(sys.argv[1])
    if sys.argv[2] == "run":
        run(home, int(sys.argv[3]))
    else:
        cancel(sys.argv[3])
