"""nbsched.checks: one value and what is accepted -> the value, or an error naming both.

(The checks behind SchedulerConfig and submissions are also tested through them, in
test_config.py and test_validation.py.)"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from IPython.core.error import UsageError

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.checks import (
    check_choice,
    check_count,
    check_number,
    check_priority,
    check_retries,
    check_sweep_limit,
    check_timeout,
    check_whole,
    check_word,
    gpu_count_from_text,
    gpus_from_text,
    lines_from_text,
    priority_from_text,
    retries_from_text,
    rows_from_text,
    seconds_from_text,
    sweep_limit_from_text,
    whole_from_text,
)
from nbsched.cli import parse
from nbsched.errors import InvalidTypeError, InvalidValueError
from nbsched.formats.gpulist import MAX_GPU_ID
from nbsched.jupyter import SubmitForm
from nbsched.jupyter.verbs import VERBS as MAGIC_VERBS


def test_numbers() -> None:
    assert check_whole("n", 3, 1) == 3 and type(check_whole("n", True + 2, 1)) is int
    with pytest.raises(InvalidTypeError, match=r"^n=True: expected a whole number >= 1$"):
        check_whole("n", True, 1)
    with pytest.raises(InvalidValueError, match=r"^n=9: must be <= 4$"):
        check_whole("n", 9, 1, 4)
    assert check_number("x", 1, 0.0, 1.0) == 1.0
    with pytest.raises(InvalidValueError, match=r"^x=0: must be in \(0.0, 1.0\]$"):
        check_number("x", 0, 0.0, 1.0)
    with pytest.raises(InvalidValueError, match=r"^x=nan: must be a finite number >= 0$"):
        check_number("x", math.nan, 0.0, math.inf, low_open=False)
    with pytest.raises(InvalidValueError, match=r"^priority=9223372036854775808: must be in"):
        check_priority(2**63)
    assert check_retries(2, None) == 2
    with pytest.raises(InvalidValueError, match=r"^max_retries=-1: expected a whole number"):
        check_retries(-1, -1)
    with pytest.raises(InvalidValueError, match=r"^limit=0: expected a whole number of jobs"):
        check_sweep_limit(0)


def test_words() -> None:
    assert check_choice("executor", "ray", ("direct", "ray")) == "ray"
    with pytest.raises(InvalidValueError, match=r"^executor='x': accepted values are a, b$"):
        check_choice("executor", "x", ("a", "b"))
    assert check_word("name", None, "a string") is None
    with pytest.raises(InvalidValueError, match=r"^conda_env=' ': expected an env$"):
        check_word("conda_env", " ", "an env", blank=False)
    with pytest.raises(InvalidValueError, match="contains a NUL byte"):
        check_word("name", "a\0b", "a string")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x", "'x' is not a number of GPUs; use a fraction in (0, 1] or a whole number"),
        ("1.5", "1.5 is not accepted: use a fraction in (0, 1] or a whole number of GPUs"),
        ("0", "0 is not accepted: use a fraction in (0, 1] or a whole number of GPUs"),
    ],
)
def test_gpus_from_text(text: str, message: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        gpus_from_text(text)
    assert str(info.value).startswith(message)


def test_words_typed() -> None:
    assert gpus_from_text("0.5") == 0.5 and gpus_from_text("2") == 2.0
    assert whole_from_text("3", 1, "a number of GPUs") == 3
    with pytest.raises(InvalidValueError, match=r"^0 is not accepted: expected a GPU index \("):
        whole_from_text("0", 1, "a GPU index")
    with pytest.raises(InvalidValueError, match=r"^'a' is not accepted: expected lines \("):
        whole_from_text("a", 0, "lines")
    assert priority_from_text("-3") == -3
    with pytest.raises(InvalidValueError, match=r"^'p' is not accepted: expected a whole number"):
        priority_from_text("p")
    assert seconds_from_text("0") == 0.0
    with pytest.raises(InvalidValueError, match=r"^'nan' is not accepted: expected seconds >= 0$"):
        seconds_from_text("nan")


@given(st.text(max_size=12))
def test_typed_words_give_a_value_or_a_value_error(text: str) -> None:
    """Whatever is typed: a value, or an InvalidValueError (a ValueError) naming it."""
    for check in (gpus_from_text, priority_from_text, seconds_from_text):
        try:
            check(text)
        except InvalidValueError as exc:
            assert repr(text) in str(exc) or text in str(exc)


# -- one rule per value: a typed word, the engine's value and every front end agree ---------

#: Each reader of a typed word, and the rule the engine applies to the number it reads.
READERS = [
    (priority_from_text, check_priority),
    (retries_from_text, lambda v: check_retries(v, v)),
    (sweep_limit_from_text, check_sweep_limit),
    (gpu_count_from_text, lambda v: check_whole("num_gpus", v, 1, MAX_GPU_ID + 1)),
    (lines_from_text, lambda v: check_count("tail", v)),
    (rows_from_text, lambda v: check_count("first", v)),
]


@given(st.one_of(st.integers(), st.integers(-3, 3), st.text(max_size=6)))
def test_a_typed_number_is_accepted_exactly_when_the_engine_accepts_it(value: object) -> None:
    """``--priority 9223372036854775808`` or ``--retries -1`` is refused where it is
    typed, by the rule the engine would refuse it with, not later by another one."""
    text = str(value)
    for read, rule in READERS:
        try:
            expected: object = rule(int(text))
        except ValueError:  # (not a whole number, or the rule's InvalidValueError)
            expected = None
        try:
            got: object = read(text)
        except InvalidValueError as exc:
            got = None
            assert text in str(exc) or repr(text) in str(exc), (read, text)
        assert got == expected, (read, text)


@given(st.one_of(st.floats(), st.integers(-3, 3), st.text(max_size=6)))
def test_typed_seconds_are_accepted_exactly_when_wait_accepts_them(value: object) -> None:
    text = str(value)
    try:
        limit = check_timeout(float(text))
        expected: float | None = math.inf if limit is None else limit
    except ValueError:
        expected = None
    try:
        got: float | None = seconds_from_text(text)
    except InvalidValueError:
        got = None
    assert got == expected


def test_typed_words_out_of_the_engines_range_say_the_range() -> None:
    with pytest.raises(
        InvalidValueError,
        match=r"^9223372036854775808 is not accepted: expected a "
        r"whole number in -9223372036854775808\.\.9223372036854775807 \(lower",
    ):
        priority_from_text(str(2**63))
    with pytest.raises(InvalidValueError, match=r"re-runs \(a whole number in 0\.\.9223"):
        retries_from_text(str(2**63))
    with pytest.raises(InvalidValueError, match=r"re-runs \(a whole number >= 0\)$"):
        retries_from_text("-1")
    with pytest.raises(InvalidValueError, match=r"^1025 is not accepted: .* in 1\.\.1024\)$"):
        gpu_count_from_text("1025")
    assert lines_from_text("all") is None and lines_from_text("0") == 0
    assert seconds_from_text("inf") == math.inf


@pytest.fixture
def form(tmp_path: Path) -> Iterator[SubmitForm]:
    """A form on a scheduler that is never started (what it queues stays queued)."""
    config = SchedulerConfig(state_dir=tmp_path / "state", gpu_provider="simulated", num_gpus=2)
    s = GPUJobScheduler(config=config)
    script = tmp_path / "train.py"
    script.write_text("print(1)\n")
    f = SubmitForm(s, conda_env_names=[])
    f.script.value = str(script)
    yield f
    s.close()


@pytest.mark.parametrize("text", ["1.5", "0", "-1", "lots", "nan", "2.5", "inf"])
def test_the_form_the_command_and_the_magic_refuse_a_gpus_value_in_the_same_words(
    form: SubmitForm, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    """One rule, one message: ``--gpus 1.5`` in a terminal or a notebook and 1.5 in the
    form's GPUs field are refused with the words of :func:`gpus_from_text`."""
    with pytest.raises(InvalidValueError) as info:
        gpus_from_text(text)
    words = str(info.value)
    with pytest.raises(UsageError) as magic:
        MAGIC_VERBS["run"].parser.parse_args(["--gpus", text])
    assert str(magic.value).startswith(f"argument --gpus: {words}")
    with pytest.raises(SystemExit):
        parse(["run", "--gpus", text, "--", "true"])
    assert f"nbsched run: argument --gpus: {words} (see" in capsys.readouterr().err
    form.gpus.value = text
    assert form.submit() == []
    assert form.error == f"GPUs: {words}"
