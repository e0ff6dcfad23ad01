"""The EnvironmentBackend contract, run against every backend.

The same tests run on: the fake (``ctm_adapters.fakes``), conda and micromamba as played by the
fake conda CLI (``tests/fakes/fake_conda.py``, real prefixes on disk), venvs made with pip and
with uv (offline, from wheels built here), and a real conda when ``CTM_TEST_CONDA`` names one
(``CTM_TEST_CONDA_PYTHON`` optionally sets the python version it creates). The real conda needs
its channels and PyPI; its environments go where that conda puts them, named
``ctm-contract-<random>-*``, and are deleted at the end.

Each backend comes with a ``Kit``: which packages its channel has (the fake conda replays a
recorded set, the venvs see only the wheels built here), and what it can show (only real
prefixes have an interpreter to run and a directory to remove). Tests that only read or that
leave things as they found them share one module-wide environment per backend, since a venv
made with pip costs seconds.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest

from ctm_adapters.conda import CondaEnvironmentBackend
from ctm_adapters.fakes import FakeEnvironmentBackend
from ctm_adapters.venv import VenvEnvironmentBackend
from ctm_core.errors import (
    EnvironmentExists,
    EnvironmentNotFound,
    InvalidPackageSpec,
    PackageOperationFailed,
)
from ctm_core.models import Environment
from ctm_core.ports import EnvironmentBackend
from ctm_core.validation import normalize_package_name
from tests.integration.conda_fixtures import make_fake_conda
from tests.integration.venv_fixtures import build_wheel_folder, find_uv, make_wheel

REAL_CONDA = os.environ.get("CTM_TEST_CONDA")
UV = find_uv()
SLACK = timedelta(seconds=5)


@attrs.frozen(kw_only=True)
class Pkg:
    """A package a backend's channel has: the spec to ask for, and what the listing shows."""

    spec: str
    name: str
    """As listed, normalized (PEP 503)."""
    version: str | None
    """None: whatever the channel has today (a real channel moves)."""
    module: str
    """What a script in the environment imports."""


@attrs.frozen(kw_only=True)
class Kit:
    """One backend under test and what its channel and its kind of environment allow."""

    backend: EnvironmentBackend
    kinds: frozenset[str]
    python: str | None
    """The version (prefix) of the default python; None: not known in advance."""
    package: Pkg
    """Installed in ``shared`` at create, never removed from it."""
    other: Pkg
    """Installed (and removed again) by tests."""
    requirement: Pkg
    """Installed from a requirements text."""
    missing: str
    """A spec no channel has."""
    conflict: tuple[tuple[str, ...], tuple[str, ...]] | None
    """Specs that cannot be installed together and the ones the failure names; None: no such
    specs are known (the fake resolves no dependencies; a real channel moves)."""
    real_prefixes: bool
    """Prefixes are directories on disk whose ``bin/python`` runs (not the fake's)."""
    name_prefix: str = ""
    """Put before every environment name (a real conda's envs are not only ours)."""
    since: datetime = attrs.field(factory=lambda: datetime.now(UTC))

    def env(self, label: str) -> str:
        return self.name_prefix + label


BACKENDS = ["fake", "fake-conda", "fake-micromamba", "venv-pip", "venv-uv", "real-conda"]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The venvs' offline index: the venv tests' wheels plus two packages of our own."""
    folder = build_wheel_folder(str(tmp_path_factory.mktemp("wheels")))
    make_wheel(folder, "alpha-pkg", "1.5", {"alpha_pkg/__init__.py": "VERSION = '1.5'\n"})
    make_wheel(folder, "beta-pkg", "2.5", {"beta_pkg/__init__.py": "VERSION = '2.5'\n"})
    return folder


def _fake_kit() -> Kit:
    since = datetime.now(UTC)
    return Kit(
        backend=FakeEnvironmentBackend(created_at=since),
        kinds=frozenset({"fake"}),
        python="3.11",
        package=Pkg(spec="six", name="six", version="1.16.0", module="six"),
        other=Pkg(spec="idna>=3", name="idna", version="3.6", module="idna"),
        requirement=Pkg(spec="requests>=2", name="requests", version="2.31.0", module="requests"),
        missing="nosuchpkg",
        conflict=None,
        real_prefixes=False,
        since=since,
    )


def _fake_conda_kit(folder: str, flavor: str) -> Kit:
    return Kit(
        backend=make_fake_conda(folder, flavor).backend(default_python="3.11"),
        kinds=frozenset({flavor}),
        python="3.11",
        package=Pkg(spec="six", name="six", version="1.16.0", module="six"),
        other=Pkg(spec="idna>=3.4", name="idna", version="3.10", module="idna"),
        requirement=Pkg(spec="tomli", name="tomli", version="2.0.1", module="tomli"),
        missing="nosuchpkg",
        conflict=(("six", "needs-py2"), ("needs-py2",)),
        real_prefixes=True,
    )


def _venv_kit(root: str, uv: str | None) -> Kit:
    backend = (
        VenvEnvironmentBackend(root, uv_executable=uv)
        if uv
        else VenvEnvironmentBackend(root, use_uv=False)
    )
    return Kit(
        backend=backend,
        kinds=frozenset({"venv"}),
        python=".".join(map(str, sys.version_info[:3])),
        package=Pkg(spec="tiny-pkg==1.0", name="tiny-pkg", version="1.0", module="tinypkg"),
        other=Pkg(spec="alpha-pkg", name="alpha-pkg", version="1.5", module="alpha_pkg"),
        requirement=Pkg(spec="beta-pkg>=2", name="beta-pkg", version="2.5", module="beta_pkg"),
        missing="no-such-package",
        conflict=(("needs-old", "needs-new"), ("needs-old", "needs-new")),
        real_prefixes=True,
    )


def _real_conda_kit(exe: str) -> Kit:
    python = os.environ.get("CTM_TEST_CONDA_PYTHON") or None
    return Kit(
        backend=CondaEnvironmentBackend(exe, default_python=python),
        kinds=frozenset({"conda", "mamba", "micromamba"}),
        python=python,
        package=Pkg(spec="six", name="six", version=None, module="six"),
        other=Pkg(spec="idna", name="idna", version=None, module="idna"),
        requirement=Pkg(spec="tomli", name="tomli", version=None, module="tomli"),
        missing="ctm-contract-no-such-package",
        conflict=None,
        real_prefixes=True,
        name_prefix=f"ctm-contract-{secrets.token_hex(4)}-",
    )


@pytest.fixture(scope="module", params=BACKENDS)
def kit(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, wheels: str
) -> Iterator[Kit]:
    which: str = request.param
    folder = str(tmp_path_factory.mktemp(which))
    if which == "fake":
        yield _fake_kit()
    elif which.startswith("fake-"):
        yield _fake_conda_kit(folder, which.removeprefix("fake-"))
    elif which.startswith("venv-"):
        uv = None
        if which == "venv-uv":
            if UV is None:
                pytest.skip("uv is not installed (pip install uv to run these)")
            uv = UV
        with pytest.MonkeyPatch.context() as mp:
            # pip and uv see only the local wheel folder, never an index.
            mp.setenv("PIP_NO_INDEX", "1")
            mp.setenv("PIP_FIND_LINKS", wheels)
            mp.setenv("PIP_CONFIG_FILE", os.devnull)
            mp.setenv("UV_CACHE_DIR", str(tmp_path_factory.mktemp("uv-cache")))
            mp.setenv("UV_NO_CONFIG", "1")
            mp.delenv("PIP_INDEX_URL", raising=False)
            mp.delenv("PIP_EXTRA_INDEX_URL", raising=False)
            yield _venv_kit(os.path.join(folder, "envs"), uv)
    else:
        if not REAL_CONDA:
            pytest.skip("no real conda: set CTM_TEST_CONDA=/path/to/conda to run these")
        real = _real_conda_kit(REAL_CONDA)
        yield real
        for env in real.backend.list_environments():
            if env.name.startswith(real.name_prefix):
                real.backend.delete(env.name)


@pytest.fixture(scope="module")
def shared(kit: Kit) -> Environment:
    """One environment with the kit's ``package``; tests leave it as they found it (apart from
    the kit's ``other`` and ``requirement``, which only the tests installing them look at)."""
    return kit.backend.create(kit.env("shared"), None, [kit.package.spec])


def versions(env: Environment) -> dict[str, str]:
    return {normalize_package_name(p.name): p.version for p in env.packages}


def assert_has(env: Environment, pkg: Pkg) -> None:
    got = versions(env)
    assert pkg.name in got, f"{pkg.name} not in {sorted(got)}"
    if pkg.version is not None:
        assert got[pkg.name] == pkg.version


def run_in(kit: Kit, name: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with the environment's interpreter and variables, as a runner would."""
    run = kit.backend.run_environment(name)
    child = {**os.environ, **run.variables}
    child["PATH"] = os.pathsep.join([*run.path_prepend, child.get("PATH", "")])
    return subprocess.run(
        [run.python, "-c", code],
        env=child,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def needs_real_prefixes(kit: Kit) -> None:
    if not kit.real_prefixes:
        pytest.skip("the fake's prefixes are names only: no directory, no interpreter")


# --- what serves --------------------------------------------------------------------------------


def test_kind_names_the_tool(kit: Kit) -> None:
    """kind says which tool serves (the fake says 'fake')."""
    assert kit.backend.kind in kit.kinds


# --- create and reads -----------------------------------------------------------------------------


def test_create_returns_the_environment_with_python_and_specs(
    kit: Kit, shared: Environment
) -> None:
    """create gives the new env: its name, the default python, the specs and a creation time."""
    assert shared.name == kit.env("shared")
    assert shared.python_version is not None
    if kit.python is not None:
        assert shared.python_version.startswith(kit.python)
    assert_has(shared, kit.package)
    assert "pip" in versions(shared)  # every environment has its own pip (requirements)
    assert shared.created_at is not None
    assert kit.since - SLACK <= shared.created_at <= datetime.now(UTC) + SLACK


def test_get_environment_matches_what_create_returned(kit: Kit, shared: Environment) -> None:
    """get_environment reads the same env again: every package with a version."""
    env = kit.backend.get_environment(shared.name)
    assert env.name == shared.name
    assert env.prefix == shared.prefix
    assert env.python_version == shared.python_version
    assert env.created_at == shared.created_at
    assert_has(env, kit.package)
    assert all(p.name and p.version for p in env.packages)


def test_list_is_sorted_by_name_and_shows_the_detail(kit: Kit, shared: Environment) -> None:
    """list_environments: sorted by name, never base, each as get_environment shows it."""
    listed = kit.backend.list_environments()
    names = [e.name for e in listed]
    assert names == sorted(names)
    assert "base" not in names and "root" not in names
    [mine] = [e for e in listed if e.name == shared.name]
    assert mine == kit.backend.get_environment(shared.name)


def test_exists_tells_known_from_unknown(kit: Kit, shared: Environment) -> None:
    """exists is True for an env and False for an unknown name."""
    assert kit.backend.exists(shared.name)
    assert not kit.backend.exists(kit.env("nope"))


def test_unknown_environment_is_not_found_everywhere(kit: Kit) -> None:
    """Every call naming an unknown env raises EnvironmentNotFound (a LookupError)."""
    b, nope = kit.backend, kit.env("nope")
    calls: list[Callable[[], object]] = [
        lambda: b.get_environment(nope),
        lambda: b.install(nope, [kit.package.spec]),
        lambda: b.remove(nope, [kit.package.name]),
        lambda: b.rename(nope, kit.env("other-name")),
        lambda: b.delete(nope),
        lambda: b.run_environment(nope),
        lambda: b.install_requirements(nope, kit.requirement.spec + "\n"),
    ]
    for call in calls:
        with pytest.raises(EnvironmentNotFound) as caught:
            call()
        assert isinstance(caught.value, LookupError)
    assert not b.exists(kit.env("other-name"))


def test_create_never_replaces_an_existing_environment(kit: Kit, shared: Environment) -> None:
    """create on a taken name raises EnvironmentExists and the env keeps its packages."""
    before = kit.backend.get_environment(shared.name)
    with pytest.raises(EnvironmentExists):
        kit.backend.create(shared.name, "3.99", [kit.missing])
    assert kit.backend.get_environment(shared.name) == before


def test_create_with_a_missing_package_fails_and_leaves_nothing(kit: Kit) -> None:
    """A spec no channel has: 'Failed to create environment' naming it; no env is left."""
    name = kit.env("broken")
    with pytest.raises(PackageOperationFailed) as caught:
        kit.backend.create(name, None, [kit.package.spec, kit.missing])
    err = caught.value
    assert err.message == "Failed to create environment"
    assert err.failed_packages == [kit.missing]
    assert len(err.error_details) == 1
    assert kit.missing in err.error_details[0]
    assert kit.missing in err.output
    assert not kit.backend.exists(name)
    assert name not in [e.name for e in kit.backend.list_environments()]


def test_create_with_an_unavailable_python_names_python(kit: Kit) -> None:
    """A python version no channel (or machine) has is the failed spec 'python=X'."""
    name = kit.env("py399")
    with pytest.raises(PackageOperationFailed) as caught:
        kit.backend.create(name, "3.99", [])
    assert caught.value.message == "Failed to create environment"
    assert caught.value.failed_packages == ["python=3.99"]
    assert not kit.backend.exists(name)


# --- install and remove -----------------------------------------------------------------------


def test_install_adds_the_package_at_the_channels_version(kit: Kit, shared: Environment) -> None:
    """install of a spec with a version range installs the matching version."""
    kit.backend.install(shared.name, [kit.other.spec])
    env = kit.backend.get_environment(shared.name)
    assert_has(env, kit.other)
    assert_has(env, kit.package)


def test_install_of_a_missing_package_fails_naming_only_it(kit: Kit, shared: Environment) -> None:
    """'Failed to install packages', only the missing spec named, the output kept, and nothing
    of the request installed."""
    if kit.other.name in versions(kit.backend.get_environment(shared.name)):
        kit.backend.remove(shared.name, [kit.other.name])
    before = kit.backend.get_environment(shared.name).packages
    with pytest.raises(PackageOperationFailed) as caught:
        kit.backend.install(shared.name, [kit.missing, kit.other.spec])
    err = caught.value
    assert err.message == "Failed to install packages"
    assert err.failed_packages == [kit.missing]
    assert len(err.error_details) == 1
    assert kit.missing in err.output
    assert kit.backend.get_environment(shared.name).packages == before


def test_install_of_conflicting_specs_fails_naming_them(kit: Kit, shared: Environment) -> None:
    """Specs whose dependencies cannot all hold: the conflicting ones named, env unchanged."""
    if kit.conflict is None:
        pytest.skip(
            "no specs known to conflict: the fake resolves no dependencies, a real channel moves"
        )
    specs, failed = kit.conflict
    before = kit.backend.get_environment(shared.name).packages
    with pytest.raises(PackageOperationFailed) as caught:
        kit.backend.install(shared.name, list(specs))
    assert caught.value.message == "Failed to install packages"
    assert caught.value.failed_packages == list(failed)
    assert len(caught.value.error_details) == len(failed)
    assert kit.backend.get_environment(shared.name).packages == before


def test_a_spec_is_never_read_as_an_option(kit: Kit, shared: Environment) -> None:
    """A spec like '--version' is refused or fails as a package; it changes nothing."""
    before = kit.backend.get_environment(shared.name).packages
    for call in (kit.backend.install, kit.backend.remove):
        with pytest.raises((PackageOperationFailed, InvalidPackageSpec)) as caught:
            call(shared.name, ["--version"])
        if isinstance(caught.value, PackageOperationFailed):
            assert caught.value.failed_packages == ["--version"]
    assert kit.backend.get_environment(shared.name).packages == before


def test_remove_takes_the_package_out(kit: Kit, shared: Environment) -> None:
    """remove by name: the package is no longer listed (nor importable in a real prefix)."""
    kit.backend.install(shared.name, [kit.other.spec])
    kit.backend.remove(shared.name, [kit.other.name])
    env = kit.backend.get_environment(shared.name)
    assert kit.other.name not in versions(env)
    assert_has(env, kit.package)
    if kit.real_prefixes:
        done = run_in(kit, shared.name, f"import {kit.other.module}")
        assert done.returncode != 0


def test_remove_of_a_package_not_installed_fails_and_removes_nothing(
    kit: Kit, shared: Environment
) -> None:
    """'Failed to remove packages' naming only what is not installed; the rest stays."""
    before = kit.backend.get_environment(shared.name).packages
    with pytest.raises(PackageOperationFailed) as caught:
        kit.backend.remove(shared.name, [kit.package.name, kit.missing])
    err = caught.value
    assert err.message == "Failed to remove packages"
    assert err.failed_packages == [kit.missing]
    assert len(err.error_details) == 1
    assert kit.backend.get_environment(shared.name).packages == before


# --- requirements ---------------------------------------------------------------------------------


def test_requirements_text_is_installed(kit: Kit, shared: Environment) -> None:
    """install_requirements takes requirements.txt text: comments and blank lines are fine."""
    text = f"# what the script needs\n\n{kit.requirement.spec}  # pinned loosely\n"
    kit.backend.install_requirements(shared.name, text)
    env = kit.backend.get_environment(shared.name)
    assert_has(env, kit.requirement)
    assert_has(env, kit.package)


def test_failed_requirement_is_named(kit: Kit, shared: Environment) -> None:
    """'Failed to install requirements' naming the requirement no index has."""
    with pytest.raises(PackageOperationFailed) as caught:
        kit.backend.install_requirements(
            shared.name, f"{kit.requirement.spec}\n{kit.missing}==1.0  # gone\n"
        )
    err = caught.value
    assert err.message == "Failed to install requirements"
    assert [normalize_package_name(f).split("=")[0] for f in err.failed_packages] == [kit.missing]
    assert kit.missing in err.output
    assert kit.missing not in versions(kit.backend.get_environment(shared.name))


# --- running --------------------------------------------------------------------------------------


def test_run_environment_names_the_interpreter_and_variables(kit: Kit, shared: Environment) -> None:
    """The interpreter is the env's, its bin folder goes first on PATH, CONDA_* name it."""
    run = kit.backend.run_environment(shared.name)
    assert run.prefix == shared.prefix
    bin_dir = os.path.join(shared.prefix, "bin")
    assert run.python == os.path.join(bin_dir, "python")
    assert run.path_prepend[0] == bin_dir
    assert run.variables["CONDA_PREFIX"] == shared.prefix
    assert run.variables["CONDA_DEFAULT_ENV"] == shared.name


def test_a_script_runs_inside_the_environment(kit: Kit, shared: Environment) -> None:
    """run_environment's python runs with the env as sys.prefix and imports its packages."""
    needs_real_prefixes(kit)
    done = run_in(kit, shared.name, f"import sys, {kit.package.module}; print(sys.prefix)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == shared.prefix


# --- rename and delete ----------------------------------------------------------------------------


def test_rename_moves_the_environment_with_its_packages(kit: Kit, shared: Environment) -> None:
    """After rename the old name is gone and the new one has the same packages and still runs
    (renamed back afterwards, since other tests use it)."""
    new = kit.env("renamed")
    before = kit.backend.get_environment(shared.name)
    kit.backend.rename(shared.name, new)
    try:
        assert not kit.backend.exists(shared.name)
        env = kit.backend.get_environment(new)
        assert env.packages == before.packages
        assert env.python_version == before.python_version
        assert kit.backend.run_environment(new).prefix == env.prefix
        if kit.real_prefixes:
            assert not os.path.exists(before.prefix)
            done = run_in(kit, new, f"import sys, {kit.package.module}; print(sys.prefix)")
            assert done.stdout.strip() == env.prefix, done.stderr
    finally:
        kit.backend.rename(new, shared.name)
    assert kit.backend.get_environment(shared.name).packages == before.packages


def test_rename_never_overwrites(kit: Kit, shared: Environment) -> None:
    """rename onto an existing name raises EnvironmentExists; both envs are unchanged."""
    before = kit.backend.get_environment(shared.name)
    with pytest.raises(EnvironmentExists):
        kit.backend.rename(shared.name, shared.name)
    assert kit.backend.get_environment(shared.name) == before


def test_delete_removes_the_environment_and_its_directory(kit: Kit) -> None:
    """delete: gone from exists, the listing, the disk usage and the disk; a second delete is
    EnvironmentNotFound."""
    name = kit.env("doomed")
    env = kit.backend.create(name, None, [])
    assert name in kit.backend.disk_usage().per_environment
    kit.backend.delete(name)
    assert not kit.backend.exists(name)
    assert name not in [e.name for e in kit.backend.list_environments()]
    assert name not in kit.backend.disk_usage().per_environment
    if kit.real_prefixes:
        assert not os.path.exists(env.prefix)
    with pytest.raises(EnvironmentNotFound):
        kit.backend.delete(name)


# --- disk usage -----------------------------------------------------------------------------------


def test_disk_usage_counts_every_environment(kit: Kit, shared: Environment) -> None:
    """Bytes per env (every listed one, and only those), and a total that counts a file
    hard-linked into several envs once: never more than their sum."""
    usage = kit.backend.disk_usage()
    listed = {e.name for e in kit.backend.list_environments()}
    assert set(usage.per_environment) == listed
    assert usage.per_environment[shared.name] > 0
    assert max(usage.per_environment.values()) <= usage.total
    assert usage.total <= sum(usage.per_environment.values())


def test_disk_usage_of_a_real_prefix_is_what_is_on_disk(kit: Kit, shared: Environment) -> None:
    """The figure is at least the bytes of the env's own python files (not a guess)."""
    needs_real_prefixes(kit)
    own = sum(f.stat().st_size for f in Path(shared.prefix).rglob("*.py") if not f.is_symlink())
    assert kit.backend.disk_usage().per_environment[shared.name] >= own > 0
