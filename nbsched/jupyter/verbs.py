"""The ``%gpusched`` verbs' parsers, built from the one verb table
(:mod:`nbsched.verbs`), and the pieces the magic's help and results share: usage and
help texts, typed forms of IPython's (untyped) decorators, and :class:`LogText`."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from IPython.core.magic import line_cell_magic, no_var_expand
from IPython.core.magic_arguments import MagicArgumentParser

from nbsched.verbs import MAGIC, Verb, verbs_of

NO_SCHEDULER = "no scheduler is running: start one with %gpusched start [--simulate N]"

#: ``%gpusched help``, ``-h``, ``--help``: the overview (``%gpusched help VERB``: one verb's).
HELP_WORDS = ("help", "-h", "--help")

Method = Callable[..., Any]

# IPython's decorators are untyped; these are the same functions, typed.
typed_line_cell_magic: Callable[[Method], Method] = line_cell_magic
typed_no_var_expand: Callable[[Method], Method] = no_var_expand


class PlainHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help as plain text, as a person reads it in a notebook: IPython's own formatter
    writes reST for Sphinx (a ``::`` before the usage, ``<...>`` around some arguments)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return super()._fill_text(inspect.cleandoc(text), width, indent)

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, "usage: %" if prefix is None else prefix)


def magic_parser(prog: str, **options: Any) -> argparse.ArgumentParser:
    """IPython's argparse parser for magics: mistakes raise ``UsageError``, usage shows
    ``%prog``; abbreviations are refused (``--gpu`` is a mistake, not ``--gpus``); help
    is plain text."""
    options.setdefault("formatter_class", PlainHelpFormatter)
    parser: argparse.ArgumentParser = MagicArgumentParser(prog, **options)  # type: ignore[no-untyped-call]
    parser.allow_abbrev = False
    return parser


@dataclass(frozen=True)
class MagicVerb:
    """A verb of the table with its magic parser."""

    verb: Verb
    parser: argparse.ArgumentParser

    @property
    def takes_tail(self) -> bool:
        return bool(self.verb.tail)

    @property
    def cell_form(self) -> bool:
        return self.verb.cell


def _magic_verb(v: Verb) -> MagicVerb:
    parser = magic_parser(f"gpusched {v.name}", description=v.description or v.help, usage=v.usage)
    v.add_arguments(parser, MAGIC)
    return MagicVerb(v, parser)


#: Verb name -> its table entry and parser, in help order.
VERBS: dict[str, MagicVerb] = {name: _magic_verb(v) for name, v in verbs_of(MAGIC).items()}


def one_line(text: str) -> str:
    return " ".join(text.split())


def usage(mv: MagicVerb) -> str:
    """``%gpusched VERB [OPTIONS] ...`` on one line."""
    text = one_line(mv.parser.format_usage())
    text = text.removeprefix("usage:").strip()
    return f"{text} {mv.verb.tail}".strip()


def verb_help(mv: MagicVerb) -> str:
    """One verb's help: its whole usage (with what goes after ``--``), then argparse's
    description and options."""
    body = mv.parser.format_help().split("\n\n", 1)[-1]  # (after argparse's usage)
    return f"usage: {usage(mv)}\n\n{body}"


def verbs_epilog() -> str:
    lines = ["verbs:"]
    for mv in VERBS.values():
        lines.append(f"  {usage(mv)}\n      {mv.verb.help}")
    return "\n".join(lines)


def with_overview(func: Method) -> Method:
    """Give the magic the help ``%gpusched?`` shows: its docstring, its usage, the verbs
    (what IPython's ``magic_arguments`` would do, without its untyped decorators)."""
    parser = magic_parser(
        "gpusched", description=inspect.cleandoc(func.__doc__ or ""), epilog=verbs_epilog()
    )
    parser.add_argument("verb", help=f"one of: {', '.join(VERBS)}")
    parser.add_argument("arguments", nargs="*", help="the verb's arguments; see the verbs below")
    func.__doc__ = parser.format_help()
    return func


class LogText(str):
    """A log as a ``str`` that IPython shows as text, not as a quoted repr."""

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))
