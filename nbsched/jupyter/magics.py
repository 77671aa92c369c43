"""``%gpusched VERB ...`` and ``%%gpusched VERB ...``: the scheduler from a notebook.

Thin by design: each verb's arguments are declared once, in the verb table
(:mod:`nbsched.verbs`, shared with the ``nbsched`` command); a verb parses them, makes
its call of the public :class:`GPUJobScheduler` API and returns its value, so
``df = %gpusched jobs`` works.  A user mistake raises ``UsageError`` (one line, no
traceback) before anything is queued.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, magics_class

from nbsched import provider_choice_shown_by_caller
from nbsched.config import SchedulerConfig
from nbsched.errors import NbschedError, SweepTooLargeError
from nbsched.scheduler import GPUJobScheduler
from nbsched.verbs import glue_dash_values
from nbsched.verbs.options import job_options
from nbsched.verbs.values import engine_config, engine_scheduler

from .parsing import check_cell_code, expand_vars, save_cell_script, split_dashdash
from .verbs import (
    HELP_WORDS,
    NO_SCHEDULER,
    VERBS,
    LogText,
    MagicVerb,
    typed_line_cell_magic,
    typed_no_var_expand,
    usage,
    verb_help,
    with_overview,
)


@magics_class
class GpuschedMagics(Magics):
    """The ``%gpusched`` magics; holds the scheduler that ``%gpusched start`` made."""

    def __init__(self, shell: Any = None) -> None:
        super().__init__(shell)  # type: ignore[no-untyped-call]
        self.scheduler: GPUJobScheduler | None = None
        self._started_with: SchedulerConfig | None = None  # the config `start` was given
        self._forms: list[Any] = []  # the open forms made here (closed ones are dropped)
        self._dashboard: Any = None  # the newest dashboard: the only one refreshing

    # -- plumbing -------------------------------------------------------------------------

    def _require(self) -> GPUJobScheduler:
        if self.scheduler is None:
            raise UsageError(NO_SCHEDULER)
        return self.scheduler

    def shutdown(self, close_widgets: bool = True) -> None:
        """Stop the dashboard, close the widgets made here (or, with ``close_widgets=False``,
        leave them on screen: ``%gpusched stop``) and close the scheduler started here."""
        widgets, self._forms = [*self._forms, self._dashboard], []
        self._dashboard = None
        for widget in widgets:
            if widget is None:
                continue
            if close_widgets:
                widget.close()
            elif hasattr(widget, "stop"):  # the dashboard: it stops refreshing, says so
                widget.stop()
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

    def _call(self, args: argparse.Namespace) -> Any:
        """The table's API call of this verb, on the running scheduler."""
        call = VERBS[args.verb].verb.call
        assert call is not None  # (a verb without one has its own method here)
        return call(self._require(), args)

    # -- the verbs that do more than the table's call ---------------------------------------

    def _verb_start(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        config = engine_config(args)
        current = self.scheduler
        if current is not None:
            if current.running and self._started_with == config:
                return current
            if current.running:
                raise UsageError(
                    f"a scheduler is already running on {current.config.state_dir}; "
                    "run %gpusched stop first to start another"
                )
            self.shutdown()
        s, llm_note = engine_scheduler(args, config)
        try:
            with provider_choice_shown_by_caller():  # (said below, not also as a warning)
                s.start()
        except BaseException:
            s.close()
            raise
        self.scheduler, self._started_with = s, config
        if llm_note is not None:
            print(f"nbsched: {llm_note}")
        if config.gpu_provider == "auto" and s.provider.name == "simulated":
            note = getattr(s.provider, "selection_note", "") or "using simulated GPUs"
            print(f"nbsched: {note}")
        return s

    def _verb_add(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        args.words = self._split(tail, "script arguments")
        return self._call(args)

    def _verb_run(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        s = self._require()
        if cell is not None:
            if not cell.strip():
                raise UsageError("%%gpusched run: the cell is empty; write the job's Python code")
            check_cell_code(cell)
            script = save_cell_script(s.config.state_dir, cell)
            argv = self._split(tail, "script arguments")
            # once: the same cell run again (a notebook re-run after its kernel died)
            # gets the job already queued, running or succeeded, not a second one.
            return s.add_job(str(script), args.conda_env, argv, once=True, **job_options(args))
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
        try:  # (a line a shell could not split either: the command line as typed)
            args.words = shlex.split(tail)
        except ValueError:
            args.words = None
        args.typed = tail
        return self._call(args)

    def _verb_sweep(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
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
            args.script = str(save_cell_script(s.config.state_dir, cell))
        elif args.script is None:
            raise UsageError(
                "%gpusched sweep needs a SCRIPT: %gpusched sweep train.py -- --lr {0.1,0.01}"
            )
        if not tail:
            raise UsageError(
                "%gpusched sweep needs the swept arguments after --, e.g. "
                "-- --lr {0.1,0.01} --seed {1..3}"
            )
        args.words, args.typed = None, tail
        try:
            return self._call(args)
        except SweepTooLargeError as exc:  # (the API's message says limit=N)
            prefix = "%%gpusched" if cell is not None else "%gpusched"
            raise UsageError(
                f"{prefix} sweep: sweep of {exc.jobs} jobs exceeds the limit of {exc.limit}; "
                f"add --limit {exc.jobs} to submit it anyway"
            ) from None

    def _verb_status(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        from .status import status_report

        return status_report(self._require())

    def _verb_jobs(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        from .tables import job_table

        rows = self._call(args)
        return rows if args.all else job_table(rows)  # (compact: the same data, shown short)

    def _verb_drain(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        from .tables import job_table

        return job_table(self._call(args))

    def _verb_logs(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        return LogText(self._call(args))

    def _verb_why(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        return LogText(self._call(args))

    def _verb_wait(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        self._require()
        # ``wait $ids`` with ``ids == []`` (an empty list) waits for no job; only
        # ``wait`` written with no id at all (nor --sweep) means every active job.
        args.ids = args.ids or ([] if args.expanded.empty else None)
        try:
            rows = self._call(args)
        except TimeoutError as exc:  # the jobs go on: say which, in one line
            raise UsageError(
                f"%gpusched wait: {exc} (they go on; wait again, or cancel them)"
            ) from None
        # (imported after the call: a first import of pandas takes a while, and "every
        # active job" is the jobs active when the verb was run, not after that import)
        from .tables import job_table

        return job_table(rows)

    def _verb_cancel(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        self._require()
        if not self._some_ids(args, "cancel"):
            return []
        done = list(self._call(args).values())
        return done[0] if len(done) == 1 else done

    def _verb_retry(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        self._require()
        if not self._some_ids(args, "retry"):
            return []
        ids = self._call(args)
        return ids[0] if len(ids) == 1 else ids

    def _verb_hold(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        """``hold``, ``release``, ``priority``: the ids changed (one: that id)."""
        self._require()
        if not self._some_ids(args, args.verb):
            return []
        ids = self._call(args)
        return ids[0] if len(ids) == 1 else ids

    _verb_release = _verb_priority = _verb_hold

    def _verb_stop(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> None:
        s = self._require()
        s.stop(kill=args.kill)
        # The form and the dashboard stay on screen (a notebook's last cell is often this
        # one, and a person reads what they showed); %unload_ext nbsched closes them.
        self.shutdown(close_widgets=False)

    def _verb_results(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        self._require()
        if args.sweep is None and args.expanded.empty:  # not "the latest sweep" by accident
            raise UsageError(
                f"%gpusched results: {args.expanded.empty_note()}; give a sweep id, "
                "or none for the latest sweep"
            )
        return self._call(args)

    def _verb_form(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        from .form import SubmitForm

        form = SubmitForm(self._require())
        self._forms = [f for f in self._forms if f.comm is not None]  # closed: forgotten
        self._forms.append(form)
        return form

    def _verb_dashboard(self, args: argparse.Namespace, tail: str | None, cell: str | None) -> Any:
        from .dashboard import Dashboard

        board = Dashboard(self._require(), interval=args.interval, interactive=args.interactive)
        # One dashboard refreshes at a time: running the cell again (or another dashboard
        # cell) closes the previous one, whose thread would otherwise refresh until stop.
        previous, self._dashboard = self._dashboard, board
        if previous is not None:
            previous.close()
        return board

    # -- the magic ------------------------------------------------------------------------

    @with_overview
    @typed_no_var_expand
    @typed_line_cell_magic
    def gpusched(self, line: str, cell: str | None = None) -> Any:
        """Schedule jobs on GPUs from this notebook.

        Each verb makes one call of the scheduler's API and returns its value:
          df = %gpusched jobs
          jid = %gpusched run -- python train.py
        $name or {name} before -- is replaced by the value of name (in a sweep,
        braces are its grammar: only $name).  %%gpusched run runs the cell as a
        Python script on the GPUs given; %%gpusched sweep -- --lr {0.1,0.01}
        sweeps it.  %gpusched VERB -h shows one verb's options, %gpusched help
        this overview.
        """  # (plain text, not reST: it is the help a person reads)
        head, tail = split_dashdash(line)
        braces = head.split(None, 1)[:1] != ["sweep"]  # (a sweep's braces are its grammar)
        namespace = self.shell.user_ns if self.shell is not None else {}
        expanded = expand_vars(head, namespace, braces)
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
        mv = VERBS.get(name)
        if mv is None:
            raise UsageError(f"unknown verb {name!r}: accepted verbs are {accepted}")
        prefix = "%%gpusched" if cell is not None else "%gpusched"
        if cell is not None and not mv.cell_form:
            raise UsageError(f"%%gpusched {name}: only run and sweep have a cell form")
        if tail is not None and not mv.takes_tail:
            raise UsageError(f"{prefix} {name} takes nothing after --; got {tail!r}")
        args = self._parse(mv, prefix, rest, tail, expanded)
        if args is None:
            return None
        method = getattr(self, f"_verb_{name}", None)
        try:
            return self._call(args) if method is None else method(args, tail, cell)
        except NbschedError as exc:
            raise UsageError(f"{prefix} {name}: {exc}") from None

    @staticmethod
    def _parse(
        mv: MagicVerb, prefix: str, rest: str, tail: str | None, expanded: Any
    ) -> argparse.Namespace | None:
        """The verb's arguments (``None``: its help was asked for, and printed)."""
        name = mv.verb.name
        try:
            words = shlex.split(rest)  # POSIX quoting (IPython's arg_split keeps the quotes)
            words = glue_dash_values(words)  # (--gpu-arg --cuda: a value, not an option)
        except ValueError as exc:
            raise UsageError(f"{prefix} {name}: {rest!r}: {exc}") from None
        if "-h" in words or "--help" in words:  # a word of its own, not inside a quoted value
            print(verb_help(mv))
            return None
        try:
            args = mv.parser.parse_args(words)
        except UsageError as exc:
            message = str(exc)
            if message.startswith("unrecognized") and mv.takes_tail and tail is None:
                message += "; the job's arguments go after --"
            if message.startswith("the following arguments are required") and expanded.empty:
                message += f" ({expanded.empty_note()})"
            elif not message.startswith("argument "):  # not one value: show what is accepted
                message += f" (usage: {usage(mv)})"
            raise UsageError(f"{prefix} {name}: {message}") from None
        args.verb = name
        args.expanded = expanded  # (which $names gave nothing: "no jobs", not "all jobs")
        args.words = args.typed = None
        return args
