"""The Slurm executor: each job handed to Slurm with ``sbatch``; Slurm decides when and
where it runs, and nbsched shows it.

With ``executor="slurm"`` the dispatcher hands every queued job to this executor at
once (:mod:`nbsched.dispatcher.handoff`): the queue that matters is Slurm's, shared by
every user of the cluster, which is the point.  A job is ``running`` in nbsched from
its submission to Slurm; ``why()`` gives Slurm's reason while it is pending there, and
its start time is the one Slurm reports once it runs.

* **Submission** (:meth:`SlurmExecutor.start`): ``sbatch --parsable`` with the options
  of :mod:`.slurm_script` and the job's environment (the submitter's, as for any job).
  The Slurm job id is written to ``run/<token>.slurm`` before ``start`` returns: a new
  engine re-attaches by it.  A job submitted just before the engine died (the id not
  written yet) is found by its name, ``nbsched-<id>-<token prefix>``.
* **Following** (one thread per executor, while it watches a job): one ``squeue`` of
  this user's jobs per :data:`POLL_S`; a job Slurm reports running has its node and start
  time reported; a job that ended ``COMPLETED`` has exit code 0, one cancelled, timed
  out or lost with its node none (the state is the reason); a ``FAILED`` one, or one
  Slurm no longer lists, has its end read as :func:`.slurm_status.exit_of` says
  (``sacct -P``, ``scontrol show job``, the wrapper's record).
* **Cancel**: ``scancel``; Slurm ends every process of the job (SIGTERM, SIGKILL after
  ``KillWait``).  Slurm refusing (another user's job) is a
  :class:`~nbsched.errors.PermissionDeniedError` in nbsched's words.
* **Logs** go to the job's log in ``logs/`` (``--output``, appended), written by Slurm as
  the job's user; the result file is written by the job itself, as with any executor.
  On a cluster of several nodes the state directory must be on a file system the nodes
  share.
"""

from __future__ import annotations

import logging
import math
import os
import pwd
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import SchedulerConfig
from ..jobs import Job
from ..launch import build_argv
from .base import Executor, Exit, Launch, OnExit, OnStarted, Started
from .process import open_log
from .slurm_control import gpu_nodes, scancel, shards_per_gpu
from .slurm_script import WRAPPER, gres, sbatch_argv
from .slurm_status import (
    ENDED,
    QueueRow,
    SlurmError,
    accounting_on,
    exit_of,
    job_gres,
    parse_gres_used,
    pending_reason,
    slurm,
    squeue,
    state_exit,
)

logger = logging.getLogger(__name__)

#: Seconds between two looks at Slurm's queue while jobs are followed.
POLL_S = 0.25
#: How long the node's shards per GPU are reused before Slurm is asked again.
SHARDS_TTL_S = 60.0


def me() -> str:
    """This process's user name (what ``squeue -u`` takes)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def job_name(job: Job, token: str) -> str:
    return f"nbsched-{job.id}-{token[:8]}"


def id_file(run_dir: Path, token: str) -> Path:
    return run_dir / f"{token}.slurm"


def slurm_id(run_dir: Path, token: str | None) -> str | None:
    """The Slurm job id an attempt was submitted as, if it was."""
    if not token:
        return None
    try:
        return id_file(run_dir, token).read_text().strip() or None
    except OSError:
        pass
    from .slurm_array import array_id

    return array_id(run_dir, token)


def why_slurm(job: Job, run_dir: Path) -> str:
    """Where a job handed to Slurm stands, in Slurm's words (its pending reason)."""
    sid = slurm_id(run_dir, job.token)
    if sid is None:
        return f"job {job.id} is being handed to Slurm"
    try:
        row = squeue(ids=[sid], user=me()).get(sid)
    except SlurmError as exc:
        return f"job {job.id} is Slurm job {sid}; Slurm does not answer now ({exc})"
    if row is None:
        return f"job {job.id} is Slurm job {sid}, which Slurm no longer lists"
    if row.state == "PENDING":
        return f"job {job.id} (Slurm job {sid}) is {pending_reason(row.state, row.reason)}"
    return f"job {job.id} (Slurm job {sid}) is {row.state.lower()} in Slurm" + (
        f" on {row.node}" if row.node else ""
    )


@dataclass(frozen=True)
class Prepared:
    """One attempt as sbatch is given it."""

    launch: Launch
    token: str
    gres: str | None
    argv: tuple[str, ...]
    env: dict[str, str]


def submitted_id(out: str) -> str:
    """The job id ``sbatch --parsable`` printed (``ID`` or ``ID;cluster``)."""
    sid = out.strip().split(";")[0]
    if not sid.isdigit():
        raise SlurmError(f"sbatch answered {out.strip()!r}, not a job id")
    return sid


class _Watched:
    def __init__(self, job: Job, sid: str, on_exit: OnExit, exit_path: Path) -> None:
        self.job = job
        self.sid = sid
        self.on_exit = on_exit
        self.exit_path = exit_path
        self.began = False


class SlurmExecutor(Executor):
    name = "slurm"
    #: The job runs where Slurm puts it: recovery asks :meth:`watch`, not ``/proc``.
    local_processes = False
    #: A turn's attempts come together: alike ones go to Slurm as one job array.
    batches = True

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.wrapper = self.run_dir / "slurm-job.sh"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._watched: dict[str, _Watched] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._on_started: OnStarted | None = None
        self._shards: tuple[float, int | None] | None = None
        #: (when read, node -> the index of its first GPU): see :meth:`_gpus_of`.
        self._first: tuple[float, dict[str, int]] | None = None
        self._accounting: bool | None = None
        self._user = me()
        #: Slurm ids of the attempts this executor submitted (token -> id), and the
        #: attempts of each array still to end (its files go with the last).
        self._ids: dict[str, str] = {}
        self._arrays: dict[str, set[str]] = {}
        self._array_of: dict[str, str] = {}

    def is_available(self) -> bool:
        return shutil.which("sbatch") is not None

    # -- submitting -----------------------------------------------------------------------

    def write_script(self, path: Path, text: str) -> None:
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.chmod(tmp, 0o700)
            os.replace(tmp, path)

    def _shards_per_gpu(self) -> int | None:
        now = time.monotonic()
        if self._shards is None or now - self._shards[0] > SHARDS_TTL_S:
            self._shards = (now, shards_per_gpu())
        return self._shards[1]

    def prepare(self, launch: Launch) -> Prepared:
        """What sbatch is given for ``launch``: its GPU request, argv and environment."""
        job = launch.job
        token = job.token or launch.env["NBSCHED_JOB_TOKEN"]
        required = job.required_gpus
        value = gres(required, self._shards_per_gpu() if 0 < required < 1 else None)
        argv = launch.argv
        if job.spec.gpu_arg or job.spec.launcher:
            argv = build_argv(job, tuple(range(max(1, math.ceil(required)))), launch.env)
        os.close(open_log(launch.log_path))  # (0600, the user's, before Slurm appends)
        return Prepared(launch, token, value, tuple(argv), job_env(launch.env, required))

    def options(self, name: str, log: str, prepared: Prepared, array: str | None) -> list[str]:
        return sbatch_argv(
            job_name=name,
            log_path=log,
            cwd=prepared.launch.cwd,
            gres_value=prepared.gres,
            priority=prepared.launch.job.priority,
            partition=self.config.slurm_partition,
            account=self.config.slurm_account,
            options=self.config.slurm_options,
            array=array,
            time_limit=prepared.launch.job.spec.time_limit,
        )

    def start(self, launch: Launch) -> Started:
        prepared = self.prepare(launch)
        self.write_script(self.wrapper, WRAPPER)
        cmd = self.options(
            job_name(launch.job, prepared.token), str(launch.log_path), prepared, None
        )
        out = slurm(
            [*cmd, str(self.wrapper), str(launch.exit_path), *prepared.argv], env=prepared.env
        )
        self.record_id(prepared.token, submitted_id(out))
        return Started(pid=None, proc_start=None)

    def start_many(self, launches: list[Launch]) -> list[Started | Exception]:
        """Several attempts at once: those alike (same GPU request, priority and folder)
        as one job array each (see :mod:`.slurm_array`)."""
        if len(launches) == 1:
            return super().start_many(launches)
        from .slurm_array import start_arrays

        return start_arrays(self, launches)

    def record_id(self, token: str, sid: str) -> None:
        """Store the Slurm job id of an attempt (before start returns: re-attachment)."""
        path = id_file(self.run_dir, token)
        path.with_suffix(".tmp").write_text(sid + "\n")
        os.replace(path.with_suffix(".tmp"), path)
        with self._lock:
            self._ids[token] = sid

    def learn_ids(self, ids: dict[str, str], array: str) -> None:
        """The Slurm ids of an array's attempts (its ``.id`` file is written)."""
        with self._lock:
            self._ids.update(ids)
            self._arrays[array] = set(ids)
            self._array_of.update((token, array) for token in ids)

    # -- following ------------------------------------------------------------------------

    def watch(self, job: Job, on_exit: OnExit) -> None:
        token = job.token or ""
        with self._lock:
            sid = self._ids.get(token)
        sid = sid or slurm_id(self.run_dir, token) or self._find_by_name(job, token)
        if sid is None:
            on_exit(job, Exit(None, "the engine stopped before the job reached Slurm"))
            return
        with self._lock:
            self._watched[sid] = _Watched(job, sid, on_exit, self.run_dir / f"{token}.exit")
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._follow, name="nbsched-slurm", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def never_started(self, job: Job) -> bool:
        """No Slurm id recorded, and Slurm (answering) has no job of its name: the
        engine stopped between marking it running and ``sbatch``."""
        token = job.token or ""
        if slurm_id(self.run_dir, token) is not None:
            return False
        from .slurm_array import find_by_name

        try:
            found = find_by_name(self.run_dir, self._user, job_name(job, token), token, True)
        except SlurmError:
            return False  # (Slurm does not answer: watched, never run twice)
        return found is None

    def _find_by_name(self, job: Job, token: str) -> str | None:
        from .slurm_array import find_by_name

        return find_by_name(self.run_dir, self._user, job_name(job, token), token)

    def report_starts(self, on_started: OnStarted) -> None:
        with self._lock:
            self._on_started = on_started

    def _follow(self) -> None:
        while True:
            with self._lock:
                if self._closed or not self._watched:
                    self._thread = None
                    return
            try:
                self._look()
            except SlurmError as exc:
                logger.warning("could not ask Slurm how its jobs are: %s", exc)
                time.sleep(1.0)
            except Exception:
                logger.exception("following Slurm jobs failed")
                time.sleep(1.0)
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _look(self) -> None:
        """One look at Slurm's queue: starts reported, ends read and reported."""
        with self._lock:
            watched = list(self._watched.values())
        rows = squeue(ids=[w.sid for w in watched], user=self._user)
        began = [w for w in watched if not w.began and _state(rows, w.sid) == "RUNNING"]
        gpus = self._gpus_of({w.sid: rows[w.sid].node for w in began})
        for w in watched:
            row = rows.get(w.sid)
            if row is not None and row.state not in ENDED:
                if row.state == "RUNNING" and not w.began:
                    w.began = True
                    self._report_start(w, row.node, row.start, gpus.get(w.sid))
                continue
            if row is not None and row.state != "FAILED":
                # (COMPLETED is exit 0; a cancel, time-out, node failure has no code:
                # only a failed job's code needs asking, one command per failure)
                end: Exit | None = state_exit(row.state, 0, 0, w.sid)
            else:
                if self._accounting is None:
                    self._accounting = accounting_on()
                end = exit_of(w.sid, w.exit_path, self._accounting)
            if end is None:
                continue
            with self._lock:
                if self._watched.pop(w.sid, None) is None:
                    continue
            try:
                w.on_exit(w.job, end)
            except Exception:
                logger.exception("recording the end of job %s failed", w.job.id)

    def _gpus_of(self, nodes: Mapping[str, str | None]) -> dict[str, tuple[int, ...]]:
        """The GPUs Slurm gave each job just seen running (Slurm id -> its node), as the
        GPU table numbers them (:func:`.slurm_control.gpu_nodes`); a job Slurm says
        nothing of (no GPU, several nodes, Slurm not answering) is left out."""
        if not nodes:
            return {}
        try:
            detail = job_gres(list(nodes))
            now = time.monotonic()
            if self._first is None or now - self._first[0] > SHARDS_TTL_S:
                order, first = 0, {}
                for name, counts in gpu_nodes(self.config.slurm_partition):
                    first[name] = order
                    order += counts.get("gpu", 0)
                self._first = (now, first)
        except SlurmError as exc:
            logger.warning("could not ask Slurm which GPUs its jobs got: %s", exc)
            return {}
        out: dict[str, tuple[int, ...]] = {}
        for sid, text in detail.items():
            base = self._first[1].get(nodes[sid] or "")
            idx = {i for _, _, found in parse_gres_used(text) for i in found}
            if base is not None and idx:
                out[sid] = tuple(sorted(base + i for i in idx))
        return out

    def _report_start(
        self, w: _Watched, node: str | None, began: float | None, gpus: tuple[int, ...] | None
    ) -> None:
        with self._lock:
            on_started = self._on_started
        if on_started is None:
            return
        if began is not None and w.job.started is not None:
            began = max(began, w.job.started)  # (Slurm's StartTime is in whole seconds)
        try:
            on_started(w.job, Started(pid=None, proc_start=None, node=node, began=began, gpus=gpus))
        except Exception:
            logger.exception("job %s: could not report where it runs", w.job.id)

    # -- ending ---------------------------------------------------------------------------

    def kill(self, job: Job, grace_s: float) -> None:
        """``scancel`` the job, and wait (a while) until Slurm has ended its processes."""
        with self._lock:
            sid = self._ids.get(job.token or "")
        sid = sid or slurm_id(self.run_dir, job.token) or self._find_by_name(job, job.token or "")
        if sid is None:
            return
        scancel(sid)
        deadline = time.monotonic() + max(grace_s, 1.0) + 15.0
        while time.monotonic() < deadline:
            row = squeue(ids=[sid], user=self._user).get(sid)
            if row is None or row.state in ENDED:
                return
            time.sleep(0.1)

    def forget(self, jobs: list[Job]) -> None:
        from .slurm_array import forget_array, forget_files

        finished: list[str] = []
        for job in jobs:
            if not job.token:
                continue
            forget_files(self.run_dir, job.token)
            with self._lock:
                self._ids.pop(job.token, None)
                array = self._array_of.pop(job.token, None)
                left = self._arrays.get(array) if array is not None else None
                if array is not None and left is not None:
                    left.discard(job.token)
                    if not left:
                        del self._arrays[array]
                        finished.append(array)
        for name in finished:
            forget_array(self.run_dir, name)

    def close(self) -> None:
        """Stop following (Slurm's jobs go on; the next engine re-attaches)."""
        with self._lock:
            self._closed = True
            self._on_started = None
        self._wake.set()


def _state(rows: Mapping[str, QueueRow], sid: str) -> str | None:
    row = rows.get(sid)
    return None if row is None else row.state


def job_env(env: Mapping[str, str], required: float) -> dict[str, str]:
    """The environment sbatch passes on: the job's, without this process's own Slurm
    job's variables (a kernel inside an allocation) and without the GPUs nbsched would
    set (Slurm sets ``CUDA_VISIBLE_DEVICES`` for the GPUs it gives)."""
    out = {k: v for k, v in env.items() if not (k.startswith("SLURM_") and k != "SLURM_CONF")}
    if required > 0:
        out.pop("CUDA_VISIBLE_DEVICES", None)
    return out


__all__ = ["SlurmExecutor", "slurm_id", "why_slurm"]
