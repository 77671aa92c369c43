"""Small parsers behind the ``%gpusched`` magics: the ``--`` split, ``$name`` and
``{name}`` values and cell scripts saved in the state dir (the argument types, shared
with the CLI, are in :mod:`nbsched.verbs.values`; the rules they apply, in
:mod:`nbsched.checks`)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbsched.errors import InvalidValueError

#: What separates words for a shell: a command keeps any other (Unicode) blank it ends
#: with, as bash would (a trailing no-break space is part of the last word).
SHELL_BLANKS = " \t\n"

_VAR = re.compile(r"(?<![\w$])\$([A-Za-z_]\w*)")
#: ``$name`` or ``{name}`` (not ``{{name}}``): IPython's two ways to give a variable.
_VAR_OR_BRACES = re.compile(_VAR.pattern + r"|(?<!\{)\{([A-Za-z_]\w*)\}(?!\})")


def split_dashdash(line: str) -> tuple[str, str | None]:
    """``(before, after)`` the first unquoted, stand-alone ``--``; ``after`` is the raw
    text (quotes kept) or ``None`` when there is no ``--``."""
    quote: str | None = None
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "\\":
            i += 2
            continue
        elif (
            c == "-"
            and line.startswith("--", i)
            and (i == 0 or line[i - 1].isspace())
            and (i + 2 == n or line[i + 2].isspace())
        ):
            return line[:i].rstrip(), line[i + 2 :].strip(SHELL_BLANKS)
        i += 1
    return line.strip(), None


@dataclass(frozen=True)
class Expanded:
    """A line with its ``$name``s replaced, and which of them expanded to nothing."""

    text: str
    #: The names (without ``$``) whose value gave no word: an empty list, tuple, set or
    #: string.  ``%gpusched wait $ids`` with ``ids == []`` means "no jobs", not "all".
    empty: tuple[str, ...] = ()

    def empty_note(self) -> str:
        """``"$ids is empty"`` (or ``""``), to explain a missing argument."""
        if not self.empty:
            return ""
        names = ", ".join(f"${n}" for n in self.empty)
        return f"{names} {'is' if len(self.empty) == 1 else 'are'} empty"


def expand_vars(text: str, namespace: Mapping[str, Any], braces: bool = True) -> Expanded:
    """Replace ``$name`` (and with ``braces``, ``{name}``, as IPython does) by the value
    of ``name`` in the user's namespace (a list or tuple by its items, space-separated);
    unknown names stay as they are.  ``braces=False``: for a verb whose own grammar has
    braces (a sweep's ``{a,b}``)."""
    empty: list[str] = []

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in namespace:
            return m.group(0)
        v = namespace[name]
        if isinstance(v, (list, tuple, set, frozenset)):
            out = " ".join(str(x) for x in v)
        else:
            out = str(v)
        if not out.strip() and name not in empty:
            empty.append(name)
        return out

    return Expanded((_VAR_OR_BRACES if braces else _VAR).sub(value, text), tuple(empty))


# -- cell scripts -------------------------------------------------------------------------

CELL_IS_PLAIN_PYTHON = (
    "a cell job runs as a plain Python script: no ! or % lines (for a shell command use "
    "subprocess, or %gpusched run -- COMMAND)"
)


def check_cell_code(body: str) -> None:
    """Refuse a cell body that is not Python (``InvalidValueError`` naming the line).

    The job runs the body as a script, where IPython's ``!cmd`` and ``%magic`` lines
    are syntax errors: caught here, before anything is saved or queued, instead of in
    the job's log after it took its GPUs.
    """
    try:
        compile(body, "<cell>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        lines = body.splitlines()
        where = ""
        if exc.lineno is not None and 0 < exc.lineno <= len(lines):
            text = lines[exc.lineno - 1].strip()
            text = text if len(text) <= 60 else text[:57] + "..."
            where = f"line {exc.lineno} of the cell's code, {text!r}: "
        raise InvalidValueError(f"{where}{exc.msg}; {CELL_IS_PLAIN_PYTHON}") from None
    except ValueError as exc:  # (Python < 3.11: null bytes)
        raise InvalidValueError(f"{exc}; {CELL_IS_PLAIN_PYTHON}") from None


def save_cell_script(state_dir: Path, body: str) -> Path:
    """Save a cell body as ``state_dir/cells/<hash>.py`` (folder 0700, file 0600).

    The same body maps to the same file, so re-running a cell submits the same
    script (and a sweep of it is deduplicated).
    """
    folder = state_dir / "cells"
    if folder.is_symlink():
        raise OSError(f"{folder} is a symbolic link; nbsched refuses to write there")
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    data = body.encode("utf-8")
    path = folder / f"cell_{hashlib.sha256(data).hexdigest()[:16]}.py"
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fd, 0o600)
        fh.write(data)
    os.replace(tmp, path)
    return path
