"""What pip and uv said, read: which requested specs failed and why (not found, no wheel,
conflict, invalid, build, python), as the sentences of ``PackageOperationFailed``; and the
specs and requirement lines turned into what pip takes.

Pure functions over text; ``docs/venv-backend.md`` has the table of messages and sentences.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from ctm_core.errors import PackageOperationFailed
from ctm_core.validation import normalize_package_name, spec_name

__all__ = [
    "MISSING_REASONS",
    "Failure",
    "operation_failed",
    "parse_failures",
    "python_from_specs",
    "refuse_python",
    "requirement_lines",
    "to_pip_spec",
]

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"


@attrs.frozen
class Failure:
    """A requested spec that could not be installed or removed, and why."""

    spec: str
    reason: str  # not_found | no_wheel | conflict | invalid | build | python | unknown


_SENTENCES = {
    "not_found": "Package '{}' not found in available channels",
    "no_wheel": "Package '{}' has no wheel, and only wheels are installed here "
    "(install_only_binary): its build code is never run",
    "not_found_wheel": "Package '{}' not found in available channels as a wheel "
    "(only wheels are installed here: install_only_binary)",
    "conflict": "Package '{}' has conflicts with existing packages",
    "invalid": "Package specification '{}' is not valid for pip",
    "build": "Package '{}' could not be built",
    "python": "Package '{}' cannot be installed with pip: Python is fixed when a venv environment "
    "is created (create a new environment with the python_version you need)",
    "unknown": "Package '{}' could not be installed (see the error output)",
    "remove_missing": "Package '{}' is not installed",
    "remove_unknown": "Package '{}' could not be removed (see the error output)",
}


def operation_failed(message: str, failures: list[Failure], output: str) -> PackageOperationFailed:
    """The error naming each failed spec once, with one sentence for it, and the whole output."""
    specs = list(dict.fromkeys(f.spec for f in failures))
    reasons: dict[str, str] = {}
    for f in failures:
        reasons.setdefault(f.spec, f.reason)
    return PackageOperationFailed(
        message,
        failed_packages=specs,
        error_details=[_SENTENCES[reasons[s]].format(s) for s in specs],
        output=output,
    )


def to_pip_spec(spec: str) -> str:
    """conda's ``name=1.2`` (meaning 1.2.*) as pip's ``name==1.2.*``; other specs unchanged."""
    match = re.fullmatch(rf"({_NAME})=([^=<>!~,]+)", spec.strip())
    if match is None:
        return spec
    name, version = match.groups()
    return f"{name}=={version if version.endswith('*') else version + '.*'}"


def python_from_specs(
    specs: Sequence[str], python_version: str | None
) -> tuple[list[str], str | None]:
    """A ``python=3.11`` spec at create chooses the interpreter (when no version was given)."""
    rest: list[str] = []
    for spec in specs:
        match = re.fullmatch(r"python\s*={1,2}\s*(\d+(?:\.\d+)*)(?:\.\*)?", spec.strip(), re.I)
        if match is not None and python_version in (None, match.group(1)):
            python_version = match.group(1)
            continue
        rest.append(spec)
    return rest, python_version


def refuse_python(specs: Sequence[str], message: str) -> None:
    pythonish = [s for s in specs if normalize_package_name(spec_name(s)) == "python"]
    if pythonish:
        raise operation_failed(
            message,
            [Failure(s, "python") for s in pythonish],
            "Python itself is not a pip package: a venv's Python is chosen when it is created.\n",
        )


def requirement_lines(requirements: str) -> list[str]:
    """The requirements of a requirements.txt text, as written (options and comments out)."""
    lines: list[str] = []
    for raw in requirements.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


MISSING_REASONS = ("not_found", "no_wheel")
"""Reasons a resolver stops at the first such spec: the others are probed one by one."""
_NOT_FOUND = [
    re.compile(r"No matching distribution found for (\S+)"),
    re.compile(r"Could not find a version that satisfies the requirement (\S+)"),
    # uv
    re.compile(r"(\S+) was not found in the (?:package registry|provided package locations)"),
    re.compile(r"there is no version of (\S+?)(?:,|\s|$)"),
]
# uv with --only-binary :all: (pip only says "No matching distribution found")
_NO_WHEEL = [
    re.compile(r"Wheels are required for `([^`]+)`"),
    re.compile(r"(\S+) has no usable wheels"),
]
_INVALID = [
    re.compile(r"Invalid requirement: '([^']*)'"),
    re.compile(r"Failed to parse: `([^`]*)`"),
]
_BUILD = [
    re.compile(r"Failed building wheel for (\S+)"),
    re.compile(r"Could not build wheels for (\S+?),"),
    re.compile(r"Failed to build `?([A-Za-z0-9][A-Za-z0-9._-]*)"),
]
# pip: "Cannot install a==1 and b==2 because these package versions have conflicting
# dependencies." then "The user requested x==1" and "a 1.0 depends on c==2".
_PIP_CONFLICT = re.compile(r"Cannot install (.+?) because these package versions have conflicting")
_PIP_CONFLICT_CAUSE = re.compile(
    rf"^\s+(?:The user requested ({_NAME})|({_NAME}) \S+ depends on ({_NAME}))", re.MULTILINE
)
# uv: "Because all versions of a depend on c==2 and ... you require a and b, we can conclude..."
_UV_CONFLICT = re.compile(r"No solution found when resolving")
_UV_NAMED = re.compile(rf"(?:require|requires|depends? on|versions? of|and|,)\s+({_NAME}\S*)")


def _spec_key(spec: str) -> tuple[str, frozenset[str]]:
    """A spec compared by meaning: normalized name and its set of version clauses."""
    pip_spec = to_pip_spec(spec.strip())
    name = spec_name(pip_spec)
    clauses = re.sub(r"\s+", "", pip_spec[len(name) :])
    return normalize_package_name(name), frozenset(c for c in clauses.split(",") if c)


def parse_failures(output: str, requested: Sequence[str]) -> list[Failure]:
    """Which of the requested specs pip (or uv) could not install, and why."""
    by_name: dict[str, list[str]] = {}
    for spec in requested:
        by_name.setdefault(normalize_package_name(spec_name(spec)), []).append(spec)
    failures: dict[str, str] = {}

    def mark(text: str, reason: str) -> None:
        # The spec as pip/uv print it: the very spec asked for when one matches exactly
        # (``x==9.9`` when ``x`` and ``x==9.9`` were both asked), else every spec of that name.
        text = text.strip("'`\".,")
        candidates = by_name.get(normalize_package_name(spec_name(text)), [])
        exact = [spec for spec in candidates if _spec_key(spec) == _spec_key(text)]
        for spec in exact or candidates:
            failures.setdefault(spec, reason)

    for pattern in _INVALID:
        for m in pattern.finditer(output):
            for spec in requested:
                if spec.strip() == m.group(1).strip():
                    failures.setdefault(spec, "invalid")
    for pattern in _NO_WHEEL:
        for m in pattern.finditer(output):
            mark(m.group(1), "no_wheel")
    for pattern in _NOT_FOUND:
        for m in pattern.finditer(output):
            mark(m.group(1), "not_found")
    for pattern in _BUILD:
        for m in pattern.finditer(output):
            mark(m.group(1), "build")
    for m in _PIP_CONFLICT.finditer(output):
        for part in re.split(r",\s*|\s+and\s+", m.group(1)):
            mark(part, "conflict")
    for m in _PIP_CONFLICT_CAUSE.finditer(output):
        for group in m.groups():
            if group:
                mark(group, "conflict")
    uv_conflict = _UV_CONFLICT.search(output)
    if uv_conflict is not None:
        for m in _UV_NAMED.finditer(output, uv_conflict.end()):
            mark(m.group(1), "conflict")
    return [Failure(spec, failures[spec]) for spec in requested if spec in failures]
