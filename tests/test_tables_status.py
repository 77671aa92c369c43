"""Fresh, honest status: when the GPUs were read, what is true right after a job ends,
and one short waiting reason per queued job naming what it waits for."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from waiting import wait_for

from nbsched import GPUJobScheduler
from nbsched.gpus import write_simulated_gpus
from nbsched.jupyter.status import reading_note, short_reason, status_report
from nbsched.jupyter.tables import cut

READ = re.compile(r"GPUs read \d\d:\d\d:\d\d, \d+\.\d s ago")


def test_status_says_when_the_gpus_were_read_and_is_true_after_a_job_ends(
    make_sched: Callable[..., GPUJobScheduler],
) -> None:
    # A reading cached for a minute: a status right after the job ended showed its GPU at
    # 100 % load with no job on it.
    s = make_sched(start=True, num_gpus=2, gpu_monitor_interval_s=60.0)
    jid = s.add_command("sleep 1", required_gpus=1)
    wait_for(lambda: s.job(jid)["status"] == "running")
    busy = status_report(s)
    assert list(busy.gpus["load"])[0] == 1.0
    s.wait([jid], timeout=60, progress=False)
    after = status_report(s)
    assert list(after.gpus["load"]) == [0.0, 0.0] and list(after.gpus["jobs"]) == [[], []]
    assert READ.search(repr(after)) and READ.search(after._repr_html_())
    assert after.read_at is not None and after.read_at >= busy.read_at  # type: ignore[operator]


def test_the_reading_note() -> None:
    assert reading_note(None) == "GPUs not read yet"
    assert re.fullmatch(r"GPUs read \d\d:\d\d:\d\d, 2\.5 s ago", reading_note(100.0, 102.5))
    failed = reading_note(100.0, 130.0, "NVMLError: GPU is lost")
    assert failed.endswith("30.0 s ago (the last reading failed: NVMLError: GPU is lost)")


def test_one_short_reason_per_queued_job(make_sched: Callable[..., GPUJobScheduler]) -> None:
    s = make_sched(start=True, num_gpus=2)
    s.pause_gpu(0)
    s.pause_gpu(1)
    first = s.add_command("true", required_gpus=1)
    rest = [s.add_command("true", required_gpus=0.5) for _ in range(3)]
    report = status_report(s)
    assert report.waiting[first] == "needs 1 free GPU; GPU 0,1 paused"
    assert [report.waiting[j] for j in rest] == [f"after job {first}"] * 3
    assert list(report.queued["waiting"]) == [report.waiting[j] for j in [first, *rest]]
    text = repr(report)
    assert "comes first" not in text and "may use only GPUs" not in text
    assert text.count(f"after job {first}") == 3


def test_why_names_the_busy_gpu_and_the_paused_allowed_ones(
    make_sched: Callable[..., GPUJobScheduler], tmp_path: Path
) -> None:
    gpus_file = tmp_path / "gpus.json"
    gpu = {"name": "Sim", "memory_total_mb": 1000}
    write_simulated_gpus(gpus_file, [gpu, {**gpu, "external_load": 0.95}, gpu, gpu])
    s = make_sched(start=True, num_gpus=4, simulated_gpus_file=str(gpus_file))
    s.pause_gpu(0)
    s.pause_gpu(3)
    jid = s.add_command("true", required_gpus=1, allowed_gpus=[0, 1])
    why = s.why(jid)
    assert why == (
        "needs 1 free GPU; only 0 usable GPU(s) (GPU 0 paused; GPU 1 busy with others' work "
        "(load from others 95% > 80%))"
    )  # (of the GPUs it may use: not GPU 3)
    assert short_reason(why) == cut(
        "needs 1 free GPU; GPU 0 paused; GPU 1 busy with others' work (load from others 95% > 80%)",
        60,
    )
    s.cancel(jid)
    big = s.add_command("true", required_gpus=3)
    assert s.why(big) == (
        "needs 3 free GPUs; only 1 usable GPU(s) (GPU 0,3 paused; GPU 1 busy with others' "
        "work (load from others 95% > 80%))"
    )
    s.pause_gpu(2)
    s.cancel(big)
    only = s.add_command("true", required_gpus=1, allowed_gpus=[2, 3])
    assert s.why(only) == "needs 1 free GPU; only 0 usable GPU(s) (GPU 2,3 paused)"
