"""The layers of DESIGN.md, checked on the source so the rule holds without anyone
remembering it: the engine imports nothing of the front ends, and the front ends (the
notebook layer, the command, the demo) use the public API only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nbsched"

#: What a front end may import of nbsched: the package's public names and the modules
#: that define them (the scheduler, its config and errors, a sweep's returned ids), and
#: the value checks, so that every front end refuses a value in the same words.
PUBLIC = {
    "nbsched",
    "nbsched.scheduler",
    "nbsched.config",
    "nbsched.errors",
    "nbsched.sweeps",
    "nbsched.checks",
}
FRONT_ENDS = (
    "nbsched.jupyter",
    "nbsched.cli",
    "nbsched.cli_tables",
    "nbsched.demo",
    "nbsched.verbs",
    "nbsched.compat",
)


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The nbsched modules ``path`` imports (relative imports resolved)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "nbsched")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "nbsched":
                found.add(target)
    return found


def _is_front_end(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FRONT_ENDS)


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: _module(p))
def test_each_module_stays_in_its_layer(path: Path) -> None:
    module = _module(path)
    imported = _imports(path)
    if module == "nbsched":  # (the package root: the public names, and the extension hooks)
        return
    if _is_front_end(module):
        below = {m for m in imported if not _is_front_end(m) and m not in PUBLIC}
        assert not below, f"{module} reaches below the public API: {sorted(below)}"
    else:
        above = {m for m in imported if _is_front_end(m)}
        assert not above, f"the engine module {module} imports a front end: {sorted(above)}"


def test_the_check_sees_imports() -> None:
    """(The check above is only worth something if it finds imports at all.)"""
    assert "nbsched.scheduler" in _imports(PACKAGE / "jupyter" / "magics.py")
    assert "nbsched.store" in _imports(PACKAGE / "scheduler.py")
    assert "nbsched.jupyter.magics" in _imports(PACKAGE / "jupyter" / "extension.py")
