"""MetricsObserver on its own: what a scrape of its registry shows for given verdicts, lookups and registrations.

The daemon-level tests (test_metrics.py) show the wiring; these tables pin the edge cases that real mail rarely
produces on demand: overrides nested in reasons, DKIM signatures past the cap, a reason that is not one of our
words, the report writer's registration.
"""

from __future__ import annotations

import ipaddress

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from authmilter.checks.dkim.check import DkimResult, DkimSignatureResult
from authmilter.checks.dmarc.check import DmarcResult
from authmilter.checks.iprev import IprevResult
from authmilter.context import Connection, Envelope, MessageContext
from authmilter.metrics import MetricsObserver, method_results, split_reason
from authmilter.renderer import collect_entries
from authmilter.observers import Judged
from authmilter.pipeline import results_of
from authmilter.resolver import Outcome
from authmilter.results import Action, Status, Verdict

CTX = MessageContext(Connection(ipaddress.ip_address("192.0.2.1"), helo="mail.example.org"),
                     Envelope("alice@example.org", ("bob@example.net",), "Q1"))


def scrape(observer: MetricsObserver) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(observer.registry).decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def judged(reason: str = "accept", action: Action = Action.ACCEPT, results: Results = results_of(), *,
           refused_rcpt: str | None = None, ms: float = 3.0) -> Judged:
    return Judged(CTX, results, Verdict(action, reason=reason), ms, refused_rcpt, collect_entries(results))


@pytest.mark.parametrize("reason, expected", [
    ("accept", ("accept", "", "")),
    ("dmarc_reject", ("dmarc_reject", "", "")),
    ("monitor:dmarc_reject", ("monitor", "monitor", "dmarc_reject")),
    ("trusted_forwarder:dmarc_quarantine", ("trusted_forwarder", "trusted_forwarder", "dmarc_quarantine")),
    ("postmaster:trusted_forwarder:dmarc_reject", ("postmaster", "postmaster", "dmarc_reject")),
    ("monitor:srs_bad_hash", ("monitor", "monitor", "srs_bad_hash")),
])
def test_split_reason(reason, expected):
    assert split_reason(reason) == expected


def test_messages_and_overrides_by_reason():
    observer = MetricsObserver()
    observer.observe(judged("dmarc_reject", Action.REJECT))
    observer.observe(judged("monitor:dmarc_reject"))
    observer.observe(judged("monitor:trusted_forwarder:dmarc_reject"))
    observer.observe(judged("srs_expired", Action.REJECT, refused_rcpt="SRS0=x=y=example.org=a@example.net"))
    samples = scrape(observer)
    assert value(samples, "authmilter_messages_total", action="reject", reason="dmarc_reject") == 1
    assert value(samples, "authmilter_messages_total", action="accept", reason="monitor") == 2
    assert value(samples, "authmilter_overrides_total", override="monitor", reason="dmarc_reject") == 2
    # A recipient refused at RCPT is not a message: its own counter, no end-of-message time.
    assert value(samples, "authmilter_refused_recipients_total", reason="srs_expired") == 1
    assert value(samples, "authmilter_eom_duration_seconds_count") == 3


def test_a_reason_that_is_not_one_of_our_words_becomes_other_and_the_words_are_capped():
    observer = MetricsObserver()
    observer.observe(judged("spf_fail for evil.example.org", Action.REJECT))
    observer.observe(judged("192.0.2.1", Action.REJECT))
    for n in range(100):  # a future bug that made reasons out of something unbounded
        observer.observe(judged(f"reason_{n}", Action.REJECT))
    samples = scrape(observer)
    reasons = {dict(labels)["reason"] for name, labels in samples if name == "authmilter_messages_total"}
    assert reasons == {f"reason_{n}" for n in range(64)} | {"other"}  # 64 words at most, then "other"
    assert value(samples, "authmilter_messages_total", action="reject", reason="other") == 2 + 36


def test_results_as_the_header_counts_them():
    dkim = DkimResult(signatures=(DkimSignatureResult(Status.PASS, domain="example.org"),
                                  DkimSignatureResult(Status.FAIL, domain="evil.example")), skipped=3)
    results = results_of(iprev=IprevResult(Status.PASS, client_ip="192.0.2.1"), dkim=dkim,
                      dmarc=DmarcResult(Status.PASS, from_domain="example.org"))
    assert list(method_results(collect_entries(results))) == [("iprev", Status.PASS), ("dkim", Status.PASS),
                                             ("dkim", Status.FAIL), ("dkim", Status.POLICY),
                                             ("dmarc", Status.PASS)]
    assert list(method_results(collect_entries(results_of(dkim=DkimResult())))) == [("dkim", Status.NONE)]
    assert list(method_results(collect_entries(results_of(skipped="authenticated", dkim=dkim)))) == []
    observer = MetricsObserver()
    observer.observe(judged(results=results, ms=1500.0))
    samples = scrape(observer)
    assert value(samples, "authmilter_results_total", method="dkim", result="fail") == 1
    assert value(samples, "authmilter_results_total", method="dkim", result="policy") == 1
    assert value(samples, "authmilter_eom_duration_seconds_bucket", le="1.0") == 0
    assert value(samples, "authmilter_eom_duration_seconds_bucket", le="2.5") == 1


def test_dns_lookups_cache_hits_and_unknown_types():
    observer = MetricsObserver()
    observer.dns_query("TXT", Outcome.ANSWER, 0.003)
    observer.dns_query("TXT", Outcome.TIMEOUT, 1.2)
    observer.dns_query("TXT", Outcome.ANSWER, None)
    observer.dns_query("HINFO", Outcome.NXDOMAIN, 0.001)
    samples = scrape(observer)
    assert value(samples, "authmilter_dns_queries_total", type="TXT", outcome="answer") == 1
    assert value(samples, "authmilter_dns_queries_total", type="TXT", outcome="timeout") == 1
    assert value(samples, "authmilter_dns_queries_total", type="other", outcome="nxdomain") == 1
    assert value(samples, "authmilter_dns_cache_hits_total", type="TXT") == 1
    assert value(samples, "authmilter_dns_query_duration_seconds_count", type="TXT") == 2
    assert value(samples, "authmilter_dns_query_duration_seconds_bucket", type="TXT", le="1.0") == 1


class WriterStats:
    def __init__(self, depth: int, written: int, dropped: int) -> None:
        self.queue_depth, self.rows_written, self.rows_dropped = depth, written, dropped


def test_report_writer_registration_is_read_at_each_scrape():
    observer = MetricsObserver()
    samples = scrape(observer)
    assert value(samples, "authmilter_report_queue_depth") == 0  # no writer registered: zeros
    current = WriterStats(3, 120, 2)
    observer.watch_report_writer(lambda: current)
    samples = scrape(observer)
    assert value(samples, "authmilter_report_queue_depth") == 3
    assert value(samples, "authmilter_report_rows_written_total") == 120
    assert value(samples, "authmilter_report_rows_dropped_total") == 2
    current = WriterStats(0, 121, 2)
    assert value(scrape(observer), "authmilter_report_rows_written_total") == 121
    observer.watch_report_writer(lambda: WriterStats(1, 5, 0))  # a reload rebuilt the writer: the last one wins
    assert value(scrape(observer), "authmilter_report_rows_written_total") == 5
    observer.watch_report_writer(None)
    assert value(scrape(observer), "authmilter_report_rows_written_total") == 0


def test_observer_failures_are_read_from_the_runtime_at_each_scrape():
    observer = MetricsObserver()
    counts = {"reports": 2}
    observer.watch_observer_failures(lambda: counts)
    assert value(scrape(observer), "authmilter_observer_failures_total", observer="reports") == 2
    counts["metrics"] = 1
    samples = scrape(observer)
    assert value(samples, "authmilter_observer_failures_total", observer="metrics") == 1
    assert value(samples, "authmilter_observer_failures_total", observer="reports") == 2


def test_two_observers_share_no_state():
    """A private registry each: nothing lands in prometheus_client's global one."""
    from prometheus_client import REGISTRY

    first, second = MetricsObserver(), MetricsObserver()
    first.observe(judged("dmarc_reject", Action.REJECT))
    assert value(scrape(second), "authmilter_messages_total", action="reject", reason="dmarc_reject") == 0
    assert not any(name.startswith("authmilter") for name in REGISTRY._names_to_collectors)
