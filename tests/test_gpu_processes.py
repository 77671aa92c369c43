"""Per-process GPU readings of the simulated provider: others' processes from its
file, nbsched's running jobs as processes using what they report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nbsched.errors import InvalidValueError
from nbsched.gpus import SimulatedJob, SimulatedProvider, parse_simulated_gpus, write_simulated_gpus
from nbsched.gpus.simulated import report_memory

ALICE = {"pid": 4242, "user": "alice", "command": "vllm serve Qwen", "memory_mb": 20000}


def test_file_names_other_peoples_processes(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    bob = {"user": "bob", "command": "python train.py", "memory_mb": 1000}
    write_simulated_gpus(path, [{"processes": [ALICE, bob]}, {}])
    g0, g1 = SimulatedProvider(gpus_file=path).snapshot()
    assert [(p.pid, p.user, p.command, p.used_mb) for p in g0.processes or ()] == [
        (4242, "alice", "vllm serve Qwen", 20000),
        (None, "bob", "python train.py", 1000),
    ]
    # their memory is what others use, unless the file says more
    assert g0.external_memory_used_mb == 21000 and g0.memory_used_mb == 21000
    assert g1.processes == ()


@pytest.mark.parametrize(
    ("process", "words"),
    [
        ({"command": "x", "memory_mb": 1}, "give a pid or a user"),
        ({"pid": 0, "memory_mb": 1}, "pid=0"),
        ({"pid": True, "memory_mb": 1}, "pid=True"),
        ({"user": "", "memory_mb": 1}, "user=''"),
        ({"pid": 5}, "memory_mb is missing"),
        ({"pid": 5, "memory_mb": -1}, "memory_mb=-1"),
        ({"pid": 5, "memory_mb": 1, "gpu": 2}, "unknown key(s) gpu"),
        ({"pid": 5, "memory_mb": 1, "command": 3}, "command=3"),
        ("vllm", "expected an object"),
    ],
)
def test_bad_process_is_refused_naming_it(process: object, words: str) -> None:
    text = json.dumps({"gpus": [{"processes": [process]}]})
    with pytest.raises(InvalidValueError, match="processes\\[0\\]") as err:
        parse_simulated_gpus(text, "f.json")
    assert words in str(err.value)


def test_processes_more_than_external_memory_is_refused() -> None:
    text = '{"gpus": [{"external_memory_used_mb": 10, "processes": [{"pid": 3, "memory_mb": 50}]}]}'
    with pytest.raises(InvalidValueError, match="less than its processes' memory"):
        parse_simulated_gpus(text)


def test_processes_not_a_list_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="processes must be a list"):
        parse_simulated_gpus('{"gpus": [{"processes": {}}]}')


def test_running_job_is_a_process_using_its_share(tmp_path: Path) -> None:
    job = SimulatedJob("3", (1,), 777, 0.25, str(tmp_path / "3.json"))
    provider = SimulatedProvider(num_gpus=2, jobs=lambda: [job])
    g0, g1 = provider.snapshot()
    assert g0.processes == () and g0.memory_used_mb == 0
    (p,) = g1.processes or ()
    assert (p.pid, p.used_mb) == (777, None)  # (it reported nothing: unknown)
    assert g1.memory_used_mb == 0.25 * 81920 and g1.load == 0.25


def test_job_reports_its_memory_from_its_own_process(tmp_path: Path) -> None:
    """The channel a job uses: it writes ``$NBSCHED_RESULT_FILE.gpu_memory``."""
    result = tmp_path / "results" / "9.json"
    job = SimulatedJob("9", (0, 1), 31337, 1.0, str(result))
    provider = SimulatedProvider(num_gpus=2, jobs=lambda: [job])
    code = "from nbsched.gpus.simulated import report_memory; report_memory(18432)"
    env = {**os.environ, "NBSCHED_RESULT_FILE": str(result)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    for g in provider.snapshot():
        assert [(p.pid, p.used_mb) for p in g.processes or ()] == [(31337, 18432)]
        assert g.memory_used_mb == 18432
    # a shell command can write the file itself
    subprocess.run(
        ["bash", "-c", 'echo 512 > "$NBSCHED_RESULT_FILE.gpu_memory"'], env=env, check=True
    )
    assert [p.used_mb for p in provider.snapshot()[0].processes or ()] == [512]


def test_report_memory_needs_a_job_environment(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        report_memory(1, environ={})
    report_memory(64, environ={"NBSCHED_RESULT_FILE": str(tmp_path / "1.json")})
    assert (tmp_path / "1.json.gpu_memory").read_text().strip() == "64"
