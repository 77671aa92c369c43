"""Where the benchmarks put their state directories.

On some machines (this one) creating a file costs ~1 ms in one folder and ~20 us in
another folder of the same disk, and which folders are slow changes over time
(something on the machine watches some of them). nbsched creates a file per job (its
log), the bare reference none: a benchmark of the scheduler run in a slow folder
measures that watcher. So the folder is ``$NBSCHED_BENCH_DIR`` if set, else whichever
of a few candidates creates files fastest when the benchmark starts; the benchmarks
print which, and what a file create costs there.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from pathlib import Path

ENV = "NBSCHED_BENCH_DIR"


def candidates() -> list[Path]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [cache / "nbsched-bench", Path(tempfile.gettempdir()) / "nbsched-bench"]


def create_cost_us(folder: Path, n: int = 100) -> float:
    """Median microseconds to create (and close) an empty file in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="probe-", dir=folder))
    try:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            os.close(os.open(d / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o600))
            times.append(time.perf_counter() - t0)
        return 1e6 * sorted(times)[n // 2]
    finally:
        shutil.rmtree(d, ignore_errors=True)


@functools.cache
def root() -> tuple[Path, float]:
    """(the folder, its file-create cost in us)."""
    chosen = os.environ.get(ENV)
    if chosen:
        return Path(chosen), create_cost_us(Path(chosen))
    costs = {}
    for folder in candidates():
        try:
            costs[folder] = create_cost_us(folder)
        except OSError:
            continue
    best = min(costs, key=lambda f: costs[f])
    return best, costs[best]


def scratch_dir(prefix: str) -> Path:
    folder, _ = root()
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=folder))


def describe() -> str:
    folder, cost = root()
    return f"state directories in {folder} (a file create there: {cost:.0f} us)"
