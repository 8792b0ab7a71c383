"""MAIL FROM domain: null MX (RFC 7505) and domains with no MX, A or AAAA (RFC 5321 §5.1)."""

from __future__ import annotations

import pytest

from authmilter.checks.sender import check_sender_domain
from authmilter.context import Envelope
from authmilter.results import Dnssec
from testlab.fakedns import FakeDns

ZONE = {
    "nullmx.example": {"MX": [(0, ".")], "A": ["192.0.2.10"]},
    "nullmx-pref10.example": {"MX": [(10, ".")]},
    "mixed.example": {"MX": [(0, "."), (10, "mx.mixed.example")]},
    "mail.example": {"MX": [(10, "mx.mail.example")]},
    "aonly.example": {"A": ["192.0.2.20"]},
    "aaaaonly.example": {"AAAA": ["2001:db8::20"]},
    "txtonly.example": {"TXT": ["v=spf1 -all"]},
    "alias.example": {"CNAME": "mail.example"},
    "slowa.example": {"AAAA": ["2001:db8::21"]},
    "slowaaaa.example": {"TXT": ["x"]},
}
FAKE = dict(timeout={"timeout.example", ("slowa.example", "A"), ("slowaaaa.example", "AAAA")},
            servfail={"servfail.example"}, secure={"mail.example"})


@pytest.mark.parametrize("mail_from, null_mx, no_address, temporary, status, reason", [
    ("user@nullmx.example", True, False, False, "null_mx", "null MX published"),
    ("user@NullMX.Example.", True, False, False, "null_mx", "null MX published"),
    ("<user@nullmx.example>", True, False, False, "null_mx", "null MX published"),
    ("user@mail.example", False, False, False, "ok", ""),
    ("user@alias.example", False, False, False, "ok", ""),
    ("user@mixed.example", False, False, False, "ok", ""),
    ("user@nullmx-pref10.example", False, False, False, "ok", ""),
    ("user@aonly.example", False, False, False, "ok", ""),
    ("user@aaaaonly.example", False, False, False, "ok", ""),
    ("user@slowa.example", False, False, False, "ok", ""),             # AAAA answers, the A timeout is moot
    ("user@txtonly.example", False, True, False, "no_address", "no MX, A or AAAA record"),
    ("user@nowhere.example", False, True, False, "no_address", "domain does not exist"),
    ("user@bad..example", False, True, False, "no_address", "not a valid domain name"),
    ("user@timeout.example", False, False, True, "temperror", "MX lookup: timeout"),
    ("user@servfail.example", False, False, True, "temperror", "MX lookup: SERVFAIL"),
    ("user@slowaaaa.example", False, False, True, "temperror", "AAAA lookup: timeout"),
])
def test_sender_domain_table(mail_from, null_mx, no_address, temporary, status, reason):
    result = check_sender_domain(Envelope(mail_from), FakeDns(ZONE, **FAKE))
    assert (result.null_mx, result.no_address, result.temporary) == (null_mx, no_address, temporary)
    assert result.status == status
    assert result.reason == reason
    expected_log = {"sender_domain": status}
    if reason:
        expected_log["sender_domain_reason"] = reason
    assert result.log_fields() == expected_log


def test_null_sender_is_not_checked():
    dns = FakeDns(ZONE)
    assert check_sender_domain(Envelope(""), dns) is None
    assert dns.asked == []


def test_domain_is_lowercased_without_trailing_dot():
    result = check_sender_domain(Envelope("User@NullMX.Example."), FakeDns(ZONE))
    assert result.domain == "nullmx.example"


def test_nonexistent_domain_costs_one_query():
    dns = FakeDns(ZONE)
    check_sender_domain(Envelope("user@nowhere.example"), dns)
    assert dns.asked == [("nowhere.example", "MX")]


def test_implicit_mx_asks_a_then_aaaa():
    dns = FakeDns(ZONE)
    check_sender_domain(Envelope("user@txtonly.example"), dns)
    assert dns.asked == [("txtonly.example", "MX"), ("txtonly.example", "A"), ("txtonly.example", "AAAA")]


@pytest.mark.parametrize("mail_from, domain", [("user", ""), ("user@[192.0.2.1]", "[192.0.2.1]")])
def test_no_lookup_without_a_domain_name(mail_from, domain):
    dns = FakeDns(ZONE)
    result = check_sender_domain(Envelope(mail_from), dns)
    assert result.domain == domain
    assert result.status == "ok"
    assert dns.asked == []


def test_dnssec_status_is_carried():
    secure = check_sender_domain(Envelope("user@mail.example"), FakeDns(ZONE, secure={"mail.example"}))
    assert secure.dnssec is Dnssec.SECURE
    insecure = check_sender_domain(Envelope("user@nullmx.example"), FakeDns(ZONE))
    assert insecure.dnssec is Dnssec.INSECURE

