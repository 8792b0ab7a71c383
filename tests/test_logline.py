"""The one log line per message: fields, order, and values a sender cannot use to forge keys or lines."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import pytest

from authmilter.checks.dmarc.check import DmarcResult
from authmilter.checks.iprev import IprevResult
from authmilter.checks.sender import SenderDomainResult
from authmilter.checks.spf import SpfIdentityResult, SpfResult
from authmilter.checks.srs import SrsInfo
from authmilter.context import Connection, Envelope, MessageContext
from authmilter.logline import MAX_VALUE, format_line, format_value
from authmilter.pipeline import results_of
from authmilter.results import ACCEPT, Action, Dnssec, Status, Verdict

PAIR = re.compile(r'([a-z0-9_]+)=("(?:[^"\\]|\\.)*"|[^\s"]+)')


def parse_line(line: str) -> dict[str, str]:
    """A strict logfmt reader: the pairs must cover the whole line, each key once."""
    pairs = PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, "the line is nothing but key=value pairs"
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), "no key twice"
    return {k: (re.sub(r"\\(.)", r"\1", v[1:-1]) if v.startswith('"') else v) for k, v in pairs}


def ctx(helo="mail.example.org", mail_from="user@example.org", rcpts=("a@example.net", "b@example.net"),
        ip="192.0.2.1") -> MessageContext:
    return MessageContext(Connection(ipaddress.ip_address(ip) if ip else None, helo=helo),
                          Envelope(mail_from, rcpts, queue_id="4AbCd"))


SPF_PASS = SpfResult(SpfIdentityResult("mailfrom", "user@example.org", "example.org", Status.PASS,
                                       dnssec=Dnssec.INSECURE),
                     SpfIdentityResult("helo", "postmaster@mail.example.org", "mail.example.org", Status.NONE))
FULL = results_of(
    iprev=IprevResult(Status.PASS, "192.0.2.1", "mail.example.org", dnssec=Dnssec.INSECURE),
    spf=SPF_PASS,
    sender=SenderDomainResult("example.org"),
    dmarc=DmarcResult(Status.PASS, "example.org", policy="reject", dnssec=Dnssec.INSECURE),
    dns_queries=7, dnssec=Dnssec.INSECURE,
)


def test_full_line_has_every_field_in_order():
    line = format_line(ctx(), FULL, ACCEPT, 12.34)
    fields = parse_line(line)
    assert list(fields)[:5] == ["queue_id", "client_ip", "helo", "mail_from", "rcpt_count"]
    assert list(fields)[-5:] == ["dnssec", "action", "reason", "dns_queries", "ms"]
    assert fields["queue_id"] == "4AbCd" and fields["client_ip"] == "192.0.2.1"
    assert fields["helo"] == "mail.example.org" and fields["mail_from"] == "user@example.org"
    assert fields["rcpt_count"] == "2"
    assert (fields["iprev"], fields["spf"], fields["spf_helo"], fields["dmarc"]) == ("pass", "pass", "none", "pass")
    assert fields["dkim"] == "-", "a method that did not run is still named"
    assert (fields["action"], fields["reason"], fields["dns_queries"], fields["ms"]) == ("accept", "accept", "7",
                                                                                           "12.3")


def test_reject_with_override_srs_and_forwarder():
    results = results_of(srs=SrsInfo("SRS0", "fwd.example.net", "user@example.org"), spf=SPF_PASS,
                      forwarder="network 203.0.113.0/24", dns_deadline_expired=True)
    verdict = Verdict(Action.QUARANTINE, reason="trusted_forwarder:dmarc_reject", overridden="trusted_forwarder")
    fields = parse_line(format_line(ctx(mail_from="SRS0=h=t=example.org=user@fwd.example.net"), results, verdict, 3))
    assert fields["srs_original"] == "user@example.org"
    assert fields["forwarder"] == "network 203.0.113.0/24"
    assert (fields["action"], fields["reason"], fields["overridden"]) == ("quarantine",
                                                                         "trusted_forwarder:dmarc_reject",
                                                                         "trusted_forwarder")
    assert fields["dns_deadline_expired"] == "yes"
    assert "reply" not in fields


def test_refusal_logs_the_reply_code():
    verdict = Verdict(Action.REJECT, "550", "5.7.1", "no", "dmarc_reject")
    fields = parse_line(format_line(ctx(), FULL, verdict, 1))
    assert fields["reply"] == "550 5.7.1"


def test_skipped_message_and_null_sender():
    fields = parse_line(format_line(ctx(mail_from="", ip="127.0.0.1"), results_of(skipped="trusted_network"),
                                    Verdict(Action.ACCEPT, reason="trusted_network"), 0.04))
    assert fields["mail_from"] == "<>" and fields["skipped"] == "trusted_network"
    assert (fields["spf"], fields["dkim"], fields["dmarc"], fields["iprev"]) == ("-", "-", "-", "-")
    assert fields["ms"] == "0.0"


HOSTILE = [
    "evil.example action=accept",
    "evil\r\nqueue_id=FAKE action=accept reason=x",
    'evil" action="accept',
    "evil\\",
    "evil\x00\x1b[31m",
    "evil\u202eelpmaxe",
    "\udcff\udcfe",
    "x" * 5000,
]


@pytest.mark.parametrize("field", ["helo", "mail_from"])
@pytest.mark.parametrize("evil", HOSTILE, ids=[repr(h)[:25] for h in HOSTILE])
def test_hostile_values_cannot_forge_fields_or_lines(field, evil):
    line = format_line(ctx(**{field: evil}), FULL, Verdict(Action.REJECT, "550", "5.7.1", "x", "dmarc_reject"), 1)
    assert "\n" not in line and "\r" not in line and "\x00" not in line and "\x1b" not in line
    assert "\u202e" not in line
    fields = parse_line(line)
    assert fields["action"] == "reject" and fields["queue_id"] == "4AbCd"
    assert len(fields[field]) <= MAX_VALUE * 10


@dataclass(frozen=True)
class GreedyResult:
    """A result whose log_fields tries to overwrite other fields."""

    def log_fields(self) -> dict[str, str]:
        return {"dmarc": "pass", "action": "accept", "queue_id": "x", "Bad Key!": "v"}

    def dnssec_statuses(self) -> tuple:
        return ()


def test_a_check_cannot_overwrite_fields():
    results = results_of(dmarc=GreedyResult())  # type: ignore[arg-type]
    fields = parse_line(format_line(ctx(), results, Verdict(Action.REJECT, "550", "5.7.1", "x", "r"), 1))
    assert (fields["action"], fields["queue_id"], fields["dmarc"]) == ("reject", "4AbCd", "pass")
    assert fields["bad_key_"] == "v"


@pytest.mark.parametrize("value,rendered", [
    ("plain", "plain"),
    ("", '""'),
    ("two words", '"two words"'),
    ('a"b', '"a\\"b"'),
    ("a\\b", '"a\\\\b"'),
    ("a\r\nb", '"a\\x0d\\x0ab"'),
    ("tab\there", '"tab\\x09here"'),
    ("bidi\u202e", '"bidi\\u202e"'),
    ("caf\u00e9", "caf\u00e9"),
    ("k=v", "k=v"),
    (42, "42"),
])
def test_format_value(value, rendered):
    assert format_value(value) == rendered


def test_format_value_is_bounded():
    assert len(format_value("y" * 10_000)) == MAX_VALUE
