"""Names and package specs accepted and refused (contract.md)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctm_core.errors import InvalidEnvironmentName, InvalidPackageSpec
from ctm_core.validation import (
    validate_environment_name,
    validate_specs,
)


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
    "spec", ["numpy", "numpy==1.2", "matplotlib>=3.4.0", "x=1.2.*", "a<2,>=1", "b!=1.0",
             "python=3.11", "scikit-learn", "zope.interface"],
)
def test_version_constrained_specs_pass(spec: str) -> None:
    """A name with optional version constraints is a valid spec."""
    assert validate_specs("packages", [spec]) == [spec]


@pytest.mark.parametrize(
    "spec", ["--override-channels", "-c evil", "numpy; rm -rf /", "a b", "$(id)", "x|y",
             "http://evil/x.whl", "../x", "", "numpy[all]", "-e.", "a\nb"],
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


@pytest.mark.parametrize(
    "text", ["numpy\npandas>=2.0\n", "requests[security]==2.31 ; python_version >= '3.8'\n",
             "# only a comment\n\nsix  # trailing comment\n", "a>=1,<2\nzope.interface\n"],
)
def test_plain_requirements_pass(text: str) -> None:
    """Names, extras, constraints, markers and comments are plain requirements."""
    from ctm_core.validation import validate_requirements

    assert validate_requirements(text) == text


@pytest.mark.parametrize(
    "line", ["-r /etc/shadow", "--index-url http://evil/simple", "-e .", "./local/pkg",
             "https://evil/x.whl", "pkg @ file:///etc/passwd", "/abs/path.whl", "--pre"],
)
def test_option_url_and_path_requirements_are_refused(line: str) -> None:
    """A line that makes pip read a file or a server of the user's choice is refused."""
    from ctm_core.errors import InvalidInput
    from ctm_core.validation import validate_requirements

    with pytest.raises(InvalidInput) as info:
        validate_requirements(f"six\n{line}\n")
    assert info.value.details["invalid_lines"] == [line]
