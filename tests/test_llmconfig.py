"""The LLM config file: validation, requirement lookup, the reloading watcher."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbsched import GPUJobScheduler, SchedulerConfig
from nbsched.errors import InvalidTypeError, InvalidValueError, MissingFileError
from nbsched.formats.llmconfig import LLMConfig, load_llm_config
from nbsched.llmconfig_watch import LLMConfigWatcher

GOOD = {"default_requirement": 1.0, "models": {"qwen2.5-3b-inst": 0.5, "llama-70b": 4}}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_good_file(tmp_path: Path) -> None:
    config = load_llm_config(write(tmp_path / "llm.json", json.dumps(GOOD)))
    assert config == LLMConfig(1.0, {"qwen2.5-3b-inst": 0.5, "llama-70b": 4.0})
    assert config.models["llama-70b"] == 4.0
    assert isinstance(hash(config), int)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", LLMConfig()),
        ('{"models": {}}', LLMConfig()),
        ('{"default_requirement": 0.25}', LLMConfig(0.25)),
        ('\ufeff{"models": {"a": 1}}', LLMConfig(1.0, {"a": 1.0})),
    ],
)
def test_optional_keys_and_bom(tmp_path: Path, text: str, expected: LLMConfig) -> None:
    assert load_llm_config(write(tmp_path / "llm.json", text)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not valid JSON"),
        ('{"models": {"a": 0.5}', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ("NaN", "got NaN"),
        ('{"default_requirement": NaN}', "default_requirement=NaN"),
        ('{"models": {"a": Infinity}}', "models['a']=Infinity"),
        ('{"models": {"a": -Infinity}}', "models['a']=-Infinity"),
        ('{"models": {"a": 1e999}}', "models['a']=inf"),
        ('{"models": {"a": 0}}', "models['a']=0"),
        ('{"models": {"a": -1}}', "models['a']=-1"),
        ('{"models": {"a": 1.5}}', "above 1 it must be a whole number"),
        ('{"models": {"a": "0.5"}}', "models['a']='0.5'"),
        ('{"models": {"a": true}}', "models['a']=True"),
        ('{"models": {"a": null}}', "models['a']=None"),
        ('{"models": {"": 1}}', "model name ''"),
        ('{"default_requirement": "1"}', "default_requirement='1'"),
        ('{"default_requirement": false}', "default_requirement=False"),
        ('{"models": [["a", 1]]}', "models=[['a', 1]]"),
        ('{"models": {"a": 1, "a": 0.5}}', "duplicate key 'a'"),
        ('{"model": {"a": 1}}', "unknown key(s) 'model'"),
        ('{"models": {"a": ' + "1" * 5000 + "}}", "not a valid LLM config"),
        ("[" * 100_000, "not"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "llm.json", text)
    with pytest.raises(InvalidValueError) as info:
        load_llm_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_not_utf8_and_directory(tmp_path: Path) -> None:
    path = tmp_path / "llm.json"
    path.write_bytes(b'{"models": {"\xff": 1}}')
    with pytest.raises(InvalidValueError, match="not UTF-8"):
        load_llm_config(path)
    with pytest.raises(InvalidValueError, match="is a directory"):
        load_llm_config(tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="not found") as info:
        load_llm_config(tmp_path / "nope.json")
    assert isinstance(info.value, FileNotFoundError)


def test_dataclass_validates() -> None:
    with pytest.raises(InvalidValueError):
        LLMConfig(default_requirement=0)
    with pytest.raises(InvalidTypeError):
        LLMConfig(models={"a": "1"})  # type: ignore[dict-item]
    config = LLMConfig(models={"a": 1})
    with pytest.raises(TypeError):
        config.models["b"] = 1  # type: ignore[index]


# ------------------------------------------------------------ lookup

CONFIG = LLMConfig(0.75, {"small": 0.5, "big": 2})


@pytest.mark.parametrize(
    ("args", "model", "requirement"),
    [
        ([], None, None),
        (["--lr", "0.1"], None, None),
        (["--llm", "small"], "small", 0.5),
        (["--llm=big", "--epochs", "3"], "big", 2.0),
        (["--llm", "small", "--llm", "big"], "big", 2.0),  # argparse keeps the last
        (["--llm", "other"], "other", 0.75),  # unknown: the default
        (["--llm"], None, None),
        (["--llm", "--lr", "1"], None, None),
        (["--llm="], None, None),
        (["--", "--llm", "big"], None, None),  # after --: a positional argument
        (["--llmx", "big"], None, None),
    ],
)
def test_requirement_for(args: list[str], model: str | None, requirement: float | None) -> None:
    assert CONFIG.model_of(args) == model
    assert CONFIG.requirement_for(args) == requirement


def test_unknown_model_is_discoverable() -> None:
    assert CONFIG.unknown_model(["--llm", "other"]) == "other"
    assert CONFIG.unknown_model(["--llm", "small"]) is None
    assert CONFIG.unknown_model([]) is None
    with pytest.raises(InvalidTypeError):
        CONFIG.model_of("--llm small")


@given(st.lists(st.text(max_size=8), max_size=8))
def test_lookup_never_fails(args: list[str]) -> None:
    requirement = CONFIG.requirement_for(args)
    assert requirement is None or requirement in (0.5, 2.0, 0.75)


# ------------------------------------------------------------ watcher


def _bump(path: Path) -> None:
    """Make a rewrite visible even on a file system with coarse mtimes."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_watcher_reloads_and_keeps_previous_on_bad_rewrite(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "llm.json", json.dumps(GOOD))
    told: list[str] = []
    watcher = LLMConfigWatcher(path, on_error=told.append)
    first = watcher.current()
    assert first.models["llama-70b"] == 4.0
    assert watcher.current() is first and watcher.last_error is None

    write(path, '{"models": {"a": 0.5}}')
    _bump(path)
    assert watcher.current().models == {"a": 0.5}

    good = watcher.current()
    write(path, '{"models": {"a": NaN}}')
    _bump(path)
    with caplog.at_level(logging.WARNING, logger="nbsched.llmconfig_watch"):
        assert watcher.current() is good
        assert watcher.current() is good  # warned once per version, not per call
    assert watcher.last_error is not None and "models['a']=NaN" in watcher.last_error
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage() and "NaN" in warnings[0].getMessage()
    assert len(told) == 1 and told[0].startswith(f"{path}: not reloaded, keeping the previous")

    path.unlink()
    assert watcher.current() is good
    assert watcher.last_error is not None and "not found" in watcher.last_error

    new = write(tmp_path / "llm.json.tmp", '{"default_requirement": 0.5}')
    os.replace(new, path)  # an editor's atomic save: a new inode
    assert watcher.current() == LLMConfig(0.5)
    assert watcher.last_error is None


def test_a_bad_new_llm_config_is_a_notice_nbsched_status_shows(tmp_path: Path) -> None:
    path = write(tmp_path / "llm.json", json.dumps(GOOD))
    config = SchedulerConfig(
        state_dir=tmp_path / "state", gpu_provider="simulated", num_gpus=2, llm_config_file=path
    )
    s = GPUJobScheduler(config=config)
    try:
        assert s.llm_config is not None
        write(path, "{not json")
        _bump(path)
        assert s.llm_config.models["llama-70b"] == 4.0  # the previous one stays
        notices = s.notices(10)
        assert [n["source"] for n in notices] == ["llm config"]
        assert s.engine_settings() is None  # (no engine has run here)
        with pytest.raises(ValueError, match="limit=-1"):
            s.notices(-1)
        assert str(path) in notices[0]["message"] and "not reloaded" in notices[0]["message"]
    finally:
        s.close()


def test_watcher_first_read_raises(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        LLMConfigWatcher(tmp_path / "nope.json")
    with pytest.raises(InvalidValueError):
        LLMConfigWatcher(write(tmp_path / "bad.json", "{"))


# ------------------------------------------------- the original program's default file


def _original_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: object
) -> GPUJobScheduler:
    monkeypatch.setenv("NBSCHED_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs.txt").write_text("")
    (tmp_path / "t.py").write_text("pass\n")
    return GPUJobScheduler(8, "jobs.txt", gpu_provider="simulated", **kw)


def test_the_original_call_reads_llm_config_json_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 16: the original read ./llm_config.json by default; a model that needs 2 GPUs
    silently got 1."""
    write(tmp_path / "llm_config.json", '{"default_requirement": 1.0, "models": {"big": 2.0}}')
    with caplog.at_level(logging.INFO, logger="nbsched"):
        s = _original_call(tmp_path, monkeypatch)
    try:
        assert s.config.llm_config_file == str(tmp_path / "llm_config.json")
        spec = s.make_spec(script="t.py", args=["--llm", "big"])
        assert spec.required_gpus == 2.0
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert any(str(tmp_path / "llm_config.json") in m and "original" in m for m in said)
    finally:
        s.close()


def test_no_default_llm_config_unless_there_and_unnamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _original_call(tmp_path, monkeypatch)  # no llm_config.json here
    try:
        assert s.config.llm_config_file is None and s.llm_config is None
    finally:
        s.close()
    write(tmp_path / "llm_config.json", '{"models": {"big": 2.0}}')
    s = _original_call(tmp_path, monkeypatch, llm_config_file=None)  # "none", said outright
    try:
        assert s.config.llm_config_file is None
    finally:
        s.close()
    other = write(tmp_path / "other.json", '{"models": {"big": 4.0}}')
    s = _original_call(tmp_path, monkeypatch, llm_config_file=str(other))  # a named one wins
    try:
        assert s.llm_config is not None and s.llm_config.models == {"big": 4.0}
    finally:
        s.close()
    s = GPUJobScheduler(config=SchedulerConfig(gpu_provider="simulated"))  # not the original call
    try:
        assert s.config.llm_config_file is None
    finally:
        s.close()


def test_a_named_llm_config_that_is_missing_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "llm_config.json", '{"models": {}}')  # not taken in its place
    with pytest.raises(MissingFileError, match="nope.json not found"):
        _original_call(tmp_path, monkeypatch, llm_config_file="nope.json")
    with pytest.raises(MissingFileError, match="nope.json not found"):
        GPUJobScheduler(
            config=SchedulerConfig(gpu_provider="simulated", llm_config_file="nope.json")
        )
