"""`ctm user list|passwd|disable|enable|delete` on the data directory of a running server: the
server sees each change at the next request (sessions ended, logins refused)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.integration.conftest import Server


def ctm(server: Server, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CTM_DATA_DIR": str(server.data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "ctm_http.cli", "user", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_the_user_commands_act_on_a_running_server(server: Server) -> None:
    """Add, list, disable (the user's live session ends at once), enable, set a password,
    refuse to delete the last admin, delete; each change is in the audit log."""
    assert ctm(server, "add", "dave", stdin="dave-password\n").returncode == 0
    with server.client() as dave:
        server.login(dave, "dave", "dave-password")
        assert dave.get("/api/me").status_code == 200

        listed = ctm(server, "list")
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
        assert rows["dave"][1:4] == ["no", "no", "1"]
        assert rows["admin"][1] == "yes"

        off = ctm(server, "disable", "dave")
        assert off.returncode == 0, off.stderr
        assert "1 session(s) ended" in off.stdout
        assert dave.get("/api/me").status_code == 401
        r = dave.post("/login", json={"username": "dave", "password": "dave-password"})
        assert r.status_code == 401

        assert ctm(server, "enable", "dave").returncode == 0
        assert ctm(server, "passwd", "dave", stdin="new-dave-password\n").returncode == 0
        server.login(dave, "dave", "new-dave-password")

    last = ctm(server, "delete", "admin")
    assert last.returncode == 1
    assert "Cannot remove the last admin" in last.stderr
    short = ctm(server, "passwd", "dave", stdin="short\n")
    assert short.returncode == 1 and "8-1024" in short.stderr
    assert ctm(server, "delete", "nobody").returncode == 1
    gone = ctm(server, "delete", "dave")
    assert gone.returncode == 0, gone.stderr
    assert "dave" not in ctm(server, "list").stdout

    with server.client() as admin:
        server.login(admin)
        events = admin.get("/api/audit").json()["events"]
    by_cli = [(e["action"], e["target"]) for e in events if e["actor"] == "(server CLI)"]
    assert by_cli[:4] == [
        ("user.delete", "dave"),
        ("user.update", "dave"),
        ("user.update", "dave"),
        ("user.update", "dave"),
    ]
    assert ("user.create", "dave") in by_cli
