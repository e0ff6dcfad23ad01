"""Authentication against a real server: uvicorn, SQLite, argon2."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import ADMIN_PASSWORD, Server


def test_startup_line_says_where_what_and_which_backend(server: Server) -> None:
    """One log line names the address, the data directory and the backend."""
    out = server.output()
    line = next(ln for ln in out.splitlines() if "ctm listening on" in ln)
    assert f"127.0.0.1:{server.port}" in line
    assert str(server.data_dir) in line
    assert "backend venv" in line


def test_cookie_survives_a_restart_and_dies_at_logout(tmp_path: Path) -> None:
    """Sessions live in the database: a restart keeps them, logout ends them."""
    srv = Server(tmp_path / "data")
    srv.start()
    try:
        with srv.client() as c:
            r = c.post("/login", json={"username": "admin", "password": ADMIN_PASSWORD})
            cookie = r.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=900" in cookie
            srv.stop()
            srv.start()
            assert c.get("/api/tasks").status_code == 200
            token = c.cookies.get("session")
            assert c.post("/logout").status_code == 200
            c.cookies.set("session", token or "")
            assert c.get("/api/tasks").status_code == 401
    finally:
        srv.stop()


def test_database_is_private_and_holds_no_clear_secrets(server: Server) -> None:
    """The SQLite file is owner-only and contains neither the password nor the token."""
    with server.client() as c:
        server.login(c)
        token = c.cookies.get("session") or ""
    db = server.data_dir / "ctm.sqlite3"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    blob = b"".join(p.read_bytes() for p in server.data_dir.glob("ctm.sqlite3*"))
    assert ADMIN_PASSWORD.encode() not in blob
    assert token.encode() not in blob


def test_generated_admin_password_is_printed_and_saved_owner_only(tmp_path: Path) -> None:
    """Without CTM_ADMIN_PASSWORD, a generated password is printed once and written 0600."""
    srv = Server(tmp_path / "data", extra_env={"CTM_ADMIN_PASSWORD": ""})
    srv.start()
    try:
        pw_file = srv.data_dir / "initial-admin-password"
        assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
        password = pw_file.read_text().strip()
        assert password in srv.output()
        with srv.client() as c:
            srv.login(c, "admin", password)
    finally:
        srv.stop()


def test_cli_adds_a_user_from_stdin(tmp_path: Path) -> None:
    """`ctm user add NAME` reads the password from stdin; that user can log in."""
    data = tmp_path / "data"
    env = {**os.environ, "CTM_DATA_DIR": str(data)}
    r = subprocess.run(
        [sys.executable, "-m", "ctm_http.cli", "user", "add", "carol"],
        input="carol-password\n",
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "carol-password" not in r.stdout + r.stderr
    srv = Server(data)
    srv.start()
    try:
        with srv.client() as c:
            srv.login(c, "carol", "carol-password")
            r2 = c.post("/create_user", json={"username": "x1", "password": "password-x"})
            assert r2.status_code == 403
    finally:
        srv.stop()
