"""Tests of nbsched.config: SchedulerConfig's validation, defaults and from_dict."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbsched.checks import check_requirement, to_float
from nbsched.config import EXECUTORS, PROVIDERS, SchedulerConfig
from nbsched.errors import NbschedError

FIELDS = [f.name for f in dataclasses.fields(SchedulerConfig)]


def make(**kw: Any) -> SchedulerConfig:
    kw.setdefault("state_dir", "/nonexistent/nbsched-test-state")
    return SchedulerConfig(**kw)


# ------------------------------------------------------------------ defaults


def test_defaults_are_the_documented_ones() -> None:
    c = make()
    assert c.num_gpus is None
    assert c.gpu_provider == "auto"
    assert c.executor == "direct"
    assert c.gpu_memory_threshold == 0.8
    assert c.gpu_load_threshold == 0.8
    assert c.gpu_allocation_precision == 0.01
    assert c.max_retries == 0
    assert c.default_requirement == 1.0
    assert c.jobs_file is None and c.llm_config_file is None
    assert c.db_path == Path("/nonexistent/nbsched-test-state/state.db")
    assert c.logs_dir == c.state_dir / "logs"
    assert c.run_dir == c.state_dir / "run"


def test_state_dir_defaults_to_nbsched_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NBSCHED_HOME", str(tmp_path / "home"))
    assert SchedulerConfig().state_dir == tmp_path / "home"
    monkeypatch.setenv("NBSCHED_HOME", "~/somewhere")
    assert SchedulerConfig().state_dir == Path.home() / "somewhere"
    monkeypatch.delenv("NBSCHED_HOME")
    assert SchedulerConfig().state_dir == Path.home() / ".nbsched"


def test_simulated_gpus_file_defaults_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBSCHED_SIMULATED_GPUS", "/x/gpus.json")
    assert make().simulated_gpus_file == "/x/gpus.json"
    monkeypatch.delenv("NBSCHED_SIMULATED_GPUS")
    assert make().simulated_gpus_file is None


def test_paths_are_normalised(tmp_path: Path) -> None:
    c = SchedulerConfig(state_dir=str(tmp_path), jobs_file=tmp_path / "jobs.txt")
    assert c.state_dir == tmp_path
    assert c.jobs_file == str(tmp_path / "jobs.txt")
    assert SchedulerConfig(state_dir="~/x").state_dir == Path.home() / "x"


def test_relative_paths_are_made_absolute_where_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel may change folder later (``%cd``), and the spawner runs in ``/``: a
    relative path means the folder it was given in."""
    monkeypatch.chdir(tmp_path)
    c = SchedulerConfig(
        state_dir="runs/state",
        jobs_file="jobs.txt",
        llm_config_file="./llm.json",
        simulated_gpus_file="../gpus.json",
        ray_address="auto",
    )
    assert c.state_dir == tmp_path / "runs" / "state"
    assert c.jobs_file == str(tmp_path / "jobs.txt")
    assert c.llm_config_file == str(tmp_path / "llm.json")
    assert c.simulated_gpus_file == str(tmp_path.parent / "gpus.json")
    assert c.ray_address == "auto"  # (not a path)
    monkeypatch.setenv("NBSCHED_HOME", "home")
    assert SchedulerConfig().state_dir == tmp_path / "home"
    with pytest.raises(ValueError, match="jobs_file='': must not be empty"):
        SchedulerConfig(jobs_file="")


def test_jobs_file_may_be_missing_but_not_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    later = tmp_path / "not yet.txt"  # the engine watches for it to appear
    assert SchedulerConfig(state_dir=tmp_path, jobs_file=later).jobs_file == str(later)
    for folder in (tmp_path, str(tmp_path) + "/", "~"):
        with pytest.raises(ValueError, match=r"jobs_file=.*: is a directory; give the path of"):
            SchedulerConfig(state_dir=tmp_path, jobs_file=folder)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="jobs_file='sub': is a directory"):
        SchedulerConfig(state_dir=tmp_path, jobs_file="sub")


def test_frozen_and_replace() -> None:
    c = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.num_gpus = 3  # type: ignore[misc]
    c2 = c.replace(num_gpus=3)
    assert c2.num_gpus == 3 and c.num_gpus is None
    with pytest.raises(ValueError, match="num_gpus"):
        c.replace(num_gpus=0)


# ------------------------------------------------------------------ every field's validation

#: (field, bad value, exception, text the message must contain besides the field name)
BAD = [
    ("state_dir", "", ValueError, "empty"),
    ("state_dir", 3, TypeError, "path"),
    ("state_dir", None, TypeError, "path"),
    ("num_gpus", 0, ValueError, ">= 1"),
    ("num_gpus", -2, ValueError, ">= 1"),
    ("num_gpus", 1.5, TypeError, "whole number"),
    ("num_gpus", True, TypeError, "whole number"),
    ("num_gpus", "4", TypeError, "whole number"),
    ("num_gpus", 10**9, ValueError, "<= "),
    ("gpu_provider", "cuda", ValueError, "auto, nvml, gputil, simulated"),
    ("gpu_provider", None, ValueError, "auto, nvml, gputil, simulated"),
    ("executor", "pbs", ValueError, "direct, screen, ray, slurm"),
    ("executor", 1, ValueError, "direct, screen, ray"),
    ("simulated_gpus_file", 5, TypeError, "path"),
    ("jobs_file", ["a"], TypeError, "path"),
    ("llm_config_file", 1.0, TypeError, "path"),
    ("ray_address", 7, TypeError, "path"),
    ("slurm_partition", "a b", ValueError, "no spaces"),
    ("slurm_account", "", ValueError, "Slurm account name"),
    ("slurm_options", ["--gres=gpu:2"], ValueError, "nbsched sets --gres itself"),
    ("slurm_options", ["time=5"], ValueError, "starting with '-'"),
    ("jobs_file_gpu_arg", "cuda", ValueError, "an option such as '--cuda'"),
    ("jobs_file_gpu_arg", 3, TypeError, "an option such as '--cuda'"),
    ("jobs_file_gpu_arg", "--a\0", ValueError, "NUL byte"),
    ("gpu_memory_threshold", 1.5, ValueError, "[0.0, 1.0]"),
    ("gpu_memory_threshold", -0.1, ValueError, "[0.0, 1.0]"),
    ("gpu_memory_threshold", math.nan, ValueError, "[0.0, 1.0]"),
    ("gpu_memory_threshold", "0.5", TypeError, "number"),
    ("gpu_load_threshold", 2, ValueError, "[0.0, 1.0]"),
    ("gpu_load_threshold", True, TypeError, "number"),
    ("gpu_allocation_precision", 0, ValueError, "(0.0, 0.5]"),
    ("gpu_allocation_precision", 0.6, ValueError, "(0.0, 0.5]"),
    ("gpu_monitor_interval_s", -1, ValueError, "a finite number >= 0"),
    ("gpu_monitor_interval_s", None, TypeError, "number"),
    ("retry_backoff_s", -0.5, ValueError, "a finite number >= 0"),
    ("retry_backoff_s", math.nan, ValueError, "a finite number >= 0"),
    ("kill_grace_s", -1, ValueError, "a finite number >= 0"),
    ("reserve_after_s", -1, ValueError, "a finite number >= 0"),
    ("reserve_after_s", math.inf, ValueError, "a finite number >= 0"),
    # Every field in seconds is finite: kill_grace_s=inf made a cancel wait until the
    # job ended by itself; an interval of inf, a GPU reading that is never refreshed.
    ("kill_grace_s", math.inf, ValueError, "a finite number >= 0"),
    ("gpu_monitor_interval_s", math.inf, ValueError, "a finite number >= 0"),
    ("retry_backoff_s", math.inf, ValueError, "a finite number >= 0"),
    ("retry_backoff_s", 10**400, ValueError, "a finite number >= 0"),
    ("jobs_file_poll_s", math.inf, ValueError, "(0.0, 60.0]"),
    ("jobs_file_poll_s", 0, ValueError, "(0.0, 60.0]"),
    ("jobs_file_poll_s", 61, ValueError, "(0.0, 60.0]"),
    ("max_retries", -1, ValueError, ">= 0"),
    ("oom_retry", "yes", TypeError, "True or False"),
    ("oom_retry", 1, TypeError, "True or False"),
    ("max_retries", 1.0, TypeError, "whole number"),
    ("max_retries", None, TypeError, "whole number"),
    ("max_sweep_jobs", 0, ValueError, ">= 1"),
    ("max_sweep_jobs", False, TypeError, "whole number"),
    ("ray_num_cpus", -1, ValueError, "[0.0, 1024.0]"),
    ("ray_num_cpus", "x", TypeError, "number"),
    ("default_requirement", 0, ValueError, "fraction in (0, 1]"),
    ("default_requirement", 1.5, ValueError, "whole number"),
    ("default_requirement", math.inf, ValueError, "fraction in (0, 1]"),
    ("default_requirement", "1", TypeError, "number of GPUs"),
    ("default_requirement", 0.001, ValueError, "gpu_allocation_precision=0.01"),
    ("default_requirement", True, TypeError, "number of GPUs"),
    ("env_policy", "all", ValueError, "submitter, engine"),
    ("env_policy", None, ValueError, "submitter, engine"),
    ("env_exclude", "*TOKEN*", TypeError, "tuple of name patterns"),
    ("env_exclude", None, TypeError, "tuple of name patterns"),
    ("env_exclude", ("*KEY", ""), ValueError, "non-empty string"),
    ("env_exclude", ("A=B",), ValueError, "without '='"),
    ("env_exclude", (3,), ValueError, "non-empty string"),
    ("notify", "ftp://example.org", ValueError, "expected an http:// or https:// URL"),
    ("notify", 3, TypeError, "expected a webhook URL"),
    ("notify", ["mailto:nobody"], ValueError, "expected one mail address"),
]


@pytest.mark.parametrize(
    ("name", "value", "exc", "accepted"), BAD, ids=[f"{b[0]}={b[1]!r}" for b in BAD]
)
def test_bad_value_names_field_and_accepted(
    name: str, value: Any, exc: type, accepted: str
) -> None:
    with pytest.raises(exc) as info:
        make(**{name: value})
    msg = str(info.value)
    assert msg.startswith(f"{name}=")
    assert accepted in msg
    assert isinstance(info.value, NbschedError)


def test_every_field_has_a_bad_value_case() -> None:
    assert {b[0] for b in BAD} == set(FIELDS)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("num_gpus", 1),
        ("num_gpus", 1024),
        ("gpu_provider", "simulated"),
        ("executor", "ray"),
        ("gpu_memory_threshold", 0),
        ("gpu_memory_threshold", 1),
        ("gpu_allocation_precision", 0.5),
        ("gpu_monitor_interval_s", 0),
        ("gpu_monitor_interval_s", 86400.0),
        ("kill_grace_s", 0),
        ("jobs_file_poll_s", 60),
        ("max_retries", 10),
        ("default_requirement", 0.25),
        ("default_requirement", 3),
        ("ray_num_cpus", 0),
    ],
)
def test_good_values_accepted(name: str, value: Any) -> None:
    assert getattr(make(**{name: value}), name) == value


def test_accepted_choice_lists() -> None:
    assert PROVIDERS == ("auto", "nvml", "gputil", "simulated")
    assert set(EXECUTORS) >= {"direct", "screen", "ray"}


# ------------------------------------------------------------------ from_dict


def test_from_dict_roundtrip() -> None:
    c = SchedulerConfig.from_dict({"state_dir": "/x", "num_gpus": 2, "gpu_provider": "simulated"})
    assert c.num_gpus == 2 and c.gpu_provider == "simulated" and c.state_dir == Path("/x")


def test_from_dict_unknown_field_lists_accepted() -> None:
    with pytest.raises(TypeError) as info:
        SchedulerConfig.from_dict({"state_dir": "/x", "num_gpu": 2, "zzz": 1})
    msg = str(info.value)
    assert "num_gpu" in msg and "zzz" in msg
    for name in FIELDS:
        assert name in msg.split("accepted:", 1)[1]


def test_from_dict_validates_values() -> None:
    with pytest.raises(ValueError, match="gpu_load_threshold"):
        SchedulerConfig.from_dict({"state_dir": "/x", "gpu_load_threshold": 3})


# ------------------------------------------------------------------ check_requirement


@pytest.mark.parametrize("value", [0.01, 0.5, 1, 1.0, 2, 8.0])
def test_check_requirement_good(value: float) -> None:
    assert check_requirement("required_gpus", value) == float(value)
    assert check_requirement("required_gpus", value, 0.01) == float(value)


def test_requirement_below_the_allocation_precision() -> None:
    """The allocator places a fraction below one step of the precision as one step, but
    books only what it asked: 1e-9 GPU would let a GPU take jobs without end."""
    for value, precision in ((1e-9, 0.01), (0.005, 0.01), (0.04, 0.05), (5e-324, 0.5)):
        with pytest.raises(ValueError) as info:
            check_requirement("required_gpus", value, precision)
        assert f"required_gpus={value!r}" in str(info.value)
        assert f"gpu_allocation_precision={precision:g}" in str(info.value)
    for value, precision in ((0.01, 0.01), (0.05, 0.05), (float(np.float32(0.01)), 0.01)):
        assert check_requirement("required_gpus", value, precision) == value
    assert check_requirement("required_gpus", 1e-9) == 1e-9  # (no precision: not checked)
    assert make(gpu_allocation_precision=0.05, default_requirement=0.05).default_requirement == 0.05
    with pytest.raises(
        ValueError, match="default_requirement=0.04: below gpu_allocation_precision=0.05"
    ):
        make(gpu_allocation_precision=0.05, default_requirement=0.04)


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        (0, ValueError),
        (-1, ValueError),
        (1.5, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (-math.inf, ValueError),
        (10**400, ValueError),
        (True, TypeError),
        ("1", TypeError),
        (None, TypeError),
    ],
)
def test_check_requirement_bad(value: object, exc: type) -> None:
    with pytest.raises(exc, match="required_gpus="):
        check_requirement("required_gpus", value)


# ------------------------------------------------------------------ property: numeric fields

NUMERIC = [
    "num_gpus",
    "gpu_memory_threshold",
    "gpu_load_threshold",
    "gpu_allocation_precision",
    "gpu_monitor_interval_s",
    "max_retries",
    "retry_backoff_s",
    "default_requirement",
    "kill_grace_s",
    "jobs_file_poll_s",
    "max_sweep_jobs",
    "ray_num_cpus",
]

ANY_VALUE = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
)


@given(name=st.sampled_from(NUMERIC), value=ANY_VALUE)
def test_numeric_fields_never_raise_anything_else(name: str, value: object) -> None:
    try:
        c = make(**{name: value})
    except (ValueError, TypeError) as exc:
        assert isinstance(exc, NbschedError)
        assert str(exc).startswith(f"{name}=")
        return
    got = getattr(c, name)
    if name in ("num_gpus", "max_retries", "max_sweep_jobs"):
        assert got == value and (type(got) is int or got is None)
    else:  # (stored as a plain float, whatever number it was given as)
        assert type(got) is float and got == to_float(value)
    if isinstance(got, float):
        assert math.isfinite(got)


def test_nbsched_home_not_read_when_state_dir_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBSCHED_HOME", "/should/not/be/used")
    assert make().state_dir == Path("/nonexistent/nbsched-test-state")
    assert os.environ["NBSCHED_HOME"] == "/should/not/be/used"
