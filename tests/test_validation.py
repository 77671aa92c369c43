"""Bad submissions raise at once, name the bad value, and store nothing (hypothesis)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from validation_support import N_GPUS, rejects

from nbsched import GPUJobScheduler

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def scheduler_config() -> dict[str, object]:
    """sched (tests/conftest.py): not started, as validation happens before anything
    reaches the engine."""
    return {"num_gpus": N_GPUS}


# ------------------------------------------------------------------ required_gpus

BAD_REQUIRED = st.one_of(
    st.floats(max_value=0.0),  # <= 0, including -inf and -0.0
    st.floats(min_value=0.0, max_value=0.0099, exclude_min=True),  # below the precision
    st.just(math.nan),
    st.just(math.inf),
    st.floats(min_value=1.0001, max_value=1e6).filter(lambda v: not v.is_integer()),
    st.integers(min_value=N_GPUS + 1),  # more than the machine has (also huge ints)
    st.integers(max_value=0),
    st.booleans(),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.none().map(lambda _: object()),
)


@SETTINGS
@given(value=BAD_REQUIRED)
def test_bad_required_gpus(sched: GPUJobScheduler, script: str, value: Any) -> None:
    msg = rejects(
        sched,
        lambda: sched.add_command("true", required_gpus=value),
        (ValueError, TypeError),
        "required_gpus",
    )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert (repr(value) in msg) or (f"{value:g}" in msg)
    rejects(
        sched,
        lambda: sched.add_job(script, required_gpus=value),
        (ValueError, TypeError),
        "required_gpus",
    )


@SETTINGS
@given(
    allowed=st.lists(st.integers(0, N_GPUS - 1), min_size=1, max_size=N_GPUS, unique=True),
    extra=st.integers(1, N_GPUS),
)
def test_more_gpus_than_allowed(sched: GPUJobScheduler, allowed: list[int], extra: int) -> None:
    required = len(allowed) + extra
    msg = rejects(
        sched,
        lambda: sched.add_command("true", required_gpus=required, allowed_gpus=allowed),
        (ValueError,),
        "required_gpus",
    )
    assert str(required) in msg


# ------------------------------------------------------------------ allowed_gpus

BAD_ALLOWED = st.one_of(
    st.lists(st.integers(min_value=N_GPUS), min_size=1, max_size=3),  # GPUs that do not exist
    st.lists(st.integers(max_value=-1), min_size=1, max_size=3),
    st.builds(lambda a, b: [a, b], st.integers(0, N_GPUS - 1), st.integers(min_value=N_GPUS)),
    st.sampled_from(["0-9", "4", "7,1", "", " ", "a", "1-0", "0,,1", "-1", "0-3,x", "2.5"]),
    st.just([]),
    st.lists(st.sampled_from([1.5, "1", None, True]), min_size=1, max_size=2),
    st.sampled_from([3, 2.0, b"0-3", {"0": 1}]),
)


@SETTINGS
@given(value=BAD_ALLOWED)
def test_bad_allowed_gpus(sched: GPUJobScheduler, value: Any) -> None:
    rejects(
        sched,
        lambda: sched.add_command("true", required_gpus=0.5, allowed_gpus=value),
        (ValueError, TypeError),
        "allowed_gpus",
    )


def test_good_allowed_gpus_forms(sched: GPUJobScheduler) -> None:
    a = sched.add_command("true", required_gpus=2, allowed_gpus="1-2")
    b = sched.add_command("true", required_gpus=1, allowed_gpus=[3, 0, 3])
    c = sched.add_command("true", required_gpus=1, allowed_gpus=range(4))
    assert sched.store.get(a).allowed_gpus == (1, 2)
    assert sched.store.get(b).allowed_gpus == (0, 3)
    assert sched.store.get(c).allowed_gpus == (0, 1, 2, 3)


# ------------------------------------------------------------------ priority, retries, others

BAD_PRIORITY = st.one_of(
    st.floats(),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
    st.integers(min_value=2**63),
    st.integers(max_value=-(2**63) - 1),
)


@SETTINGS
@given(value=BAD_PRIORITY)
def test_bad_priority(sched: GPUJobScheduler, script: str, value: Any) -> None:
    rejects(
        sched,
        lambda: sched.add_command("true", priority=value),
        (ValueError, TypeError),
        "priority",
    )
    rejects(
        sched, lambda: sched.add_job(script, priority=value), (ValueError, TypeError), "priority"
    )


@pytest.mark.parametrize("value", [-(2**63), -5, 0, 7, 2**63 - 1])
def test_good_priorities(sched: GPUJobScheduler, value: int) -> None:
    job_id = sched.add_command("true", priority=value)
    assert sched.store.get(job_id).priority == value


@SETTINGS
@given(
    value=st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=2**63),
        st.floats(),
        st.booleans(),
        st.text(max_size=2),
    )
)
def test_bad_max_retries(sched: GPUJobScheduler, value: Any) -> None:
    rejects(
        sched,
        lambda: sched.add_command("true", max_retries=value),
        (ValueError, TypeError),
        "max_retries",
    )


@SETTINGS
@given(name=st.text(min_size=1, max_size=30).filter(lambda n: "\0" not in n and "/" not in n))
def test_missing_script(sched: GPUJobScheduler, tmp_path: Path, name: str) -> None:
    target = tmp_path / "nowhere" / name
    msg = rejects(sched, lambda: sched.add_job(str(target)), (FileNotFoundError,), "script")
    assert repr(str(target)) in msg


@pytest.mark.parametrize(
    ("kwargs", "excs", "field"),
    [
        ({"command": ""}, (ValueError,), "command"),
        ({"command": "   "}, (ValueError,), "command"),
        ({"command": 5}, (TypeError,), "command"),
        ({"command": "true", "cwd": "/no/such/dir"}, (FileNotFoundError,), "cwd"),
        ({"command": "true", "env": {"A=B": "x"}}, (ValueError,), "env"),
        ({"command": "true", "env": {"A": 1}}, (TypeError,), "env"),
        ({"command": "true", "env": {1: "a"}}, (TypeError,), "env"),
        ({"command": "true", "env": "A=1"}, (TypeError,), "env"),
        ({"command": "true", "env": [("A", "1")]}, (TypeError,), "env"),
        ({"command": "true", "env": {"": "x"}}, (ValueError,), "env"),
        ({"command": "true", "name": object()}, (TypeError,), "name"),
        ({"command": "true", "name": 5}, (TypeError,), "name"),
    ],
)
def test_bad_command_submissions(
    sched: GPUJobScheduler,
    kwargs: dict[str, Any],
    excs: tuple[type[BaseException], ...],
    field: str,
) -> None:
    command = kwargs.pop("command")
    rejects(sched, lambda: sched.add_command(command, **kwargs), excs, field)


@pytest.mark.parametrize(
    ("kwargs", "excs", "field"),
    [
        ({"script": 5}, (TypeError,), "script"),
        ({"script": ""}, (TypeError,), "script"),
        ({"args": 5}, (TypeError,), "args"),
        ({"args": [1, None]}, (TypeError,), "args"),
        ({"args": b"--x"}, (TypeError,), "args"),
        ({"args": "--x 'unclosed"}, (ValueError,), "args"),
        ({"conda_env": ""}, (ValueError,), "conda_env"),
        ({"conda_env": 3}, (TypeError,), "conda_env"),
        ({"max_retries": "2"}, (TypeError,), "max_retries"),
        ({"max_retries": 2.0}, (TypeError,), "max_retries"),
        ({"max_retries": -1}, (ValueError,), "max_retries"),
        ({"gpu_arg": 5}, (TypeError,), "gpu_arg"),
        ({"launcher": "mpirun"}, (ValueError,), "launcher"),
        ({"gpu_arg": "cuda"}, (ValueError,), "gpu_arg"),
    ],
)
def test_bad_script_submissions(
    sched: GPUJobScheduler,
    script: str,
    kwargs: dict[str, Any],
    excs: tuple[type[BaseException], ...],
    field: str,
) -> None:
    kwargs.setdefault("script", script)
    rejects(sched, lambda: sched.add_job(**kwargs), excs, field)


def test_a_rejected_submission_leaves_the_queue_usable(sched: GPUJobScheduler, script: str) -> None:
    with pytest.raises(ValueError):
        sched.add_job(script, required_gpus=1.5)
    job_id = sched.add_job(script, args=["--x", "1"], required_gpus=0.5)
    assert sched.store.counts()["queued"] == 1
    assert sched.store.get(job_id).spec.args == ("--x", "1")


# ------------------------------------------------------------------ the job's folder


def test_relative_cwd_is_made_absolute_at_submission(
    sched: GPUJobScheduler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine (perhaps another process, in another folder) runs the job: a relative
    cwd is taken from the submitter's folder, as a relative script path is."""
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "t.py").write_text("print('hi')\n")
    monkeypatch.chdir(tmp_path)
    here = sched.add_command("true", cwd=".")
    sub = sched.add_command("true", cwd=Path("sub"))
    up = sched.add_command("true", cwd="sub/deeper/..")
    script = sched.add_job("deeper/t.py", cwd="sub")
    assert sched.store.get(here).spec.cwd == str(tmp_path)
    assert sched.store.get(sub).spec.cwd == str(tmp_path / "sub")
    assert sched.store.get(up).spec.cwd == str(tmp_path / "sub")
    spec = sched.store.get(script).spec
    assert (spec.cwd, spec.script) == (str(tmp_path / "sub"), str(tmp_path / "sub/deeper/t.py"))


def test_tilde_is_expanded_in_cwd_and_script(
    sched: GPUJobScheduler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / "proj").mkdir(parents=True)
    (home / "proj" / "t.py").write_text("print('hi')\n")
    monkeypatch.setenv("HOME", str(home))
    job = sched.store.get(sched.add_command("true", cwd="~/proj"))
    assert job.spec.cwd == str(home / "proj")
    job = sched.store.get(sched.add_job("~/proj/t.py"))
    assert job.spec.script == str(home / "proj" / "t.py")
    job = sched.store.get(sched.add_job("t.py", cwd="~/proj"))
    assert (job.spec.cwd, job.spec.script) == (str(home / "proj"), str(home / "proj" / "t.py"))


@pytest.mark.parametrize(
    ("cwd", "excs"),
    [
        (5, (TypeError,)),
        (b"/tmp", (TypeError,)),
        (["/tmp"], (TypeError,)),
        ("", (ValueError,)),
        ("no/such/folder", (FileNotFoundError,)),
        ("~/no/such/folder", (FileNotFoundError,)),
    ],
)
def test_bad_cwd(sched: GPUJobScheduler, script: str, cwd: Any, excs: tuple[type, ...]) -> None:
    rejects(sched, lambda: sched.add_command("true", cwd=cwd), excs, "cwd")
    rejects(sched, lambda: sched.add_job(script, cwd=cwd), excs, "cwd")


# ------------------------------------------------------------------ NUL bytes

NUL = "a\x00b"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s, script: s.add_command(f"echo {NUL}"), "command"),
        (lambda s, script: s.add_job(script, args=["--x", NUL]), "args"),
        (lambda s, script: s.add_job(script, args=f"--x {NUL}"), "args"),
        (lambda s, script: s.add_job(script + NUL), "script"),
        (lambda s, script: s.add_command("echo", env={"A": NUL}), "env"),
        (lambda s, script: s.add_command("echo", env={NUL: "x"}), "env"),
        (lambda s, script: s.add_command("echo", cwd=f"/tmp/{NUL}"), "cwd"),
        (lambda s, script: s.add_command("echo", name=NUL), "name"),
        (lambda s, script: s.add_job(script, conda_env=NUL), "conda_env"),
        (lambda s, script: s.add_job(script, gpu_arg=f"--{NUL}"), "gpu_arg"),
        (lambda s, script: s.add_sweep(script, args=f"--x {{1,{NUL}}}"), "args"),
    ],
    ids=[
        "command",
        "args",
        "args-string",
        "script",
        "env-value",
        "env-name",
        "cwd",
        "name",
        "conda_env",
        "gpu_arg",
        "sweep-value",
    ],  # fmt: skip
)
def test_nul_bytes_are_refused_at_submission(
    sched: GPUJobScheduler, script: str, call: Callable[..., object], field: str
) -> None:
    """No program can be given a NUL byte (in an argument, its environment or a path):
    such a job could only fail when started, so it is refused when submitted."""
    msg = rejects(sched, lambda: call(sched, script), (ValueError,), field)
    assert "NUL" in msg


# ------------------------------------------------------------------ wait() and jobs()


@pytest.mark.parametrize(
    ("timeout", "excs"),
    [
        (math.nan, (ValueError,)),
        (-1, (ValueError,)),
        (-math.inf, (ValueError,)),
        (-(10**400), (ValueError,)),
        ("5", (TypeError,)),
        (True, (TypeError,)),
        ([1], (TypeError,)),
    ],
)
def test_bad_wait_timeout(sched: GPUJobScheduler, timeout: Any, excs: tuple[type, ...]) -> None:
    """Checked before anything else (with no job to wait for, wait() returns at once:
    a NaN used to make it block for ever once there was one)."""
    rejects(sched, lambda: sched.wait(timeout=timeout), excs, "timeout")
    job_id = sched.add_command("true")
    rejects(sched, lambda: sched.wait([job_id], timeout=timeout), excs, "timeout")


def test_wait_timeout_forms(sched: GPUJobScheduler) -> None:
    assert sched.wait(timeout=math.inf).empty  # no limit, like None
    assert sched.wait(timeout=10**400).empty
    job_id = sched.add_command("true")  # (no engine: it stays queued)
    for timeout in (0, 0.0, np.float32(0.01), np.int64(0)):
        with pytest.raises(TimeoutError, match=job_id):
            sched.wait([job_id], timeout=timeout)


@pytest.mark.parametrize("ids", [5, 5.0, np.int64(5), b"1", object()])
def test_bad_wait_ids(sched: GPUJobScheduler, ids: Any) -> None:
    msg = rejects(sched, lambda: sched.wait(ids), (TypeError,), "ids")
    if isinstance(ids, (int, float, np.integer)):
        assert f"timeout={ids!r}" in msg  # wait(5) meant a time limit


@pytest.mark.parametrize("status", [5, b"queued", [5], ["queued", None], object()])
def test_bad_jobs_status_type(sched: GPUJobScheduler, status: Any) -> None:
    msg = rejects(sched, lambda: sched.jobs(status=status), (TypeError,), "status")
    assert "queued" in msg  # (what is accepted)


# ------------------------------------------------------------------ unknown options


def test_unknown_options_name_the_call(sched: GPUJobScheduler, script: str) -> None:
    """add_sweep passes its options on to each job: one add_job does not take is refused
    in add_sweep's name (not in that of an internal method), and nothing is queued."""
    for option in ("bogus", "command", "sweep", "hash", "params_style"):
        msg = rejects(
            sched,
            lambda o=option: sched.add_sweep(script, args="{1,2}", **{o: "x"}),  # type: ignore[misc]
            (TypeError,),
            "add_sweep",
        )
        assert repr(option) in msg and "make_spec" not in msg
    assert sched.store.sweeps() == []
    for call in (sched.add_job, sched.add_command):
        with pytest.raises(TypeError, match=rf"{call.__name__}\(\) got an unexpected keyword"):
            call(script, bogus=1)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("call", "field", "excs"),
    [
        (lambda s, j: s.logs(j, tail="3"), "tail", (TypeError,)),
        (lambda s, j: s.logs(j, tail=1.5), "tail", (TypeError,)),
        (lambda s, j: s.logs(j, tail=-1), "tail", (ValueError,)),
        (lambda s, j: s.jobs(first="2"), "first", (TypeError,)),
        (lambda s, j: s.jobs(last=2.0), "last", (TypeError,)),
        (lambda s, j: s.jobs(last=-1), "last", (ValueError,)),
    ],
)
def test_reading_calls_tell_type_from_value(
    sched: GPUJobScheduler, call: Callable[..., object], field: str, excs: tuple[type, ...]
) -> None:
    job_id = sched.add_command("true")
    rejects(sched, lambda: call(sched, job_id), excs, field)


@pytest.mark.parametrize(
    ("limit", "excs"), [("5", (TypeError,)), (2.0, (TypeError,)), (0, (ValueError,))]
)
def test_bad_sweep_limit(
    sched: GPUJobScheduler, script: str, limit: Any, excs: tuple[type, ...]
) -> None:
    rejects(sched, lambda: sched.add_sweep(script, args="{1,2}", limit=limit), excs, "limit")
