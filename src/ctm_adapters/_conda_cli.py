"""What conda, mamba 2 and micromamba say on their command line, read: which tool it is
(``--version``, ``info --json``), the JSON result of a ``--json`` call, a failure classified with
the requested specs it concerns, and the failures pip reports for requirements.

Pure functions over text: no process is started here (``tests/unit/test_conda_parsing.py``
feeds them real recorded output).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from ctm_core.errors import BackendFailure

__all__ = [
    "CliFailure",
    "FailureKind",
    "ToolInfo",
    "classify_cli_result",
    "detect_tool",
    "full_output",
    "last_line",
    "matchspec_name",
    "parse_cli_json",
    "parse_pip_failures",
    "requirement_names",
]

_NAME_TOKEN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")

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

    @classmethod
    def per_spec(
        cls, kind: FailureKind, failed: list[str], sentence: str, output: str, message: str
    ) -> CliFailure:
        """A failure of the specs ``failed``, one ``sentence.format(spec)`` each."""
        return cls(
            kind=kind,
            failed_packages=failed,
            error_details=[sentence.format(spec) for spec in failed],
            output=output,
            message=message,
        )

    @classmethod
    def whole(
        cls, kind: FailureKind, detail: str, output: str, message: str, location: str | None = None
    ) -> CliFailure:
        """A failure of the call as a whole (no spec to blame), told in ``detail``."""
        return cls(
            kind=kind,
            failed_packages=[],
            error_details=[detail],
            output=output,
            message=message,
            location=location,
        )


def full_output(stdout: str, stderr: str) -> str:
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
    return CliFailure.per_spec(
        "packages_not_found",
        failed,
        "Package '{}' not found in available channels",
        output,
        message,
    )


def _unsatisfiable(text: str, requested: Sequence[str], output: str, msg: str) -> CliFailure:
    failed: list[str] = []
    for tier in _UNSAT_NAME_TIERS:
        failed = _match_requested([n for p in tier for n in p.findall(text)], requested)
        if failed:
            break
    failed = failed or _words_in(text, requested) or list(requested)
    return CliFailure.per_spec(
        "unsatisfiable", failed, "Package '{}' has conflicts with existing packages", output, msg
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
    output = full_output(stdout, stderr)
    message = str(obj.get("message") or "") or _first_line(stderr) or _first_line(stdout)
    verb = "removed" if removing else "installed"

    if exception == "EnvironmentLocationNotFound":
        return CliFailure.whole(
            "environment_not_found",
            message,
            output,
            message,
            location=str(obj.get("location") or "") or None,
        )
    if exception.startswith("PackagesNotFound") and exception != "PackagesNotFoundInPrefixError":
        missing = _as_str_list(obj.get("packages"))
        failed = _match_requested(missing, requested) or missing or list(requested)
        return _not_found(failed, output, message)
    if exception == "PackagesNotFoundInPrefixError":
        missing = _as_str_list(obj.get("package_name") or obj.get("packages"))
        failed = _match_requested(missing, requested) or missing or list(requested)
        return CliFailure.per_spec(
            "not_in_prefix",
            failed,
            "Package '{}' is not installed in the environment",
            output,
            message,
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
        return CliFailure.whole("invalid_name", message, output, message)
    if exception in {"CondaEnvException", "CondaValueError"} and "already exists" in message:
        return CliFailure.whole("environment_exists", message, output, message)
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
            return CliFailure.whole(
                "environment_not_found",
                _first_line(_PREFIX_MISSING.split(text, 1)[0][-200:]) or message,
                output,
                message,
            )
        if "Traceback (most recent call last)" in stderr and (
            "InvalidVersionSpec" in stderr
            or "InvalidMatchSpec" in stderr
            or "InvalidSpec" in stderr
        ):
            bad = _specs_in(stderr, requested) or list(requested)
            return _invalid_spec(bad, output, last_line(stderr))
        if "already exists" in text.lower() and not requested:
            return CliFailure.whole("environment_exists", message, output, message)
        if "Traceback (most recent call last)" in stderr:
            message = last_line(stderr)

    reason = f"{exception}: {message}" if exception else message or f"exit status {rc}"
    reason = _first_line(reason)
    failed = list(requested)
    details = [f"Package '{s}' could not be {verb}: {reason}" for s in failed] or [reason]
    return CliFailure(
        kind="other", failed_packages=failed, error_details=details, output=output, message=reason
    )


def last_line(text: str) -> str:
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
    return CliFailure.per_spec(
        "invalid_spec", bad, "Invalid package specification '{}'", output, message
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
