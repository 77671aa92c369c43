"""``%gpusched VERB ...`` and ``%%gpusched VERB ...``: the scheduler from a notebook.

Thin by design: each verb parses its arguments (declared with IPython's
``magic_arguments``), makes one call of the public :class:`GPUJobScheduler` API
and returns its value, so ``df = %gpusched jobs`` works.  A user mistake raises
``UsageError`` (one line, no traceback) before anything is queued.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, kwds, magic_arguments

from nbsched import provider_choice_shown_by_caller
from nbsched.config import EXECUTORS, PROVIDERS, SchedulerConfig
from nbsched.errors import NbschedError, SweepTooLargeError
from nbsched.scheduler import GPUJobScheduler

from .parsing import (
    check_cell_code,
    count_type,
    expand_vars,
    gpu_index_type,
    limit_type,
    lines_type,
    rows_type,
    save_cell_script,
    seconds_type,
    split_dashdash,
)
from .verbs import (
    HELP_WORDS,
    NO_SCHEDULER,
    VERBS,
    LogText,
    clean_doc,
    exclusive,
    job_options,
    usage,
    verb,
    verb_help,
    verbs_epilog,
)


@magics_class
class GpuschedMagics(Magics):
    """The ``%gpusched`` magics; holds the scheduler that ``%gpusched start`` made."""

    def __init__(self, shell: Any = None) -> None:
        super().__init__(shell)
        self.scheduler: GPUJobScheduler | None = None
        self._forms: list[Any] = []  # the open forms made here (closed ones are dropped)
        self._dashboard: Any = None  # the newest dashboard: the only one refreshing

    # -- plumbing -------------------------------------------------------------------------

    def _require(self) -> GPUJobScheduler:
        if self.scheduler is None:
            raise UsageError(NO_SCHEDULER)
        return self.scheduler

    def shutdown(self) -> None:
        """Close the widgets made here and stop the scheduler started here."""
        widgets, self._forms = [*self._forms, self._dashboard], []
        self._dashboard = None
        for widget in widgets:
            if widget is not None:
                widget.close()
        s, self.scheduler = self.scheduler, None
        if s is not None:
            s.close()

    @staticmethod
    def _some_ids(args: argparse.Namespace, verb: str) -> bool:
        """Whether ids were given; ``False`` when they came from an empty ``$list`` (nothing
        to do); a ``UsageError`` when none were written."""
        if args.ids:
            return True
        if args.expanded.empty:
            return False
        raise UsageError(
            f"%gpusched {verb}: the following arguments are required: ID "
            f"(usage: {usage(VERBS[verb])})"
        )

    @staticmethod
    def _split(tail: str | None, what: str) -> list[str]:
        if tail is None:
            return []
        try:
            return shlex.split(tail)
        except ValueError as exc:
            raise UsageError(f"{what} {tail!r}: {exc}") from None

    # -- the magic ------------------------------------------------------------------------

    @verb("start", "create and start a scheduler (the other verbs act on it)")
    @argument("--num-gpus", type=count_type, metavar="N", help="schedule on GPUs 0..N-1")
    @argument("--provider", choices=PROVIDERS, help="where GPU readings come from")
    @argument("--simulate", type=count_type, metavar="N", help="N simulated GPUs")
    @argument("--executor", choices=EXECUTORS, help="how jobs run (default direct)")
    @argument("--state-dir", metavar="DIR", help="where jobs, logs and results live")
    @argument("--jobs-file", metavar="F", help="a jobs file to watch for new lines")
    @argument("--llm-config", metavar="F", help="LLM config: GPUs per --llm model")
    @argument("--ray-address", metavar="ADDR", help="with --executor ray: 'auto' or an address")
    def _start(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        fields: dict[str, Any] = {}
        if args.simulate is not None:
            if args.provider not in (None, "simulated"):
                raise UsageError(
                    f"--simulate {args.simulate} means --provider simulated, "
                    f"not --provider {args.provider}"
                )
            if args.num_gpus not in (None, args.simulate):
                raise UsageError(
                    f"--simulate {args.simulate} gives {args.simulate} GPUs, "
                    f"not --num-gpus {args.num_gpus}"
                )
            fields.update(gpu_provider="simulated", num_gpus=args.simulate)
        if args.ray_address is not None and args.executor != "ray":
            raise UsageError(
                f"%gpusched start: --ray-address {args.ray_address} applies to --executor ray "
                f"(the executor would be {args.executor or 'direct'}); add --executor ray"
            )
        if args.provider is not None:
            fields["gpu_provider"] = args.provider
        if args.num_gpus is not None:
            fields["num_gpus"] = args.num_gpus
        for flag, field in (
            ("executor", "executor"),
            ("state_dir", "state_dir"),
            ("jobs_file", "jobs_file"),
            ("llm_config", "llm_config_file"),
            ("ray_address", "ray_address"),
        ):
            if getattr(args, flag) is not None:
                fields[field] = getattr(args, flag)
        config = SchedulerConfig(**fields)
        current = self.scheduler
        if current is not None:
            if current.running and current.config == config:
                return current
            if current.running:
                raise UsageError(
                    f"a scheduler is already running on {current.config.state_dir}; "
                    "run %gpusched stop first to start another"
                )
            self.shutdown()
        s = GPUJobScheduler(config=config)
        try:
            with provider_choice_shown_by_caller():  # (said below, not also as a warning)
                s.start()
        except BaseException:
            s.close()
            raise
        self.scheduler = s
        if config.gpu_provider == "auto" and s.provider.name == "simulated":
            note = getattr(s.provider, "selection_note", "") or "using simulated GPUs"
            print(f"nbsched: {note}")
        return s

    @verb(
        "add",
        "queue a script (python, bash or executable) with its arguments",
        tail="[-- SCRIPT ARGS...]",
    )
    @job_options
    @argument("--env", dest="conda_env", metavar="CONDA_ENV", help="run in this conda env")
    @argument("script", help="path of the script")
    def _add(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        s = self._require()
        return s.add_job(
            args.script,
            args.conda_env,
            self._split(tail, "script arguments"),
            priority=args.priority,
            required_gpus=args.gpus,
            allowed_gpus=args.allowed,
            name=args.name,
        )

    @verb(
        "run",
        "queue a shell command; as %%gpusched run, the cell is the job (a Python script)",
        tail="-- COMMAND... (cell form: [-- SCRIPT ARGS...])",
        cell=True,
    )
    @job_options
    @argument("--env", dest="conda_env", metavar="CONDA_ENV", help="(cell form) conda env")
    def _run(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        s = self._require()
        options = {
            "priority": args.priority,
            "required_gpus": args.gpus,
            "allowed_gpus": args.allowed,
            "name": args.name,
        }
        if cell is not None:
            if not cell.strip():
                raise UsageError("%%gpusched run: the cell is empty; write the job's Python code")
            check_cell_code(cell)
            script = save_cell_script(s.config.state_dir, cell)
            argv = self._split(tail, "script arguments")
            return s.add_job(str(script), args.conda_env, argv, **options)
        if args.conda_env is not None:
            raise UsageError(
                "%gpusched run: --env applies to the cell form; for a command, write "
                "-- conda run -n ENV COMMAND"
            )
        if not tail:
            raise UsageError(
                "%gpusched run needs a command after --, e.g. %gpusched run --gpus 1 -- "
                "python train.py"
            )
        return s.add_command(tail, **options)

    @verb(
        "sweep",
        "queue one job per combination of the braces (cell form: of the cell)",
        tail="-- --lr {0.1,0.01} --seed {1..3}",
        cell=True,
    )
    @argument("--limit", type=limit_type, metavar="N", help="allow a sweep of up to N jobs")
    @job_options
    @argument("--env", dest="conda_env", metavar="CONDA_ENV", help="run in this conda env")
    @argument("script", nargs="?", help="path of the script (none in the cell form)")
    def _sweep(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        s = self._require()
        if cell is not None:
            if args.script is not None:
                raise UsageError(
                    f"%%gpusched sweep: the cell is the script; drop {args.script!r} "
                    "(write %%gpusched sweep [--gpus X] -- --lr {0.1,0.01})"
                )
            if not cell.strip():
                raise UsageError("%%gpusched sweep: the cell is empty; write the job's code")
            check_cell_code(cell)
            script: str = str(save_cell_script(s.config.state_dir, cell))
        elif args.script is None:
            raise UsageError(
                "%gpusched sweep needs a SCRIPT: %gpusched sweep train.py -- --lr {0.1,0.01}"
            )
        else:
            script = args.script
        if not tail:
            raise UsageError(
                "%gpusched sweep needs the swept arguments after --, e.g. "
                "-- --lr {0.1,0.01} --seed {1..3}"
            )
        try:
            return s.add_sweep(
                script,
                args=tail,
                conda_env=args.conda_env,
                priority=args.priority,
                required_gpus=args.gpus,
                allowed_gpus=args.allowed,
                limit=args.limit,
                name=args.name,
            )
        except SweepTooLargeError as exc:  # (the API's message says limit=N)
            prefix = "%%gpusched" if cell is not None else "%gpusched"
            raise UsageError(
                f"{prefix} sweep: sweep of {exc.jobs} jobs exceeds the limit of {exc.limit}; "
                f"add --limit {exc.jobs} to submit it anyway"
            ) from None

    @verb("status", "GPUs, queue counts, running and queued jobs (HTML in a notebook)")
    def _status(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        from .status import status_report

        return status_report(self._require())

    @verb("jobs", "the job table (a DataFrame)")
    @argument("--status", metavar="S", help="e.g. queued, running, failed, ended, active")
    @exclusive()
    @argument("--first", metavar="N", type=rows_type, help="only the first N (in submission order)")
    @argument("--last", metavar="N", type=rows_type, help="only the last N")
    def _jobs(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        return self._require().jobs(args.status, first=args.first, last=args.last)

    @verb("gpus", "the GPU table (a DataFrame)")
    def _gpus(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        return self._require().get_gpu_status()

    @verb("logs", "the last lines of a job's output")
    @argument("-n", "--lines", type=lines_type, default=50, metavar="N", help="default 50")
    @argument("id", help="job id")
    def _logs(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        return LogText(self._require().logs(args.id, tail=args.lines))

    @verb("wait", "block until those jobs (default: all) have ended; their rows")
    @argument("--no-progress", action="store_true", help="no progress bar")
    @argument("--timeout", type=seconds_type, metavar="S", help="give up after S seconds")
    @argument(
        "ids",
        nargs="*",
        metavar="ID",
        help="job ids (default: every active job; an empty $list: none)",
    )
    def _wait(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        s = self._require()
        # ``wait $ids`` with ``ids == []`` (a sweep that queued nothing new) waits for no
        # job; only ``wait`` written with no id at all means every active job.
        ids = args.ids or ([] if args.expanded.empty else None)
        try:
            return s.wait(ids, timeout=args.timeout, progress=False if args.no_progress else None)
        except TimeoutError as exc:  # the jobs go on: say which, in one line
            raise UsageError(
                f"%gpusched wait: {exc} (they go on; wait again, or cancel them)"
            ) from None

    @verb("cancel", "cancel jobs (a running one's process tree is ended)")
    @argument("ids", nargs="*", metavar="ID", help="job ids (an empty $list: none)")
    @kwds(usage="%(prog)s ID [ID ...]")  # required, unless an empty $list gave them
    def _cancel(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        s = self._require()
        if not self._some_ids(args, "cancel"):
            return []
        for i in args.ids:  # check them all before cancelling any: a bad id cancels nothing
            s.job(i)
        done = [s.cancel(i) for i in args.ids]
        return done[0] if len(done) == 1 else done

    @verb("retry", "queue ended jobs again")
    @argument("ids", nargs="*", metavar="ID", help="job ids (an empty $list: none)")
    @kwds(usage="%(prog)s ID [ID ...]")  # required, unless an empty $list gave them
    def _retry(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        s = self._require()
        if not self._some_ids(args, "retry"):
            return []
        for i in args.ids:  # check them all before queueing any
            status = s.job(i)["status"]
            if status in ("queued", "running"):
                raise UsageError(f"%gpusched retry: job {i} is {status}; only ended jobs retry")
        ids = [s.retry(i) for i in args.ids]
        return ids[0] if len(ids) == 1 else ids

    @verb("pause", "start no new job on a GPU")
    @argument("gpu", type=gpu_index_type, help="GPU index")
    def _pause(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> None:
        self._require().pause_gpu(args.gpu)

    @verb("resume", "let a paused GPU take jobs again")
    @argument("gpu", type=gpu_index_type, help="GPU index")
    def _resume(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> None:
        self._require().resume_gpu(args.gpu)

    @verb("stop", "stop the scheduler (running jobs go on unless --kill)")
    @argument("--kill", action="store_true", help="cancel the running jobs too")
    def _stop(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> None:
        s = self._require()
        s.stop(kill=args.kill)
        self.shutdown()

    @verb("results", "a sweep's table: parameters, status, duration, results")
    @argument("sweep", nargs="?", help="sweep id such as sw1 (default: the latest)")
    def _results(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        s = self._require()
        if args.sweep is None and args.expanded.empty:  # not "the latest sweep" by accident
            raise UsageError(
                f"%gpusched results: {args.expanded.empty_note()}; give a sweep id, "
                "or none for the latest sweep"
            )
        return s.sweep(args.sweep)

    @verb("sweeps", "every sweep and how far it got")
    def _sweeps(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        return self._require().sweeps()

    @verb("why", "why a queued job is waiting")
    @argument("id", help="job id")
    def _why(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        return LogText(self._require().why(args.id))

    @verb("form", "a form to submit jobs and sweeps")
    def _form(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        from .form import SubmitForm

        form = SubmitForm(self._require())
        self._forms = [f for f in self._forms if f.comm is not None]  # closed: forgotten
        self._forms.append(form)
        return form

    @verb("dashboard", "live GPU charts, allocation and the job table")
    @argument("--interval", type=seconds_type, default=1.0, metavar="S", help="refresh period")
    def _dashboard(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        from .dashboard import MAX_INTERVAL_S, Dashboard

        interval = min(max(args.interval, 0.1), MAX_INTERVAL_S)
        board = Dashboard(self._require(), interval=interval)
        # One dashboard refreshes at a time: running the cell again (or another dashboard
        # cell) closes the previous one, whose thread would otherwise refresh until stop.
        previous, self._dashboard = self._dashboard, board
        if previous is not None:
            previous.close()
        return board

    # Give every verb its parser (usage shown by ``%gpusched VERB -h`` and ``%gpusched?``).
    for _func in VERBS.values():
        magic_arguments()(_func)
        _func.parser.allow_abbrev = False  # --gpu is a mistake, not --gpus
    del _func

    @magic_arguments()
    @kwds(epilog=verbs_epilog())
    @argument("verb", help=f"one of: {', '.join(VERBS)}")
    @argument("arguments", nargs="*", help="the verb's arguments; see the verbs below")
    @clean_doc
    @no_var_expand
    @line_cell_magic
    def gpusched(self, line: str, cell: str | None = None) -> Any:
        """Schedule jobs on GPUs from this notebook.

        Each verb makes one call of the scheduler's API and returns its value:
        ``df = %gpusched jobs``, ``jid = %gpusched run -- python train.py``.
        ``$name`` before ``--`` is replaced by the value of ``name`` (braces are
        sweep grammar and are left alone).  ``%%gpusched run`` runs the cell as a
        Python script on the GPUs given; ``%%gpusched sweep -- --lr {0.1,0.01}``
        sweeps it.  ``%gpusched VERB -h`` shows one verb's options,
        ``%gpusched help`` this overview.
        """
        head, tail = split_dashdash(line)
        expanded = expand_vars(head, self.shell.user_ns if self.shell is not None else {})
        parts = expanded.text.split(None, 1)
        accepted = ", ".join(VERBS)
        if not parts:
            raise UsageError(
                f"%gpusched needs a verb; accepted verbs are {accepted} "
                "(%gpusched help describes them)"
            )
        name, rest = parts[0], parts[1] if len(parts) > 1 else ""
        if name in HELP_WORDS:
            topic = rest.split()[:1]
            if topic and topic[0] not in VERBS:
                raise UsageError(f"unknown verb {topic[0]!r}: accepted verbs are {accepted}")
            print(verb_help(VERBS[topic[0]]) if topic else type(self).gpusched.__doc__)
            return None
        func = VERBS.get(name)
        if func is None:
            raise UsageError(f"unknown verb {name!r}: accepted verbs are {accepted}")
        prefix = "%%gpusched" if cell is not None else "%gpusched"
        if cell is not None and not func.cell_form:
            raise UsageError(f"%%gpusched {name}: only run and sweep have a cell form")
        if tail is not None and not func.takes_tail:
            raise UsageError(f"{prefix} {name} takes nothing after --; got {tail!r}")
        try:
            words = shlex.split(rest)  # POSIX quoting (IPython's arg_split keeps the quotes)
        except ValueError as exc:
            raise UsageError(f"{prefix} {name}: {rest!r}: {exc}") from None
        if "-h" in words or "--help" in words:  # a word of its own, not inside a quoted value
            print(verb_help(func))
            return None
        try:
            args = func.parser.parse_args(words)
        except UsageError as exc:
            message = str(exc)
            if message.startswith("unrecognized") and func.takes_tail and tail is None:
                message += "; the job's arguments go after --"
            if message.startswith("the following arguments are required") and expanded.empty:
                message += f" ({expanded.empty_note()})"
            elif not message.startswith("argument "):  # not one value: show what is accepted
                message += f" (usage: {usage(func)})"
            raise UsageError(f"{prefix} {name}: {message}") from None
        args.expanded = expanded  # (which $names gave nothing: "no jobs", not "all jobs")
        try:
            return func(self, args, tail, cell)
        except NbschedError as exc:
            raise UsageError(f"{prefix} {name}: {exc}") from None
