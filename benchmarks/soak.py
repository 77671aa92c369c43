"""Soak: hundreds of mixed jobs, random cancels and engine kills; invariants checked every second.

Not part of CI.  One engine at a time runs in a process of its own (the reliability
tests' driver); every ``minutes / (kills + 1)`` it is killed with ``killpg(SIGKILL)``,
as Jupyter kills a kernel, and a new one is started on the same state directory
(sometimes after a pause, so that jobs end while no engine is alive).  This process
submits and cancels through a second, non-dispatching ``GPUJobScheduler``.

Every second it checks, from the outside:

* no GPU is over capacity: the live job processes (found by their environment),
  each with its share on its ``CUDA_VISIBLE_DEVICES``, add up to at most 1 per GPU;
* no job is both queued and running: no live process of a job the store says is
  queued (or ended);
* the engine's open files and threads, and the database size, stay bounded.

A violation is only counted when every process involved is still the same live
process after the store was read, so a job that ended during the scan is not one.
At the end: every job ended; each started exactly as many times as the store says
it was attempted; each one that was not cancelled ended with its own exit code.

    PYTHONPATH=$PWD python benchmarks/soak.py --minutes 5        # default 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nbsched import GPUJobScheduler, SchedulerConfig  # noqa: E402
from nbsched.errors import NbschedError  # noqa: E402

DRIVER = REPO / "tests" / "reliability" / "driver.py"
TAG = "NBSCHED_SOAK_RUN"


@dataclass
class Spec:
    required: float
    duration: float
    code: int
    retries: int

    def command(self, markers: Path) -> str:
        m = str(markers)
        return (
            f'echo "start $NBSCHED_JOB_ID $EPOCHREALTIME" >> {m}; sleep {self.duration:.2f}; '
            f'echo "end $NBSCHED_JOB_ID $EPOCHREALTIME" >> {m}; exit {self.code}'
        )


@dataclass
class Stats:
    checks: int = 0
    violations: list[str] = field(default_factory=list)
    max_fds: int = 0
    max_threads: int = 0
    max_db_bytes: int = 0
    fds_series: list[int] = field(default_factory=list)
    threads_series: list[int] = field(default_factory=list)
    kills: int = 0
    cancels: int = 0
    max_running: int = 0


class Soak:
    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args = args
        self.base = base
        self.state = base / "state"
        self.markers = base / "markers"
        self.tag = os.urandom(8).hex()
        self.rng = random.Random(args.seed)
        self.stats = Stats()
        self.engine: subprocess.Popen[bytes] | None = None
        self.specs: dict[str, Spec] = {}
        self.cancelled: set[str] = set()
        self.cfg_path = base / "engine.json"
        self.cfg_path.write_text(
            json.dumps(
                {
                    "state_dir": str(self.state),
                    "num_gpus": args.gpus,
                    "wait": "forever",
                    "kill_grace_s": 1.0,
                    "retry_backoff_s": 0.5,
                }
            )
        )

    # -- engines --------------------------------------------------------------------------

    def start_engine(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), TAG: self.tag}
        self.engine = subprocess.Popen(
            [sys.executable, str(DRIVER), str(self.cfg_path)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.base / "engines.log", "ab"),  # noqa: SIM115
            env=env,
            start_new_session=True,
        )

    def kill_engine(self) -> None:
        assert self.engine is not None
        os.killpg(self.engine.pid, signal.SIGKILL)
        self.engine.wait()
        self.stats.kills += 1

    # -- checks ---------------------------------------------------------------------------

    def live_jobs(self) -> dict[str, list[tuple[psutil.Process, tuple[int, ...]]]]:
        """Job id -> its live processes (with their GPUs), among this soak's jobs."""
        out: dict[str, list[tuple[psutil.Process, tuple[int, ...]]]] = {}
        for pid in psutil.pids():
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
            except OSError:
                continue
            if env.get(TAG.encode()) != self.tag.encode():
                continue
            jid = env.get(b"NBSCHED_JOB_ID")
            if jid is None:
                continue  # the engine itself
            try:
                proc = psutil.Process(pid)
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                proc.create_time()  # remembered: is_running() compares it later
            except psutil.Error:
                continue
            gpus = tuple(int(g) for g in env.get(b"CUDA_VISIBLE_DEVICES", b"").split(b",") if g)
            out.setdefault(jid.decode(), []).append((proc, gpus))
        return out

    def check(self, client: GPUJobScheduler) -> None:
        live = self.live_jobs()
        status = {j.id: j for j in client.store.find()}  # read after the scan
        still = {jid: procs for jid, procs in live.items() if any(_alive(p) for p, _ in procs)}
        now = time.strftime("%H:%M:%S")
        load: dict[int, float] = {}
        for jid, procs in still.items():
            job = status.get(jid)
            if job is None or job.status.value != "running":
                what = job.status.value if job else "unknown"
                self.stats.violations.append(f"{now} job {jid} has live processes but is {what}")
                continue
            share = job.required_gpus if job.required_gpus < 1 else 1.0
            for g in procs[0][1]:
                load[g] = load.get(g, 0.0) + share
        for g, v in load.items():
            if v > 1.0 + 1e-6:
                self.stats.violations.append(f"{now} GPU {g} holds {v:.2f} GPUs of live jobs")
        self.stats.max_running = max(self.stats.max_running, len(still))
        if self.engine is not None and self.engine.poll() is None:
            try:
                p = psutil.Process(self.engine.pid)
                fds, threads = p.num_fds(), p.num_threads()
                self.stats.fds_series.append(fds)
                self.stats.threads_series.append(threads)
                self.stats.max_fds = max(self.stats.max_fds, fds)
                self.stats.max_threads = max(self.stats.max_threads, threads)
            except psutil.Error:
                pass
        size = sum(f.stat().st_size for f in self.state.glob("state.db*") if f.exists())
        self.stats.max_db_bytes = max(self.stats.max_db_bytes, size)
        self.stats.checks += 1

    # -- the run --------------------------------------------------------------------------

    def random_spec(self) -> Spec:
        req = self.rng.choice([0.25, 0.5, 0.5, 1, 1, 1, 2])
        code = 0 if self.rng.random() < 0.7 else self.rng.randint(1, 30)
        retries = 1 if code and self.rng.random() < 0.3 else 0
        dur = self.rng.uniform(0.0, 2 * self.args.mean_job_s)
        return Spec(float(req), dur, code, retries)

    def run(self) -> int:
        a = self.args
        total_s = a.minutes * 60
        submit_until = 0.6 * total_s
        kill_every = total_s / (a.kills + 1)
        client = GPUJobScheduler(
            config=SchedulerConfig(state_dir=self.state, gpu_provider="simulated", num_gpus=a.gpus)
        )
        self.start_engine()
        t0 = time.monotonic()
        next_check = t0 + 1
        next_kill = t0 + kill_every
        restart_at: float | None = None
        submitted = 0
        while True:
            now = time.monotonic()
            el = now - t0
            if submitted < a.jobs and el >= submitted * submit_until / a.jobs:
                spec = self.random_spec()
                jid = client.add_command(
                    spec.command(self.markers),
                    required_gpus=spec.required,
                    max_retries=spec.retries,
                )
                self.specs[jid] = spec
                submitted += 1
            if self.specs and self.rng.random() < a.cancel_rate / 20:  # ~20 loops a second
                active = list(client.jobs(["queued", "running"])["id"])
                if active:
                    jid = self.rng.choice(active)
                    try:
                        if client.cancel(jid):
                            self.cancelled.add(jid)
                            self.stats.cancels += 1
                    except NbschedError as exc:
                        self.stats.violations.append(f"cancel {jid} raised {exc!r}")
            if self.stats.kills < a.kills and now >= next_kill and restart_at is None:
                self.kill_engine()
                restart_at = now + self.rng.choice([0.0, 0.0, 1.0, 3.0])
                next_kill += kill_every
            if restart_at is not None and now >= restart_at:
                self.start_engine()
                restart_at = None
            if now >= next_check:
                self.check(client)
                next_check += 1
            if el >= total_s and submitted >= a.jobs and restart_at is None:
                counts = client.counts()
                if counts["queued"] + counts["running"] == 0 or el > total_s + 600:
                    break
            time.sleep(0.05)
        self.check(client)
        result = self.final(client, time.monotonic() - t0, submitted)
        client.close()
        if self.engine is not None and self.engine.poll() is None:
            os.killpg(self.engine.pid, signal.SIGKILL)
            self.engine.wait()
        print(json.dumps(result, indent=1))
        return 0 if result["ok"] else 1

    def final(self, client: GPUJobScheduler, elapsed: float, submitted: int) -> dict[str, Any]:
        jobs = {j.id: j for j in client.store.find()}
        starts: dict[str, int] = {}
        for line in self.markers.read_text().splitlines() if self.markers.exists() else []:
            parts = line.split()
            if parts and parts[0] == "start":
                starts[parts[1]] = starts.get(parts[1], 0) + 1
        problems = list(self.stats.violations)
        statuses: dict[str, int] = {}
        for jid, job in jobs.items():
            statuses[job.status.value] = statuses.get(job.status.value, 0) + 1
            if not job.status.ended:
                problems.append(f"job {jid} did not end ({job.status.value})")
                continue
            if starts.get(jid, 0) != job.attempts:
                problems.append(
                    f"job {jid}: started {starts.get(jid, 0)} times, attempts {job.attempts}"
                )
            spec = self.specs[jid]
            if job.status.value != "cancelled" and job.exit_code != spec.code:
                problems.append(f"job {jid}: exit code {job.exit_code}, expected {spec.code}")
        warm = self.stats.fds_series[5:] or self.stats.fds_series
        return {
            "ok": not problems,
            "minutes_run": round(elapsed / 60, 2),
            "jobs": submitted,
            "statuses": statuses,
            "engine_kills": self.stats.kills,
            "cancels": self.stats.cancels,
            "checks": self.stats.checks,
            "max_live_jobs": self.stats.max_running,
            "engine_fds_first_last_max": [warm[0], warm[-1], self.stats.max_fds] if warm else [],
            "engine_threads_max": self.stats.max_threads,
            "db_bytes_max": self.stats.max_db_bytes,
            "problems": problems[:50],
        }


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (False if it ended while we looked)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--cancel-rate", type=float, default=0.1, help="cancels per second")
    ap.add_argument("--mean-job-s", type=float, default=None, help="default: fits the run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", default=None, help="work folder (default: a new temp folder)")
    args = ap.parse_args()
    if args.mean_job_s is None:
        # Demand about half the capacity over the submission window.
        args.mean_job_s = max(0.2, 0.5 * args.gpus * args.minutes * 60 * 0.6 / args.jobs / 0.8)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="nbsched-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"soak in {base}: {vars(args)}", flush=True)
    soak = Soak(args, base)
    try:
        return soak.run()
    finally:
        tag = f"{TAG}={soak.tag}".encode()
        for pid in psutil.pids():  # leave nothing behind
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    if tag in fh.read().split(b"\0"):
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                continue


if __name__ == "__main__":
    sys.exit(main())
