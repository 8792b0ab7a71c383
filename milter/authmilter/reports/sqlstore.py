"""The SQL both stores share: a handful of statements, written once with `?` placeholders.

The two dialects differ only in how they connect, open a write transaction, lock a report row and bulk-load a
batch; sqlite.py and postgres.py supply those. Every count goes through one transaction per batch:

  1. the batch goes into a temporary table (`batch_rows`);
  2. rows this reporter already has for the day get their counts added;
  3. new rows are inserted, heaviest first, while the domain and day has fewer than `max_rows` distinct rows for
     this reporter; what does not fit is added to one overflow row per domain and day (logged once);
  4. the reporter's high-water mark moves forward.

A fleet's rows for one domain and day are merged when read (claim, peek), and the row cap is applied again there,
so a report has at most `max_rows` rows plus the overflow row however many hosts wrote.
"""

from __future__ import annotations

import calendar
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from authmilter.reports import codec
from authmilter.reports.model import DomainDay, Observation, Override, RowKey, StoredRow
from authmilter.reports.store import BUILT, FAILED, OPEN_STATUSES, PENDING, SENT, DaySummary

log = logging.getLogger("authmilter.reports")

SCHEMA_VERSION = 1
DAY_SECONDS = 86400
OVERFLOW_SOURCE_IP = "0.0.0.0"  # "unspecified": the overflow row stands for many sources

# Per dialect: {blob}, {bigint} and {real} are filled in by the store.
SCHEMA = (
    """CREATE TABLE schema_version (version INTEGER NOT NULL)""",
    # Each reporter's high-water mark: every count it observed before flushed_until is stored.
    """CREATE TABLE reporters (
        reporter TEXT PRIMARY KEY,
        flushed_until {real} NOT NULL,
        updated_at {real} NOT NULL)""",
    # The policy each reporter saw per domain and day, whether any of its messages triggers a report, and how
    # many distinct rows it holds for the day (the row cap).
    """CREATE TABLE domain_reporters (
        policy_domain TEXT NOT NULL,
        day TEXT NOT NULL,
        reporter TEXT NOT NULL,
        policy TEXT NOT NULL,
        rua TEXT NOT NULL,
        triggered INTEGER NOT NULL,
        distinct_rows INTEGER NOT NULL DEFAULT 0,
        seen_at {real} NOT NULL,
        PRIMARY KEY (policy_domain, day, reporter))""",
    """CREATE INDEX domain_reporters_day ON domain_reporters (day, reporter)""",
    """CREATE TABLE report_rows (
        policy_domain TEXT NOT NULL,
        day TEXT NOT NULL,
        reporter TEXT NOT NULL,
        row_hash TEXT NOT NULL,
        row_text TEXT NOT NULL,
        aligned INTEGER NOT NULL,
        overflow INTEGER NOT NULL,
        count {bigint} NOT NULL,
        PRIMARY KEY (policy_domain, day, reporter, row_hash))""",
    # One row per report once a sender claimed it (or marked it): its id, the built file, its fate.
    """CREATE TABLE reports (
        policy_domain TEXT NOT NULL,
        day TEXT NOT NULL,
        status TEXT NOT NULL,
        report_id TEXT NOT NULL,
        payload {blob},
        reason TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        retry_after {real} NOT NULL DEFAULT 0,
        lease_owner TEXT NOT NULL DEFAULT '',
        lease_until {real} NOT NULL DEFAULT 0,
        updated_at {real} NOT NULL,
        PRIMARY KEY (policy_domain, day))""",
    # Journal batches already applied, so a replay interrupted by a crash never counts a batch twice.
    """CREATE TABLE applied_batches (
        reporter TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        applied_at {real} NOT NULL,
        PRIMARY KEY (reporter, batch_id))""",
)
# Later releases append (version, statements) here; a store opened by an older schema runs the missing steps.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = ()

BATCH_TABLE = """CREATE TEMPORARY TABLE IF NOT EXISTS batch_rows (
    policy_domain TEXT NOT NULL,
    day TEXT NOT NULL,
    row_hash TEXT NOT NULL,
    row_text TEXT NOT NULL,
    aligned INTEGER NOT NULL,
    count {bigint} NOT NULL)"""
BATCH_COLUMNS = ("policy_domain", "day", "row_hash", "row_text", "aligned", "count")

_UPSERT_DOMAIN = """
    INSERT INTO domain_reporters (policy_domain, day, reporter, policy, rua, triggered, seen_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (policy_domain, day, reporter) DO UPDATE SET
        policy = excluded.policy, rua = excluded.rua, seen_at = excluded.seen_at,
        triggered = CASE WHEN excluded.triggered = 1 THEN 1 ELSE domain_reporters.triggered END"""
_ADD_EXISTING = """
    UPDATE report_rows SET count = report_rows.count + b.count
    FROM batch_rows b
    WHERE report_rows.policy_domain = b.policy_domain AND report_rows.day = b.day
      AND report_rows.reporter = ? AND report_rows.row_hash = b.row_hash"""
_DROP_EXISTING = """
    DELETE FROM batch_rows WHERE EXISTS (
        SELECT 1 FROM report_rows r
        WHERE r.policy_domain = batch_rows.policy_domain AND r.day = batch_rows.day
          AND r.reporter = ? AND r.row_hash = batch_rows.row_hash)"""
# The new rows ranked per domain and day, heaviest first, beside the room left under the cap.
_RANKED = """
    SELECT b.policy_domain, b.day, b.row_hash, b.row_text, b.aligned, b.count,
           ROW_NUMBER() OVER (PARTITION BY b.policy_domain, b.day ORDER BY b.count DESC, b.row_hash) AS row_rank,
           ? - d.distinct_rows AS room
    FROM batch_rows b
    JOIN domain_reporters d ON d.policy_domain = b.policy_domain AND d.day = b.day AND d.reporter = ?"""
_INSERT_NEW = f"""
    INSERT INTO report_rows (policy_domain, day, reporter, row_hash, row_text, aligned, overflow, count)
    SELECT n.policy_domain, n.day, ?, n.row_hash, n.row_text, n.aligned, 0, n.count
    FROM ({_RANKED}) n WHERE n.row_rank <= n.room"""
_OVERFLOWING = f"""
    SELECT n.policy_domain, n.day, SUM(n.count), COUNT(*) FROM ({_RANKED}) n WHERE n.row_rank > n.room
    GROUP BY n.policy_domain, n.day"""
_COUNT_NEW = """
    UPDATE domain_reporters SET distinct_rows = CASE WHEN distinct_rows + n.added > ? THEN ?
                                                     ELSE distinct_rows + n.added END
    FROM (SELECT policy_domain, day, COUNT(*) AS added FROM batch_rows GROUP BY policy_domain, day) n
    WHERE domain_reporters.policy_domain = n.policy_domain AND domain_reporters.day = n.day
      AND domain_reporters.reporter = ?"""
_ADD_OVERFLOW = """
    INSERT INTO report_rows (policy_domain, day, reporter, row_hash, row_text, aligned, overflow, count)
    VALUES (?, ?, ?, ?, ?, 0, 1, ?)
    ON CONFLICT (policy_domain, day, reporter, row_hash) DO UPDATE SET count = report_rows.count + excluded.count"""
_MOVE_MARK = """
    INSERT INTO reporters (reporter, flushed_until, updated_at) VALUES (?, ?, ?)
    ON CONFLICT (reporter) DO UPDATE SET updated_at = excluded.updated_at,
        flushed_until = CASE WHEN excluded.flushed_until > reporters.flushed_until
                             THEN excluded.flushed_until ELSE reporters.flushed_until END"""


def overflow_row(policy_domain: str, max_rows: int) -> RowKey:
    """The one row per policy domain and day that counts the messages beyond the cap of distinct rows."""
    return RowKey(OVERFLOW_SOURCE_IP, "none", "fail", "fail",
                  (Override("other", f"messages beyond the cap of {max_rows} distinct rows for this domain and day"),),
                  policy_domain, "", "", (), (), overflow=True)


def day_bounds(day: str) -> tuple[int, int]:
    """[begin, end) of a UTC day "YYYY-MM-DD" in epoch seconds."""
    begin = calendar.timegm(time.strptime(day, "%Y-%m-%d"))
    return begin, begin + DAY_SECONDS


def utc_day(epoch: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch))


@dataclass(slots=True)
class _Batch:
    domains: dict[tuple[str, str], tuple[str, str, bool]]  # (domain, day) -> (policy text, rua text, triggered)
    rows: dict[tuple[str, str, str], list]                  # (domain, day, hash) -> [text, aligned, count]


def _fold(counts: Mapping[Observation, int]) -> _Batch:
    batch = _Batch({}, {})
    texts: dict[RowKey, tuple[str, str]] = {}
    for obs, count in counts.items():
        if count <= 0:
            continue
        key = (obs.policy_domain, obs.day)
        triggered = obs.triggers_report and not obs.to_report_mailbox
        known = batch.domains.get(key)
        batch.domains[key] = (codec.policy_to_text(obs.policy), codec.rua_to_text(obs.rua),
                              triggered or (known is not None and known[2]))
        text_hash = texts.get(obs.row)
        if text_hash is None:
            text = codec.row_to_text(obs.row)
            text_hash = texts[obs.row] = (text, codec.row_hash(text))
        slot = batch.rows.get((*key, text_hash[1]))
        if slot is None:
            aligned = 1 if "pass" in (obs.row.dkim, obs.row.spf) else 0
            batch.rows[(*key, text_hash[1])] = [text_hash[0], aligned, count]
        else:
            slot[2] += count
    return batch


class SqlStore:
    """The shared logic; a subclass supplies the connection and the dialect's few differences."""

    FOR_UPDATE = ""  # PostgreSQL locks the claimed report row; SQLite's write transaction already excludes others

    def __init__(self, *, max_rows: int, clock: Callable[[], float]) -> None:
        self.max_rows = max_rows
        self.clock = clock
        self._conn = None

    # -- what a dialect provides

    def _connect(self):  # pragma: no cover - abstract
        raise NotImplementedError

    @contextmanager
    def _write(self) -> Iterator:
        """A write transaction on a live connection, yielding a cursor; StoreError on any failure."""
        raise NotImplementedError  # pragma: no cover

    @contextmanager
    def _read(self) -> Iterator:
        raise NotImplementedError  # pragma: no cover

    def _load_batch(self, cur, rows: list[tuple]) -> None:
        cur.executemany(self._sql(f"INSERT INTO batch_rows ({', '.join(BATCH_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)"),
                        rows)

    def _sql(self, statement: str) -> str:
        return statement

    # -- recording

    def add_counts(self, reporter: str, counts: Mapping[Observation, int], flushed_until: float, *,
                   batch_ids: Sequence[str] = ()) -> bool:
        batch = _fold(counts)
        now = self.clock()
        q = self._sql
        newly_overflowing: list[tuple[str, str, int, int]] = []
        with self._write() as cur:
            if batch_ids:
                marks = ", ".join("?" * len(batch_ids))
                cur.execute(q(f"SELECT COUNT(*) FROM applied_batches WHERE reporter = ? AND batch_id IN ({marks})"),
                            (reporter, *batch_ids))
                if cur.fetchone()[0]:
                    return False
                cur.executemany(q("INSERT INTO applied_batches (reporter, batch_id, applied_at) VALUES (?, ?, ?)"),
                                [(reporter, batch_id, now) for batch_id in batch_ids])
            if batch.rows:
                cur.executemany(q(_UPSERT_DOMAIN), [(domain, day, reporter, policy, rua, int(triggered), now)
                                                    for (domain, day), (policy, rua, triggered)
                                                    in sorted(batch.domains.items())])
                cur.execute(q("DELETE FROM batch_rows"))
                self._load_batch(cur, [(domain, day, row_hash, text, aligned, count) for (domain, day, row_hash),
                                       (text, aligned, count) in batch.rows.items()])
                cur.execute(q(_ADD_EXISTING), (reporter,))
                cur.execute(q(_DROP_EXISTING), (reporter,))
                cur.execute(q(_INSERT_NEW), (reporter, self.max_rows, reporter))
                cur.execute(q(_OVERFLOWING), (self.max_rows, reporter))
                for domain, day, excess, dropped_rows in cur.fetchall():
                    text = codec.row_to_text(overflow_row(domain, self.max_rows))
                    row_hash = codec.row_hash(text)
                    cur.execute(q("SELECT 1 FROM report_rows WHERE policy_domain = ? AND day = ? AND reporter = ? "
                                  "AND row_hash = ?"), (domain, day, reporter, row_hash))
                    if cur.fetchone() is None:
                        newly_overflowing.append((domain, day, int(excess), int(dropped_rows)))
                    cur.execute(q(_ADD_OVERFLOW), (domain, day, reporter, row_hash, text, int(excess)))
                cur.execute(q(_COUNT_NEW), (self.max_rows, self.max_rows, reporter))
                cur.execute(q("DELETE FROM batch_rows"))
            cur.execute(q(_MOVE_MARK), (reporter, flushed_until, now))
        for domain, day, excess, dropped_rows in newly_overflowing:
            # Once per reporter, domain and day: the cap protects the store and the report from a flood of junk.
            log.warning("reports: %s on %s has more than %d distinct rows; %d more rows (%d messages) and all "
                        "later new rows that day are counted in one overflow row", domain, day, self.max_rows,
                        dropped_rows, excess)
        return True

    # -- what the sender reads and decides

    def days_ready(self, now: float, grace_seconds: float, silent_reporter_seconds: float) -> list[tuple[str, str]]:
        q = self._sql
        last_ready_day = utc_day(now - grace_seconds - DAY_SECONDS)  # its end + grace is not after now
        ready: list[tuple[str, str]] = []
        with self._read() as cur:
            cur.execute(q("SELECT d.day, d.reporter, r.flushed_until FROM domain_reporters d "
                          "LEFT JOIN reporters r ON r.reporter = d.reporter "
                          "WHERE d.day <= ? GROUP BY d.day, d.reporter, r.flushed_until"), (last_ready_day,))
            waiting: dict[str, bool] = {}
            for day, reporter, flushed_until in cur.fetchall():
                end = day_bounds(day)[1]
                flushed = flushed_until if flushed_until is not None else 0.0
                done = flushed >= end or now - flushed > silent_reporter_seconds
                waiting[day] = waiting.get(day, False) or not done
            days = sorted(day for day, still_waiting in waiting.items() if not still_waiting)
            for day in days:
                cur.execute(q("SELECT d.policy_domain FROM domain_reporters d WHERE d.day = ? AND d.triggered = 1 "
                              "AND NOT EXISTS (SELECT 1 FROM reports r WHERE r.policy_domain = d.policy_domain "
                              "AND r.day = d.day AND (r.status NOT IN (?, ?, ?) OR r.lease_until > ? "
                              "OR (r.status = ? AND r.retry_after > ?))) "
                              "GROUP BY d.policy_domain ORDER BY d.policy_domain"),
                            (day, *OPEN_STATUSES, now, FAILED, now))
                ready.extend((domain, day) for (domain,) in cur.fetchall())
        return ready

    def claim(self, policy_domain: str, day: str, sender_id: str, lease_seconds: float) -> DomainDay | None:
        q = self._sql
        now = self.clock()
        with self._write() as cur:
            cur.execute(q("SELECT 1 FROM domain_reporters WHERE policy_domain = ? AND day = ? LIMIT 1"),
                        (policy_domain, day))
            if cur.fetchone() is None:
                return None
            cur.execute(q("INSERT INTO reports (policy_domain, day, status, report_id, updated_at) "
                          "VALUES (?, ?, ?, ?, ?) ON CONFLICT (policy_domain, day) DO NOTHING"),
                        (policy_domain, day, PENDING, new_report_id(), now))
            cur.execute(q("SELECT status, report_id, lease_owner, lease_until, retry_after FROM reports "
                          "WHERE policy_domain = ? AND day = ?" + self.FOR_UPDATE), (policy_domain, day))
            status, report_id, owner, lease_until, retry_after = cur.fetchone()
            if status not in OPEN_STATUSES:
                return None
            if owner and owner != sender_id and lease_until > now:
                return None
            if status == FAILED and retry_after > now:
                return None
            cur.execute(q("UPDATE reports SET lease_owner = ?, lease_until = ?, updated_at = ? "
                          "WHERE policy_domain = ? AND day = ?"),
                        (sender_id, now + lease_seconds, now, policy_domain, day))
            return self._domain_day(cur, policy_domain, day, report_id, status)

    def peek(self, policy_domain: str, day: str) -> DomainDay | None:
        with self._read() as cur:
            cur.execute(self._sql("SELECT status, report_id FROM reports WHERE policy_domain = ? AND day = ?"),
                        (policy_domain, day))
            found = cur.fetchone()
            status, report_id = found if found is not None else (PENDING, "")
            return self._domain_day(cur, policy_domain, day, report_id, status)

    def _domain_day(self, cur, policy_domain: str, day: str, report_id: str, status: str) -> DomainDay | None:
        q = self._sql
        cur.execute(q("SELECT policy, rua, triggered FROM domain_reporters WHERE policy_domain = ? AND day = ? "
                      "ORDER BY seen_at DESC, reporter"), (policy_domain, day))
        seen = cur.fetchall()
        if not seen:
            return None
        cur.execute(q("SELECT row_hash, MIN(row_text), SUM(count) FROM report_rows "
                      "WHERE policy_domain = ? AND day = ? GROUP BY row_hash"), (policy_domain, day))
        rows = self._capped(policy_domain, [(row_hash, text, int(count)) for row_hash, text, count in cur.fetchall()])
        policy, rua, _ = seen[0]  # the newest policy any reporter saw that day
        return DomainDay(policy_domain, day, codec.policy_from_text(policy), codec.rua_from_text(rua), rows,
                         report_id, status, any(triggered for _, _, triggered in seen))

    def _capped(self, policy_domain: str, rows: list[tuple[str, str, int]]) -> tuple[StoredRow, ...]:
        """The fleet's rows merged, heaviest first; past `max_rows` distinct rows the rest join the overflow row."""
        overflow_text = codec.row_to_text(overflow_row(policy_domain, self.max_rows))
        overflow_hash = codec.row_hash(overflow_text)
        excess = sum(count for row_hash, _, count in rows if row_hash == overflow_hash)
        regular = sorted(((row_hash, text, count) for row_hash, text, count in rows if row_hash != overflow_hash),
                         key=lambda item: (-item[2], item[0]))
        excess += sum(count for _, _, count in regular[self.max_rows:])
        kept = [StoredRow(codec.row_from_text(text), count) for _, text, count in regular[:self.max_rows]]
        if excess:
            kept.append(StoredRow(codec.row_from_text(overflow_text), excess))
        return tuple(kept)

    def days(self, day: str) -> list[str]:
        with self._read() as cur:
            cur.execute(self._sql("SELECT DISTINCT policy_domain FROM domain_reporters WHERE day = ? "
                                  "ORDER BY policy_domain"), (day,))
            return [domain for (domain,) in cur.fetchall()]

    def record_built(self, policy_domain: str, day: str, report_id: str, payload: bytes) -> None:
        self._set(policy_domain, day, "status = ?, report_id = ?, payload = ?", (BUILT, report_id, payload))

    def built_payload(self, policy_domain: str, day: str) -> bytes | None:
        with self._read() as cur:
            cur.execute(self._sql("SELECT payload FROM reports WHERE policy_domain = ? AND day = ?"),
                        (policy_domain, day))
            found = cur.fetchone()
            return bytes(found[0]) if found is not None and found[0] is not None else None

    def mark_sent(self, policy_domain: str, day: str) -> None:
        self._set(policy_domain, day, "status = ?, reason = '', lease_owner = '', lease_until = 0", (SENT,))

    def mark_failed(self, policy_domain: str, day: str, reason: str, retry_after: float) -> None:
        self._set(policy_domain, day, "status = ?, reason = ?, retry_after = ?, attempts = attempts + 1, "
                  "lease_owner = '', lease_until = 0", (FAILED, reason, retry_after))

    def mark_status(self, policy_domain: str, day: str, status: str, reason: str) -> None:
        self._set(policy_domain, day, "status = ?, reason = ?, lease_owner = '', lease_until = 0", (status, reason))

    def _set(self, policy_domain: str, day: str, assignments: str, values: tuple) -> None:
        q = self._sql
        now = self.clock()
        with self._write() as cur:
            cur.execute(q("INSERT INTO reports (policy_domain, day, status, report_id, updated_at) "
                          "VALUES (?, ?, ?, ?, ?) ON CONFLICT (policy_domain, day) DO NOTHING"),
                        (policy_domain, day, PENDING, new_report_id(), now))
            cur.execute(q(f"UPDATE reports SET {assignments}, updated_at = ? WHERE policy_domain = ? AND day = ?"),
                        (*values, now, policy_domain, day))

    def summary(self, day: str | None = None) -> list[DaySummary]:
        q = self._sql
        where, args = ("WHERE day = ?", (day,)) if day is not None else ("", ())
        with self._read() as cur:
            cur.execute(q(f"SELECT policy_domain, day, COUNT(DISTINCT row_hash), SUM(count), "
                          f"SUM(CASE WHEN aligned = 1 THEN count ELSE 0 END), "
                          f"SUM(CASE WHEN overflow = 1 THEN count ELSE 0 END) FROM report_rows {where} "
                          f"GROUP BY policy_domain, day"), args)
            counted = {(domain, d): (int(rows), int(messages), int(passed), int(excess))
                       for domain, d, rows, messages, passed, excess in cur.fetchall()}
            cur.execute(q(f"SELECT policy_domain, day, rua, triggered FROM domain_reporters {where} "
                          f"ORDER BY seen_at"), args)
            seen: dict[tuple[str, str], tuple[str, bool]] = {}
            for domain, d, rua, triggered in cur.fetchall():
                earlier = seen.get((domain, d), ("", False))
                seen[(domain, d)] = (rua, earlier[1] or bool(triggered))
            cur.execute(q(f"SELECT policy_domain, day, status, report_id, reason FROM reports {where}"), args)
            fates = {(domain, d): (status, report_id, reason)
                     for domain, d, status, report_id, reason in cur.fetchall()}
        summaries = []
        for key in sorted(set(seen) | set(fates), key=lambda k: (k[1], k[0])):
            rows, messages, passed, excess = counted.get(key, (0, 0, 0, 0))
            rua, triggered = seen.get(key, ("[]", False))
            status, report_id, reason = fates.get(key, (PENDING, "", ""))
            summaries.append(DaySummary(key[0], key[1], rows, messages, passed, messages - passed - excess,
                                        codec.rua_from_text(rua), triggered, status, report_id, reason, excess))
        return summaries

    def prune(self, older_than_days: int) -> int:
        q = self._sql
        now = self.clock()
        cutoff = utc_day(now - older_than_days * DAY_SECONDS)
        with self._write() as cur:
            cur.execute(q("SELECT d.policy_domain, d.day FROM domain_reporters d "
                          "LEFT JOIN reports r ON r.policy_domain = d.policy_domain AND r.day = d.day "
                          "WHERE d.day < ? GROUP BY d.policy_domain, d.day "
                          "HAVING MAX(d.triggered) = 0 OR MAX(r.status) NOT IN (?, ?, ?)"),
                        (cutoff, *OPEN_STATUSES))
            done = cur.fetchall()
            for table in ("report_rows", "domain_reporters", "reports"):
                cur.executemany(q(f"DELETE FROM {table} WHERE policy_domain = ? AND day = ?"), done)
            cur.execute(q("DELETE FROM reports WHERE day < ? AND status NOT IN (?, ?, ?)"), (cutoff, *OPEN_STATUSES))
            cur.execute(q("DELETE FROM applied_batches WHERE applied_at < ?"), (now - older_than_days * DAY_SECONDS,))
        return len(done)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a broken connection may fail too; nothing is left to lose
                pass


def new_report_id() -> str:
    """Alphanumeric and unique: 128 random bits in hex."""
    return secrets.token_hex(16)


def execute_schema(cur, statements: Sequence[str], types: Mapping[str, str]) -> None:
    for statement in statements:
        cur.execute(statement.format(**types))
