"""nbsched.checks: one value and what is accepted -> the value, or an error naming both.

(The checks behind SchedulerConfig and submissions are also tested through them, in
test_config.py and test_validation.py.)"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbsched.checks import (
    check_choice,
    check_number,
    check_priority,
    check_retries,
    check_sweep_limit,
    check_whole,
    check_word,
    gpus_from_text,
    priority_from_text,
    seconds_from_text,
    whole_from_text,
)
from nbsched.errors import InvalidTypeError, InvalidValueError


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
