"""The ``nbsched`` command: the magics' verbs, from a terminal.

Every verb takes ``--state-dir`` (default ``$NBSCHED_HOME`` or ``~/.nbsched``) and
works from another process whether or not an engine is running: ``add`` queues
in the store (a running engine starts it at once), ``status`` reads the store.
Errors exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .cli_tables import print_active, print_frame, print_jobs
from .config import SchedulerConfig, default_state_dir
from .errors import NbschedError
from .scheduler import GPUJobScheduler
from .verbs import CLI, ENGINE_OPTIONS, VERBS, glue_dash_values, show_simulation, verbs_of
from .verbs.values import engine_config, engine_fields, engine_scheduler, gpus_note, show_ids

if TYPE_CHECKING:
    import pandas as pd


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr (exit status 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


#: ``nbsched --help``'s first line (plain text: the module's docstring is reST).
DESCRIPTION = "The nbsched command: the %gpusched magics' verbs, from a terminal."


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per verb of the verb table that the CLI has, each with the engine
    options (this process makes its own scheduler) and ``--json``."""
    parser = _Parser(prog="nbsched", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in verbs_of(CLI).values():
        p = sub.add_parser(
            verb.name,
            help=verb.help,
            description=verb.description or verb.help,
            allow_abbrev=False,
        )
        for arg in ENGINE_OPTIONS:
            arg.add_to(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        verb.add_arguments(p, CLI)
    return parser


def _config(ns: argparse.Namespace) -> SchedulerConfig:
    return SchedulerConfig(**engine_fields(ns))


def _client(ns: argparse.Namespace) -> GPUJobScheduler:
    """A scheduler that uses the GPU settings the last engine on this state dir used,
    unless the command line says otherwise."""
    cfg = _config(ns)
    s = GPUJobScheduler(config=cfg)
    info = s.engine_settings()
    if info and ns.provider is None and ns.simulate is None and ns.num_gpus is None:
        s.close()
        names = ["gpu_provider", "num_gpus", "simulated_gpus_file", "executor", "ray_address"]
        names += ["gpu_memory_threshold", "gpu_load_threshold", "gpu_allocation_precision"]
        if ns.verb in ("add", "sweep"):  # --llm MODEL: the engine's LLM config decides
            names.append("llm_config_file")
        keep = {k: info[k] for k in names if k in info}
        s = GPUJobScheduler(config=cfg.replace(**keep))
    return s


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line: for the verbs that take words after ``--`` (``add``, ``run``,
    ``sweep``), nbsched's options are everything before the first ``--`` (before or after
    the script), and the job's words everything after it (``ns.words``)."""
    parser = build_parser()
    argv = glue_dash_values(list(argv))  # (--gpu-arg --cuda: a value, not an option)
    name = next((a for a in argv if not a.startswith("-")), None)
    verb = VERBS.get(name or "")
    words: list[str] | None = None
    if verb is not None and verb.tail and "--" in argv:
        cut = argv.index("--")
        argv, words = argv[:cut], argv[cut + 1 :]
    ns, extra = parser.parse_known_args(argv)
    if extra:
        where = {"add": "the script's arguments", "sweep": "the swept arguments"}
        hint = f"; {where[ns.verb]} go after --" if ns.verb in where else ""
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    if VERBS[ns.verb].ids_required and not ns.ids:
        parser.error(f"{ns.verb}: the following arguments are required: ID")
    ns.words, ns.typed = words, None
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = _run(ns)
        sys.stdout.flush()  # (here, where a reader gone is caught, not at exit)
        return rc
    except BrokenPipeError:  # (`nbsched jobs | head`: the reader has had enough)
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (NbschedError, ValueError, TypeError, OSError, TimeoutError) as exc:
        print(f"nbsched {ns.verb}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line, with what it was
        print(
            f"nbsched {ns.verb}: internal error: {type(exc).__name__}: {_one_line(exc)}",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _run(ns: argparse.Namespace) -> int:
    if ns.verb == "demo":
        from .demo import run_demo

        if not ns.json:
            return run_demo(_config(ns) if ns.state_dir else None, ns)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = run_demo(_config(ns) if ns.state_dir else None, ns)
        print(json.dumps({"ok": rc == 0, "exit_code": rc, "output": buf.getvalue()}))
        return rc
    if ns.verb in ("serve", "simulate"):  # (no client: the engine itself, a file's replay)
        return _serve(ns) if ns.verb == "serve" else show_simulation(ns)
    s = _client(ns)
    try:
        return _verb(s, ns)
    finally:
        s.close()


def _verb(s: GPUJobScheduler, ns: argparse.Namespace) -> int:
    """The verb's API call (from the verb table), then its output."""
    if ns.verb == "status":
        return _status(s, ns.json)
    if ns.verb == "wait":
        return _wait(s, ns)
    check = _CHECKS.get(ns.verb)
    if check is not None:
        check(ns)
    if ns.verb == "add" and (note := gpus_note(ns)):
        print(f"nbsched add: note: {note}", file=sys.stderr)
    call = VERBS[ns.verb].call
    assert call is not None  # (each CLI verb without one is handled above or in _run)
    _SHOW[ns.verb](s, ns, call(s, ns))
    return 0


def _check_run(ns: argparse.Namespace) -> None:
    if ns.command and ns.words is not None:
        raise ValueError(f"run: {' '.join(ns.command)!r} before --: the command goes after --")
    if ns.conda_env is not None:
        raise ValueError(
            "run: --env applies to the cell form (%%gpusched run); for a command, write "
            "-- conda run -n ENV COMMAND"
        )
    if ns.words is None:
        ns.words = ns.command
    if not ns.words:
        raise ValueError("run needs a command: nbsched run -- COMMAND")


def _check_sweep(ns: argparse.Namespace) -> None:
    if ns.script is None:
        raise ValueError("sweep needs a SCRIPT: nbsched sweep train.py -- --lr '{0.1,0.01}'")
    if not ns.words:
        raise ValueError(
            "sweep needs the swept arguments after --, e.g. "
            "nbsched sweep train.py -- --lr '{0.1,0.01}' --seed '{1..3}'"
        )


_CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "run": _check_run,
    "sweep": _check_sweep,
}


def _show_id(s: GPUJobScheduler, ns: argparse.Namespace, jid: str) -> None:
    print(json.dumps({"id": jid}) if ns.json else jid)


def _show_sweep(s: GPUJobScheduler, ns: argparse.Namespace, ids: list[str]) -> None:
    sweep_id = getattr(ids, "sweep_id", None)
    queued = getattr(ids, "queued", ids)  # (ids: every combination's; queued: the new ones)
    if ns.json:
        print(json.dumps({"sweep": sweep_id, "ids": list(ids), "queued": list(queued)}))
    else:
        print(
            f"{sweep_id}: {len(queued)} job(s) queued" + (f": {' '.join(queued)}" if queued else "")
        )
        if len(queued) < len(ids):
            print(f"{len(ids) - len(queued)} already there; every job: {' '.join(ids)}")


def _show_why(s: GPUJobScheduler, ns: argparse.Namespace, text: str) -> None:
    print(json.dumps({"id": ns.id, "why": text}) if ns.json else text)


def _show_retried(s: GPUJobScheduler, ns: argparse.Namespace, ids: list[str]) -> None:
    print(json.dumps({"retried": ids}) if ns.json else "\n".join(ids))


def _show_cancelled(s: GPUJobScheduler, ns: argparse.Namespace, done: dict[str, bool]) -> None:
    if ns.json:
        print(json.dumps([{"id": k, "cancelled": v} for k, v in done.items()]))
    else:
        for jid, ok in done.items():
            print(f"{jid}: {'cancelled' if ok else 'had already ended'}")


def _show_paused(s: GPUJobScheduler, ns: argparse.Namespace, _: None) -> None:
    gpus = s.get_gpu_status()
    paused = bool(gpus.loc[gpus["gpu"] == ns.gpu, "paused"].any())
    if ns.json:
        print(json.dumps({"gpu": ns.gpu, "paused": paused}))
    else:
        print(f"GPU {ns.gpu}: {'paused' if paused else 'resumed'}")


def _show_log(s: GPUJobScheduler, ns: argparse.Namespace, text: str) -> None:
    if ns.json:
        print(json.dumps({"id": s.job(ns.id)["id"], "log": text}))
    else:
        sys.stdout.write(text)


def _show_screens(s: GPUJobScheduler, ns: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    if ns.json:
        print(json.dumps(rows))
    elif not rows:
        print("(no running job has a screen session)")
    else:
        print("id\tpid\tsession (attach with: screen -r SESSION)")
        for row in rows:
            print(f"{row['id']}\t{row['pid']}\t{row['session'] or '(gone)'}")


def _show_frame(s: GPUJobScheduler, ns: argparse.Namespace, df: pd.DataFrame) -> None:
    print_frame(df, ns.json)


def _show_jobs(s: GPUJobScheduler, ns: argparse.Namespace, df: pd.DataFrame) -> None:
    print_jobs(df, ns.json, ns.all)


#: How each verb's result is printed (``--json``: as JSON).
_SHOW: dict[str, Callable[[GPUJobScheduler, argparse.Namespace, Any], None]] = {
    "gpus": _show_frame,
    "jobs": _show_jobs,
    "add": _show_id,
    "run": _show_id,
    "sweep": _show_sweep,
    "sweeps": _show_frame,
    "results": _show_frame,
    "why": _show_why,
    "retry": _show_retried,
    "cancel": _show_cancelled,
    "pause": _show_paused,
    "resume": _show_paused,
    "logs": _show_log,
    "screens": _show_screens,
    "drain": _show_frame,
    **dict.fromkeys(("hold", "release", "priority", "notebook"), show_ids),
}


def _wait(s: GPUJobScheduler, ns: argparse.Namespace) -> int:
    """Exit status 0 if every job waited for succeeded, 1 if not."""
    ns.ids = ns.ids or None
    active = s.jobs(status="active")["id"]
    if s.engine_pid is None and (active.isin(ns.ids).any() if ns.ids else len(active)):
        print(
            "nbsched wait: no engine is running on this state directory: queued jobs "
            "start once one does (nbsched serve, or a notebook's scheduler)",
            file=sys.stderr,
        )
    call = VERBS["wait"].call
    assert call is not None
    waited = call(s, ns)
    print_jobs(waited, ns.json)
    return 0 if (waited["status"] == "succeeded").all() else 1


def _status(s: GPUJobScheduler, as_json: bool) -> int:
    counts = s.counts()
    holder = s.engine_pid
    notices = s.notices(20)
    if as_json:
        print(
            json.dumps(
                {
                    "counts": counts,
                    "engine_pid": holder,
                    "gpus": json.loads(s.get_gpu_status().to_json(orient="records")),
                    "active": json.loads(
                        s.jobs(status="active").to_json(orient="records", date_format="iso")
                    ),
                    "notices": notices,
                }
            )
        )
        return 0
    print("queue: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print(f"engine: {'pid ' + str(holder) if holder else 'none running'}")
    from nbsched.jupyter.status import gpus_text

    print(gpus_text(s))  # (read afresh, and when)
    print_active(s, counts.get("queued", 0))
    if notices:
        print("\nnotices:")
    for n in notices[-10:]:
        when = time.strftime("%H:%M:%S", time.localtime(n["at"]))
        print(f"  {when} {n['level'].upper()}: {n['source']}: {n['message']}")
    return 0


#: How often ``nbsched serve`` looks for jobs that started or ended, to say so.
SERVE_EVENTS_S = 0.1


def _serve(ns: argparse.Namespace) -> int:
    for name in ("jobs_file", "llm_config"):  # (paths as the caller meant them)
        if getattr(ns, name):
            setattr(ns, name, os.path.abspath(getattr(ns, name)))
    cfg = engine_config(ns)
    s, note = engine_scheduler(ns, cfg)
    stop, events = threading.Event(), s.job_events()  # (before start: no start missed)
    s.start()
    # (after start: starting Ray puts in signal handlers of its own)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    _serving(s, ns.json, note)
    while not stop.wait(SERVE_EVENTS_S):
        _say_events(s, events.read(), ns.json)
    _say_events(s, events.read(), ns.json)
    s.close()
    return 0


def _serving(s: GPUJobScheduler, as_json: bool, note: str | None) -> None:
    """``serve``'s first line(s): what it serves, or whom it stands by for."""
    cfg = s.config
    holder = None if s.is_dispatcher else s.engine_pid
    if as_json:
        info = {"state_dir": str(cfg.state_dir), "pid": os.getpid(), "gpus": s.num_gpus}
        info.update({"standby_for": holder} if holder is not None else {})
        info.update({"llm_config": cfg.llm_config_file} if note is not None else {})
        print(json.dumps({"serving": info, "provider": s.provider.name}), flush=True)
        return
    if note is not None:
        print(f"nbsched: {note}", flush=True)
    standby = (
        f"nbsched: standby for {cfg.state_dir}: the engine of pid {holder} dispatches; "
        f"this one takes over if it stops (Ctrl-C stops this one)"
    )
    serving = (
        f"nbsched: serving {cfg.state_dir} ({s.provider.name} GPUs: {s.num_gpus}); "
        f"Ctrl-C stops the engine, running jobs go on"
    )
    print(standby if holder is not None else serving, flush=True)


def _say_events(s: GPUJobScheduler, events: Sequence[Any], as_json: bool) -> None:
    """One line per job start and end, while this engine dispatches (a standby's
    lines would repeat those of the engine that does)."""
    if not events or not s.is_dispatcher:
        return
    for e in events:
        print(json.dumps({"event": dataclasses.asdict(e)}) if as_json else e.line())
    sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main", "build_parser", "default_state_dir"]
