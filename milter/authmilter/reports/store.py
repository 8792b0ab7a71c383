"""Where report rows live: the ReportStore protocol both stores implement, and open_store() to pick one.

SQLite (a file, the default: one host) or PostgreSQL (a `postgresql://` URL: a fleet of MX hosts writing to one
database). Every method is one short transaction, and every failure to reach or use the store raises StoreError:
the writer turns it into a journal entry, `reports send` into a log line and a later retry.

Rows are keyed by (policy domain, day, reporter, row hash): each host of a fleet writes only its own rows, so
hosts never wait on each other. Reports are keyed by (policy domain, day) and claimed under a row lock (PostgreSQL)
or the database write lock (SQLite), so however many senders run at once, one builds and sends each report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from authmilter.config import ReportsSection
from authmilter.errors import AuthmilterError
from authmilter.reports.model import DomainDay, Observation

# Report statuses. A report in one of OPEN_STATUSES may still be (re)built or sent; any other status is final.
PENDING, BUILT, SENT, FAILED = "pending", "built", "sent", "failed"
OPEN_STATUSES = (PENDING, BUILT, FAILED)


class StoreError(AuthmilterError):
    """The store cannot be reached, or refused a statement (the reason says which)."""


@dataclass(frozen=True, slots=True)
class DaySummary:
    """One policy domain and day, for `authmilter reports show`."""

    policy_domain: str
    day: str
    rows: int            # distinct rows (over every reporter)
    messages: int
    dmarc_pass: int      # messages with aligned DKIM or aligned SPF
    dmarc_fail: int      # messages with neither (the overflow row's messages are in neither count)
    rua: tuple[str, ...]
    triggered: bool      # some message may trigger a report (see Observation.triggers_report)
    status: str          # pending (never claimed), built, sent, failed, suppressed, no_destination...
    report_id: str
    reason: str          # why it failed or was not sent ("" otherwise)
    overflow: int = 0    # messages counted in the overflow row (beyond the cap of distinct rows)


class ReportStore(Protocol):
    def add_counts(self, reporter: str, counts: Mapping[Observation, int], flushed_until: float, *,
                   batch_ids: Sequence[str] = ()) -> bool:
        """One transaction: add `counts`, record the policy per domain and day, and move this reporter's
        high-water mark to `flushed_until`. With `batch_ids` (journal lines), nothing is added and False is
        returned when any of them was applied before; otherwise they are remembered with the counts, so a journal
        can be replayed after a crash without counting anything twice."""

    def days_ready(self, now: float, grace_seconds: float, silent_reporter_seconds: float) -> list[tuple[str, str]]:
        """(policy_domain, day) whose report may be built now: the day ended `grace_seconds` ago, every reporter
        with rows that day has flushed past its end (or is silent longer than `silent_reporter_seconds`), some
        message triggered a report, and it is neither done, nor leased, nor waiting for a retry."""

    def claim(self, policy_domain: str, day: str, sender_id: str, lease_seconds: float) -> DomainDay | None:
        """The right to build and send one report, for `lease_seconds`: None when another sender holds it, it is
        done, or it waits for its retry time. The report id is assigned on the first claim and kept."""

    def peek(self, policy_domain: str, day: str) -> DomainDay | None:
        """The same DomainDay without claiming anything (no write at all); None when the day has no rows."""

    def days(self, day: str) -> list[str]:
        """Policy domains with rows on `day`, sorted."""

    def record_built(self, policy_domain: str, day: str, report_id: str, payload: bytes) -> None: ...
    def built_payload(self, policy_domain: str, day: str) -> bytes | None: ...
    def mark_sent(self, policy_domain: str, day: str) -> None: ...
    def mark_failed(self, policy_domain: str, day: str, reason: str, retry_after: float) -> None: ...
    def mark_status(self, policy_domain: str, day: str, status: str, reason: str) -> None: ...
    def summary(self, day: str | None = None) -> list[DaySummary]: ...

    def prune(self, older_than_days: int) -> int:
        """Forget domain-days older than `older_than_days` whose report is done or was never triggered."""

    def close(self) -> None: ...


def is_postgresql(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


def open_store(cfg: ReportsSection, *, clock: Callable[[], float] = time.time) -> ReportStore:
    """The store `cfg.database` names. Nothing is connected yet: the first call connects (and creates the schema),
    so a store that is down at start-up is just a store error later, never a failed start."""
    if is_postgresql(cfg.database):
        from authmilter.reports.postgres import PostgresStore  # psycopg is an optional extra
        return PostgresStore(cfg.database, max_rows=cfg.max_rows_per_domain_day, clock=clock)
    from authmilter.reports.sqlite import SqliteStore
    return SqliteStore(cfg.database, max_rows=cfg.max_rows_per_domain_day, clock=clock)
