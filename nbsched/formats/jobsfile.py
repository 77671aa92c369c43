"""The jobs file of the original program: one job a line.

Line format: ``priority,script_path,conda_env,arguments,allowed_gpus``, or the latest
original's 6-field ``priority,script_path,conda_env,execution_type,arguments,allowed_gpus``
(execution types: :mod:`nbsched.formats.execution`).  Lines whose first non-space
character is ``#`` and blank lines are ignored.

How the two forms are told apart: a line whose fourth field is one unquoted word
``python``, ``torchrun`` or ``torchrun-Ngpu`` is a 6-field line.  It is refused as
ambiguous when it has four or five fields and its fifth field is absent, empty or a
GPU list, since it then also reads as a 5-field line whose one argument is that word
(``0,t.py,env,python,0-3``): write all six fields (``0,t.py,env,torchrun-2gpu,,``),
or quote the word (``'python'``) to make it an argument.  A fourth field that starts
like an execution type but is none (``torchrun-2GPU``, ``python3``) is refused too.

How a line is split (compatible with the original program, which split on the
first four commas):

* Commas inside shell quotes (``'...'``, ``"..."``) or escaped (``\\,``) do not split.
* Fields are priority, script, env, arguments; everything after the fourth comma
  (the fifth in the 6-field form) is allowed_gpus, so ``0,t.py,env,--x 1,0-3,5``
  allows GPUs 0-3 and 5.  Trailing fields may be left out (``0,t.py`` is a job);
  priority and script are required.
* Unquoted commas in the arguments: when the text after the fourth comma is not
  a GPU list but the last field is (or is empty), the last field is allowed_gpus
  and the fields between are the arguments (``--x a,b,0-3``).  ``--ids 1,2`` with
  nothing after it still reads as allowed GPU 2, as in the original: quote it.
* Script, env and allowed_gpus are unquoted with :mod:`shlex` (so a path with
  spaces or commas can be quoted); the arguments are split with :func:`shlex.split`.
* priority is an integer (may be negative, at most 18 digits); env, arguments and
  allowed_gpus may be empty.  A NUL character or a line break inside is an error.

:func:`format_line` writes a line that :func:`parse_line` reads back identically.
:class:`~nbsched.formats.jobsfile_reader.JobsFileReader` reads a file that grows while
it is edited.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from ..errors import InvalidValueError
from ..jobs import job_hash
from .execution import ACCEPTED, execution_hash, looks_like_execution, parse_execution
from .gpulist import describe_gpus, format_gpu_list, parse_gpu_list

FORMAT = "priority,script_path,conda_env,arguments,allowed_gpus"
FORMAT6 = "priority,script_path,conda_env,execution_type,arguments,allowed_gpus"

_PRIORITY = re.compile(r"[+-]?[0-9]{1,18}", re.ASCII)


@dataclass(frozen=True)
class JobLine:
    """One parsed line of a jobs file."""

    line_no: int
    priority: int
    script: str
    conda_env: str | None
    args: tuple[str, ...]
    allowed_gpus: tuple[int, ...] | None
    #: The 6-field form's execution type (``python``, ``torchrun``, ``torchrun-Ngpu``);
    #: ``None`` for a 5-field line.
    execution: str | None = None

    @property
    def hash(self) -> str:
        """Identity of the job (script, env, arguments in order, allowed GPUs, and a
        torchrun execution type's GPU count)."""
        base = job_hash(self.script, self.conda_env, self.args, self.allowed_gpus)
        return execution_hash(base, self.execution)

    @property
    def launcher(self) -> str | None:
        """``"torchrun"`` for a torchrun execution type, else ``None``."""
        return parse_execution(self.execution)[0] if self.execution else None

    @property
    def required_gpus(self) -> int | None:
        """The GPUs a torchrun execution type names; ``None``: the LLM config decides."""
        return parse_execution(self.execution)[1] if self.execution else None


@dataclass(frozen=True)
class LineError:
    """Why one line of a jobs file was not taken."""

    path: str
    line_no: int
    text: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line_no}" if self.path else f"line {self.line_no}"
        return f"{where}: {self.reason}"


class JobsFileLineError(InvalidValueError):
    """A jobs-file line cannot be used; ``error`` says where and why."""

    def __init__(self, error: LineError) -> None:
        super().__init__(error)
        self.error = error

    def __str__(self) -> str:
        return str(self.error)


class _Bad(Exception):
    """Internal: a reason a line is bad."""


def _split_fields(text: str) -> list[str]:
    """Split on commas outside shell quotes and not escaped by a backslash."""
    fields: list[str] = []
    start = 0
    quote: str | None = None
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if quote == "'":
            if c == "'":
                quote = None
        elif quote == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                quote = None
        elif c == "\\":
            i += 1
        elif c in "'\"":
            quote = c
        elif c == ",":
            fields.append(text[start:i])
            start = i + 1
        i += 1
    if quote is not None:
        raise _Bad(f"unbalanced {quote} quote")
    fields.append(text[start:])
    return fields


def _words(field: str, what: str) -> list[str]:
    try:
        return shlex.split(field)
    except ValueError as exc:  # "No closing quotation" / "No escaped character"
        raise _Bad(f"bad quoting in {what} {field.strip()!r}: {exc}") from None


def _one_word(field: str, what: str) -> str | None:
    words = _words(field, what)
    if len(words) > 1:
        raise _Bad(f"{what} {field.strip()!r} must be one word; quote it if it has spaces")
    return words[0] if words else None


def _gpus(field: str) -> tuple[int, ...] | None:
    words = _words(field, "allowed_gpus")
    if not words:
        return None
    try:
        return parse_gpu_list(" ".join(words))
    except InvalidValueError as exc:
        raise _Bad(f"bad allowed_gpus: {exc}") from None


def _priority(field: str) -> int:
    raw = field.strip()
    if not _PRIORITY.fullmatch(raw):
        if re.fullmatch(r"[+-]?[0-9]+", raw, re.ASCII):
            raise _Bad(f"bad priority {raw!r}: at most 18 digits")
        raise _Bad(f"bad priority {raw!r}: expected an integer")
    return int(raw)


def _args_and_gpus(fields: list[str], first: int) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """The arguments (field ``first``) and allowed GPUs (everything after it)."""
    args_field = fields[first]
    try:
        allowed = _gpus(",".join(fields[first + 1 :]))
    except _Bad as exc:
        # Unquoted commas in the arguments: the last field may still be the GPU list.
        if len(fields) == first + 2:
            raise _Bad(f"{exc} (quote arguments that contain commas)") from None
        try:
            allowed = _gpus(fields[-1])
        except _Bad:
            raise exc from None
        args_field = ",".join(fields[first:-1])
    return tuple(_words(args_field, "arguments")), allowed


def _execution(fields: list[str]) -> str | None:
    """The execution type of a 6-field line; ``None`` for a 5-field one."""
    if len(fields) < 4 or not looks_like_execution(fields[3]):
        return None
    word = fields[3].strip()
    try:
        parse_execution(word)
    except InvalidValueError as exc:
        raise _Bad(f"{exc}; quote it if it is an argument") from None
    if len(fields) <= 5:
        fifth = fields[4] if len(fields) == 5 else ""
        try:
            _gpus(fifth)
        except _Bad:
            return word  # the fifth field is arguments: only the 6-field form reads it
        raise _Bad(
            f"ambiguous: {word!r} may be the execution type of a 6-field line ({FORMAT6}) "
            f"or the argument of a 5-field one ({FORMAT}); write all six fields "
            f"(priority,script,env,{word},arguments,allowed_gpus) for the first, "
            f"quote it ('{word}') for the second"
        )
    return word


def _parse(text: str, line_no: int) -> JobLine:
    if any(c in text for c in "\x00\n\r"):
        raise _Bad("line contains a NUL character or a line break")
    fields = _split_fields(text)
    if len(fields) < 2:
        raise _Bad(f"expected comma-separated fields {FORMAT}; got {len(fields)}")
    priority = _priority(fields[0])
    execution = _execution(fields)
    first = 3 if execution is None else 4
    fields += [""] * (first + 2 - len(fields))
    script = _one_word(fields[1], "script path")
    if not script:
        raise _Bad("missing script path")
    env = _one_word(fields[2], "conda env") or None
    args, allowed = _args_and_gpus(fields, first)
    return JobLine(line_no, priority, script, env, args, allowed, execution)


def parse_line(text: str, line_no: int = 1, path: str = "") -> JobLine | None:
    """Parse one line; ``None`` for a comment or blank line.

    A bad line raises :class:`JobsFileLineError`.  A trailing ``\\n``/``\\r\\n`` is ignored.
    """
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    try:
        return _parse(text, line_no)
    except _Bad as exc:
        raise JobsFileLineError(LineError(path, line_no, text, str(exc))) from None


def _quote(word: str) -> str:
    quoted = shlex.quote(word)
    return f"'{word}'" if quoted == word and "," in word else quoted


def _args_field(job: JobLine) -> str:
    if job.execution is None and len(job.args) == 1 and looks_like_execution(job.args[0]):
        # A bare one would read as a 6-field line's execution type: quote it.
        quoted = shlex.quote(job.args[0])
        return f"'{quoted}'" if quoted == job.args[0] else quoted
    return " ".join(_quote(a) for a in job.args)


def format_line(job: JobLine) -> str:
    """A line (without newline) that :func:`parse_line` reads back as ``job``.

    Raises ``InvalidValueError`` if a field cannot be written on one line
    (a line break or NUL character) or the script is empty.
    """
    words = [job.script, job.conda_env or "", *job.args]
    for word in words:
        if any(c in word for c in "\n\r\x00"):
            raise InvalidValueError(
                f"{word!r}: a jobs-file line cannot hold a line break or NUL character"
            )
    if not job.script:
        raise InvalidValueError("a jobs-file line needs a script path")
    if job.execution is not None:
        try:
            parse_execution(job.execution)
        except InvalidValueError:
            raise InvalidValueError(
                f"execution={job.execution!r}: accepted are {ACCEPTED}, or None"
            ) from None
    env = _quote(job.conda_env) if job.conda_env else ""
    args = _args_field(job)
    gpus = _quote(format_gpu_list(job.allowed_gpus)) if job.allowed_gpus else ""
    execution = "" if job.execution is None else f"{job.execution},"
    return f"{job.priority},{_quote(job.script)},{env},{execution}{args},{gpus}"


def validate_line(line: JobLine, *, num_gpus: int | None, base_dir: str, path: str = "") -> str:
    """Checks that need the machine: the script exists and the allowed GPUs do.

    Returns the script's absolute path (a relative one is taken from ``base_dir``,
    the jobs file's folder).  A problem raises :class:`JobsFileLineError`.
    """
    text = format_line(line)

    def bad(reason: str) -> JobsFileLineError:
        return JobsFileLineError(LineError(path, line.line_no, text, reason))

    script = os.path.join(base_dir, os.path.expanduser(line.script))
    script = os.path.abspath(script)
    if not os.path.exists(script):
        raise bad(f"script {line.script!r} not found (looked for {script})")
    if os.path.isdir(script):
        raise bad(f"script {line.script!r} is a directory ({script})")
    if num_gpus is not None and line.allowed_gpus:
        for gpu in line.allowed_gpus:
            if gpu >= num_gpus:
                raise bad(f"GPU {gpu} does not exist ({describe_gpus(num_gpus)})")
    return script


__all__ = [
    "FORMAT",
    "FORMAT6",
    "JobLine",
    "JobsFileLineError",
    "LineError",
    "format_line",
    "parse_line",
    "validate_line",
]
