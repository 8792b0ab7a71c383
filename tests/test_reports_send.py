"""`reports send` against a real SQLite store and a real SMTP server on loopback: who gets a report, exact counts,
retries byte for byte, reports that fail the schema kept, DNS errors waited out, --dry-run changing nothing."""

from __future__ import annotations

import email
import email.policy
import gzip
import io
import logging
import sqlite3
import xml.etree.ElementTree as ET

import pytest

from authmilter.reports import commands, send, smtp, xmlreport
from authmilter.reports.store import open_store
from authmilter.resolver import Resolver
from testlab.dnsserver import DnsServer, Fault
from testlab.smtpsink import SmtpSink
from tests.reportsdata import AFTER_GRACE, DAY, DAY_END, accepted_fail, config, observation, passing, rejected

NS = {"d": xmlreport.NAMESPACE}

ZONE = {
    "mx.example.net": [{"TXT": "v=spf1 ip4:127.0.0.0/8 -all"}],
    "example.com._report._dmarc.reports.example": [{"TXT": "v=DMARC1"}],
}


@pytest.fixture(scope="module")
def dns_server():
    with DnsServer(ZONE) as server:
        yield server


@pytest.fixture
def sink():
    with SmtpSink() as server:
        yield server


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path, dns_server, sink):
    dns_server.clear_faults()
    clock = Clock(AFTER_GRACE)
    cfg = config(str(tmp_path / "reports.sqlite"), nameserver=dns_server.nameserver, smtp_port=sink.port)
    store = open_store(cfg.reports, clock=clock)
    yield cfg, store, clock
    store.close()


def fill(store, observations, reporter="mx1", flushed_until=DAY_END + 60):
    counts: dict = {}
    for obs in observations:
        counts[obs] = counts.get(obs, 0) + 1
    store.add_counts(reporter, counts, flushed_until)


def run(cfg, store, clock, transport=None, day=None):
    resolver = Resolver(cfg.dns)
    transport = transport or smtp.SmtpTransport("127.0.0.1", cfg.reports.smtp_port, 10.0)
    try:
        sender = send.Sender(cfg, store, transport, resolver.for_message, clock=clock)
        return sender.run_day(day) if day else sender.run()
    finally:
        transport.close()
        resolver.close()


def report_of(message: bytes) -> tuple[email.message.EmailMessage, ET.Element, bytes]:
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    attachment = next(parsed.iter_attachments())
    document = gzip.decompress(attachment.get_content())
    return parsed, ET.fromstring(document), document


def records(root) -> dict[tuple[str, str, str], int]:
    """(source_ip, disposition, selector) -> count."""
    found = {}
    for record in root.findall("d:record", NS):
        selector = record.find("d:auth_results/d:dkim/d:selector", NS)
        key = (record.find("d:row/d:source_ip", NS).text,
               record.find("d:row/d:policy_evaluated/d:disposition", NS).text,
               selector.text if selector is not None else "")
        found[key] = int(record.find("d:row/d:count", NS).text)
    return found


def test_one_report_per_triggered_domain_with_exact_counts(setup, sink):
    cfg, store, clock = setup
    fill(store, [passing("example.com")] * 5 + [passing("example.com", ip="192.0.2.2")] * 3
         + [passing("example.com", selector="other")] * 2 + [rejected("example.com", ip="203.0.113.9")] * 4
         # rejects alone never trigger a report (spammers publish rua= to learn which receivers exist)
         + [rejected("spammer.example")] * 7
         # a fail we accepted does
         + [accepted_fail("accepted.example")] * 2
         # mail to a report mailbox we host never triggers one (report loops)
         + [passing("loop.example", to_report_mailbox=True)] * 3)
    results = run(cfg, store, clock)
    assert sorted((r.policy_domain, r.status) for r in results) == [("accepted.example", "sent"),
                                                                     ("example.com", "sent")]
    received = {m.rcpts: m for m in sink.wait_for(2)}
    assert set(received) == {("rua@example.com",), ("rua@accepted.example",)}
    message, root, document = report_of(received[("rua@example.com",)].data)
    assert xmlreport.SchemaCheck.problems(document) == []
    assert records(root) == {("192.0.2.1", "none", "sel"): 5, ("192.0.2.2", "none", "sel"): 3,
                             ("192.0.2.1", "none", "other"): 2, ("203.0.113.9", "reject", "sel"): 4}
    assert received[("rua@example.com",)].mail_from == "dmarc-reports@mx.example.net"
    _, accepted_root, _ = report_of(received[("rua@accepted.example",)].data)
    assert records(accepted_root) == {("192.0.2.1", "none", "sel"): 2}
    assert accepted_root.find(".//d:reason/d:type", NS).text == "local_policy"
    statuses = {s.policy_domain: s.status for s in store.summary(DAY)}
    assert statuses == {"example.com": "sent", "accepted.example": "sent", "spammer.example": "pending",
                        "loop.example": "pending"}
    # Sent is sent: the next run sends nothing.
    assert run(cfg, store, clock) == []
    assert len(sink.messages) == 2


def test_ids_match_between_store_xml_file_subject_and_message_id(setup, sink):
    cfg, store, clock = setup
    fill(store, [passing()])
    run(cfg, store, clock)
    message, root, _ = report_of(sink.wait_for(1)[0].data)
    report_id = store.summary(DAY)[0].report_id
    assert report_id.isalnum()
    assert root.find("d:report_metadata/d:report_id", NS).text == report_id
    assert next(message.iter_attachments()).get_filename().endswith(f"!{report_id}.xml.gz")
    assert f"Report-ID: <{report_id}@mx.example.net>" in " ".join(str(message["Subject"]).split())
    assert message["Message-ID"] == f"<{report_id}@mx.example.net>"


def test_the_mta_refusing_a_report_means_a_byte_identical_retry_later(setup, sink):
    cfg, store, clock = setup
    fill(store, [passing()] * 3)
    sink.refuse_next(1, "451 4.3.0 queue full, try again later")
    results = run(cfg, store, clock)
    assert [(r.status, "451" in r.detail) for r in results] == [("failed", True)]
    assert sink.messages == [] and len(sink.refused) == 1
    summary = store.summary(DAY)[0]
    assert summary.status == "failed" and "queue full" in summary.reason
    # Not before retry_minutes have passed...
    clock.now += 60
    assert run(cfg, store, clock) == []
    # ...then the very same bytes: same id, same Date, same file.
    clock.now += cfg.reports.retry_minutes * 60
    assert [r.status for r in run(cfg, store, clock)] == ["sent"]
    assert sink.wait_for(1)[0].data == sink.refused[0].data
    assert store.summary(DAY)[0].status == "sent"


def test_an_unreachable_mta_then_a_resend_of_the_stored_bytes(setup, sink, tmp_path):
    cfg, store, clock = setup
    fill(store, [passing()])
    nobody = smtp.SmtpTransport("127.0.0.1", _closed_port(), 2.0)
    assert [r.status for r in run(cfg, store, clock, transport=nobody)] == ["failed"]
    stored = store.built_payload("example.com", DAY)
    assert stored is not None
    clock.now += cfg.reports.retry_minutes * 60 + 1
    assert [r.status for r in run(cfg, store, clock)] == ["sent"]
    assert sink.wait_for(1)[0].data == stored


def test_a_report_failing_the_schema_is_logged_and_kept_never_sent(setup, sink, caplog):
    cfg, store, clock = setup
    fill(store, [observation(disposition="discard")] * 2)  # not an RFC 9990 disposition: a bug upstream
    with caplog.at_level(logging.ERROR, logger="authmilter.reports"):
        results = run(cfg, store, clock)
    assert [r.status for r in results] == ["invalid"]
    assert "fails the RFC 9990 schema" in caplog.text and "disposition" in caplog.text
    assert sink.messages == [] and sink.refused == []
    kept = store.peek("example.com", DAY)
    assert kept.status == "failed" and sum(r.count for r in kept.rows) == 2
    assert store.built_payload("example.com", DAY) is None
    assert "schema" in store.summary(DAY)[0].reason


def test_a_dns_error_while_verifying_waits_for_a_later_run(setup, sink, dns_server):
    cfg, store, clock = setup
    fill(store, [passing(rua=("mailto:rua@example.com", "mailto:dmarc@reports.example"))])
    dns_server.set_fault(Fault.SERVFAIL, "example.com._report._dmarc.reports.example")
    assert [r.status for r in run(cfg, store, clock)] == ["failed"]
    assert sink.messages == [] and "DNS error" in store.summary(DAY)[0].reason
    assert store.built_payload("example.com", DAY) is None  # nothing built: the destinations are not known
    dns_server.clear_faults()
    clock.now += cfg.reports.retry_minutes * 60 + 1
    assert [r.status for r in run(cfg, store, clock)] == ["sent"]
    assert sink.wait_for(1)[0].rcpts == ("rua@example.com", "dmarc@reports.example")


def test_no_destination_and_suppressed(setup, sink, tmp_path, dns_server):
    cfg, store, clock = setup
    fill(store, [passing("https.example", rua=("https://https.example/dmarc",)),
                 passing("unverified.example", rua=("mailto:x@nowhere.example",)),
                 passing("quiet.example")])
    cfg = config(cfg.reports.database, nameserver=dns_server.nameserver, smtp_port=sink.port,
                 suppress=("quiet.example",))
    results = {r.policy_domain: r for r in run(cfg, store, clock)}
    assert {domain: r.status for domain, r in results.items()} == {
        "https.example": "no_destination", "unverified.example": "no_destination", "quiet.example": "suppressed"}
    assert "not authorized" in results["unverified.example"].detail
    assert sink.messages == []
    assert run(cfg, store, clock) == []  # final: not tried again


def test_a_report_not_sent_within_give_up_days_is_given_up(setup, sink):
    cfg, store, clock = setup
    fill(store, [passing()])
    clock.now = DAY_END + cfg.reports.give_up_days * 86400 + 1
    assert [r.status for r in run(cfg, store, clock)] == ["given_up"]
    assert sink.messages == [] and store.summary(DAY)[0].status == "given_up"


def test_a_named_day_is_sent_before_the_grace_period_ends(setup, sink):
    cfg, store, clock = setup
    fill(store, [passing()])
    clock.now = DAY_END + 60  # within the hour of grace: not ready by itself
    assert run(cfg, store, clock) == []
    assert [r.status for r in run(cfg, store, clock, day=DAY)] == ["sent"]
    assert run(cfg, store, clock, day=DAY) == []


def _dump(path: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_dry_run_writes_the_files_and_changes_nothing(setup, sink, tmp_path):
    cfg, store, clock = setup
    fill(store, [passing()] * 4 + [passing("other.example")] + [rejected("spammer.example")])
    before = _dump(cfg.reports.database)
    out = io.StringIO()
    status = commands.send_command(cfg, day=None, dry_run=str(tmp_path / "out"), out=out, clock=clock)
    assert status == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(files) == 2 and files[0].startswith("mx.example.net!example.com!")
    assert files[1].startswith("mx.example.net!other.example!")
    document = gzip.decompress((tmp_path / "out" / files[0]).read_bytes())
    assert xmlreport.SchemaCheck.problems(document) == []
    assert records(ET.fromstring(document)) == {("192.0.2.1", "none", "sel"): 4}
    assert "nothing sent, the store unchanged" in out.getvalue()
    assert sink.messages == []
    assert _dump(cfg.reports.database) == before
    # The real run afterwards still sends both, with ids of its own.
    assert sorted(r.status for r in run(cfg, store, clock)) == ["sent", "sent"]


def test_dry_run_of_today_shows_the_rows_so_far(setup, sink, tmp_path):
    cfg, store, clock = setup
    fill(store, [passing()] * 2, flushed_until=DAY_END - 3600)
    clock.now = DAY_END - 1800  # the day is not over
    before = _dump(cfg.reports.database)
    status = commands.send_command(cfg, day=DAY, dry_run=str(tmp_path / "today"), out=io.StringIO(), clock=clock)
    assert status == 0
    (written,) = (tmp_path / "today").iterdir()
    assert records(ET.fromstring(gzip.decompress(written.read_bytes()))) == {("192.0.2.1", "none", "sel"): 2}
    assert _dump(cfg.reports.database) == before
    with pytest.raises(commands.DayError):  # a real send may not name a day that is not over
        commands.send_command(cfg, day=DAY, dry_run=None, out=io.StringIO(), clock=clock)


def test_send_command_summary_and_exit_status(setup, sink):
    cfg, store, clock = setup
    fill(store, [passing()] + [passing("second.example")])
    sink.refuse_next(1)
    out = io.StringIO()
    assert commands.send_command(cfg, day=None, dry_run=None, out=out, clock=clock) == commands.EX_TEMPFAIL
    assert out.getvalue() == "reports send: 1 sent, 1 failed (retried later)\n"
    clock.now += 3 * 3600
    out = io.StringIO()
    assert commands.send_command(cfg, day=None, dry_run=None, out=out, clock=clock) == 0
    assert out.getvalue() == "reports send: 1 sent\n"
    out = io.StringIO()
    assert commands.send_command(cfg, day=None, dry_run=None, out=out, clock=clock) == 0
    assert out.getvalue() == "reports send: nothing to send\n"


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
