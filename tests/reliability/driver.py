"""A process that runs one nbsched engine, for the reliability tests and the soak.

Started by the tests as ``python driver.py CONFIG.json`` in a session of its own
(``start_new_session=True``), so that ``os.killpg(pid, SIGKILL)`` kills the whole
process group, as Jupyter does to a kernel it restarts.  Jobs run in sessions of
their own and survive it.

The config file says::

    {"state_dir": ..., "num_gpus": 2, "umask": null, "kill_grace_s": 1.0,
     "jobs": [{"command": ..., "required_gpus": 1, "max_retries": 0, "after": null}, ...],
     "submit_first": false,                # submit the jobs before starting the engine
     "wait": "mine" | "all" | "forever",   # what to wait for before stopping
     "expect_total": null}                 # with "all": wait until this many jobs exist

It prints one JSON object per line on stdout: ``{"event": "started", ...}``,
``{"event": "submitted", "ids": [...]}``, ``{"event": "done", "jobs": [...]}``.
"""

from __future__ import annotations

import json
import os
import sys
import time


def emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main() -> int:
    cfg = json.loads(open(sys.argv[1]).read())
    if cfg.get("umask") is not None:
        os.umask(int(cfg["umask"]))
    from nbsched import GPUJobScheduler, SchedulerConfig
    from nbsched.jobs import JobStatus

    s = GPUJobScheduler(
        config=SchedulerConfig(
            state_dir=cfg["state_dir"],
            gpu_provider="simulated",
            num_gpus=cfg.get("num_gpus", 2),
            kill_grace_s=cfg.get("kill_grace_s", 1.0),
            retry_backoff_s=cfg.get("retry_backoff_s", 0.2),
        )
    )

    def submit() -> list[str]:
        return [
            s.add_command(
                j["command"],
                required_gpus=j.get("required_gpus", 1),
                max_retries=j.get("max_retries", 0),
                after=j.get("after"),
            )
            for j in cfg.get("jobs", [])
        ]

    # "submit_first": every job is in the store before the engine starts, so a crash
    # the engine provokes in its first turns cannot come before the last submission.
    ids = submit() if cfg.get("submit_first") else []
    s.start()
    emit(event="started", pid=os.getpid())
    if not cfg.get("submit_first"):
        ids = submit()
    emit(event="submitted", ids=ids)
    mode = cfg.get("wait", "mine")
    if mode == "forever":
        while True:
            time.sleep(3600)
    s.wait(ids, timeout=cfg.get("timeout", 120))
    if mode == "all":
        deadline = time.monotonic() + cfg.get("timeout", 120)
        total = cfg.get("expect_total")
        while time.monotonic() < deadline:
            counts = s.counts()
            active = counts[JobStatus.QUEUED.value] + counts[JobStatus.RUNNING.value]
            if active == 0 and (total is None or sum(counts.values()) >= total):
                break
            time.sleep(0.05)
    rows = [s.job(i) for i in ids]
    frame = s.jobs()
    frame = frame[frame["id"].isin(ids)]
    emit(
        event="done",
        dispatcher=s.is_dispatcher,
        jobs=[{k: r[k] for k in ("id", "status", "exit_code", "reason")} for r in rows],
        frame=dict(zip(frame["id"], frame["status"], strict=True)),
    )
    s.stop()
    s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
