"""The PostgreSQL store, for a fleet: every MX host writes its own rows to one database, any host may send.

psycopg 3 (the `postgresql` extra). Connections run in autocommit mode with explicit transactions; a claimed
report row is locked with SELECT ... FOR UPDATE, so concurrent senders queue for the milliseconds a claim takes and
the later ones see the lease. The schema is created (or migrated) under a transaction-scoped advisory lock, so
hosts starting together do not race to create it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from authmilter.reports.sqlstore import (BATCH_COLUMNS, BATCH_TABLE, MIGRATIONS, SCHEMA, SCHEMA_VERSION, SqlStore,
                                         execute_schema)
from authmilter.reports.store import StoreError

TYPES = {"blob": "BYTEA", "bigint": "BIGINT", "real": "DOUBLE PRECISION"}
_SCHEMA_LOCK = 0x617574686D696C  # pg_advisory_xact_lock key: "authmil"


def _driver():
    try:
        import psycopg
    except ImportError:
        raise StoreError("a postgresql:// database needs psycopg: pip install 'authmilter[postgresql]'") from None
    return psycopg


class PostgresStore(SqlStore):
    FOR_UPDATE = " FOR UPDATE"

    def __init__(self, url: str, *, max_rows: int, clock: Callable[[], float] = time.time,
                 connect_timeout: int = 5, statement_timeout_ms: int = 60000) -> None:
        super().__init__(max_rows=max_rows, clock=clock)
        self.psycopg = _driver()
        self.url = url
        self.connect_timeout = connect_timeout
        self.statement_timeout_ms = statement_timeout_ms
        self._statements: dict[str, str] = {}

    def _sql(self, statement: str) -> str:
        converted = self._statements.get(statement)
        if converted is None:  # the statements hold neither "?" nor "%" outside placeholders
            converted = self._statements[statement] = statement.replace("?", "%s")
        return converted

    def _connect(self):
        conn = self.psycopg.connect(self.url, autocommit=True, connect_timeout=self.connect_timeout,
                                    application_name="authmilter",
                                    options=f"-c statement_timeout={self.statement_timeout_ms:d}")
        try:
            self._migrate(conn)
            conn.execute(BATCH_TABLE.format(**TYPES))
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn) -> None:
        with conn.transaction():
            cur = conn.cursor()
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur.execute("SELECT to_regclass('schema_version')")
            if cur.fetchone()[0] is None:
                execute_schema(cur, SCHEMA, TYPES)
                cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
                return
            cur.execute("SELECT max(version) FROM schema_version")
            version = cur.fetchone()[0] or 0
            if version > SCHEMA_VERSION:
                raise StoreError(f"database schema version {version} is newer than this authmilter's "
                                 f"({SCHEMA_VERSION}): upgrade authmilter")
            if version < SCHEMA_VERSION:
                for target, statements in MIGRATIONS:
                    if target > version:
                        execute_schema(cur, statements, TYPES)
                cur.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))

    def _live(self):
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self.close()
        if self._conn is None:
            try:
                self._conn = self._connect()
            except self.psycopg.Error as exc:
                raise StoreError(f"PostgreSQL: {_reason(exc)}") from None
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator:
        conn = self._live()
        try:
            with conn.transaction():
                yield conn.cursor()
        except self.psycopg.Error as exc:
            if conn.closed or conn.broken:
                self.close()
            raise StoreError(f"PostgreSQL: {_reason(exc)}") from None

    def _write(self):
        return self._transaction()

    def _read(self):
        return self._transaction()

    def _load_batch(self, cur, rows: list[tuple]) -> None:
        with cur.copy(f"COPY batch_rows ({', '.join(BATCH_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
