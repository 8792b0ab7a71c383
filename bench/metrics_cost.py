"""CPU cost of the metrics, in isolation (a measurement, not a test; run `.venv/bin/python -m bench.metrics_cost`).

`make bench` runs authmilter with and without [metrics] listen side by side, but a whole message costs about 2 ms
of CPU and the runs swing by +-10 %, far more than the counters can cost. This measures the counters alone, on
the milter's path, per message: one MetricsObserver.observe() of a typical verdict (iprev, SPF MAIL FROM and
HELO, one DKIM signature, DMARC) and the DNS hook told of ten lookups (six sent, four from the cache); and, off
that path, one scrape of the registry once those series exist. Best of several runs, process CPU time.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client import generate_latest  # noqa: E402

from authmilter.checks.dkim.check import DkimResult, DkimSignatureResult  # noqa: E402
from authmilter.checks.dmarc.check import DmarcResult  # noqa: E402
from authmilter.checks.iprev import IprevResult  # noqa: E402
from authmilter.checks.spf import SpfIdentityResult, SpfResult  # noqa: E402
from authmilter.context import Connection, Envelope, MessageContext  # noqa: E402
from authmilter.metrics import MetricsObserver  # noqa: E402
from authmilter.observers import Judged  # noqa: E402
from authmilter.pipeline import results_of  # noqa: E402
from authmilter.renderer import collect_entries  # noqa: E402
from authmilter.resolver import Outcome  # noqa: E402
from authmilter.results import Action, Status, Verdict  # noqa: E402

MESSAGES = 20000
RUNS = 5
LOOKUPS = (("PTR", Outcome.ANSWER, 0.0004), ("A", Outcome.ANSWER, 0.0003), ("TXT", Outcome.ANSWER, 0.0005),
           ("TXT", Outcome.NXDOMAIN, 0.0004), ("TXT", Outcome.ANSWER, 0.0006), ("MX", Outcome.ANSWER, 0.0004),
           ("TXT", Outcome.ANSWER, None), ("A", Outcome.ANSWER, None), ("AAAA", Outcome.NODATA, None),
           ("TXT", Outcome.ANSWER, None))


def typical() -> Judged:
    ctx = MessageContext(Connection(ipaddress.ip_address("192.0.2.1"), helo="mail.example.org"),
                         Envelope("alice@example.org", ("bob@example.net",), "Q1"))
    spf = SpfIdentityResult("mailfrom", "alice@example.org", "example.org", Status.PASS)
    helo = SpfIdentityResult("helo", "postmaster@mail.example.org", "mail.example.org", Status.NONE)
    results = results_of(iprev=IprevResult(Status.PASS, client_ip="192.0.2.1"), spf=SpfResult(spf, helo),
                      dkim=DkimResult((DkimSignatureResult(Status.PASS, domain="example.org"),)),
                      dmarc=DmarcResult(Status.PASS, from_domain="example.org"), dns_queries=10)
    return Judged(ctx, results, Verdict(Action.ACCEPT), 1.8, ar_entries=collect_entries(results))


def per_message_us(observer: MetricsObserver, judged: Judged) -> float:
    best = float("inf")
    for _ in range(RUNS):
        started = time.process_time()
        for _ in range(MESSAGES):
            observer.observe(judged)
            for rdtype, outcome, seconds in LOOKUPS:
                observer.dns_query(rdtype, outcome, seconds)
        best = min(best, time.process_time() - started)
    return best / MESSAGES * 1e6


def scrape_ms(observer: MetricsObserver) -> float:
    best = float("inf")
    for _ in range(RUNS):
        started = time.process_time()
        for _ in range(100):
            generate_latest(observer.registry)
        best = min(best, time.process_time() - started)
    return best / 100 * 1e3


def main() -> int:
    observer = MetricsObserver()
    judged = typical()
    per_message = per_message_us(observer, judged)
    text = generate_latest(observer.registry).decode()
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    print(f"metrics on the milter's path: {per_message:.1f} us CPU per message "
          f"(observe + {len(LOOKUPS)} DNS lookups)")
    print(f"one scrape of {series} series: {scrape_ms(observer):.2f} ms CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
