"""conda / mamba / micromamba as an ``EnvironmentBackend``.

Reads (list, packages, python version, creation time) come from each prefix's ``conda-meta/``
files: a ``conda list`` costs a third of a second, reading the files costs microseconds.
Changes go through the tool's command line as argument lists (never a shell), always with
``--json --yes``, targeting environments by prefix, each spec behind ``--`` so none can be read
as an option. See ``docs/conda.md`` for the flavors and the traps handled here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import attrs

from ctm_adapters._disk import tree_usage
from ctm_core.errors import (
    BackendFailure,
    EnvironmentExists,
    EnvironmentNotFound,
    InvalidEnvironmentName,
    InvalidPackageSpec,
    PackageOperationFailed,
)
from ctm_core.models import DiskUsage, Environment, Package, RunEnvironment
from ctm_core.validation import normalize_package_name

__all__ = [
    "CliFailure",
    "CondaEnvironmentBackend",
    "FailureKind",
    "ToolInfo",
    "child_environment",
    "classify_cli_result",
    "detect_tool",
    "find_conda_executable",
    "matchspec_name",
    "parse_cli_json",
    "parse_created_at",
    "parse_history_created",
    "parse_pip_failures",
    "read_environment",
    "requirement_names",
]

# Mutating calls of every backend in this process go one at a time: conda has no lock per
# environment and the package cache (pkgs_dirs) is shared by all of them.
_MUTATION_LOCK = threading.RLock()

_STRIPPED_VARIABLES = frozenset(
    {
        "CONDA_PREFIX",
        "CONDA_SHLVL",
        "CONDA_DEFAULT_ENV",
        "CONDA_PROMPT_MODIFIER",
        # a leaked PYTHONHOME/PYTHONPATH breaks conda's own interpreter and the env's pip
        "PYTHONHOME",
        "PYTHONPATH",
        # makes pip refuse to run outside a venv, which a conda env is not
        "PIP_REQUIRE_VIRTUALENV",
    }
)
_STACKED_PREFIX = re.compile(r"^CONDA_PREFIX_\d+$")
_RESERVED_NAMES = frozenset({"base", "root"})
_ENV_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_NAME_TOKEN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_HISTORY_HEADER = re.compile(r"^==> (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) <==", re.MULTILINE)

_PROBE_TIMEOUT = 120.0


def find_conda_executable(explicit: str | None, environ: Mapping[str, str]) -> str | None:
    """The conda-like executable to use, as an absolute path, or None when there is none.

    ``explicit`` (a path or a command name) wins; when it is given but cannot be found the
    answer is None rather than some other tool. Else ``$CONDA_EXE``, ``$MAMBA_EXE``, then
    ``conda``, ``mamba`` and ``micromamba`` on ``environ["PATH"]``.
    """
    search_path = environ.get("PATH", os.defpath)
    if explicit:
        return _resolve_command(explicit, search_path)
    for variable in ("CONDA_EXE", "MAMBA_EXE"):
        value = environ.get(variable)
        if value:
            found = _resolve_command(value, search_path)
            if found:
                return found
    for command in ("conda", "mamba", "micromamba"):
        found = shutil.which(command, path=search_path)
        if found:
            return os.path.abspath(found)
    return None


def _resolve_command(command: str, search_path: str) -> str | None:
    if os.sep in command:
        path = os.path.abspath(os.path.expanduser(command))
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    found = shutil.which(command, path=search_path)
    return os.path.abspath(found) if found else None


def child_environment(
    base: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` without activation variables (they redirect conda to the server's own env),
    ctm's ``CTM_*`` settings and secrets, and ``PYTHONHOME``/``PYTHONPATH``; then ``extra``."""
    env = {
        key: value
        for key, value in base.items()
        if key not in _STRIPPED_VARIABLES
        and not key.startswith("CTM_")
        and not _STACKED_PREFIX.match(key)
    }
    if extra:
        env.update(extra)
    return env


# --- which tool -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ToolInfo:
    """What ``X --version`` and ``X info --json`` told about the tool, read once."""

    kind: Literal["conda", "mamba", "micromamba"]
    mamba2: bool
    """True for mamba 2.x and micromamba: one C++ CLI, different from conda's."""
    version: str
    root_prefix: str
    envs_dirs: tuple[str, ...]


def detect_tool(executable: str, version_output: str, info: Mapping[str, Any]) -> ToolInfo:
    """Tell conda (and mamba 1.x, a wrapper around conda) from mamba 2.x and micromamba.

    conda's ``info --json`` has ``conda_version`` and snake_case keys; mamba 2/micromamba
    answer keys with spaces (``"libmamba version"``, ``"envs directories"``,
    ``"base environment"``). Raises ``BackendFailure`` for anything else.
    """
    base = os.path.basename(executable).lower()
    first_line = version_output.strip().splitlines()[0].strip() if version_output.strip() else ""
    if "conda_version" in info:
        is_mamba1 = first_line.lower().startswith("mamba") or base.startswith("mamba")
        root = str(info.get("root_prefix") or "")
        envs = _as_str_list(info.get("envs_dirs"))
        version = str(info.get("conda_version"))
        if is_mamba1:
            version = first_line.split()[-1] if first_line else version
        return ToolInfo(
            kind="mamba" if is_mamba1 else "conda",
            mamba2=False,
            version=version,
            root_prefix=root,
            envs_dirs=tuple(envs or [os.path.join(root, "envs")]),
        )
    if "libmamba version" in info or "envs directories" in info or "base environment" in info:
        micro = "micromamba version" in info or "micromamba" in base
        root = str(info.get("base environment") or "")
        envs = _as_str_list(info.get("envs directories"))
        version = str(
            info.get("micromamba version")
            or info.get("mamba version")
            or info.get("libmamba version")
            or first_line
        )
        return ToolInfo(
            kind="micromamba" if micro else "mamba",
            mamba2=True,
            version=version,
            root_prefix=root,
            envs_dirs=tuple(envs or [os.path.join(root, "envs")]),
        )
    raise BackendFailure(
        "Environment backend failure",
        f"{executable} is not conda, mamba or micromamba (info --json has no known keys)",
    )


def _as_str_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [str(item) for item in value if item]
    return []


# --- reading prefixes -----------------------------------------------------------------------


def parse_created_at(text: str) -> datetime | None:
    """``conda-meta/created_at``: a Unix timestamp, as an aware UTC datetime."""
    try:
        stamp = float(text.strip())
    except ValueError:
        return None
    try:
        return datetime.fromtimestamp(stamp, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def parse_history_created(text: str) -> datetime | None:
    """The first ``==> YYYY-MM-DD HH:MM:SS <==`` of ``conda-meta/history`` (the machine's local
    time, as conda writes it) as an aware UTC datetime."""
    match = _HISTORY_HEADER.search(text)
    if match is None:
        return None
    try:
        local = time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
        return datetime.fromtimestamp(time.mktime(local), UTC)
    except (ValueError, OverflowError):
        return None


_RecordKey = tuple[str, int, int]
_record_cache: dict[_RecordKey, tuple[str, str]] = {}


def _read_record(path: str, stat: os.stat_result) -> tuple[str, str] | None:
    """(name, version) of one ``conda-meta/*.json`` record; cached while the file is unchanged
    (records are written once and replaced, never edited in place)."""
    key = (path, stat.st_mtime_ns, stat.st_size)
    cached = _record_cache.get(key)
    if cached is not None:
        return cached
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        data = None
    name = version = None
    if isinstance(data, dict):
        name, version = data.get("name"), data.get("version")
    if not (isinstance(name, str) and isinstance(version, str)):
        # a record being written right now, or a damaged one: fall back on the file name,
        # which conda always makes NAME-VERSION-BUILD.json
        parts = os.path.basename(path)[: -len(".json")].rsplit("-", 2)
        if len(parts) != 3 or not all(parts):
            return None
        name, version = parts[0], parts[1]
    if len(_record_cache) > 100_000:
        _record_cache.clear()
    _record_cache[key] = (name, version)
    return name, version


def _pip_packages(prefix: str, conda_names: set[str]) -> list[Package]:
    """Packages pip put in the env's site-packages (conda does not record them in conda-meta)."""
    found: list[Package] = []
    lib = os.path.join(prefix, "lib")
    try:
        libs = [e.path for e in os.scandir(lib) if e.name.startswith("python") and e.is_dir()]
    except OSError:
        return found
    for libdir in libs:
        site = os.path.join(libdir, "site-packages")
        try:
            entries = list(os.scandir(site))
        except OSError:
            continue
        for entry in entries:
            for suffix in (".dist-info", ".egg-info"):
                if not entry.name.endswith(suffix):
                    continue
                stem = entry.name[: -len(suffix)]
                name, _, version = stem.partition("-")
                version = version.split("-")[0]
                if not name or normalize_package_name(name) in conda_names:
                    continue
                if _installer(entry.path) == "conda":
                    continue
                found.append(Package(name, version))
    return found


def _installer(dist_info: str) -> str:
    try:
        with open(os.path.join(dist_info, "INSTALLER"), encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def read_environment(name: str, prefix: str) -> Environment:
    """An environment as its ``conda-meta/`` says: packages of every record (and what pip
    installed), python's version, and ``created_at`` from ``conda-meta/created_at``, else the
    first entry of ``conda-meta/history``, else None."""
    meta = os.path.join(prefix, "conda-meta")
    packages: dict[str, Package] = {}
    try:
        entries = list(os.scandir(meta))
    except OSError:
        entries = []
    for entry in entries:
        if not entry.name.endswith(".json"):
            continue
        try:
            stat = entry.stat()
        except OSError:
            continue
        record = _read_record(entry.path, stat)
        if record is not None:
            packages[record[0]] = Package(*record)
    python = packages.get("python")
    conda_names = {normalize_package_name(n) for n in packages}
    every = list(packages.values())
    if python is not None:
        every.extend(_pip_packages(prefix, conda_names))
    created: datetime | None = None
    stamp = _read_text(os.path.join(meta, "created_at"))
    if stamp is not None:
        created = parse_created_at(stamp)
    if created is None:
        history = _read_text(os.path.join(meta, "history"))
        if history is not None:
            created = parse_history_created(history)
    return Environment(
        name=name,
        prefix=prefix,
        python_version=python.version if python is not None else None,
        packages=tuple(sorted(every, key=lambda p: (p.name.lower(), p.name))),
        created_at=created,
    )


# --- what the command line said -------------------------------------------------------------


def parse_cli_json(stdout: str) -> Any:
    """The final JSON document of a ``--json`` call, or None when there is none.

    conda writes progress records ending in ``\\0`` before its result (when stdout is a TTY):
    the last non-empty chunk is the result. Text before the document is skipped.
    """
    chunks = [c.strip() for c in stdout.split("\0")]
    chunks = [c for c in chunks if c]
    if not chunks:
        return None
    last = chunks[-1]
    try:
        return json.loads(last)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"^[\[{]", last, re.MULTILINE):
        try:
            value, end = decoder.raw_decode(last, match.start())
        except ValueError:
            continue
        if not last[end:].strip():
            return value
    return None


def matchspec_name(spec: str) -> str:
    """The package name a spec or a conda MatchSpec string names, lower-cased
    (``attrs>=24`` → ``attrs``, ``conda-forge::six=1`` → ``six``, ``attrs[version='>=9']``)."""
    text = spec.strip()
    if "::" in text:
        text = text.split("::", 1)[1]
    text = text.rsplit("/", 1)[-1] if "/" in text.split("[", 1)[0] else text
    match = _NAME_TOKEN.match(text)
    if match is None:
        return text.lower()
    name = match.group(0)
    # a trailing dot belongs to a version ("pkg.=1" never happens; "pkg 1.2" has a space)
    return name.rstrip(".").lower()


FailureKind = Literal[
    "packages_not_found",
    "unsatisfiable",
    "not_in_prefix",
    "environment_not_found",
    "environment_exists",
    "invalid_spec",
    "invalid_name",
    "other",
]


@attrs.frozen(kw_only=True)
class CliFailure:
    """A failed call, classified: the requested specs that failed, one sentence per failed
    spec, and the tool's whole output (stdout then stderr)."""

    kind: FailureKind
    failed_packages: list[str]
    error_details: list[str]
    output: str
    message: str
    location: str | None = None


def _full_output(stdout: str, stderr: str) -> str:
    parts = [stdout.replace("\0", "").strip(), stderr.strip()]
    return "\n".join(p for p in parts if p)


def _match_requested(names: Iterable[str], requested: Sequence[str]) -> list[str]:
    wanted = {matchspec_name(n) for n in names}
    return [spec for spec in requested if matchspec_name(spec) in wanted]


_NOT_FOUND_PATTERNS = (
    re.compile(r"nothing provides requested ([^\s,]+)"),
    re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.\-]*)[^\n]*? does not exist \(perhaps a"),
    re.compile(r"No entries matching \"?([^\s\"]+)"),
)
# Where a conflict's culprits are named, most telling first: conda's "  - X -> dep" chains and
# "Package X conflicts for", libsolv's "package X-ver-build requires ...", then the first names of
# libmamba's explanation tree (which also shows the innocent side, often python).
_UNSAT_NAME_TIERS = (
    (
        re.compile(r"^\s*-\s+([^\s\[=<>!~,]+)", re.MULTILINE),
        re.compile(r"^Package ([A-Za-z0-9_.\-]+) conflicts for", re.MULTILINE),
        re.compile(r"\bpackage ([A-Za-z0-9_.\-]+?)-[^-\s]+-[^-\s]+ requires"),
    ),
    (re.compile(r"[├└]─\s*([A-Za-z0-9_][A-Za-z0-9_.\-]*)"),),
)
_PREFIX_MISSING = re.compile(
    r"No prefix found at|Not a conda environment|prefix does not exist|"
    r"could not find (?:the )?(?:environment|prefix)|does not exist or is not a conda",
    re.IGNORECASE,
)


def _words_in(text: str, requested: Sequence[str]) -> list[str]:
    return [
        spec
        for spec in requested
        if re.search(
            rf"(?<![\w.\-]){re.escape(matchspec_name(spec))}(?![\w\-])", text, re.IGNORECASE
        )
    ]


def _not_found(failed: list[str], output: str, message: str) -> CliFailure:
    return CliFailure(
        kind="packages_not_found",
        failed_packages=failed,
        error_details=[f"Package '{s}' not found in available channels" for s in failed],
        output=output,
        message=message,
    )


def _unsatisfiable(text: str, requested: Sequence[str], output: str, msg: str) -> CliFailure:
    failed: list[str] = []
    for tier in _UNSAT_NAME_TIERS:
        failed = _match_requested([n for p in tier for n in p.findall(text)], requested)
        if failed:
            break
    failed = failed or _words_in(text, requested) or list(requested)
    return CliFailure(
        kind="unsatisfiable",
        failed_packages=failed,
        error_details=[f"Package '{s}' has conflicts with existing packages" for s in failed],
        output=output,
        message=msg,
    )


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def classify_cli_result(
    rc: int,
    stdout: str,
    stderr: str,
    requested: Sequence[str] = (),
    *,
    removing: bool = False,
) -> CliFailure | None:
    """None when the call succeeded, else what went wrong.

    Success: exit code 0 and either no output at all (``remove --all`` of an empty env) or a
    JSON result that is not an error. Failures come from conda's exception JSON on stdout
    (``exception_name`` plus its kwargs: ``packages``, ``package_name``, ``location``), from
    mamba 2/micromamba's ``solver_problems`` and stderr text, or from a bare traceback (an
    unparsable spec makes conda crash without any JSON).
    """
    data = parse_cli_json(stdout)
    obj: dict[str, Any] = data if isinstance(data, dict) else {}
    exception = str(obj.get("exception_name") or "")
    if rc == 0 and not exception and obj.get("success") is not False:
        return None
    output = _full_output(stdout, stderr)
    message = str(obj.get("message") or "") or _first_line(stderr) or _first_line(stdout)
    verb = "removed" if removing else "installed"

    if exception == "EnvironmentLocationNotFound":
        return CliFailure(
            kind="environment_not_found",
            failed_packages=[],
            error_details=[message],
            output=output,
            message=message,
            location=str(obj.get("location") or "") or None,
        )
    if exception.startswith("PackagesNotFound") and exception != "PackagesNotFoundInPrefixError":
        missing = _as_str_list(obj.get("packages"))
        failed = _match_requested(missing, requested) or missing or list(requested)
        return _not_found(failed, output, message)
    if exception == "PackagesNotFoundInPrefixError":
        missing = _as_str_list(obj.get("package_name") or obj.get("packages"))
        failed = _match_requested(missing, requested) or missing or list(requested)
        return CliFailure(
            kind="not_in_prefix",
            failed_packages=failed,
            error_details=[f"Package '{s}' is not installed in the environment" for s in failed],
            output=output,
            message=message,
        )
    if "Unsatisfiable" in exception or exception in {
        "ResolvePackageNotFound",
        "SpecsConfigurationConflictError",
    }:
        text = message + "\n" + str(obj.get("error") or "")
        missing = [m for p in _NOT_FOUND_PATTERNS for m in p.findall(text)]
        not_found = _match_requested(missing, requested)
        if not_found:
            return _not_found(not_found, output, message)
        return _unsatisfiable(text, requested, output, message)
    if exception == "CondaValueError" and "name" in message.lower():
        return CliFailure(
            kind="invalid_name",
            failed_packages=[],
            error_details=[message],
            output=output,
            message=message,
        )
    if exception in {"CondaEnvException", "CondaValueError"} and "already exists" in message:
        return CliFailure(
            kind="environment_exists",
            failed_packages=[],
            error_details=[message],
            output=output,
            message=message,
        )
    if exception in {"InvalidMatchSpec", "InvalidVersionSpec", "InvalidSpec"}:
        bad = _specs_in(output, requested) or list(requested)
        return _invalid_spec(bad, output, message)

    if not exception:
        # mamba 2 / micromamba (solver_problems, text on stderr) or a crash without JSON
        problems = _as_str_list(obj.get("solver_problems"))
        log = obj.get("log_history")
        log_text = (
            "\n".join(str(item.get("message", "")) for item in log if isinstance(item, dict))
            if isinstance(log, list)
            else ""
        )
        text = "\n".join([*problems, log_text, stderr])
        missing = [m for p in _NOT_FOUND_PATTERNS for m in p.findall(text)]
        not_found = _match_requested(missing, requested)
        if not_found:
            return _not_found(not_found, output, message)
        if problems or "could not solve" in text.lower() or "unsatisfiable" in text.lower():
            return _unsatisfiable(text, requested, output, message)
        if _PREFIX_MISSING.search(text):
            return CliFailure(
                kind="environment_not_found",
                failed_packages=[],
                error_details=[_first_line(_PREFIX_MISSING.split(text, 1)[0][-200:]) or message],
                output=output,
                message=message,
            )
        if "Traceback (most recent call last)" in stderr and (
            "InvalidVersionSpec" in stderr
            or "InvalidMatchSpec" in stderr
            or "InvalidSpec" in stderr
        ):
            bad = _specs_in(stderr, requested) or list(requested)
            return _invalid_spec(bad, output, _last_line(stderr))
        if "already exists" in text.lower() and not requested:
            return CliFailure(
                kind="environment_exists",
                failed_packages=[],
                error_details=[message],
                output=output,
                message=message,
            )
        if "Traceback (most recent call last)" in stderr:
            message = _last_line(stderr)

    reason = f"{exception}: {message}" if exception else message or f"exit status {rc}"
    reason = _first_line(reason)
    failed = list(requested)
    details = [f"Package '{s}' could not be {verb}: {reason}" for s in failed] or [reason]
    return CliFailure(
        kind="other", failed_packages=failed, error_details=details, output=output, message=reason
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _specs_in(text: str, requested: Sequence[str]) -> list[str]:
    """The requested specs (or their version part) quoted or shown in ``text``."""
    found = []
    for spec in requested:
        constraint = spec[len(matchspec_name(spec)) :].strip()
        if spec in text or (constraint and f"'{constraint}'" in text):
            found.append(spec)
    return found


def _invalid_spec(bad: list[str], output: str, message: str) -> CliFailure:
    return CliFailure(
        kind="invalid_spec",
        failed_packages=bad,
        error_details=[f"Invalid package specification '{s}'" for s in bad],
        output=output,
        message=message,
    )


# --- pip ------------------------------------------------------------------------------------

_PIP_FAILURES = (
    (
        re.compile(r"No matching distribution found for (\S+)"),
        "No matching distribution found for '{}'",
    ),
    (
        re.compile(r"Could not find a version that satisfies the requirement (\S+)"),
        "No matching distribution found for '{}'",
    ),
    (re.compile(r"Invalid requirement: '([^'\n]*)'"), "Invalid requirement '{}'"),
    (re.compile(r"Invalid requirement: ([^\s']\S*)"), "Invalid requirement '{}'"),
)
_PIP_CONFLICT = re.compile(
    r"Cannot install (.+?) because these package versions have conflicting dependencies"
)


def requirement_names(requirements: str) -> list[str]:
    """The requirement lines of a requirements.txt text (comments and options left out)."""
    names = []
    for raw in requirements.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        names.append(line)
    return names


def parse_pip_failures(output: str) -> list[tuple[str, str]]:
    """(requirement, sentence) for each requirement pip names as failed, in order, once each."""
    found: dict[str, str] = {}
    for pattern, sentence in _PIP_FAILURES:
        for match in pattern.finditer(output):
            req = match.group(1).rstrip(".,;:")
            if req and req not in found:
                found[req] = sentence.format(req)
    for match in _PIP_CONFLICT.finditer(output):
        for part in re.split(r",\s*|\s+and\s+", match.group(1)):
            req = part.strip()
            if req and req not in found:
                found[req] = f"Package '{req}' has conflicting dependencies"
    return list(found.items())


# --- the backend ----------------------------------------------------------------------------


@attrs.frozen
class _Completed:
    rc: int
    stdout: str
    stderr: str


class CondaEnvironmentBackend:
    """Environments of one conda, mamba or micromamba installation, addressed by name.

    ``executable``: the tool (see ``find_conda_executable``). ``default_python``: the python
    version for ``create`` when none is given (``None``: the newest the channels offer).
    ``extra_env``: variables added to every child's environment. ``command_timeout``: seconds
    before a tool call is killed. ``usage_ttl``: seconds a disk usage figure is reused (any
    change through this backend drops it at once). ``only_binary``: requirements go through
    the environment's pip with ``--only-binary :all:``, so no sdist is built (conda itself
    installs built packages only).

    Runs the tool twice at construction (``--version``, ``info --json``); raises
    ``BackendFailure`` when it cannot.
    """

    kind: str

    def __init__(
        self,
        executable: str,
        *,
        default_python: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        command_timeout: float | None = 3600.0,
        usage_ttl: float = 300.0,
        only_binary: bool = False,
    ) -> None:
        self.executable = executable
        self.only_binary = only_binary
        self.default_python = default_python
        self._extra_env = dict(extra_env or {})
        self._timeout = command_timeout
        self._usage_ttl = usage_ttl
        self._usage: tuple[float, DiskUsage] | None = None
        self._usage_generation = 0
        self._usage_lock = threading.Lock()
        version = self._probe(["--version"])
        info_text = self._probe(["info", "--json"])
        info = parse_cli_json(info_text)
        if not isinstance(info, dict):
            raise BackendFailure(
                "Environment backend failure",
                f"{executable} info --json gave no JSON object: {info_text[:500]}",
            )
        self.tool = detect_tool(executable, version, info)
        self.kind = self.tool.kind

    # --- reads ---

    def list_environments(self) -> list[Environment]:
        """Every environment except base/root, sorted by name."""
        return [read_environment(n, p) for n, p in sorted(self._scan().items())]

    def get_environment(self, name: str) -> Environment:
        """One environment with every installed package. Raises ``EnvironmentNotFound``."""
        return read_environment(name, self._require(name))

    def exists(self, name: str) -> bool:
        """True when an environment of that name exists."""
        return self._locate(name) is not None

    def disk_usage(self) -> DiskUsage:
        """Bytes on disk per environment and in total, a hard-linked file counted once."""
        with self._usage_lock:
            cached, generation = self._usage, self._usage_generation
        if cached is not None and time.monotonic() - cached[0] < self._usage_ttl:
            return cached[1]
        per_env, total = tree_usage(sorted(self._scan().items()))
        usage = DiskUsage(per_environment=per_env, total=total)
        with self._usage_lock:
            if generation == self._usage_generation:
                self._usage = (time.monotonic(), usage)
        return usage

    def run_environment(self, name: str) -> RunEnvironment:
        """The interpreter and variables for running a script in ``name``.
        Raises ``EnvironmentNotFound``."""
        prefix = self._require(name)
        bin_dir = os.path.join(prefix, "bin")
        return RunEnvironment(
            python=os.path.join(bin_dir, "python"),
            prefix=prefix,
            variables={"CONDA_PREFIX": prefix, "CONDA_DEFAULT_ENV": name},
            path_prepend=(bin_dir,),
        )

    # --- changes ---

    def create(self, name: str, python_version: str | None, specs: Sequence[str]) -> Environment:
        """Create an environment with python (``python_version`` or the default) and ``specs``.

        Raises ``EnvironmentExists`` (checked first: conda would replace an existing one) and
        ``PackageOperationFailed("Failed to create environment", ...)``; after a failure nothing
        of the new environment is left behind.
        """
        _check_name(name)
        wanted = _checked_specs(specs)
        version = python_version or self.default_python
        if version:
            python_spec = f"python={version}" if version[0].isdigit() else f"python{version}"
            wanted = [python_spec, *wanted]
        elif not any(matchspec_name(s) == "python" for s in wanted):
            wanted = ["python", *wanted]
        with _MUTATION_LOCK:
            if self._locate(name) is not None:
                raise EnvironmentExists(name)
            prefix = self._new_prefix(name)
            if os.path.lexists(prefix):
                raise EnvironmentExists(name, f"'{prefix}' exists but is not a conda environment")
            try:
                done = self._call(["create", "-p", prefix, *self._flags(), "--", *wanted])
                failure = classify_cli_result(done.rc, done.stdout, done.stderr, wanted)
                if failure is not None:
                    self._raise(failure, "Failed to create environment", name)
                if not os.path.isdir(os.path.join(prefix, "conda-meta")):
                    raise PackageOperationFailed(
                        "Failed to create environment",
                        failed_packages=[],
                        error_details=[f"{self.kind} reported success but made no environment"],
                        output=_full_output(done.stdout, done.stderr),
                    )
            except BaseException:
                _remove_tree(prefix)
                raise
            finally:
                self._invalidate()
        return read_environment(name, prefix)

    def install(self, name: str, specs: Sequence[str]) -> None:
        """Install ``specs``. Raises ``EnvironmentNotFound`` and
        ``PackageOperationFailed("Failed to install packages", ...)``."""
        wanted = _checked_specs(specs)
        with _MUTATION_LOCK:
            prefix = self._require(name)
            if not wanted:
                return
            try:
                done = self._call(["install", "-p", prefix, *self._flags(), "--", *wanted])
            finally:
                self._invalidate()
            failure = classify_cli_result(done.rc, done.stdout, done.stderr, wanted)
            if failure is not None:
                self._raise(failure, "Failed to install packages", name)

    def remove(self, name: str, packages: Sequence[str]) -> None:
        """Remove installed packages by name. Raises ``EnvironmentNotFound`` and
        ``PackageOperationFailed("Failed to remove packages", ...)`` (e.g. not installed)."""
        wanted = _checked_specs(packages)
        with _MUTATION_LOCK:
            prefix = self._require(name)
            if not wanted:
                return
            if self.tool.mamba2:
                # mamba 2 / micromamba say nothing useful about a package that is not there
                installed = {
                    normalize_package_name(p.name) for p in read_environment(name, prefix).packages
                }
                absent = [
                    p for p in wanted if normalize_package_name(matchspec_name(p)) not in installed
                ]
                if absent:
                    raise PackageOperationFailed(
                        "Failed to remove packages",
                        failed_packages=absent,
                        error_details=[
                            f"Package '{p}' is not installed in the environment" for p in absent
                        ],
                        output=f"Not installed in {prefix}: {', '.join(absent)}",
                    )
            try:
                done = self._call(["remove", "-p", prefix, *self._flags(), "--", *wanted])
            finally:
                self._invalidate()
            failure = classify_cli_result(done.rc, done.stdout, done.stderr, wanted, removing=True)
            if failure is not None:
                self._raise(failure, "Failed to remove packages", name)

    def rename(self, old: str, new: str) -> None:
        """Rename an environment. Raises ``EnvironmentNotFound`` and ``EnvironmentExists``
        (checked first: ``rename --yes`` would overwrite)."""
        _check_name(new)
        with _MUTATION_LOCK:
            source = self._require(old)
            if self._locate(new) is not None:
                raise EnvironmentExists(new)
            target = os.path.join(os.path.dirname(source), new)
            if os.path.lexists(target):
                raise EnvironmentExists(new, f"'{target}' exists but is not a conda environment")
            try:
                if self.kind == "conda":
                    # without --yes conda itself refuses an existing destination; a destination
                    # with a path separator is taken as a path (kept in the source's envs dir)
                    done = self._call(["rename", "-p", source, target, "--json"])
                    failure = classify_cli_result(done.rc, done.stdout, done.stderr)
                    if failure is not None:
                        if failure.kind == "environment_exists":
                            raise EnvironmentExists(new, failure.message)
                        self._raise(failure, "Failed to rename environment", old, backend=True)
                else:
                    self._clone_then_remove(old, source, new, target)
            finally:
                self._invalidate()

    def delete(self, name: str) -> None:
        """Delete an environment and its directory. Raises ``EnvironmentNotFound``."""
        with _MUTATION_LOCK:
            prefix = self._require(name)
            try:
                done = self._call(self._env_remove_args(prefix))
                failure = classify_cli_result(done.rc, done.stdout, done.stderr)
                if failure is not None:
                    self._raise(failure, "Failed to delete environment", name, backend=True)
                _remove_tree(prefix)
            finally:
                self._invalidate()

    def install_requirements(self, name: str, requirements: str) -> None:
        """Install requirements.txt text with the environment's own pip. Raises
        ``EnvironmentNotFound`` and ``PackageOperationFailed("Failed to install requirements",
        ...)`` with the failed requirement names."""
        prefix = self._require(name)
        names = requirement_names(requirements)
        python = os.path.join(prefix, "bin", "python")
        if not os.path.exists(python):
            raise PackageOperationFailed(
                "Failed to install requirements",
                failed_packages=names,
                error_details=[f"Environment '{name}' has no Python interpreter"],
                output="",
            )
        env = child_environment(os.environ, self._extra_env)
        env["CONDA_PREFIX"] = prefix
        env["PATH"] = os.pathsep.join([os.path.join(prefix, "bin"), env.get("PATH", "")])
        env["PIP_NO_INPUT"] = "1"
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        with tempfile.TemporaryDirectory(prefix="ctm-pip-") as workdir:
            path = os.path.join(workdir, "requirements.txt")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(requirements)
                if not requirements.endswith("\n"):
                    fh.write("\n")
            try:
                done = _run(
                    [python, "-m", "pip", "install", *self._pip_binary_flags(), "-r", path],
                    env=env,
                    timeout=self._timeout,
                    cwd=workdir,
                )
            finally:
                self._invalidate()
        if done.rc == 0:
            return
        output = _full_output(done.stdout, done.stderr)
        failures = parse_pip_failures(output)
        if not failures:
            reason = _last_line(done.stderr) or _last_line(done.stdout) or f"exit {done.rc}"
            if "No module named pip" in output:
                reason = f"pip is not installed in environment '{name}'"
            failures = [(n, f"Requirement '{n}' could not be installed: {reason}") for n in names]
            if not failures:
                failures = [("", reason)]
        raise PackageOperationFailed(
            "Failed to install requirements",
            failed_packages=[req for req, _ in failures if req],
            error_details=[sentence for _, sentence in failures],
            output=output,
        )

    # --- helpers ---

    def _pip_binary_flags(self) -> list[str]:
        return ["--only-binary=:all:"] if self.only_binary else []

    def _flags(self) -> list[str]:
        flags = ["--json", "--yes"]
        if self.tool.mamba2:
            flags += self._mamba2_flags()
        return flags

    def _mamba2_flags(self) -> list[str]:
        # --json lowers mamba 2's log level to critical, hiding the errors worth reporting
        root = ["-r", self.tool.root_prefix] if self.tool.root_prefix else []
        return [*root, "--log-level", "error"]

    def _env_remove_args(self, prefix: str) -> list[str]:
        if self.tool.mamba2:
            # mamba 2's `remove --all` keeps the directory; `env remove` deletes it
            return ["env", "remove", "-p", prefix, "--yes", *self._mamba2_flags()]
        return ["env", "remove", "-p", prefix, "--yes", "--json"]

    def _clone_then_remove(self, old: str, source: str, new: str, target: str) -> None:
        try:
            done = self._call(["create", "-p", target, "--clone", source, *self._flags()])
            failure = classify_cli_result(done.rc, done.stdout, done.stderr)
            if failure is not None:
                self._raise(failure, "Failed to rename environment", old, backend=True)
            if not os.path.isdir(os.path.join(target, "conda-meta")):
                raise BackendFailure(
                    "Failed to rename environment",
                    _full_output(done.stdout, done.stderr) or "the clone made no environment",
                )
        except BaseException:
            _remove_tree(target)
            raise
        done = self._call(self._env_remove_args(source))
        failure = classify_cli_result(done.rc, done.stdout, done.stderr)
        if failure is not None:
            raise BackendFailure(
                "Failed to rename environment",
                f"'{new}' was created as a copy but '{old}' could not be removed: "
                + failure.output,
            )
        _remove_tree(source)

    def _raise(
        self, failure: CliFailure, message: str, name: str, *, backend: bool = False
    ) -> None:
        if failure.kind == "environment_not_found":
            raise EnvironmentNotFound(name)
        if failure.kind == "environment_exists":
            raise EnvironmentExists(name, failure.message)
        if failure.kind == "invalid_name":
            raise InvalidEnvironmentName(name, failure.message)
        if backend:
            raise BackendFailure(message, failure.output or failure.message)
        raise PackageOperationFailed(
            message,
            failed_packages=failure.failed_packages,
            error_details=failure.error_details,
            output=failure.output,
        )

    def _call(self, args: list[str]) -> _Completed:
        return _run(
            [self.executable, *args],
            env=child_environment(os.environ, self._extra_env),
            timeout=self._timeout,
        )

    def _probe(self, args: list[str]) -> str:
        done = _run(
            [self.executable, *args],
            env=child_environment(os.environ, self._extra_env),
            timeout=_PROBE_TIMEOUT,
        )
        if done.rc != 0:
            raise BackendFailure(
                "Environment backend failure",
                f"{self.executable} {' '.join(args)} failed: "
                + _full_output(done.stdout, done.stderr),
            )
        return done.stdout if done.stdout.strip() else done.stderr

    def _invalidate(self) -> None:
        with self._usage_lock:
            self._usage = None
            self._usage_generation += 1

    def _scan(self) -> dict[str, str]:
        """name -> prefix of every environment in the envs directories (first one wins)."""
        root = _real(self.tool.root_prefix)
        found: dict[str, str] = {}
        for envs_dir in self.tool.envs_dirs:
            try:
                entries = list(os.scandir(envs_dir))
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                if name in found or name in _RESERVED_NAMES or name.startswith("."):
                    continue
                if not os.path.isdir(os.path.join(entry.path, "conda-meta")):
                    continue
                if _real(entry.path) == root:
                    continue
                found[name] = entry.path
        return found

    def _locate(self, name: str) -> str | None:
        if not _valid_name(name):
            return None
        for envs_dir in self.tool.envs_dirs:
            prefix = os.path.join(envs_dir, name)
            if os.path.isdir(os.path.join(prefix, "conda-meta")):
                if _real(prefix) == _real(self.tool.root_prefix):
                    return None
                return prefix
        return None

    def _require(self, name: str) -> str:
        prefix = self._locate(name)
        if prefix is None:
            raise EnvironmentNotFound(name)
        return prefix

    def _new_prefix(self, name: str) -> str:
        """Where conda would put a new named env: the first writable envs directory."""
        for envs_dir in self.tool.envs_dirs:
            if os.path.isdir(envs_dir):
                if os.access(envs_dir, os.W_OK | os.X_OK):
                    return os.path.join(envs_dir, name)
                continue
            try:
                os.makedirs(envs_dir, exist_ok=True)
            except OSError:
                continue
            return os.path.join(envs_dir, name)
        raise BackendFailure(
            "Failed to create environment",
            "No writable envs directory among " + ", ".join(self.tool.envs_dirs),
        )


def _valid_name(name: str) -> bool:
    return bool(_ENV_NAME.match(name)) and name not in _RESERVED_NAMES


def _check_name(name: str) -> None:
    if not _valid_name(name):
        raise InvalidEnvironmentName(
            name, "1-64 characters of A-Z a-z 0-9 _ . -, not starting with - or ., not base/root"
        )


def _checked_specs(specs: Sequence[str]) -> list[str]:
    """The specs as given; refuses any that a command line could read as an option."""
    bad = [s for s in specs if not s or s.startswith("-") or any(c in s for c in "\0\n\r")]
    if bad:
        raise InvalidPackageSpec("packages", bad)
    return list(specs)


def _real(path: str) -> str:
    return os.path.realpath(path) if path else ""


def _remove_tree(path: str) -> None:
    if os.path.islink(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


def _run(
    argv: list[str],
    *,
    env: Mapping[str, str],
    timeout: float | None,
    cwd: str | None = None,
) -> _Completed:
    """Run ``argv`` (no shell, no stdin) in its own session; kill the session on timeout."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
    except OSError as exc:
        raise BackendFailure("Environment backend failure", f"cannot run {argv[0]}: {exc}") from exc
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        stdout, stderr = proc.communicate()
        raise BackendFailure(
            "Environment backend failure",
            f"{os.path.basename(argv[0])} {' '.join(argv[1:2])} timed out after {timeout} s\n"
            + _full_output(stdout, stderr),
        ) from None
    return _Completed(proc.returncode, stdout, stderr)
