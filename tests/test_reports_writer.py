"""The recorder: exact counts through the queue and the writer thread, and no counted message lost when the store
goes away (journal, replay), at close (SIGTERM) or at the next start."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time

import pytest

from authmilter.errors import ConfigError
from authmilter.reports.journal import Journal
from authmilter.reports.postgres import PostgresStore
from authmilter.reports.record import RecordRules, observe
from authmilter.reports.sqlite import SqliteStore
from authmilter.reports.writer import ReportRecorder, report_observers
from tests.pgfixture import pg_cluster, pg_url  # noqa: F401
from tests.reports_helpers import cfg, judged

WAIT_SECONDS = 60.0


def reports_cfg(tmp_path, **keys):
    values = {"enabled": True, "org_name": "Example Receiver", "from_address": "dmarc-noreply@example.net",
              "database": str(tmp_path / "state" / "reports.sqlite"), "journal": str(tmp_path / "state" / "journal"),
              "reporter_id": "mx1", "flush_seconds": 0.5}
    values.update(keys)
    return cfg(reports=values)


@pytest.fixture(scope="module")
def messages():
    """Three kinds of judged message (each becomes one row): DKIM pass, DMARC reject, quarantine."""
    return [judged(signed=True), judged(signed=True, tamper=True), judged(author="x@quarantine.example")]


def wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stored_total(store) -> dict[str, int]:
    totals: dict[str, int] = {}
    for summary in store.summary():
        totals[summary.policy_domain] = totals.get(summary.policy_domain, 0) + summary.messages
    return totals


def observe_many(recorder, messages, per_kind: int, threads: int = 4) -> None:
    def work():
        for _ in range(per_kind // threads):
            for message in messages:
                recorder.observe(message)
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def test_identical_messages_are_counted_exactly_in_few_rows(tmp_path, messages):
    config = reports_cfg(tmp_path)
    recorder = ReportRecorder(config)
    observe_many(recorder, messages, per_kind=2000)
    recorder.close()
    store = SqliteStore(config.reports.database, max_rows=100)
    assert stored_total(store) == {"example.org": 4000, "quarantine.example": 2000}
    (summary,) = [s for s in store.summary() if s.policy_domain == "example.org"]
    day = store.peek("example.org", summary.day)
    assert sorted(row.count for row in day.rows) == [2000, 2000]
    stats = recorder.stats()
    assert stats["received"] == 6000 and stats["messages_written"] == 6000 and stats["dropped"] == 0
    assert stats["store_errors"] == 0 and stats["journal_pending"] == 0 and stats["queue_depth"] == 0
    # Few transactions for many messages: each flush writes one row per distinct key.
    assert stats["rows_written"] < 6000 / 10


def test_a_full_queue_drops_counts_and_logs_without_blocking(tmp_path, messages, caplog):
    caplog.set_level(logging.WARNING, "authmilter.reports")
    config = reports_cfg(tmp_path, queue_size=100)
    path = config.reports.database
    SqliteStore(path, max_rows=100).days("2026-01-01")  # create the file
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the writer's next transaction waits for this one
    try:
        recorder = ReportRecorder(config, store=SqliteStore(path, max_rows=100, busy_seconds=30))
        observe_many(recorder, messages[:1], per_kind=1000, threads=1)
        # The writer waits on the lock with what it took; the queue holds 100 more; the rest is dropped.
        assert recorder.dropped >= 1000 - 100 - recorder.received
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    recorder.close()
    stats = recorder.stats()
    assert stats["received"] + stats["dropped"] == 1000
    assert stored_total(SqliteStore(path, max_rows=100)) == {"example.org": stats["received"]}
    drops = [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()]
    assert len(drops) == 1 and "raise [reports] queue_size" in drops[0]


def test_sqlite_locked_during_a_run_counts_go_to_the_journal_and_come_back(tmp_path, messages, caplog):
    caplog.set_level(logging.INFO, "authmilter.reports")
    config = reports_cfg(tmp_path)
    path = config.reports.database
    recorder = ReportRecorder(config, store=SqliteStore(path, max_rows=100, busy_seconds=0.2))
    observe_many(recorder, messages, per_kind=100, threads=1)
    wait_for(lambda: recorder.messages_written == 300, "the first counts stored")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        observe_many(recorder, messages, per_kind=100, threads=1)
        wait_for(lambda: recorder.journaled == 300, "the counts journaled")
        assert Journal(config.reports.journal).pending()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    wait_for(lambda: recorder.messages_written == 600, "the journal replayed")
    assert not Journal(config.reports.journal).pending()
    recorder.close()
    assert stored_total(SqliteStore(path, max_rows=100)) == {"example.org": 400, "quarantine.example": 200}
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "store unavailable" in text and "database is locked" in text
    assert "300 message(s) from the journal" in text


def test_postgresql_down_during_a_run_none_lost(tmp_path, messages, pg_cluster, pg_url, caplog):
    caplog.set_level(logging.INFO, "authmilter.reports")
    config = reports_cfg(tmp_path, database=pg_url)
    recorder = ReportRecorder(config, store=PostgresStore(pg_url, max_rows=100, connect_timeout=2))
    observe_many(recorder, messages, per_kind=200)
    wait_for(lambda: recorder.messages_written == 600, "the first counts stored")
    pg_cluster.stop()
    try:
        observe_many(recorder, messages, per_kind=200)
        wait_for(lambda: recorder.journaled == 600, "the counts journaled")
    finally:
        pg_cluster.start()
    observe_many(recorder, messages, per_kind=200)
    wait_for(lambda: recorder.messages_written == 1800, "the journal replayed and the rest stored")
    recorder.close()
    store = PostgresStore(pg_url, max_rows=100)
    assert stored_total(store) == {"example.org": 1200, "quarantine.example": 600}
    store.close()
    assert recorder.stats()["store_errors"] >= 1 and recorder.stats()["lost"] == 0


def test_close_with_the_store_down_then_replay_at_the_next_start(tmp_path, messages, pg_cluster, pg_url, caplog):
    caplog.set_level(logging.INFO, "authmilter.reports")
    config = reports_cfg(tmp_path, database=pg_url, flush_seconds=300)  # nothing is written before close()
    recorder = ReportRecorder(config, store=PostgresStore(pg_url, max_rows=100, connect_timeout=2))
    observe_many(recorder, messages, per_kind=400)
    pg_cluster.stop()
    try:
        recorder.close()  # SIGTERM: the store cannot be reached, so the counts go to the journal
        assert recorder.journaled == 1200 and Journal(config.reports.journal).pending()
    finally:
        pg_cluster.start()
    restarted = ReportRecorder(config)  # the next start replays the journal
    wait_for(lambda: not Journal(config.reports.journal).pending(), "the replay at start-up")
    restarted.close()
    store = PostgresStore(pg_url, max_rows=100)
    assert stored_total(store) == {"example.org": 800, "quarantine.example": 400}
    store.close()


def test_a_replay_cut_short_after_the_commit_counts_nothing_twice(tmp_path, messages):
    config = reports_cfg(tmp_path)
    journal = Journal(config.reports.journal)
    recorder = ReportRecorder(config, store=SqliteStore(config.reports.database, max_rows=100))
    recorder.close()
    obs = [observe(message, recorder.rules, time.time()) for message in messages]
    for n in range(1, 450):  # three replay groups
        journal.append("mx1", {obs[n % 3]: n}, time.time())
    saved = tmp_path / "journal.copy"
    shutil.copy(journal.path, saved)
    store = SqliteStore(config.reports.database, max_rows=100)
    expected = sum(range(1, 450))
    assert journal.replay(store) == expected
    shutil.copy(saved, journal.path)  # as if the process died before the journal was emptied
    journal.append("mx1", {obs[0]: 7}, time.time())  # and the next run journaled more before the store came back
    assert journal.replay(store) == 7
    assert sum(stored_total(store).values()) == expected + 7


def test_a_torn_journal_line_is_skipped_and_logged(tmp_path, messages, caplog):
    caplog.set_level(logging.ERROR, "authmilter.reports")
    config = reports_cfg(tmp_path)
    journal = Journal(config.reports.journal)
    obs = observe(messages[0], RecordRules(), time.time())
    journal.append("mx1", {obs: 5}, time.time())
    with open(journal.path, "a") as handle:
        handle.write('{"batch":"x","reporter":"mx1","counts":[[')  # a crash in the middle of a write
    store = SqliteStore(config.reports.database, max_rows=100)
    assert journal.replay(store) == 5
    assert "line 2 is unreadable" in caplog.text


def test_a_full_disk_loses_counts_loudly(tmp_path, messages, caplog):
    caplog.set_level(logging.ERROR, "authmilter.reports")
    config = reports_cfg(tmp_path, journal="/dev/full", flush_seconds=300)
    path = config.reports.database
    SqliteStore(path, max_rows=100).days("2026-01-01")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        recorder = ReportRecorder(config, store=SqliteStore(path, max_rows=100, busy_seconds=0.2))
        observe_many(recorder, messages[:1], per_kind=10, threads=1)
        recorder.close()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert recorder.lost == 10
    assert "cannot write the journal /dev/full" in caplog.text and "10 counted message(s) lost" in caplog.text


def test_a_reload_keeps_the_recorder_when_reports_is_unchanged(tmp_path):
    config = reports_cfg(tmp_path)
    (first,) = report_observers(config)
    try:
        assert report_observers(config, (first,)) == (first,)
        changed = reports_cfg(tmp_path, flush_seconds=1.0)
        (second,) = report_observers(changed, (first,))
        assert second is not first
        second.close()
        assert report_observers(cfg(), (first,)) == ()
    finally:
        first.close()


def test_an_unwritable_journal_directory_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"\[reports\] journal: cannot create"):
        report_observers(reports_cfg(tmp_path, journal=str(blocker / "sub" / "journal")))


def test_the_metrics_read_the_report_writers_figures(tmp_path, messages):
    # runtime.build_observers registers the writer with the metrics: authmilter_report_* follow what it stored.
    from dataclasses import replace

    from prometheus_client import generate_latest

    from authmilter import metrics
    from authmilter.runtime import build_observers

    config = reports_cfg(tmp_path)
    config = replace(config, metrics=replace(config.metrics, listen="127.0.0.1:9"))
    observers = build_observers(config)
    counted = metrics.find(observers)
    recorder = next(o for o in observers if isinstance(o, ReportRecorder))
    try:
        for message in messages:
            recorder.observe(message)
        wait_for(lambda: recorder.gauges().rows_written == len(messages), "the writer to store the messages")
        scraped = generate_latest(counted.registry).decode()
        assert f"authmilter_report_rows_written_total {float(len(messages))}" in scraped
        assert "authmilter_report_rows_dropped_total 0.0" in scraped
        assert "authmilter_report_queue_depth 0.0" in scraped
    finally:
        recorder.close()
