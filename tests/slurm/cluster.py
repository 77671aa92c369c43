"""The running one-node Slurm the ``tests/test_slurm*.py`` modules use.

``scripts/slurm.sh up`` starts it (``.ci/run`` does, as root); the tests find it through
``SLURM_CONF``, else ``$NBSCHED_SLURM_DIR/slurm.conf``, else the script's default folder.
Where none answers the tests are skipped with how to start one, and where
``NBSCHED_REQUIRE_SLURM`` is set (``.ci/run``) they fail instead: a skip never hides a
missing Slurm in CI.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE_SLURM = "NBSCHED_REQUIRE_SLURM"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm.sh"
MISSING = "no Slurm answers: start one with `sudo scripts/slurm.sh up`"


def slurm_required() -> bool:
    return os.environ.get(REQUIRE_SLURM, "") not in ("", "0")


def slurm_dir() -> Path:
    conf = os.environ.get("SLURM_CONF")
    if conf:
        return Path(conf).parent
    given = os.environ.get("NBSCHED_SLURM_DIR")
    return Path(given) if given else Path(tempfile.gettempdir()) / "nbsched-slurm"


def answers(conf: Path) -> bool:
    if not conf.is_file():
        return False
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Path]:
    """The folder of the running Slurm (its ``slurm.conf``); ``SLURM_CONF`` is set."""
    folder = slurm_dir()
    if not answers(folder / "slurm.conf"):
        if slurm_required():
            pytest.fail(f"{REQUIRE_SLURM} is set, but {MISSING}")
        pytest.skip(MISSING)
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    yield folder
    if before is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = before


def slurm_state(sid: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", sid, "-o", "%T"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()


def wait_until(check, timeout: float = 30.0, every: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(every)
