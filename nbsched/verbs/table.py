"""The verbs of ``nbsched`` and ``%gpusched``, each declared once: its name, help, the
arguments it takes (flags, value check, default, help) and the one API call it makes.

:mod:`nbsched.cli` builds its argparse subcommands from :data:`VERBS`, and
:mod:`nbsched.jupyter.magics` each verb's ``MagicArgumentParser`` (argparse too), so
both front ends accept the same options with the same defaults, meanings and error
texts.  What differs is said here, not in the front ends: a verb's ``fronts`` (``stop``
and the widgets only make sense in a kernel, ``serve`` and ``demo`` only in a terminal),
the CLI's ``--json``, and the CLI's :data:`ENGINE_OPTIONS` on every verb (each
``nbsched`` process makes its own scheduler; the magic's is made once, by ``start``).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nbsched.errors import InvalidValueError
from nbsched.scheduler import GPUJobScheduler

from .options import (
    BOTH,
    CLI,
    ENGINE_OPTIONS,
    JOB_OPTIONS,
    MAGIC,
    RUN_OPTIONS,
    Arg,
    job_options,
)
from .options import opt as _opt
from .values import (
    checked_ids,
    command_line,
    count_type,
    gpu_index_type,
    interval_type,
    limit_type,
    lines_type,
    priority_type,
    rows_type,
    seconds_type,
)

Call = Callable[[GPUJobScheduler, argparse.Namespace], Any]


@dataclass(frozen=True)
class Verb:
    """One verb.  ``call`` makes its API call from the parsed arguments (``None``: the
    front end does the verb's work itself: a status page, a widget, the engine's start).

    Front ends set ``ns.words`` (the words after ``--``, as a shell splits them, or
    ``None``) and ``ns.typed`` (that text as typed, where they have it) before ``call``.
    """

    name: str
    help: str
    args: tuple[Arg, ...] = ()
    call: Call | None = None
    description: str | None = None
    #: What goes after ``--``, as usage text ("": nothing may).
    tail: str = ""
    #: It has a ``%%gpusched NAME`` form (the cell is the script).
    cell: bool = False
    fronts: frozenset[str] = BOTH
    #: The magic's usage line (``None``: argparse's).
    usage: str | None = None
    #: ``ids`` (``nargs="*"``, for an empty ``$list`` in the magic) must be given.
    ids_required: bool = False

    def args_for(self, front: str) -> tuple[Arg, ...]:
        return tuple(a for a in self.args if front in a.fronts)

    def add_arguments(self, parser: argparse.ArgumentParser, front: str) -> None:
        """Declare this verb's arguments for ``front`` on ``parser``."""
        groups: dict[str, Any] = {}
        for arg in self.args_for(front):
            target: Any = parser
            if arg.group is not None:
                if arg.group not in groups:
                    groups[arg.group] = parser.add_mutually_exclusive_group()
                target = groups[arg.group]
            arg.add_to(target)


def _add(s: GPUJobScheduler, ns: argparse.Namespace) -> str:
    words = ns.words or []
    return s.add_job(
        ns.script, ns.conda_env, words, launcher=ns.launcher, gpu_arg=ns.gpu_arg, **job_options(ns)
    )


def _run(s: GPUJobScheduler, ns: argparse.Namespace) -> str:
    return s.add_command(command_line(ns.words, ns.typed), **job_options(ns))


#: A sweep group as a person types it: ``{0.1,0.01}`` or ``{1..3}``.
_GROUP = re.compile(r"\{[^{}]*(,|\.\.)[^{}]*\}")


def _sweep(s: GPUJobScheduler, ns: argparse.Namespace) -> list[str]:
    swept = ns.typed if ns.typed is not None else ns.words
    if ns.typed is None and not any(_GROUP.search(w) for w in ns.words or ()):
        # Words from a shell with no group left: the shell expanded unquoted braces
        # (--lr {0.1,0.01} arrives as --lr 0.1 0.01), which would queue one wrong job.
        raise InvalidValueError(
            f"the swept arguments {shlex.join(ns.words or [])!r} hold no {{a,b}} or {{1..3}} "
            "group: a shell expands unquoted braces before nbsched sees them; quote them "
            "(-- --lr '{0.1,0.01}' --seed '{1..3}'), or queue one job with nbsched add"
        )
    return s.add_sweep(
        ns.script, args=swept, conda_env=ns.conda_env, limit=ns.limit, **job_options(ns)
    )


def _cancel(s: GPUJobScheduler, ns: argparse.Namespace) -> dict[str, bool]:
    return {job_id: s.cancel(job_id) for job_id in checked_ids(s, ns.ids)}


def _retry(s: GPUJobScheduler, ns: argparse.Namespace) -> list[str]:
    return [s.retry(job_id) for job_id in checked_ids(s, ns.ids, ended=True)]


def _wait(s: GPUJobScheduler, ns: argparse.Namespace) -> Any:
    progress = False if ns.no_progress else None
    return s.wait(ns.ids, timeout=ns.timeout, progress=progress, sweep=ns.sweep)


_ENV = _opt("--env", dest="conda_env", metavar="CONDA_ENV", help="run in this conda env")
_IDS = _opt("ids", nargs="*", metavar="ID", help="job ids (in a notebook, an empty $list: none)")
_ID = _opt("id", help="job id")
_GPU = _opt("gpu", type=gpu_index_type, help="GPU index")

# A declarative table: one entry per verb, so it is longer than a function should be.
_TABLE = (
    Verb("start", "create and start a scheduler (the other verbs act on it)",
         ENGINE_OPTIONS + RUN_OPTIONS, fronts=frozenset((MAGIC,))),
    Verb("serve", "run the engine in the foreground (Ctrl-C stops it)",
         RUN_OPTIONS, fronts=frozenset((CLI,))),
    Verb("demo", "run a small mixed sweep on this machine's GPUs and exit",
         description="Run a small mixed sweep on this machine's GPUs (simulated ones where "
         "there are none) and exit; in a temporary state directory, removed at the end, "
         "unless --state-dir names one.", fronts=frozenset((CLI,))),
    Verb("add", "queue a script (python, bash or executable) with its arguments",
         (*JOB_OPTIONS, _ENV,
          _opt("--launcher", choices=("torchrun",), help="run under torchrun"),
          _opt("--gpu-arg", metavar="OPTION", dash_value=True,
               help="pass the job's local GPU indices with this option"),
          _opt("script", help="path of the script")),
         _add, tail="[-- SCRIPT ARGS...]"),
    Verb("run", "queue a shell command (%%gpusched run: the cell is the job, a Python script)",
         (*JOB_OPTIONS,
          _opt("--env", dest="conda_env", metavar="CONDA_ENV", help="(cell form) conda env"),
          _opt("command", nargs="*", help="the command (better after --)",
               fronts=frozenset((CLI,)))),
         _run, tail="-- COMMAND... (cell form: [-- SCRIPT ARGS...])", cell=True,
         description="Queue a shell command (bash -c). One word after -- is the command "
         "line itself ('sleep 3; echo hi'); several are the command line as typed (from a "
         "terminal: joined with their quoting kept, so each reaches the job as one word)."),
    Verb("sweep", "queue one job per combination of the braces (cell form: of the cell)",
         (_opt("--limit", type=limit_type, metavar="N", help="allow a sweep of up to N jobs"),
          *JOB_OPTIONS, _ENV,
          _opt("script", nargs="?", help="path of the script (none in the cell form)")),
         _sweep, tail="-- --lr {0.1,0.01} --seed {1..3}", cell=True,
         description="Queue one job per combination of the {a,b} / {1..5} groups in the "
         "arguments after -- (in a terminal, quote the braces: the shell expands them)."),
    Verb("status", "GPUs, queue counts, running and queued jobs"),
    Verb("jobs", "the job table",
         (_opt("--status", metavar="S", help="e.g. queued, running, failed, ended, active"),
          _opt("--first", type=rows_type, metavar="N", group="rows",
               help="only the first N (in submission order)"),
          _opt("--last", type=rows_type, metavar="N", group="rows", help="only the last N"),
          _opt("--all", action="store_true",
               help="every column, whole (default: the columns that hold something, short)")),
         lambda s, ns: s.jobs(ns.status, first=ns.first, last=ns.last)),
    Verb("gpus", "the GPU table", call=lambda s, ns: s.get_gpu_status()),
    Verb("screens", "screen sessions of running jobs", call=lambda s, ns: s.screens(),
         fronts=frozenset((CLI,))),
    Verb("logs", "the last lines of a job's output",
         (_opt("-n", "--lines", type=lines_type, default=50, metavar="N",
               help="the last N lines (default 50; 0: none; all: the whole log)"), _ID),
         lambda s, ns: s.logs(ns.id, tail=ns.lines)),
    Verb("wait", "block until those jobs (default: all) have ended; their rows",
         (_opt("--no-progress", action="store_true", help="no progress bar"),
          _opt("--timeout", type=seconds_type, metavar="S", help="give up after S seconds"),
          _opt("--sweep", metavar="ID", help="every job of this sweep (its results table's)"),
          _opt("ids", nargs="*", metavar="ID",
               help="job ids (default: every active job; an empty $list: none)")),
         _wait,
         description="Wait for those jobs (default: every queued and running one; --sweep "
         "ID: every job of that sweep) to end; their rows. (nbsched: exit status 0 if every "
         "one succeeded, 1 if not.)"),
    Verb("cancel", "cancel jobs (every id is checked before any is cancelled)", (_IDS,),
         _cancel, usage="%(prog)s ID [ID ...]", ids_required=True),
    Verb("retry", "queue ended jobs again (every id is checked before any is queued)",
         (_IDS,), _retry, usage="%(prog)s ID [ID ...]", ids_required=True),
    Verb("hold", "keep queued jobs from starting until released (every id checked first)",
         (_IDS,), lambda s, ns: s.hold(ns.ids), usage="%(prog)s ID [ID ...]",
         ids_required=True),
    Verb("release", "let held jobs start again (every id is checked first)", (_IDS,),
         lambda s, ns: s.release(ns.ids), usage="%(prog)s ID [ID ...]", ids_required=True),
    Verb("priority", "give queued jobs another priority (every id is checked first)",
         (_opt("value", type=priority_type, metavar="P", help="the priority (lower runs first)"),
          _IDS),
         lambda s, ns: s.set_priority(ns.ids, ns.value), usage="%(prog)s P ID [ID ...]",
         ids_required=True),
    Verb("drain", "pause every GPU, then wait for the running jobs to end; their rows",
         (_opt("--timeout", type=seconds_type, metavar="S", help="give up after S seconds"),),
         lambda s, ns: s.drain(timeout=ns.timeout)),
    Verb("pause", "start no new job on a GPU", (_GPU,), lambda s, ns: s.pause_gpu(ns.gpu)),
    Verb("resume", "let a paused GPU take jobs again", (_GPU,),
         lambda s, ns: s.resume_gpu(ns.gpu)),
    Verb("stop", "stop the scheduler (running jobs go on unless --kill)",
         (_opt("--kill", action="store_true", help="cancel the running jobs too"),),
         fronts=frozenset((MAGIC,))),
    Verb("results", "a sweep's table: parameters, status, duration, results",
         (_opt("sweep", nargs="?", help="sweep id such as sw1 (default: the latest)"),),
         lambda s, ns: s.sweep(ns.sweep)),
    Verb("sweeps", "every sweep and how far it got", call=lambda s, ns: s.sweeps()),
    Verb("why", "why a queued job is waiting", (_ID,), lambda s, ns: s.why(ns.id)),
    Verb("simulate", "replay a trace on a virtual clock: makespan, completion, wait, use",
         (_opt("trace", help="a CSV: the Tiresias format, or a jobs() table (to_csv)"),
          _opt("--gpus", dest="sim_gpus", type=count_type, default=8, metavar="N",
               help="GPUs to replay on (default 8)"),
          _opt("--policy", choices=("fifo", "easy", "backfill"), default="backfill",
               help="fifo: nothing passes a blocked job; easy: jobs pass it outside the "
               "GPUs held for it; backfill (the engine's): also inside, if they end in time"),
          _opt("--scale", type=interval_type, default=1.0, metavar="F",
               help="divide the trace's times by F (default 1)"),
          _opt("--reserve-after", type=seconds_type, default=0.0, metavar="S",
               help="hold GPUs for a blocked job once it has been queued S seconds")),
         fronts=frozenset((CLI,))),
    Verb("form", "a form to submit jobs and sweeps", fronts=frozenset((MAGIC,))),
    Verb("dashboard", "live GPU charts, allocation and the job table",
         (_opt("--interval", type=interval_type, default=1.0, metavar="S",
               help="refresh period in seconds (0.1 to 86400)"),
          _opt("--interactive", action="store_true",
               help="charts with hover values, pan and zoom (needs ipympl; more CPU)")),
         fronts=frozenset((MAGIC,))),
)  # fmt: skip

#: Every verb by name, in help order.
VERBS: dict[str, Verb] = {v.name: v for v in _TABLE}


#: The options whose value may begin with "-" (argparse takes ``--cuda`` for an option).
DASH_VALUE_FLAGS = frozenset(
    flag
    for args in [ENGINE_OPTIONS, *(v.args for v in _TABLE)]
    for arg in args
    if arg.dash_value
    for flag in arg.flags
)


def glue_dash_values(words: list[str]) -> list[str]:
    """``--gpu-arg --cuda`` as ``--gpu-arg=--cuda``, which argparse reads as meant (it
    refused the first: "expected one argument"); stops at ``--``."""
    out: list[str] = []
    rest = iter(words)
    for word in rest:
        out.append(word)
        if word == "--":
            out.extend(rest)
        elif word in DASH_VALUE_FLAGS:
            value = next(rest, None)
            if value is not None and value.startswith("-") and value != "--":
                out[-1] = f"{word}={value}"
            elif value is not None:
                out.append(value)
                if value == "--":
                    out.extend(rest)
    return out


def verbs_of(front: str) -> dict[str, Verb]:
    """The verbs one front end has, in help order."""
    return {name: v for name, v in VERBS.items() if front in v.fronts}
