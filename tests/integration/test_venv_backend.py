"""VenvEnvironmentBackend against real venvs, real pip (and uv when present), offline.

Packages come from a folder of wheels built at test time (PIP_NO_INDEX=1, PIP_FIND_LINKS), so
no test needs a network. Every test runs once with pip and once with uv; the uv run is skipped
when no uv is installed. Tests that only read share one module-wide environment; tests that
change an environment make their own.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ctm_adapters.venv import METADATA_FILE, VenvEnvironmentBackend
from ctm_core.errors import (
    EnvironmentExists,
    EnvironmentNotFound,
    InvalidEnvironmentName,
    PackageOperationFailed,
)
from ctm_core.models import Environment
from ctm_core.ports import EnvironmentBackend
from tests.integration.venv_fixtures import build_wheel_folder, find_uv

UV = find_uv()
_names = itertools.count()


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """pip and uv see only the local wheel folder, never an index."""
    wheels = build_wheel_folder(str(tmp_path_factory.mktemp("wheels")))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIP_NO_INDEX", "1")
        mp.setenv("PIP_FIND_LINKS", wheels)
        mp.setenv("PIP_CONFIG_FILE", os.devnull)
        mp.setenv("UV_CACHE_DIR", str(tmp_path_factory.mktemp("uv-cache")))
        mp.setenv("UV_NO_CONFIG", "1")
        mp.delenv("PIP_INDEX_URL", raising=False)
        mp.delenv("PIP_EXTRA_INDEX_URL", raising=False)
        yield wheels


@pytest.fixture(scope="module", params=["pip", "uv"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, offline: str
) -> VenvEnvironmentBackend:
    if request.param == "uv":
        if UV is None:
            pytest.skip("uv is not installed (pip install uv to run these)")
        return VenvEnvironmentBackend(str(tmp_path_factory.mktemp("envs-uv")), uv_executable=UV)
    return VenvEnvironmentBackend(str(tmp_path_factory.mktemp("envs-pip")), use_uv=False)


@pytest.fixture(scope="module")
def shared(backend: VenvEnvironmentBackend) -> Environment:
    """One environment with Tiny_Pkg 1.0, for tests that leave it as they found it."""
    return backend.create("shared", None, ["tiny-pkg==1.0"])


@pytest.fixture
def once(request: pytest.FixtureRequest, backend: VenvEnvironmentBackend) -> None:
    """Run a test that does not depend on the installer once: with uv when there is uv."""
    if UV is not None and backend.uv is None:
        pytest.skip("does not depend on the installer: checked with uv")


@pytest.fixture
def fresh(backend: VenvEnvironmentBackend) -> str:
    """A new environment with Tiny_Pkg 1.0 that the test may change."""
    name = f"work{next(_names)}"
    backend.create(name, None, ["tiny-pkg==1.0"])
    return name


def _versions(env: Environment) -> dict[str, str]:
    return {p.name.lower().replace("_", "-"): p.version for p in env.packages}


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def _leftovers(backend: VenvEnvironmentBackend) -> list[str]:
    return sorted(n for n in os.listdir(backend.root) if n.startswith("."))


# --- create, list, get ---------------------------------------------------------------------


def test_backend_satisfies_the_port(backend: VenvEnvironmentBackend) -> None:
    """The adapter is an EnvironmentBackend of kind 'venv' (checked by mypy here)."""
    port: EnvironmentBackend = backend
    assert port.kind == "venv"


def test_create_installs_specs_with_the_servers_python(
    backend: VenvEnvironmentBackend, shared: Environment
) -> None:
    """create makes a venv with the requested packages and the server's Python by default."""
    assert shared.name == "shared"
    assert shared.prefix == os.path.join(backend.root, "shared")
    assert shared.python_version == ".".join(map(str, sys.version_info[:3]))
    assert _versions(shared)["tiny-pkg"] == "1.0"
    assert "pip" in _versions(shared)
    assert shared.created_at is not None
    assert abs(datetime.now(UTC) - shared.created_at) < timedelta(minutes=10)
    assert os.path.isfile(os.path.join(shared.prefix, METADATA_FILE))
    done = _run(os.path.join(shared.prefix, "bin", "python"), "-c", "import tinypkg")
    assert done.returncode == 0, done.stderr


def test_list_shows_python_version_and_packages(
    backend: VenvEnvironmentBackend, shared: Environment
) -> None:
    """list_environments shows each env with its python version, packages and created time."""
    listed = {e.name: e for e in backend.list_environments()}
    assert listed["shared"] == shared
    names = [e.name for e in backend.list_environments()]
    assert names == sorted(names)


def test_get_reports_each_package_version(
    backend: VenvEnvironmentBackend, shared: Environment
) -> None:
    """get_environment lists every installed distribution with its version, from METADATA."""
    env = backend.get_environment("shared")
    names = [p.name for p in env.packages]
    assert "Tiny_Pkg" in names  # the name as the package spells it
    assert _versions(env)["tiny-pkg"] == "1.0"
    assert "not-a-header" not in _versions(env)  # the long description is not read as headers


def test_reads_run_no_process(
    backend: VenvEnvironmentBackend, shared: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing and reading come from the files: no pip (nor any process) is started."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a read started a process")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    assert backend.list_environments()
    assert backend.get_environment("shared").packages
    assert backend.exists("shared")


def test_create_refuses_an_existing_name(
    backend: VenvEnvironmentBackend, shared: Environment
) -> None:
    """create on a taken name raises EnvironmentExists and leaves the env untouched."""
    with pytest.raises(EnvironmentExists):
        backend.create("shared", None, ["needs-new"])
    assert _versions(backend.get_environment("shared"))["tiny-pkg"] == "1.0"


def test_create_with_unavailable_python_fails_cleanly(backend: VenvEnvironmentBackend) -> None:
    """A python_version no interpreter here has fails with python=X and the versions found."""
    with pytest.raises(PackageOperationFailed) as caught:
        backend.create("py399", "3.99", [])
    err = caught.value
    assert err.message == "Failed to create environment"
    assert err.failed_packages == ["python=3.99"]
    assert err.error_details[0].startswith("Python 3.99 is not installed on this machine")
    assert f"{sys.version_info[0]}.{sys.version_info[1]}" in err.error_details[0]
    assert not backend.exists("py399")
    assert not os.path.exists(os.path.join(backend.root, "py399"))


def test_broken_default_python_fails_cleanly(tmp_path: Path) -> None:
    """A default_python that does not run fails create with a sentence naming it."""
    backend = VenvEnvironmentBackend(
        str(tmp_path), default_python=str(tmp_path / "no-python"), use_uv=False
    )
    with pytest.raises(PackageOperationFailed) as caught:
        backend.create("x", None, [])
    assert caught.value.failed_packages == ["python"]
    assert "no-python" in caught.value.error_details[0]
    assert os.listdir(tmp_path) == []


def test_python_spec_at_create_chooses_the_interpreter(backend: VenvEnvironmentBackend) -> None:
    """A conda-style python=3.99 spec at create is the python version, not a pip package."""
    with pytest.raises(PackageOperationFailed) as caught:
        backend.create("pyspec", None, ["python=3.99"])
    assert caught.value.failed_packages == ["python=3.99"]


def test_python_version_prefix_selects_the_interpreter(
    once: None, backend: VenvEnvironmentBackend
) -> None:
    """python_version "3.11" picks a 3.11.x interpreter, and pyvenv.cfg says which."""
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    others = [i for i in backend.available_pythons() if not i.version.startswith(ours + ".")]
    wanted = others[0].version if others else ours
    env = backend.create(f"py{next(_names)}", wanted, [])
    assert env.python_version is not None
    assert env.python_version.startswith(wanted)
    done = _run(os.path.join(env.prefix, "bin", "python"), "-c", "import sys; print(sys.prefix)")
    assert done.stdout.strip() == env.prefix


def test_failed_create_leaves_nothing_behind(backend: VenvEnvironmentBackend) -> None:
    """A create whose packages cannot be installed leaves no env and no work directory."""
    with pytest.raises(PackageOperationFailed) as caught:
        backend.create("broken", None, ["tiny-pkg==1.0", "no-such-package"])
    assert caught.value.message == "Failed to create environment"
    assert caught.value.failed_packages == ["no-such-package"]
    assert not backend.exists("broken")
    assert "broken" not in [e.name for e in backend.list_environments()]
    assert not os.path.exists(os.path.join(backend.root, "broken"))
    assert _leftovers(backend) == []


def test_concurrent_creates_of_one_name_make_one_env(
    once: None, backend: VenvEnvironmentBackend
) -> None:
    """Two creates of the same name at once: one succeeds, the other gets EnvironmentExists."""
    name = f"race{next(_names)}"
    outcomes: list[str] = []

    def create() -> None:
        try:
            backend.create(name, None, [])
            outcomes.append("created")
        except EnvironmentExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created", "exists"]
    assert _leftovers(backend) == []


def test_work_directories_are_hidden_and_stale_ones_removed(tmp_path: Path) -> None:
    """Half-made envs never list; a killed process's leftovers go at the next start."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".ctm-new-x-{dead.pid}-abc"
    live = tmp_path / f".ctm-new-y-{os.getpid()}-abc"
    for d in (stale, live):
        d.mkdir()
        (d / "pyvenv.cfg").write_text("version = 3.11.7\n")
    backend = VenvEnvironmentBackend(str(tmp_path), use_uv=False)
    assert backend.list_environments() == []
    assert not stale.exists()
    assert live.exists()  # a create still running in this process is left alone


# --- install, remove, requirements ---------------------------------------------------------


def test_install_from_local_wheels_offline(backend: VenvEnvironmentBackend, fresh: str) -> None:
    """install upgrades from the PIP_FIND_LINKS folder; the new version imports and runs."""
    backend.install(fresh, ["tiny-pkg>=2.0", "needs-new"])
    env = backend.get_environment(fresh)
    assert _versions(env)["tiny-pkg"] == "2.0"
    assert "needs-new" in _versions(env)
    done = _run(os.path.join(env.prefix, "bin", "tiny"))
    assert done.stdout.strip() == "tiny 2.0"


def test_install_accepts_conda_style_single_equals(
    backend: VenvEnvironmentBackend, shared: Environment
) -> None:
    """A conda-style spec 'tiny-pkg=1.0' means the 1.0 series to pip (already there: no-op)."""
    backend.install("shared", ["tiny-pkg=1.0"])
    assert _versions(backend.get_environment("shared"))["tiny-pkg"] == "1.0"


def test_install_not_found_names_every_missing_spec(
    backend: VenvEnvironmentBackend, shared: Environment
) -> None:
    """Specs that no index has are all in failed_packages, one sentence each, output kept."""
    with pytest.raises(PackageOperationFailed) as caught:
        backend.install("shared", ["no-such-package", "tiny-pkg", "tiny-pkg==9.9"])
    err = caught.value
    assert err.message == "Failed to install packages"
    assert err.failed_packages == ["no-such-package", "tiny-pkg==9.9"]
    assert err.error_details == [
        "Package 'no-such-package' not found in available channels",
        "Package 'tiny-pkg==9.9' not found in available channels",
    ]
    assert "no-such-package" in err.output
    assert _versions(backend.get_environment("shared"))["tiny-pkg"] == "1.0"


def test_install_conflict_names_the_conflicting_specs(
    backend: VenvEnvironmentBackend, shared: Environment
) -> None:
    """Two specs whose dependencies cannot both hold fail as conflicts, nothing installed."""
    with pytest.raises(PackageOperationFailed) as caught:
        backend.install("shared", ["needs-old", "needs-new"])
    err = caught.value
    assert err.failed_packages == ["needs-old", "needs-new"]
    assert err.error_details == [
        "Package 'needs-old' has conflicts with existing packages",
        "Package 'needs-new' has conflicts with existing packages",
    ]
    assert "needs-old" not in _versions(backend.get_environment("shared"))


def test_install_never_reads_a_spec_as_an_option(
    backend: VenvEnvironmentBackend, shared: Environment
) -> None:
    """A spec such as '--version' reaches pip as a requirement (and fails), not as an option."""
    with pytest.raises(PackageOperationFailed) as caught:
        backend.install("shared", ["--version"])
    assert caught.value.failed_packages == ["--version"]


def test_install_python_is_refused(backend: VenvEnvironmentBackend, shared: Environment) -> None:
    """python cannot be installed into a venv: the failure names it and explains why."""
    with pytest.raises(PackageOperationFailed) as caught:
        backend.install("shared", ["python=3.12"])
    assert caught.value.failed_packages == ["python=3.12"]
    assert "python_version" in caught.value.error_details[0]


def test_install_into_missing_env_raises_not_found(backend: VenvEnvironmentBackend) -> None:
    """install, remove, requirements and run_environment on an unknown name: EnvironmentNotFound."""
    with pytest.raises(EnvironmentNotFound):
        backend.install("nope", ["tiny-pkg"])
    with pytest.raises(EnvironmentNotFound):
        backend.remove("nope", ["tiny-pkg"])
    with pytest.raises(EnvironmentNotFound):
        backend.install_requirements("nope", "tiny-pkg\n")
    with pytest.raises(EnvironmentNotFound):
        backend.run_environment("nope")
    with pytest.raises(EnvironmentNotFound):
        backend.get_environment("nope")


def test_remove_uninstalls_the_package(backend: VenvEnvironmentBackend, fresh: str) -> None:
    """remove takes the package (named in any spelling) out; it no longer imports."""
    backend.remove(fresh, ["TINY_pkg"])
    env = backend.get_environment(fresh)
    assert "tiny-pkg" not in _versions(env)
    done = _run(os.path.join(env.prefix, "bin", "python"), "-c", "import tinypkg")
    assert done.returncode != 0


def test_remove_not_installed_fails_and_removes_nothing(
    backend: VenvEnvironmentBackend, shared: Environment
) -> None:
    """Removing a package that is not installed fails naming it, and removes nothing else."""
    with pytest.raises(PackageOperationFailed) as caught:
        backend.remove("shared", ["tiny-pkg", "not-installed"])
    err = caught.value
    assert err.message == "Failed to remove packages"
    assert err.failed_packages == ["not-installed"]
    assert err.error_details == ["Package 'not-installed' is not installed"]
    assert _versions(backend.get_environment("shared"))["tiny-pkg"] == "1.0"


def test_requirements_install(backend: VenvEnvironmentBackend, fresh: str) -> None:
    """install_requirements installs a requirements.txt text, comments and blank lines too."""
    backend.install_requirements(fresh, "# deps\n\ntiny-pkg==2.0  # pinned\nneeds-new\n")
    versions = _versions(backend.get_environment(fresh))
    assert versions["tiny-pkg"] == "2.0"
    assert "needs-new" in versions


def test_requirements_failure_names_the_requirement(
    backend: VenvEnvironmentBackend, shared: Environment
) -> None:
    """A requirement that cannot be had fails 'Failed to install requirements' naming it."""
    with pytest.raises(PackageOperationFailed) as caught:
        backend.install_requirements("shared", "tiny-pkg==1.0\nno-such-package>=2 # x\n")
    err = caught.value
    assert err.message == "Failed to install requirements"
    assert err.failed_packages == ["no-such-package>=2"]
    assert err.error_details == ["Package 'no-such-package>=2' not found in available channels"]


def test_env_that_lost_its_pip_can_still_be_changed(
    backend: VenvEnvironmentBackend, fresh: str
) -> None:
    """After pip itself is removed, installs still work (the server's pip or uv serves)."""
    backend.remove(fresh, ["pip"])
    assert "pip" not in _versions(backend.get_environment(fresh))
    backend.install(fresh, ["tiny-pkg==2.0"])
    assert _versions(backend.get_environment(fresh))["tiny-pkg"] == "2.0"


# --- only_binary (CTM_INSTALL_ONLY_BINARY) --------------------------------------------------


def _write_sdist(folder: str, marker: str) -> None:
    """``sdist_only-1.0.tar.gz``: no wheel, and an in-tree build backend (no build requirements,
    so it builds offline) that appends to ``marker`` as soon as it is imported, then fails."""
    backend_py = (
        f"with open({marker!r}, 'a') as fh:\n    fh.write('build code ran\\n')\n\n"
        "def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):\n"
        "    raise SystemExit('sdist-only: this test package never builds')\n\n"
        "def build_sdist(sdist_directory, config_settings=None):\n"
        "    raise SystemExit('sdist-only: no sdist either')\n"
    )
    files = {
        "PKG-INFO": "Metadata-Version: 2.1\nName: sdist-only\nVersion: 1.0\n",
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "ctm_marker_backend"\n'
        'backend-path = ["."]\n',
        "ctm_marker_backend.py": backend_py,
    }
    os.makedirs(folder, exist_ok=True)
    with tarfile.open(os.path.join(folder, "sdist_only-1.0.tar.gz"), "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"sdist_only-1.0/{name}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def sdist_only(offline: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An sdist-only package 'sdist-only' beside the wheels; returns the file its build writes."""
    marker = str(tmp_path / "build-code-ran")
    sdists = str(tmp_path / "sdists")
    _write_sdist(sdists, marker)
    monkeypatch.setenv("PIP_FIND_LINKS", f"{offline} {sdists}")
    return marker


@pytest.fixture
def strict(backend: VenvEnvironmentBackend, tmp_path: Path) -> VenvEnvironmentBackend:
    """A backend with the same installer as ``backend`` (pip or uv) and ``only_binary=True``."""
    root = str(tmp_path / "envs-only-binary")
    if backend.uv is not None:
        return VenvEnvironmentBackend(root, uv_executable=backend.uv, only_binary=True)
    return VenvEnvironmentBackend(root, use_uv=False, only_binary=True)


def test_without_only_binary_an_sdist_is_built(
    backend: VenvEnvironmentBackend, fresh: str, sdist_only: str
) -> None:
    """By default the sdist's build code runs at install (the marker is written)."""
    with pytest.raises(PackageOperationFailed) as caught:
        backend.install(fresh, ["sdist-only"])
    assert caught.value.failed_packages == ["sdist-only"]
    assert os.path.exists(sdist_only)


def test_only_binary_refuses_an_sdist_without_running_its_build(
    strict: VenvEnvironmentBackend, sdist_only: str
) -> None:
    """only_binary: install of an sdist-only package fails naming it; its build never runs."""
    strict.create("strict", None, ["tiny-pkg==1.0"])
    with pytest.raises(PackageOperationFailed) as caught:
        strict.install("strict", ["tiny-pkg==2.0", "sdist-only", "no-such-package"])
    err = caught.value
    assert err.message == "Failed to install packages"
    assert err.failed_packages == ["sdist-only", "no-such-package"]
    assert all("wheel" in sentence for sentence in err.error_details)
    assert not os.path.exists(sdist_only)
    versions = _versions(strict.get_environment("strict"))
    assert versions["tiny-pkg"] == "1.0"
    assert "sdist-only" not in versions


def test_only_binary_holds_for_requirements_and_create(
    strict: VenvEnvironmentBackend, sdist_only: str
) -> None:
    """only_binary: requirements and create refuse the sdist too, and never build it."""
    strict.create("strict", None, [])
    with pytest.raises(PackageOperationFailed) as caught:
        strict.install_requirements("strict", "tiny-pkg==2.0\nsdist-only\n")
    assert caught.value.message == "Failed to install requirements"
    assert caught.value.failed_packages == ["sdist-only"]
    with pytest.raises(PackageOperationFailed) as caught:
        strict.create("strict2", None, ["sdist-only"])
    assert caught.value.message == "Failed to create environment"
    assert caught.value.failed_packages == ["sdist-only"]
    assert not strict.exists("strict2")
    assert not os.path.exists(sdist_only)


def test_only_binary_still_installs_wheels(strict: VenvEnvironmentBackend, sdist_only: str) -> None:
    """only_binary: wheels install as before, at create, install and from requirements."""
    env = strict.create("strict", None, ["tiny-pkg==1.0"])
    assert _versions(env)["tiny-pkg"] == "1.0"
    strict.install("strict", ["tiny-pkg==2.0"])
    assert _versions(strict.get_environment("strict"))["tiny-pkg"] == "2.0"
    strict.install_requirements("strict", "needs-new\n")
    assert "needs-new" in _versions(strict.get_environment("strict"))
    assert not os.path.exists(sdist_only)


# --- run, rename, delete -------------------------------------------------------------------


def test_run_environment_runs_in_the_env(
    backend: VenvEnvironmentBackend, shared: Environment
) -> None:
    """run_environment's python and variables run a script that imports the env's packages."""
    run = backend.run_environment("shared")
    assert run.prefix == shared.prefix
    assert run.variables == {
        "VIRTUAL_ENV": shared.prefix,
        "CONDA_PREFIX": shared.prefix,
        "CONDA_DEFAULT_ENV": "shared",
    }
    assert run.path_prepend == (os.path.join(shared.prefix, "bin"),)
    done = _run(run.python, "-c", "import sys, tinypkg; print(sys.prefix, tinypkg.VERSION)")
    assert done.stdout.split() == [shared.prefix, "1.0"]


def test_rename_moves_a_working_env(backend: VenvEnvironmentBackend, fresh: str) -> None:
    """After rename the env runs under its new path: python, its scripts, pip, activate."""
    before = backend.get_environment(fresh)
    new = f"{fresh}-renamed"
    backend.rename(fresh, new)
    assert not backend.exists(fresh)
    env = backend.get_environment(new)
    assert env.prefix == os.path.join(backend.root, new)
    assert env.packages == before.packages
    assert env.created_at == before.created_at
    bindir = os.path.join(env.prefix, "bin")
    done = _run(os.path.join(bindir, "python"), "-c", "import sys, tinypkg; print(sys.prefix)")
    assert done.stdout.strip() == env.prefix, done.stderr
    assert _run(os.path.join(bindir, "tiny")).stdout.strip() == "tiny 1.0"
    if "pip" in _versions(env):
        pip = _run(os.path.join(bindir, "pip"), "--version")
        assert env.prefix in pip.stdout, pip.stderr
    activate = Path(bindir, "activate").read_text()
    assert f'"{env.prefix}"' in activate or f"'{env.prefix}'" in activate
    assert f"({new})" in activate
    assert f'{before.prefix}"' not in activate
    # and it can still be changed
    backend.install(new, ["tiny-pkg==2.0"])
    assert _run(os.path.join(bindir, "tiny")).stdout.strip() == "tiny 2.0"


def test_rename_to_a_name_starting_with_digits(backend: VenvEnvironmentBackend, fresh: str) -> None:
    """A new name like '19x' is written literally into the prompt (no regex group reference)."""
    backend.rename(fresh, "19x" + fresh)
    activate = Path(backend.root, "19x" + fresh, "bin", "activate").read_text()
    assert f"(19x{fresh})" in activate


def test_rename_refuses_existing_target_and_missing_source(
    backend: VenvEnvironmentBackend, shared: Environment
) -> None:
    """rename never overwrites (EnvironmentExists) and needs a source (EnvironmentNotFound)."""
    with pytest.raises(EnvironmentExists):
        backend.rename("shared", "shared")
    with pytest.raises(EnvironmentNotFound):
        backend.rename("nope", "other")
    assert backend.exists("shared")
    assert not backend.exists("other")


def test_delete_removes_env_and_directory(
    once: None, backend: VenvEnvironmentBackend, fresh: str
) -> None:
    """delete removes the env from listings and its directory from disk."""
    prefix = backend.get_environment(fresh).prefix
    backend.delete(fresh)
    assert not backend.exists(fresh)
    assert fresh not in [e.name for e in backend.list_environments()]
    assert not os.path.exists(prefix)
    assert _leftovers(backend) == []
    with pytest.raises(EnvironmentNotFound):
        backend.delete(fresh)


def test_names_with_path_parts_are_refused(backend: VenvEnvironmentBackend) -> None:
    """Names holding '/' or '..' never reach the filesystem outside root."""
    assert not backend.exists("..")
    assert not backend.exists("../" + os.path.basename(backend.root))
    with pytest.raises(EnvironmentNotFound):
        backend.get_environment("../x")
    with pytest.raises(EnvironmentNotFound):
        backend.delete("..")
    with pytest.raises(InvalidEnvironmentName):
        backend.create("a/b", None, [])
    with pytest.raises(InvalidEnvironmentName):
        backend.create(".hidden", None, [])


# --- disk usage ----------------------------------------------------------------------------


def _write(path: str, size: int) -> None:
    with open(path, "wb") as fh:
        fh.write(os.urandom(size))


def test_disk_usage_counts_a_hard_linked_file_once(tmp_path: Path) -> None:
    """A file hard-linked into two envs counts once in the total; a copy counts twice."""
    root = tmp_path / "envs"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "pyvenv.cfg").write_text("version = 3.11.7\n")
    baseline = VenvEnvironmentBackend(str(root), use_uv=False).disk_usage()
    size = 1 << 20
    _write(str(root / "a" / "big.bin"), size)
    shutil.copyfile(root / "a" / "big.bin", root / "b" / "copy.bin")
    copied = VenvEnvironmentBackend(str(root), use_uv=False).disk_usage()
    assert copied.total - baseline.total >= 2 * size
    os.unlink(root / "b" / "copy.bin")
    os.link(root / "a" / "big.bin", root / "b" / "linked.bin")
    linked = VenvEnvironmentBackend(str(root), use_uv=False).disk_usage()
    assert size <= linked.total - baseline.total < 2 * size
    assert set(linked.per_environment) == {"a", "b"}
    for name in ("a", "b"):  # each env's own figure includes the linked file
        assert linked.per_environment[name] - baseline.per_environment[name] >= size


def test_disk_usage_follows_changes_made_through_the_adapter(
    once: None, backend: VenvEnvironmentBackend, fresh: str
) -> None:
    """The cached figure changes at once after an install and after a delete."""
    before = backend.disk_usage()
    assert before.per_environment[fresh] > 0
    backend.install(fresh, ["needs-old"])
    grown = backend.disk_usage()
    assert grown.per_environment[fresh] > before.per_environment[fresh]
    backend.delete(fresh)
    after = backend.disk_usage()
    assert fresh not in after.per_environment
    assert after.total < grown.total


# --- which installer -------------------------------------------------------------------------


def _fake_uv(folder: Path, script: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "uv"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return str(path)


def _no_packaged_uv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As if the ``uv`` package were missing and nothing were beside the interpreter."""
    monkeypatch.setitem(sys.modules, "uv", None)  # import uv -> ImportError
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here" / "python"))


def test_the_uv_installed_with_ctm_serves_whatever_path_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the interpreter's bin folder off PATH and another uv on it, the uv that came with
    ctm (the ``uv`` package) is chosen, and ``tool`` names it with its version."""
    uv = pytest.importorskip("uv")
    packaged = uv.find_uv_bin()
    decoy = _fake_uv(tmp_path / "bin", "echo 'uv 0.0.1'")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    backend = VenvEnvironmentBackend(str(tmp_path / "envs"))
    assert backend.uv == os.path.abspath(packaged) != decoy
    assert backend.tool.startswith("uv ") and backend.tool.endswith(f" at {backend.uv}")
    assert "0.0.1" not in backend.tool


def test_a_uv_that_does_not_run_falls_back_to_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A uv that fails to run leaves the backend on pip, ``tool`` says why, and pip makes the
    environment."""
    interpreter = sys.executable
    _no_packaged_uv(monkeypatch, tmp_path)
    broken = _fake_uv(tmp_path / "bin", "exit 1")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    backend = VenvEnvironmentBackend(str(tmp_path / "envs"))
    monkeypatch.setattr(sys, "executable", interpreter)  # environments are made from it
    assert backend.uv is None
    assert backend.tool == f"pip: uv does not run ({broken})"
    env = backend.create("fallback", None, [])
    assert "pip" in _versions(env)


def test_no_uv_at_all_means_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No uv package, none beside the interpreter, none on PATH: pip, and it says why."""
    _no_packaged_uv(monkeypatch, tmp_path)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    backend = VenvEnvironmentBackend(str(tmp_path / "envs"))
    assert (backend.uv, backend.tool) == (None, "pip: no uv was found")


def test_use_uv_true_refuses_a_uv_that_does_not_run(tmp_path: Path) -> None:
    """Requiring uv with a broken one fails at construction, not at the first install."""
    broken = _fake_uv(tmp_path / "bin", "exit 3")
    with pytest.raises(ValueError, match="uv cannot serve"):
        VenvEnvironmentBackend(str(tmp_path / "envs"), use_uv=True, uv_executable=broken)
