"""parsedmarc, what domain owners run on the reports they get, reads ours: the whole report mail, offline (it looks
nothing up: an audit hook sees no socket opened while it parses), with the counts we sent."""

from __future__ import annotations

import sys
import threading

import pytest

from authmilter.reports import mail, xmlreport
from authmilter.reports.model import DkimAuth, RowKey, StoredRow
from tests.test_reports_mail import built, domain_day
from tests.test_reports_xml import HOSTILE, REPORTER, VARIED, report

parsedmarc = pytest.importorskip("parsedmarc")

_NETWORK_EVENTS = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
                   "socket.sendto", "urllib.Request")
_watch = threading.local()


def _audit(event, args):
    seen = getattr(_watch, "events", None)
    if seen is not None and event in _NETWORK_EVENTS:
        seen.append((event, args))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only records while a test watches


def parse_offline(fn, *args, **kwargs):
    _watch.events = []
    try:
        result = fn(*args, offline=True, always_use_local_files=True, **kwargs)
        assert _watch.events == [], f"parsedmarc reached for the network: {_watch.events}"
        return result
    finally:
        _watch.events = None


def test_parsedmarc_reads_the_report_mail_with_our_counts():
    report_day = domain_day()
    parsed = parse_offline(parsedmarc.parse_report_email, built(report_day))
    assert parsed["report_type"] == "aggregate"
    aggregate = parsed["report"]
    assert aggregate["report_metadata"]["report_id"] == report_day.report_id
    assert aggregate["report_metadata"]["org_name"] == "Example Receiver"
    assert aggregate["report_metadata"]["begin_date"] == "2026-03-01 00:00:00"
    assert aggregate["policy_published"]["domain"] == "example.com"
    assert aggregate["policy_published"]["p"] == "reject"
    assert {(r["source"]["ip_address"], r["count"]) for r in aggregate["records"]} == \
        {(stored.row.source_ip, stored.count) for stored in report_day.rows}


def test_parsedmarc_reads_varied_and_hostile_rows():
    hostile_row = RowKey("198.51.100.7", "quarantine", "fail", "fail", (), "example.com", HOSTILE, "",
                         (DkimAuth(f"d{HOSTILE}", HOSTILE, "fail"),), ())
    rows = VARIED + [StoredRow(hostile_row, 13)]
    document = xmlreport.build(report(rows), REPORTER)
    assert xmlreport.SchemaCheck.problems(document) == []
    aggregate = parse_offline(parsedmarc.parse_aggregate_report_file,
                              mail.compress(document))
    by_ip_count = {(r["source"]["ip_address"], r["count"]) for r in aggregate["records"]}
    assert by_ip_count == {(stored.row.source_ip, stored.count) for stored in rows}
    assert sum(r["count"] for r in aggregate["records"]) == xmlreport.messages(report(rows))
    hostile = next(r for r in aggregate["records"] if r["count"] == 13)
    assert hostile["policy_evaluated"]["disposition"] == "quarantine"
    assert hostile["auth_results"]["dkim"][0]["selector"].startswith("sel")
    reasons = {reason["type"] for r in aggregate["records"] for reason in r["policy_evaluated"]
               ["policy_override_reasons"]}
    assert {"local_policy", "policy_test_mode", "trusted_forwarder", "other"} <= reasons
