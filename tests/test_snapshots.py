"""Code snapshots, with a real git repository in ``tmp_path`` and real jobs: what each
job records of the code it runs, and ``snapshot=True``: the job runs the code as it was
at submission though it is edited afterwards, a sweep costs one copy, and a copy is
removed once no job needs it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from legacy_support import cli

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.errors import InvalidTypeError, InvalidValueError
from nbsched.jupyter.extension import magics_of

pytestmark = pytest.mark.timeout(120)

TRAIN = """\
import json, os, sys
from lib import VERSION
out = {"version": VERSION, "file": __file__, "cwd": os.getcwd(), "args": sys.argv[1:]}
print(out)
json.dump(out, open(os.environ["NBSCHED_RESULT_FILE"], "w"))
"""


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git work tree: train.py imports lib.py (both committed), data.bin untracked."""
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    (root / "train.py").write_text(TRAIN)
    (root / "lib.py").write_text("VERSION = 1\n")
    (root / "sub" / "keep.txt").write_text("k")
    git(root, "init", "-q")
    git(root, "add", "train.py", "lib.py", "sub/keep.txt")
    git(root, "commit", "-q", "-m", "v1")
    (root / "data.bin").write_bytes(b"x" * 1000)  # (untracked: not copied)
    return root


@pytest.fixture
def scheduler_config() -> dict[str, object]:
    return {"num_gpus": 2, "gpu_monitor_interval_s": 0.0}


def result(s: GPUJobScheduler, job_id: str) -> dict[str, Any]:
    path = Path(s.config.state_dir, "results", f"{job_id}.json")
    return dict(json.loads(path.read_text()))


def copies(s: GPUJobScheduler) -> list[str]:
    folder = Path(s.config.state_dir, "snapshots")
    return (
        sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        if folder.is_dir()
        else []
    )


def eventually_no_copies(s: GPUJobScheduler, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while copies(s) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert copies(s) == []


def test_a_queued_job_runs_the_code_as_it_was_when_it_was_submitted(
    sched: GPUJobScheduler, repo: Path
) -> None:
    job_id = sched.add_job(repo / "train.py", args=["--a", "1"], snapshot=True, cwd=repo / "sub")
    [copy] = copies(sched)
    (repo / "lib.py").write_text("VERSION = 2\n")  # edited while the job is queued
    (repo / "train.py").write_text(TRAIN.replace("print(out)", "raise SystemExit('new code')"))
    sched.start()
    [row] = sched.wait([job_id], timeout=60).to_dict("records")
    assert row["status"] == "succeeded", sched.logs(job_id)
    out = result(sched, job_id)
    assert out["version"] == 1 and out["args"] == ["--a", "1"]
    copied = Path(sched.config.state_dir, "snapshots", copy)
    assert out["file"] == str(copied / "train.py")
    assert out["cwd"] == str(copied / "sub")  # (its folder, inside the tree: in the copy)
    assert not (copied / "data.bin").exists()  # only tracked files
    code = sched.job(job_id)["code"]
    assert code["snapshot"] == copy and code["git"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert code["git"]["dirty"] is False and code["git"]["diff_sha256"] is None
    assert code["script_sha256"] == hashlib.sha256(TRAIN.encode()).hexdigest()
    assert sched.job(job_id)["command"].startswith(str(repo / "train.py"))  # as submitted
    eventually_no_copies(sched)  # no job needs it any more


def test_uncommitted_changes_are_recorded_and_copied(sched: GPUJobScheduler, repo: Path) -> None:
    (repo / "lib.py").write_text("VERSION = 3\n")  # not committed
    plain = sched.add_job(repo / "train.py")
    copied = sched.add_job(repo / "train.py", snapshot=True)
    diff = subprocess.run(
        ["git", "diff", "HEAD", "--binary", "--no-ext-diff"], cwd=repo, capture_output=True
    ).stdout
    (repo / "lib.py").write_text("VERSION = 4\n")
    code = sched.job(plain)["code"]
    assert "snapshot" not in code and code["git"]["dirty"] is True
    assert code["git"]["diff_sha256"] == hashlib.sha256(diff).hexdigest()
    assert code["python"].split()[0] == __import__("platform").python_version()
    sched.start()
    sched.wait([plain, copied], timeout=60)
    assert result(sched, copied)["version"] == 3  # the uncommitted change, as submitted
    assert result(sched, plain)["version"] == 4  # without a snapshot: what is on disk


def test_a_sweep_costs_one_copy_and_it_is_removed_when_done(
    sched: GPUJobScheduler, repo: Path
) -> None:
    ids = sched.add_sweep(repo / "train.py", args="--x {1..4}", snapshot=True, required_gpus=0.5)
    [copy] = copies(sched)
    assert {sched.job(i)["code"]["snapshot"] for i in ids} == {copy}
    again = sched.add_job(repo / "train.py", snapshot=True)  # the same content: the same copy
    assert copies(sched) == [copy] and sched.job(again)["code"]["snapshot"] == copy
    (repo / "lib.py").write_text("VERSION = 5\n")
    other = sched.add_job(repo / "train.py", snapshot=True)
    assert len(copies(sched)) == 2
    sched.start()
    rows = sched.wait([*ids, again, other], timeout=60)
    assert set(rows["status"]) == {"succeeded"}
    assert [result(sched, i)["version"] for i in ids] == [1, 1, 1, 1]
    assert result(sched, other)["version"] == 5
    eventually_no_copies(sched)


def test_a_copy_stays_while_a_job_needs_it(sched: GPUJobScheduler, repo: Path) -> None:
    running = sched
    held = running.add_job(repo / "train.py", snapshot=True)
    running.hold([held])
    first = running.add_job(repo / "train.py", snapshot=True)
    running.start()
    running.wait([first], timeout=60)
    time.sleep(0.5)  # (the removal runs in a thread after an end)
    assert len(copies(running)) == 1  # the held job still needs it
    running.release([held])
    assert running.wait([held], timeout=60)["status"].tolist() == ["succeeded"]
    eventually_no_copies(running)
    running.retry(held)  # its copy is gone: it cannot start, and says why
    [row] = running.wait([held], timeout=60).to_dict("records")
    assert row["status"] == "failed" and "code snapshot" in row["reason"]


def test_a_folder_outside_git_is_copied_and_the_config_default_applies(
    make_sched: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "plain"
    (folder / "__pycache__").mkdir(parents=True)
    (folder / "train.py").write_text(TRAIN)
    (folder / "lib.py").write_text("VERSION = 7\n")
    (folder / "__pycache__" / "x.pyc").write_bytes(b"junk")
    s = make_sched(snapshot=True)
    job_id = s.add_job(folder / "train.py")
    command = s.add_command("true")  # a command has no script: no copy, its record only
    [copy] = copies(s)
    assert "git" not in s.job(job_id)["code"]
    assert not Path(s.config.state_dir, "snapshots", copy, "__pycache__").exists()
    assert set(s.job(command)["code"]) == {"python", "conda_env"}
    (folder / "lib.py").write_text("VERSION = 8\n")
    s.start()
    s.wait([job_id, command], timeout=60)
    assert result(s, job_id)["version"] == 7
    with pytest.raises(InvalidTypeError, match="snapshot='yes': expected True or False"):
        s.add_job(folder / "train.py", snapshot="yes")  # type: ignore[arg-type]


def test_a_copy_over_the_size_limit_is_refused_and_nothing_stays(
    make_sched: Any, repo: Path
) -> None:
    (repo / "big.bin").write_bytes(os.urandom(20_000))
    git(repo, "add", "big.bin")
    s = make_sched(snapshot_max_mb=0.01)
    with pytest.raises(InvalidValueError, match=r"above snapshot_max_mb=0.01 \(SchedulerConfig\)"):
        s.add_job(repo / "train.py", snapshot=True)
    assert len(s.jobs()) == 0 and copies(s) == []
    with pytest.raises(InvalidTypeError, match="snapshot=1"):
        SchedulerConfig(snapshot=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="snapshot_max_mb"):
        SchedulerConfig(snapshot_max_mb=0)


def test_snapshot_from_the_command_line_and_the_magic(tmp_path: Path, repo: Path, ip: Any) -> None:
    state = tmp_path / "state"
    out = cli(state, "add", "--snapshot", "--simulate", "2", "--json", str(repo / "train.py"))
    job_id = str(json.loads(out.stdout)["id"])
    plain = json.loads(
        cli(state, "add", "--simulate", "2", "--json", str(repo / "train.py")).stdout
    )
    ip.run_line_magic("gpusched", f"start --simulate 2 --state-dir {state}")
    ids = ip.run_line_magic("gpusched", f"sweep --snapshot {repo / 'train.py'} -- --x {{1,2}}")
    s = magics_of(ip).scheduler  # type: ignore[union-attr]
    assert s is not None
    assert s.job(job_id)["code"]["snapshot"] == s.job(ids[0])["code"]["snapshot"]
    assert "snapshot" not in s.job(str(plain["id"]))["code"]


def test_the_record_follows_edits_made_between_submissions(
    sched: GPUJobScheduler, repo: Path
) -> None:
    first = sched.add_job(repo / "train.py", snapshot=True)
    (repo / "lib.py").write_text("VERSION = 9\n")  # (the same size, at once)
    second = sched.add_job(repo / "train.py", snapshot=True)
    git(repo, "commit", "-qam", "v9")
    third = sched.add_job(repo / "train.py")
    a, b, c = (sched.job(i)["code"] for i in (first, second, third))
    assert not a["git"]["dirty"] and b["git"]["dirty"] and not c["git"]["dirty"]
    assert a["git"]["commit"] == b["git"]["commit"] != c["git"]["commit"]
    assert a["snapshot"] != b["snapshot"] and len(copies(sched)) == 2


def test_a_command_with_a_snapshot_runs_in_a_copy_of_its_folder(
    sched: GPUJobScheduler, repo: Path
) -> None:
    job_id = sched.add_command("python train.py --c 1", cwd=repo / "sub", snapshot=False)
    copied = sched.add_command("cd .. && python train.py --c 2", cwd=repo / "sub", snapshot=True)
    (repo / "lib.py").write_text("VERSION = 6\n")
    code = sched.job(copied)["code"]
    assert code["git"]["root"] == str(repo) and code["copied_from"] == str(repo)
    assert "git" not in sched.job(job_id)["code"]  # (a command records its folder's only with one)
    sched.start()
    sched.wait([copied], timeout=60)
    out = result(sched, copied)
    assert out["version"] == 1 and out["cwd"].startswith(str(sched.config.state_dir))
