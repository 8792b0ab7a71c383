"""DMARC aggregate reports, recording side (issue 10): what recording costs a message, and what the store takes.

    .venv/bin/python -m bench.reports [--messages 200000] [--rows 100000] [--no-postgresql]

1. Recording in isolation: record.observe() (Judged -> Observation) plus the bound check and put_nowait() on the
   queue, per message, for a typical message (one DKIM signature, SPF, DMARC pass) and one with five signatures;
   then the whole observer (ReportRecorder.observe) with its writer thread draining the queue into SQLite at the
   same time.
   Target: under 20 µs.
2. Writing 100,000 distinct rows (1,000 policy domains x 100 rows) in one transaction, and as ten flushes of
   10,000: SQLite (a file, synchronous=FULL) and PostgreSQL (a private cluster with fsync on, testlab/postgres.py).

The milter CPU per message with recording on and off, side by side, is part of `make bench` (the contender
"authmilter reports=on").
"""

from __future__ import annotations

import argparse
import ipaddress
import queue
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from authmilter.checks.dkim.check import DkimResult, DkimSignatureResult
from authmilter.checks.dmarc.check import DmarcResult
from authmilter.checks.spf import SpfIdentityResult, SpfResult
from authmilter.config import Config
from authmilter.context import Connection, Envelope, MessageContext
from authmilter.observers import Judged
from authmilter.pipeline import results_of
from authmilter.reports.record import RecordRules, observe
from authmilter.reports.sqlite import SqliteStore
from authmilter.reports.writer import ReportRecorder
from authmilter.results import Action, Status, Verdict
from testlab.reportstore import fill


def typical_judged(signatures: int = 1) -> Judged:
    """What the recorder sees after a DMARC pass through aligned DKIM (real result values, filled in)."""
    sigs = tuple(DkimSignatureResult(Status.PASS, domain="example.org", selector=f"s{n}", identity="@example.org",
                                     algorithm="rsa-sha256", key_bits=2048, key_type="rsa", key_queried=True)
                 for n in range(signatures))
    spf = SpfResult(SpfIdentityResult("mailfrom", "bounce@mail.example.org", "mail.example.org", Status.PASS),
                    SpfIdentityResult("helo", "postmaster@mail.example.org", "mail.example.org", Status.PASS))
    dmarc = DmarcResult(Status.PASS, from_domain="example.org", policy="reject", record_domain="example.org",
                        org_domain="example.org", p="reject", adkim="r", aspf="r",
                        rua=("mailto:dmarc@example.org",), spf_aligned="mail.example.org",
                        dkim_aligned="example.org", record="v=DMARC1; p=reject; rua=mailto:dmarc@example.org")
    ctx = MessageContext(Connection(ipaddress.ip_address("192.0.2.1"), helo="mail.example.org"),
                         Envelope("bounce@mail.example.org", ("bob@example.net",), "Q1"))
    return Judged(ctx, results_of(spf=spf, dkim=DkimResult(sigs), dmarc=dmarc), Verdict(Action.ACCEPT), 1.0)


def per_message_us(judged: Judged, messages: int, rounds: int = 5, chunk: int = 1000) -> float:
    """Median over rounds of record.observe + the bound check + put_nowait, in µs per message. The queue is
    emptied between chunks, untimed, as the writer thread would: a queue that only grows would time the garbage
    collector walking 200,000 live observations instead."""
    rules = RecordRules()
    times = []
    for _ in range(rounds):
        q: queue.SimpleQueue = queue.SimpleQueue()  # as ReportRecorder: the bound is a qsize() check
        now = time.time()
        elapsed = 0.0
        for _ in range(messages // chunk):
            started = time.perf_counter()
            for _ in range(chunk):
                observation = observe(judged, rules, now)
                if q.qsize() < chunk:
                    q.put_nowait(observation)
            elapsed += time.perf_counter() - started
            while not q.empty():
                q.get_nowait()
        times.append(elapsed / (messages // chunk * chunk) * 1e6)
    return statistics.median(times)


def recorder_us(tmp: Path, judged: Judged, messages: int) -> tuple[float, dict]:
    """ReportRecorder.observe() with the writer thread running against SQLite, in µs per message."""
    base = Config()
    cfg = replace(base, reports=replace(base.reports, enabled=True, org_name="bench", from_address="d@bench.example",
                                        database=str(tmp / "recorder.sqlite"), journal=str(tmp / "journal"),
                                        reporter_id="bench", queue_size=messages + 1, flush_seconds=1.0))
    recorder = ReportRecorder(cfg)
    try:
        started = time.perf_counter()
        for _ in range(messages):
            recorder.observe(judged)
        elapsed = time.perf_counter() - started
    finally:
        recorder.close()
    return elapsed / messages * 1e6, recorder.stats()


def write_seconds(store, rows: int, batches: int, domains: int = 1000) -> float:
    per_domain = rows // domains // batches
    names = [f"d{n}.example" for n in range(domains)]
    started = time.perf_counter()
    for batch in range(batches):
        fill(store, domains=names, day="2026-11-18", rows_per_domain=per_domain, reporter=f"bench{batch}",
             batch_rows=rows)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reports")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--no-postgresql", action="store_true")
    args = parser.parse_args(argv)

    print("recording cost per message (target < 20 µs)")
    for signatures in (1, 5):
        cost = per_message_us(typical_judged(signatures), args.messages)
        print(f"  record.observe + put_nowait, {signatures} DKIM signature(s): {cost:6.2f} µs")
    with tempfile.TemporaryDirectory(prefix="authmilter-bench-reports-") as tmp:
        cost, stats = recorder_us(Path(tmp), typical_judged(1), args.messages)
        print(f"  ReportRecorder.observe, writer thread running:      {cost:6.2f} µs "
              f"({stats['messages_written']} messages stored, {stats['dropped']} dropped)")

        print(f"writing {args.rows:,} distinct rows (1,000 policy domains)")
        for batches in (1, 10):
            store = SqliteStore(str(Path(tmp) / f"rows{batches}.sqlite"), max_rows=10_000)
            seconds = write_seconds(store, args.rows, batches)
            store.close()
            print(f"  SQLite      {batches:2d} transaction(s): {seconds:6.2f} s")
        if not args.no_postgresql:
            from authmilter.reports.postgres import PostgresStore
            from testlab.postgres import PostgresCluster
            with PostgresCluster(durable=True, lifetime=1200) as pg:
                for batches in (1, 10):
                    store = PostgresStore(pg.create_database(f"rows{batches}"), max_rows=10_000)
                    seconds = write_seconds(store, args.rows, batches)
                    store.close()
                    print(f"  PostgreSQL  {batches:2d} transaction(s): {seconds:6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
