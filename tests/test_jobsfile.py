"""The jobs file: line parsing, round trip, validation and incremental reading."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbsched.checks import check_allowed_gpus
from nbsched.errors import InvalidTypeError, InvalidValueError
from nbsched.formats.gpulist import format_gpu_list, parse_gpu_list
from nbsched.formats.jobsfile import (
    JobLine,
    JobsFileLineError,
    LineError,
    format_line,
    parse_line,
    validate_line,
)
from nbsched.formats.jobsfile_reader import JobsFileReader, read_jobs_file
from nbsched.jobs import job_hash

QUOTING_CASES = [
    "a'; echo foo",
    'say "hi, there"',
    "$(rm -rf ~)",
    "`id`",
    "a;b",
    "über ∂ 日本",
    "with space",
    "comma,inside",
    "back\\slash",
    "",
    "#hash",
    "{a,b}",
]


# ---------------------------------------------------------------- gpu lists


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("0-3,5", (0, 1, 2, 3, 5)),
        (" 5 , 0 - 1 ,1", (0, 1, 5)),
        ("7", (7,)),
        ("2-2", (2,)),
    ],
)
def test_parse_gpu_list(text: str, ids: tuple[int, ...]) -> None:
    assert parse_gpu_list(text) == ids


@pytest.mark.parametrize("text", ["3-1", "a", "-1", "1,,2", "", "  ", "1-", "0-99999", "١"])
def test_parse_gpu_list_rejects(text: str) -> None:
    with pytest.raises(InvalidValueError, match="allowed_gpus=") as info:
        parse_gpu_list(text)
    assert repr(text) in str(info.value)


@given(st.sets(st.integers(0, 64)))
def test_gpu_list_round_trip(ids: set[int]) -> None:
    text = format_gpu_list(ids)
    if ids:
        assert parse_gpu_list(text) == tuple(sorted(ids))
    else:
        assert text == ""


def test_format_gpu_list_compresses() -> None:
    assert format_gpu_list([5, 3, 0, 1, 2, 2]) == "0-3,5"


def test_check_allowed_gpus() -> None:
    assert check_allowed_gpus(None, 4) is None
    assert check_allowed_gpus("0-1", 4) == (0, 1)
    assert check_allowed_gpus([3, 1, 1], 4) == (1, 3)
    assert check_allowed_gpus([9], None) == (9,)
    with pytest.raises(InvalidValueError) as info:
        check_allowed_gpus([9], 4)
    assert str(info.value) == "allowed_gpus=[9]: GPU 9 does not exist; this machine has GPUs 0-3"
    for bad in ([], [-1], ""):
        with pytest.raises(InvalidValueError):
            check_allowed_gpus(bad, 4)
    for wrong in ([True], [1.0], ["1"], 3, b"0"):
        with pytest.raises(InvalidTypeError):
            check_allowed_gpus(wrong, 4)


# ---------------------------------------------------------------- parse_line


def test_parse_line_design_examples() -> None:
    job = parse_line("0,/path/to/train.py,torch-env,--llm qwen2.5-7b-inst --epochs 100,0-3", 3)
    assert job == JobLine(
        3, 0, "/path/to/train.py", "torch-env", ("--llm", "qwen2.5-7b-inst", "--epochs", "100"),
        (0, 1, 2, 3),
    )  # fmt: skip
    job = parse_line("1,/path/to/eval.py,,--llm qwen2.5-3b-inst --dataset test,")
    assert job is not None
    assert job.conda_env is None and job.allowed_gpus is None
    assert job.hash == job_hash("/path/to/eval.py", None, job.args, None)


@pytest.mark.parametrize("text", ["", "   ", "\t", "# comment", "   # indented, comment", "\n"])
def test_comments_and_blank_lines(text: str) -> None:
    assert parse_line(text) is None


@pytest.mark.parametrize(
    ("text", "args", "gpus"),
    [
        ('0,train.py,,--name "a,b" --x 1,0-3', ("--name", "a,b", "--x", "1"), (0, 1, 2, 3)),
        ("0,train.py,,--ids 'x,y',", ("--ids", "x,y"), None),
        ("0,train.py,,--x a\\,b,", ("--x", "a,b"), None),
        # the original program: everything after the fourth comma is the GPU list
        ("0,train.py,env,--x 1,0-3,5", ("--x", "1"), (0, 1, 2, 3, 5)),
        ("0,train.py,env,--x 1, 0, 2 ", ("--x", "1"), (0, 2)),
        ('0,train.py,env,--x 1,"0-3,5"', ("--x", "1"), (0, 1, 2, 3, 5)),
        # unquoted commas in the arguments, GPU list in the last field
        ("0,train.py,,--x a,b,0-3", ("--x", "a,b"), (0, 1, 2, 3)),
        ("0,train.py,,--x a,b,c,", ("--x", "a,b,c"), None),
    ],
)
def test_commas(text: str, args: tuple[str, ...], gpus: tuple[int, ...] | None) -> None:
    job = parse_line(text)
    assert job is not None
    assert (job.args, job.allowed_gpus) == (args, gpus)


def test_short_lines_like_the_original() -> None:
    assert parse_line("-2,train.py") == JobLine(1, -2, "train.py", None, (), None)
    assert parse_line("1, 'my dir/t.py' ,e") == JobLine(1, 1, "my dir/t.py", "e", (), None)
    assert parse_line("0,t.py,,--a 1\r\n") == JobLine(1, 0, "t.py", None, ("--a", "1"), None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("x,train.py,,,", "bad priority 'x': expected an integer"),
        ("99999999999999999999,train.py,,,", "bad priority '99999999999999999999': at most 18"),
        ("1.5,train.py,,,", "bad priority '1.5'"),
        (",train.py,,,", "bad priority ''"),
        ("0", "expected comma-separated fields"),
        ("0,,,,", "missing script path"),
        ("0,a b.py,,,", "must be one word"),
        ("0,t.py,my env,,", "conda env 'my env' must be one word"),
        ("0,t.py,,--x 'open,", "unbalanced ' quote"),
        ("0,t.py,,--x \\", "bad quoting in arguments"),
        ("0,t.py,,,3-1", "bad allowed_gpus"),
        ("0,t.py,,--ids 1,x", "quote arguments that contain commas"),
        ("0,t.py,,--a\x00b,", "NUL"),
    ],
)
def test_bad_lines(text: str, reason: str) -> None:
    with pytest.raises(JobsFileLineError) as info:
        parse_line(text, 7, "jobs.txt")
    error = info.value.error
    assert (error.path, error.line_no, error.text) == ("jobs.txt", 7, text)
    assert reason in error.reason
    assert str(info.value).startswith("jobs.txt:7: ")
    assert isinstance(info.value, ValueError)


def test_line_error_str() -> None:
    error = LineError("jobs.txt", 7, "x,a,,,", "bad priority 'x': expected an integer")
    assert str(error) == "jobs.txt:7: bad priority 'x': expected an integer"
    assert str(LineError("", 2, "", "r")) == "line 2: r"


# ------------------------------------------------------------ round trip

_word_alphabet = st.characters(codec="utf-8", exclude_characters="\n\r\x00")
words = st.one_of(st.sampled_from(QUOTING_CASES), st.text(_word_alphabet, max_size=12))
nonempty = words.filter(bool)

job_lines = st.builds(
    JobLine,
    line_no=st.integers(1, 10_000),
    priority=st.integers(-(10**17), 10**17),
    script=nonempty,
    conda_env=st.none() | nonempty,
    args=st.lists(words, max_size=6).map(tuple),
    allowed_gpus=st.none()
    | st.sets(st.integers(0, 40), min_size=1).map(lambda s: tuple(sorted(s))),
)


@given(job_lines)
def test_round_trip(job: JobLine) -> None:
    line = format_line(job)
    assert "\n" not in line
    assert parse_line(line, job.line_no) == job
    assert parse_line(line, job.line_no).hash == job.hash  # type: ignore[union-attr]


@pytest.mark.parametrize("word", QUOTING_CASES)
def test_quoting_cases_survive_byte_identical(word: str) -> None:
    job = JobLine(1, 0, "t.py", None, ("--x", word, word), None)
    assert parse_line(format_line(job)) == job


def test_format_line_refuses_line_breaks() -> None:
    with pytest.raises(InvalidValueError, match="line break"):
        format_line(JobLine(1, 0, "t.py", None, ("a\nb",), None))


@settings(max_examples=500)
@given(st.text(max_size=80) | st.text(alphabet=",'\"\\ #-0123{}ab\t", max_size=40))
def test_random_text_raises_only_line_errors(text: str) -> None:
    try:
        parse_line(text)
    except JobsFileLineError:
        pass


# ------------------------------------------------------------ the 6-field form

EXECUTIONS = ["python", "torchrun", "torchrun-1gpu", "torchrun-2gpu", "torchrun-8gpu"]


@pytest.mark.parametrize(
    ("text", "execution", "args", "gpus"),
    [
        # issue 16: this ran on 1 GPU with argv ['torchrun-2gpu,--epochs', '3']
        ("0,train.py,env,torchrun-2gpu,--epochs 3,0-3", "torchrun-2gpu", ("--epochs", "3"),
         (0, 1, 2, 3)),
        ("0,train.py,env,python,--llm x,", "python", ("--llm", "x"), None),
        ("0,train.py,env,python,--llm x", "python", ("--llm", "x"), None),
        (" 0 , train.py , env , torchrun , --x 1 , 0-3,5", "torchrun", ("--x", "1"),
         (0, 1, 2, 3, 5)),
        ("0,train.py,,torchrun-4gpu,,", "torchrun-4gpu", (), None),
        ("0,train.py,,python,0-3,", "python", ("0-3",), None),
        ("0,train.py,,python,--x a,b,0-3", "python", ("--x", "a,b"), (0, 1, 2, 3)),
        ('0,train.py,,python,--name "a,b",1', "python", ("--name", "a,b"), (1,)),
        # a quoted word is an argument: the 5-field form
        ("0,train.py,,'python',0-3", None, ("python",), (0, 1, 2, 3)),
        ("0,train.py,,'torchrun-2gpu'", None, ("torchrun-2gpu",), None),
        ("0,train.py,,python -u,", None, ("python", "-u"), None),
        ("0,train.py,,--python,", None, ("--python",), None),
    ],
)  # fmt: skip
def test_six_field_lines(
    text: str, execution: str | None, args: tuple[str, ...], gpus: tuple[int, ...] | None
) -> None:
    job = parse_line(text)
    assert job is not None
    assert (job.execution, job.args, job.allowed_gpus) == (execution, args, gpus)


def test_execution_type_maps_to_launcher_and_gpus() -> None:
    def of(execution: str | None) -> tuple[str | None, int | None]:
        job = JobLine(1, 0, "t.py", None, ("--x",), None, execution)
        return job.launcher, job.required_gpus

    assert of(None) == of("python") == (None, None)
    assert of("torchrun") == of("torchrun-1gpu") == ("torchrun", 1)
    assert of("torchrun-8gpu") == ("torchrun", 8)
    plain = JobLine(1, 0, "t.py", None, ("--x",), None)
    same = {plain.hash, replace(plain, execution="python").hash}
    assert same == {job_hash("t.py", None, ("--x",), None)}  # rewriting as 6-field: no rerun
    one = {replace(plain, execution=e).hash for e in ("torchrun", "torchrun-1gpu")}
    assert len(one) == 1 and one.isdisjoint(same)
    assert replace(plain, execution="torchrun-2gpu").hash not in one | same


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0,t.py,env,python", "ambiguous: 'python'"),
        ("0,t.py,env,python,", "ambiguous: 'python'"),
        ("0,t.py,env,torchrun-2gpu", "ambiguous: 'torchrun-2gpu'"),
        ("0,t.py,env,torchrun-2gpu,3", "ambiguous: 'torchrun-2gpu'"),
        ("0,t.py,env,python, 0-3 ", "ambiguous: 'python'"),
        ("0,t.py,env,torchrun-2GPU,--x,", "unknown execution type 'torchrun-2GPU'"),
        ("0,t.py,env,python3,--x,", "unknown execution type 'python3'"),
        ("0,t.py,env,Python,--x,", "unknown execution type 'Python'"),
        ("0,t.py,env,torchrun-0gpu,--x,", "N must be 1 or more"),
        ("0,t.py,env,torchrun-2gpu,--x,9-1", "bad allowed_gpus"),
    ],
)
def test_ambiguous_and_unknown_execution_types_are_refused(text: str, reason: str) -> None:
    with pytest.raises(JobsFileLineError) as info:
        parse_line(text, 12, "jobs.txt")
    assert info.value.error.line_no == 12 and reason in info.value.error.reason
    assert str(info.value).startswith("jobs.txt:12: ")


job_lines6 = st.builds(
    JobLine,
    line_no=st.integers(1, 10_000),
    priority=st.integers(-(10**17), 10**17),
    script=nonempty,
    conda_env=st.none() | nonempty,
    args=st.lists(words | st.sampled_from(EXECUTIONS), max_size=6).map(tuple),
    allowed_gpus=st.none()
    | st.sets(st.integers(0, 40), min_size=1).map(lambda s: tuple(sorted(s))),
    execution=st.none() | st.sampled_from(EXECUTIONS),
)


@given(job_lines6)
def test_round_trip_both_forms(job: JobLine) -> None:
    """Either form, with arguments that are themselves execution-type words, reads back
    as written: a 5-field line never turns into a 6-field one or the reverse."""
    line = format_line(job)
    parsed = parse_line(line, job.line_no)
    assert parsed == job
    assert parsed is not None and parsed.hash == job.hash
    assert (len(line.split(",")) >= 6) or job.execution is None


@given(st.sampled_from(EXECUTIONS), st.lists(words, max_size=4).map(tuple))
def test_a_five_field_line_of_one_execution_word_is_quoted(
    word: str, rest: tuple[str, ...]
) -> None:
    job = JobLine(1, 0, "t.py", None, (word,), None)
    assert parse_line(format_line(job)) == job
    six = replace(job, args=rest, execution=word)
    assert parse_line(format_line(six)) == six


def test_format_line_refuses_an_unknown_execution_type() -> None:
    with pytest.raises(InvalidValueError, match="execution='deepspeed'"):
        format_line(JobLine(1, 0, "t.py", None, (), None, "deepspeed"))


_FIELD_PIECES = ["0", "t.py", "", "python", "torchrun-2gpu", "torchrun-2GPU", "python3",
                 "0-3", "--x 1", "'python'", "3", " ", "-1", "x"]  # fmt: skip


@settings(max_examples=300)
@given(st.lists(st.sampled_from(_FIELD_PIECES), min_size=1, max_size=8))
def test_lines_of_both_forms_parse_or_raise_line_errors(fields: list[str]) -> None:
    """Any mix of the two forms' fields: a job that formats back to itself, or a line error."""
    try:
        job = parse_line(",".join(fields))
    except JobsFileLineError:
        return
    if job is not None:
        assert parse_line(format_line(job)) == job
        assert job.launcher in (None, "torchrun")


# ------------------------------------------------------------ validate_line


def test_validate_line(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("")
    (tmp_path / "sub").mkdir()
    job = parse_line("0,train.py,,,0-3", 4)
    assert job is not None
    assert validate_line(job, num_gpus=4, base_dir=str(tmp_path)) == str(tmp_path / "train.py")
    absolute = parse_line(f"0,{tmp_path / 'train.py'},,,")
    assert absolute is not None
    assert validate_line(absolute, num_gpus=None, base_dir="/elsewhere") == str(
        tmp_path / "train.py"
    )
    with pytest.raises(JobsFileLineError, match="GPU 3 does not exist \\(GPUs 0-2\\)"):
        validate_line(job, num_gpus=3, base_dir=str(tmp_path))
    missing = parse_line("0,x.py,,,", 9)
    assert missing is not None
    with pytest.raises(JobsFileLineError) as info:
        validate_line(missing, num_gpus=4, base_dir=str(tmp_path), path="jobs.txt")
    assert str(info.value).startswith("jobs.txt:9: script 'x.py' not found")
    folder = parse_line("0,sub,,,")
    assert folder is not None
    with pytest.raises(JobsFileLineError, match="is a directory"):
        validate_line(folder, num_gpus=4, base_dir=str(tmp_path))


# ------------------------------------------------------------ incremental reading


def _scripts(jobs: list[JobLine]) -> list[tuple[int, str]]:
    return [(j.line_no, j.script) for j in jobs]


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_reader_missing_file_then_created(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    reader = JobsFileReader(path)
    assert reader.read_new() == ([], [])
    assert reader.missing
    path.write_text("0,a.py,,,\n")
    jobs, errors = reader.read_new()
    assert _scripts(jobs) == [(1, "a.py")] and errors == []
    assert not reader.missing


def test_reader_appends_and_half_lines(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_bytes(b"# jobs\n0,a.py,,,\n\n")
    reader = JobsFileReader(path)
    assert _scripts(reader.read_new()[0]) == [(2, "a.py")]
    assert reader.read_new() == ([], [])
    _append(path, b"1,b.py,,,\n1,c.p")
    assert _scripts(reader.read_new()[0]) == [(4, "b.py")]
    assert reader.read_new() == ([], [])
    _append(path, b"y,,--x 1,\n")
    assert _scripts(reader.read_new()[0]) == [(5, "c.py")]


def test_reader_unchanged_file_is_not_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs.txt"
    path.write_bytes(b"0,a.py,,,\n")
    reader = JobsFileReader(path)
    reader.read_new()

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("opened an unchanged file")

    monkeypatch.setattr("builtins.open", no_open)
    assert reader.read_new() == ([], [])


def test_reader_crlf_bom_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_bytes(
        b"\xef\xbb\xbf0,a.py,,,\r\n"
        b"x,bad.py,,,\r\n"
        b"1,b.py,env,--n 1,0\r\n"
        b"2,\xff\xfe.py,,,\r\n"
        b"3,c.py,,,\r\n"
    )
    reader = JobsFileReader(path)
    jobs, errors = reader.read_new()
    assert _scripts(jobs) == [(1, "a.py"), (3, "b.py"), (5, "c.py")]
    assert jobs[1] == JobLine(3, 1, "b.py", "env", ("--n", "1"), (0,))
    assert [(e.line_no, e.path) for e in errors] == [(2, str(path)), (4, str(path))]
    assert "bad priority" in errors[0].reason
    assert "not UTF-8" in errors[1].reason and "0xff" in errors[1].reason
    _append(path, b"4,d.py,,,\r\n")
    assert _scripts(reader.read_new()[0]) == [(6, "d.py")]


def test_reader_rewrite_with_new_inode(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_bytes(b"0,a.py,,,\n0,b.py,,,\n")
    reader = JobsFileReader(path)
    assert len(reader.read_new()[0]) == 2
    new = tmp_path / "jobs.txt.new"
    new.write_bytes(b"0,a.py,,,\n0,b.py,,,\n0,c.py,,,\n")
    keep = tmp_path / "keep"  # hold the old inode so it cannot be reused
    os.link(path, keep)
    os.replace(new, path)
    assert _scripts(reader.read_new()[0]) == [(1, "a.py"), (2, "b.py"), (3, "c.py")]


def test_reader_shrink_and_in_place_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_bytes(b"0,a.py,,,\n0,b.py,,,\n")
    reader = JobsFileReader(path)
    reader.read_new()
    with open(path, "r+b") as f:  # same inode, shorter
        f.truncate(0)
        f.write(b"0,z.py,,,\n")
    assert _scripts(reader.read_new()[0]) == [(1, "z.py")]
    with open(path, "r+b") as f:  # same inode, longer, different start
        f.write(b"0,y.py,,,\n0,x.py,,,\n")
    assert _scripts(reader.read_new()[0]) == [(1, "y.py"), (2, "x.py")]


def test_reader_file_removed_and_recreated(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_bytes(b"0,a.py,,,\n")
    reader = JobsFileReader(path)
    reader.read_new()
    path.unlink()
    assert reader.read_new() == ([], []) and reader.missing
    path.write_bytes(b"0,a.py,,,\n")
    assert _scripts(reader.read_new()[0]) == [(1, "a.py")]


def test_reader_takes_a_settled_last_line_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_bytes(b"0,a.py,,,\n0,b.py,,,")
    reader = JobsFileReader(path, partial_line_grace_s=60)
    assert _scripts(reader.read_new()[0]) == [(1, "a.py")]
    old = os.stat(path).st_mtime_ns - 120 * 10**9
    os.utime(path, ns=(old, old))  # the editor saved it two minutes ago
    assert _scripts(reader.read_new()[0]) == [(2, "b.py")]
    assert reader.read_new() == ([], [])
    _append(path, b"\n0,c.py,,,\n")
    assert _scripts(reader.read_new()[0]) == [(3, "c.py")]


def test_read_jobs_file_takes_the_last_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_bytes(b"0,a.py,,,\n0,b.py,,,")
    jobs, _ = read_jobs_file(path)
    assert _scripts(jobs) == [(1, "a.py"), (2, "b.py")]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"0,a.py,,,", b"x,b,,,", b"# c", b"", b"1,\xff,,,", b"2,c.py,,--x 1,0"]),
        max_size=12,
    ),
    st.lists(st.integers(0, 200), max_size=6),
    st.booleans(),
)
def test_reader_chunked_appends_match_whole_read(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], cuts: list[int], crlf: bool
) -> None:
    """Whatever chunks the file is written in, each line is read once, numbered right."""
    data = b"".join(line + (b"\r\n" if crlf else b"\n") for line in lines)
    path = tmp_path_factory.mktemp("r") / "jobs.txt"
    path.write_bytes(b"")
    reader = JobsFileReader(path, partial_line_grace_s=None)
    jobs: list[JobLine] = []
    errors: list[LineError] = []
    written = 0
    for cut in sorted(min(c, len(data)) for c in cuts) + [len(data)]:
        _append(path, data[written:cut])
        written = max(written, cut)
        new_jobs, new_errors = reader.read_new()
        jobs += new_jobs
        errors += new_errors
    expected_jobs, expected_errors = read_jobs_file(path)
    assert jobs == expected_jobs
    assert errors == expected_errors
    assert len(jobs) + len(errors) == sum(1 for x in lines if x and not x.startswith(b"#"))
