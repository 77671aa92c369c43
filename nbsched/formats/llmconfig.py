"""The LLM config: how many GPUs a job needs, from the model its ``--llm`` names.

File format (the original program's ``llm_config.json``)::

    {"default_requirement": 1.0, "models": {"qwen2.5-3b-inst": 0.5, "llama-70b": 4},
     "memory": {"qwen2.5-7b-inst": "18G"}}

``memory`` (GPU memory a model's jobs need free on each of their GPUs: ``"18G"``,
``"512M"`` or MiB, as ``gpu_memory=``) is nbsched's; a job asking for no memory itself
gets its model's.  All keys are optional; other keys, duplicate keys, ``NaN``/``Infinity`` and any
requirement :func:`~nbsched.checks.check_requirement` refuses are errors naming
the file and key.

Decisions: the model is the value of the *last* ``--llm NAME`` or ``--llm=NAME``
before a ``--`` (what argparse gives the script).  A model missing from the config
gets ``default_requirement``, as in the original program; :meth:`LLMConfig.unknown_model`
tells the caller so it can warn.  No ``--llm`` (or one without a value) -> ``None``.

Re-reading the file when it changes: :mod:`nbsched.llmconfig_watch`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..checks import check_requirement
from ..checks.memory import check_gpu_memory
from ..errors import InvalidTypeError, InvalidValueError, MissingFileError

_KEYS = ("default_requirement", "models", "memory")


@dataclass(frozen=True)
class LLMConfig:
    """GPU requirement per model name, and the one for models it does not list."""

    default_requirement: float = 1.0
    models: Mapping[str, float] = field(default_factory=dict)
    #: GPU memory (MiB) per model name.
    memory: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        default = check_requirement("default_requirement", self.default_requirement)
        object.__setattr__(self, "default_requirement", default)
        if not isinstance(self.models, Mapping):
            raise InvalidTypeError(f"models={self.models!r}: expected a dict of name -> GPUs")
        models: dict[str, float] = {}
        for name, value in self.models.items():
            if not isinstance(name, str) or not name:
                raise InvalidTypeError(f"models: model name {name!r} must be a non-empty string")
            models[name] = check_requirement(f"models[{name!r}]", value)
        object.__setattr__(self, "models", MappingProxyType(models))
        if not isinstance(self.memory, Mapping):
            raise InvalidTypeError(f"memory={self.memory!r}: expected a dict of name -> size")
        memory = {str(n): check_gpu_memory(f"memory[{n!r}]", v) for n, v in self.memory.items()}
        object.__setattr__(self, "memory", MappingProxyType(memory))

    def __hash__(self) -> int:
        items = (frozenset(self.models.items()), frozenset(self.memory.items()))
        return hash((self.default_requirement, *items))

    def memory_request(self, args: Sequence[str]) -> tuple[float | None, float | None]:
        """``(MiB, GPUs)`` for the model ``--llm`` names: the memory the config gives
        it (None: none), and its GPUs where the config lists it too (None: a job asking
        for memory alone books the smallest share, not the default requirement)."""
        model = self.model_of(args)
        if model is None or model not in self.memory:
            return None, None
        return self.memory[model], self.models.get(model)

    def model_of(self, args: Sequence[str]) -> str | None:
        """The model ``--llm`` names in ``args`` (the last one), or ``None``."""
        if isinstance(args, str):
            raise InvalidTypeError(f"args={args!r}: expected a list of arguments, not a string")
        model: str | None = None
        items = list(args)
        for i, arg in enumerate(items):
            if arg == "--":
                break
            if arg == "--llm":
                value = items[i + 1] if i + 1 < len(items) else ""
                model = value if value and not value.startswith("--") else None
            elif arg.startswith("--llm="):
                model = arg[len("--llm=") :] or None
        return model

    def requirement_for(self, args: Sequence[str]) -> float | None:
        """GPUs for a job with these arguments: its model's, the default for an
        unknown model, ``None`` when no ``--llm`` is given."""
        model = self.model_of(args)
        if model is None:
            return None
        return self.models.get(model, self.default_requirement)

    def unknown_model(self, args: Sequence[str]) -> str | None:
        """The model ``--llm`` names if the config does not list it, else ``None``."""
        model = self.model_of(args)
        return model if model is not None and model not in self.models else None


class _Constant:
    """``NaN``/``Infinity`` as read: not a number, so validation names the key holding it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def load_llm_config(path: str | os.PathLike[str]) -> LLMConfig:
    """Read and validate an LLM config file.

    A missing file raises ``MissingFileError``; any other problem ``InvalidValueError``
    naming the file and the key.  Other ``OSError`` s (no permission) propagate.
    """
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise MissingFileError(f"LLM config {where} not found") from None
    except IsADirectoryError:
        raise InvalidValueError(f"LLM config {where} is a directory, not a JSON file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidValueError(f"{where}: not UTF-8 text ({exc.reason})") from None
    try:
        data = json.loads(text, parse_constant=_Constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise InvalidValueError(
            f"{where}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise InvalidValueError(f"{where}: not a valid LLM config: {exc}") from None
    if not isinstance(data, dict):
        got = data if isinstance(data, _Constant) else type(data).__name__
        raise InvalidValueError(
            f"{where}: expected a JSON object like "
            '{"default_requirement": 1.0, "models": {"name": 0.5}}'
            f", got {got}"
        )
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise InvalidValueError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(_KEYS)}"
        )
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise InvalidValueError(
            f"{where}: models={models!r}: expected an object of model name -> GPUs"
        )
    try:
        memory = data.get("memory", {})
        return LLMConfig(data.get("default_requirement", 1.0), models, memory)
    except (InvalidValueError, InvalidTypeError) as exc:
        raise InvalidValueError(f"{where}: {exc}") from None
