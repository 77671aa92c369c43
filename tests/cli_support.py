"""``nbsched ARGS`` run in the test's own process (cheaper than a subprocess; the same
code path), for the tests of the command."""

from __future__ import annotations

import pytest

from nbsched.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(args)``: its exit status (argparse's too), and what it printed."""
    capsys.readouterr()
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err
