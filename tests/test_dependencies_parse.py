"""The ``after=`` value (issue 17): every accepted form becomes one canonical text, and
that text reads back as the same dependencies (property tests, as for every parser)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbsched.checks import check_after
from nbsched.errors import InvalidTypeError, InvalidValueError
from nbsched.formats.after import KINDS, describe_unmet, format_after, judge, parse_after

targets = st.one_of(st.integers(1, 10**6).map(str), st.integers(1, 999).map(lambda n: f"sw{n}"))
deps = st.lists(st.tuples(st.sampled_from(KINDS), targets), min_size=1, max_size=8)


@given(deps)
def test_the_canonical_text_reads_back(given_deps: list[tuple[str, str]]) -> None:
    text = format_after(given_deps)
    assert text is not None
    assert set(parse_after(text)) == set(given_deps)
    assert check_after(text) == text  # (what jobs() shows can be given again)
    by_kind: dict[str, list[str]] = {}
    for kind, target in given_deps:
        by_kind.setdefault(kind, []).append(target)
    assert check_after(by_kind) == text


@pytest.mark.parametrize(
    "value, text",
    [
        (12, "ok:12"),
        ("12", "ok:12"),
        ("12, 13,sw3", "ok:12,13,sw3"),
        ([12, "sw3", 12], "ok:12,sw3"),
        ({"any": "sw3", "ok": [1, 2]}, "ok:1,2;any:sw3"),
        ("started:4; notok:5", "notok:5;started:4"),
        (None, None),
    ],
)
def test_the_forms_after_takes(value: object, text: str | None) -> None:
    assert check_after(value) == text


@pytest.mark.parametrize(
    "value, error, words",
    [
        (1.5, InvalidTypeError, "after=1.5: expected a job id (12), a sweep id (sw3)"),
        (True, InvalidTypeError, "after=True: expected"),
        ("0", InvalidValueError, "'0' is not a job id (12) or a sweep id (sw3)"),
        ("sw", InvalidValueError, "'sw' is not a job id"),
        ({"afterok": 1}, InvalidValueError, "unknown kind 'afterok'; the kinds are ok, notok"),
        ("", InvalidValueError, "after='': names no job"),
        ([], InvalidValueError, "names no job"),
    ],
)
def test_what_after_refuses(value: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as info:
        check_after(value)
    assert words in str(info.value)


def test_judging_a_dependency() -> None:
    assert judge("ok", "queued", False) is None
    assert judge("ok", "running", True) is None and judge("started", "running", True)
    assert judge("ok", "succeeded", True) and judge("ok", "failed", True) is False
    assert judge("notok", "cancelled", False) and judge("notok", "succeeded", True) is False
    assert judge("any", "cancelled", False)
    assert judge("started", "cancelled", False) is False and judge("started", "failed", True)
    assert describe_unmet([("ok", 1), ("ok", 2), ("started", 3)]) == (
        "waits for jobs 1, 2 to succeed and job 3 to start"
    )
