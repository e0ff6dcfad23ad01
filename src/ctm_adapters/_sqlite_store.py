"""The plumbing of the SQLite repository: one write connection behind a short lock (each change
is one transaction, ``BEGIN IMMEDIATE``), a pool of read-only connections that never wait for a
write (WAL), the migrations applied on opening, and the check that an existing file is a sound
ctm database before it is opened (``check_database_file``). ``sqlite`` holds the queries."""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Self

import attrs
from sqlite_utils import Database

from ctm_adapters._sqlite_schema import MIGRATIONS, Row, create_private_file, execution_from_row
from ctm_core.errors import StorageUnavailable
from ctm_core.models import Execution

READERS = 4
"""Read connections at most; a reader beyond them waits for one (reads take milliseconds)."""

SQLITE_HEADER = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite database file."""

Unusable = Literal["missing", "empty", "not_sqlite", "not_ctm", "newer", "damaged", "unreadable"]

_ELSEWHERE = (
    "Check that --data-dir (CTM_DATA_DIR) names ctm's data directory; if it does, move the file"
    " away and restore the database from a backup (see docs/operations.md). ctm does not"
    " overwrite it."
)
_ADVICE: dict[Unusable, str] = {
    "missing": "The first `ctm serve`, or `ctm db init`, creates it.",
    "empty": "Restore it from a backup (`ctm db backup` makes one; see docs/operations.md), or,"
    " to start afresh with no users and no tasks, run `ctm db init` (or remove the file).",
    "not_sqlite": _ELSEWHERE,
    "not_ctm": _ELSEWHERE,
    "newer": "Run the newer ctm again, or restore the backup taken before the upgrade.",
    "damaged": "Stop ctm, move the file (and its -wal and -shm) away and restore it from a backup"
    " (see docs/operations.md). `ctm db check` runs the full PRAGMA integrity_check.",
    "unreadable": "Check the file's owner and mode, the disk, and that no other program holds"
    " it locked.",
}


class DatabaseUnusable(Exception):
    """A database file ctm will not open: ``kind`` says why (``empty``: 0 bytes; ``not_sqlite``;
    ``not_ctm``: SQLite without ctm's migrations; ``newer``: migrations this ctm does not know;
    ``damaged``: SQLite finds it corrupt; ``unreadable``; ``missing``, only where a database must
    already exist). The message names the file, what is wrong and what to do. Nothing was
    written to the file."""

    def __init__(self, path: str, kind: Unusable, reason: str, advice: str | None = None) -> None:
        self.path = path
        self.kind: Unusable = kind
        self.reason = reason
        self.advice = _ADVICE[kind] if advice is None else advice
        super().__init__(f"{path} {reason}. {self.advice}")


def file_uri(path: str, mode: Literal["ro", "rw"]) -> str:
    """The URI that opens the existing file ``path`` read-only or read-write (never creating
    it); ``sqlite3.connect(uri, uri=True)``."""
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode={mode}"


@functools.cache
def _known_migrations() -> tuple[str, ...]:
    """The names of this ctm's migrations, in order."""
    return tuple(m.name for m in MIGRATIONS.pending(Database(memory=True)))


def check_database_file(
    path: str,
    *,
    pragma: Literal["quick_check", "integrity_check"] | None = "quick_check",
    busy_timeout: float = 5.0,
) -> list[str] | None:
    """Check, without writing to it, that ``path`` is a sound ctm database (or none yet).

    Returns the names of ctm's migrations applied to it, in order; ``[]`` for a SQLite file with
    nothing in it (ctm builds its schema there); None when ``path`` does not exist. Raises
    ``DatabaseUnusable`` when the file is empty (0 bytes), is not SQLite, is SQLite without
    ctm's migrations (or with migrations newer than this ctm), or fails ``PRAGMA <pragma>``
    (``quick_check``, O(size of the file); ``integrity_check`` also compares every index with
    its table). Safe while a server has the file open (it only reads, in a read transaction).
    """
    try:
        size = os.stat(path).st_size
        if size == 0:
            raise DatabaseUnusable(path, "empty", "is empty (0 bytes): it is not a ctm database")
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DatabaseUnusable(path, "unreadable", f"cannot be read ({exc.strerror})") from None
    if header != SQLITE_HEADER:
        raise DatabaseUnusable(
            path, "not_sqlite", "is not a SQLite database, so it is not a ctm database"
        )
    try:
        conn = sqlite3.connect(file_uri(path, "ro"), uri=True, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from None
    try:
        applied = _ctm_migrations(path, conn)
        if pragma is not None:
            # At most 10 problems: enough to say what is wrong.
            problems = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}(10)")]
            if problems != ["ok"]:
                more = " (and more)" if len(problems) > 3 else ""
                raise DatabaseUnusable(
                    path,
                    "damaged",
                    f"is damaged: PRAGMA {pragma} reports: {'; '.join(problems[:3])}{more}",
                )
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from None
    finally:
        conn.close()
    return applied


def _ctm_migrations(path: str, conn: sqlite3.Connection) -> list[str]:
    names = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master")}
    if not names:
        return []  # a SQLite database with nothing in it: nothing to lose
    applied: list[str] = []
    if MIGRATIONS.migrations_table in names:
        applied = [
            str(r[0])
            for r in conn.execute(
                f"SELECT name FROM {MIGRATIONS.migrations_table}"  # noqa: S608 - a constant
                " WHERE migration_set = ? ORDER BY rowid",
                (MIGRATIONS.name,),
            )
        ]
    if not applied:
        raise DatabaseUnusable(
            path,
            "not_ctm",
            "is a SQLite database but not ctm's (it has no record of ctm's migrations in"
            f" {MIGRATIONS.migrations_table})",
        )
    unknown = [n for n in applied if n not in _known_migrations()]
    if unknown:
        raise DatabaseUnusable(
            path,
            "newer",
            f"was written by a newer ctm (its migration {unknown[0]} is unknown to this one)",
        )
    return applied


def _unusable(path: str, exc: sqlite3.Error) -> DatabaseUnusable:
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_NOTADB":
        return DatabaseUnusable(
            path, "not_sqlite", f"is not a SQLite database ({exc}), so it is not a ctm database"
        )
    if name.startswith("SQLITE_CORRUPT"):
        return DatabaseUnusable(path, "damaged", f"is damaged ({exc})")
    return DatabaseUnusable(path, "unreadable", f"cannot be read ({exc})")


_UNWRITABLE = {
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_READONLY: "database read-only",
    sqlite3.SQLITE_IOERR: "I/O error",
}
"""SQLite's primary result codes for a store that cannot be written just now, and what to say."""


def storage_unavailable(exc: BaseException) -> StorageUnavailable | None:
    """The domain error for a SQLite error that says the store cannot be written (disk full,
    read-only, I/O error: extended codes included); None for any other error."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    reason = None if code is None else _UNWRITABLE.get(code & 0xFF)
    return None if reason is None else StorageUnavailable(reason)


class _WriteLock:
    """The write connection's lock, which every write holds (one statement, or a whole
    ``_transaction``). A write that fails because the store cannot be written leaves it as
    ``StorageUnavailable`` instead of the ``sqlite3`` error: the one place of that translation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        self._lock.release()
        unavailable = None if exc is None else storage_unavailable(exc)
        if unavailable is not None:
            raise unavailable from exc


def rows_of(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any] | dict[str, Any]
) -> list[Row]:
    """Run ``sql`` on ``conn``; each row as a dict of column name to value."""
    cursor = conn.execute(sql, params)
    keys = [d[0] for d in cursor.description]
    return [dict(zip(keys, row, strict=True)) for row in cursor.fetchall()]


class SqliteStore:
    """One SQLite file's connections: a write connection behind a lock, a pool of read-only
    connections, and the helpers the repository's queries use."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        self._memory = self.path == ":memory:"
        if not self._memory:
            create_private_file(self.path)
        self._busy_timeout = busy_timeout
        self._lock = _WriteLock()
        """Held for each write (a transaction) on ``_conn``, and for reads in a memory store; a
        write that fails for lack of storage raises ``StorageUnavailable`` through it."""
        self._conn = self._connect()
        try:
            db = Database(self._conn, execute_plugins=False)
            db.enable_wal()
            # In WAL mode NORMAL is safe from corruption; only a power cut may lose the last
            # commits (never an application crash).
            self._conn.execute("PRAGMA synchronous = NORMAL")
            MIGRATIONS.apply(db)
        except BaseException:
            self._conn.close()
            raise
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._readers: list[sqlite3.Connection] = []
        self._reader_slots = threading.BoundedSemaphore(READERS)
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        # Autocommit: a transaction is exactly what ``_transaction`` opens, nothing implicit.
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout, check_same_thread=False, isolation_level=None
        )
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    # --- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections (checkpointing the WAL). Idempotent."""
        with self._pool_lock:
            self._closed = True
            readers, self._readers, self._idle = self._readers, [], []
        for conn in readers:
            conn.close()
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A read connection of the pool (the write connection, locked, for a memory store)."""
        if self._memory:
            with self._lock:
                yield self._conn
            return
        with self._reader_slots:
            with self._pool_lock:
                if self._closed:
                    raise sqlite3.ProgrammingError("the repository is closed")
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
                conn.execute("PRAGMA query_only = ON")
                with self._pool_lock:
                    self._readers.append(conn)
            try:
                yield conn
            finally:
                with self._pool_lock:
                    if not self._closed:
                        self._idle.append(conn)

    def _read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        with self._reader() as conn:
            return rows_of(conn, sql, params)

    def _read_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        rows = self._read(sql, params)
        return rows[0] if rows else None

    def _executions(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[Execution]:
        return [execution_from_row(r) for r in self._read(sql, params)]

    # Under ``_lock``, on the write connection:

    def _one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        rows = rows_of(self._conn, sql, params)
        return rows[0] if rows else None

    def _write(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run one change (its own transaction unless one is open); return the rows changed."""
        return self._conn.execute(sql, params).rowcount

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction, taking the write lock at once (no deadlock on upgrade).

        A failed COMMIT is rolled back too: after a full disk or an I/O error SQLite may leave
        the transaction open, and every later BEGIN on the connection would fail."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # keep the error that matters
                        self._conn.execute("ROLLBACK")
                raise


# --- the file as a whole (``ctm db``) ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DatabaseReport:
    """What ``describe_database`` found in a sound database."""

    path: str
    migrations: tuple[str, ...]
    """ctm's migrations applied, in order (empty: a SQLite file with no schema yet)."""
    pending: tuple[str, ...]
    """Migrations of this ctm not applied yet (the next start applies them)."""
    users: int
    tasks: int
    executions: int


def describe_database(path: str) -> DatabaseReport:
    """Run ``check_database_file`` with ``PRAGMA integrity_check`` and count the rows of
    ``path``. Raises ``DatabaseUnusable`` (``missing`` when there is no file)."""
    applied = check_database_file(path, pragma="integrity_check")
    if applied is None:
        raise DatabaseUnusable(path, "missing", "does not exist")
    return _report(path, applied)


def _report(path: str, applied: list[str]) -> DatabaseReport:
    counts = {"users": 0, "tasks": 0, "executions": 0}
    if applied:
        conn = sqlite3.connect(file_uri(path, "ro"), uri=True)
        try:
            for table in counts:
                sql = f"SELECT count(*) FROM {table}"  # noqa: S608 - three constants
                counts[table] = int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()
    return DatabaseReport(
        path=path,
        migrations=tuple(applied),
        pending=tuple(n for n in _known_migrations() if n not in applied),
        **counts,
    )


def backup_database(path: str, target: str, *, busy_timeout: float = 5.0) -> DatabaseReport:
    """Copy the ctm database at ``path`` to ``target``, a new file (mode 0600) in rollback
    journal mode: one file, no ``-wal``. SQLite's online backup API reads one consistent
    snapshot while a server goes on reading and writing. ``path`` must pass
    ``check_database_file`` first (``DatabaseUnusable`` otherwise). Raises ``FileExistsError``
    when ``target`` exists (it is never overwritten). Returns what the copy holds."""
    if check_database_file(path, busy_timeout=busy_timeout) is None:
        raise DatabaseUnusable(path, "missing", "does not exist")
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    try:
        # Read-write: as the last connection (no server running) it checkpoints the WAL.
        source = sqlite3.connect(file_uri(path, "rw"), uri=True, timeout=busy_timeout)
        try:
            copy = sqlite3.connect(target, isolation_level=None)
            try:
                source.backup(copy)  # every page in one step: one read transaction
                copy.execute("PRAGMA journal_mode = DELETE")
            finally:
                copy.close()
        finally:
            source.close()
        return _report(target, check_database_file(target, pragma=None) or [])
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        raise


def init_database(path: str) -> bool:
    """Create ctm's database at ``path`` where there is no file, or an empty one (0 bytes, or
    SQLite with nothing in it). Returns False, changing nothing, when ``path`` already is a
    sound ctm database. Raises ``DatabaseUnusable`` for any other file: it is never
    overwritten."""
    try:
        applied = check_database_file(path)
    except DatabaseUnusable as exc:
        if exc.kind != "empty":
            raise DatabaseUnusable(
                path,
                exc.kind,
                exc.reason,
                "`ctm db init` only creates a database where there is none or an empty file, and"
                " does not overwrite this one. Move it away first to start afresh, or restore"
                " it from a backup (see docs/operations.md).",
            ) from None
        applied = []
    if applied:
        return False
    SqliteStore(path).close()
    return True
