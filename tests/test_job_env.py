"""A job's environment is its submitter's (as ``sbatch`` does by default), whichever
engine starts it: captured at submission, stored once per distinct environment, the
secret-looking names left out of the state directory (the starting engine gives
those, as before).  ``env_policy="engine"`` keeps the engine's environment."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.launch import capture_env, submitter_env

#: Another process (a notebook's kernel with no engine of its own): sets variables with
#: os.environ, then submits a job that writes what it sees.
_SUBMITTER = """
import os, sys
from nbsched import GPUJobScheduler, SchedulerConfig
os.environ["FROM_SUBMITTER"] = "set by the notebook"
os.environ["MY_API_TOKEN"] = "submitter-secret-1"
os.environ["OTHER_PASSWORD"] = "submitter-secret-2"
config = SchedulerConfig(state_dir=sys.argv[1], gpu_provider="simulated", num_gpus=2,
                         env_policy=sys.argv[3])
s = GPUJobScheduler(config=config)
names = ("FROM_SUBMITTER", "MY_API_TOKEN", "OTHER_PASSWORD", "ENGINE_ONLY")
shown = " ".join(f'"${{{n}-unset}}"' for n in names)
print(s.add_command(f"printf '%s|' {shown} > {sys.argv[2]}", required_gpus=1))
s.close()
"""


def _submit_from_another_process(state: Path, out: Path, policy: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("ENGINE_ONLY", "OTHER_PASSWORD")}
    done = subprocess.run(
        [sys.executable, "-c", _SUBMITTER, str(state), str(out), policy],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def _seen(engine: GPUJobScheduler, job_id: str, out: Path) -> list[str]:
    wait_for(lambda: engine.job(job_id)["status"] == "succeeded", what="the job to end")
    return out.read_text().split("|")[:-1]


def _state_bytes(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in state.glob("state.db*"))


@pytest.fixture
def engine(
    make_sched: Callable[..., GPUJobScheduler], monkeypatch: pytest.MonkeyPatch
) -> GPUJobScheduler:
    """An engine (started) whose own environment has what the submitter's lacks."""
    monkeypatch.setenv("ENGINE_ONLY", "the engine's")
    monkeypatch.setenv("OTHER_PASSWORD", "the engine's secret")
    return make_sched(start=True, num_gpus=2)  # type: ignore[no-any-return]


def test_a_job_sees_what_its_submitter_set_whichever_engine_starts_it(
    engine: GPUJobScheduler, tmp_path: Path
) -> None:
    out = tmp_path / "seen"
    state = engine.config.state_dir
    job_id = _submit_from_another_process(state, out, "submitter")
    # The submitter's variables, not the engine's; the secret-looking ones are not
    # stored: the job has the starting engine's value where it has one, else none.
    assert _seen(engine, job_id, out) == [
        "set by the notebook",
        "unset",
        "the engine's secret",
        "unset",
    ]
    raw = _state_bytes(state)
    assert b"set by the notebook" in raw
    assert b"submitter-secret" not in raw


def test_env_policy_engine_keeps_the_engines_environment(
    engine: GPUJobScheduler, tmp_path: Path
) -> None:
    out = tmp_path / "seen"
    job_id = _submit_from_another_process(engine.config.state_dir, out, "engine")
    assert _seen(engine, job_id, out) == ["unset", "unset", "the engine's secret", "the engine's"]
    db = sqlite3.connect(engine.config.db_path)
    try:
        assert db.execute("SELECT count(*) FROM environments").fetchone() == (0,)
        assert db.execute("SELECT environment FROM jobs").fetchall() == [(None,)]
    finally:
        db.close()


def test_a_sweep_stores_its_environment_once(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_sched(start=False, num_gpus=2)
    script = tmp_path / "t.py"
    script.write_text("pass\n")
    monkeypatch.setenv("SWEEP_VAR", "a")
    ids = s.add_sweep(str(script), args="--seed {1..300}")
    s.add_command("true")  # the same environment: no second copy
    monkeypatch.setenv("SWEEP_VAR", "b")
    s.add_command("true")  # another one
    db = sqlite3.connect(s.config.db_path)
    try:
        assert db.execute("SELECT count(*) FROM environments").fetchone() == (2,)
        keys = db.execute("SELECT DISTINCT environment FROM jobs ORDER BY seq").fetchall()
    finally:
        db.close()
    assert len(ids) == 300 and len(keys) == 2 and None not in {k for (k,) in keys}


def test_a_variable_set_after_the_engine_started_reaches_the_job(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same kernel: the engine's environment is read when it starts; the job's
    when it is submitted (``os.environ`` in a later cell)."""
    s = make_sched(start=True, num_gpus=2)
    monkeypatch.setenv("LATER_CELL", "yes")
    out = tmp_path / "seen"
    job_id = s.add_command(f'printf %s "${{LATER_CELL-unset}}" > {out}')
    wait_for(lambda: s.job(job_id)["status"] == "succeeded", what="the job to end")
    assert out.read_text() == "yes"


@pytest.mark.parametrize(
    ("name", "withheld"),
    [
        ("HF_TOKEN", True),
        ("github_token", True),
        ("WANDB_API_KEY", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("DB_PASSWORD", True),
        ("GOOGLE_APPLICATION_CREDENTIALS", True),
        ("OPENAI_APIKEY", True),
        ("KEYBOARD", False),
        ("PATH", False),
        ("MONKEY", False),
    ],
)
def test_the_default_secret_patterns(name: str, withheld: bool) -> None:
    captured = capture_env(SchedulerConfig().env_exclude, {name: "v", "KEPT": "k"})
    env = submitter_env(captured.text, {})
    assert (name not in env) is withheld and env["KEPT"] == "k"
    assert ('"v"' in captured.text) is not withheld


def test_capture_is_a_pure_function_of_the_environment() -> None:
    a = capture_env(("*SECRET*",), {"A": "1", "B": "2", "X_SECRET": "s"})
    b = capture_env(("*SECRET*",), {"B": "2", "A": "1", "X_SECRET": "other"})
    c = capture_env(("*SECRET*",), {"A": "1", "B": "3"})
    assert a == b and a.key != c.key
    bytes_env: dict[str, Any] = {"ODD": "\udcff"}  # (os.environ's decoding of a bad byte)
    odd = capture_env((), bytes_env)
    assert submitter_env(odd.text, {}) == bytes_env
    assert odd.text.isascii()
