"""The import rules of design.md, checked on the source tree."""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[2] / "src"

CORE_ALLOWED = {
    "__future__",
    "asyncio",
    "attrs",
    "croniter",
    "collections",
    "contextlib",
    "datetime",
    "enum",
    "functools",
    "hashlib",
    "ipaddress",
    "itertools",
    "math",
    "posixpath",
    "re",
    "secrets",
    "threading",
    "typing",
    "unicodedata",
    "ctm_core",
}
BANNED_CALLS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("date", "today"),
    ("time", "time"),
    ("time", "sleep"),
    ("time", "monotonic"),
}


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


HTTP_MAY_USE = {"ctm_adapters.bootstrap", "ctm_adapters.settings", "ctm_adapters._hardening"}
"""The HTTP layer builds nothing itself: it reaches adapters only through the composition root
(and the settings it reads, and the process hardening of ``ctm serve``)."""


def layer_violations(source: str, package: str, filename: str = "<mod>") -> list[str]:
    """Imports that cross the layers of design.md outward: ctm_adapters may not import
    ctm_http or the ctm facade; ctm_http may import adapters only as ``HTTP_MAY_USE`` says."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if package == "ctm_adapters" and top in ("ctm_http", "ctm"):
                found.append(f"{filename}:{node.lineno} imports {name}")
            if package == "ctm_http" and (
                top == "ctm" or (top == "ctm_adapters" and name not in HTTP_MAY_USE)
            ):
                found.append(f"{filename}:{node.lineno} imports {name}")
    return found


@pytest.mark.parametrize("package", ["ctm_adapters", "ctm_http"])
def test_outer_layers_import_only_inward(package: str) -> None:
    """ctm_adapters never imports the HTTP layer or the facade; ctm_http wires nothing itself."""
    problems = []
    for path in sorted((SRC / package).rglob("*.py")):
        problems += layer_violations(path.read_text(), package, str(path.relative_to(SRC)))
    assert problems == []


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("ctm_adapters", "from ctm_http.app import create_app"),
        ("ctm_adapters", "import ctm"),
        ("ctm_http", "from ctm_adapters.sqlite import SqliteRepository"),
        ("ctm_http", "def f():\n    from ctm_adapters.process import PsutilProcessRunner"),
        ("ctm_http", "from ctm import Ctm"),
    ],
)
def test_layer_checker_catches_a_violation(package: str, source: str) -> None:
    """Each kind of outward import makes the layer check fail."""
    assert layer_violations(source, package) != []


def test_the_facade_is_the_public_surface() -> None:
    """``import ctm`` names everything docs/library.md uses, and only what exists."""
    import ctm

    assert set(ctm.__all__) <= set(dir(ctm))
    for name in ("Ctm", "NewTask", "NewEnvironment", "Settings", "FakeClock", "ExecutionStatus"):
        assert name in ctm.__all__


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
