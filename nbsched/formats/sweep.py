"""Sweep expansion: one argument template -> the argument lists of many jobs.

Grammar (close to bash brace expansion):

* A string template is split like a shell (:mod:`shlex`, POSIX rules).  A list
  template is taken as argv as it is; there ``\\{``, ``\\}`` and ``\\,`` are escapes.
* ``{a,b,c}`` is a list, ``{1..5}`` an inclusive integer range, ``{1..9..2}`` a range
  with a step.  ``{5..1}`` counts down; the step's sign is ignored (bash does the
  same) and a step of 0 is an error.  Zero-padded ends pad every value:
  ``{01..10}`` -> ``01 02 ... 10``.  Numbers have at most 18 digits.
* Several groups, in one token or in several, give the cartesian product in
  order: the first group varies slowest.  ``run{1,2}_{a,b}`` is one token with two.
* List items may be empty (``model{,_large}`` -> ``model``, ``model_large``) and
  may repeat; the count is always the product of the group sizes.
* Only *unquoted, unescaped* braces, commas and ``..`` are grammar: ``'{"a":1,"b":2}'``
  and ``\\{a,b\\}`` stay literal, and ``{'x y',z}`` has the items ``x y`` and ``z``.
* A brace pair with neither comma nor ``..`` is literal (``{}``, ``{x}``); so is one
  that only holds other groups (``{{a,b}}`` -> ``{a}``, ``{b}``).  Nested groups
  (``{a,{b,c}}``) are an error, as are unbalanced braces (``{1,2``, ``a}``), a
  ``..`` that is not an integer range (``{1..x}``), bad quoting.
* Each group gets a parameter name: the flag before the brace token (``--lr {..}``
  and ``-n {..}`` -> ``lr``, ``n``; inner dashes kept), the flag of ``--lr={..}``, or
  else ``p0``, ``p1``, ... in order.  A name used twice gets ``_2``, ``_3``, ...
* An empty template gives one job with no arguments.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from ..errors import InvalidTypeError, InvalidValueError, SweepTooLargeError

#: One job of a sweep: its argv and the value each parameter took.
Expansion = tuple[tuple[str, ...], dict[str, str]]

_RANGE = re.compile(r"(-?[0-9]{1,18})\.\.(-?[0-9]{1,18})(?:\.\.(-?[0-9]{1,18}))?", re.ASCII)
_FLAG = re.compile(r"--?([A-Za-z_][\w.-]*)", re.ASCII)
_WHITESPACE = " \t\r\n"

Chars = list[tuple[str, bool]]  # each character and whether it is active grammar


@dataclass(frozen=True)
class _Group:
    """One brace group: the values it takes, listed or as a range."""

    items: tuple[str, ...] | None = None
    span: range | None = None
    width: int = 0

    def __len__(self) -> int:
        return len(self.items) if self.items is not None else len(self.span or ())

    def values(self) -> Iterator[str]:
        if self.items is not None:
            yield from self.items
        else:
            for v in self.span or ():
                yield f"{v:0{self.width}d}"


Part = str | _Group


def _shell_chars(template: str) -> list[Chars]:
    """Split like ``shlex.split`` and mark which characters were quoted or escaped."""
    tokens: list[Chars] = []
    token: Chars | None = None
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c in _WHITESPACE:
            if token is not None:
                tokens.append(token)
                token = None
            i += 1
            continue
        if token is None:
            token = []
        if c == "\\":
            if i + 1 >= n:
                raise InvalidValueError(f"sweep arguments {template!r}: a backslash ends them")
            token.append((template[i + 1], False))
            i += 2
        elif c in "'\"":
            end = i + 1
            while end < n and template[end] != c:
                if c == '"' and template[end] == "\\" and end + 1 < n:
                    if template[end + 1] in '\\"':
                        end += 1
                    else:
                        token.append(("\\", False))
                        end += 1
                        continue
                token.append((template[end], False))
                end += 1
            if end >= n:
                raise InvalidValueError(f"sweep arguments {template!r}: unbalanced {c} quote")
            i = end + 1
        else:
            token.append((c, True))
            i += 1
    if token is not None:
        tokens.append(token)
    return tokens


def _list_chars(word: str) -> Chars:
    chars: Chars = []
    i = 0
    while i < len(word):
        if word[i] == "\\" and i + 1 < len(word) and word[i + 1] in "{},":
            chars.append((word[i + 1], False))
            i += 2
        else:
            chars.append((word[i], True))
            i += 1
    return chars


def _text(chars: Chars) -> str:
    return "".join(c for c, _ in chars)


def _has_dots(chars: Chars) -> bool:
    return any(
        a == "." and b == "." and x and y for (a, x), (b, y) in zip(chars, chars[1:], strict=False)
    )


def _bad(token: Chars, why: str) -> InvalidValueError:
    return InvalidValueError(f"sweep argument {_text(token)!r}: {why}")


def _group(token: Chars, content: Chars) -> _Group | None:
    """The group a brace pair's content makes, or ``None`` when the braces are literal."""
    if any(c == "," and active for c, active in content):
        items: list[str] = []
        current: Chars = []
        for c, active in content:
            if c == "," and active:
                items.append(_text(current))
                current = []
            else:
                current.append((c, active))
        items.append(_text(current))
        return _Group(items=tuple(items))
    if not _has_dots(content):
        return None
    text = _text(content)
    match = _RANGE.fullmatch(text)
    if match is None:
        raise _bad(token, f"bad range {{{text}}}: expected {{START..END}} or {{START..END..STEP}}")
    start_s, end_s, step_s = match.groups()
    step = abs(int(step_s)) if step_s is not None else 1
    if step == 0:
        raise _bad(token, f"range {{{text}}} has a step of 0")
    start, end = int(start_s), int(end_s)
    padded = any(re.match(r"-?0[0-9]", s) for s in (start_s, end_s))
    width = max(len(start_s), len(end_s)) if padded else 0
    span = range(start, end + 1, step) if start <= end else range(start, end - 1, -step)
    return _Group(span=span, width=width)


def _parts(token: Chars) -> list[Part]:
    """A token as literal strings and groups; raises on bad grammar."""
    stack: list[int] = []
    pairs: list[tuple[int, int]] = []
    for i, (c, active) in enumerate(token):
        if not active:
            continue
        if c == "{":
            stack.append(i)
        elif c == "}":
            if not stack:
                raise _bad(token, "a '}' without '{'; escape a literal brace as \\} or quote it")
            pairs.append((stack.pop(), i))
    if stack:
        raise _bad(
            token,
            "a '{' without '}'; escape a literal brace as \\{ or quote it "
            "(a space inside braces splits the argument)",
        )
    groups: dict[int, tuple[int, _Group]] = {}
    for open_, close in pairs:
        inner = [(o, c) for o, c in pairs if open_ < o and c < close]
        if inner:
            own = [
                ch
                for k, ch in enumerate(token[open_ + 1 : close], start=open_ + 1)
                if not any(o <= k <= c for o, c in inner)
            ]
            if any(c == "," and a for c, a in own) or _has_dots(own):
                raise _bad(token, "nested brace groups are not supported; write one list")
            continue
        group = _group(token, token[open_ + 1 : close])
        if group is not None:
            groups[open_] = (close, group)
    parts: list[Part] = []
    literal: list[str] = []
    i = 0
    while i < len(token):
        if i in groups:
            close, group = groups[i]
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(group)
            i = close + 1
        else:
            literal.append(token[i][0])
            i += 1
    if literal or not parts:
        parts.append("".join(literal))
    return parts


def _parse(template: str | Sequence[str]) -> list[list[Part]]:
    if isinstance(template, str):
        tokens = _shell_chars(template)
    elif isinstance(template, Sequence):
        for word in template:
            if not isinstance(word, str):
                raise InvalidTypeError(f"sweep argument {word!r}: expected a string")
        tokens = [_list_chars(word) for word in template]
    else:
        raise InvalidTypeError(f"sweep arguments {template!r}: expected a string or a list")
    return [_parts(token) for token in tokens]


def _names(parsed: list[list[Part]]) -> list[str]:
    names: list[str] = []
    unnamed = 0
    for t, parts in enumerate(parsed):
        previous = parsed[t - 1] if t > 0 else None
        flag = None
        if previous is not None and len(previous) == 1 and isinstance(previous[0], str):
            m = _FLAG.fullmatch(previous[0])
            flag = m.group(1) if m else None
        head = parts[0] if isinstance(parts[0], str) else ""
        m = _FLAG.match(head)
        if m and head[m.end() : m.end() + 1] == "=":
            flag = m.group(1)
        for part in parts:
            if not isinstance(part, _Group):
                continue
            name = flag
            if name is None:
                name = f"p{unnamed}"
                unnamed += 1
            base, k = name, 2
            while name in names:
                name, k = f"{base}_{k}", k + 1
            names.append(name)
    return names


def count_combinations(template: str | Sequence[str]) -> int:
    """How many jobs a template expands to, computed without expanding it."""
    return math.prod(len(p) for parts in _parse(template) for p in parts if isinstance(p, _Group))


def check_size(n: int, limit: int) -> None:
    """Refuse a sweep of more than ``limit`` jobs."""
    if n > limit:
        raise SweepTooLargeError(
            f"sweep of {n} jobs exceeds the limit of {limit}; pass limit={n} to submit it anyway",
            jobs=n,
            limit=limit,
        )


def expand_args(template: str | Sequence[str], *, limit: int | None = None) -> list[Expansion]:
    """Every argv of a sweep template with the parameter values it took (see the module doc).

    With ``limit``, a sweep of more jobs is refused before anything is expanded.
    """
    return list(iter_args(template, limit=limit))


def iter_args(template: str | Sequence[str], *, limit: int | None = None) -> Iterator[Expansion]:
    """:func:`expand_args` one combination at a time (a sweep of 100,000 jobs need not
    hold them all); the template is parsed, and refused, at once."""
    parsed = _parse(template)
    groups = [p for parts in parsed for p in parts if isinstance(p, _Group)]
    if limit is not None:
        check_size(math.prod(len(g) for g in groups), limit)
    names = _names(parsed)
    argv_of = _argv_maker(parsed)
    combos = itertools.product(*(list(g.values()) for g in groups))
    return ((argv_of(combo), dict(zip(names, combo, strict=True))) for combo in combos)


def _argv_maker(parsed: list[list[Part]]) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """The argv of a combination (its groups' values, in order), made without going
    through the parts again: each token is a format of the values (``run{0}_{1}``), and
    where each group is a whole token (``--seed {1..9}``), a pick from the values and
    the literal tokens (twice as fast)."""
    formats: list[str] = []
    cells: list[int | str] = []  # a group's place among the values, or a literal token
    k = 0
    for parts in parsed:
        text = []
        for p in parts:
            if isinstance(p, str):
                text.append(p.replace("{", "{{").replace("}", "}}"))
            else:
                text.append(f"{{{k}}}")
                k += 1
        formats.append("".join(text))
        if len(parts) == 1:
            cells.append(parts[0] if isinstance(parts[0], str) else k - 1)
    if len(cells) < len(parsed):  # (a token holds a group and more)
        return lambda combo: tuple(f.format(*combo) for f in formats)
    literals = tuple(c for c in cells if isinstance(c, str))
    at, n_literals = [], 0
    for c in cells:
        at.append(c if isinstance(c, int) else k + n_literals)
        n_literals += isinstance(c, str)
    if len(at) == 1:
        return lambda combo: ((combo + literals)[at[0]],)
    pick = itemgetter(*at) if at else (lambda _: ())
    return lambda combo: pick(combo + literals)


def expand_params(
    params: Mapping[str, Sequence[Any]], style: str = "--{name}", *, limit: int | None = None
) -> list[Expansion]:
    """The cartesian product of a dict of value lists as argv: ``--lr 0.1 --seed 1``.

    ``style`` makes the flag from ``{name}``; if it also holds ``{value}`` each
    parameter is one token (``"--{name}={value}"``).  Values are ``str()``-ed; an
    empty dict gives one job with no arguments.
    """
    if not isinstance(params, Mapping):
        raise InvalidTypeError(f"sweep params {params!r}: expected a dict of lists")
    columns: list[tuple[str, list[str]]] = []
    for name, values in params.items():
        if not isinstance(name, str) or not name:
            raise InvalidTypeError(f"sweep parameter name {name!r}: expected a non-empty string")
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, range)):
            raise InvalidTypeError(f"sweep parameter {name}={values!r}: expected a list of values")
        if len(values) == 0:
            raise InvalidValueError(f"sweep parameter {name}=[]: give at least one value")
        columns.append((name, [str(v) for v in values]))
    if limit is not None:
        check_size(math.prod(len(v) for _, v in columns), limit)
    one_token = "{value}" in style
    try:
        style.format(name="x", value="1")
    except (KeyError, IndexError, ValueError):
        raise InvalidValueError(
            f"style={style!r}: may only hold {{name}} and {{value}}, e.g. '--{{name}}'"
        ) from None
    if style.format(name="x", value="1") == style.format(name="y", value="1"):
        # (every parameter would get the same flag: "--x" gives --x 1 --x 3)
        raise InvalidValueError(f"style={style!r}: must hold {{name}}, e.g. '--{{name}}'")
    result: list[Expansion] = []
    for combo in itertools.product(*(v for _, v in columns)):
        argv: list[str] = []
        for (name, _), value in zip(columns, combo, strict=True):
            if one_token:
                argv.append(style.format(name=name, value=value))
            else:
                argv += [style.format(name=name), value]
        result.append((tuple(argv), dict(zip((n for n, _ in columns), combo, strict=True))))
    return result
