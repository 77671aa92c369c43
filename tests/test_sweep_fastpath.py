"""add_sweep's fast path gives what validating every combination in full gave.

A sweep validates its first combination (of each ``--llm`` model) with ``make_spec``
and the others only for what their arguments change (:class:`nbsched.jobspec.
ArgsVariants`); its specs are the first's with other arguments (``JobSpec.evolve``),
its hashes from :func:`nbsched.jobs.job_hasher`, its argument lists from a plan made
once (:func:`nbsched.formats.sweep.iter_args`).  Each is compared here with the slow
way it replaced: ``make_spec`` per combination, ``dataclasses.replace``, ``job_hash``,
and the expansion joining every token's parts.
"""

from __future__ import annotations

import gc
import itertools
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.errors import InvalidValueError
from nbsched.formats.sweep import Expansion, _Group, _names, _parse, expand_params, iter_args
from nbsched.jobs import JobSpec, compact_json, job_hash, job_hasher
from nbsched.sweeps import PAUSE_GC_FROM, submit_sweep

LLM = '{"default_requirement": 1, "models": {"small": 0.5, "big": 3, "tiny": 0.25}}'


@pytest.fixture
def sched(tmp_path: Path) -> Iterator[GPUJobScheduler]:
    llm = tmp_path / "llm.json"
    llm.write_text(LLM)
    (tmp_path / "train.py").write_text("pass\n")
    config = SchedulerConfig(
        state_dir=tmp_path / "state",
        gpu_provider="simulated",
        num_gpus=4,
        gpu_monitor_interval_s=0.0,
        llm_config_file=str(llm),
    )
    s = GPUJobScheduler(config=config)
    yield s
    s.close()


def reference_expansion(template: str | list[str]) -> list[Expansion]:
    """The expansion as it was: every token's parts joined for every combination."""
    parsed = _parse(template)
    groups = [p for parts in parsed for p in parts if isinstance(p, _Group)]
    names = _names(parsed)
    out: list[Expansion] = []
    for combo in itertools.product(*(list(g.values()) for g in groups)):
        chosen = iter(combo)
        argv = tuple(
            "".join(p if isinstance(p, str) else next(chosen) for p in parts) for parts in parsed
        )
        out.append((argv, dict(zip(names, combo, strict=True))))
    return out


def slow_specs(
    s: GPUJobScheduler, sweep_id: str, args: Any, params: Any, style: str, fields: dict[str, Any]
) -> list[JobSpec]:
    """Each combination validated in full, as add_sweep did before its fast path."""
    from_params = expand_params(params, style) if params else [((), {})]
    out = []
    for (argv_a, vals_a), (argv_p, vals_p) in itertools.product(
        reference_expansion(args or ""), from_params
    ):
        spec = s.make_spec(args=(*argv_a, *argv_p), **fields)
        digest = job_hash(spec.script or "", spec.conda_env, spec.args, spec.allowed_gpus)
        out.append(replace(spec, params={**vals_a, **vals_p}, hash=digest, sweep=sweep_id))
    return out


def fast_specs(s: GPUJobScheduler, **sweep: Any) -> tuple[str, list[JobSpec]]:
    """The sweep's id and the specs add_sweep handed to submit (and what the store kept)."""
    sub = s._submitter()
    handed: list[JobSpec] = []
    real = sub.submit

    def spy(specs: Any, **kw: Any) -> list[str]:
        got = list(specs)
        handed.extend(got)
        return real(got, **kw)

    sub.submit = spy  # type: ignore[method-assign]
    ids = submit_sweep(sub, **sweep)
    stored = [s.store.get(i).spec for i in ids.queued]  # (what this call queued)
    first_of: dict[str | None, JobSpec] = {}
    for spec in handed:
        first_of.setdefault(spec.hash, spec)
    assert stored == [first_of[spec.hash] for spec in stored]
    return ids.sweep_id, handed


CASES: list[dict[str, Any]] = [
    {"args": "--llm {small,big,unlisted,tiny} --seed {1..3}"},
    {"args": "--llm={small,big} --x {1,2}", "allowed_gpus": [0, 1, 3]},
    {"args": "--seed {1..4}"},  # (no --llm: the config's default for every one)
    {"args": "--a {1,2}", "params": {"llm": ["small", "big"], "lr": [0.1, 1e-3]}},
    {"args": ["--llm", "{tiny,small}", "--tag=run{1,2}_x{}"], "env": {"A": "1", "B": "é"}},
    {"args": "", "params": {"lr": [1, 2]}, "param_style": "--{name}={value}"},
    {"args": "x{}{1,2}y '{\"k\":1}' {a,b}", "required_gpus": 0.5, "name": "n"},
    {
        "args": "--llm {big,small} --s {01..10..4}",
        "conda_env": "base",
        "priority": -3,
        "max_retries": 2,
        "launcher": "torchrun",
        "gpu_arg": "--gpus",
        "allowed_gpus": "0-2",
    },
]


@pytest.mark.parametrize("case", CASES, ids=range(len(CASES)))
def test_the_fast_path_gives_the_specs_of_the_slow_path(
    sched: GPUJobScheduler, tmp_path: Path, case: dict[str, Any]
) -> None:
    case = {"script": "train.py", "cwd": tmp_path, **case}
    sweep_id, fast = fast_specs(sched, **case)
    fields = {k: v for k, v in case.items() if k not in ("args", "params", "param_style")}
    style = case.get("param_style", "--{name}")
    slow = slow_specs(sched, sweep_id, case["args"], case.get("params"), style, fields)
    assert fast == slow and len({spec.hash for spec in fast}) == len(fast)


def test_the_fast_path_matches_on_random_sweeps(sched: GPUJobScheduler, tmp_path: Path) -> None:
    @given(
        models=st.lists(st.sampled_from(["small", "big", "tiny", "other"]), min_size=1, max_size=4),
        seeds=st.lists(st.integers(-5, 99), min_size=1, max_size=3, unique=True),
        allowed=st.none() | st.sets(st.integers(0, 3), min_size=3),
        env=st.dictionaries(st.sampled_from("ABC"), st.text("xyz é", max_size=3), max_size=2),
        required=st.none() | st.sampled_from([0.5, 1, 2]),
        in_params=st.booleans(),
    )
    @settings(max_examples=20, deadline=None)
    def check(
        models: list[str],
        seeds: list[int],
        allowed: set[int] | None,
        env: dict[str, str],
        required: float | None,
        in_params: bool,
    ) -> None:
        fields: dict[str, Any] = {"script": "train.py", "cwd": tmp_path, "env": env}
        fields["required_gpus"] = required
        fields["allowed_gpus"] = sorted(allowed) if allowed is not None else None
        args = f"--llm {{{','.join(models)},}}"
        params = {"seed": seeds} if in_params else None
        if not in_params:
            args += f" --seed {{{','.join(map(str, seeds))},}}"
        try:
            sweep_id, fast = fast_specs(sched, args=args, params=params, **fields)
        except InvalidValueError as exc:  # (a model needs more GPUs than allowed)
            with pytest.raises(InvalidValueError) as slow_exc:
                slow_specs(sched, "sw0", args, params, "--{name}", fields)
            assert str(slow_exc.value) in str(exc)
            return
        assert fast == slow_specs(sched, sweep_id, args, params, "--{name}", fields)

    check()


def test_a_later_combination_is_refused_with_make_specs_words(
    sched: GPUJobScheduler, tmp_path: Path
) -> None:
    """A NUL byte in the second combination only, and a model too big in the third: the
    fast path lets make_spec say it, naming the combination as before."""
    with pytest.raises(InvalidValueError) as exc:
        sched.add_sweep("train.py", params={"x": ["a", "b\0"]}, cwd=tmp_path)
    with pytest.raises(InvalidValueError) as slow:
        sched.make_spec(script="train.py", args=["--x", "b\0"], cwd=tmp_path)
    assert str(exc.value) == f"{slow.value} (in the sweep's combination x=b\0)"
    with pytest.raises(InvalidValueError) as exc:
        sched.add_sweep(
            "train.py", args="--llm {small,tiny,big}", allowed_gpus=[0, 1], cwd=tmp_path
        )
    assert str(exc.value).endswith("(in the sweep's combination llm=big)")
    assert sched.store.sweeps() == [] and sched.jobs().empty


@pytest.mark.parametrize(
    "template",
    [
        "",
        "--lr {0.1,0.01} --seed {1..3}",
        "run{1,2}_{a,b} lit",
        "model{,_large} {x,x}",
        '\'{"a":1,"b":2}\' {1..3}',
        "\\{a,b\\} {x,y} {}",
        "{{a,b}} {x}",
        "--name=run_{01..10..3} -n {5..1}",
        "a{b,c}d{1..2}e{} {q,r}",
        ["--x", "{1,2}", "pre\\{x\\}{a,b}", "{}{c,d}{"[:-1]],
        ["{1,2}"],
        ["plain"],
    ],
)
def test_the_expansion_plan_gives_the_joined_parts(template: str | list[str]) -> None:
    assert list(iter_args(template)) == reference_expansion(template)


@pytest.mark.parametrize(
    "value",
    ['a"é\x01\\', None, 1.5, -0.0, 10**30, [1, "x", None, True, {"k": (1, 2)}], {}, {"b": 1}],
)
def test_compact_json_is_json_dumps_compact(value: object) -> None:
    assert compact_json(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize("allowed", [None, (), (0, 2)])
@pytest.mark.parametrize("env", [None, "", "base"])
def test_job_hasher_is_job_hash(allowed: tuple[int, ...] | None, env: str | None) -> None:
    args = ("--x", 'é"\\', "")
    payload = ["/s é.py", env or "", list(args), list(allowed) if allowed else None]
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    import hashlib

    expected = hashlib.sha256(text.encode()).hexdigest()[:32]
    assert (
        job_hasher("/s é.py", env, allowed)(args)
        == expected
        == job_hash("/s é.py", env, args, allowed)
    )


@pytest.mark.parametrize("enabled", [True, False])
def test_a_big_sweep_pauses_the_collector(
    sched: GPUJobScheduler, tmp_path: Path, enabled: bool
) -> None:
    """A big add_sweep pauses the cyclic garbage collector while it makes its jobs (a
    small one does not): it runs again after, also when the sweep is refused, and
    stays off if it was off."""
    sub = sched._submitter()
    real, running = sub.submit, []

    def spy(specs: Any, **kw: Any) -> list[str]:
        running.append(gc.isenabled())
        return real(specs, **kw)

    sub.submit = spy  # type: ignore[method-assign]
    big = f"--s {{1..{PAUSE_GC_FROM}}}"
    (gc.enable if enabled else gc.disable)()
    try:
        ids = submit_sweep(sub, "train.py", big, cwd=tmp_path, limit=PAUSE_GC_FROM)
        assert len(ids) == PAUSE_GC_FROM and gc.isenabled() is enabled
        assert len(submit_sweep(sub, "train.py", "--t {1..9}", cwd=tmp_path)) == 9
        assert running == [False, enabled] and gc.isenabled() is enabled
        with pytest.raises(InvalidValueError):
            sched.add_sweep(
                "train.py",
                args=f"--llm {{small,big}} {big}",
                allowed_gpus=[0],
                cwd=tmp_path,
                limit=2 * PAUSE_GC_FROM,
            )
        assert gc.isenabled() is enabled
    finally:
        gc.enable()
