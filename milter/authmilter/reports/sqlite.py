"""The SQLite store: one file (by default under /var/lib/authmilter/), created with its directory on first use.

WAL lets `reports send` read while the milter's writer writes; every write transaction is BEGIN IMMEDIATE, so two
processes never both believe they may claim the same report. The schema version is PRAGMA user_version (and the
schema_version table, as in PostgreSQL); a newer file than this release understands is refused, an older one is
migrated in one transaction.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from authmilter.reports.sqlstore import BATCH_TABLE, MIGRATIONS, SCHEMA, SCHEMA_VERSION, SqlStore, execute_schema
from authmilter.reports.store import StoreError

TYPES = {"blob": "BLOB", "bigint": "INTEGER", "real": "REAL"}


class SqliteStore(SqlStore):
    def __init__(self, path: str, *, max_rows: int, clock: Callable[[], float] = time.time,
                 busy_seconds: float = 10.0) -> None:
        super().__init__(max_rows=max_rows, clock=clock)
        self.path = path
        self.busy_seconds = busy_seconds  # how long a write waits for another process's transaction

    def _connect(self) -> sqlite3.Connection:
        directory = Path(self.path).parent
        if not directory.is_dir():
            directory.mkdir(parents=True, mode=0o750, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_seconds, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # one commit every few seconds: the fsync costs nothing
            self._migrate(conn)
            conn.execute(BATCH_TABLE.format(**TYPES))
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            version = cur.execute("PRAGMA user_version").fetchone()[0]  # another process may have just done it
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {version} is newer than this authmilter's "
                                 f"({SCHEMA_VERSION}): upgrade authmilter")
            if version == 0:
                execute_schema(cur, SCHEMA, TYPES)
                cur.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            else:
                for target, statements in MIGRATIONS:
                    if target > version:
                        execute_schema(cur, statements, TYPES)
                cur.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self._conn = self._connect()
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"{self.path}: {_reason(exc)}") from None
        return self._conn

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Cursor]:
        cur = self._live().cursor()
        try:
            cur.execute(begin)
            yield cur
            cur.execute("COMMIT")
        except sqlite3.Error as exc:
            self.close()  # closing rolls back; the next call opens a fresh connection
            raise StoreError(f"{self.path}: {_reason(exc)}") from None
        except BaseException:
            self.close()
            raise

    def _write(self):
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self):
        return self._transaction("BEGIN")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def database_files(path: str) -> tuple[str, ...]:
    """The file and its WAL companions (for an operator's backup or a test's cleanup)."""
    return tuple(p for p in (path, path + "-wal", path + "-shm") if os.path.exists(p))
