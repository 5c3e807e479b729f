"""The core stays pure: no I/O modules, no clock, no logging (run by `make lint` and `make test`).

import-linter (pyproject.toml) enforces the package arrows; this test adds what it cannot see:
stdlib clock calls such as ``datetime.now()`` and every module docstring.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "controller" / "core"

FORBIDDEN_MODULES = {
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "select",
    "serial",
    "pymodbus",
    "paho",
    "ocpp",
    "websockets",
    "logging",
    "structlog",
    "time",
    "sqlite3",
    "subprocess",
    "threading",
    "os",
    "random",
    "urllib",
    "http",
    "aiomqtt",
}
FORBIDDEN_CALLS = {"now", "utcnow", "today", "fromtimestamp", "monotonic", "perf_counter"}


def _core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_core_imports_no_io_clock_or_logging() -> None:
    offences = []
    for path in _core_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN_MODULES:
                    offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {name}")
    assert not offences, "\n".join(offences)


def test_core_reads_no_clock() -> None:
    offences = []
    for path in _core_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in FORBIDDEN_CALLS
            ):
                offences.append(
                    f"{path.relative_to(ROOT)}:{node.lineno}: calls .{node.func.attr}()"
                )
    assert not offences, "\n".join(offences)


def test_every_module_has_a_docstring() -> None:
    missing = []
    for pkg in ("controller", "drivers", "hil"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.stat().st_size and ast.get_docstring(ast.parse(path.read_text())) is None:
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, "modules without a docstring: " + ", ".join(missing)
