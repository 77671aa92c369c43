"""Sweep expansion: the brace grammar, names, counting without expanding, errors."""

from __future__ import annotations

import itertools
import math
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbsched.errors import InvalidTypeError, InvalidValueError, SweepTooLargeError
from nbsched.formats.sweep import check_size, count_combinations, expand_args, expand_params


def argvs(template: str | list[str]) -> list[tuple[str, ...]]:
    return [argv for argv, _ in expand_args(template)]


def test_design_example() -> None:
    result = expand_args("--lr {0.1,0.01} --seed {1..3}")
    assert [argv for argv, _ in result] == [
        ("--lr", lr, "--seed", seed) for lr in ("0.1", "0.01") for seed in ("1", "2", "3")
    ]
    assert result[0][1] == {"lr": "0.1", "seed": "1"}
    assert result[-1][1] == {"lr": "0.01", "seed": "3"}
    assert count_combinations("--lr {0.1,0.01} --seed {1..3}") == 6


@pytest.mark.parametrize(
    ("template", "values"),
    [
        ("{1..5}", ["1", "2", "3", "4", "5"]),
        ("{1..9..2}", ["1", "3", "5", "7", "9"]),
        ("{1..8..3}", ["1", "4", "7"]),
        ("{5..1}", ["5", "4", "3", "2", "1"]),
        ("{5..1..2}", ["5", "3", "1"]),
        ("{1..5..-2}", ["1", "3", "5"]),
        ("{-2..1}", ["-2", "-1", "0", "1"]),
        ("{3..3}", ["3"]),
        ("{08..11}", ["08", "09", "10", "11"]),
        ("{a,b,c}", ["a", "b", "c"]),
        ("{a,}", ["a", ""]),
        ("{x,x}", ["x", "x"]),
    ],
)
def test_groups(template: str, values: list[str]) -> None:
    assert argvs(template) == [(v,) for v in values]
    assert count_combinations(template) == len(values)


def test_several_groups_in_one_token_first_varies_slowest() -> None:
    assert argvs("run{1,2}_{a,b}.txt") == [
        ("run1_a.txt",),
        ("run1_b.txt",),
        ("run2_a.txt",),
        ("run2_b.txt",),
    ]


@pytest.mark.parametrize(
    ("template", "names"),
    [
        ("--lr {0.1,0.01}", ["lr"]),
        ("--lr={a,b}", ["lr"]),
        ("-n {1,2}", ["n"]),
        ("--learning-rate {1,2}", ["learning-rate"]),
        ("{a,b} x {1,2}", ["p0", "p1"]),
        ("--lr {1,2} {3,4}", ["lr", "p0"]),
        ("--lr {1,2}e-{3,4}", ["lr", "lr_2"]),
        ("--lr {1,2} --lr {3,4}", ["lr", "lr_2"]),
        ("--x=1 {a,b}", ["p0"]),
        ("--name=run_{1..2}", ["name"]),
    ],
)
def test_names(template: str, names: list[str]) -> None:
    assert list(expand_args(template)[0][1]) == names


def test_param_value_is_the_group_value_not_the_token() -> None:
    assert expand_args("--name=run_{1..2}")[1] == (("--name=run_2",), {"name": "2"})


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{}", ("{}",)),
        ("{x}", ("{x}",)),
        ("{{a,b}}", ("{a}",)),
        ("\\{a,b\\}", ("{a,b}",)),
        ("'{a,b}'", ("{a,b}",)),
        ('"{1..3}"', ("{1..3}",)),
        ("{a\\,b,c}", ("a,b",)),
        ("{'x y',z}", ("x y",)),
        ('--cfg \'{"a": 1, "b": 2}\'', ("--cfg", '{"a": 1, "b": 2}')),
        ("''", ("",)),
        ("", ()),
    ],
)
def test_literals_and_escapes(template: str, expected: tuple[str, ...]) -> None:
    assert argvs(template)[0] == expected


def test_list_template_is_argv_as_is() -> None:
    assert argvs(["--msg", "a b; $(x)", "--lr", "{1,2}"]) == [
        ("--msg", "a b; $(x)", "--lr", "1"),
        ("--msg", "a b; $(x)", "--lr", "2"),
    ]
    assert argvs(["\\{a,b\\}", "x\\,y", "a\\d"]) == [("{a,b}", "x,y", "a\\d")]
    assert expand_args(["--lr", "{1,2}"])[0][1] == {"lr": "1"}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{1,2", "'{1,2': a '{' without '}'"),
        ("a}", "without '{'"),
        ("--lr {0.1, 0.01}", "a space inside braces"),
        ("{1..x}", "'{1..x}': bad range"),
        ("{a..z}", "bad range"),
        ("{1..5..0}", "step of 0"),
        ("{1..2..3..4}", "bad range"),
        ("{a,{b,c}}", "nested"),
        ("'open", "unbalanced ' quote"),
        ("x\\", "backslash"),
    ],
)
def test_errors(template: str, message: str) -> None:
    with pytest.raises(InvalidValueError, match="sweep argument") as info:
        expand_args(template)
    assert message in str(info.value)
    with pytest.raises(InvalidValueError):
        count_combinations(template)


def test_wrong_types() -> None:
    with pytest.raises(InvalidTypeError):
        expand_args(["--lr", 1])  # type: ignore[list-item]
    with pytest.raises(InvalidTypeError):
        expand_args(3)  # type: ignore[arg-type]


def test_huge_sweep_is_counted_and_refused_cheaply() -> None:
    template = "--a {1..1000} --b {1..1000} --c {1..1000} --d {0..999999999999}"
    assert count_combinations(template) == 10**9 * 10**12
    with pytest.raises(InvalidValueError, match="exceeds the limit of 5000"):
        expand_args(template, limit=5000)


def test_check_size() -> None:
    check_size(5000, 5000)
    with pytest.raises(InvalidValueError) as info:
        check_size(12000, 5000)
    assert str(info.value) == (
        "sweep of 12000 jobs exceeds the limit of 5000; pass limit=12000 to submit it anyway"
    )
    # front ends reword the advice in their own terms (--limit N) from these
    assert isinstance(info.value, SweepTooLargeError)
    assert (info.value.jobs, info.value.limit) == (12000, 5000)


def test_expand_params() -> None:
    result = expand_params({"lr": [0.1, 0.01], "seed": range(1, 3)})
    assert result == [
        (("--lr", "0.1", "--seed", "1"), {"lr": "0.1", "seed": "1"}),
        (("--lr", "0.1", "--seed", "2"), {"lr": "0.1", "seed": "2"}),
        (("--lr", "0.01", "--seed", "1"), {"lr": "0.01", "seed": "1"}),
        (("--lr", "0.01", "--seed", "2"), {"lr": "0.01", "seed": "2"}),
    ]
    assert expand_params({"lr": ["a b"]}, "--{name}={value}") == [(("--lr=a b",), {"lr": "a b"})]
    assert expand_params({}) == [((), {})]
    with pytest.raises(InvalidValueError, match=r"lr=\[\]"):
        expand_params({"lr": []})
    for bad in ({"lr": 0.1}, {"lr": "0.1"}, [("lr", [1])]):
        with pytest.raises(InvalidTypeError):
            expand_params(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="style"):
        expand_params({"lr": [1]}, "--{nme}")
    for same_flag in ("--x", "--x={value}"):  # every parameter would get the same flag
        with pytest.raises(InvalidValueError, match=r"must hold \{name\}"):
            expand_params({"lr": [1], "seed": [3]}, same_flag)
    with pytest.raises(InvalidValueError, match="limit"):
        expand_params({"a": range(100), "b": range(100)}, limit=9999)


# ------------------------------------------------------------ properties

_item = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6).filter(
    lambda s: not s.startswith("--f")
)
_range = st.tuples(st.integers(-9, 9), st.integers(-9, 9), st.integers(1, 4))


@st.composite
def _templates(draw: st.DrawFn) -> tuple[str, list[list[str]]]:
    """A shell template of flags with list and range groups, and each group's values."""
    words: list[str] = []
    choices: list[list[str]] = []
    for k in range(draw(st.integers(0, 4))):
        words.append(f"--f{k}")
        if draw(st.booleans()):
            a, b, step = draw(_range)
            words.append(f"{{{a}..{b}..{step}}}")
            choices.append(
                [str(v) for v in (range(a, b + 1, step) if a <= b else range(a, b - 1, -step))]
            )
        else:
            items = draw(st.lists(_item, min_size=2, max_size=4))
            # Always quoted: shlex.quote leaves a bare ',' unquoted, which would split the group.
            quoted = ["'" + i.replace("'", "'\"'\"'") + "'" for i in items]
            words.append("{" + ",".join(quoted) + "}")
            choices.append(items)
        if draw(st.booleans()):
            words.append(shlex.quote(draw(_item)))  # a literal in between
    return " ".join(words), choices


@settings(max_examples=300, deadline=None)
@given(_templates())
def test_expansion_is_the_cartesian_product(case: tuple[str, list[list[str]]]) -> None:
    template, choices = case
    result = expand_args(template)
    assert len(result) == math.prod(len(c) for c in choices) == count_combinations(template)
    names = [f"f{k}" for k in range(len(choices))]
    got = [tuple(params[n] for n in names) for _, params in result]
    assert got == list(itertools.product(*choices))  # nothing lost or doubled, in order
    for argv, params in result:
        for name, value in params.items():
            assert argv[argv.index(f"--{name}") + 1] == value


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.text(alphabet="{},.1-2 '\"\\a", max_size=30))
def test_random_templates_raise_only_value_errors(template: str) -> None:
    try:
        n = count_combinations(template)
    except InvalidValueError:
        return
    if n <= 1000:
        assert len(expand_args(template)) == n


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="{}"), max_size=30))
def test_splits_like_shlex_without_braces(template: str) -> None:
    try:
        expected = tuple(shlex.split(template))
    except ValueError:
        with pytest.raises(InvalidValueError):
            expand_args(template)
        return
    assert argvs(template) == [expected]
