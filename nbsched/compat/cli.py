"""``python -m nbsched.compat``: the original program's command, verb for verb.

``start`` (``--gpus --jobs-file --llm-config --screen --mem-threshold
--load-threshold --monitor-interval --state-interval --max-assign-attempts
--assign-retry-wait``), ``add SCRIPT --conda --args --priority --gpus
--output-file`` (``--gpus``: the GPUs the job may use, as in the original), ``status``,
``pause GPU``, ``resume GPU`` and ``screens``; ``--state-file`` before or after the
verb.  ``start`` logs as the original did, to ``gpu_scheduler.log`` and the terminal,
a line for each job assigned and each that ends.

Two options are nbsched's own: ``--state-dir`` (where nbsched keeps its database;
default ``$NBSCHED_HOME`` or ``~/.nbsched``) and ``--gpu-provider``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from nbsched import GPUJobScheduler as Engine
from nbsched import SchedulerConfig

from . import statefile
from .scheduler import (
    ASSIGNMENT_RETRY_WAIT_S,
    DEFAULT_LLM_CONFIG_FILE,
    FILE_MONITOR_INTERVAL_S,
    MAX_ASSIGNMENT_ATTEMPTS,
    STATE_CHECK_INTERVAL_S,
    GPUJobScheduler,
)

DEFAULT_JOBS_FILE = "jobs.txt"
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - [%(threadName)s] - %(message)s"


def build_parser() -> argparse.ArgumentParser:
    """The original's parser, with nbsched's ``--state-dir`` and ``--gpu-provider``."""
    parser = argparse.ArgumentParser(
        prog="python -m nbsched.compat",
        description="The original GPU job scheduler's command, on nbsched's engine.",
    )
    _common(parser, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="Start the scheduler (until Ctrl+C).")
    start.add_argument("--gpus", type=int, default=None, help="GPUs to manage (default: all)")
    start.add_argument("--jobs-file", default=DEFAULT_JOBS_FILE, help='"" for none')
    start.add_argument("--llm-config", default=DEFAULT_LLM_CONFIG_FILE)
    start.add_argument("--screen", action="store_true", help="run jobs in GNU screen")
    start.add_argument("--mem-threshold", type=float, default=0.8)
    start.add_argument("--load-threshold", type=float, default=0.8)
    start.add_argument("--monitor-interval", type=float, default=FILE_MONITOR_INTERVAL_S)
    start.add_argument("--state-interval", type=float, default=STATE_CHECK_INTERVAL_S)
    start.add_argument("--max-assign-attempts", type=int, default=MAX_ASSIGNMENT_ATTEMPTS)
    start.add_argument("--assign-retry-wait", type=float, default=ASSIGNMENT_RETRY_WAIT_S)
    add = sub.add_parser("add", help="Append a job line to the jobs file.")
    add.add_argument("script")
    add.add_argument("--conda", help="conda environment")
    add.add_argument("--args", help="the script's arguments, quoted as one word")
    add.add_argument("--priority", type=int, default=0, help="lower runs first")
    add.add_argument("--gpus", help='GPUs the job may use ("0,1", "0-3,5")')
    add.add_argument("--output-file", default=DEFAULT_JOBS_FILE, help='"-": print the line')
    sub.add_parser("status", help="Show the GPUs.")
    for verb in ("pause", "resume"):
        p = sub.add_parser(verb, help=f"{verb.title()} a GPU.")
        p.add_argument("gpu_id", type=int)
    sub.add_parser("screens", help="List the GNU screen sessions of running jobs.")
    for p in sub.choices.values():
        _common(p, argparse.SUPPRESS)
    return parser


def _common(parser: argparse.ArgumentParser, default: object) -> None:
    """The options taken before or after the verb."""
    parser.add_argument("--state-file", default=default, help="the original's state file")
    parser.add_argument("--state-dir", default=default, help="nbsched's state directory")
    parser.add_argument(
        "--gpu-provider",
        default=default,
        choices=("auto", "nvml", "gputil", "simulated"),
        help="where nbsched reads the GPUs (default: auto)",
    )


def _config(ns: argparse.Namespace) -> SchedulerConfig:
    fields: dict[str, object] = {}
    if getattr(ns, "state_dir", None):
        fields["state_dir"] = ns.state_dir
    if getattr(ns, "gpu_provider", None):
        fields["gpu_provider"] = ns.gpu_provider
    return SchedulerConfig(**fields)  # type: ignore[arg-type]


def _state_file(ns: argparse.Namespace) -> str:
    return str(getattr(ns, "state_file", None) or statefile.DEFAULT_STATE_FILE)


def _gpu_count(ns: argparse.Namespace, config: SchedulerConfig) -> int:
    """GPUs for a control command: the state file's count, else what nbsched sees."""
    state = statefile.read_state(_state_file(ns))
    if state is not None and state.gpu_status:
        return len(state.gpu_status)
    engine = Engine(config=config)
    try:
        return engine.num_gpus
    finally:
        engine.close()


def _control(ns: argparse.Namespace, num_gpus: int | None = None) -> GPUJobScheduler:
    config = _config(ns)
    n = num_gpus if num_gpus is not None else _gpu_count(ns, config)
    return GPUJobScheduler(num_gpus=n, state_file_path=_state_file(ns), config=config)


def _setup_logging() -> None:
    """The original's log: ``gpu_scheduler.log`` and the terminal, INFO and up."""
    handlers: list[logging.Handler] = [
        logging.FileHandler(statefile.DEFAULT_LOG_FILE),
        logging.StreamHandler(),
    ]
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def cmd_start(ns: argparse.Namespace) -> int:
    _setup_logging()
    config = _config(ns)
    gpus = ns.gpus if ns.gpus is not None else _gpu_count(ns, config)
    scheduler = GPUJobScheduler(
        num_gpus=gpus,
        gpu_memory_threshold=ns.mem_threshold,
        gpu_load_threshold=ns.load_threshold,
        jobs_file_path=ns.jobs_file or None,
        llm_config_path=ns.llm_config,
        state_file_path=_state_file(ns),
        monitor_interval=ns.monitor_interval,
        state_check_interval=ns.state_interval,
        max_assignment_attempts=ns.max_assign_attempts,
        assignment_retry_wait=ns.assign_retry_wait,
        config=config,
    )
    if ns.screen:
        scheduler.enable_screen()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    scheduler.start()
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        logging.getLogger("nbsched.compat").info("Ctrl+C received. Initiating shutdown...")
    finally:
        scheduler.close()
        logging.getLogger("nbsched.compat").info("Scheduler shutdown complete.")
    return 0


def cmd_add(ns: argparse.Namespace) -> int:
    parts = [str(ns.priority), ns.script, ns.conda or "", ns.args or "", ns.gpus or ""]
    while len(parts) > 2 and parts[-1] == "":
        parts.pop()
    line = ",".join(parts)
    if ns.output_file == "-":
        print(line)
        return 0
    try:
        with Path(ns.output_file).open("a") as fh:
            fh.write(line + "\n")
    except OSError as exc:
        print(f"Error writing to file {ns.output_file}: {exc}")
        return 1
    print(f"Job line appended to: {ns.output_file}")
    print(f"Line: {line}")
    print("NOTE: If the scheduler is running with monitoring enabled, it should pick this up.")
    return 0


def cmd_status(ns: argparse.Namespace) -> int:
    scheduler = _control(ns)
    try:
        status = scheduler.get_gpu_status()
        queued = len(scheduler.get_job_queue_info())
        running = len(scheduler.nbsched.jobs(status="running"))
    finally:
        scheduler.nbsched.close()
    print(f"\n--- GPU Status (nbsched: {scheduler.nbsched.config.state_dir}) ---")
    print(f"{'GPU ID':<8} {'State':<15} {'Allocation':<12} {'Memory Util':<15} {'Load Util':<15}")
    print("-" * 70)
    for gpu in status:
        print(
            f"{gpu['gpu_id']:<8} {gpu['state']:<15} {gpu['allocation']:<12} "
            f"{gpu['memory_util']:<15} {gpu['load']:<15}"
        )
    print(f"\nQueued: {queued}\nRunning: {running}")
    return 0


def cmd_pause_resume(ns: argparse.Namespace) -> int:
    config = _config(ns)
    n = _gpu_count(ns, config)
    verb = ns.command
    if not 0 <= ns.gpu_id < n:
        print(f"Error: Invalid GPU ID {ns.gpu_id}. Expected 0 to {n - 1}.")
        return 1
    scheduler = _control(ns, n)
    try:
        done = (scheduler.pause_gpu if verb == "pause" else scheduler.resume_gpu)(ns.gpu_id)
    finally:
        scheduler.nbsched.close()
    if not done:
        print(f"Failed to update state file '{_state_file(ns)}' to {verb} GPU {ns.gpu_id}.")
        return 1
    print(f"GPU {ns.gpu_id} {verb} request written to state file '{_state_file(ns)}'.")
    print("The running scheduler has it now (nbsched's database is shared).")
    return 0


def cmd_screens(ns: argparse.Namespace) -> int:
    engine = Engine(config=_config(ns))
    try:
        sessions = engine.screens()
    finally:
        engine.close()
    print("Listing active scheduler GNU Screen sessions...")
    if not sessions:
        print("No matching screen sessions found.")
        return 0
    print("\n--- Active GPU Job Screen Sessions ---")
    for i, s in enumerate(sessions, 1):
        print(f"{i}. {s['session']} (job {s['id']}; Attach: screen -r {s['session']})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    run = {
        "start": cmd_start,
        "add": cmd_add,
        "status": cmd_status,
        "pause": cmd_pause_resume,
        "resume": cmd_pause_resume,
        "screens": cmd_screens,
    }[ns.command]
    try:
        return run(ns)
    except (ValueError, TypeError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
