"""The import rules of design.md, checked on the source tree."""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[2] / "src"

CORE_ALLOWED = {
    "__future__", "asyncio", "attrs", "croniter", "collections", "contextlib", "datetime",
    "enum", "functools", "hashlib", "itertools", "math", "posixpath", "re", "secrets",
    "threading", "typing", "ctm_core",
}
BANNED_CALLS = {("datetime", "now"), ("datetime", "utcnow"), ("date", "today"),
                ("time", "time"), ("time", "sleep"), ("time", "monotonic")}


def violations(source: str, allowed: set[str], filename: str = "<mod>") -> list[str]:
    """Imports outside ``allowed`` and wall-clock or sleep calls in one module's source."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name.split(".")[0] not in allowed:
                found.append(f"{filename}:{node.lineno} imports {name}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and (node.func.value.id, node.func.attr) in BANNED_CALLS
        ):
            found.append(f"{filename}:{node.lineno} calls {node.func.value.id}.{node.func.attr}")
    return found


def test_core_imports_no_io_or_outer_layer() -> None:
    """ctm_core imports only the standard library's pure modules, attrs and croniter."""
    problems = []
    for path in sorted((SRC / "ctm_core").rglob("*.py")):
        problems += violations(path.read_text(), CORE_ALLOWED, str(path.relative_to(SRC)))
    assert problems == []


def test_adapters_never_import_http() -> None:
    """ctm_adapters depends on ctm_core only, never on the HTTP layer."""
    for path in sorted((SRC / "ctm_adapters").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("ctm_http"), path


@pytest.mark.parametrize(
    "source",
    [
        "import sqlite3",
        "from starlette.responses import JSONResponse",
        "import subprocess",
        "from ctm_adapters.sqlite import SqliteRepository",
        "import os",
        "from datetime import datetime\nx = datetime.now()",
        "import time\ntime.sleep(1)",
    ],
)
def test_checker_catches_a_violation(source: str) -> None:
    """A deliberate violation makes the layer check fail (so the check can fail at all)."""
    assert violations(source, CORE_ALLOWED) != []
