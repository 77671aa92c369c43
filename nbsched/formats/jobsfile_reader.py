"""Reading the jobs file while it is edited: the new complete lines since the last look,
parsed by :func:`nbsched.formats.jobsfile.parse_line` (the line format is there)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import BinaryIO

from .jobsfile import JobLine, JobsFileLineError, LineError, parse_line

_BOM = b"\xef\xbb\xbf"
_TAIL = 256  # bytes before the read offset compared to spot an in-place rewrite


class JobsFileReader:
    """Reads the new complete lines of a jobs file that grows while it is edited.

    * Each :meth:`read_new` first stats the file; if size, mtime and inode are
      unchanged it returns at once without opening it.
    * Only lines ending in a newline are taken.  A last line without one is left
      for the next read, unless the file has not changed for
      ``partial_line_grace_s`` seconds (an editor that writes no final newline);
      then it is taken, and not again once its newline arrives.
    * If the file shrank, its inode changed (an editor wrote a new file) or the
      bytes before the read offset changed, it is read again from the start;
      removing repeated jobs (by hash) is the caller's job.
    * CRLF endings and a UTF-8 BOM are accepted; a line that is not UTF-8 becomes
      a :class:`LineError`.  Line numbers count every line of the file.
    * A missing file gives ``([], [])`` and sets :attr:`missing` (``True`` while it
      is missing).  Other ``OSError`` s (no permission, a directory) propagate.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, partial_line_grace_s: float | None = 2.0
    ) -> None:
        self.path = os.fspath(path)
        self.partial_line_grace_s = partial_line_grace_s
        self.missing = False
        self._reset()

    def _reset(self) -> None:
        self._sig: tuple[int, int, int] | None = None
        self._ino: int | None = None
        self._offset = 0  # byte offset of the first line not yet consumed
        self._line_no = 0  # lines consumed so far
        self._tail = b""  # the last bytes before _offset, as read
        self._partial: bytes | None = None  # an unterminated last line not yet taken
        self._taken: bytes | None = None  # an unterminated last line already taken

    def _partial_due(self, mtime_ns: int) -> bool:
        grace = self.partial_line_grace_s
        return (
            self._partial is not None
            and grace is not None
            and time.time_ns() - mtime_ns >= grace * 1e9
        )

    def read_new(self) -> tuple[list[JobLine], list[LineError]]:
        """The jobs and the errors of the lines completed since the last call."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self.missing:
                self._reset()
            self.missing = True
            return [], []
        self.missing = False
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        if sig == self._sig and not self._partial_due(st.st_mtime_ns):
            return [], []
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if self._rewritten(f, st):
                    self._reset()
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            self._reset()
            self.missing = True
            return [], []
        self._sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        self._ino = st.st_ino
        return self._consume(data, st.st_mtime_ns)

    def _rewritten(self, f: BinaryIO, st: os.stat_result) -> bool:
        if self._ino is not None and st.st_ino != self._ino:
            return True
        if st.st_size < self._offset:
            return True
        if self._tail:
            f.seek(self._offset - len(self._tail))
            return f.read(len(self._tail)) != self._tail
        return False

    def _consume(self, data: bytes, mtime_ns: int) -> tuple[list[JobLine], list[LineError]]:
        jobs: list[JobLine] = []
        errors: list[LineError] = []
        end = data.rfind(b"\n") + 1
        offset = self._offset
        for raw in data[:end].split(b"\n")[:-1]:
            start = offset
            offset += len(raw) + 1
            self._line_no += 1
            line = self._clean(raw, start)
            taken, self._taken = self._taken, None
            if taken is not None and line == taken:
                continue  # already taken while it had no newline
            self._take(line, self._line_no, jobs, errors)
        self._tail = (self._tail + data[:end])[-_TAIL:]
        self._offset = offset
        rest = self._clean(data[end:], offset)
        self._partial = rest if rest and rest != self._taken else None
        if self._partial is not None and self._partial_due(mtime_ns):
            self._take(self._partial, self._line_no + 1, jobs, errors)
            self._taken, self._partial = self._partial, None
        return jobs, errors

    @staticmethod
    def _clean(raw: bytes, start: int) -> bytes:
        if start == 0 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        return raw[:-1] if raw.endswith(b"\r") else raw

    def _take(self, raw: bytes, line_no: int, jobs: list[JobLine], errors: list[LineError]) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            shown = raw.decode("utf-8", "backslashreplace")
            reason = f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
            errors.append(LineError(self.path, line_no, shown, reason))
            return
        _parse_into(text, line_no, self.path, jobs, errors)


def parse_lines(lines: Iterable[str], path: str) -> tuple[list[JobLine], list[LineError]]:
    """The jobs and the line errors of given lines of text (numbered from 1), as a
    reader of ``path`` would find them in the file."""
    jobs: list[JobLine] = []
    errors: list[LineError] = []
    for line_no, text in enumerate(lines, 1):
        _parse_into(text, line_no, path, jobs, errors)
    return jobs, errors


def _parse_into(
    text: str, line_no: int, path: str, jobs: list[JobLine], errors: list[LineError]
) -> None:
    try:
        job = parse_line(text, line_no, path)
    except JobsFileLineError as exc:
        errors.append(exc.error)
        return
    if job is not None:
        jobs.append(job)


def read_jobs_file(path: str | os.PathLike[str]) -> tuple[list[JobLine], list[LineError]]:
    """All jobs and line errors of a jobs file, last line included; missing -> ``([], [])``."""
    reader = JobsFileReader(path, partial_line_grace_s=0.0)
    return reader.read_new()


__all__ = ["JobsFileReader", "parse_lines", "read_jobs_file"]
