"""What a person types at the command line and in the magics, and reads back: an
option's value that begins with "-", and braces a shell expanded before nbsched saw them."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import run_cli
from IPython.core.interactiveshell import InteractiveShell

from nbsched import GPUJobScheduler
from nbsched.verbs import glue_dash_values

ARGV = "import sys; print(sys.argv[1:])\n"


_main = run_cli


def test_gpu_arg_takes_an_option_as_its_value(
    make_sched: Callable[..., GPUJobScheduler],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``nbsched add --gpu-arg --cuda train.py`` was refused: "expected one argument"."""
    script = tmp_path / "train.py"
    script.write_text(ARGV)
    state = tmp_path / "state"
    sim = ["--state-dir", str(state), "--simulate", "2"]
    rc, out, err = _main(["add", *sim, "--gpu-arg", "--cuda", str(script), "--", "-x"], capsys)
    assert rc == 0, err
    jid = out.strip()
    s = make_sched(start=True, num_gpus=2)
    s.wait([jid], timeout=60, progress=False)
    assert "['-x', '--cuda', '0']" in s.logs(jid)


def test_the_magic_takes_it_too(ip: InteractiveShell, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(ARGV)
    s = ip.run_line_magic("gpusched", f"start --simulate 2 --state-dir {tmp_path / 'state'}")
    jid = ip.run_line_magic("gpusched", f"add {script} --gpu-arg --cuda --gpus 1")
    s.wait([jid], timeout=60, progress=False)
    assert "['--cuda', '0']" in s.logs(jid)


@pytest.mark.parametrize(
    "words, glued",
    [
        (["add", "--gpu-arg", "--cuda", "t.py"], ["add", "--gpu-arg=--cuda", "t.py"]),
        (["add", "--gpu-arg", "cuda", "t.py"], ["add", "--gpu-arg", "cuda", "t.py"]),
        (["add", "t.py", "--", "--gpu-arg", "--x"], ["add", "t.py", "--", "--gpu-arg", "--x"]),
        (["add", "--gpu-arg", "--", "-x"], ["add", "--gpu-arg", "--", "-x"]),
        (["serve", "--gpu-arg", "--cuda"], ["serve", "--gpu-arg=--cuda"]),
        (["add", "--gpus", "-1"], ["add", "--gpus", "-1"]),  # (only the options that may)
    ],
)
def test_glue_dash_values(words: list[str], glued: list[str]) -> None:
    assert glue_dash_values(words) == glued


def test_a_sweep_whose_braces_the_shell_expanded_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``nbsched sweep train.py -- --lr {0.1,0.01}`` unquoted reaches nbsched as
    ``--lr 0.1 0.01``: it queued one wrong job, silently."""
    script = tmp_path / "train.py"
    script.write_text(ARGV)
    sim = ["--state-dir", str(tmp_path / "state"), "--simulate", "2"]
    for expanded in (["--lr", "0.1", "0.01"], ["--lr=0.1", "--lr=0.01"], ["--seed", "1", "2"]):
        rc, out, err = _main(["sweep", *sim, str(script), "--", *expanded], capsys)
        assert rc != 0 and out == ""
        assert "hold no {a,b} or {1..3} group: a shell expands unquoted braces" in err
        assert "--lr '{0.1,0.01}'" in err and "\n" not in err.strip()
    rc, out, err = _main(["jobs", *sim, "--json"], capsys)
    assert out.strip() == "[]"  # nothing queued
    rc, out, err = _main(["sweep", *sim, str(script), "--", "--lr", "{0.1,0.01}"], capsys)
    assert rc == 0 and "2 job(s) queued" in out


def test_nbsched_status_says_when_the_gpus_were_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = ["--state-dir", str(tmp_path / "state"), "--simulate", "2"]
    rc, out, _ = _main(["status", *sim], capsys)
    assert rc == 0
    assert re.search(r"^GPUs read \d\d:\d\d:\d\d, \d+\.\d s ago:$", out, re.MULTILINE), out
