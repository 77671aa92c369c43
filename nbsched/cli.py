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
import os
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
    p.add_argument("--state-dir", default=None, help="state directory (default ~/.nbsched)")
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

    p = sub.add_parser("demo", help="run a small mixed sweep on this machine's GPUs and exit")
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
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("run", help="queue a shell command: nbsched run -- nvidia-smi")
    _common(p)
    _job_opts(p)
    p.add_argument("command", nargs=argparse.REMAINDER)
    for verb, text in (("retry", "queue ended jobs again"), ("cancel", "cancel jobs")):
        p = sub.add_parser(verb, help=text)
        _common(p)
        p.add_argument("ids", nargs="+")
    for verb in ("pause", "resume"):
        p = sub.add_parser(verb, help=f"{verb} a GPU")
        _common(p)
        p.add_argument("gpu", type=int)
    p = sub.add_parser("logs", help="a job's output")
    _common(p)
    p.add_argument("id")
    p.add_argument("-n", "--lines", type=int, default=50)
    p = sub.add_parser("wait", help="wait for jobs to end")
    _common(p)
    p.add_argument("ids", nargs="*")
    p.add_argument("--timeout", type=float, default=None)
    return parser


def _config(ns: argparse.Namespace, **extra: Any) -> SchedulerConfig:
    values: dict[str, Any] = {}
    if ns.state_dir:
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
    saved = s.store.kv_get("engine")
    if saved and ns.provider is None and ns.simulate is None and ns.num_gpus is None:
        info = json.loads(saved)
        s.close()
        names = ["gpu_provider", "num_gpus", "simulated_gpus_file", "executor", "ray_address"]
        if ns.verb == "add":  # --llm MODEL in the arguments: the engine's LLM config decides
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
        with pd.option_context("display.max_colwidth", 60, "display.width", 200):
            print(df.to_string(index=False))


JOB_TABLE = (
    "id",
    "status",
    "priority",
    "gpus",
    "required_gpus",
    "exit_code",
    "attempts",
    "command",
)


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(ns)
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
            args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
            jid = s.add_job(
                ns.script, ns.env, args, launcher=ns.launcher, gpu_arg=ns.gpu_arg, **common
            )
        else:
            cmd = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
            if not cmd:
                raise ValueError("run needs a command: nbsched run -- COMMAND")
            jid = s.add_command(" ".join(cmd), **common)
        print(json.dumps({"id": jid}) if ns.json else jid)
    elif verb == "retry":
        ids = [s.retry(jid) for jid in ns.ids]
        print(json.dumps({"retried": ids}) if ns.json else "\n".join(ids))
    elif verb == "cancel":
        done = {jid: s.cancel(jid) for jid in ns.ids}
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
        paused = ns.gpu in s.store.paused()
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
        _print_frame(s.wait(ns.ids or None, timeout=ns.timeout), ns.json, JOB_TABLE)
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
    holder = s._lease.holder_pid()
    notices = s.store.notices(20)
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
    s = GPUJobScheduler(config=cfg)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    s.start()
    if ns.json:
        info = {"state_dir": str(cfg.state_dir), "pid": os.getpid(), "gpus": s.num_gpus}
        print(json.dumps({"serving": info, "provider": s.provider.name}), flush=True)
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
