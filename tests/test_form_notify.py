"""The submission form's notify field and snapshot box: what the API's ``notify=`` and
``snapshot=`` take, from the form, with the API's words for a bad value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nbsched import GPUJobScheduler
from nbsched.jupyter import SubmitForm


@pytest.fixture
def scheduler_config() -> dict[str, Any]:
    return {"num_gpus": 2, "gpu_monitor_interval_s": 0.0}


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "code" / "train.py"
    path.parent.mkdir()
    path.write_text("print('hi')\n")
    return path


def test_the_form_sends_notify_and_snapshot(sched: GPUJobScheduler, script: Path) -> None:
    form = SubmitForm(sched, conda_env_names=[])
    assert form.snapshot.value is False  # (the config's default)
    form.script.value = str(script)
    form.notify.value = "https://hooks.example.org/x, me@example.org  mailto:you@example.org"
    form.snapshot.value = True
    form.submit_button.click()
    assert form.error is None, form.error
    job = sched.store.get(form.submitted[0])
    targets = json.loads(job.spec.notify or "[]")
    assert [t.get("url") or t.get("to") for t in targets] == [
        "https://hooks.example.org/x",
        ["me@example.org"],
        ["you@example.org"],
    ]
    assert job.spec.snapshot is not None
    assert sched.job(job.id)["code"]["snapshot"] == job.spec.snapshot


def test_without_notify_or_snapshot_the_job_has_neither(
    sched: GPUJobScheduler, script: Path
) -> None:
    form = SubmitForm(sched, conda_env_names=[])
    form.script.value = str(script)
    form.sweep.value = "--seed {1,2}"
    form.submit_button.click()
    assert form.error is None and len(form.submitted) == 2
    for job_id in form.submitted:
        job = sched.store.get(job_id)
        assert job.spec.notify is None and job.spec.snapshot is None


def test_a_bad_notify_target_is_shown_in_the_form_and_nothing_is_queued(
    sched: GPUJobScheduler, script: Path
) -> None:
    form = SubmitForm(sched, conda_env_names=[])
    form.script.value = str(script)
    form.notify.value = "https://ok.example.org, ftp://nope"
    form.submit_button.click()
    assert form.submitted == [] and sched.counts()["queued"] == 0
    assert form.error is not None and "ftp://nope" in form.error
    assert "http:// or https:// URL" in form.error
    assert "nothing submitted" in form.result.value
    form.notify.value = "me@"
    assert form.error is None  # (a field changed: the error went)
    form.submit_button.click()
    assert form.error is not None and "'me@'" in form.error and "mail address" in form.error


def test_the_snapshot_box_starts_at_the_configs_default(make_sched: Any, script: Path) -> None:
    s = make_sched(num_gpus=1, snapshot=True)
    form = SubmitForm(s, conda_env_names=[])
    assert form.snapshot.value is True
    form.snapshot.value = False  # (unticked: no copy, though the config makes one)
    form.script.value = str(script)
    form.submit_button.click()
    assert form.error is None
    assert s.store.get(form.submitted[0]).spec.snapshot is None
