"""The ``nbsched`` command: the magics' verbs, from a terminal.

Every verb takes ``--state-dir`` (default ``$NBSCHED_HOME`` or ``~/.nbsched``) and
works from another process whether or not an engine is running: ``add`` queues
in the store (a running engine starts it at once), ``status`` reads the store.
Errors exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .config import PROVIDERS, SchedulerConfig, default_state_dir
from .errors import NbschedError
from .scheduler import GPUJobScheduler

if TYPE_CHECKING:
    import pandas as pd


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr (exit status 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir", default=None, help="state directory (default $NBSCHED_HOME or ~/.nbsched)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--provider", choices=PROVIDERS, default=None)
    p.add_argument("--num-gpus", type=int, default=None)
    p.add_argument(
        "--simulate",
        type=int,
        metavar="N",
        default=None,
        help="short for --provider simulated --num-gpus N",
    )


def _job_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", type=float, default=None, help="GPUs: a fraction or a whole number")
    p.add_argument("--allowed", default=None, help="allowed GPUs, e.g. 0-3,5")
    p.add_argument("--priority", type=int, default=0, help="lower runs first (default 0)")
    p.add_argument("--retries", type=int, default=None, help="re-runs after a failure")
    p.add_argument("--name", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nbsched", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser(
        "demo",
        help="run a small mixed sweep on this machine's GPUs and exit",
        description="Run a small mixed sweep on this machine's GPUs (simulated ones where "
        "there are none) and exit; in a temporary state directory, removed at the end, "
        "unless --state-dir names one.",
    )
    _common(p)
    p = sub.add_parser("serve", help="run the engine in the foreground (Ctrl-C stops it)")
    _common(p)
    p.add_argument("--executor", choices=("direct", "screen", "ray"), default=None)
    p.add_argument("--ray-address", default=None, help="with --executor ray: 'auto' or host:port")
    p.add_argument("--jobs-file", default=None)
    p.add_argument("--llm-config", default=None)
    p.add_argument("--max-retries", type=int, default=None, help="re-runs of a failed job")
    for verb, text in (
        ("status", "GPUs and queue"),
        ("gpus", "the GPU table"),
        ("screens", "screen sessions of running jobs"),
    ):
        _common(sub.add_parser(verb, help=text))
    p = sub.add_parser("jobs", help="the job table")
    _common(p)
    p.add_argument("--status", default=None, help="queued, running, ended, failed, ...")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--first", type=int, metavar="N", default=None, help="only the first N")
    only.add_argument("--last", type=int, metavar="N", default=None, help="only the last N")
    p = sub.add_parser("add", help="queue a script: nbsched add train.py -- --lr 0.1")
    _common(p)
    _job_opts(p)
    p.add_argument("--env", default=None, help="conda environment")
    p.add_argument("--launcher", choices=("torchrun",), default=None, help="run under torchrun")
    p.add_argument(
        "--gpu-arg", default=None, help="pass the job's local GPU indices with this option"
    )
    p.add_argument("script")
    p = sub.add_parser(
        "run",
        help="queue a shell command: nbsched run -- nvidia-smi",
        description="Queue a shell command (bash -c). One word after -- is the command "
        "line as it is ('nvidia-smi; sleep 1'); several are joined with their quoting "
        "kept, so they reach the job as your shell split them.",
    )
    _common(p)
    _job_opts(p)
    p.add_argument("command", nargs="*", help="the command (better after --)")
    p = sub.add_parser(
        "sweep",
        help="queue one job per combination: nbsched sweep train.py -- --lr '{0.1,0.01}'",
        description="Queue one job per combination of the {a,b} / {1..5} groups in the "
        "arguments after -- (quote the braces: your shell would expand them itself).",
    )
    _common(p)
    _job_opts(p)
    p.add_argument("--env", default=None, help="conda environment")
    p.add_argument("--limit", type=int, default=None, help="allow a sweep of up to N jobs")
    p.add_argument("script")
    p = sub.add_parser("sweeps", help="every sweep and how far it got")
    _common(p)
    p = sub.add_parser("results", help="a sweep's table: parameters, status, results")
    _common(p)
    p.add_argument("sweep", nargs="?", help="sweep id such as sw1 (default: the latest)")
    p = sub.add_parser("why", help="why a queued job is waiting")
    _common(p)
    p.add_argument("id")
    for verb, text in (("retry", "queue ended jobs again"), ("cancel", "cancel jobs")):
        p = sub.add_parser(verb, help=f"{text} (every id is checked before any is done)")
        _common(p)
        p.add_argument("ids", nargs="+")
    for verb in ("pause", "resume"):
        p = sub.add_parser(verb, help=f"{verb} a GPU")
        _common(p)
        p.add_argument("gpu", type=int)
    p = sub.add_parser("logs", help="a job's output")
    _common(p)
    p.add_argument("id")
    p.add_argument("-n", "--lines", type=_lines, default=50, help="last N lines (0: all)")
    p = sub.add_parser(
        "wait",
        help="wait for jobs to end",
        description="Wait for those jobs (default: every queued and running one) to end, "
        "then print their rows. Exit status: 0 if every one succeeded, 1 if not.",
    )
    _common(p)
    p.add_argument("ids", nargs="*")
    p.add_argument("--timeout", type=_seconds, default=None, help="give up after S seconds")
    return parser


def _lines(text: str) -> int | None:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of lines >= 0 (0: all)")
    return n or None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:  # (NaN too)
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds >= 0")
    return value


def _config(ns: argparse.Namespace, **extra: Any) -> SchedulerConfig:
    values: dict[str, Any] = {}
    if ns.state_dir is not None:  # ('' is refused by the config, not taken as unset)
        values["state_dir"] = ns.state_dir
    if ns.simulate is not None:
        values["gpu_provider"], values["num_gpus"] = "simulated", ns.simulate
    if ns.provider:
        values["gpu_provider"] = ns.provider
    if ns.num_gpus is not None:
        values["num_gpus"] = ns.num_gpus
    values.update({k: v for k, v in extra.items() if v is not None})
    return SchedulerConfig(**values)


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


def _print_frame(df: pd.DataFrame, as_json: bool, columns: Sequence[str] | None = None) -> None:
    import pandas as pd  # lazily: `nbsched add` and friends start faster without it

    if as_json:
        print(df.to_json(orient="records", date_format="iso"))
        return
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    if df.empty:
        print("(none)")
    else:
        with pd.option_context("display.width", 200):
            print(df.to_string(index=False, max_colwidth=60, na_rep=""))


JOB_TABLE = (
    "id",
    "status",
    "priority",
    "gpus",
    "required_gpus",
    "exit_code",
    "attempts",
    "command",
    "reason",
)


#: The verbs whose words after ``--`` are the job's: a script's arguments, a command.
_TAIL_VERBS = ("add", "run", "sweep")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line: for ``add``, ``run`` and ``sweep``, nbsched's options are
    everything before the first ``--`` (before or after the script), and the job's
    words everything after it (``ns.tail``)."""
    parser = build_parser()
    argv = list(argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    tail: list[str] | None = None
    if verb in _TAIL_VERBS and "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1 :]
    ns, extra = parser.parse_known_args(argv)
    if extra:
        where = {"add": "the script's arguments", "sweep": "the swept arguments"}
        hint = f"; {where[verb]} go after --" if verb in where else ""
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    ns.tail = tail
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
    if ns.verb == "serve":
        return _serve(ns)
    s = _client(ns)
    try:
        return _verb(s, ns)
    finally:
        s.close()


def _verb(s: GPUJobScheduler, ns: argparse.Namespace) -> int:
    verb = ns.verb
    if verb == "status":
        return _status(s, ns.json)
    if verb == "gpus":
        _print_frame(s.get_gpu_status(), ns.json)
    elif verb == "jobs":
        _print_frame(s.jobs(status=ns.status, first=ns.first, last=ns.last), ns.json, JOB_TABLE)
    elif verb in ("add", "run"):
        common = dict(
            required_gpus=ns.gpus,
            allowed_gpus=ns.allowed,
            priority=ns.priority,
            max_retries=ns.retries,
            name=ns.name,
        )
        if verb == "add":
            jid = s.add_job(
                ns.script,
                ns.env,
                ns.tail or [],
                launcher=ns.launcher,
                gpu_arg=ns.gpu_arg,
                **common,
            )
        else:
            if ns.command and ns.tail is not None:
                raise ValueError(
                    f"run: {' '.join(ns.command)!r} before --: the command goes after --"
                )
            cmd = ns.tail if ns.tail is not None else ns.command
            if not cmd:
                raise ValueError("run needs a command: nbsched run -- COMMAND")
            # One word is a command line as it is; several keep the quoting the user's
            # shell removed, so each reaches the job as it was typed.
            jid = s.add_command(cmd[0] if len(cmd) == 1 else shlex.join(cmd), **common)
        print(json.dumps({"id": jid}) if ns.json else jid)
    elif verb == "sweep":
        if not ns.tail:
            raise ValueError(
                "sweep needs the swept arguments after --, e.g. "
                "nbsched sweep train.py -- --lr '{0.1,0.01}' --seed '{1..3}'"
            )
        ids = s.add_sweep(
            ns.script,
            args=ns.tail,
            conda_env=ns.env,
            priority=ns.priority,
            required_gpus=ns.gpus,
            allowed_gpus=ns.allowed,
            limit=ns.limit,
            max_retries=ns.retries,
            name=ns.name,
        )
        sweep_id = getattr(ids, "sweep_id", None)
        if ns.json:
            print(json.dumps({"sweep": sweep_id, "ids": list(ids)}))
        else:
            print(f"{sweep_id}: {len(ids)} job(s) queued" + (f": {' '.join(ids)}" if ids else ""))
    elif verb == "sweeps":
        _print_frame(s.sweeps(), ns.json)
    elif verb == "results":
        _print_frame(s.sweep(ns.sweep), ns.json)
    elif verb == "why":
        text = s.why(ns.id)
        print(json.dumps({"id": ns.id, "why": text}) if ns.json else text)
    elif verb == "retry":
        for jid in ns.ids:  # every id first: a bad one retries none
            s.job(jid)
        ids = [s.retry(jid) for jid in dict.fromkeys(ns.ids)]
        print(json.dumps({"retried": ids}) if ns.json else "\n".join(ids))
    elif verb == "cancel":
        for jid in ns.ids:  # every id first: a bad one cancels none
            s.job(jid)
        done = {jid: s.cancel(jid) for jid in dict.fromkeys(ns.ids)}  # (each once)
        if ns.json:
            print(json.dumps([{"id": k, "cancelled": v} for k, v in done.items()]))
        else:
            for jid, ok in done.items():
                print(f"{jid}: {'cancelled' if ok else 'had already ended'}")
    elif verb in ("pause", "resume"):
        if verb == "pause":
            s.pause_gpu(ns.gpu)
        else:
            s.resume_gpu(ns.gpu)
        gpus = s.get_gpu_status()
        paused = bool(gpus.loc[gpus["gpu"] == ns.gpu, "paused"].any())
        if ns.json:
            print(json.dumps({"gpu": ns.gpu, "paused": paused}))
        else:
            print(f"GPU {ns.gpu}: {'paused' if paused else 'resumed'}")
    elif verb == "logs":
        text = s.logs(ns.id, tail=ns.lines)
        if ns.json:
            print(json.dumps({"id": s.job(ns.id)["id"], "log": text}))
        else:
            sys.stdout.write(text)
    elif verb == "wait":
        active = s.jobs(status="active")["id"]
        if s.engine_pid is None and (active.isin(ns.ids).any() if ns.ids else len(active)):
            print(
                "nbsched wait: no engine is running on this state directory: queued jobs "
                "start once one does (nbsched serve, or a notebook's scheduler)",
                file=sys.stderr,
            )
        waited = s.wait(ns.ids or None, timeout=ns.timeout)
        _print_frame(waited, ns.json, JOB_TABLE)
        return 0 if (waited["status"] == "succeeded").all() else 1
    elif verb == "screens":
        rows = s.screens()
        if ns.json:
            print(json.dumps(rows))
        elif not rows:
            print("(no running job has a screen session)")
        else:
            print("id\tpid\tsession (attach with: screen -r SESSION)")
            for row in rows:
                print(f"{row['id']}\t{row['pid']}\t{row['session'] or '(gone)'}")
    return 0


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
    _print_frame(s.get_gpu_status(), False)
    active = s.jobs(status="active")
    if not active.empty:
        print()
        _print_frame(active, False, JOB_TABLE)
    if notices:
        print("\nnotices:")
    for n in notices[-10:]:
        when = time.strftime("%H:%M:%S", time.localtime(n["at"]))
        print(f"  {when} {n['level'].upper()}: {n['source']}: {n['message']}")
    return 0


def _serve(ns: argparse.Namespace) -> int:
    cfg = _config(
        ns,
        executor=ns.executor,
        jobs_file=os.path.abspath(ns.jobs_file) if ns.jobs_file else None,
        llm_config_file=os.path.abspath(ns.llm_config) if ns.llm_config else None,
        max_retries=ns.max_retries,
        ray_address=ns.ray_address,
    )
    if ns.ray_address is not None and cfg.executor != "ray":
        raise ValueError(f"--ray-address {ns.ray_address}: only with --executor ray")
    s = GPUJobScheduler(config=cfg)
    stop = threading.Event()
    s.start()
    # (after start: starting Ray puts in signal handlers of its own)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    holder = None if s.is_dispatcher else s.engine_pid
    if ns.json:
        info = {"state_dir": str(cfg.state_dir), "pid": os.getpid(), "gpus": s.num_gpus}
        if holder is not None:
            info["standby_for"] = holder
        print(json.dumps({"serving": info, "provider": s.provider.name}), flush=True)
    elif holder is not None:
        print(
            f"nbsched: standby for {cfg.state_dir}: the engine of pid {holder} dispatches; "
            f"this one takes over if it stops (Ctrl-C stops this one)",
            flush=True,
        )
    else:
        print(
            f"nbsched: serving {cfg.state_dir} ({s.provider.name} GPUs: {s.num_gpus}); "
            f"Ctrl-C stops the engine, running jobs go on",
            flush=True,
        )
    stop.wait()
    s.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main", "build_parser", "default_state_dir"]
