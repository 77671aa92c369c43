"""Sweeps and the jobs-file watcher work through a small Submitter, not the scheduler:
driven here by an in-memory fake (no store, no engine, no GPUs), and checked on the
source to import neither the scheduler nor the store; the formats stay pure."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from nbsched.config import SchedulerConfig
from nbsched.formats.llmconfig import LLMConfig
from nbsched.jobs import Job, JobSpec, JobStatus
from nbsched.jobsfile_watch import ALL_STATUSES, JobsFileWatcher
from nbsched.jobspec import build_spec
from nbsched.submitter import Submitter, SweepSubmitter
from nbsched.sweeps import DEDUP_STATUSES, submit_sweep

PACKAGE = Path(__file__).resolve().parent.parent / "nbsched"


class FakeSubmitter:
    """Two GPUs, specs checked as the engine does, everything kept in lists."""

    def __init__(self, config: SchedulerConfig, llm: LLMConfig | None = None) -> None:
        self.config = config
        self.num_gpus = 2
        self.llm = llm
        self.queued: list[tuple[JobSpec, tuple[JobStatus, ...]]] = []
        self.kept: list[dict[str, Any]] = []
        self.records: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, str] = {}

    def llm_config(self) -> LLMConfig | None:
        return self.llm

    def make_spec(self, **fields: Any) -> JobSpec:
        return build_spec(
            n_gpus=self.num_gpus,
            owner="the fake",
            precision=0.01,
            default_retries=0,
            default_requirement=lambda args: (1.0, "the default"),
            snapshot=list,
            **fields,
        )

    def submit(
        self, specs: Sequence[JobSpec], *, skip_hash_statuses: Iterable[JobStatus] | None = None
    ) -> list[str]:
        skip = tuple(skip_hash_statuses or ())
        seen = {spec.hash for spec, _ in self.queued}
        ids = []
        for spec in specs:
            if spec.hash is None or spec.hash not in seen:
                self.queued.append((spec, skip))
                ids.append(str(len(self.queued)))
        return ids

    def notices(self, limit: int) -> list[dict[str, Any]]:
        return self.kept[-limit:]

    def add_notice(self, source: str, message: str) -> None:
        self.kept.append({"source": source, "message": message})

    def sweep_record(self, sweep_id: str) -> dict[str, Any] | None:
        return self.records.get(sweep_id)

    def sweep_records(self) -> list[tuple[str, float, dict[str, Any]]]:
        return [(k, 0.0, v) for k, v in self.records.items()]

    def sweep_of_key(self, key: str) -> str | None:
        return self.keys.get(key)

    def record_sweep(self, key: str, record: dict[str, Any]) -> str:
        sweep_id = f"sw{len(self.records) + 1}"
        self.records[sweep_id], self.keys[key] = record, sweep_id
        return sweep_id

    def find_jobs(
        self,
        *,
        sweep: str | None = None,
        hash: str | None = None,
        statuses: Iterable[JobStatus] | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[Job]:
        """Every job the fake queued is still queued."""
        if statuses is not None and JobStatus.QUEUED not in set(statuses):
            return []
        jobs = [
            Job(id=str(n), seq=n, status=JobStatus.QUEUED, spec=spec, submitted=0.0)
            for n, (spec, _) in enumerate(self.queued, 1)
            if (sweep is None or spec.sweep == sweep) and (hash is None or spec.hash == hash)
        ]
        if limit is not None:
            jobs = jobs[-limit:] if newest else jobs[:limit]
        return jobs

    def counts(self, sweep: str | None = None) -> dict[str, int]:
        return {}


def _fake(tmp_path: Path, **config: Any) -> FakeSubmitter:
    fake = FakeSubmitter(SchedulerConfig(state_dir=tmp_path / "state", **config))
    sweep_side: SweepSubmitter = fake  # (mypy: the fake is what the protocols ask)
    watcher_side: Submitter = fake
    assert sweep_side is watcher_side
    return fake


def test_a_sweep_needs_only_a_submitter(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("pass\n")
    fake = _fake(tmp_path)
    ids = submit_sweep(fake, "train.py", "--lr {0.1,0.01} --seed {1..2}", cwd=tmp_path)
    assert ids == ["1", "2", "3", "4"] and ids.sweep_id == "sw1" and ids.queued == ids
    assert [spec.args for spec, _ in fake.queued][:2] == [
        ("--lr", "0.1", "--seed", "1"),
        ("--lr", "0.1", "--seed", "2"),
    ]
    assert {skip for _, skip in fake.queued} == {DEDUP_STATUSES}
    assert {spec.sweep for spec, _ in fake.queued} == {"sw1"}
    again = submit_sweep(fake, "train.py", "--lr {0.1,0.01} --seed {1..2}", cwd=tmp_path)
    assert again.sweep_id == "sw1"  # same definition, same sweep id
    assert again == ids and again.queued == [] and again.already == {"queued": 4}
    assert "nothing new to queue" in again.describe() and "(4 queued)" in again.describe()
    wider = submit_sweep(fake, "train.py", "--lr {0.1,0.01} --seed {1..3}", cwd=tmp_path)
    assert wider.sweep_id == "sw2" and wider.queued == ["5", "6"]
    assert wider == ["1", "2", "5", "3", "4", "6"]  # each combination's job, in order


def test_the_watcher_needs_only_a_submitter(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("pass\n")
    jobs_file = tmp_path / "jobs.txt"
    fake = _fake(tmp_path, jobs_file=str(jobs_file))
    fake.llm = LLMConfig(1.0, {"small": 0.5})
    watcher = JobsFileWatcher(fake)
    assert watcher.poll() == [] and "does not exist" in fake.kept[-1]["message"]
    jobs_file.write_text("0,train.py,,--llm big,1\nx,train.py,,,\n0,train.py,,,5\n")
    assert watcher.poll() == ["1"]
    spec, skip = fake.queued[0]
    assert spec.args == ("--llm", "big") and spec.allowed_gpus == (1,) and skip == ALL_STATUSES
    messages = [n["message"] for n in fake.kept]
    assert any(":1: model 'big' is not in the LLM config" in m for m in messages)
    assert any(":2: bad priority 'x'" in m for m in messages)
    assert any(":3: GPU 5 does not exist" in m for m in messages)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


@pytest.mark.parametrize("name", ["sweeps.py", "sweep_tables.py", "jobsfile_watch.py"])
def test_sweeps_and_the_watcher_know_no_scheduler_and_no_store(name: str) -> None:
    source = (PACKAGE / name).read_text()
    assert not {".scheduler", ".store"} & _imports(PACKAGE / name)
    assert ".store" not in source and "GPUJobScheduler(" not in source


@pytest.mark.parametrize("path", sorted((PACKAGE / "formats").glob("*.py")), ids=lambda p: p.name)
def test_the_formats_are_pure(path: Path) -> None:
    """No store, no scheduler, no threads, no logging: text in, values (or errors) out."""
    banned = {"..store", "..scheduler", "..dispatcher", "threading", "logging", "..submitter"}
    assert not banned & _imports(path)
