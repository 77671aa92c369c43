"""What the original program did, through the scheduler: retries, conda, torchrun,
the LLM config, and GPU pauses set from another process."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import transitions
from legacy_support import cli, wait_for, write_exe

from nbsched import GPUJobScheduler
from nbsched.errors import InvalidValueError

MakeSched = Callable[..., GPUJobScheduler]


# ------------------------------------------------------------------------- retries

FLAKY = """\
import os, sys
marker = sys.argv[1]
if not os.path.exists(marker):
    open(marker, "w").close()
    print("first attempt: failing")
    sys.exit(5)
print("second attempt: fine")
"""

# Counts its attempts in a file and exits 10 + the attempt number.
ALWAYS_FAILS = """\
import sys
path = sys.argv[1]
try:
    n = int(open(path).read()) + 1
except FileNotFoundError:
    n = 1
open(path, "w").write(str(n))
print("attempt", n)
sys.exit(10 + n)
"""


def test_a_job_that_fails_once_is_retried_and_succeeds(
    tmp_path: Path, make_sched: MakeSched
) -> None:
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    s = make_sched(max_retries=2, retry_backoff_s=0.05)
    s.start()
    jid = s.add_job(str(script), args=[str(tmp_path / "marker")], required_gpus=0.5)
    s.wait([jid], timeout=30)
    job = s.job(jid)
    assert (job["status"], job["exit_code"], job["attempts"]) == ("succeeded", 0, 2)
    log = s.logs(jid, tail=None)
    assert "first attempt: failing" in log and "second attempt: fine" in log
    assert "attempt 2" in log
    history = transitions.history(s.store.path, jid)
    assert [h["new"] for h in history] == ["queued", "running", "queued", "running", "succeeded"]
    assert "attempt 1 failed (exit code 5)" in history[2]["reason"]


def test_the_last_attempt_decides_status_and_exit_code(
    tmp_path: Path, make_sched: MakeSched
) -> None:
    script = tmp_path / "fails.py"
    script.write_text(ALWAYS_FAILS)
    s = make_sched(retry_backoff_s=0.02)  # config says 0 retries; the job says 2
    s.start()
    jid = s.add_job(str(script), args=[str(tmp_path / "count")], required_gpus=1, max_retries=2)
    none = s.add_job(str(script), args=[str(tmp_path / "count0")], required_gpus=1)
    s.wait([jid, none], timeout=30)
    job = s.job(jid)
    assert (job["status"], job["exit_code"], job["attempts"]) == ("failed", 13, 3)
    assert job["reason"] == "exit code 13"
    assert (s.job(none)["attempts"], s.job(none)["exit_code"]) == (1, 11)


# ------------------------------------------------------------------------- conda

# A stand-in for conda: `conda run --no-capture-output -n ENV CMD...` runs CMD with
# ENV's bin/ first on PATH (as activation does); an unknown ENV fails as conda does.
FAKE_CONDA = """\
#!/usr/bin/env bash
printf '%s\\0' "$@" > "$FAKE_CONDA_LOG"
[ "$1" = run ] || { echo "fake conda: only 'run' is implemented" >&2; exit 2; }
shift
[ "$1" = --no-capture-output ] && shift
[ "$1" = -n ] || { echo "fake conda: expected -n ENV" >&2; exit 2; }
env_dir="$FAKE_CONDA_ROOT/envs/$2"; shift 2
if [ ! -d "$env_dir" ]; then
  echo "EnvironmentLocationNotFound: Not a conda environment: $env_dir" >&2
  exit 1
fi
export CONDA_DEFAULT_ENV="${env_dir##*/}" PATH="$env_dir/bin:$PATH"
exec "$@"
"""


@pytest.fixture
def fake_conda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "conda"
    (root / "bin").mkdir(parents=True)
    (root / "envs" / "torch-env" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, root / "envs" / "torch-env" / "bin" / "python")
    write_exe(root / "bin" / "conda", FAKE_CONDA)
    monkeypatch.delenv("CONDA_EXE", raising=False)
    monkeypatch.setenv("PATH", f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CONDA_ROOT", str(root))
    monkeypatch.setenv("FAKE_CONDA_LOG", str(tmp_path / "conda-argv"))
    return root


def test_conda_env_runs_inside_conda_and_a_missing_env_fails_at_once(
    tmp_path: Path, make_sched: MakeSched, fake_conda: Path
) -> None:
    script = tmp_path / "where.py"
    script.write_text("import os, sys; print(os.environ['CONDA_DEFAULT_ENV'], sys.argv[1:])\n")
    s = make_sched(max_retries=3, retry_backoff_s=0.02)
    s.start()
    ok = s.add_job(str(script), "torch-env", ["--lr", "0.1"], required_gpus=0.5)
    s.wait([ok], timeout=30)
    assert s.job(ok)["status"] == "succeeded", s.logs(ok)
    assert s.logs(ok) == "torch-env ['--lr', '0.1']\n"
    argv = (tmp_path / "conda-argv").read_bytes().split(b"\0")[:-1]
    assert argv == [
        b"run",
        b"--no-capture-output",
        b"-n",
        b"torch-env",
        b"python",
        b"-u",
        str(script).encode(),
        b"--lr",
        b"0.1",
    ]

    bad = s.add_job(str(script), "no-such-env", required_gpus=0.5)
    s.wait([bad], timeout=30)
    job = s.job(bad)
    assert job["status"] == "failed"
    assert job["attempts"] == 1  # no retry: it cannot help
    assert "conda environment 'no-such-env' not found" in job["reason"]
    assert "EnvironmentLocationNotFound" in s.logs(bad)


def test_without_conda_a_conda_job_fails_with_the_reason(
    tmp_path: Path, make_sched: MakeSched, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"  # bash only: no conda anywhere on PATH
    bin_dir.mkdir()
    os.symlink("/bin/bash", bin_dir / "bash")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("CONDA_EXE", raising=False)
    script = tmp_path / "t.py"
    script.write_text("print('never runs')\n")
    s = make_sched(max_retries=2)
    jid = s.add_job(str(script), "torch-env", required_gpus=1)  # accepted: the engine decides
    s.start()
    s.wait([jid], timeout=30)
    job = s.job(jid)
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert "no conda found" in job["reason"] and "torch-env" in job["reason"]
    assert "no conda found" in s.logs(jid)


# ------------------------------------------------------------------------- torchrun

FAKE_TORCHRUN = """\
#!/usr/bin/env bash
{ printf '%s\\0' "$@"; printf 'CVD=%s\\0' "$CUDA_VISIBLE_DEVICES"; } > "$FAKE_TORCHRUN_LOG"
echo "fake torchrun ran"
"""


def test_torchrun_and_gpu_arg_use_local_indices(
    tmp_path: Path, make_sched: MakeSched, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_exe(bin_dir / "torchrun", FAKE_TORCHRUN)
    record = tmp_path / "torchrun-argv"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_TORCHRUN_LOG", str(record))
    script = tmp_path / "train.py"
    script.write_text(
        "import json, os, sys\n"
        "print(json.dumps([os.environ['CUDA_VISIBLE_DEVICES'], sys.argv[1:]]))\n"
    )
    s = make_sched(num_gpus=4)
    s.start()
    tr = s.add_job(
        str(script),
        args=["--epochs", "1"],
        required_gpus=2,
        allowed_gpus="2-3",
        launcher="torchrun",
        gpu_arg="--cuda",
    )
    one = s.add_job(str(script), args=["--x"], required_gpus=1, allowed_gpus=[3], gpu_arg="--cuda")
    plain = s.add_job(str(script), required_gpus=1, allowed_gpus=[1])
    s.wait([tr, one, plain], timeout=30)
    assert s.job(tr)["status"] == "succeeded", s.logs(tr)
    assert s.logs(tr) == "fake torchrun ran\n"
    assert record.read_bytes().split(b"\0")[:-1] == [
        b"--standalone",
        b"--nproc-per-node=2",
        str(script).encode(),
        b"--epochs",
        b"1",
        b"--cuda",
        b"0,1",  # local indices: what CUDA_VISIBLE_DEVICES makes GPUs 2 and 3
        b"CVD=2,3",
    ]
    assert json.loads(s.logs(one)) == ["3", ["--x", "--cuda", "0"]]
    assert json.loads(s.logs(plain)) == ["1", []]  # nothing appended unless asked


def test_a_six_field_torchrun_line_runs_under_torchrun_on_its_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16, the original's call and its latest jobs file: ``torchrun-2gpu`` ran on 1
    GPU as ``python train.py torchrun-2gpu,--epochs 3``; ``./llm_config.json`` was not read."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_exe(bin_dir / "torchrun", FAKE_TORCHRUN)
    record = tmp_path / "torchrun-argv"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_TORCHRUN_LOG", str(record))
    monkeypatch.setenv("NBSCHED_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("import sys\nprint(sys.argv[1:])\n")
    (tmp_path / "llm_config.json").write_text('{"models": {"big": 2.0}}')
    (tmp_path / "jobs.txt").write_text(
        "0,train.py,,torchrun-2gpu,--epochs 3,0-3\n1,train.py,,python,--llm big,\n"
    )
    s = GPUJobScheduler(num_gpus=4, jobs_file_path="jobs.txt", gpu_provider="simulated")
    try:
        s.start()
        wait_for(lambda: len(s.jobs()) == 2, what="two jobs")
        s.wait(timeout=60)
        jobs = s.jobs()
        by_priority = {int(row["priority"]): row for _, row in jobs.iterrows()}
        torch, llm = by_priority[0]["id"], by_priority[1]["id"]
        assert s.job(torch)["status"] == "succeeded", s.logs(torch)
        assert s.job(torch)["required_gpus"] == 2.0 and s.job(llm)["required_gpus"] == 2.0
        argv = record.read_bytes().split(b"\0")[:-1]
        assert argv[:4] == [
            b"--standalone",
            b"--nproc-per-node=2",
            str(tmp_path / "train.py").encode(),
            b"--epochs",
        ]
        assert argv[4] == b"3" and len(argv[-1].split(b",")) == 2  # CVD: two GPUs
        assert s.logs(llm) == "['--llm', 'big']\n"
    finally:
        s.close()


# ------------------------------------------------------------------------- LLM config


def _write_json(path: Path, text: str) -> None:
    """Replace ``path`` (a new inode, as editors do), so the change is always seen."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


BAD_LLM_CONFIGS = [
    ("{not json", "not valid JSON"),
    ('{"default_requirement": NaN}', "NaN"),
    ('{"models": {"big": Infinity}}', "Infinity"),
    ('{"models": {"big": 0}}', "fraction in (0, 1]"),
    ('{"models": {"big": -1}}', "fraction in (0, 1]"),
    ('{"models": {"big": 1.5}}', "whole number"),
    ('{"models": {"big": "2"}}', "expected a number"),
    ('"a string"', "expected a JSON object"),
]


def test_llm_config_sets_requirements_and_is_reread(
    tmp_path: Path, make_sched: MakeSched, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "llm_config.json"
    _write_json(config, '{"default_requirement": 0.25, "models": {"small": 0.5, "big": 2}}')
    script = tmp_path / "eval.py"
    script.write_text("import os; print(os.environ['CUDA_VISIBLE_DEVICES'])\n")
    s = make_sched(llm_config_file=str(config))
    s.start()

    def req(*args: str, **kw: object) -> float:
        return s.make_spec(script=str(script), args=list(args), **kw).required_gpus  # type: ignore[arg-type]

    assert req("--llm", "small") == 0.5
    assert req("--llm=big") == 2.0
    assert req("--llm", "unknown-model") == 0.25
    assert req("--lr", "1") == 0.25
    assert req("--llm", "big", required_gpus=1) == 1.0  # the user's choice wins

    small = s.add_job(str(script), args=["--llm", "small"])
    big = s.add_job(str(script), args=["--llm=big", "--seed", "1"])
    s.wait([small, big], timeout=30)
    assert (s.job(small)["required_gpus"], len(s.job(small)["gpus"])) == (0.5, 1)
    assert s.job(big)["gpus"] == [0, 1] and s.logs(big) == "0,1\n"

    _write_json(config, '{"models": {"small": 1}}')  # changed: re-read on the next use
    assert req("--llm", "small") == 1.0
    assert req("--llm=big") == 1.0  # the default's default

    for text, why in BAD_LLM_CONFIGS:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="nbsched"):
            _write_json(config, text)
            assert req("--llm", "small") == 1.0, text  # the previous config stays in force
        assert s._llm is not None and s._llm.last_error is not None
        assert why in s._llm.last_error and str(config) in s._llm.last_error, s._llm.last_error
        assert any("keeping the previous one" in r.getMessage() for r in caplog.records), text
        with pytest.raises(InvalidValueError, match="llm_config"):
            make_sched(llm_config_file=str(config), state_dir=tmp_path / "other")
    _write_json(config, '{"models": {"small": 0.5}}')
    assert req("--llm", "small") == 0.5
    assert s._llm is not None and s._llm.last_error is None


# ------------------------------------------------------------------------- pause/resume


def test_pause_from_another_process_takes_effect_and_survives_restart(
    tmp_path: Path, make_sched: MakeSched
) -> None:
    s = make_sched(num_gpus=2)
    s.start()
    state = s.config.state_dir
    paused = cli(state, "pause", "0", "--json")
    assert json.loads(paused.stdout) == {"gpu": 0, "paused": True}
    # From here on, nothing new starts on GPU 0: the CLI's change is already committed
    # and the engine reads pauses from the store at every decision.
    ids = [s.add_command("true", required_gpus=0.5) for _ in range(4)]
    s.wait(ids, timeout=30)
    assert {tuple(s.job(i)["gpus"]) for i in ids} == {(1,)}
    s.close()

    s2 = make_sched(num_gpus=2)
    assert s2.store.paused() == frozenset({0})
    assert s2.get_gpu_status()["paused"].tolist() == [True, False]
    s2.start()
    only0 = s2.add_command("true", required_gpus=1, allowed_gpus=[0])
    wait_for(
        lambda: (
            s2._dispatcher is not None
            and s2._dispatcher.head_waiting is not None
            and s2._dispatcher.head_waiting[0] == only0
        ),
        what="the engine to hold the job back",
    )
    assert s2.job(only0)["status"] == "queued"
    cli(state, "resume", "0")
    s2.wait([only0], timeout=30)
    assert s2.job(only0)["gpus"] == [0]
