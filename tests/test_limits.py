"""The limits of the code, checked on the source so that CI enforces them: no module of
nbsched over 450 lines, no function over 60 (a purely declarative table may be longer:
it is named below, with why); and the linter's lists of what the front ends may not
import name every engine module.  Run alone with ``pytest -m limits tests/test_limits.py``."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from test_layers import FRONT_ENDS, PUBLIC

if sys.version_info >= (3, 11):
    import tomllib
else:  # (the test extra brings tomli there)
    import tomli as tomllib

pytestmark = pytest.mark.limits

PACKAGE = Path(__file__).resolve().parent.parent / "nbsched"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60

#: Functions allowed over MAX_FUNCTION_LINES, by qualified name ("module:Class.function"),
#: each with the reason: only a declarative table (data, one entry a line), never logic.
DECLARATIVE_TABLES: dict[str, str] = {}

SOURCES = sorted(PACKAGE.rglob("*.py"))


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, int]]:
    """Every function and method in ``tree`` (nested ones too): qualified name, lines."""
    found: list[tuple[str, int]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + node.name
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            found.append((name, length))
            found.extend(_functions(node, name + "."))
        elif isinstance(node, ast.ClassDef):
            found.extend(_functions(node, prefix + node.name + "."))
        else:
            found.extend(_functions(node, prefix))
    return found


def _long_functions(path: Path) -> dict[str, int]:
    module = _module(path)
    tree = ast.parse(path.read_text(), str(path))
    return {
        f"{module}:{name}": length
        for name, length in _functions(tree)
        if length > MAX_FUNCTION_LINES
    }


@pytest.mark.parametrize("path", SOURCES, ids=_module)
def test_no_module_is_over_the_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, (
        f"{_module(path)} has {lines} lines (at most {MAX_MODULE_LINES}): split it"
    )


@pytest.mark.parametrize("path", SOURCES, ids=_module)
def test_no_function_is_over_the_limit(path: Path) -> None:
    long = {name: n for name, n in _long_functions(path).items() if name not in DECLARATIVE_TABLES}
    assert not long, (
        f"over {MAX_FUNCTION_LINES} lines: {long}; split them, or, for a purely "
        "declarative table, add it to DECLARATIVE_TABLES with the reason"
    )


def test_each_allowed_table_exists_and_says_why() -> None:
    """An entry outlives its function only by mistake: one that is gone or short goes."""
    long: dict[str, int] = {}
    for path in SOURCES:
        long.update(_long_functions(path))
    for name, reason in DECLARATIVE_TABLES.items():
        assert reason.strip(), f"{name}: say why it is a declarative table"
        assert name in long, f"{name} is no longer over {MAX_FUNCTION_LINES} lines: remove it"


def test_the_check_sees_functions() -> None:
    """(The checks above are only worth something if they find functions at all.)"""
    tree = ast.parse("class A:\n    def f(self):\n        def g():\n            pass\n")
    assert _functions(tree) == [("A.f", 3), ("A.f.g", 2)]
    assert len(SOURCES) > 20 and _module(PACKAGE / "gpus" / "__init__.py") == "nbsched.gpus"


def test_the_linter_bans_every_engine_module_in_the_front_ends() -> None:
    """ruff's lists (pyproject.toml for nbsched/cli.py and demo.py, the ruff.toml of
    jupyter/, verbs/ and compat/) name each engine module: a new one is banned there too."""
    engine = (
        {
            f"nbsched.{p.stem}"
            for p in PACKAGE.iterdir()
            if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.stem != "__init__"
        }
        - PUBLIC
        - set(FRONT_ENDS)
    )
    root = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    tidy = root["tool"]["ruff"]["lint"]["flake8-tidy-imports"]
    assert set(tidy["banned-module-level-imports"]) == engine, "pyproject.toml"
    for front_end in ("jupyter", "verbs", "compat"):
        config = tomllib.loads((PACKAGE / front_end / "ruff.toml").read_text())
        banned = set(config["lint"]["flake8-tidy-imports"]["banned-api"])
        assert {n for n in banned if n.startswith("nbsched.")} == engine, front_end
