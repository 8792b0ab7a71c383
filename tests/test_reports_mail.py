"""The report message: one id everywhere a reader looks, the gzip attachment RFC 9990 names, stable bytes."""

from __future__ import annotations

import email
import email.policy
import gzip
import re

from authmilter.reports import mail, xmlreport
from authmilter.reports.model import DomainDay, PublishedPolicy, StoredRow
from tests.test_reports_xml import REPORTER, row

DAY = "2026-03-01"
BEGIN, END = 1772323200, 1772323200 + 86399


def domain_day(report_id="7hq2k9xz", domain="example.com") -> DomainDay:
    return DomainDay(domain, DAY, PublishedPolicy(domain, "reject"), (f"mailto:rua@{domain}",),
                     (StoredRow(row(), 4), StoredRow(row(source_ip="192.0.2.9"), 2)), report_id, "pending")


def built(report: DomainDay, recipients=("rua@example.com", "other@example.com")) -> bytes:
    document = xmlreport.build(report, REPORTER)
    attachment = mail.report_file(REPORTER.domain, report, document)
    return mail.build(report, REPORTER, recipients, attachment, now=BEGIN + 2 * 86400 + 3600)


def test_one_id_in_report_id_file_name_subject_and_message_id():
    message = email.message_from_bytes(built(domain_day()), policy=email.policy.default)
    subject = " ".join(str(message["Subject"]).split())
    match = re.fullmatch(r"Report Domain: (\S+) Submitter: (\S+) Report-ID: <([A-Za-z0-9]+)@(\S+)>", subject)
    assert match, subject
    assert match.group(1) == "example.com" and match.group(2) == "mx.example.net"
    subject_id = match.group(3)
    assert message["Message-ID"] == f"<{subject_id}@mx.example.net>"
    attachment = next(part for part in message.iter_attachments())
    assert attachment.get_content_type() == "application/gzip"
    name = attachment.get_filename()
    assert name == f"mx.example.net!example.com!{BEGIN}!{END}!{subject_id}.xml.gz"
    document = gzip.decompress(attachment.get_content())
    assert xmlreport.SchemaCheck.problems(document) == []
    assert f"<report_id>{subject_id}</report_id>".encode() in document
    assert subject_id == "7hq2k9xz"


def test_headers_and_text_part():
    raw = built(domain_day())
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["From"] == "Example Receiver <dmarc-reports@mx.example.net>"
    assert [a.addr_spec for a in message["To"].addresses] == ["rua@example.com", "other@example.com"]
    assert b"\r\nDate: Tue, 03 Mar 2026 01:00:00 +0000\r\n" in raw
    assert message["Auto-Submitted"] == "auto-generated"
    text = message.get_body(("plain",)).get_content()
    assert "example.com" in text and "Messages: 6 in 2 records" in text and "2026-03-01" in text
    # What goes to the MTA: CRLF line ends throughout, no line over 998 octets (RFC 5322 §2.1.1).
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_the_same_report_gives_the_same_bytes():
    # gzip without a time stamp: a rebuilt attachment is the same file (the stored message is what a retry
    # resends; this keeps even a rebuild honest).
    assert built(domain_day()) == built(domain_day())
    assert mail.compress(b"<x/>") == mail.compress(b"<x/>")
    assert gzip.decompress(mail.compress(b"<x/>")) == b"<x/>"


def test_idn_policy_domain_in_a_label_form():
    report = domain_day(domain="xn--bcher-kva.example")
    message = email.message_from_bytes(built(report, ("rua@xn--bcher-kva.example",)), policy=email.policy.default)
    assert "Report Domain: xn--bcher-kva.example " in " ".join(str(message["Subject"]).split())
    assert next(message.iter_attachments()).get_filename().startswith("mx.example.net!xn--bcher-kva.example!")


def test_a_non_ascii_org_name_is_encoded_and_reads_back():
    import dataclasses

    reporter = dataclasses.replace(REPORTER, org_name="Société Générale, Réception")
    report = domain_day()
    document = xmlreport.build(report, reporter)
    raw = mail.build(report, reporter, ("rua@example.com",), mail.report_file(reporter.domain, report, document),
                     now=BEGIN)
    assert raw.isascii()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["From"].addresses[0].display_name == "Société Générale, Réception"
    assert "from Société Générale, Réception for example.com" in message.get_body(("plain",)).get_content()
    assert gzip.decompress(next(message.iter_attachments()).get_content()) == document
