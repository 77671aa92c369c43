"""Helpers shared by the tests of the original program's features (jobs file, screen, CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from waiting import wait_for  # noqa: F401  (re-exported)

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
