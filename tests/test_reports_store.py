"""The report store, SQLite and a real PostgreSQL (a private cluster), through the same ReportStore contract."""

from __future__ import annotations

import logging
import sqlite3
import threading
from urllib.parse import urlsplit

import pytest

from authmilter.reports.sqlite import SqliteStore
from authmilter.reports.sqlstore import SCHEMA_VERSION, day_bounds
from authmilter.reports.store import StoreError
from testlab.reportstore import fill, observation
from tests.pgfixture import pg_cluster, pg_url  # noqa: F401

DAY = "2026-11-18"
BEGIN, END = day_bounds(DAY)
HOUR = 3600


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def kind(request):
    return request.param


@pytest.fixture
def clock():
    return Clock(END + 2 * HOUR)


@pytest.fixture
def opener(kind, tmp_path, request, clock):
    """opener(max_rows=...) -> a new store instance on the same database (another process, as it were)."""
    stores = []
    url = request.getfixturevalue("pg_url") if kind == "postgresql" else None

    def open_one(max_rows: int = 100):
        if kind == "sqlite":
            store = SqliteStore(str(tmp_path / "state" / "reports.sqlite"), max_rows=max_rows, clock=clock)
        else:
            from authmilter.reports.postgres import PostgresStore
            store = PostgresStore(url, max_rows=max_rows, clock=clock)
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        store.close()


@pytest.fixture
def store(opener):
    return opener()


def _counts(domain_day):
    return {stored.row.source_ip: stored.count for stored in domain_day.rows}


# ---------------------------------------------------------------- schema

def test_sqlite_is_created_with_its_directory_and_a_schema_version(tmp_path):
    path = tmp_path / "var" / "lib" / "authmilter" / "reports.sqlite"
    store = SqliteStore(str(path), max_rows=10)
    assert store.days(DAY) == []
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_newer_schema_is_refused(store, kind, pg_cluster_or_none, tmp_path):
    store.days(DAY)  # creates it
    store.close()
    if kind == "sqlite":
        conn = sqlite3.connect(tmp_path / "state" / "reports.sqlite")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
    else:
        dbname = urlsplit(store.url).path.lstrip("/")
        pg_cluster_or_none.psql(f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}", dbname)
    with pytest.raises(StoreError, match="newer than this authmilter"):
        store.days(DAY)


@pytest.fixture
def pg_cluster_or_none(kind, request):
    return request.getfixturevalue("pg_cluster") if kind == "postgresql" else None


# ---------------------------------------------------------------- counting

def test_counts_add_up_across_batches_and_reporters(store, clock):
    a, b = observation("example.org", DAY, source_ip="192.0.2.1"), observation("example.org", DAY,
                                                                              source_ip="192.0.2.2")
    assert store.add_counts("mx1", {a: 3, b: 1}, clock.now)
    assert store.add_counts("mx1", {a: 2}, clock.now)
    assert store.add_counts("mx2", {a: 10}, clock.now)
    day = store.peek("example.org", DAY)
    assert _counts(day) == {"192.0.2.1": 15, "192.0.2.2": 1}
    assert [row.row.source_ip for row in day.rows] == ["192.0.2.1", "192.0.2.2"]  # heaviest first
    assert day.policy.domain == "example.org" and day.rua == ("mailto:dmarc@example.org",)
    assert day.report_id == "" and day.status == "pending" and day.triggered
    assert store.days(DAY) == ["example.org"] and store.days("2026-11-17") == []


def test_a_replayed_batch_is_counted_once(store, clock):
    a = observation("example.org", DAY)
    assert store.add_counts("mx1", {a: 4}, clock.now, batch_ids=["j1", "j2"])
    assert not store.add_counts("mx1", {a: 4}, clock.now, batch_ids=["j2"])
    assert not store.add_counts("mx1", {a: 4}, clock.now, batch_ids=["j3", "j1"])
    assert store.add_counts("mx1", {a: 1}, clock.now, batch_ids=["j3"])
    assert _counts(store.peek("example.org", DAY)) == {"192.0.2.1": 5}


def test_row_cap_counts_the_excess_in_one_overflow_row_logged_once(opener, clock, caplog):
    store = opener(max_rows=10)
    caplog.set_level(logging.WARNING, "authmilter.reports")
    written = fill(store, domains=["flood.example"], day=DAY, rows_per_domain=25, reporter="mx1")
    written2 = fill(store, domains=["flood.example"], day=DAY, rows_per_domain=5, count=2, reporter="mx1",
                    first_ip=100)
    day = store.peek("flood.example", DAY)
    regular = [row for row in day.rows if not row.row.overflow]
    overflow = [row for row in day.rows if row.row.overflow]
    assert len(regular) == 10 and len(overflow) == 1
    assert sum(row.count for row in day.rows) == written[("flood.example", DAY)] + written2[("flood.example", DAY)]
    assert overflow[0].row.source_ip == "0.0.0.0" and overflow[0].row.reasons[0].type == "other"
    assert overflow[0].count == 15 + 10
    warnings = [r.getMessage() for r in caplog.records if "overflow row" in r.getMessage()]
    assert len(warnings) == 1 and "flood.example on 2026-11-18 has more than 10 distinct rows" in warnings[0]
    # Known rows keep counting past the cap, and other domains are untouched.
    known = day.rows[0].row
    store.add_counts("mx1", {observation("flood.example", DAY, source_ip=known.source_ip): 100}, clock.now)
    store.add_counts("mx1", {observation("quiet.example", DAY): 1}, clock.now)
    assert _counts(store.peek("flood.example", DAY))[known.source_ip] == 100 + 1
    assert len(store.peek("quiet.example", DAY).rows) == 1
    summary = {s.policy_domain: s for s in store.summary(DAY)}["flood.example"]
    assert summary.overflow == 25 and summary.messages == 25 + 10 + 100


def test_the_cap_holds_for_the_fleet_merged(opener, clock):
    store = opener(max_rows=10)
    fill(store, domains=["fleet.example"], day=DAY, rows_per_domain=8, count=5, reporter="mx1")
    fill(store, domains=["fleet.example"], day=DAY, rows_per_domain=8, count=1, reporter="mx2", first_ip=100)
    day = store.peek("fleet.example", DAY)
    assert len(day.rows) == 11 and day.rows[-1].row.overflow and day.rows[-1].count == 6
    assert sum(row.count for row in day.rows) == 8 * 5 + 8


# ---------------------------------------------------------------- which days are ready

def test_days_ready_waits_for_grace_and_for_every_reporter(store, clock):
    store.add_counts("mx1", {observation("a.example", DAY): 1}, END + 10)
    store.add_counts("mx2", {observation("b.example", DAY): 1}, END - 10)  # mx2 has not flushed past midnight
    assert store.days_ready(END + 30 * 60, HOUR, 12 * HOUR) == []        # grace not over
    assert store.days_ready(END + 2 * HOUR, HOUR, 12 * HOUR) == []       # mx2 still owes counts for DAY
    store.add_counts("mx2", {}, END + 5)                                  # mx2's heartbeat passes midnight
    assert store.days_ready(END + 2 * HOUR, HOUR, 12 * HOUR) == [("a.example", DAY), ("b.example", DAY)]


def test_a_silent_reporter_is_not_waited_for(store):
    store.add_counts("mx1", {observation("a.example", DAY): 1}, END + 10)
    # "gone" wrote at 23:00 and was never heard of again (a host that died without its journal).
    store.add_counts("gone", {observation("a.example", DAY, source_ip="192.0.2.7"): 1}, END - HOUR)
    assert store.days_ready(END + 2 * HOUR, HOUR, 12 * HOUR) == []
    assert store.days_ready(END + 11 * HOUR, HOUR, 12 * HOUR) == []
    assert store.days_ready(END + 11 * HOUR + 1, HOUR, 12 * HOUR) == [("a.example", DAY)]
    assert _counts(store.peek("a.example", DAY)) == {"192.0.2.1": 1, "192.0.2.7": 1}  # what it wrote counts


def test_days_without_a_trigger_are_not_offered(store):
    store.add_counts("mx1", {observation("spam.example", DAY, disposition="reject", triggers_report=False): 9,
                             observation("loop.example", DAY, to_report_mailbox=True): 1}, END + 10)
    assert store.days_ready(END + 2 * HOUR, HOUR, 12 * HOUR) == []
    assert not store.peek("spam.example", DAY).triggered
    store.add_counts("mx1", {observation("spam.example", DAY, source_ip="192.0.2.9"): 1}, END + 10)
    assert store.days_ready(END + 2 * HOUR, HOUR, 12 * HOUR) == [("spam.example", DAY)]


# ---------------------------------------------------------------- claiming and sending

def test_claim_is_exclusive_and_the_report_id_is_kept_for_retries(opener, clock):
    store, other = opener(), opener()
    store.add_counts("mx1", {observation("a.example", DAY): 2}, END + 10)
    first = store.claim("a.example", DAY, "sender1", 600)
    assert first is not None and first.report_id.isalnum() and len(first.report_id) == 32
    assert _counts(first) == {"192.0.2.1": 2}
    assert other.claim("a.example", DAY, "sender2", 600) is None          # leased
    assert store.days_ready(clock.now, HOUR, 12 * HOUR) == []
    store.record_built("a.example", DAY, first.report_id, b"\x1f\x8b exact bytes \x00\xff")
    store.mark_failed("a.example", DAY, "451 try later", retry_after=clock.now + 600)
    assert other.claim("a.example", DAY, "sender2", 600) is None          # waiting for its retry time
    clock.now += 601
    assert store.days_ready(clock.now, HOUR, 12 * HOUR) == [("a.example", DAY)]
    retry = other.claim("a.example", DAY, "sender2", 600)
    assert retry.report_id == first.report_id and retry.status == "failed"
    assert other.built_payload("a.example", DAY) == b"\x1f\x8b exact bytes \x00\xff"
    other.mark_sent("a.example", DAY)
    assert store.claim("a.example", DAY, "sender1", 600) is None
    assert store.days_ready(clock.now, HOUR, 12 * HOUR) == []
    summary = store.summary(DAY)[0]
    assert (summary.status, summary.report_id, summary.messages) == ("sent", first.report_id, 2)


def test_an_expired_lease_can_be_taken_over(opener, clock):
    store, other = opener(), opener()
    store.add_counts("mx1", {observation("a.example", DAY): 1}, END + 10)
    first = store.claim("a.example", DAY, "crashed-sender", 60)
    clock.now += 61
    second = other.claim("a.example", DAY, "sender2", 60)
    assert second is not None and second.report_id == first.report_id


def test_concurrent_claims_have_one_winner(opener, clock):
    setup = opener()
    domains = [f"d{n}.example" for n in range(20)]
    fill(setup, domains=domains, day=DAY, reporter="mx1")
    stores = [opener() for _ in range(6)]
    wins: list[tuple[str, str]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def sender(index: int) -> None:
        try:
            for domain in domains:
                got = stores[index].claim(domain, DAY, f"sender{index}", 600)
                if got is not None:
                    with lock:
                        wins.append((domain, f"sender{index}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert sorted(domain for domain, _ in wins) == sorted(domains)


def test_mark_status_is_final(store):
    store.add_counts("mx1", {observation("a.example", DAY): 1}, END + 10)
    store.mark_status("a.example", DAY, "no_destination", "rua= names no usable address")
    assert store.claim("a.example", DAY, "s", 60) is None
    summary = store.summary(DAY)[0]
    assert (summary.status, summary.reason) == ("no_destination", "rua= names no usable address")


# ---------------------------------------------------------------- keeping and pruning

def test_prune_forgets_done_and_untriggered_days_only(store, clock):
    old = "2026-10-01"
    old_end = day_bounds(old)[1]
    store.add_counts("mx1", {observation("sent.example", old): 1, observation("waiting.example", old): 1,
                             observation("quiet.example", old, triggers_report=False): 1,
                             observation("recent.example", DAY): 1}, old_end + 10)
    store.claim("sent.example", old, "s", 60)
    store.mark_sent("sent.example", old)
    store.add_counts("mx1", {observation("recent.example", DAY): 1}, END + 10)
    assert store.prune(14) == 2
    remaining = {(s.policy_domain, s.day) for s in store.summary()}
    assert remaining == {("waiting.example", old), ("recent.example", DAY)}  # unsent reports are kept


def test_postgres_down_is_a_store_error_and_the_store_reconnects(request, clock):
    cluster = request.getfixturevalue("pg_cluster")
    from authmilter.reports.postgres import PostgresStore
    store = PostgresStore(request.getfixturevalue("pg_url"), max_rows=10, clock=clock, connect_timeout=2)
    store.add_counts("mx1", {observation("a.example", DAY): 1}, END)
    cluster.stop()
    try:
        with pytest.raises(StoreError, match="PostgreSQL"):
            store.add_counts("mx1", {observation("a.example", DAY): 1}, END)
        with pytest.raises(StoreError):
            store.add_counts("mx1", {observation("a.example", DAY): 1}, END)
    finally:
        cluster.start()
    store.add_counts("mx1", {observation("a.example", DAY): 1}, END)
    assert _counts(store.peek("a.example", DAY)) == {"192.0.2.1": 2}
    store.close()
