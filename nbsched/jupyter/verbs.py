"""The ``%gpusched`` verbs' registry and the pieces their declarations share: the
:func:`verb` decorator, the job options of ``add``/``run``/``sweep``, usage and help
texts, and :class:`LogText` (a log that shows as text).  :mod:`.magics` declares the
verbs with them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from IPython.core.magic_arguments import ArgDecorator, argument

from .parsing import gpus_type, priority_type

#: Verb name -> its method (with ``.parser`` from ``magic_arguments``), in help order.
VERBS: dict[str, Any] = {}

NO_SCHEDULER = "no scheduler is running: start one with %gpusched start [--simulate N]"

#: ``%gpusched help``, ``-h``, ``--help``: the overview (``%gpusched help VERB``: one verb's).
HELP_WORDS = ("help", "-h", "--help")


def verb(name: str, summary: str, *, tail: str = "", cell: bool = False) -> Callable[..., Any]:
    """Register a method as ``%gpusched NAME``; ``tail``: what it takes after ``--`` (as
    usage text); ``cell``: it has a ``%%gpusched NAME`` form."""

    def mark(func: Any) -> Any:
        func.argcmd_name = f"gpusched {name}"  # IPython's help formatter adds the "%"
        func.__doc__ = summary
        func.verb_summary = summary
        func.takes_tail = bool(tail)
        func.tail_usage = tail
        func.cell_form = cell
        VERBS[name] = func
        return func

    return mark


def one_line(text: str) -> str:
    return " ".join(text.split())


class exclusive(ArgDecorator):
    """The options declared below it (in the source) exclude each other: argparse then
    says so in the magic's terms (``argument --last: not allowed with argument --first``)."""

    def add_to_parser(self, parser: Any, group: Any) -> Any:
        return parser.add_mutually_exclusive_group()


def job_options(func: Any) -> Any:
    """--gpus/--allowed/--priority/--name, shared by add, run and sweep."""
    for deco in (
        argument("--name", help="a label shown in the job table"),
        argument(
            "--priority",
            type=priority_type,
            default=0,
            metavar="P",
            help="lower runs first (default 0)",
        ),
        argument("--allowed", metavar="GPUS", help="GPUs it may use, e.g. 0-3,5 (default: any)"),
        argument(
            "--gpus",
            type=gpus_type,
            metavar="X",
            help="GPUs it needs: a fraction in (0, 1] or a whole number "
            "(default: from the LLM config, else 1)",
        ),
    ):
        func = deco(func)
    return func


def usage(func: Any) -> str:
    """``%gpusched VERB [OPTIONS] ...`` on one line."""
    text = one_line(func.parser.format_usage())
    text = text.removeprefix("::").removeprefix("usage:").strip()
    return f"{text} {func.tail_usage}".strip()


def verb_help(func: Any) -> str:
    return f"{func.parser.format_help()}\nusage: {usage(func)}"


def verbs_epilog() -> str:
    lines = ["verbs:"]
    for func in VERBS.values():
        lines.append(f"  {usage(func)}\n      {func.verb_summary}")
    return "\n".join(lines)


def clean_doc(func: Any) -> Any:
    func.__doc__ = inspect.cleandoc(func.__doc__ or "")
    return func


class LogText(str):
    """A log as a ``str`` that IPython shows as text, not as a quoted repr."""

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))
