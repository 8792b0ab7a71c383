"""Issue 14: two spoofs that keep a valid DKIM signature while changing what the reader sees.

- A second Subject (Date, To...) on top of a signed message: the signature covers the lower one (RFC 6376 §5.4.2),
  mail readers show the upper one ("Splitting the email atom", 2024). Refused with 550 5.7.1 naming the header,
  or accepted and recorded ([policy] duplicate_headers_action).
- A signature with l= and content appended after it (Zone.eu advisory 2024; "Composition Kills" A16): dkim=policy
  "unsigned content after l=", so DMARC does not pass through it, unless [dkim] accept_partial_body.

Each spoof goes through the real daemon over the milter protocol (testlab.milterclient) with real DNS
(testlab.dnsserver); the rules themselves are tables over judge() and FakeDns. The Postfix cases are in
tests/e2e/test_e2e_spoofs.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from authmilter.checks.dkim.body import BodyCanon, canonicalize
from authmilter.checks.singletons import DuplicateHeaders, find_duplicates
from authmilter.config import Config, DkimSection, DmarcSection, PolicySection, TrustSection, parse_config_text
from authmilter.context import Connection, Envelope, MessageContext
from authmilter.errors import ConfigError
from authmilter.judge import judge
from authmilter.results import Action, Status
from testlab.daemonrunner import DaemonRunner
from testlab.dnsserver import DnsServer
from testlab.fakedns import FakeDns
from testlab.lab import parse_log_fields
from testlab.milterclient import MilterClient, split_message
from tests.test_dkim import ED25519, NOW, P, message_from_bytes, sign

AUTHSERV = "mx.example.net"
STRANGER = "203.0.113.9"   # designated by nobody: DMARC can only pass through DKIM
KEY = f"v=DKIM1; k=ed25519; p={P['ed25519']}"
ZONE = {
    "example.org": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "_dmarc.example.org": [{"TXT": "v=DMARC1; p=reject"}],
    "ed._domainkey.example.org": [{"TXT": KEY}],
    "none.example": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "_dmarc.none.example": [{"TXT": "v=DMARC1; p=none"}],
    "ed._domainkey.none.example": [{"TXT": KEY}],
}
FAKE_ZONE = {name: {rtype: [value] for record in records for rtype, value in record.items()}
             for name, records in ZONE.items()}

BODY = b"Dear Bob,\r\n\r\nthe quarterly figures are attached.\r\n\r\nAlice\r\n"
APPENDED = b"\r\nP.S. Our bank details have changed: please pay IBAN XX00 0000 0000 to settle.\r\n"
SPOOFED_SUBJECT = b"Subject: Urgent: our bank details have changed\r\n"


def raw_message(domain: str = "example.org", subject: bytes = b"Subject: Quarterly figures\r\n",
                body: bytes = BODY) -> bytes:
    return (f"From: Alice <alice@{domain}>\r\nTo: bob@example.net\r\n".encode() + subject
            + b"Date: Mon, 01 Feb 2027 09:00:00 +0000\r\n"
            + f"Message-ID: <q1@{domain}>\r\n\r\n".encode() + body)


def signed(raw: bytes, domain: str = "example.org", limit: int | None = None) -> bytes:
    return sign(raw, selector="ed", domain=domain, key=ED25519, algorithm="ed25519-sha256", limit=limit) + raw


def whole_body_length(raw: bytes) -> int:
    """l= covering every canonical octet (relaxed, as sign() signs)."""
    return len(canonicalize(raw.partition(b"\r\n\r\n")[2], BodyCanon.RELAXED))


def l_signed(domain: str = "example.org") -> bytes:
    """A signer that puts l= on its own whole body: legitimate, until someone appends."""
    raw = raw_message(domain)
    return signed(raw, domain, limit=whole_body_length(raw))


SUBJECT_SPOOF = SPOOFED_SUBJECT + signed(raw_message())
SUBJECT_CONTROL = signed(raw_message())
L_SPOOF = l_signed() + APPENDED
L_CONTROL = l_signed()


# ---------------------------------------------------------------- the fact: which singletons repeat

@pytest.mark.parametrize("headers, names", [
    (["Subject", "Subject"], ("Subject",)),
    (["subject", "SUBJECT"], ("Subject",)),                      # RFC 5322 §1.2.2: names are case-insensitive
    (["Date", "To", "Cc", "Date"], ("Date",)),
    (["Sender", "sender", "Reply-To", "REPLY-TO", "Message-ID", "message-id"], ("Sender", "Reply-To", "Message-ID")),
    (["In-Reply-To", "In-Reply-To", "References", "references"], ("In-Reply-To", "References")),
    (["To", "to", "cc", "Cc", "Subject", "Subject"], ("Subject", "To", "Cc")),
    # Fields that may repeat, or are not this module's business.
    (["Received", "Received", "Comments", "Comments", "Keywords", "Keywords", "Resent-Date", "Resent-Date",
      "Bcc", "Bcc", "DKIM-Signature", "DKIM-Signature", "From", "From"], ()),
    (["Subject", "Date", "To", "Cc", "Sender", "Reply-To", "Message-ID", "In-Reply-To", "References"], ()),
])
def test_duplicates_found_by_name_case_insensitively(headers, names):
    raw = b"".join(f"{name}: x\r\n".encode() for name in headers) + b"\r\nbody\r\n"
    assert find_duplicates(message_from_bytes(raw)).names == names


@pytest.mark.parametrize("names, text", [
    (("Subject",), "multiple Subject headers"),
    (("Subject", "Date"), "multiple Subject and Date headers"),
    (("Subject", "Date", "To"), "multiple Subject, Date and To headers"),
])
def test_description_names_every_repeated_header(names, text):
    assert DuplicateHeaders(names).describe() == text


# ---------------------------------------------------------------- the rules, over judge() and FakeDns

CHECKED = Config(trust=TrustSection(networks=(), authenticated=False))


def judged(raw: bytes, cfg: Config = CHECKED, *, ip: str = STRANGER, auth: str | None = None):
    conn = Connection(ipaddress.ip_address(ip), "", "relay.example", auth)
    ctx = MessageContext(conn, Envelope("alice@example.org", ("bob@example.net",), "QSPOOF"), message_from_bytes(raw))
    return judge(ctx, FakeDns(FAKE_ZONE), cfg, AUTHSERV, now=NOW)


def with_policy(**kw) -> Config:
    return dataclasses.replace(CHECKED, policy=PolicySection(**kw))


def test_extra_subject_on_a_signed_message_is_refused_naming_subject():
    verdict = judged(SUBJECT_SPOOF).verdict
    assert (verdict.action, verdict.code, verdict.status, verdict.reason) == (
        Action.REJECT, "550", "5.7.1", "duplicate_headers")
    assert verdict.text == "Message is not RFC 5322 compliant: multiple Subject headers"


def test_every_repeated_header_is_named_in_the_reply():
    raw = b"Date: Tue, 02 Feb 2027 00:00:00 +0000\r\n" + SUBJECT_SPOOF
    assert judged(raw).verdict.text == "Message is not RFC 5322 compliant: multiple Subject and Date headers"


def test_quarantine_holds_it():
    verdict = judged(SUBJECT_SPOOF, with_policy(duplicate_headers_action=Action.QUARANTINE)).verdict
    assert (verdict.action, verdict.reason) == (Action.QUARANTINE, "duplicate_headers")


def test_accept_records_beside_dmarc_and_leaves_the_results_alone():
    result = judged(SUBJECT_SPOOF, with_policy(duplicate_headers_action=Action.ACCEPT))
    ar = result.ar_value.replace("\n\t", " ")
    assert result.verdict.action is Action.ACCEPT and result.verdict.reason == "accept"
    assert "dkim=pass (256-bit ed25519 key" in ar
    assert "dmarc=pass (p=reject sp=reject dis=none; dnssec=insecure; multiple Subject headers)" in ar
    assert result.results.get("singletons").log_fields() == {"duplicate_headers": "subject"}


def test_accept_without_dmarc_records_beside_dkim():
    cfg = dataclasses.replace(with_policy(duplicate_headers_action=Action.ACCEPT), dmarc=DmarcSection(enabled=False))
    ar = judged(SUBJECT_SPOOF, cfg).ar_value.replace("\n\t", " ")
    assert "dkim=pass (256-bit ed25519 key; dnssec=insecure; multiple Subject headers)" in ar


def test_monitor_mode_accepts_and_keeps_the_would_be_reason():
    verdict = judged(SUBJECT_SPOOF, with_policy(enforce=False)).verdict
    assert (verdict.action, verdict.reason) == (Action.ACCEPT, "monitor:duplicate_headers")


def test_a_repeated_from_is_still_the_from_rule():
    raw = b"From: mallory@evil.example\r\n" + SUBJECT_SPOOF
    assert judged(raw).verdict.reason == "dmarc_from_error"


@pytest.mark.parametrize("ip, auth, reason", [("127.0.0.1", None, "trusted_network"),
                                              (STRANGER, "alice", "authenticated")])
def test_trusted_and_authenticated_clients_are_not_checked_as_for_a_repeated_from(ip, auth, reason):
    # The same path as a repeated From: mail that is not checked is not refused for its header either.
    cfg = Config()
    for raw in (SUBJECT_SPOOF, b"From: mallory@evil.example\r\n" + SUBJECT_CONTROL):
        verdict = judged(raw, cfg, ip=ip, auth=auth).verdict
        assert (verdict.action, verdict.reason) == (Action.ACCEPT, reason)


def test_l_spoof_is_dkim_policy_and_dmarc_does_not_pass():
    result = judged(L_SPOOF)
    (signature,) = result.results.dkim.signatures
    assert (signature.status, signature.reason) == (Status.POLICY, "unsigned content after l=")
    assert result.results.dmarc.status is Status.FAIL
    assert (result.verdict.action, result.verdict.reason) == (Action.REJECT, "dmarc_reject")


def test_l_spoof_accepted_by_config_passes_as_before():
    cfg = dataclasses.replace(CHECKED, dkim=DkimSection(accept_partial_body=True))
    result = judged(L_SPOOF, cfg)
    assert result.verdict.action is Action.ACCEPT
    assert "dkim=pass" in result.ar_value and "dmarc=pass" in result.ar_value


@pytest.mark.parametrize("raw", [SUBJECT_CONTROL, L_CONTROL], ids=["single Subject", "l= is the whole body"])
def test_legitimate_controls_pass(raw):
    result = judged(raw)
    assert result.verdict.action is Action.ACCEPT
    assert "dkim=pass" in result.ar_value and "dmarc=pass" in result.ar_value
    assert "multiple" not in result.ar_value


@pytest.mark.parametrize("text, expected", [
    ("[policy]\nduplicate_headers_action = accept\n", Action.ACCEPT),
    ("[policy]\nduplicate_headers_action = Quarantine\n", Action.QUARANTINE),
    ("", Action.REJECT),
])
def test_duplicate_headers_action_parses(text, expected):
    assert parse_config_text(text, "t.ini").policy.duplicate_headers_action is expected


def test_tempfail_is_refused_for_a_permanent_defect():
    with pytest.raises(ConfigError, match=r"t.ini: \[policy\] duplicate_headers_action"):
        parse_config_text("[policy]\nduplicate_headers_action = tempfail\n", "t.ini")


@pytest.mark.parametrize("text, expected", [("", False), ("[dkim]\naccept_partial_body = yes\n", True)])
def test_accept_partial_body_parses(text, expected):
    assert parse_config_text(text, "t.ini").dkim.accept_partial_body is expected


# ---------------------------------------------------------------- through the daemon, over the milter protocol

ACCEPTING = {"policy": {"duplicate_headers_action": "accept"}, "dkim": {"accept_partial_body": "yes"}}


@pytest.fixture(scope="module")
def dns():
    with DnsServer(ZONE, lifetime=240) as server:
        yield server


@pytest.fixture(scope="module")
def strict_daemon(dns, tmp_path_factory):
    with DaemonRunner(tmp_path_factory.mktemp("strict"), dns_server=dns, authserv_id=AUTHSERV, lifetime=200) as d:
        yield d


@pytest.fixture(scope="module")
def accepting_daemon(dns, tmp_path_factory):
    with DaemonRunner(tmp_path_factory.mktemp("accepting"), dns_server=dns, authserv_id=AUTHSERV, extra=ACCEPTING,
                      lifetime=200) as d:
        yield d


_QUEUE_IDS = iter(range(1, 10_000))


def transact(daemon: DaemonRunner, raw: bytes, mail_from: str = "alice@example.org"):
    """One message from STRANGER: (the milter's outcome, its A-R value unfolded or "", its log fields)."""
    queue_id = f"QSP{next(_QUEUE_IDS):04d}"
    headers, body = split_message(raw)
    with MilterClient(str(daemon.socket_path), timeout=30) as client:
        client.negotiate()
        outcome = client.transaction(client_ip=STRANGER, helo="relay.example", mail_from=mail_from,
                                     rcpts=["bob@example.net"], headers=headers, body=body, queue_id=queue_id)
    line = daemon.wait_for_log(f"queue_id={queue_id} ", timeout=10)
    line = next(text for text in line.splitlines() if f"queue_id={queue_id} " in text)
    ar = " ".join(outcome.added_values("Authentication-Results")).replace("\n\t", " ")
    return outcome, ar, parse_log_fields(line)


def test_milter_refuses_extra_subject_naming_it(strict_daemon):
    outcome, _, log = transact(strict_daemon, SUBJECT_SPOOF)
    assert outcome.reply == "replycode"
    assert outcome.reply_text == "550 5.7.1 Message is not RFC 5322 compliant: multiple Subject headers"
    # The signature itself verifies: the refusal is for the header, and the log says which.
    assert (log["dkim"], log["duplicate_headers"], log["action"], log["reason"]) == (
        "pass", "subject", "reject", "duplicate_headers")


def test_milter_accepts_and_records_extra_subject_when_configured(accepting_daemon):
    outcome, ar, log = transact(accepting_daemon, SUBJECT_SPOOF)
    assert outcome.reply == "accept"
    assert "dkim=pass (256-bit ed25519 key; dnssec=indeterminate) header.d=example.org" in ar
    assert "dmarc=pass (p=reject sp=reject dis=none; dnssec=indeterminate; multiple Subject headers)" in ar
    assert (log["duplicate_headers"], log["action"], log["reason"]) == ("subject", "accept", "accept")


def test_milter_l_spoof_is_dkim_policy_and_dmarc_refuses(strict_daemon):
    outcome, _, log = transact(strict_daemon, L_SPOOF)
    assert outcome.reply == "replycode" and outcome.reply_text.startswith("550 5.7.1 Message rejected: the DMARC")
    assert (log["dkim"], log["dmarc"], log["reason"]) == ("policy", "fail", "dmarc_reject")


def test_milter_l_spoof_header_under_p_none(strict_daemon):
    outcome, ar, _ = transact(strict_daemon, l_signed("none.example") + APPENDED, mail_from="alice@none.example")
    assert outcome.reply == "accept"
    assert "dkim=policy (unsigned content after l=; 256-bit ed25519 key; dnssec=indeterminate)" in ar
    assert "dmarc=fail" in ar


def test_milter_l_spoof_passes_when_accepted_by_config(accepting_daemon):
    outcome, ar, log = transact(accepting_daemon, L_SPOOF)
    assert outcome.reply == "accept"
    assert "dkim=pass" in ar and "dmarc=pass" in ar and (log["dkim"], log["dmarc"]) == ("pass", "pass")


@pytest.mark.parametrize("raw", [SUBJECT_CONTROL, L_CONTROL], ids=["single Subject", "l= is the whole body"])
def test_milter_legitimate_controls_pass(strict_daemon, raw):
    outcome, ar, log = transact(strict_daemon, raw)
    assert outcome.reply == "accept"
    assert "dkim=pass" in ar and "dmarc=pass" in ar
    assert "duplicate_headers" not in log and log["reason"] == "accept"
