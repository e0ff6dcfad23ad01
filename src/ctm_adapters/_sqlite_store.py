"""The plumbing of the SQLite repository: one write connection behind a short lock (each change
is one transaction, ``BEGIN IMMEDIATE``), a pool of read-only connections that never wait for a
write (WAL), and the migrations applied on opening. ``sqlite`` holds the queries."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Self

from sqlite_utils import Database

from ctm_adapters._sqlite_schema import MIGRATIONS, Row, create_private_file, execution_from_row
from ctm_core.models import Execution

READERS = 4
"""Read connections at most; a reader beyond them waits for one (reads take milliseconds)."""


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
        self._lock = threading.Lock()
        """Held for each write (a transaction) on ``_conn``, and for reads in a memory store."""
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
        """One write transaction, taking the write lock at once (no deadlock on upgrade)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
