"""Shared fixtures for integration tests: a real ctm server on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ADMIN_PASSWORD = "integration-admin-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``ctm serve`` in a child process, as a user would start it."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 30.0) -> None:
        env = {
            **os.environ,
            "CTM_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "CTM_BACKEND": "venv",
            "CTM_TIMEZONE": "UTC",
            **self.extra_env,
        }
        env.pop("CONDA_EXE", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
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
            )
        self.wait_up(timeout)

    def wait_up(self, timeout: float) -> None:
        """Poll until the started server answers; fail with its log if it exits or is slow."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()}")
            try:
                httpx.post(self.base + "/logout", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError(f"server did not start: {self.log_path.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60.0)

    def login(self, client: httpx.Client, user: str = "admin", pw: str = ADMIN_PASSWORD) -> None:
        r = client.post("/login", json={"username": user, "password": pw})
        assert r.status_code == 200, r.text

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def c(srv: Server) -> Iterator[httpx.Client]:
    """A client logged in as admin to the module's ``srv`` server."""
    with srv.client() as client:
        srv.login(client)
        yield client
