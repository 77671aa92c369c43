"""The arguments of the verbs (:mod:`.table`): how one is declared (:class:`Arg`), and
the option groups several verbs share: the engine's (:data:`ENGINE_OPTIONS`), how it runs
jobs (:data:`RUN_OPTIONS`) and what every queued job takes (:data:`JOB_OPTIONS`, read
back by :func:`job_options`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nbsched.config import EXECUTORS, PROVIDERS

from .values import (
    MEM_HELP,
    address_type,
    after_type,
    count_type,
    expected_type,
    gpus_type,
    memory_type,
    priority_type,
    reserve_after_type,
    retries_type,
    threshold_type,
    time_limit_type,
    url_type,
)

CLI = "cli"
MAGIC = "magic"
BOTH = frozenset((CLI, MAGIC))


@dataclass(frozen=True)
class Arg:
    """One argument: what ``parser.add_argument`` is given."""

    flags: tuple[str, ...]
    help: str
    type: Callable[[str], Any] | None = None
    default: Any = None
    metavar: str | tuple[str, ...] | None = None
    choices: tuple[str, ...] | None = None
    nargs: str | int | None = None
    action: str | None = None
    dest: str | None = None
    #: Arguments with the same ``group`` exclude each other.
    group: str | None = None
    #: Which front ends take it (a positional only the CLI has: ``run COMMAND``).
    fronts: frozenset[str] = BOTH
    #: Its value may begin with "-" (an option of the job's own: ``--gpu-arg --cuda``).
    dash_value: bool = False

    def add_to(self, parser: Any) -> None:
        """Add it to an argparse parser (or a group of one)."""
        names = ("type", "default", "metavar", "choices", "nargs", "action", "dest")
        given = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        parser.add_argument(*self.flags, help=self.help, **given)


def job_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The options every queued job takes, as the API names them."""
    return {
        "required_gpus": ns.gpus,
        "allowed_gpus": ns.allowed,
        "priority": ns.priority,
        "max_retries": ns.retries,
        "name": ns.name,
        "after": ";".join(filter(None, (getattr(ns, d, None) for d in _AFTER_DESTS))) or None,
        "time_limit": ns.time_limit,
        "expected_s": ns.expected_s,
        "notify": ((ns.notify or []) + (ns.notify_email or [])) or None,
        "gpu_memory": ns.mem,
        "snapshot": getattr(ns, "snapshot", None) or None,  # (unset: the config's)
    }


def opt(*flags: str, help: str, **more: Any) -> Arg:  # noqa: A002 (argparse's name)
    return Arg(tuple(flags), help, **more)


#: Where the scheduler's GPUs come from and where its state lives: ``start`` and
#: ``serve`` take them, and the CLI takes them on every verb (see the module's doc).
ENGINE_OPTIONS = (
    opt("--state-dir", metavar="DIR", help="state directory (default $NBSCHED_HOME or ~/.nbsched)"),
    opt("--provider", choices=PROVIDERS, help="where GPU readings come from"),
    opt("--num-gpus", type=count_type, metavar="N", help="schedule on GPUs 0..N-1"),
    opt(
        "--simulate",
        type=count_type,
        metavar="N",
        help="N simulated GPUs: short for --provider simulated --num-gpus N",
    ),
)

#: How the engine runs its jobs: ``start`` (magic) and ``serve`` (CLI).
RUN_OPTIONS = (
    opt("--executor", choices=EXECUTORS, help="how jobs run (default direct)"),
    opt("--ray-address", metavar="ADDR", help="with --executor ray: 'auto' or host:port"),
    opt("--slurm-partition", metavar="P", help="with --executor slurm: the partition"),
    opt("--slurm-account", metavar="A", help="with --executor slurm: the account"),
    opt("--jobs-file", metavar="F", help="a jobs file to watch for new lines"),
    opt(
        "--llm-config",
        metavar="F",
        help="LLM config: GPUs per --llm model (with --jobs-file: ./llm_config.json where "
        "it exists; '' for none)",
    ),
    opt("--max-retries", type=retries_type, metavar="N", help="re-runs of a failed job"),
    opt(
        "--mem-threshold",
        type=threshold_type,
        metavar="F",
        help="a GPU whose memory is used above this fraction by others gets no new job "
        "(default 0.8)",
    ),
    opt(
        "--load-threshold",
        type=threshold_type,
        metavar="F",
        help="a GPU whose load from others is above this fraction gets no new job (default 0.8)",
    ),
    opt(
        "--reserve-after",
        dest="reserve_after_s",
        type=reserve_after_type,
        metavar="S",
        help="hold GPUs for a blocked job once it has waited S seconds (or 10m, ...; "
        "default 600; 0: at once)",
    ),
    opt(
        "--gpu-arg",
        dest="jobs_file_gpu_arg",
        metavar="OPTION",
        dash_value=True,
        help="with --jobs-file: append each line's local GPU indices with this option "
        "(--gpu-arg=--cuda: --cuda 0,1, as the original program did)",
    ),
    opt(
        "--notify",
        dest="default_notify",
        action="append",
        type=url_type,
        metavar="URL",
        help="POST the end of each job submitted without a --notify of its own to this "
        "webhook (a sweep's: once); repeatable",
    ),
    opt(
        "--notify-email",
        dest="default_notify_email",
        action="append",
        type=address_type,
        metavar="ADDRESS",
        help="mail the end of each job submitted without a --notify of its own to ADDRESS; "
        "repeatable",
    ),
)

JOB_OPTIONS = (
    opt(
        "--gpus",
        type=gpus_type,
        metavar="X",
        help="GPUs it needs: a fraction in (0, 1] or a whole number "
        "(default: from the LLM config, else 1)",
    ),
    opt("--mem", type=memory_type, metavar="SIZE", help=MEM_HELP),
    opt("--allowed", metavar="GPUS", help="GPUs it may use, e.g. 0-3,5 (default: any)"),
    opt(
        "--priority",
        type=priority_type,
        default=0,
        metavar="P",
        help="lower runs first (default 0)",
    ),
    opt("--retries", type=retries_type, metavar="N", help="re-runs after a failure"),
    opt("--name", help="a label shown in the job table"),
    opt(
        "--after",
        type=after_type(None),
        metavar="IDS",
        help="start only after these jobs (ids, a sweep id like sw3) succeeded",
    ),
    *(
        opt(
            f"--after-{kind}",
            type=after_type(kind),
            metavar="IDS",
            help=f"start only after these jobs {meaning}",
        )
        for kind, meaning in (
            ("ok", "succeeded"),
            ("notok", "failed or were cancelled"),
            ("any", "ended, however"),
            ("started", "started"),
        )
    ),
    opt(
        "--time",
        dest="time_limit",
        type=time_limit_type,
        metavar="T",
        help="time limit: seconds or e.g. 2h30m, 90m, 45s; at T the job is ended and fails",
    ),
    opt(
        "--expected",
        dest="expected_s",
        type=expected_type,
        metavar="T",
        help="how long you expect it to run (seconds or e.g. 10m): a hint, ends nothing",
    ),
    opt(
        "--notify",
        action="append",
        type=url_type,
        metavar="URL",
        help="POST its end to this webhook (Slack, Mattermost, ntfy; a sweep's: once, at its "
        "end); repeatable",
    ),
    opt(
        "--notify-email",
        action="append",
        type=address_type,
        metavar="ADDRESS",
        help="mail its end to ADDRESS (the SMTP server: $NBSCHED_SMTP_HOST, ...); repeatable",
    ),
)

#: Where the parsed ``--after`` options are (see :func:`job_options`).
_AFTER_DESTS = ("after", "after_ok", "after_notok", "after_any", "after_started")

#: ``--snapshot`` (``add``, ``run``, ``sweep``, ``notebook``): see nbsched.pipeline.snapshots.
SNAPSHOT = opt(
    "--snapshot",
    action="store_true",
    help="copy the script's (a command's: its folder's) git work tree or folder now and "
    "run from the copy (default: the config's snapshot; a cell's code is kept anyway)",
)
