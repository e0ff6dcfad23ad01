"""The database file at start: an empty, foreign or damaged ``ctm.sqlite3`` stops the start with
a message saying what to do, and ``ctm db check|backup|init`` (run as the user runs them)."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ctm import Ctm
from ctm_adapters.fakes import (
    FakeEnvironmentBackend,
    FakePasswordHasher,
    FakeProcessRunner,
    InMemoryFileStore,
)
from ctm_adapters.sqlite import DatabaseUnusable, SqliteRepository
from tests.integration.conftest import ADMIN_PASSWORD, Server, free_port
from tests.integration.test_repository_contract import add_user, make_task

LAST_MIGRATION = "0008_task_paused"


def ctm(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``ctm ARGS`` in a child process, with the environment ``Server`` gives a server."""
    env = {
        **os.environ,
        "CTM_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "CTM_BACKEND": "venv",
        "CTM_TIMEZONE": "UTC",
    }
    env.pop("CONDA_EXE", None)
    env.pop("CTM_DATA_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "ctm_http.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def serve(data: Path) -> subprocess.CompletedProcess[str]:
    """``ctm serve`` on ``data``; the tests here expect it to refuse, so it returns (a server
    that starts instead runs into the timeout: the test fails)."""
    return ctm("serve", "--port", str(free_port()), "--data-dir", str(data), timeout=60.0)


def assert_refused(result: subprocess.CompletedProcess[str], db: Path, *phrases: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"ctm: {db} " in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def make_ctm_database(db: Path, users: int = 1, tasks: int = 0) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    with SqliteRepository(db) as repo:
        for i in range(users):
            add_user(repo, f"user{i}")
        for i in range(tasks):
            repo.add_task(make_task(f"task{i}"))


def corrupt_a_page_in_the_middle(db: Path) -> None:
    """Overwrite the start of a page of rows in the middle of the file (the users table's last
    leaf page) with garbage: its b-tree page header becomes invalid."""
    conn = sqlite3.connect(db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'users'").fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        header = f.read(12)
        assert header[0] == 0x05  # an interior table page: the users fill several pages
        leaf = int.from_bytes(header[8:12], "big")  # its right-most child, a leaf
        f.seek((leaf - 1) * page_size)
        f.write(b"\xff" * 256)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir(mode=0o700)
    return path


def test_serve_refuses_an_empty_database_file_and_leaves_it_empty(data: Path) -> None:
    """A 0-byte ctm.sqlite3 stops `ctm serve` (exit 1, no traceback); no schema, no admin."""
    db = data / "ctm.sqlite3"
    db.touch()
    result = serve(data)
    assert_refused(result, db, "is empty (0 bytes)", "Restore it from a backup", "ctm db init")
    assert db.stat().st_size == 0


def test_the_library_refuses_an_empty_database_file(data: Path) -> None:
    """Ctm.open (build_services) raises DatabaseUnusable naming the file, and leaves it empty."""
    db = data / "ctm.sqlite3"
    db.touch()
    with pytest.raises(DatabaseUnusable, match="is empty") as caught:
        Ctm.open(
            data,
            backend=FakeEnvironmentBackend(),
            runner=FakeProcessRunner(auto_exit_code=0),
            files=InMemoryFileStore(),
            hasher=FakePasswordHasher(),
        )
    assert caught.value.path == str(db)
    assert caught.value.kind == "empty"
    assert str(db) in str(caught.value)
    assert db.stat().st_size == 0


@pytest.mark.parametrize(
    "content",
    [os.urandom(3 * 4096), b"users: alice, bob\ntasks: nightly\n"],
    ids=["random-bytes", "text"],
)
def test_serve_refuses_a_file_that_is_not_sqlite(data: Path, content: bytes) -> None:
    """A file that is not SQLite stops the start and is left byte for byte as it was."""
    db = data / "ctm.sqlite3"
    db.write_bytes(content)
    assert_refused(serve(data), db, "is not a SQLite database", "does not overwrite it")
    assert db.read_bytes() == content


def test_serve_refuses_a_sqlite_database_that_is_not_ctms(data: Path) -> None:
    """SQLite without ctm's migrations (another program's file) stops the start, unchanged."""
    db = data / "ctm.sqlite3"
    other = sqlite3.connect(db)
    other.execute("CREATE TABLE notes (body TEXT)")
    other.execute("INSERT INTO notes VALUES ('keep me')")
    other.commit()
    other.close()
    before = db.read_bytes()
    assert_refused(serve(data), db, "is a SQLite database but not ctm's")
    assert db.read_bytes() == before


def test_serve_refuses_a_database_damaged_mid_file(data: Path) -> None:
    """A ctm database with a page overwritten in the middle fails quick_check: no start."""
    db = data / "ctm.sqlite3"
    make_ctm_database(db, users=300, tasks=20)
    corrupt_a_page_in_the_middle(db)
    assert_refused(serve(data), db, "is damaged", "restore it from a backup", "ctm db check")


def test_db_init_on_an_empty_file_then_serve_starts(data: Path) -> None:
    """`ctm db init` builds the schema in the empty file; the server then starts, adds the admin."""
    db = data / "ctm.sqlite3"
    db.touch()
    result = ctm("db", "init", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert f"created a new ctm database at {db}" in result.stdout
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    srv = Server(data)
    srv.start()
    try:
        with srv.client() as client:
            srv.login(client)
    finally:
        srv.stop()
    again = ctm("db", "init", "--data-dir", str(data))
    assert again.returncode == 0
    assert "is already a ctm database; nothing changed" in again.stdout


def test_db_init_refuses_to_overwrite_a_file_that_is_not_ctms(data: Path) -> None:
    """`ctm db init` leaves a non-empty foreign file alone and says so (exit 1)."""
    db = data / "ctm.sqlite3"
    db.write_text("not a database\n")
    result = ctm("db", "init", "--data-dir", str(data))
    assert_refused(result, db, "is not a SQLite database", "does not overwrite this one")
    assert db.read_text() == "not a database\n"


def test_db_backup_while_the_server_runs(tmp_path: Path) -> None:
    """`ctm db backup` copies the live database (WAL included) to a new 0600 file."""
    srv = Server(tmp_path / "data")
    srv.start()
    try:
        with srv.client() as client:
            srv.login(client)  # a session row, committed into the server's WAL
            db = srv.data_dir / "ctm.sqlite3"
            with SqliteRepository(db) as other_writer:  # like `ctm user add` next to a server
                add_user(other_writer, "alice")
                for i in range(3):
                    other_writer.add_task(make_task(f"task{i}"))
            target = tmp_path / "backup.sqlite3"
            result = ctm("db", "backup", "--data-dir", str(srv.data_dir), str(target))
            assert result.returncode == 0, result.stderr
            assert f"to {target}: 2 users, 3 tasks, 0 executions" in result.stdout
            assert client.get("/api/tasks").status_code == 200  # the server went on
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert not Path(f"{target}-wal").exists()

        def rows(path: Path) -> tuple[list[str], list[str], int]:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                return (
                    [r[0] for r in conn.execute("SELECT username FROM users ORDER BY id")],
                    [r[0] for r in conn.execute("SELECT name FROM tasks ORDER BY id")],
                    conn.execute("SELECT count(*) FROM sessions").fetchone()[0],
                )
            finally:
                conn.close()

        assert rows(target) == rows(db) == (["admin", "alice"], ["task0", "task1", "task2"], 1)
        with SqliteRepository(target) as restored:
            assert restored.get_user_by_name("alice") is not None
    finally:
        srv.stop()


def test_db_backup_never_overwrites(data: Path, tmp_path: Path) -> None:
    """An existing target is refused (exit 1) and left as it was."""
    make_ctm_database(data / "ctm.sqlite3")
    target = tmp_path / "taken.sqlite3"
    target.write_text("precious\n")
    result = ctm("db", "backup", "--data-dir", str(data), str(target))
    assert result.returncode == 1
    assert f"ctm: {target} exists" in result.stderr
    assert target.read_text() == "precious\n"


def test_db_check_says_ok_or_what_is_wrong(data: Path) -> None:
    """`ctm db check`: exit 0 with the schema and counts; exit 1 with the problem."""
    db = data / "ctm.sqlite3"
    missing = ctm("db", "check", "--data-dir", str(data))
    assert_refused(missing, db, "does not exist")
    make_ctm_database(db, users=300, tasks=20)
    ok = ctm("db", "check", "--data-dir", str(data))
    assert ok.returncode == 0, ok.stderr
    assert f"ctm: {db} is OK (PRAGMA integrity_check): schema {LAST_MIGRATION};" in ok.stdout
    assert "300 users, 20 tasks, 0 executions" in ok.stdout
    corrupt_a_page_in_the_middle(db)
    assert_refused(ctm("db", "check", "--data-dir", str(data)), db, "is damaged")
    db.write_bytes(b"")
    assert_refused(ctm("db", "check", "--data-dir", str(data)), db, "is empty (0 bytes)")
