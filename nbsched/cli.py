"""The ``nbsched`` command: the magics' verbs, from a terminal.

Every verb takes ``--state-dir`` (default ``$NBSCHED_HOME`` or ``~/.nbsched``) and
works from another process whether or not an engine is running: ``add`` queues
in the store (a running engine starts it at once), ``status`` reads the store.
Errors exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import pandas as pd

from .config import PROVIDERS, SchedulerConfig, default_state_dir
from .errors import NbschedError
from .scheduler import GPUJobScheduler


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
    parser = argparse.ArgumentParser(prog="nbsched", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("demo", help="run a small mixed sweep on this machine's GPUs and exit")
    _common(p)
    p = sub.add_parser("serve", help="run the engine in the foreground (Ctrl-C stops it)")
    _common(p)
    p.add_argument("--executor", choices=("direct", "screen", "ray"), default=None)
    p.add_argument("--ray-address", default=None, help="with --executor ray: 'auto' or host:port")
    p.add_argument("--jobs-file", default=None)
    p.add_argument("--llm-config", default=None)
    for verb, text in (
        ("status", "GPUs and queue"),
        ("gpus", "the GPU table"),
        ("screens", "screen sessions of running jobs"),
    ):
        _common(sub.add_parser(verb, help=text))
    p = sub.add_parser("jobs", help="the job table")
    _common(p)
    p.add_argument("--status", default=None, help="queued, running, ended, failed, ...")
    p = sub.add_parser("add", help="queue a script: nbsched add train.py -- --lr 0.1")
    _common(p)
    _job_opts(p)
    p.add_argument("--env", default=None, help="conda environment")
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
        keep = {
            k: info[k]
            for k in ("gpu_provider", "num_gpus", "simulated_gpus_file", "executor", "ray_address")
            if k in info
        }
        s = GPUJobScheduler(config=cfg.replace(**keep))
    return s


def _print_frame(df: pd.DataFrame, as_json: bool, columns: Sequence[str] | None = None) -> None:
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
    except (NbschedError, ValueError, TypeError, FileNotFoundError, TimeoutError) as exc:
        print(f"nbsched {ns.verb}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(ns: argparse.Namespace) -> int:
    if ns.verb == "demo":
        from .demo import run_demo

        return run_demo(_config(ns) if ns.state_dir else None, ns)
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
        counts = s.counts()
        if ns.json:
            print(
                json.dumps(
                    {
                        "counts": counts,
                        "gpus": json.loads(s.get_gpu_status().to_json(orient="records")),
                        "notices": s.store.notices(),
                    }
                )
            )
            return 0
        print("queue: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        holder = s._lease.holder_pid()
        print(f"engine: {'pid ' + str(holder) if holder else 'none running'}")
        _print_frame(s.get_gpu_status(), False)
        active = s.jobs(status="active")
        if not active.empty:
            print()
            _print_frame(active, False, JOB_TABLE)
        for n in s.store.notices(10):
            print(f"{n['level'].upper()}: {n['source']}: {n['message']}")
        return 0
    if verb == "gpus":
        _print_frame(s.get_gpu_status(), ns.json)
    elif verb == "jobs":
        _print_frame(s.jobs(status=ns.status), ns.json, JOB_TABLE)
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
            jid = s.add_job(ns.script, ns.env, args, **common)
        else:
            cmd = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
            if not cmd:
                raise ValueError("run needs a command: nbsched run -- COMMAND")
            jid = s.add_command(" ".join(cmd), **common)
        print(json.dumps({"id": jid}) if ns.json else jid)
    elif verb == "retry":
        for jid in ns.ids:
            print(s.retry(jid))
    elif verb == "cancel":
        for jid in ns.ids:
            done = s.cancel(jid)
            print(f"{jid}: {'cancelled' if done else 'had already ended'}")
    elif verb == "pause":
        s.pause_gpu(ns.gpu)
    elif verb == "resume":
        s.resume_gpu(ns.gpu)
    elif verb == "logs":
        sys.stdout.write(s.logs(ns.id, tail=ns.lines))
    elif verb == "wait":
        _print_frame(s.wait(ns.ids or None, timeout=ns.timeout), ns.json, JOB_TABLE)
    elif verb == "screens":
        rows = s.screens() if hasattr(s, "screens") else []
        if ns.json:
            print(json.dumps(rows))
        else:
            for row in rows:
                print(f"{row['session']}\tjob {row['id']}")
    return 0


def _serve(ns: argparse.Namespace) -> int:
    cfg = _config(
        ns,
        executor=ns.executor,
        jobs_file=ns.jobs_file,
        llm_config_file=ns.llm_config,
        ray_address=ns.ray_address,
    )
    s = GPUJobScheduler(config=cfg)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    s.start()
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
