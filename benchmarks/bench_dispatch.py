"""Dispatch speed: nbsched against a bare reference dispatcher, measured in one run.

The reference is what a minimal scheduler on one machine does: a
``threading.Condition``, a dispatcher thread, a thread per job that ``Popen``s the
same command (``bash -c CMD``, as nbsched's ``add_command`` runs it) and waits, and
4 slots.  nbsched runs on 4 simulated GPUs with a fresh state directory per round.
A third contender, *reference+log*, is the reference with each job's output in a new
file of its own (nbsched keeps a log per job): not part of the goals, it shows what the
file system costs in the same run (on this machine a file create takes 15 us to 1 ms).
A fourth, *reference, no shell*, runs the job's words directly (``Popen(["sleep",
"0.05"])``), without bash: not part of the goals either (``add_command`` runs ``bash -c``,
as the issue asks), it shows what bash's own start costs each job, for (a) and (b) (the
latency job needs a shell).

Figures (each the median over ``--rounds`` interleaved rounds):

(a) throughput of 300 trivial jobs (``true``), 1 GPU each: jobs/s; goal >= 0.5x the reference;
(b) slot efficiency of 80 jobs of ``sleep 0.05`` on 4 slots:
    80 x 0.05 s / (4 x makespan); goal >= 0.95 (the reference reaches about 0.96);
(c) submit->start latency on an idle GPU: from just before ``add_command`` to the
    job's own first instruction (bash's ``$EPOCHREALTIME``, written to a file), ~50
    submissions one after another; median and p90; goal: median <= reference + 2 ms.

Usage::

    PYTHONPATH=. python benchmarks/bench_dispatch.py [--rounds 3] [--write BENCHMARKS.md]
    PYTHONPATH=. python benchmarks/bench_dispatch.py --profile a   # cProfile of nbsched's threads
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import platform
import pstats
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from scratch import describe, scratch_dir

from nbsched import GPUJobScheduler, SchedulerConfig

SLOTS = 4
N_TRIVIAL = 300
N_SHORT = 80
SHORT_S = 0.05
N_LATENCY = 50


# ------------------------------------------------------------------ the reference dispatcher


class ReferenceDispatcher:
    """A queue, a Condition, SLOTS slots, a thread per job running Popen(...).wait()."""

    def __init__(self, slots: int = SLOTS, log_dir: Path | None = None, shell: bool = True) -> None:
        self._log_dir = log_dir
        self._shell = shell
        self._jobs = itertools.count()
        self._cond = threading.Condition()
        self._queue: deque[list[str]] = deque()
        self._free = slots
        self._submitted = 0
        self._done = 0
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def submit(self, command: str) -> None:
        argv = ["bash", "-c", command] if self._shell else shlex.split(command)
        with self._cond:
            self._queue.append(argv)
            self._submitted += 1
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not (self._queue and self._free > 0):
                    self._cond.wait()
                if self._stop:
                    return
                argv = self._queue.popleft()
                self._free -= 1
            threading.Thread(target=self._run, args=(argv,), daemon=True).start()

    def _run(self, argv: list[str]) -> None:
        if self._log_dir is None:
            out: Any = subprocess.DEVNULL
        else:  # (a file of its own per job, as a scheduler keeps)
            out = open(self._log_dir / f"{next(self._jobs)}.log", "wb")  # noqa: SIM115
        try:
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ).wait()
        finally:
            if self._log_dir is not None:
                out.close()
        with self._cond:
            self._free += 1
            self._done += 1
            self._cond.notify_all()

    def wait_all(self) -> None:
        with self._cond:
            while self._done < self._submitted:
                self._cond.wait()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()


# ------------------------------------------------------------------ the contenders


class Contender:
    name = ""

    def extra_cpu(self) -> float:
        """CPU seconds used so far by processes of its own that are not our children."""
        return 0.0

    def submit(self, command: str) -> None:
        raise NotImplementedError

    def wait_all(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Reference(Contender):
    name = "reference"

    def __init__(self, workdir: Path) -> None:
        self.d = ReferenceDispatcher()

    def submit(self, command: str) -> None:
        self.d.submit(command)

    def wait_all(self) -> None:
        self.d.wait_all()

    def close(self) -> None:
        self.d.close()


class ReferenceWithLogs(Reference):
    """The reference, each job's output in a new file of its own (nbsched's job logs):
    what the file system costs, in the same run."""

    name = "reference+log"

    def __init__(self, workdir: Path) -> None:
        self.d = ReferenceDispatcher(log_dir=workdir)


class Nbsched(Contender):
    name = "nbsched"

    def __init__(self, workdir: Path) -> None:
        config = SchedulerConfig(
            state_dir=workdir / "state", gpu_provider="simulated", num_gpus=SLOTS
        )
        self.s = GPUJobScheduler(config=config).start()
        # Warm up: the first job starts the state directory's spawner (a Python process,
        # ~0.1 s here), once per engine; the measurements are of the steady state.
        self.s.add_command("true")
        self.s.wait(timeout=60)
        self.spawner = _spawner_of(config.run_dir)

    def extra_cpu(self) -> float:
        """CPU seconds of the spawner and the jobs it reaped so far."""
        t = self.spawner.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def submit(self, command: str) -> None:
        self.s.add_command(command, required_gpus=1)

    def wait_all(self) -> None:
        self.s.wait(timeout=600)

    def close(self) -> None:
        # (checked here, after the measurement: the check is not part of what is timed)
        failed = self.s.jobs(status="failed")
        self.s.stop(kill=True)
        self.s.close()
        if len(failed):
            raise RuntimeError(f"{len(failed)} benchmark job(s) failed: {failed.iloc[0].to_dict()}")


def _spawner_of(run_dir: Path) -> psutil.Process:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if len(cmd) >= 2 and cmd[-2].endswith("spawner.py") and cmd[-1] == str(run_dir):
            return proc
    raise RuntimeError(f"no spawner runs for {run_dir}")


class ReferenceNoShell(Reference):
    """The reference running the job's words directly, without bash: what bash's start
    costs each job, in the same run."""

    name = "reference, no shell"

    def __init__(self, workdir: Path) -> None:
        self.d = ReferenceDispatcher(shell=False)


CONTENDERS: dict[str, Callable[[Path], Contender]] = {
    "reference": Reference,
    "reference+log": ReferenceWithLogs,
    "reference, no shell": ReferenceNoShell,
    "nbsched": Nbsched,
}
#: The contenders that run jobs without a shell: not for the latency job (it needs one).
NO_SHELL = {"reference, no shell"}


@contextmanager
def contender(name: str) -> Iterator[Contender]:
    workdir = scratch_dir("state-")
    c = CONTENDERS[name](workdir)
    try:
        yield c
    finally:
        c.close()
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------ the measurements


def _cpu() -> tuple[float, float]:
    """CPU seconds used so far by this process and by its reaped children."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def throughput(name: str, cpu: dict[str, list[tuple[float, float]]] | None = None) -> float:
    """Jobs per second for N_TRIVIAL `true` jobs, from the first submission to the last end.
    With ``cpu``, also records (this process, children) CPU ms per job: a figure that
    depends less on what else the machine is doing than the rate does."""
    with contender(name) as c:
        before = _cpu()
        extra = c.extra_cpu()
        t0 = time.perf_counter()
        for _ in range(N_TRIVIAL):
            c.submit("true")
        c.wait_all()
        rate = N_TRIVIAL / (time.perf_counter() - t0)
        after = _cpu()
        after = (after[0], after[1] + c.extra_cpu() - extra)
    if cpu is not None:
        cpu.setdefault(name, []).append(
            tuple(1e3 * (a - b) / N_TRIVIAL for a, b in zip(after, before, strict=True))  # type: ignore[arg-type]
        )
    return rate


def efficiency(name: str) -> float:
    """Work done / slot time offered, for N_SHORT jobs of SHORT_S seconds on SLOTS slots."""
    with contender(name) as c:
        t0 = time.perf_counter()
        for _ in range(N_SHORT):
            c.submit(f"sleep {SHORT_S}")
        c.wait_all()
        makespan = time.perf_counter() - t0
        return N_SHORT * SHORT_S / (SLOTS * makespan)


def latency(name: str) -> list[float]:
    """Seconds from just before submission to the job's first instruction, one job at a time."""
    with contender(name) as c:
        marks = scratch_dir("marks-")
        out = []
        try:
            for i in range(N_LATENCY + 3):
                mark = marks / f"{i}"
                t0 = time.time()
                c.submit(f'echo "$EPOCHREALTIME" > {mark}')
                c.wait_all()
                if i >= 3:  # the first few warm caches up (imports, page cache)
                    out.append(float(mark.read_text()) - t0)
        finally:
            shutil.rmtree(marks, ignore_errors=True)
        return out


def p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10)[-1]


# ------------------------------------------------------------------ profiling


def profile(which: str) -> None:
    """cProfile nbsched's engine thread and the submitting thread for one measurement."""
    from nbsched import dispatcher

    prof = cProfile.Profile()
    lock = threading.Lock()
    original = dispatcher.Dispatcher.run

    def run(self: Any) -> None:
        p = cProfile.Profile()
        p.enable()
        try:
            original(self)
        finally:
            p.disable()
            with lock:
                stats.append(p)

    stats: list[cProfile.Profile] = []
    dispatcher.Dispatcher.run = run  # type: ignore[method-assign]
    fn = {"a": throughput, "b": efficiency, "c": latency}[which]
    prof.enable()
    fn("nbsched")
    prof.disable()
    for label, p in [("submitting thread", prof)] + [("dispatcher thread", s) for s in stats]:
        buf = io.StringIO()
        pstats.Stats(p, stream=buf).sort_stats("cumulative").print_stats(25)
        print(f"==== {label} ====\n{buf.getvalue()}")


# ------------------------------------------------------------------ report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", metavar="FILE", help="put the figures in FILE's Dispatch section")
    ap.add_argument("--profile", choices=["a", "b", "c"], help="profile one measurement and exit")
    args = ap.parse_args(argv)
    if args.profile:
        profile(args.profile)
        return 0

    print(describe(), file=sys.stderr)
    names = list(CONTENDERS)
    tput: dict[str, list[float]] = {n: [] for n in names}
    eff: dict[str, list[float]] = {n: [] for n in names}
    lat: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[tuple[float, float]]] = {}
    # Each round's nbsched figures against the reference's of the same round.
    per_round: list[tuple[float, float, float]] = []
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]  # interleave to spread machine noise
        for n in order:
            tput[n].append(throughput(n, cpu))
            eff[n].append(efficiency(n))
            if n not in NO_SHELL:
                lat[n].extend(latency(n))
        ratio = tput["nbsched"][-1] / tput["reference"][-1]
        extra = 1e3 * (
            statistics.median(lat["nbsched"][-N_LATENCY:])
            - statistics.median(lat["reference"][-N_LATENCY:])
        )
        per_round.append((ratio, eff["nbsched"][-1], extra))
        print(
            f"round {r + 1}/{args.rounds}: {ratio:.2f}x (reference+log "
            f"{tput['reference+log'][-1] / tput['reference'][-1]:.2f}x), efficiency "
            f"{eff['nbsched'][-1]:.3f} (reference {eff['reference'][-1]:.3f}, +log "
            f"{eff['reference+log'][-1]:.3f}, no shell {eff['reference, no shell'][-1]:.3f}), "
            f"latency +{extra:.2f} ms",
            file=sys.stderr,
        )

    med = statistics.median
    t = {n: med(tput[n]) for n in names}
    e = {n: med(eff[n]) for n in names}
    lm = {n: med(lat[n]) * 1e3 for n in names if lat[n]}
    l90 = {n: p90(lat[n]) * 1e3 for n in names if lat[n]}
    na = {n: "n/a" for n in NO_SHELL}
    ref, nb = "reference", "nbsched"
    # (label, {contender: text}, goal, met)
    rows: list[tuple[str, dict[str, str], str, bool | None]] = [
        (
            f"(a) throughput, {N_TRIVIAL} `true` jobs, 4 GPUs",
            {n: f"{t[n]:,.0f} jobs/s ({t[n] / t[ref]:.2f}x)" for n in names},
            ">= 0.5x reference",
            t[nb] >= 0.5 * t[ref],
        ),
        (
            "(a) CPU per job: own process + jobs (and spawner)",
            {n: _cpu_text(cpu[n]) for n in names},
            "",
            None,
        ),
        (
            f"(b) slot efficiency, {N_SHORT} jobs of {SHORT_S * 1e3:.0f} ms, 4 slots",
            {n: f"{e[n]:.3f}" for n in names},
            ">= 0.95",
            e[nb] >= 0.95,
        ),
        (
            "(c) submit->start latency, idle GPU, median",
            {n: f"{lm[n]:.2f} ms ({lm[n] - lm[ref]:+.2f})" for n in lm} | na,
            "<= reference + 2 ms",
            lm[nb] <= lm[ref] + 2.0,
        ),
        ("(c) submit->start latency, p90", {n: f"{l90[n]:.2f} ms" for n in l90} | na, "", None),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}" + "".join(f"  {n:>24}" for n in names) + "  goal")
    for label, vals, goal, met in rows:
        verdict = "" if met is None else ("  met" if met else "  MISSED")
        print(
            f"{label:<{width}}" + "".join(f"  {vals[n]:>24}" for n in names) + f"  {goal}{verdict}"
        )

    cpu_name = _cpu_name()
    command = "PYTHONPATH=. python benchmarks/bench_dispatch.py" + (
        f" --rounds {args.rounds}" if args.rounds != 3 else ""
    )
    md = [
        "## Dispatch (issue 2)",
        "",
        f"`{command}` — medians of {args.rounds} interleaved rounds in one run, on "
        f"{os.cpu_count()} CPU(s) ({cpu_name}), Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end (other work shares this machine). "
        "*reference*: a bare dispatcher (a `threading.Condition`, a thread per job, "
        "`Popen(['bash', '-c', CMD]).wait()`, 4 slots) in the same process. "
        "*nbsched*: `add_command(CMD, required_gpus=1)` on 4 simulated GPUs, fresh state "
        "directory (SQLite store, spawner process, log file per job), after one warm-up job "
        "(which starts the spawner, once per engine), then `wait()`. "
        f"All run with their {describe()}: see `benchmarks/scratch.py`.",
        "",
        "*reference+log*: the same, each job's output to a new file of its own, as "
        "nbsched keeps a log per job (not part of the goals: it shows what the file system "
        "costs in the same run). *reference, no shell*: the same as *reference*, the "
        "job's words run directly (`Popen(['sleep', '0.05'])`), without bash: not part of "
        "the goals either (`add_command` runs `bash -c`), it shows what bash's start costs "
        "each job (the latency job needs a shell: n/a).",
        "",
        "| measure | " + " | ".join(names) + " | goal | met |",
        "|---|" + "---|" * len(names) + "---|---|",
    ]
    for label, vals, goal, met in rows:
        verdict = "" if met is None else ("yes" if met else "no")
        md.append(f"| {label} | " + " | ".join(vals[n] for n in names) + f" | {goal} | {verdict} |")
    lo = [min(x[i] for x in per_round) for i in range(3)]
    hi = [max(x[i] for x in per_round) for i in range(3)]
    md += [
        "",
        f"Round by round (each against the reference of the same round): throughput "
        f"{lo[0]:.2f}x-{hi[0]:.2f}x, efficiency {lo[1]:.3f}-{hi[1]:.3f}, latency "
        f"+{lo[2]:.2f} to +{hi[2]:.2f} ms.",
        "",
        "Latency: from just before the submission to the job's own first instruction "
        f"(`echo $EPOCHREALTIME > file` in the job's bash), {N_LATENCY} jobs one after another "
        f"per round. Efficiency: {N_SHORT} x {SHORT_S} s / (4 x makespan), makespan from the "
        "first submission to the return of `wait()`. CPU per job: user+system time of the "
        "benchmark process, and of the job processes (and of nbsched's spawner, their "
        "parent), over the throughput run.",
        "",
    ]
    block = "\n".join(md)
    print("\n" + block)
    if args.write:
        _write_section(Path(args.write), block)
        print(f"wrote {args.write}", file=sys.stderr)
    return 0


def _cpu_text(samples: list[tuple[float, float]]) -> str:
    me = statistics.median(m for m, _ in samples)
    kids = statistics.median(k for _, k in samples)
    return f"{me:.2f} + {kids:.2f} ms"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _write_section(path: Path, block: str) -> None:
    """Replace the '## Dispatch (issue 2)' section of ``path`` (or append it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(r"^## Dispatch \(issue 2\)\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
