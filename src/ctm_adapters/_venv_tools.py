"""The programs the venv backend works with: the Python interpreters environments can be
made from (found once on ``PATH`` and in the settings), and uv (which one, whether it runs, the
pip settings it must be given as flags because it does not read ``PIP_*``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping

import attrs

from ctm_adapters._child_env import environment_for_installer
from ctm_adapters._subprocess import Completed, run_tool
from ctm_core.errors import BackendFailure

__all__ = [
    "PythonInterpreter",
    "ask",
    "choose_uv",
    "discover",
    "find_links",
    "own_interpreter",
    "probe_interpreter",
    "uv_index_flags",
]

_ASK_TIMEOUT = 20.0
_PY_SCRIPT = (
    "import sys, os; print(os.path.abspath(sys.executable)); "
    "print('.'.join(map(str, sys.version_info[:3])))"
)
_PYTHON_ON_PATH = re.compile(r"python3(?:\.\d+)?")


@attrs.frozen
class PythonInterpreter:
    """An interpreter environments can be made from: its version ``3.11.7`` and its path."""

    version: str
    executable: str

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.version.split("."))


def own_interpreter() -> PythonInterpreter:
    return PythonInterpreter(
        ".".join(map(str, sys.version_info[:3])), os.path.abspath(sys.executable)
    )


def ask(argv: list[str]) -> Completed | None:
    """Run a short question to a tool (a Python's version, uv's), with the installers'
    environment and a timeout; None when it could not run or took too long."""
    try:
        return run_tool(argv, env=environment_for_installer(os.environ), timeout=_ASK_TIMEOUT)
    except (OSError, BackendFailure):
        return None


def probe_interpreter(executable: str) -> PythonInterpreter | None:
    proc = ask([executable, "-c", _PY_SCRIPT])
    if proc is None:
        return None
    lines = proc.stdout.splitlines()
    if proc.rc != 0 or len(lines) != 2 or not re.fullmatch(r"\d+\.\d+\.\d+", lines[1]):
        return None
    # A pyenv shim is a script whose choice depends on the current directory: keep the real
    # interpreter it led to, so the same version is used every time.
    return PythonInterpreter(lines[1], lines[0])


def discover(extra: Mapping[str, str]) -> list[PythonInterpreter]:
    """``sys.executable``, the configured ones, then ``python3``/``python3.X`` on PATH."""
    candidates: list[str] = list(extra.values())
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        try:
            names = sorted(os.listdir(directory or "."))
        except OSError:
            continue
        candidates += [os.path.join(directory, n) for n in names if _PYTHON_ON_PATH.fullmatch(n)]
    found = [own_interpreter()]
    seen = {os.path.realpath(sys.executable)}
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if real in seen or not os.access(candidate, os.X_OK):
            continue
        seen.add(real)
        probed = probe_interpreter(candidate)
        if probed is None:
            continue
        real_exe = os.path.realpath(probed.executable)
        if real_exe in seen and real_exe != real:
            continue
        seen.add(real_exe)
        found.append(probed)
    found.sort(key=lambda i: i.version_tuple, reverse=True)
    return found


def uv_candidates() -> list[str]:
    """Where uv may be, best first: the one installed with ctm (the ``uv`` package, a
    dependency: ``uv.find_uv_bin()``, found whatever the server's PATH), the one beside the
    server's interpreter, then uv on PATH."""
    found: list[str] = []
    try:
        from uv import find_uv_bin

        found.append(find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    beside = os.path.join(os.path.dirname(sys.executable), "uv")
    if os.access(beside, os.X_OK):
        found.append(beside)
    on_path = shutil.which("uv")
    if on_path is not None:
        found.append(on_path)
    return list(dict.fromkeys(os.path.abspath(f) for f in found))


def uv_version(uv: str) -> str | None:
    """``uv 0.9.2`` when ``uv --version`` runs and says so; None when uv cannot serve."""
    proc = ask([uv, "--version"])
    if proc is None:
        return None
    words = proc.stdout.split()
    if proc.rc != 0 or len(words) < 2 or words[0] != "uv":
        return None
    return f"uv {words[1]}"


def choose_uv(explicit: str | None) -> tuple[str | None, str]:
    """The first uv that runs (``explicit`` alone when given) and how to name the installer;
    ``(None, "pip: <why>")`` when none does."""
    candidates = [explicit] if explicit else uv_candidates()
    for candidate in candidates:
        version = uv_version(candidate)
        if version is not None:
            return candidate, f"{version} at {candidate}"
    if not candidates:
        return None, "pip: no uv was found"
    return None, f"pip: uv does not run ({', '.join(candidates)})"


def uv_index_flags(env: Mapping[str, str]) -> list[str]:
    """uv does not read ``PIP_*``: carry the index settings users set for pip over to uv."""
    flags: list[str] = []
    if env.get("PIP_NO_INDEX", "").strip().lower() in ("1", "true", "yes", "on"):
        flags.append("--no-index")
    if env.get("PIP_INDEX_URL") and not env.get("UV_INDEX_URL"):
        flags += ["--index-url", env["PIP_INDEX_URL"]]
    for url in env.get("PIP_EXTRA_INDEX_URL", "").split():
        flags += ["--extra-index-url", url]
    for link in env.get("PIP_FIND_LINKS", "").split():
        flags += ["--find-links", link]
    return flags


def find_links(env: Mapping[str, str]) -> list[str]:
    """Local folders pip or uv are told to find packages in (offline installs)."""
    found = []
    for key in ("PIP_FIND_LINKS", "UV_FIND_LINKS"):
        for link in env.get(key, "").replace(",", " ").split():
            path = link.removeprefix("file://")
            if os.path.isabs(path) and os.path.exists(path):
                found.append(path)
    return found
