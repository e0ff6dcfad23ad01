"""Rules for names and package specs (contract.md), shared by every use case."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from ctm_core.errors import (
    InvalidCredentialsFormat,
    InvalidEnvironmentName,
    InvalidInput,
    InvalidPackageSpec,
)

USERNAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
ENV_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
RESERVED_ENV_NAMES = frozenset({"base", "root"})
MAX_SPECS = 100
MAX_SPEC_LENGTH = 200

# A package name, then optionally one or more comma-separated version constraints.
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
_VERSION = r"[A-Za-z0-9_.*+!]+"
_CONSTRAINT = rf"(?:==|>=|<=|!=|~=|=|>|<){_VERSION}"

# File names pip and conda take for a local archive instead of a package name (pip's
# ``is_archive_file``: ``x.tar.gz``, ``x==1.whl``; conda installs ``*.tar.bz2``/``*.conda`` as
# explicit files). A word (name or version) ending in one of these is refused; dotted names
# such as ``zope.interface`` or ``backports.lzma`` are not archives and pass.
ARCHIVE_SUFFIXES = (
    "whl",
    "zip",
    "egg",
    "conda",
    "tar",
    "tar.gz",
    "tgz",
    "tar.bz2",
    "tbz",
    "tbz2",
    "tar.xz",
    "txz",
    "tlz",
    "tar.lz",
    "tar.lzma",
    "tar.zst",
)


def _any_case(text: str) -> str:
    # The patterns are published in /openapi.json (ECMA-262, no flags): spell case out.
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in text)


_ARCHIVE_WORD = (
    r"\.(?:" + "|".join(_any_case(s) for s in ARCHIVE_SUFFIXES) + r")(?![A-Za-z0-9_.\-])"
)
_NOT_ARCHIVE = rf"(?!.*{_ARCHIVE_WORD})"
SPEC_RE = re.compile(rf"{_NOT_ARCHIVE}({_NAME})(?:{_CONSTRAINT}(?:,{_CONSTRAINT})*)?")
PACKAGE_NAME_RE = re.compile(rf"{_NOT_ARCHIVE}{_NAME}")
_NAME_PREFIX_RE = re.compile(_NAME)
_ARCHIVE_WORD_RE = re.compile(_ARCHIVE_WORD)


NOT_PRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories a name may not hold: controls (NUL, CR, LF, ESC, DEL), format characters
(zero-width space U+200B, bidi overrides such as U+202E, BOM), lone surrogates, and the line and
paragraph separators U+2028, U+2029."""


def printable_line(field: str, text: str) -> str:
    """``text`` in NFC (so that two spellings of one name are one name), when it is one line
    of printable characters. Raises ``InvalidInput`` naming ``field`` and the first character
    of a ``NOT_PRINTABLE`` category."""
    for char in text:
        if unicodedata.category(char) in NOT_PRINTABLE:
            raise InvalidInput(
                field, f"'{field}' must be one line of printable characters, not U+{ord(char):04X}"
            )
    return unicodedata.normalize("NFC", text)


def validate_username(username: object) -> str:
    # ASCII only (the pattern), so no invisible, bidi or look-alike character passes.
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise InvalidCredentialsFormat(
            "username",
            "Username must be 1-64 characters of letters, digits, '_', '.' or '-'",
            message="Invalid username or password format",
        )
    return username


def validate_password(password: object, *, field: str = "password") -> str:
    if not isinstance(password, str) or not 8 <= len(password) <= 1024:
        raise InvalidCredentialsFormat(
            field,
            "Password must be 8-1024 characters",
            message="Invalid username or password format",
        )
    return password


def validate_environment_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidEnvironmentName(name, "Environment name must be a string")
    if not ENV_NAME_RE.fullmatch(name):
        raise InvalidEnvironmentName(
            name,
            "Environment name must be 1-64 characters of letters, digits, '_', '.' or '-', "
            "not starting with '-' or '.'",
        )
    if name.lower() in RESERVED_ENV_NAMES:
        raise InvalidEnvironmentName(name, f"'{name}' is reserved")
    return name


def validate_specs(field: str, specs: object, *, names_only: bool = False) -> list[str]:
    """Return the specs when every one is a plain name with optional version constraints.

    Raises ``InvalidPackageSpec`` naming the bad ones: anything that could be read as an
    option (``-c evil``), carries a shell metacharacter, a space between words, a URL, a path
    (``/``, ``\\``, ``~``, ``file:``), a direct reference (``pkg @ ...``) or an archive file
    name (``x.tar.gz``, ``x.whl``, ``x==1.zip``: ``ARCHIVE_SUFFIXES``).
    """
    if not isinstance(specs, list) or not specs:
        raise InvalidPackageSpec(field, [], f"'{field}' must be a non-empty list of strings")
    if len(specs) > MAX_SPECS:
        raise InvalidPackageSpec(field, [], f"At most {MAX_SPECS} package specifications")
    pattern = PACKAGE_NAME_RE if names_only else SPEC_RE
    bad = [
        s if isinstance(s, str) else repr(s)
        for s in specs
        if not isinstance(s, str) or len(s) > MAX_SPEC_LENGTH or not pattern.fullmatch(s)
    ]
    if bad:
        raise InvalidPackageSpec(field, bad)
    return list(dict.fromkeys(specs))


def spec_name(spec: str) -> str:
    """The package name a spec names: ``numpy>=1.2`` -> ``numpy``."""
    match = _NAME_PREFIX_RE.match(spec)
    return match.group(0) if match else spec


def normalize_package_name(name: str) -> str:
    """PEP 503 normalization, so ``Scikit_Learn`` and ``scikit-learn`` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def specs_named(specs: Sequence[str], names: Sequence[str]) -> list[str]:
    """The specs among ``specs`` whose package name is one of ``names`` (normalized)."""
    wanted = {normalize_package_name(n) for n in names}
    return [s for s in specs if normalize_package_name(spec_name(s)) in wanted]


_REQ_OP = r"(?:===|==|>=|<=|!=|~=|>|<)"
_REQ_LINE_RE = re.compile(
    rf"{_NAME}(?:\[[A-Za-z0-9_.,\-]+\])?"
    rf"(?:\s*{_REQ_OP}\s*{_VERSION}(?:\s*,\s*{_REQ_OP}\s*{_VERSION})*)?"
    r"(?:\s*;\s*[A-Za-z0-9_.<>=!~'\" ()]+)?"
)
MAX_REQUIREMENT_LINES = 200


def validate_requirements(text: str) -> str:
    """requirements.txt text of plain requirement lines only.

    Each line is a name with optional extras, version constraints and an environment marker.
    Option lines (``-r``, ``-e``, ``--index-url``, ``--no-binary``), URLs, paths, direct
    references and archive file names (``x.tar.gz``, ``x.whl``) are refused: pip runs as the
    server's user, so a line must never make it read a file or a server the user chooses, nor
    change how it installs.
    Raises ``InvalidInput`` naming the bad lines.
    """
    bad = []
    lines = [ln.split(" #")[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) > MAX_REQUIREMENT_LINES:
        raise InvalidInput("requirements", f"At most {MAX_REQUIREMENT_LINES} requirement lines")
    for line in lines:
        if not _REQ_LINE_RE.fullmatch(line) or _ARCHIVE_WORD_RE.search(line):
            bad.append(line)
    if bad:
        shown = ", ".join(repr(b) for b in bad[:10])
        raise InvalidInput(
            "requirements",
            f"Only plain requirement lines are allowed (no options, URLs or paths): {shown}",
            message="Invalid requirements",
            invalid_lines=bad,
        )
    return text
