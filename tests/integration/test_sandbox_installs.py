"""Package changes of the venv backend in the bubblewrap sandbox, as the installer's identity."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctm_adapters._sandbox import Identities, Sandbox
from ctm_adapters.venv import VenvEnvironmentBackend
from ctm_core.errors import PackageOperationFailed
from tests.integration.test_venv_backend import _write_sdist
from tests.integration.venv_fixtures import build_wheel_folder, find_uv

REQUIRED = os.environ.get("CTM_REQUIRE_SANDBOX") == "1"
if shutil.which("bwrap") is None and not REQUIRED:
    pytest.skip("bubblewrap (bwrap) is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def place() -> Iterator[dict[str, str]]:
    """A private data dir (0700, as in production) with envs, and local wheels and an sdist."""
    top = tempfile.mkdtemp(prefix="ctm-installs-")
    data = os.path.join(top, "data")
    os.makedirs(os.path.join(data, "envs"))
    secret = os.path.join(data, "ctm.sqlite3")
    Path(secret).write_text("the database")
    sdists = os.path.join(top, "sdists")
    marker = os.path.join(data, "build-code-ran")  # in the data dir: hidden from installs
    _write_sdist(sdists, marker)
    wheels = build_wheel_folder(os.path.join(top, "wheels"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIP_NO_INDEX", "1")
        mp.setenv("PIP_FIND_LINKS", f"{wheels} {sdists}")
        mp.setenv("PIP_CONFIG_FILE", os.devnull)
        mp.setenv("UV_NO_CONFIG", "1")
        mp.delenv("PIP_INDEX_URL", raising=False)
        yield {"top": top, "data": data, "secret": secret, "marker": marker}
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def backend(place: dict[str, str]) -> VenvEnvironmentBackend:
    """A sandboxed uv-driven backend (pip's path is the same command wrapper, and slower)."""
    ids = Identities(homes_dir=os.path.join(place["top"], "homes"))
    box = Sandbox.find(hidden=(place["data"], ids.homes_dir))
    assert box is not None, "bubblewrap (bwrap) is not installed"
    uv = find_uv()
    if uv is None:
        pytest.fail("uv (a test dependency) is missing")
    return VenvEnvironmentBackend(
        os.path.join(place["data"], "envs"),
        uv_executable=uv,
        sandbox=box,
        installer=ids.installer(),
    )


def test_changes_work_in_the_sandbox(backend: VenvEnvironmentBackend) -> None:
    """Create, install, requirements, remove and rename all work with the data dir private."""
    name = "boxed"
    env = backend.create(name, None, ["tiny-pkg==1.0"])
    assert {p.name.lower().replace("_", "-") for p in env.packages} >= {"tiny-pkg", "pip"}
    backend.install(name, ["tiny-pkg==2.0"])
    backend.install_requirements(name, "tiny-pkg==1.0\n")
    packages = backend.get_environment(name).packages
    versions = {p.name.lower().replace("_", "-"): p.version for p in packages}
    assert versions["tiny-pkg"] == "1.0"
    backend.remove(name, ["tiny-pkg"])
    backend.rename(name, "boxed2")
    backend.install("boxed2", ["tiny-pkg"])
    prefix = backend.get_environment("boxed2").prefix
    if os.geteuid() == 0:  # the installer's own uid, which no run has
        assert os.stat(prefix).st_uid == 200000
        site = next(Path(prefix, "lib").glob("python3*/site-packages"))
        assert {p.stat().st_uid for p in site.iterdir()} == {200000}
    backend.delete("boxed2")


def test_build_code_cannot_reach_the_data_directory(
    backend: VenvEnvironmentBackend, place: dict[str, str]
) -> None:
    """An sdist's build code runs in the sandbox: its write into the data dir never lands."""
    backend.create("builds", None, [])
    with pytest.raises(PackageOperationFailed) as caught:
        backend.install("builds", ["sdist-only"])
    assert caught.value.failed_packages == ["sdist-only"]
    assert not os.path.exists(place["marker"])
    assert Path(place["secret"]).read_text() == "the database"
    backend.delete("builds")


def test_an_install_cannot_write_into_another_environment(
    backend: VenvEnvironmentBackend, place: dict[str, str]
) -> None:
    """Only the environment being changed is writable: a sibling env is not even visible."""
    backend.create("victim", None, [])
    backend.create("other", None, [])
    victim = backend.get_environment("victim").prefix
    before = sorted(os.listdir(victim))
    # A build that tries to write into the victim: a marker path inside its prefix.
    sdists = os.path.join(place["top"], "sdists-victim")
    _write_sdist(sdists, os.path.join(victim, "pwned.txt"))
    os.environ["PIP_FIND_LINKS"] += f" {sdists}"
    try:
        with pytest.raises(PackageOperationFailed):
            backend.install("other", ["sdist-only"])
    finally:
        os.environ["PIP_FIND_LINKS"] = os.environ["PIP_FIND_LINKS"].replace(f" {sdists}", "")
    assert sorted(os.listdir(victim)) == before
    backend.delete("victim")
    backend.delete("other")


def test_rename_never_follows_a_planted_symlink(
    backend: VenvEnvironmentBackend, place: dict[str, str]
) -> None:
    """Rewriting paths at rename (as the server) follows no symlink an install left in bin/,
    and never writes a set-uid file."""
    backend.create("planted", None, [])
    prefix = backend.get_environment("planted").prefix
    outside = Path(place["top"]) / "outside.txt"
    outside.write_text(f"# {prefix}/bin/python\n")
    target = Path(place["top"]) / "server-wrote-this"
    bindir = Path(prefix, "bin")
    (bindir / "zz-link").symlink_to(outside)
    script = bindir / "zz-pwn"
    script.write_text(f"#!{prefix}/bin/python\n")
    script.chmod(0o4755)
    (bindir / "zz-pwn.ctm-tmp").symlink_to(target)  # the old fixed temporary name
    backend.rename("planted", "planted2")
    renamed = Path(backend.get_environment("planted2").prefix, "bin")
    assert outside.read_text() == f"# {prefix}/bin/python\n"
    assert not target.exists()
    assert (renamed / "zz-link").is_symlink()
    rewritten = renamed / "zz-pwn"
    assert rewritten.read_text().startswith(f"#!{renamed.parent}/bin/python")
    assert rewritten.stat().st_mode & 0o7777 == 0o755
    backend.delete("planted2")
