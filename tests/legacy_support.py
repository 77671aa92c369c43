"""Helpers shared by the tests of the original program's features (jobs file, screen, CLI)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from waiting import wait_for  # noqa: F401  (re-exported)

from nbsched import GPUJobScheduler, SchedulerConfig

ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that runs this checkout's nbsched."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("NBSCHED_HOME", None)
    env.update(extra)
    return env


def cli(state_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``nbsched VERB --state-dir DIR ARGS...`` as a subprocess."""
    verb, rest = args[0], list(args[1:])
    done = subprocess.run(
        [sys.executable, "-m", "nbsched.cli", verb, "--state-dir", str(state_dir), *rest],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"nbsched {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def sched_factory(tmp_path: Path) -> Iterator[Callable[..., GPUJobScheduler]]:
    """Make schedulers on ``tmp_path/state`` (simulated GPUs); all stopped at the end.

    Each test module wraps it in its own ``make_sched`` fixture."""
    made: list[GPUJobScheduler] = []

    def make(num_gpus: int = 2, **fields: Any) -> GPUJobScheduler:
        fields.setdefault("state_dir", tmp_path / "state")
        cfg = SchedulerConfig(gpu_provider="simulated", num_gpus=num_gpus, **fields)
        s = GPUJobScheduler(config=cfg)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            try:
                s.stop(kill=True)
            except Exception:  # closed by the test already
                pass
            try:
                s.close()
            except Exception:
                pass
