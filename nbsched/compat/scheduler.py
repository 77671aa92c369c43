"""The original program's ``GPUJobScheduler``, call for call, on nbsched's engine.

Code written for the original runs after one change, its import line
(``from nbsched.compat import GPUJobScheduler``): the constructor's keywords and
defaults (``./llm_config.json``, ``./gpu_scheduler_state.json``), ``add_job``'s
positional order with ``allowed_gpus`` fifth and ``original_line``, the list of
dicts ``get_gpu_status()`` returns, ``get_job_queue_info()``'s tuples,
``add_jobs_from_file``, ``enable_screen``, pause and resume, ``load_state`` and
``save_state``.  Where the original took a value and went on (a missing script,
``allowed_gpus=[1, 99]``), this class does what it did: it logs and goes on.

Under it is a :class:`nbsched.GPUJobScheduler` (``.nbsched``), so jobs live in
nbsched's database (its state directory: ``config=SchedulerConfig(...)``, else
``$NBSCHED_HOME`` or ``~/.nbsched``), survive a crash, and show in the notebook.
Each job gets ``--cuda`` with its GPUs, as in the original; they are the job's own
indices (``0`` for its first GPU), which is what ``CUDA_VISIBLE_DEVICES`` makes them.
"""

from __future__ import annotations

import logging
import shlex
import shutil
from pathlib import Path
from typing import Any

from nbsched import GPUJobScheduler as Engine
from nbsched import NbschedError, SchedulerConfig

from . import statefile
from .follow import Follower
from .jobinfo import Added, arg_value, from_command, line_hash, missing

logger = logging.getLogger("nbsched.compat")

DEFAULT_LLM_CONFIG_FILE = "llm_config.json"
FILE_MONITOR_INTERVAL_S = 30
STATE_CHECK_INTERVAL_S = 20
MAX_ASSIGNMENT_ATTEMPTS = 5
ASSIGNMENT_RETRY_WAIT_S = 5
GPU_ALLOCATION_PRECISION = 0.01
#: The option each job gets with its GPUs, as in the original.
GPU_ARG = "--cuda"
#: Why a line of the jobs file the original ran is kept as run and not queued.
RAN_BEFORE = "ran under the original scheduler (imported from {log})"


class GPUJobScheduler:
    """The original program's scheduler (see the module).  Keyword-only ``config``
    (a :class:`nbsched.SchedulerConfig`) says where nbsched keeps its state and which
    GPUs it uses; the original's keywords override its fields."""

    def __init__(
        self,
        num_gpus: int = 8,
        gpu_memory_threshold: float = 0.8,
        gpu_load_threshold: float = 0.8,
        jobs_file_path: str | None = None,
        llm_config_path: str = DEFAULT_LLM_CONFIG_FILE,
        state_file_path: str = statefile.DEFAULT_STATE_FILE,
        monitor_interval: float = FILE_MONITOR_INTERVAL_S,
        state_check_interval: float = STATE_CHECK_INTERVAL_S,
        max_assignment_attempts: int = MAX_ASSIGNMENT_ATTEMPTS,
        assignment_retry_wait: float = ASSIGNMENT_RETRY_WAIT_S,
        *,
        config: SchedulerConfig | None = None,
    ) -> None:
        self.use_screen = False
        self.num_gpus = num_gpus
        self.gpu_memory_threshold = gpu_memory_threshold
        self.gpu_load_threshold = gpu_load_threshold
        self.jobs_file_path = Path(jobs_file_path) if jobs_file_path else None
        self.llm_config_path = Path(llm_config_path)
        self.state_file = Path(state_file_path)
        self.file_monitor_interval = monitor_interval
        self.state_check_interval = state_check_interval
        # (accepted and kept: nbsched's dispatcher never gives a job up, so no attempts)
        self.max_assignment_attempts = max_assignment_attempts
        self.assignment_retry_wait = assignment_retry_wait
        logger.info("Loading LLM configuration from: %s", self.llm_config_path)
        llm_file: str | None = str(self.llm_config_path)
        if not self.llm_config_path.is_file():
            logger.warning(
                "LLM config file not found: %s. Using default requirement (1.0) for all LLMs.",
                self.llm_config_path,
            )
            llm_file = None
        self._config = (config or SchedulerConfig()).replace(
            num_gpus=num_gpus,
            gpu_memory_threshold=gpu_memory_threshold,
            gpu_load_threshold=gpu_load_threshold,
            llm_config_file=llm_file,
        )
        self.nbsched = Engine(config=self._config)
        self._added: dict[str, Added] = {}
        self.managed_job_hashes: set[str] = set()
        self.hash_to_job_id: dict[str, str] = {}
        self._file_paused: set[int] = set()
        self._follower: Follower | None = None
        self._closed = False
        self.load_state()
        logger.info("Initial paused state loaded for GPUs: %s", self.paused_gpus)

    def __repr__(self) -> str:
        return f"<nbsched.compat.GPUJobScheduler {self.num_gpus} GPUs on {self.nbsched!r}>"

    # -- the LLM config -------------------------------------------------------------------

    @property
    def llm_requirements(self) -> dict[str, float]:
        llm = self.nbsched.llm_config
        return dict(llm.models) if llm is not None else {}

    @property
    def default_llm_requirement(self) -> float:
        llm = self.nbsched.llm_config
        return llm.default_requirement if llm is not None else 1.0

    def get_llm_gpu_requirement(self, llm_name: str | None) -> float:
        """The GPUs an LLM needs, from the LLM config (its default for one it lacks)."""
        return self.llm_requirements.get(llm_name or "", self.default_llm_requirement)

    # -- the state file -------------------------------------------------------------------

    @property
    def paused_gpus(self) -> set[int]:
        """The GPUs paused now (in nbsched's database, wherever they were paused)."""
        frame = self.nbsched.get_gpu_status()
        return {int(g) for g, p in zip(frame["gpu"], frame["paused"], strict=True) if p}

    def load_state(self) -> None:
        """Take the state file's pauses, and the original's record of the jobs it ran
        (its log, beside the state file): those jobs-file lines are not run again."""
        state = statefile.read_state(self.state_file)
        if state is None:
            logger.info(
                "No state file found at '%s'. Starting with all GPUs free and unpaused.",
                self.state_file,
            )
            return
        self._apply_file_pauses(set(state.paused_gpus))
        busy = state.running_when_written()
        if busy:
            logger.warning(
                "State file '%s' says GPU(s) %s had jobs when it was written; nbsched does "
                "not know those jobs, so it does not count them as running",
                self.state_file,
                busy,
            )
        self._import_lines_run()

    def _import_lines_run(self) -> None:
        log = self.state_file.parent / statefile.DEFAULT_LOG_FILE
        lines = statefile.lines_run(log)
        if not lines or self.jobs_file_path is None:
            return
        ids = self.nbsched.add_jobs_file(
            self.jobs_file_path, lines=lines, already_run=RAN_BEFORE.format(log=log)
        )
        if ids:
            logger.info(
                "Imported %d job(s) the original scheduler ran (from %s): their lines in %s "
                "are not run again",
                len(ids),
                log,
                self.jobs_file_path,
            )

    def _apply_file_pauses(self, paused: set[int]) -> None:
        """Pause or resume the GPUs whose pause changed in the state file since it was
        last read (a pause made elsewhere, in nbsched, is left alone)."""
        for gpu in sorted(paused - self._file_paused):
            if 0 <= gpu < self.num_gpus:
                self.nbsched.pause_gpu(gpu)
        for gpu in sorted(self._file_paused - paused):
            if 0 <= gpu < self.num_gpus:
                self.nbsched.resume_gpu(gpu)
        if paused != self._file_paused:
            logger.info("Detected change in paused GPUs from state file: %s", sorted(paused))
        self._file_paused = paused

    def _check_and_apply_external_state_changes(self) -> None:
        state = statefile.read_state(self.state_file)
        if state is not None:
            self._apply_file_pauses(set(state.paused_gpus))

    def save_state(self) -> None:
        """Write the state file as the original did: allocations and pauses."""
        frame = self.nbsched.get_gpu_status()
        allocated = [float(a) for a in frame["allocated"]][: self.num_gpus]
        paused = self.paused_gpus
        statefile.write_state(
            self.state_file, statefile.OriginalState(tuple(allocated), tuple(sorted(paused)))
        )
        self._file_paused = paused

    # -- pausing --------------------------------------------------------------------------

    def pause_gpu(self, gpu_id: int) -> bool:
        """Pause a GPU (no new job starts on it); False for a GPU that does not exist."""
        return self._pause(gpu_id, True)

    def resume_gpu(self, gpu_id: int) -> bool:
        return self._pause(gpu_id, False)

    _pause_gpu_internal = pause_gpu  # (the original's names)
    _resume_gpu_internal = resume_gpu

    def _pause(self, gpu_id: int, pause: bool) -> bool:
        if not isinstance(gpu_id, int) or not 0 <= gpu_id < self.num_gpus:
            logger.error("Invalid GPU ID: %s. Must be between 0 and %d.", gpu_id, self.num_gpus - 1)
            return False
        try:
            (self.nbsched.pause_gpu if pause else self.nbsched.resume_gpu)(gpu_id)
        except NbschedError as exc:
            logger.error("GPU %s: %s", gpu_id, exc)
            return False
        logger.info("GPU %d marked as %s.", gpu_id, "paused" if pause else "resumed")
        self.save_state()
        return True

    # -- reading --------------------------------------------------------------------------

    def get_gpu_status(self) -> list[dict[str, Any]]:
        """One dict per GPU: ``gpu_id``, ``state`` (``AVAILABLE``, ``BUSY (50%)``,
        ``PAUSED``), ``allocation`` (``"0.50"``), ``memory_util`` and ``load``
        (``"12.5%"``, or ``"N/A"`` where the GPU does not say)."""
        out = []
        for row in self.nbsched.get_gpu_status().to_dict("records")[: self.num_gpus]:
            allocation = float(row["allocated"])
            if row["paused"]:
                state = "PAUSED"
            elif allocation > GPU_ALLOCATION_PRECISION:
                state = f"BUSY ({allocation * 100:.0f}%)"
            else:
                state = "AVAILABLE"
            used, total, load = row["memory_used"], row["memory_total"], row["load"]
            memory = "N/A" if missing(used) or missing(total) or not total else used / total
            out.append(
                {
                    "gpu_id": int(row["gpu"]),
                    "state": state,
                    "allocation": f"{allocation:.2f}",
                    "memory_util": memory if memory == "N/A" else f"{memory * 100:.1f}%",
                    "load": "N/A" if missing(load) else f"{float(load) * 100:.1f}%",
                }
            )
        return out

    def get_job_queue_info(self) -> list[tuple[Any, ...]]:
        """The queued jobs in the order they start, as the original's tuples:
        ``(priority, job_id, script_path, conda_env, args, allowed_gpus, job_hash,
        required_gpus, llm_name, original_line)``."""
        out = []
        for row in self.nbsched.queue().to_dict("records"):
            known = self._added.get(str(row["id"])) or from_command(str(row["command"]))
            out.append(
                (
                    int(row["priority"]),
                    str(row["id"]),
                    known.script,
                    known.conda_env,
                    known.args,
                    known.allowed_gpus,
                    known.job_hash,
                    float(row["required_gpus"]),
                    known.llm_name,
                    known.original_line,
                )
            )
        return out

    # (for the follower: the latest jobs, and what a job's log lines name)
    def recent_jobs(self, last: int) -> list[dict[str, Any]]:
        rows = self.nbsched.jobs(last=last).to_dict("records")
        return [{str(k): None if missing(v) else v for k, v in r.items()} for r in rows]

    def describe(self, job: dict[str, Any]) -> tuple[str | None, str | None]:
        known = self._added.get(str(job["id"])) or from_command(str(job["command"] or ""))
        return known.llm_name, known.original_line

    # -- adding ---------------------------------------------------------------------------

    def add_job(
        self,
        script: str,
        conda_env: str | None = None,
        args: list[str] | None = None,
        priority: int = 0,
        allowed_gpus: list[int] | None = None,
        original_line: str | None = None,
    ) -> str | None:
        """Queue a job; its GPUs come from the LLM config (``--llm MODEL`` in ``args``).

        As in the original, a missing script, or allowed GPUs none of which exist, is
        logged and the job not added (None); GPUs that do not exist are dropped with a
        warning; a job given ``original_line`` is added once per run.  Returns the id.
        """
        if not Path(script).is_file():
            logger.error("Script path not found or is not a file: %s. Job not added.", script)
            return None
        args_list = shlex.split(args) if isinstance(args, str) else list(args or [])
        allowed = self._allowed(script, allowed_gpus)
        if allowed == []:
            return None
        llm = arg_value(args_list, "--llm")
        job_hash = None
        if original_line is not None:
            job_hash = line_hash(priority, script, conda_env, args_list, allowed)
            if job_hash in self.managed_job_hashes:
                return None
        try:
            job_id = self.nbsched.add_job(
                script, conda_env, args_list, priority, None, allowed, gpu_arg=GPU_ARG
            )
        except (NbschedError, ValueError, TypeError, OSError) as exc:
            logger.error("Failed to add job ('%s') to queue: %s", Path(script).name, exc)
            return None
        if job_hash is not None:
            self.managed_job_hashes.add(job_hash)
            self.hash_to_job_id[job_hash] = job_id
        info = Added(script, conda_env, args_list, allowed, job_hash, llm, original_line)
        self._added[job_id] = info
        logger.info(
            "Job ID %s (%s, Hash: %s, LLM: %s, Req: %.2f) added to queue: '%s' "
            "(Prio: %s, GPUs Allowed: %s)",
            job_id,
            "Manual" if original_line is None else "File",
            job_hash or "N/A",
            llm,
            float(self.nbsched.job(job_id)["required_gpus"]),
            Path(script).name,
            priority,
            allowed or "Any",
        )
        return job_id

    def _allowed(self, script: str, allowed_gpus: list[int] | None) -> list[int] | None:
        """The allowed GPUs that exist (the original dropped the others with a warning);
        ``[]`` when none does."""
        if allowed_gpus is None:
            return None
        valid = sorted({g for g in allowed_gpus if 0 <= g < self.num_gpus})
        if not valid:
            logger.error(
                "No valid GPUs in allowed_gpus list %s for script %s. Max GPU ID is %d. "
                "Job not added.",
                allowed_gpus,
                script,
                self.num_gpus - 1,
            )
        elif len(valid) < len(set(allowed_gpus)):
            logger.warning(
                "Invalid GPU IDs removed from allowed_gpus for script %s. Original: %s, Valid: %s",
                script,
                allowed_gpus,
                valid,
            )
        return valid

    def add_jobs_from_file(self, file_path: str, initial_load: bool = False) -> list[str]:
        """Queue the lines of a jobs file not seen before (both of the original's line
        forms); returns the new jobs' ids."""
        prefix = "[Initial Load]" if initial_load else "[File Monitor]"
        if not Path(file_path).is_file():
            (logger.error if initial_load else logger.debug)(
                "%s Job file not found: %s.", prefix, file_path
            )
            return []
        ids = self.nbsched.add_jobs_file(file_path, gpu_arg=GPU_ARG)
        logger.info("%s Finished processing '%s'. Added %d new jobs.", prefix, file_path, len(ids))
        return ids

    # -- life -----------------------------------------------------------------------------

    def enable_screen(self) -> None:
        """Run jobs in GNU screen sessions (from the next start; jobs queued before
        keep running directly), if ``screen`` is installed."""
        if shutil.which("screen") is None:
            self.use_screen = False
            logger.error("Screen functionality disabled due to missing `screen` command.")
            return
        self.use_screen = True
        if self.nbsched.config.executor != "screen":
            was_running = self.nbsched.running
            self.nbsched.close()
            self._config = self._config.replace(executor="screen")
            self.nbsched = Engine(config=self._config)
            if was_running:
                self.nbsched.start()
        logger.info("Screen functionality enabled.")

    def start(self) -> None:
        """Start the engine and the monitor thread (the jobs file, the state file)."""
        if self._follower is not None and self._follower.alive:
            logger.warning("Scheduler appears to be already started.")
            return
        logger.info("Starting GPU Job Scheduler with %d GPUs...", self.num_gpus)
        tasks: list[tuple[float, Any]] = [
            (self.state_check_interval, self._check_and_apply_external_state_changes)
        ]
        if self.jobs_file_path is not None:
            path = str(self.jobs_file_path)
            tasks.append((self.file_monitor_interval, lambda: self.add_jobs_from_file(path)))
        self.nbsched.start()
        self._follower = Follower(self, tasks)
        self._follower.start()
        logger.info("Scheduler started. Waiting for jobs...")

    def stop(self) -> None:
        """Stop the engine and the monitor thread; running jobs go on (the next start
        adopts them)."""
        if self._closed:
            return
        logger.info("Stopping GPU Job Scheduler...")
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        self.nbsched.stop()
        self.save_state()
        logger.info("Scheduler stopped.")

    def close(self) -> None:
        """Stop, and release nbsched's database (not in the original)."""
        self.stop()
        self._closed = True
        self.nbsched.close()


__all__ = ["GPUJobScheduler"]
