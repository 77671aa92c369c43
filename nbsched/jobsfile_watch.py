"""Watching the original program's jobs file: each new line becomes a job, once.

:class:`JobsFileWatcher` runs beside the engine (``GPUJobScheduler`` starts it
when ``config.jobs_file`` is set).  Every ``jobs_file_poll_s`` (0.1 s) it asks a
:class:`~nbsched.formats.jobsfile_reader.JobsFileReader` for the lines completed since its last
look: a ``stat`` when nothing changed, and only the new bytes when the file grew,
so an unchanged file is never parsed again.

Why a stat poll rather than inotify: the standard library has no inotify, the
well-kept wrappers (``watchdog``, ``inotify_simple``) would be a new dependency
for a saving of one ``stat`` call (~2 µs) per 0.1 s, inotify misses changes on
network file systems (where shared servers often keep home folders), and editors
that replace the file need re-watching.  The poll's worst case, 0.1 s plus the
dispatch, is inside the 300 ms goal (see BENCHMARKS.md).

Each line is checked like any submission (the script exists, relative to the
jobs file's folder; the allowed GPUs exist; the GPUs it needs fit them, from the
LLM config when its arguments name ``--llm``) and submitted with ``hash`` set to
the line's hash, skipping any hash the store already holds in *any* status: a
line already seen is never queued again, also after a restart (``retry(id)``
re-runs one on purpose).  A bad line is logged as a WARNING on this module's
logger (``nbsched.jobsfile_watch``) naming the file, the line number and the
reason, and kept as a store notice so ``nbsched status`` shows it; every other
line is still taken.  Nothing a line contains can stop the watcher's thread.

Reports are grouped: the lines of one look that have the same reason (56 lines
naming the same unknown model) make one warning and one notice with their count and
line numbers (``jobs.txt: 56 lines (3-58): ...``), so they do not push the other
notices out of ``nbsched status``.

A 6-field line's execution type (see :mod:`nbsched.formats.execution`) becomes the
job's launcher and GPU count: ``torchrun-2gpu`` is ``launcher="torchrun"`` on 2 GPUs.

Jobs from the file run in the jobs file's folder.  The watcher queues them through a
:class:`~nbsched.submitter.Submitter`, not the scheduler.
"""

from __future__ import annotations

import logging
import os
import threading

from .formats.gpulist import format_gpu_list
from .formats.jobsfile import JobLine, JobsFileLineError, LineError, validate_line
from .formats.jobsfile_reader import JobsFileReader
from .jobs import JobSpec, JobStatus
from .submitter import Submitter

logger = logging.getLogger(__name__)

#: A line whose hash the store holds in any of these is not queued again.
ALL_STATUSES = tuple(JobStatus)

NOTICE_SOURCE = "jobs file"


class JobsFileWatcher:
    """Submits the new lines of ``submitter.config.jobs_file`` as jobs."""

    def __init__(self, submitter: Submitter) -> None:
        path = submitter.config.jobs_file
        if not path:
            raise ValueError("JobsFileWatcher needs config.jobs_file")
        self.submitter = submitter
        self.path = os.path.abspath(os.path.expanduser(path))
        self.base_dir = os.path.dirname(self.path)
        self.poll_s = submitter.config.jobs_file_poll_s
        self.reader = JobsFileReader(self.path)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: set[tuple[int, str, str]] = set()
        #: This look's reports not yet said: (reason, skipped) -> line numbers.
        self._batch: dict[tuple[str, bool], list[int]] = {}
        self._missing_reported = False
        self._pending: list[JobSpec] = []
        self._os_error: str | None = None
        #: Jobs submitted by this watcher, in order (ids).
        self.submitted: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> JobsFileWatcher:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="nbsched-jobsfile", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # the thread boundary: log, and look again next time
                logger.exception("jobs file %s: reading it failed; trying again", self.path)
            self._stop.wait(self.poll_s)

    # -- one look -------------------------------------------------------------------------

    def poll(self) -> list[str]:
        """Read the new lines once and submit the good ones; returns the new job ids."""
        try:
            return self._poll()
        finally:
            self._flush()

    def _poll(self) -> list[str]:
        try:
            lines, errors = self.reader.read_new()
        except OSError as exc:
            reason = f"cannot read it: {exc.strerror or exc}"
            if reason != self._os_error:
                self._os_error = reason
                logger.warning("jobs file %s: %s", self.path, reason)
                self._notice(f"{self.path}: {reason}")
            return []
        self._os_error = None
        if self.reader.missing:
            if not self._missing_reported:
                self._missing_reported = True
                logger.warning("jobs file %s does not exist (yet); watching for it", self.path)
                self._notice(f"{self.path}: does not exist (yet); watching for it")
            return []
        self._missing_reported = False
        for error in errors:
            self._bad(error)
        for line in lines:
            try:
                spec = self._spec(line)
            except Exception as exc:  # a bug in a check must not lose the other lines
                logger.exception(
                    "jobs file %s, line %d: checking it failed", self.path, line.line_no
                )
                self._bad(LineError(self.path, line.line_no, "", f"internal error: {exc}"))
                continue
            if spec is not None:
                self._pending.append(spec)
        if not self._pending:
            return []
        # Kept until stored: a failed submit (say, a full disk) is tried again next time.
        ids = self.submitter.submit(self._pending, skip_hash_statuses=ALL_STATUSES)
        self._pending = []
        if ids:
            logger.info("jobs file %s: queued job(s) %s", self.path, ", ".join(ids))
        self.submitted += ids
        return ids

    def _spec(self, line: JobLine) -> JobSpec | None:
        """The job of a good line; ``None`` (and a report) for a bad one."""
        s = self.submitter
        try:
            script = validate_line(
                line, num_gpus=s.num_gpus, base_dir=self.base_dir, path=self.path
            )
            llm = s.llm_config()
            unknown = llm.unknown_model(line.args) if llm is not None else None
            spec = s.make_spec(
                script=script,
                conda_env=line.conda_env,
                args=list(line.args),
                priority=line.priority,
                allowed_gpus=line.allowed_gpus,
                required_gpus=line.required_gpus,
                launcher=line.launcher,
                gpu_arg=s.config.jobs_file_gpu_arg,
                cwd=self.base_dir,
                hash=line.hash,
            )
        except JobsFileLineError as exc:
            self._bad(exc.error)
            return None
        except (ValueError, TypeError, OSError) as exc:  # make_spec's checks, e.g. too many GPUs
            self._bad(LineError(self.path, line.line_no, "", str(exc)))
            return None
        if unknown is not None and line.required_gpus is None:
            self._report(
                line.line_no,
                "",
                f"model {unknown!r} is not in the LLM config {s.config.llm_config_file}; "
                f"it gets default_requirement={spec.required_gpus:g} GPU(s)",
            )
        return spec

    def _bad(self, error: LineError) -> None:
        self._report(error.line_no, error.text, error.reason, skipped=True)

    def _report(self, line_no: int, text: str, reason: str, *, skipped: bool = False) -> None:
        key = (line_no, text, reason)
        if key in self._reported:  # the file was read again from its start: said already
            return
        self._reported.add(key)
        self._batch.setdefault((reason, skipped), []).append(line_no)

    def _flush(self) -> None:
        """Say this look's reports: one warning and one notice per reason."""
        batch, self._batch = self._batch, {}
        for (reason, skipped), line_nos in batch.items():
            if len(line_nos) == 1:
                where, message = f"line {line_nos[0]}", f"{self.path}:{line_nos[0]}"
                said = reason + ("; the line was skipped" if skipped else "")
            else:
                where = f"{len(line_nos)} lines ({format_gpu_list(line_nos)})"
                message = f"{self.path}: {where}"
                said = reason + ("; those lines were skipped" if skipped else "")
            message += f": {said}"
            logger.warning("jobs file %s, %s: %s", self.path, where, said)
            self._notice(message)

    def _notice(self, message: str) -> None:
        recent = self.submitter.notices(200)
        if any(n["source"] == NOTICE_SOURCE and n["message"] == message for n in recent):
            return  # shown already (by an earlier engine on this state directory)
        self.submitter.add_notice(NOTICE_SOURCE, message)


__all__ = ["JobsFileWatcher", "ALL_STATUSES"]
