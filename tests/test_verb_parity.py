"""``nbsched`` and ``%gpusched`` are built from one verb table: verb by verb they accept
the same options, with the same defaults, choices, value checks and error texts; and
the disagreements they once had are settled the same way in both."""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from nbsched import GPUJobScheduler
from nbsched.cli import build_parser, main
from nbsched.jupyter.verbs import VERBS as MAGIC_VERBS
from nbsched.verbs import CLI, ENGINE_OPTIONS, MAGIC, VERBS

#: What only the CLI has on every verb: the engine options (each ``nbsched`` process
#: makes its own scheduler; the magic's ``start`` makes one for the kernel) and --json.
CLI_ONLY_FLAGS = frozenset(
    {f for a in ENGINE_OPTIONS for f in a.flags} | {"--json", "-h", "--help"}
)
SHARED = [name for name, v in VERBS.items() if v.fronts == {CLI, MAGIC}]


def _cli_parsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


CLI_PARSERS = _cli_parsers()


def _options(parser: argparse.ArgumentParser, drop: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Option string -> what it means: dest, default, choices, nargs, value check."""
    out: dict[str, Any] = {}
    for action in parser._actions:
        if not action.option_strings or set(action.option_strings) & drop:
            continue
        meaning = (action.dest, action.default, action.choices, action.nargs, action.type)
        for flag in action.option_strings:
            out[flag] = meaning
    return out


def _positionals(parser: argparse.ArgumentParser) -> dict[str, Any]:
    return {
        a.dest: (a.nargs, a.default, a.type)
        for a in parser._actions
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
    }


def test_the_front_ends_have_the_verbs_of_the_table() -> None:
    assert set(CLI_PARSERS) == {n for n, v in VERBS.items() if CLI in v.fronts}
    assert set(MAGIC_VERBS) == {n for n, v in VERBS.items() if MAGIC in v.fronts}
    assert {"add", "run", "sweep", "logs", "wait", "cancel", "retry", "status"} <= set(SHARED)


@pytest.mark.parametrize("name", SHARED)
def test_both_front_ends_accept_the_same_options(name: str) -> None:
    cli = _options(CLI_PARSERS[name], drop=CLI_ONLY_FLAGS)
    magic = _options(MAGIC_VERBS[name].parser)
    assert cli == magic
    assert set(_options(CLI_PARSERS[name])) - set(cli) == CLI_ONLY_FLAGS


@pytest.mark.parametrize("name", SHARED)
def test_both_front_ends_take_the_same_positionals(name: str) -> None:
    cli = _positionals(CLI_PARSERS[name])
    if name == "run":  # (the CLI also takes a command before --: `nbsched run nvidia-smi`)
        assert cli.pop("command") == ("*", None, None)
    assert cli == _positionals(MAGIC_VERBS[name].parser)


def test_start_and_serve_take_the_same_engine_options() -> None:
    """``%gpusched start`` and ``nbsched serve`` both make the engine: same options."""
    serve = _options(CLI_PARSERS["serve"], drop=frozenset({"--json", "-h", "--help"}))
    assert serve == _options(MAGIC_VERBS["start"].parser)
    assert {"--simulate", "--provider", "--executor", "--max-retries"} <= set(serve)


def _cli_error(name: str, words: list[str]) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        CLI_PARSERS[name].parse_args(words)
    return err.getvalue()


def _magic_error(name: str, words: list[str]) -> str:
    with pytest.raises(UsageError) as info:
        MAGIC_VERBS[name].parser.parse_args(words)
    return str(info.value)


@pytest.mark.parametrize(
    ("name", "flag"),
    [
        (name, a.option_strings[-1])
        for name in SHARED
        for a in MAGIC_VERBS[name].parser._actions
        if a.option_strings and (a.type is not None or a.choices)
    ],
)
def test_a_bad_value_gets_the_same_message_from_both(name: str, flag: str) -> None:
    words = [flag, "-7.5x"]
    magic = _magic_error(name, words)
    assert magic.startswith("argument ")
    assert magic in _cli_error(name, words)


# -- the settled disagreements, through a real IPython shell and the real command ---------


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def started(ip: InteractiveShell, state: Path) -> GPUJobScheduler:
    s: GPUJobScheduler = gs(ip, f"start --simulate 2 --state-dir {state}")
    return s


def gs(ip: InteractiveShell, line: str) -> Any:
    return ip.run_line_magic("gpusched", line)


def cli(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str, str]:
    try:
        rc = main(list(words))
    except SystemExit as exc:  # (a usage mistake: argparse exits)
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("--simulate 2 --provider gputil",
         "--simulate 2 means --provider simulated, not --provider gputil"),
        ("--simulate 2 --num-gpus 3", "--simulate 2 gives 2 GPUs, not --num-gpus 3"),
    ],
)  # fmt: skip
def test_simulate_with_another_provider_is_refused_by_both(
    ip: InteractiveShell,
    state: Path,
    capsys: pytest.CaptureFixture[str],
    options: str,
    message: str,
) -> None:
    with pytest.raises(UsageError, match=message):
        gs(ip, f"start {options} --state-dir {state}")
    for verb in ("status", "jobs", "serve"):
        rc, out, err = cli(capsys, verb, *options.split(), "--state-dir", str(state))
        assert (rc, out) == (2, ""), verb
        assert err == f"nbsched {verb}: {message}\n"


def test_logs_n_0_is_no_line_and_n_all_the_whole_log_in_both(
    ip: InteractiveShell, started: GPUJobScheduler, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jid = gs(ip, "run -- 'for i in 1 2 3; do echo $i; done'")
    gs(ip, f"wait {jid} --timeout 60 --no-progress")
    whole = "1\n2\n3\n"
    st = ["--state-dir", str(state)]
    for n, text in (("0", ""), ("all", whole), ("2", "2\n3\n")):
        assert gs(ip, f"logs {jid} -n {n}") == text
        assert cli(capsys, "logs", jid, "-n", n, *st) == (0, text, ""), n
        assert started.logs(jid, tail=None if n == "all" else int(n)) == text
    assert gs(ip, f"logs {jid}") == whole  # (the default: 50 lines)


def test_retries_launcher_and_gpu_arg_mean_the_same_in_both(
    ip: InteractiveShell,
    started: GPUJobScheduler,
    state: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = tmp_path / "argv.py"
    script.write_text("import sys\nprint(*sys.argv[1:])\nsys.exit(1)\n")
    st = ["--state-dir", str(state)]
    by_magic = gs(ip, f"add {script} --gpus 1 --retries 1 --gpu-arg=--cuda -- --x 1")
    rc, out, _ = cli(
        capsys, "add", str(script), "--gpus", "1", "--retries", "1", "--gpu-arg=--cuda",
        *st, "--", "--x", "1",
    )  # fmt: skip
    by_cli = out.strip()
    ids = [by_magic, by_cli]
    ip.user_ns["ids"] = ids
    rows = gs(ip, "wait $ids --timeout 60 --no-progress")
    assert list(rows["attempts"]) == [2, 2]  # (one re-run after the failure, in both)
    for jid in ids:
        assert started.logs(jid).splitlines()[-1] in ("--x 1 --cuda 0", "--x 1 --cuda 1")
    with pytest.raises(UsageError, match="--launcher: invalid choice: 'mpirun'"):
        gs(ip, f"add {script} --launcher mpirun")
    rc, _, err = cli(capsys, "add", str(script), "--launcher", "mpirun", *st)
    assert rc == 2 and "--launcher: invalid choice: 'mpirun'" in err


@pytest.mark.parametrize(
    ("magic_tail", "cli_words", "command"),
    [
        ("'sleep 0.1; echo hi'", ["sleep 0.1; echo hi"], "sleep 0.1; echo hi"),
        ('"echo one; echo two"', ["echo one; echo two"], "echo one; echo two"),
        ("echo 'a  b' c", ["echo", "a  b", "c"], "echo 'a  b' c"),
        ("nvidia-smi", ["nvidia-smi"], "nvidia-smi"),
    ],
)
def test_the_words_after_dashdash_make_the_same_command_in_both(
    ip: InteractiveShell,
    started: GPUJobScheduler,
    state: Path,
    capsys: pytest.CaptureFixture[str],
    magic_tail: str,
    cli_words: list[str],
    command: str,
) -> None:
    """One word is the command line itself; several are the command line as typed."""
    by_magic = gs(ip, f"run --gpus 0.5 -- {magic_tail}")
    rc, out, _ = cli(capsys, "run", "--gpus", "0.5", "--state-dir", str(state), "--", *cli_words)
    assert rc == 0
    assert started.job(by_magic)["command"] == command
    assert started.job(out.strip())["command"] == command


def test_a_quoted_command_line_runs_as_a_command_line(
    ip: InteractiveShell, started: GPUJobScheduler
) -> None:
    jid = gs(ip, "run -- 'echo one; echo two'")
    rows = gs(ip, f"wait {jid} --timeout 60 --no-progress")
    assert list(rows["exit_code"]) == [0]
    assert gs(ip, f"logs {jid}") == "one\ntwo\n"


def test_every_id_is_checked_then_each_acted_on_once_in_both(
    ip: InteractiveShell, started: GPUJobScheduler, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    st = ["--state-dir", str(state)]
    a, b = gs(ip, "run -- sleep 30"), gs(ip, "run -- sleep 30")
    with pytest.raises(UsageError, match="no job '999999'"):
        gs(ip, f"cancel {a} 999999")
    assert cli(capsys, "cancel", b, "999999", *st)[0] == 2
    assert started.job(a)["status"] != "cancelled" and started.job(b)["status"] != "cancelled"
    assert gs(ip, f"cancel {a} {a}") is True  # (once: not [True, False])
    rc, out, _ = cli(capsys, "cancel", b, b, *st)
    assert (rc, out) == (0, f"{b}: cancelled\n")
    assert gs(ip, f"retry {a} {a}") == a  # (once: not [a, a])
    c = gs(ip, "run -- sleep 30")
    with pytest.raises(UsageError, match=f"job {c} is (queued|running); only ended jobs retry"):
        gs(ip, f"retry {b} {c}")
    rc, _, err = cli(capsys, "retry", b, c, *st)
    assert rc == 2 and f"job {c} is" in err
    assert started.job(b)["status"] == "cancelled"  # (checked all, then did nothing)
    assert cli(capsys, "retry", b, b, *st) == (0, f"{b}\n", "")


#: reST that a person would see as is in a help text: a literal block's ``::``, double
#: backquotes, Sphinx roles, IPython's ``<...>`` around an argument.
REST_MARKUP = ("::", "``", ":func:", ":meth:", ":mod:", ":class:", ":data:", "<")


def _help_texts(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    texts = {"nbsched --help": build_parser().format_help()}
    texts.update({f"nbsched {n} --help": p.format_help() for n, p in CLI_PARSERS.items()})
    for word in ["help", *(f"help {name}" for name in MAGIC_VERBS)]:
        ip.run_line_magic("gpusched", word)
        texts[f"%gpusched {word}"] = capsys.readouterr().out
    texts["%gpusched?"] = ip.find_line_magic("gpusched").__doc__
    return texts


def test_help_is_plain_text(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    """Both front ends' help is read in a terminal or a notebook's output, as is: it
    showed reST (``::`` before the usage, double backquotes)."""
    for where, text in _help_texts(ip, capsys).items():
        assert text.strip(), where
        shown = [m for m in REST_MARKUP if m in text]
        assert not shown, f"{where}: {shown} in\n{text}"
    one = _help_texts(ip, capsys)["%gpusched help add"]
    assert one.startswith("usage: %gpusched add ") and one.count("usage:") == 1
    assert "[-- SCRIPT ARGS...]" in one.splitlines()[0]  # the whole usage, on its first line
