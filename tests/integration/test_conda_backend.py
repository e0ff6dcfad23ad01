"""CondaEnvironmentBackend against the fake conda (tests/fakes/fake_conda.py) in real processes.

Tests marked with the ``fake`` fixture run once per flavor: conda 26 and micromamba 2 (one
C++ CLI with mamba 2). Prefixes are real: every environment's ``bin/python`` really runs.
The last section replays the recorded conda calls through the fake, so the fake cannot drift
from what real conda printed.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ctm_adapters._disk import tree_usage
from ctm_adapters.conda import CondaEnvironmentBackend, find_conda_executable
from ctm_core.errors import (
    BackendFailure,
    EnvironmentExists,
    EnvironmentNotFound,
    InvalidEnvironmentName,
    InvalidPackageSpec,
    PackageOperationFailed,
)
from ctm_core.ports import EnvironmentBackend
from tests.integration.conda_fixtures import FakeConda, make_fake_conda, make_prefix

DATA = Path(__file__).resolve().parents[1] / "data" / "conda"


@pytest.fixture(params=["conda", "micromamba"])
def fake(request: pytest.FixtureRequest, tmp_path: Path) -> FakeConda:
    return make_fake_conda(str(tmp_path), request.param)


@pytest.fixture
def conda(tmp_path: Path) -> FakeConda:
    return make_fake_conda(str(tmp_path), "conda")


@pytest.fixture
def micromamba(tmp_path: Path) -> FakeConda:
    return make_fake_conda(str(tmp_path), "micromamba")


def names(backend: CondaEnvironmentBackend, env: str) -> dict[str, str]:
    return {p.name: p.version for p in backend.get_environment(env).packages}


def run_in(backend: CondaEnvironmentBackend, env: str, code: str) -> str:
    """Run ``code`` with the env's interpreter and variables, as the process runner would."""
    run = backend.run_environment(env)
    child = {**os.environ, **run.variables}
    child["PATH"] = os.pathsep.join([*run.path_prepend, child.get("PATH", "")])
    done = subprocess.run(
        [run.python, "-c", code], env=child, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


# --- which tool ------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", ["conda", "mamba", "micromamba"])
def test_kind_tells_which_tool_serves(tmp_path: Path, flavor: str) -> None:
    """kind is conda, mamba or micromamba, detected from --version and info --json."""
    backend: EnvironmentBackend = make_fake_conda(str(tmp_path), flavor).backend()
    assert backend.kind == flavor


def test_an_executable_that_is_not_conda_is_refused(tmp_path: Path) -> None:
    """A program that answers info --json without conda's or mamba's keys is a BackendFailure."""
    exe = tmp_path / "notconda"
    exe.write_text('#!/bin/sh\necho \'{"platform": "linux-64"}\'\n')
    exe.chmod(0o755)
    with pytest.raises(BackendFailure):
        CondaEnvironmentBackend(str(exe))


def test_find_conda_executable_order(tmp_path: Path) -> None:
    """Explicit first, then $CONDA_EXE, then conda, mamba, micromamba on PATH; else None."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mamba", "micromamba"):
        (bin_dir / tool).write_text("#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    other = tmp_path / "other-conda"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    path = {"PATH": str(bin_dir)}
    assert find_conda_executable(None, path) == str(bin_dir / "mamba")
    assert find_conda_executable(None, {**path, "CONDA_EXE": str(other)}) == str(other)
    assert find_conda_executable("micromamba", path) == str(bin_dir / "micromamba")
    assert find_conda_executable(str(tmp_path / "missing"), path) is None
    assert find_conda_executable(None, {"PATH": str(tmp_path / "empty")}) is None


# --- reads -----------------------------------------------------------------------------------


def test_list_shows_environments_sorted_without_base(fake: FakeConda) -> None:
    """Listing: every env by name, python version, packages and creation time; never base."""
    backend = fake.backend()
    before = datetime.now(UTC) - timedelta(seconds=2)
    backend.create("zeta", None, [])
    backend.create("alpha", None, ["six"])
    os.makedirs(os.path.join(fake.envs_dir, "not-an-env"))  # no conda-meta: not listed
    envs = backend.list_environments()
    assert [e.name for e in envs] == ["alpha", "zeta"]
    alpha = envs[0]
    assert alpha.python_version == "3.11.7"
    assert {p.name for p in alpha.packages} == {"python", "pip", "six"}
    assert alpha.created_at is not None
    assert before <= alpha.created_at <= datetime.now(UTC) + timedelta(seconds=2)


def test_listing_rescans_the_envs_directories(conda: FakeConda) -> None:
    """An env made outside ctm (conda at a shell) shows up in the next listing."""
    backend = conda.backend()
    assert backend.list_environments() == []
    done = conda.run("create", "-n", "outside", "python=3.11", "--json", "--yes")
    assert done.returncode == 0, done.stdout
    assert [e.name for e in backend.list_environments()] == ["outside"]
    assert backend.exists("outside")


def test_reads_never_call_conda(fake: FakeConda) -> None:
    """list, get, exists and run_environment read conda-meta; no conda call is made."""
    backend = fake.backend()
    backend.create("demo", None, ["six"])
    fake.clear_log()
    backend.list_environments()
    backend.get_environment("demo")
    backend.exists("demo")
    backend.run_environment("demo")
    assert fake.calls() == []


def test_get_environment_has_every_package_with_its_version(fake: FakeConda) -> None:
    """Detail: each installed package with its version; an unknown name is EnvironmentNotFound."""
    backend = fake.backend()
    backend.create("demo", "3.11", ["six", "attrs==23.2.0"])
    assert names(backend, "demo") == {
        "attrs": "23.2.0",
        "pip": "24.3.1",
        "python": "3.11.7",
        "six": "1.16.0",
    }
    with pytest.raises(EnvironmentNotFound):
        backend.get_environment("nope")
    assert not backend.exists("nope")


def test_created_at_from_the_created_at_file(conda: FakeConda) -> None:
    """conda-meta/created_at (the recorded one) gives the creation time."""
    record = json.loads((DATA / "conda-meta-python-record.json").read_text())
    make_prefix(
        os.path.join(conda.envs_dir, "recorded"),
        [("pip", "24.3.1")],
        created_at=(DATA / "conda-meta-created_at.txt").read_text(),
        history=(DATA / "conda-meta-history.txt").read_text(),
        records=[record],
    )
    env = conda.backend().get_environment("recorded")
    assert env.created_at == datetime.fromtimestamp(1795492691.385512, UTC)
    assert env.python_version == "3.11.7"


def test_created_at_from_history_when_no_created_at_file(conda: FakeConda) -> None:
    """Without created_at, the first history entry (local time) is the creation time."""
    make_prefix(
        os.path.join(conda.envs_dir, "old"),
        [("python", "3.10.4")],
        history=(DATA / "conda-meta-history.txt").read_text(),
    )
    env = conda.backend().get_environment("old")
    assert env.created_at is not None
    assert env.created_at.astimezone().replace(tzinfo=None) == datetime(2026, 11, 24, 3, 58, 11)


def test_created_at_is_none_without_either_file_and_python_none_without_python(
    conda: FakeConda,
) -> None:
    """An env with neither file has no creation time; one without python has no version."""
    make_prefix(os.path.join(conda.envs_dir, "bare"), [("zlib", "1.3")])
    env = conda.backend().get_environment("bare")
    assert env.created_at is None
    assert env.python_version is None


def test_first_envs_directory_wins_and_all_are_listed(tmp_path: Path) -> None:
    """Envs of every envs directory are listed; a name in two is the first directory's."""
    fake = make_fake_conda(str(tmp_path), "conda")
    first, second = tmp_path / "first", tmp_path / "second"
    make_prefix(str(first / "shared"), [("six", "1.0")])
    make_prefix(str(second / "shared"), [("six", "2.0")])
    make_prefix(str(second / "only-second"), [("idna", "3.10")])
    backend = fake.backend(FAKE_CONDA_ENVS_DIRS=os.pathsep.join([str(first), str(second)]))
    assert [e.name for e in backend.list_environments()] == ["only-second", "shared"]
    assert names(backend, "shared") == {"six": "1.0"}
    backend.create("fresh", None, [])
    assert (first / "fresh" / "conda-meta").is_dir()


# --- create ----------------------------------------------------------------------------------


def test_created_environment_really_runs(fake: FakeConda) -> None:
    """A new env's python runs with its own packages, CONDA_PREFIX and PATH set for it."""
    backend = fake.backend()
    env = backend.create("demo", None, ["six"])
    assert env.python_version == "3.11.7"
    out = run_in(
        backend,
        "demo",
        "import os, sys, six; print(sys.prefix); print(os.environ['CONDA_PREFIX']); "
        "print(os.environ['CONDA_DEFAULT_ENV']); print(six.__version__)",
    )
    assert out.splitlines() == [env.prefix, env.prefix, "demo", "1.16.0"]
    run = backend.run_environment("demo")
    assert run.path_prepend == (os.path.join(env.prefix, "bin"),)
    with pytest.raises(EnvironmentNotFound):
        backend.run_environment("nope")


def test_create_never_replaces_an_existing_environment(fake: FakeConda) -> None:
    """Creating a taken name is EnvironmentExists and the old env keeps its packages."""
    backend = fake.backend()
    backend.create("demo", None, ["six"])
    fake.clear_log()
    with pytest.raises(EnvironmentExists):
        backend.create("demo", None, [])
    assert "six" in names(backend, "demo")
    assert fake.commands() == []


def test_create_with_unknown_package_leaves_nothing(fake: FakeConda) -> None:
    """Not found: failed_packages names the spec, one sentence each, no env left behind."""
    backend = fake.backend()
    with pytest.raises(PackageOperationFailed) as caught:
        backend.create("broken", None, ["six", "nosuchpkg"])
    err = caught.value
    assert err.message == "Failed to create environment"
    assert err.failed_packages == ["nosuchpkg"]
    assert err.error_details == ["Package 'nosuchpkg' not found in available channels"]
    assert "nosuchpkg" in err.output
    assert not backend.exists("broken")
    assert not os.path.exists(os.path.join(fake.envs_dir, "broken"))


def test_create_with_unavailable_python_names_python(fake: FakeConda) -> None:
    """python_version 3.99 is not in the channel: python=3.99 is the failed spec."""
    with pytest.raises(PackageOperationFailed) as caught:
        fake.backend().create("pyx", "3.99", [])
    assert caught.value.failed_packages == ["python=3.99"]


def test_create_with_conflict_names_the_conflicting_spec(fake: FakeConda) -> None:
    """needs-py2 conflicts with python 3.11: it alone is failed, 'has conflicts'."""
    backend = fake.backend()
    with pytest.raises(PackageOperationFailed) as caught:
        backend.create("py2", None, ["six", "needs-py2"])
    assert caught.value.failed_packages == ["needs-py2"]
    assert caught.value.error_details == [
        "Package 'needs-py2' has conflicts with existing packages"
    ]
    assert not backend.exists("py2")


def test_failed_create_removes_the_half_made_prefix(fake: FakeConda) -> None:
    """A create that dies after starting the prefix leaves no directory and no listed env."""
    backend = fake.backend(FAKE_CONDA_FAIL="create")
    with pytest.raises(PackageOperationFailed) as caught:
        backend.create("half", None, ["six"])
    assert caught.value.failed_packages == ["python=3.11", "six"]
    assert not os.path.exists(os.path.join(fake.envs_dir, "half"))
    assert backend.list_environments() == []


def test_unparsable_spec_fails_with_the_traceback(conda: FakeConda) -> None:
    """conda crashes on six>>=1 without JSON: that spec failed, the traceback is the output."""
    backend = conda.backend()
    with pytest.raises(PackageOperationFailed) as caught:
        backend.create("bad", None, ["six>>=1"])
    assert caught.value.failed_packages == ["six>>=1"]
    assert "Traceback" in caught.value.output
    assert not backend.exists("bad")


def test_create_that_times_out_is_killed_and_cleaned(fake: FakeConda) -> None:
    """A hung create is killed after command_timeout, reported, and leaves nothing."""
    backend = fake.backend(timeout=0.5, FAKE_CONDA_DELAY="30")
    started = time.monotonic()
    with pytest.raises(BackendFailure):
        backend.create("slow", None, [])
    assert time.monotonic() - started < 10
    assert not os.path.exists(os.path.join(fake.envs_dir, "slow"))


# --- install / remove ------------------------------------------------------------------------


def test_install_adds_packages_with_version_constraints(fake: FakeConda) -> None:
    """install takes version ranges and pins; the detail shows the chosen versions."""
    backend = fake.backend()
    backend.create("demo", None, [])
    backend.install("demo", ["attrs>=23,<24", "idna>=3.4.0"])
    assert names(backend, "demo")["attrs"] == "23.2.0"
    backend.install("demo", ["attrs==24.2.0"])
    assert names(backend, "demo")["attrs"] == "24.2.0"
    assert run_in(backend, "demo", "import attrs; print(attrs.__version__)") == "24.2.0"


def test_install_of_installed_package_is_a_success(conda: FakeConda) -> None:
    """'All requested packages already installed' is not an error."""
    backend = conda.backend()
    backend.create("demo", None, ["six"])
    backend.install("demo", ["six"])
    assert "six" in names(backend, "demo")


def test_install_not_found_names_only_the_missing_spec(fake: FakeConda) -> None:
    """Of 'nosuchpkg six' only nosuchpkg failed; nothing was installed."""
    backend = fake.backend()
    backend.create("demo", None, [])
    with pytest.raises(PackageOperationFailed) as caught:
        backend.install("demo", ["nosuchpkg", "six", "anothermissing"])
    err = caught.value
    assert err.message == "Failed to install packages"
    assert err.failed_packages == ["nosuchpkg", "anothermissing"]
    assert len(err.error_details) == 2
    assert "six" not in names(backend, "demo")


def test_install_conflict_names_the_spec(fake: FakeConda) -> None:
    """Installing needs-py2 into a python 3.11 env: conflict named, env unchanged."""
    backend = fake.backend()
    backend.create("demo", None, [])
    with pytest.raises(PackageOperationFailed) as caught:
        backend.install("demo", ["needs-py2"])
    assert caught.value.failed_packages == ["needs-py2"]
    assert "needs-py2" not in names(backend, "demo")


def test_changes_to_a_missing_environment(fake: FakeConda) -> None:
    """install/remove/rename/delete/requirements of an unknown env: EnvironmentNotFound."""
    backend = fake.backend()
    changes: list[Callable[[], None]] = [
        lambda: backend.install("nope", ["six"]),
        lambda: backend.remove("nope", ["six"]),
        lambda: backend.rename("nope", "other"),
        lambda: backend.delete("nope"),
        lambda: backend.install_requirements("nope", "six\n"),
    ]
    for change in changes:
        with pytest.raises(EnvironmentNotFound):
            change()
    assert fake.commands() == []


def test_remove_takes_the_package_out(fake: FakeConda) -> None:
    """remove: the package is gone from the detail and cannot be imported."""
    backend = fake.backend()
    backend.create("demo", None, ["six", "idna"])
    backend.remove("demo", ["six"])
    assert set(names(backend, "demo")) == {"python", "pip", "idna"}
    code = "import importlib.util; print(importlib.util.find_spec('six') is None)"
    assert run_in(backend, "demo", code) == "True"


def test_remove_of_a_package_not_installed(fake: FakeConda) -> None:
    """Removing what is not installed: 'Failed to remove packages' naming it."""
    backend = fake.backend()
    backend.create("demo", None, ["six"])
    with pytest.raises(PackageOperationFailed) as caught:
        backend.remove("demo", ["attrs"])
    assert caught.value.message == "Failed to remove packages"
    assert caught.value.failed_packages == ["attrs"]
    assert "six" in names(backend, "demo")


def test_specs_are_never_read_as_options(fake: FakeConda) -> None:
    """A spec starting with '-' is refused before any call; specs always follow '--'."""
    backend = fake.backend()
    backend.create("demo", None, ["six"])
    fake.clear_log()
    for bad in (["--override-channels"], ["-n", "base"], ["six", "-y"]):
        with pytest.raises(InvalidPackageSpec):
            backend.install("demo", bad)
        with pytest.raises(InvalidPackageSpec):
            backend.remove("demo", bad)
    with pytest.raises(InvalidPackageSpec):
        backend.create("other", None, ["--clone=demo"])
    assert fake.commands() == []
    backend.install("demo", ["idna"])
    backend.remove("demo", ["idna"])
    for argv in fake.commands():
        assert argv[argv.index("--") + 1 :] == ["idna"]


# --- rename / delete -------------------------------------------------------------------------


def test_rename_keeps_the_packages_under_the_new_name(fake: FakeConda) -> None:
    """After rename the old name is gone and the new one runs with the same packages."""
    backend = fake.backend()
    backend.create("old", None, ["six"])
    backend.rename("old", "new")
    assert not backend.exists("old")
    assert [e.name for e in backend.list_environments()] == ["new"]
    assert "six" in names(backend, "new")
    new_prefix = os.path.join(fake.envs_dir, "new")
    assert run_in(backend, "new", "import sys, six; print(sys.prefix)") == new_prefix
    assert not os.path.exists(os.path.join(fake.envs_dir, "old"))


def test_rename_onto_an_existing_name_changes_nothing(fake: FakeConda) -> None:
    """EnvironmentExists, checked first: both envs keep their packages."""
    backend = fake.backend()
    backend.create("a", None, ["six"])
    backend.create("b", None, ["idna"])
    fake.clear_log()
    with pytest.raises(EnvironmentExists):
        backend.rename("a", "b")
    assert "six" in names(backend, "a")
    assert "idna" in names(backend, "b")
    assert fake.commands() == []


def test_conda_renames_without_yes_so_it_can_never_overwrite(conda: FakeConda) -> None:
    """conda: `rename -p OLD NEWPATH --json`, no --yes (with it conda overwrites)."""
    backend = conda.backend()
    backend.create("a", None, [])
    conda.clear_log()
    backend.rename("a", "b")
    old, new = os.path.join(conda.envs_dir, "a"), os.path.join(conda.envs_dir, "b")
    assert conda.commands() == [["rename", "-p", old, new, "--json"]]


def test_micromamba_renames_by_clone_then_env_remove(micromamba: FakeConda) -> None:
    """micromamba has no rename: create --clone, then env remove of the old prefix."""
    backend = micromamba.backend()
    backend.create("a", None, ["six"])
    micromamba.clear_log()
    backend.rename("a", "b")
    verbs = [argv[:2] for argv in micromamba.commands()]
    assert verbs == [["create", "-p"], ["env", "remove"]]
    assert "six" in names(backend, "b")


def test_delete_removes_the_directory(fake: FakeConda) -> None:
    """delete: the env is gone from the listing and from the disk."""
    backend = fake.backend()
    backend.create("demo", None, ["six"])
    backend.delete("demo")
    assert backend.list_environments() == []
    assert not os.path.exists(os.path.join(fake.envs_dir, "demo"))


def test_micromamba_deletes_with_env_remove_not_remove_all(micromamba: FakeConda) -> None:
    """mamba 2's `remove --all` keeps the directory; the adapter uses `env remove`."""
    backend = micromamba.backend()
    backend.create("demo", None, [])
    micromamba.clear_log()
    backend.delete("demo")
    [argv] = micromamba.commands()
    assert argv[:2] == ["env", "remove"]
    assert "-r" in argv
    assert not os.path.exists(os.path.join(micromamba.envs_dir, "demo"))


def test_delete_of_an_env_without_packages(conda: FakeConda) -> None:
    """conda prints nothing at all for an empty env's removal: that is a success."""
    make_prefix(os.path.join(conda.envs_dir, "emptyenv"), [])
    backend = conda.backend()
    backend.delete("emptyenv")
    assert not backend.exists("emptyenv")


def test_failed_delete_is_a_backend_failure_and_keeps_the_env(fake: FakeConda) -> None:
    """When the tool cannot remove the env it is reported and still listed."""
    backend = fake.backend()
    backend.create("demo", None, [])
    failing = fake.backend(FAKE_CONDA_FAIL="env-remove")
    with pytest.raises(BackendFailure):
        failing.delete("demo")
    assert backend.exists("demo")


# --- requirements ----------------------------------------------------------------------------


def test_requirements_installed_with_the_envs_own_pip(fake: FakeConda) -> None:
    """pip installs into the env: the packages are listed and importable there."""
    backend = fake.backend()
    backend.create("demo", None, [])
    backend.install_requirements("demo", "# web\nrequests>=2\ntomli\n")
    assert names(backend, "demo")["requests"] == "2.32.3"
    assert "tomli" in names(backend, "demo")
    assert run_in(backend, "demo", "import requests; print(requests.__version__)") == "2.32.3"
    [pip_call] = [c for c in fake.calls() if c["argv"][0] == "pip"]
    assert pip_call["argv"][1:3] == ["install", "-r"]


def test_failed_requirement_is_named(fake: FakeConda) -> None:
    """pip's 'No matching distribution' names the failed requirement; output is pip's."""
    backend = fake.backend()
    backend.create("demo", None, [])
    with pytest.raises(PackageOperationFailed) as caught:
        backend.install_requirements("demo", "requests\nnosuchlib==1.0\n")
    err = caught.value
    assert err.message == "Failed to install requirements"
    assert err.failed_packages == ["nosuchlib==1.0"]
    assert "No matching distribution found for nosuchlib==1.0" in err.output


def test_pip_failure_without_names_fails_every_requirement(fake: FakeConda) -> None:
    """A pip error naming no requirement fails them all, with pip's reason."""
    backend = fake.backend(FAKE_CONDA_FAIL="pip")
    backend.create("demo", None, [])
    with pytest.raises(PackageOperationFailed) as caught:
        backend.install_requirements("demo", "requests\ntomli\n")
    assert caught.value.failed_packages == ["requests", "tomli"]
    assert "No space left on device" in caught.value.error_details[0]


def test_requirements_in_an_env_without_python(conda: FakeConda) -> None:
    """An env with no python cannot take requirements: a clear failure, no crash."""
    make_prefix(os.path.join(conda.envs_dir, "nopy"), [("zlib", "1.3")])
    with pytest.raises(PackageOperationFailed) as caught:
        conda.backend().install_requirements("nopy", "six\n")
    assert caught.value.failed_packages == ["six"]


# --- what children see -----------------------------------------------------------------------


def test_children_never_see_activation_or_ctm_variables(
    conda: FakeConda, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server started inside an active env with secrets: conda and pip see none of them, and
    removing that very env works (conda would refuse the 'current environment')."""
    target = os.path.join(conda.envs_dir, "demo")
    monkeypatch.setenv("CONDA_PREFIX", target)
    monkeypatch.setenv("CONDA_SHLVL", "1")
    monkeypatch.setenv("CONDA_DEFAULT_ENV", "demo")
    monkeypatch.setenv("CTM_ADMIN_PASSWORD", "hunter2")
    backend = conda.backend()
    backend.create("demo", None, [])
    backend.install_requirements("demo", "tomli\n")
    backend.delete("demo")
    calls = conda.calls()
    assert {c["argv"][0] for c in calls} == {"conda", "pip"}
    for call in calls:
        assert "CTM_ADMIN_PASSWORD" not in call["env"]
        assert "CONDA_SHLVL" not in call["env"]
        if call["argv"][0] == "conda":
            assert "CONDA_PREFIX" not in call["env"]
            assert "CONDA_DEFAULT_ENV" not in call["env"]
    assert not backend.exists("demo")


def test_micromamba_gets_root_prefix_and_error_log_level(micromamba: FakeConda) -> None:
    """Every micromamba change carries -r ROOT and --log-level error, so errors are seen."""
    backend = micromamba.backend()
    backend.create("demo", None, [])
    with pytest.raises(PackageOperationFailed) as caught:
        backend.install("demo", ["nosuchpkg"])
    assert "does not exist (perhaps a typo or a missing channel)" in caught.value.output
    for argv in micromamba.commands():
        assert argv[argv.index("-r") + 1] == micromamba.root
        assert argv[argv.index("--log-level") + 1] == "error"


# --- disk usage and concurrency --------------------------------------------------------------


def test_disk_usage_counts_a_hard_linked_file_once(fake: FakeConda) -> None:
    """Two envs share six's 256 KiB through hard links: the total counts it once, while each
    env's own figure is what ``du`` says of that env alone."""
    backend = fake.backend()
    a = backend.create("a", None, ["six"]).prefix
    b = backend.create("b", None, ["six"]).prefix
    usage = backend.disk_usage()
    alone_a = tree_usage([("a", a)])[1]
    alone_b = tree_usage([("b", b)])[1]
    assert usage.per_environment == {"a": alone_a, "b": alone_b}
    assert usage.total <= alone_a + alone_b - 256 * 1024


def test_disk_usage_is_cached_until_a_change_through_the_backend(conda: FakeConda) -> None:
    """A file dropped in by hand is not seen until the next change made through the adapter."""
    backend = conda.backend()
    backend.create("demo", None, [])
    first = backend.disk_usage().total
    Path(conda.envs_dir, "demo", "big.bin").write_bytes(b"x" * 512 * 1024)
    assert backend.disk_usage().total == first
    backend.install("demo", ["idna"])
    assert backend.disk_usage().total >= first + 512 * 1024


def test_changes_are_serialized(conda: FakeConda) -> None:
    """Two creates from two threads never run conda at the same time (shared package cache)."""
    backend = conda.backend(FAKE_CONDA_DELAY="0.3")
    errors: list[BaseException] = []

    def create(name: str) -> None:
        try:
            backend.create(name, None, [])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    creates = [c for c in conda.calls() if c["argv"][1:2] == ["create"]]
    assert len(creates) == 2
    first, second = sorted(creates, key=lambda c: c["start"])
    assert first["end"] <= second["start"]


# --- the fake against the recordings ---------------------------------------------------------

DEMO = ["create", "-n", "demo", "python=3.11", "-y", "--json"]
BYPREFIX = ["create", "-p", "<ENVS_DIR>/byprefix", "python=3.11", "six", "-y", "--json"]
FULL_BYPREFIX = [*BYPREFIX[:-2], "attrs", "packaging", "idna", "-y", "--json"]
SETUP: dict[str, list[list[str]]] = {
    "create_exists": [DEMO],
    "create_clone": [DEMO],
    "env_list": [DEMO],
    "env_remove_empty": [["create", "-n", "emptyenv", "-y", "--json"]],
    "env_remove_ok": [["create", "-n", "demo-renamed", "python=3.11", "six", "-y", "--json"]],
    "install_already": [DEMO, ["install", "-n", "demo", "six", "-y", "--json"]],
    "install_badspec": [DEMO],
    "install_conflict": [DEMO],
    "install_notfound": [DEMO],
    "install_notfound2": [DEMO],
    "install_ok": [DEMO],
    "install_two": [DEMO],
    "install_pipstyle_spec": [BYPREFIX],
    "install_versioned": [BYPREFIX],
    "list_ok": [DEMO],
    "list_prefix_json": [FULL_BYPREFIX],
    "remove_all_prefix": [FULL_BYPREFIX],
    "remove_notinstalled": [DEMO],
    "remove_ok": [DEMO, ["install", "-n", "demo", "six", "-y", "--json"]],
    "rename_exists": [DEMO, ["create", "-n", "demo-renamed", "-y", "--json"]],
    "rename_ok": [["create", "-n", "demo-clone", "python=3.11", "-y", "--json"]],
}
REPLAYED = sorted(
    {
        p.stem
        for p in DATA.glob("*.cmd")
        if not p.stem.startswith(("run_", "list_explicit", "list_revisions", "info_json"))
        and p.stem not in ("install_revision", "list_with_pip", "info_envs")
    }
)


def _shape(value: object) -> object:
    """Keys of objects (recursively, one level into lists) and names of list items."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k in ("actions", "exception_name")} | {
            "keys": sorted(value)
        }
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return sorted({tuple(sorted(v)) for v in value})
    return None


@pytest.mark.parametrize("case", REPLAYED)
def test_fake_reproduces_the_recorded_call(conda: FakeConda, case: str) -> None:
    """Replaying a recorded conda call on the fake gives the same exit status and JSON shape."""
    envs = conda.envs_dir
    for step in SETUP.get(case, []):
        done = conda.run(*[a.replace("<ENVS_DIR>", envs) for a in step])
        assert done.returncode == 0, done.stdout + done.stderr
    argv = shlex.split((DATA / f"{case}.cmd").read_text().replace("<ENVS_DIR>", envs))[1:]
    done = conda.run(*argv)
    recorded_rc = int((DATA / f"{case}.rc").read_text())
    recorded_out = (DATA / f"{case}.out").read_text()
    recorded_err = (DATA / f"{case}.err").read_text()
    assert done.returncode == recorded_rc, done.stdout + done.stderr
    if not recorded_out.strip():
        assert done.stdout.strip() == ""
    else:
        recorded, got = json.loads(recorded_out), json.loads(done.stdout)
        assert _shape(got) == _shape(recorded)
        for key in ("packages", "package_name"):
            if isinstance(recorded, dict) and key in recorded:
                assert got[key] == recorded[key]
        if isinstance(recorded, list):
            assert [i["name"] for i in got] == [i["name"] for i in recorded]
        if isinstance(recorded, dict) and "UNLINK" in recorded.get("actions", {}):
            unlinked = {i["name"] for i in recorded["actions"]["UNLINK"]}
            assert {i["name"] for i in got["actions"]["UNLINK"]} == unlinked
    if "Traceback" in recorded_err:
        assert "Traceback" in done.stderr


def test_progress_records_before_the_result_do_not_break_a_change(conda: FakeConda) -> None:
    """NUL-separated progress records (conda on a TTY) ahead of the result still mean success."""
    backend = conda.backend(FAKE_CONDA_PROGRESS="1")
    backend.create("demo", None, [])
    backend.install("demo", ["six"])
    assert "six" in names(backend, "demo")


def test_reserved_or_malformed_names_never_reach_the_tool(fake: FakeConda) -> None:
    """base, root, a path or a leading dash is refused as a name before any call."""
    backend = fake.backend()
    for bad in ("base", "root", "a/b", "-n", "../x", ""):
        with pytest.raises(InvalidEnvironmentName):
            backend.create(bad, None, [])
        assert not backend.exists(bad)
    assert fake.commands() == []


def test_mamba2_full_lifecycle(tmp_path: Path) -> None:
    """mamba 2 (same CLI as micromamba): create, install, remove, rename, delete all work."""
    mamba = make_fake_conda(str(tmp_path), "mamba")
    backend = mamba.backend()
    backend.create("demo", None, ["six"])
    backend.install("demo", ["idna"])
    backend.remove("demo", ["six"])
    backend.rename("demo", "renamed")
    assert set(names(backend, "renamed")) == {"python", "pip", "idna"}
    backend.delete("renamed")
    assert backend.list_environments() == []
    assert not any("rename" in argv for argv in mamba.commands())
