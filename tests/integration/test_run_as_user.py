"""CTM_RUN_AS_USER: runs drop to an unprivileged account that cannot read ctm's secrets."""

from __future__ import annotations

import os
import pwd
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Server
from tests.integration.test_server_tasks import wait_for

SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON),
    reason="dropping to another user needs root and a python outside /root",
)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder other users may cross (pytest's own is root-only)."""
    with tempfile.TemporaryDirectory(prefix="ctm-runas-") as d:
        os.chmod(d, 0o755)
        yield Path(d)


def test_runs_as_nobody_without_access_to_the_database(open_tmp: Path) -> None:
    """The script runs as nobody, reads its own script, and cannot open the DB or the logs."""
    data = open_tmp / "data"
    srv = Server(data, extra_env={"CTM_RUN_AS_USER": "nobody",
                                  "CTM_DEFAULT_PYTHON": SYSTEM_PYTHON})
    srv.start()
    try:
        with srv.client() as c:
            srv.login(c)
            r = c.post("/api/conda/environment", json={"name": "low"})
            assert r.status_code == 201, r.text
            script = (
                "import os\n"
                "print('uid', os.getuid())\n"
                f"for p in [{str(data / 'ctm.sqlite3')!r}, {str(data / 'logs')!r}]:\n"
                "    try:\n"
                "        open(p, 'rb') if p.endswith('3') else os.listdir(p)\n"
                "        print('READABLE', p)\n"
                "    except PermissionError:\n"
                "        print('denied', p)\n"
                "open('out.txt', 'w').write('cwd is writable')\n"
                "print('wrote', os.path.abspath('out.txt'))\n"
            )
            r = c.post("/api/tasks", json={"script": script, "conda_env": "low"})
            assert r.status_code == 201, r.text
            tid = r.json()["task"]["task_id"]
            wait_for(lambda: c.get(f"/api/tasks/{tid}").json()["task"]["status"]
                     in ("completed", "failed"), what="run as nobody")
            latest = c.get(f"/api/tasks/{tid}").json()["latest_execution"]
            logs = latest["logs"]
            assert latest["status"] == "completed", logs
            assert f"uid {pwd.getpwnam('nobody').pw_uid}" in logs
            assert "READABLE" not in logs and logs.count("denied") == 2
            assert "wrote" in logs
    finally:
        srv.stop()
