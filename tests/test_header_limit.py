"""[milter] max_header_bytes: past the cap the header is not kept whole, and the results say so instead of
guessing (dkim=permerror and dmarc=permerror "header limit"); [milter] header_limit_action decides the verdict."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from authmilter.config import Config, MilterSection, TrustSection
from authmilter.context import Connection, Envelope, Header, Message, MessageContext
from authmilter.judge import judge
from authmilter.results import Action
from testlab.fakedns import FakeDns
from tests.test_dkim import NOW, P, message_from_bytes, sign

ZONE = {
    "example.org": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
    "sel._domainkey.example.org": {"TXT": [f"v=DKIM1; k=rsa; p={P['rsa2048']}"]},
    "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject"]},
}
CLIENT = Connection(ipaddress.ip_address("192.0.2.1"), "", "mail.example.org")
RAW = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hi\r\n"
       b"Date: Mon, 01 Jan 2027 00:00:00 +0000\r\nMessage-ID: <h1@example.org>\r\n\r\nHello.\r\n")


def run(msg: Message, action: Action | None = None, rcpts=("bob@example.net",)):
    milter = MilterSection() if action is None else MilterSection(header_limit_action=action)
    cfg = Config(milter=milter, trust=TrustSection(networks=(), authenticated=False))
    ctx = MessageContext(CLIENT, Envelope("alice@example.org", rcpts, "QHL"), msg)
    return judge(ctx, FakeDns(ZONE), cfg, "mx.example.net", now=NOW)


def truncated(msg: Message, keep: int) -> Message:
    """What the adapter hands over when the cap fell after the first `keep` headers."""
    return dataclasses.replace(msg, headers=msg.headers[:keep], headers_truncated=True)


SIGNED = message_from_bytes(sign(RAW) + RAW)


def test_complete_header_passes_as_usual():
    result = run(SIGNED)
    assert result.verdict.action is Action.ACCEPT
    assert "dkim=pass" in result.ar_value and "dmarc=pass" in result.ar_value


def test_default_rejects_with_552_5_3_4():
    result = run(truncated(SIGNED, 2))
    assert (result.verdict.action, result.verdict.code, result.verdict.status, result.verdict.text,
            result.verdict.reason) == (Action.REJECT, "552", "5.3.4", "Message header size exceeds limit",
                                       "header_limit")


def test_accept_records_permerror_for_dkim_and_dmarc_not_a_missing_from():
    # The DKIM-Signature was kept, the From was not: neither "no From" nor a DKIM verdict would be true.
    result = run(truncated(SIGNED, 1), Action.ACCEPT)
    ar = result.ar_value.replace("\n\t", " ")
    assert result.verdict.action is Action.ACCEPT
    assert "dkim=permerror (header limit) header.d=example.org" in ar
    assert "dmarc=permerror (header limit" in ar
    assert "spf=pass" in ar
    assert "From" not in ar


def test_accept_with_no_signature_kept_still_says_dkim_permerror_not_none():
    plain = message_from_bytes(RAW)
    result = run(truncated(plain, 2), Action.ACCEPT)
    assert "dkim=permerror (header limit)" in result.ar_value
    assert "dkim=none" not in result.ar_value


def test_quarantine_holds_the_message():
    result = run(truncated(SIGNED, 3), Action.QUARANTINE)
    assert result.verdict.action is Action.QUARANTINE and result.verdict.reason == "header_limit"


def test_header_limit_comes_before_the_dmarc_from_rule():
    # A From past the cap would otherwise read as "exactly one From required".
    no_from = Message((Header(b"Subject", b" x"),), b"", headers_truncated=True)
    result = run(no_from)
    assert result.verdict.reason == "header_limit"


@pytest.mark.parametrize("value,expected", [("reject", Action.REJECT), ("accept", Action.ACCEPT),
                                            ("quarantine", Action.QUARANTINE)])
def test_config_key_parses(value, expected):
    from authmilter.config import parse_config_text

    cfg = parse_config_text(f"[milter]\nheader_limit_action = {value}\n", "test.ini")
    assert cfg.milter.header_limit_action is expected


def test_config_refuses_tempfail_for_the_header_limit():
    from authmilter.config import parse_config_text
    from authmilter.errors import ConfigError

    with pytest.raises(ConfigError, match="header_limit_action"):
        parse_config_text("[milter]\nheader_limit_action = tempfail\n", "test.ini")
