"""What runs on a Ray worker: one job as a subprocess, its output streamed back.

:func:`run_job` is the body of the Ray task behind each job.  It is a generator
(a Ray *streaming* task): it yields a ``started`` event (pid, node, Ray's GPU ids),
the job's output in chunks (at most every ``flush_s`` or ``chunk_bytes``), and an
``exit`` event with the exit code and the job's result file.  The driver appends
the chunks to the job's log on its own machine.

The job runs in a session of its own with the environment the driver built, except
``CUDA_VISIBLE_DEVICES``: the GPUs of this node that nbsched's plan chose (see
:mod:`nbsched.executors.ray` for why not always the ones Ray picked), as this node's
device ids.  When the job's main
process exits, whatever it left behind in its process group is killed, so a job's
processes end with the job.  If the worker itself dies (Ray kills it when the task
is cancelled by force, or when the driver that owns the task goes away), a *guard*
process, one per worker and reused like the worker, kills the process groups of the
jobs the worker was running: it reads ``+ PGID`` / ``- PGID`` lines on a pipe whose
other end only the worker holds, and at end of file it signals what is left.

This module imports only the standard library at its top, and is shipped to the
workers by value, so a worker does not import nbsched (and pandas) to run a job; only
ending a job's tree on a cancel imports :mod:`nbsched.executors.process` there.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any

#: Reads ``+ PGID`` / ``- PGID``; at end of input, SIGTERM then SIGKILL what is tracked.
GUARD_SCRIPT = r"""
declare -A groups
while read -r op pg; do
  case $op in
    +) groups[$pg]=1 ;;
    -) unset "groups[$pg]" ;;
  esac
done
[ ${#groups[@]} -eq 0 ] && exit 0
for pg in "${!groups[@]}"; do kill -TERM -- "-$pg" 2>/dev/null; done
sleep "$1"
for pg in "${!groups[@]}"; do kill -KILL -- "-$pg" 2>/dev/null; done
"""

#: Largest result file carried back to the driver.
MAX_RESULT_BYTES = 1 << 20


class _Guard:
    """The worker's guard process (see the module doc).

    It is started through a launcher that exits at once, so it is no child of the
    worker: when a driver goes away, Ray kills the worker *and its children* (the job's
    main process among them), and a guard that was one of them died before it could end
    what the job had started in the background."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipe: Any = None  # the write end of the guard's stdin
        self._tracked: set[int] = set()

    def _start(self, grace_s: float) -> Any:
        launcher = subprocess.Popen(
            [
                "bash",
                "-c",
                # (an explicit <&0: a background job's stdin is /dev/null otherwise)
                'bash -c "$1" nbsched-guard "$2" <&0 >/dev/null 2>&1 &',
                "nbsched-guard-launcher",
                GUARD_SCRIPT,
                f"{grace_s:g}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        launcher.wait()  # (it exits once the guard runs: no zombie is left behind)
        assert launcher.stdin is not None
        for pg in self._tracked:
            launcher.stdin.write(f"+ {pg}\n".encode())
        return launcher.stdin

    def _send(self, line: str, grace_s: float) -> None:
        for _ in range(2):
            if self._pipe is None:
                self._pipe = self._start(grace_s)
            try:
                self._pipe.write(line.encode())
                self._pipe.flush()
                return
            except OSError:  # (it died: start another and tell it again)
                try:
                    self._pipe.close()
                except OSError:
                    pass
                self._pipe = None

    def track(self, pgid: int, grace_s: float) -> None:
        with self._lock:
            self._tracked.add(pgid)
            self._send(f"+ {pgid}\n", grace_s)

    def untrack(self, pgid: int, grace_s: float) -> None:
        with self._lock:
            self._tracked.discard(pgid)
            self._send(f"- {pgid}\n", grace_s)


_GUARD: _Guard | None = None  # made on the worker (a lock does not travel)


def _guard() -> _Guard:
    global _GUARD
    if _GUARD is None:
        _GUARD = _Guard()
    return _GUARD


def run_job(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None,
    grace_s: float,
    local_gpus: Sequence[int] | None = None,
    flush_s: float = 0.25,
    chunk_bytes: int = 256 * 1024,
) -> Iterator[Any]:
    """The Ray task behind a job: yields ``started``, output chunks (bytes), ``exit``.

    ``local_gpus`` are the GPUs of this node (Ray's instance numbers) that nbsched's
    plan chose; the job sees them as ``CUDA_VISIBLE_DEVICES``, translated to the
    device ids this node's Ray was given.  ``None`` keeps what Ray set.
    """
    import ray

    ctx = ray.get_runtime_context()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    result_dir = tempfile.mkdtemp(prefix="nbsched-result-")
    result_file = os.path.join(result_dir, "result.json")
    job_env = _job_env(env, local_gpus, gpu_ids, result_file)
    token = job_env.get("NBSCHED_JOB_TOKEN")
    proc: subprocess.Popen[bytes] | None = None
    try:
        try:
            proc = _spawn(argv, cwd, job_env)
        except OSError as exc:
            where = f"node {ctx.get_node_id()[:8]}"
            yield {"event": "error", "message": f"could not start on {where}: {exc}"}
            return
        _guard().track(proc.pid, grace_s)
        yield {
            "event": "started",
            "pid": proc.pid,
            "proc_start": _start_time(proc.pid),
            "node_id": ctx.get_node_id(),
            "ray_gpu_ids": gpu_ids,
            "visible": job_env["CUDA_VISIBLE_DEVICES"],
            "worker_pid": os.getpid(),
        }
        tail = yield from _stream(proc, flush_s, chunk_bytes)
        code = _reap(proc, grace_s)
        proc = None
        yield {"event": "exit", "code": code, "tail": tail, "result": _read_result(result_file)}
    except BaseException:
        # Cancelled (KeyboardInterrupt), or the driver went away (GeneratorExit): the
        # job must not outlive its task.
        if proc is not None:
            _kill_tree(proc.pid, token, grace_s)
            _reap(proc, grace_s)
        elif token:
            _kill_tree(None, token, grace_s)  # it may have been spawned before the interrupt
        raise
    finally:
        shutil.rmtree(result_dir, ignore_errors=True)


def _spawn(argv: Sequence[str], cwd: str | None, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the job in a session of its own, its output (stdout and stderr) to a pipe."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )


def _job_env(
    env: Mapping[str, str], local_gpus: Sequence[int] | None, gpu_ids: list[str], result_file: str
) -> dict[str, str]:
    """The job's environment: ``env``, its GPUs as this node's device ids (see
    :func:`run_job`), and where it may leave a result."""
    job_env = dict(env)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if local_gpus is not None:
        devices = _node_devices()
        visible = ",".join(
            devices[i] if devices is not None and i < len(devices) else str(i) for i in local_gpus
        )
    job_env["CUDA_VISIBLE_DEVICES"] = visible if visible is not None else ",".join(gpu_ids)
    job_env["NBSCHED_RESULT_FILE"] = result_file
    return job_env


def _node_devices() -> list[str] | None:
    """The CUDA device ids behind Ray's GPU instances on this node (``None``: 0, 1, ...)."""
    try:
        from ray._private.worker import global_worker

        ids = global_worker.original_visible_accelerator_ids.get("GPU")
    except Exception:
        return None
    return [str(i) for i in ids] if ids is not None else None


def _stream(
    proc: subprocess.Popen[bytes], flush_s: float, chunk_bytes: int
) -> Generator[bytes, None, bytes]:
    """Yield the job's output in chunks until its main process has ended; return the
    last chunk (sent with the ``exit`` event)."""
    assert proc.stdout is not None
    out = proc.stdout.fileno()
    os.set_blocking(out, False)
    sel = selectors.DefaultSelector()
    sel.register(out, selectors.EVENT_READ, "out")
    pidfd: int | None = None
    try:
        pidfd = os.pidfd_open(proc.pid)
        sel.register(pidfd, selectors.EVENT_READ, "exit")
    except (AttributeError, OSError):
        pidfd = None  # no pidfd: look at the process between reads
    buf = bytearray()
    last = time.monotonic()
    eof = ended = False
    drain_until: float | None = None
    try:
        while not eof:
            now = time.monotonic()
            timeout: float | None = None
            if buf:
                timeout = max(0.0, last + flush_s - now)
            if pidfd is None and not ended:
                timeout = 0.1 if timeout is None else min(timeout, 0.1)
            if drain_until is not None:
                remaining = max(0.0, drain_until - now)
                timeout = remaining if timeout is None else min(timeout, remaining)
            for key, _ in sel.select(timeout):
                if key.data == "out":
                    eof = _read_into(out, buf)
                elif not ended:
                    ended = True
                    sel.unregister(key.fd)
            if pidfd is None and not ended and _exited(proc.pid):
                ended = True
            if ended and drain_until is None:
                # The main process is gone: end what it left in its group, then read
                # to the end (a process that left the group may hold the pipe: 2 s).
                _kill_group(proc.pid)
                drain_until = time.monotonic() + 2.0
            if drain_until is not None and time.monotonic() >= drain_until:
                break
            now = time.monotonic()
            if eof:
                break
            if len(buf) >= chunk_bytes or (buf and now - last >= flush_s):
                yield bytes(buf)
                buf.clear()
                last = now
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
    return bytes(buf)


def _read_into(fd: int, buf: bytearray) -> bool:
    """Append what is readable; True at end of file."""
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if not data:
            return True
        buf += data
        if len(data) < 65536:
            return False


def _exited(pid: int) -> bool:
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left in the job's process group (its leader is a zombie now, so
    the group id is still the job's)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(proc: subprocess.Popen[bytes], grace_s: float) -> int:
    """Wait for the main process, untrack its group, and give its exit code as a shell
    would (128+N for a signal N)."""
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass
    _kill_group(proc.pid)  # also when the job closed its output and ran on
    _guard().untrack(proc.pid, grace_s)
    code = proc.wait()
    return 128 - code if code < 0 else code


def _read_result(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_RESULT_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_RESULT_BYTES:
        return None
    return data.decode("utf-8", errors="replace")


def _start_time(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return None


def _kill_tree(pid: int | None, token: str | None, grace_s: float) -> None:
    from nbsched.executors.process import kill_tree, process_start_time

    kill_tree(pid, process_start_time(pid) if pid else None, token, grace_s)


def kill_job(pid: int | None, proc_start: float | None, token: str, grace_s: float) -> int:
    """A Ray task run on the job's node: end the job's whole tree (its processes, its
    process group, every process carrying its token).  Returns how many were found."""
    from nbsched.executors.process import find_by_token, kill_tree

    found = len(find_by_token(token))
    kill_tree(pid, proc_start, token, grace_s)
    return found
