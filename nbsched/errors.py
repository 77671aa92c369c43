"""nbsched's error classes.

Every error a user can cause subclasses :class:`NbschedError` *and* the builtin
that fits it (``ValueError``, ``TypeError``, ``FileNotFoundError``), so callers
may catch either.
"""

from __future__ import annotations


class NbschedError(Exception):
    """Root of every error nbsched raises on purpose."""


class InvalidValueError(NbschedError, ValueError):
    """A value a user gave is not accepted; the message names it and what is."""


class InvalidTypeError(NbschedError, TypeError):
    """A value a user gave has the wrong type."""


class SweepTooLargeError(InvalidValueError):
    """A sweep has more jobs than its limit; ``jobs`` and ``limit`` let a front end say
    how to allow it in its own terms (``limit=N``, ``--limit N``)."""

    def __init__(self, message: str, jobs: int, limit: int) -> None:
        super().__init__(message)
        self.jobs = jobs
        self.limit = limit

    def __reduce__(self) -> tuple[type, tuple[str, int, int]]:  # (pickles whole)
        return (type(self), (str(self), self.jobs, self.limit))


class MissingFileError(NbschedError, FileNotFoundError):
    """A script or file a user named does not exist."""


class UnknownJobError(NbschedError, KeyError):
    """No job with that id is in the store."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the message
        return str(self.args[0]) if self.args else "unknown job"


class StateDirError(NbschedError, OSError):
    """The state directory or its database cannot be used safely."""


class NotSupportedError(NbschedError, ValueError):
    """A feature the user asked for is not available in this configuration."""


class PermissionDeniedError(NbschedError, PermissionError):
    """The job belongs to another user."""


class ClosedError(NbschedError, ValueError):
    """A scheduler (or its store) used after ``close()`` (a ``ValueError``, as for a
    closed file)."""
