"""Helpers for the containment tests: a ctm server run as root or as an unprivileged account,
two ordinary users (alice, bob), and ways to look at processes from outside any sandbox."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ADMIN_PASSWORD, Server
from tests.integration.test_server_tasks import wait_for

SYSTEM_PYTHON = "/usr/bin/python3"
"""A python every uid can execute (the project venv's interpreter lives under /root, 0700)."""
UNPRIVILEGED_ACCOUNT = "ctm-test"
USER_PASSWORD = "containment-user-pw"
PROJECT_SRC = os.environ.get("CTM_TEST_SERVER_SRC") or str(
    Path(__file__).resolve().parents[2] / "src"
)
"""The ``src`` the servers import; CTM_TEST_SERVER_SRC points elsewhere (e.g. an export of an
older commit, to see these tests fail against a server that does not contain its runs)."""
SITE_PACKAGES = sysconfig.get_paths()["purelib"]
ENV_PYTHON_VERSION = "3.11"


def require_sandbox_tools() -> None:
    """Skip (or fail, when CI sets CTM_REQUIRE_SANDBOX=1) without bubblewrap."""
    if shutil.which("bwrap") is None:
        message = "bubblewrap (bwrap) is not on PATH: runs cannot be contained here"
        if os.environ.get("CTM_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"CTM_REQUIRE_SANDBOX=1 but {message}")
        pytest.skip(message)
    if not os.path.exists(SYSTEM_PYTHON):
        message = f"{SYSTEM_PYTHON} (a python every uid can run) is missing"
        if os.environ.get("CTM_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"CTM_REQUIRE_SANDBOX=1 but {message}")
        pytest.skip(message)


def ensure_account(name: str = UNPRIVILEGED_ACCOUNT) -> tuple[int, int]:
    """The (uid, gid) of a system account for the unprivileged server, created when missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                name,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def _traversable_by_others(path: str) -> bool:
    p = Path(path).resolve()
    return all(os.stat(part).st_mode & 0o001 for part in [p, *p.parents])


class ContainedServer(Server):
    """``ctm serve`` with the system python, optionally as another uid, sandbox required."""

    def __init__(
        self, base: Path, run_as: tuple[int, int] | None, extra_env: dict[str, str] | None = None
    ) -> None:
        super().__init__(base / "data", extra_env=extra_env)
        self.folder = base
        self.run_as = run_as

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def uid(self) -> int:
        return self.run_as[0] if self.run_as else os.geteuid()

    def start(self, timeout: float = 60.0) -> None:
        env = {
            **os.environ,
            "CTM_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "CTM_BACKEND": "venv",
            "CTM_TIMEZONE": "UTC",
            "PYTHONPATH": os.pathsep.join([PROJECT_SRC, SITE_PACKAGES]),
            **self.extra_env,
        }
        for key in ("CONDA_EXE", "VIRTUAL_ENV", "PYTHONHOME"):
            env.pop(key, None)
        uv = shutil.which("uv") or os.path.join(
            os.path.dirname(SITE_PACKAGES), "..", "..", "bin", "uv"
        )
        if os.access(uv, os.X_OK):  # the server seeds pip with uv when it finds the wheels
            tools = self.folder / "tools"
            tools.mkdir(exist_ok=True)
            with contextlib.suppress(FileExistsError):
                (tools / "uv").symlink_to(os.path.realpath(uv))
            env["PATH"] = f"{tools}{os.pathsep}{env.get('PATH', os.defpath)}"
            env["UV_CACHE_DIR"] = str(self.folder / "uv-cache")
        kwargs: dict[str, Any] = {}
        if self.run_as is not None:
            home = self.folder / "server-home"
            home.mkdir(exist_ok=True)
            os.chown(home, *self.run_as)
            env.update(HOME=str(home), USER=UNPRIVILEGED_ACCOUNT, LOGNAME=UNPRIVILEGED_ACCOUNT)
            kwargs.update(user=self.run_as[0], group=self.run_as[1], extra_groups=[])
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    SYSTEM_PYTHON,
                    "-m",
                    "ctm_http.cli",
                    "serve",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.folder),
                **kwargs,
            )
        self.wait_up(timeout)


class Deployment:
    """A running contained server with admin, alice and bob logged in, each with an env."""

    def __init__(self, mode: str, server: ContainedServer) -> None:
        self.mode = mode
        self.server = server
        self.admin = server.client()
        self.alice = server.client()
        self.bob = server.client()
        server.login(self.admin)

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def env_prefix(self, name: str) -> Path:
        return self.data_dir / "envs" / name

    def close(self) -> None:
        for c in (self.admin, self.alice, self.bob):
            c.close()


def make_base_dir(owner: tuple[int, int] | None) -> Path:
    """A temp folder every uid may cross (pytest's tmp_path is root-only), owned by ``owner``."""
    base = Path(tempfile.mkdtemp(prefix="ctm-contain-"))
    os.chmod(base, 0o755)
    if owner is not None:
        os.chown(base, *owner)
    return base


@contextlib.contextmanager
def deployment(mode: str) -> Iterator[Deployment]:
    """Start a server for ``mode`` (``root`` or ``unprivileged``) and set up alice and bob."""
    require_sandbox_tools()
    if os.geteuid() != 0:
        pytest.skip("the containment suite starts servers as root and as another account")
    owner: tuple[int, int] | None = None
    if mode == "unprivileged":
        assert _traversable_by_others(PROJECT_SRC) and _traversable_by_others(SITE_PACKAGES), (
            "the unprivileged server must reach the project's sources and site-packages"
        )
        owner = ensure_account()
    base = make_base_dir(owner)
    server = ContainedServer(
        base,
        owner,
        extra_env={
            "CTM_SANDBOX": "required",
            "CTM_DEFAULT_PYTHON": SYSTEM_PYTHON,
            "CTM_STOP_GRACE_SECONDS": "2",
            "CTM_MAX_CONCURRENT_RUNS": "8",
            "CTM_MAX_RUNS_PER_USER": "4",
            "PIP_NO_INDEX": "1",
        },
    )
    server.start()
    dep = Deployment(mode, server)
    try:
        for name in ("alice", "bob"):
            r = dep.admin.post(
                "/create_user",
                json={"username": name, "password": USER_PASSWORD, "is_admin": False},
            )
            assert r.status_code == 201, r.text
        server.login(dep.alice, "alice", USER_PASSWORD)
        server.login(dep.bob, "bob", USER_PASSWORD)

        def make_env(client: httpx.Client, env: str) -> httpx.Response:
            return client.post(
                "/api/conda/environment",
                timeout=300.0,
                json={"name": env, "python_version": ENV_PYTHON_VERSION},
            )

        with ThreadPoolExecutor(2) as pool:  # ensurepip is slow: both envs at once
            answers = list(pool.map(make_env, (dep.alice, dep.bob), ("alice-env", "bob-env")))
        for r in answers:
            assert r.status_code == 201, r.text
        yield dep
    finally:
        dep.close()
        server.stop()
        kill_marked_processes(str(base))  # anything a test run left behind in our folder
        shutil.rmtree(base, ignore_errors=True)
        homes = Path(str(server.data_dir) + "-homes")
        shutil.rmtree(homes, ignore_errors=True)


# --- tasks -------------------------------------------------------------------------------------


def create_task(client: httpx.Client, script: str, env: str, **extra: Any) -> int:
    r = client.post(
        "/api/tasks", json={"script": script, "conda_env": env, "reuse_env": True, **extra}
    )
    assert r.status_code == 201, r.text
    return int(r.json()["task"]["task_id"])


def detail(client: httpx.Client, tid: int) -> dict[str, Any]:
    r = client.get(f"/api/tasks/{tid}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def status(client: httpx.Client, tid: int) -> str:
    return str(detail(client, tid)["task"]["status"])


FINISHED = ("completed", "failed", "stopped")


def run_to_end(
    client: httpx.Client, script: str, env: str, timeout: float = 60.0, **extra: Any
) -> dict[str, Any]:
    """Create a run-now task, wait until it has finished, return its ``latest_execution``."""
    tid = create_task(client, script, env, **extra)
    wait_for(lambda: status(client, tid) in FINISHED, timeout=timeout, what=f"task {tid} ends")
    latest: dict[str, Any] = detail(client, tid)["latest_execution"]
    latest["task_id"] = tid
    return latest


def logs_of(client: httpx.Client, tid: int) -> str:
    latest = detail(client, tid)["latest_execution"]
    return str((latest or {}).get("logs") or "")


# --- processes, seen from the test (root, host pid namespace) ----------------------------------


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X")


def pids_with_marker(marker: str) -> list[int]:
    """Living (non-zombie) processes whose command line contains ``marker``."""
    needle = marker.encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            pid = int(entry)
            if needle in _cmdline(pid) and not _is_zombie(pid):
                found.append(pid)
    return found


def kill_marked_processes(marker: str) -> None:
    """Clean up after an attack that worked: SIGKILL the test's own marked processes."""
    for pid in pids_with_marker(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
