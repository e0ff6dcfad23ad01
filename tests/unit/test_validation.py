"""Names and package specs accepted and refused (contract.md)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctm_core.errors import InvalidEnvironmentName, InvalidInput, InvalidPackageSpec
from ctm_core.validation import (
    ARCHIVE_SUFFIXES,
    validate_environment_name,
    validate_requirements,
    validate_specs,
)

DOTTED_NAMES = [
    "zope.interface",
    "backports.zoneinfo",
    "ruamel.yaml",
    "jaraco.classes",
    "backports.lzma",
    "zc.buildout",
    "x.tarfile",
    "py.test",
    "whl",
    "conda",
]
ARCHIVE_SPECS = [
    "x.tar.gz",
    "x.whl",
    "x.zip",
    "x.tgz",
    "x.tar.bz2",
    "x.egg",
    "x.conda",
    "x.tar",
    "x.tar.xz",
    "X.WHL",
    "Pkg.Tar.Gz",
    "foo-1.0-py3-none-any.whl",
    "foo.whl==1.0",
    "x==1.0.tar.gz",
    "x=1.0.tar.bz2",
    "x>=1,<2.zip",
    "zope.interface.zip",
]


@pytest.mark.parametrize("name", ["a", "data-2024", "py3.11_env", "X" * 64, "0abc"])
def test_good_environment_names_pass(name: str) -> None:
    """Letters, digits, _ . - up to 64 characters are accepted."""
    assert validate_environment_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-x", ".hidden", "base", "root", "a/b", "../x", "a b", "X" * 65, "ümlaut", "a\n", 5, None],
)
def test_bad_environment_names_are_refused(name: object) -> None:
    """Empty, option-like, hidden, reserved, path-like, too long or non-string names: 400."""
    with pytest.raises(InvalidEnvironmentName):
        validate_environment_name(name)


@pytest.mark.parametrize(
    "spec",
    [
        "numpy",
        "numpy==1.2",
        "matplotlib>=3.4.0",
        "x=1.2.*",
        "a<2,>=1",
        "b!=1.0",
        "python=3.11",
        "scikit-learn",
        "zope.interface",
    ],
)
def test_version_constrained_specs_pass(spec: str) -> None:
    """A name with optional version constraints is a valid spec."""
    assert validate_specs("packages", [spec]) == [spec]


@pytest.mark.parametrize(
    "spec",
    [
        "--override-channels",
        "-c evil",
        "numpy; rm -rf /",
        "a b",
        "$(id)",
        "x|y",
        "http://evil/x.whl",
        "../x",
        "",
        "numpy[all]",
        "-e.",
        "a\nb",
    ],
)
def test_injection_specs_are_refused(spec: str) -> None:
    """Options, shell syntax, spaces, URLs and paths never pass as specs."""
    with pytest.raises(InvalidPackageSpec) as info:
        validate_specs("packages", ["ok", spec])
    assert info.value.details["invalid_packages"] == [spec]


def test_more_than_100_specs_are_refused() -> None:
    """At most 100 specs in one request."""
    with pytest.raises(InvalidPackageSpec):
        validate_specs("packages", [f"p{i}" for i in range(101)])


@given(st.text(min_size=1, max_size=80))
def test_no_accepted_spec_starts_with_a_dash_or_holds_space(text: str) -> None:
    """Whatever the text, an accepted spec can never be read as an option or split in two."""
    try:
        validate_specs("packages", [text])
    except InvalidPackageSpec:
        return
    assert not text.startswith("-")
    assert not any(c.isspace() for c in text)
    assert all(c.isascii() for c in text)


@pytest.mark.parametrize("name", DOTTED_NAMES)
def test_dotted_package_names_pass(name: str) -> None:
    """A name with dots that is not an archive file name is a valid spec and package name."""
    assert validate_specs("packages", [name, f"{name}>=1.0"]) == [name, f"{name}>=1.0"]
    assert validate_specs("packages", [name], names_only=True) == [name]


@pytest.mark.parametrize("names_only", [False, True])
@pytest.mark.parametrize("spec", ARCHIVE_SPECS)
def test_archive_file_specs_are_refused(spec: str, names_only: bool) -> None:
    """A spec whose name or version ends like an archive or wheel file (pip and conda would
    install the file) is refused, at install, create and remove alike."""
    with pytest.raises(InvalidPackageSpec) as info:
        validate_specs("packages", ["ok", spec], names_only=names_only)
    assert info.value.details["invalid_packages"] == [spec]
    assert info.value.message == "Invalid package specification"


@pytest.mark.parametrize(
    "spec",
    [
        "./x",
        "dir/x",
        "a\\b",
        "~/x.whl",
        "~user",
        "x~1",
        "file:x",
        "file:///tmp/x",
        "pkg@https://h/x",
        "pkg @ https://h/x",
        "pkg@file:///x",
        "git+https://h/x",
        "C:\\x.whl",
        "x.tar.gz#egg=x",
    ],
)
def test_path_url_and_direct_reference_specs_are_refused(spec: str) -> None:
    """Paths, home directories, file: and other URLs, and '@' direct references never pass."""
    with pytest.raises(InvalidPackageSpec):
        validate_specs("packages", [spec])


@given(
    st.from_regex(r"[a-z][a-z0-9_\-]{0,8}(\.[a-z0-9]{1,6}){0,2}", fullmatch=True),
    st.sampled_from(ARCHIVE_SUFFIXES).flatmap(
        lambda s: st.tuples(*(st.sampled_from([c.lower(), c.upper()]) for c in s)).map("".join)
    ),
    st.sampled_from(["", "==1.0", ">=1,<2"]),
)
def test_any_name_ending_in_an_archive_suffix_is_refused(
    name: str, suffix: str, constraint: str
) -> None:
    """Whatever the name, the letter case or the constraint, name.<archive suffix> is refused."""
    spec = f"{name}.{suffix}{constraint}"
    with pytest.raises(InvalidPackageSpec):
        validate_specs("packages", [spec])
    with pytest.raises(InvalidInput):
        validate_requirements(f"six\n{spec}\n")


@pytest.mark.parametrize(
    "text",
    [
        "numpy\npandas>=2.0\n",
        "requests[security]==2.31 ; python_version >= '3.8'\n",
        "# only a comment\n\nsix  # trailing comment\n",
        "a>=1,<2\nzope.interface\n",
    ],
)
def test_plain_requirements_pass(text: str) -> None:
    """Names, extras, constraints, markers and comments are plain requirements."""
    from ctm_core.validation import validate_requirements

    assert validate_requirements(text) == text


@pytest.mark.parametrize(
    "line",
    [
        "-r /etc/shadow",
        "--index-url http://evil/simple",
        "-e .",
        "./local/pkg",
        "https://evil/x.whl",
        "pkg @ file:///etc/passwd",
        "/abs/path.whl",
        "--pre",
        "--no-binary :all:",
        "--no-binary=:all:",
        "six --no-binary six",
        "--only-binary=:none:",
        "--index-url=http://evil/simple",
        "--extra-index-url http://evil/simple",
        "--find-links /tmp",
        "-f /tmp",
        "-c /etc/passwd",
        "--trusted-host evil",
        "-e git+https://evil/x#egg=x",
        "--editable=.",
        "x.tar.gz",
        "x.whl",
        "x.whl[extra]",
        "x == 1.0.tar.gz",
        "pkg-1.0.zip ; python_version > '3'",
        "~/x",
        "pkg@https://evil/x",
        "file:x",
        "x.tgz",
    ],
)
def test_option_url_and_path_requirements_are_refused(line: str) -> None:
    """A line that makes pip read a file or a server of the user's choice is refused."""
    from ctm_core.errors import InvalidInput
    from ctm_core.validation import validate_requirements

    with pytest.raises(InvalidInput) as info:
        validate_requirements(f"six\n{line}\n")
    assert info.value.details["invalid_lines"] == [line]
