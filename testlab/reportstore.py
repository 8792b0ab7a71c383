"""Filling a report store with rows, for tests and benches of the sending side (and of the store itself).

    store = open_store(section)                                  # or SqliteStore(path, max_rows=...)
    obs = observation("example.org", "2026-01-02", source_ip="192.0.2.1", dkim="pass")
    store.add_counts("mx1", {obs: 3}, flushed_until=time.time())
    fill(store, domains=["a.example", "b.example"], day="2026-01-02", rows_per_domain=5, reporter="mx1")
        -> {("a.example", "2026-01-02"): 5 * count, ...}  (messages written per domain and day)

Every row written by fill() is distinct (source IPs 10.x.y.z from a counter), passes DMARC through aligned DKIM
unless told otherwise, and triggers a report; the high-water mark of `reporter` is moved past the end of the day,
so days_ready() offers the day once its grace period is over.
"""

from __future__ import annotations

import calendar
import ipaddress
import time
from collections.abc import Iterable

from authmilter.reports.model import DkimAuth, Observation, Override, PublishedPolicy, RowKey, SpfAuth


def observation(domain: str, day: str, *, source_ip: str = "192.0.2.1", dkim: str = "pass", spf: str = "fail",
                disposition: str = "none", selector: str = "s1", rua: tuple[str, ...] | None = None,
                policy: str = "none", reasons: tuple[Override, ...] = (), triggers_report: bool = True,
                to_report_mailbox: bool = False, envelope_from: str | None = None) -> Observation:
    row = RowKey(source_ip, disposition, dkim, spf, reasons, domain,
                 domain if envelope_from is None else envelope_from, "",
                 (DkimAuth(domain, selector, "pass" if dkim == "pass" else "fail"),),
                 (SpfAuth(domain, "pass" if spf == "pass" else "fail"),))
    return Observation(day, domain, PublishedPolicy(domain, policy),
                       rua if rua is not None else (f"mailto:dmarc@{domain}",), row, triggers_report,
                       to_report_mailbox)


def fill(store, *, domains: Iterable[str], day: str, rows_per_domain: int = 1, count: int = 1,
         reporter: str = "mx1", batch_rows: int = 20000, first_ip: int = 1,
         **fields) -> dict[tuple[str, str], int]:
    """Write `rows_per_domain` distinct rows of `count` messages per domain, in batches of `batch_rows`; the
    source IPs are 10.0.0.0 + first_ip, + first_ip + 1... (give another first_ip for rows distinct from an earlier
    fill)."""
    end = calendar.timegm(time.strptime(day, "%Y-%m-%d")) + 86400
    written: dict[tuple[str, str], int] = {}
    batch: dict[Observation, int] = {}
    serial = first_ip - 1
    for domain in domains:
        for _ in range(rows_per_domain):
            serial += 1
            ip = str(ipaddress.IPv4Address(0x0A000000 + serial))
            batch[observation(domain, day, source_ip=ip, **fields)] = count
            written[(domain, day)] = written.get((domain, day), 0) + count
            if len(batch) >= batch_rows:
                store.add_counts(reporter, batch, end)
                batch = {}
    store.add_counts(reporter, batch, end)
    return written
