"""[trust] relays: the client a relay of ours recorded in its Received header, parsed strictly, and what SPF,
iprev, DMARC, the log line, Received-SPF and the report rows make of it (the real core over FakeDns)."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace

import authres
import pytest

from authmilter import pipeline
from authmilter.checks.relayed import (MAX_HOPS, MAX_RECEIVED_CHARS, RecordedClient, Unreadable, parse_received,
                                       relayed_client)
from authmilter.config import Config, TrustSection, parse_config_text
from authmilter.context import Connection, Envelope, Header, Message, MessageContext
from authmilter.errors import ConfigError
from authmilter.judge import judge
from authmilter.logline import format_line
from authmilter.observers import Judged
from authmilter.pipeline import Stage
from authmilter.reports.record import RecordRules, observe
from testlab.fakedns import FakeDns
from tests.hostile import signing
from tests.reports_helpers import message

RELAY = "192.0.2.25"          # our gateway: in [trust] relays
OUTSIDE = "203.0.113.5"       # the client the gateway received the mail from: in example.org's SPF record
STRANGER = "198.51.100.66"    # a client nobody authorizes
NOW = time.time()


def ip(text: str):
    return ipaddress.ip_address(text)


# ---------------------------------------------------------------- the parser

POSTFIX = " from mail.example.org (mail.example.org [203.0.113.5])\r\n\tby gw.example.net (Postfix) with ESMTPS id 4QX;" \
          " Sat, 5 Dec 2026 14:00:00 +0000 (UTC)"

READABLE = [
    ("postfix", POSTFIX, OUTSIDE, "mail.example.org", "mail.example.org"),
    ("postfix-unknown-rdns", " from helo.example (unknown [203.0.113.5]) by gw (Postfix) with ESMTP id X; date",
     OUTSIDE, "helo.example", "unknown"),
    ("postfix-ipv6", " from helo.example (mail6.example [IPv6:2001:db8::5]) by gw (Postfix) with ESMTP id X",
     "2001:db8::5", "helo.example", "mail6.example"),
    ("postfix-tls-comments", " from helo.example (rdns.example [203.0.113.5])\r\n\t(using TLSv1.3 with cipher "
     "TLS_AES_256_GCM_SHA384 (256/256 bits)\r\n\t key-exchange X25519 server-signature RSA-PSS (2048 bits))\r\n\t"
     "(No client certificate requested)\r\n\tby gw.example.net (Postfix) with ESMTPS id 4QX; date",
     OUTSIDE, "helo.example", "rdns.example"),
    ("postfix-helo-literal", " from [192.0.2.1] (unknown [203.0.113.5]) by gw (Postfix) with SMTP id X",
     OUTSIDE, "[192.0.2.1]", "unknown"),
    ("sendmail", " from helo.example (rdns.example [203.0.113.5])\r\n\tby gw.example.net (8.17.1/8.17.1) with ESMTP"
     " id 5B5E0abc; Sat, 5 Dec 2026", OUTSIDE, "helo.example", "rdns.example"),
    ("sendmail-ident-forged", " from helo.example (user@rdns.example [203.0.113.5] (may be forged)) by gw "
     "(8.17.1/8.17.1) with ESMTP id x", OUTSIDE, "helo.example", "rdns.example"),
    ("sendmail-no-rdns", " from helo.example ([203.0.113.5]) by gw (8.17.1/8.17.1) with ESMTP id x",
     OUTSIDE, "helo.example", ""),
    ("sendmail-ipv6", " from helo.example (rdns.example [IPv6:2001:db8::5]) by gw (8.17.1/8.17.1) id x",
     "2001:db8::5", "helo.example", "rdns.example"),
    ("exim-helo-differs", " from rdns.example ([203.0.113.5]:41234 helo=helo.example)\r\n\tby gw.example.net with "
     "esmtps (TLS1.3) (Exim 4.96) id 1abc; Sat, 05 Dec 2026", OUTSIDE, "helo.example", "rdns.example"),
    ("exim-helo-same", " from rdns.example ([203.0.113.5]) by gw with esmtp (Exim 4.96) id 1; date",
     OUTSIDE, "rdns.example", ""),
    ("exim-ident", " from rdns.example ([203.0.113.5] helo=helo.example ident=joe) by gw with esmtp (Exim 4.96) id 1",
     OUTSIDE, "helo.example", "rdns.example"),
    ("exim-no-rdns", " from [203.0.113.5] (port=41234 helo=helo.example) by gw with esmtp (Exim 4.96) id 1",
     OUTSIDE, "helo.example", ""),
    ("exim-no-rdns-no-helo", " from [203.0.113.5] by gw with esmtp (Exim 4.96) id 1; date", OUTSIDE, "", ""),
    ("exim-ipv6", " from rdns.example ([2001:db8::5]:25 helo=helo.example) by gw with esmtp (Exim 4.96) id 1",
     "2001:db8::5", "helo.example", "rdns.example"),
]


@pytest.mark.parametrize("value, client, helo, rdns", [case[1:] for case in READABLE],
                         ids=[case[0] for case in READABLE])
def test_the_forms_relays_write(value, client, helo, rdns):
    assert parse_received(value) == RecordedClient(ip(client), helo, rdns)
    assert parse_received(value.encode()) == RecordedClient(ip(client), helo, rdns)


HOSTILE = [
    # A HELO name carrying its own "(name [address])": the real client's address follows, so there are two.
    ("helo-smuggles-a-client", " from x (y [192.0.2.99]) (unknown [198.51.100.66]) by gw (Postfix) with SMTP id X",
     "more than one client address"),
    ("helo-smuggles-by", " from x (y [192.0.2.99]) by (unknown [198.51.100.66]) by gw (Postfix) id X",
     "more than one client address"),
    ("two-ips-later", " from helo.example (rdns [203.0.113.5]) by gw ([192.0.2.99]) with SMTP id X",
     "more than one client address"),
    ("crlf-smuggled", " from helo.example\r\n(rdns [203.0.113.5]) by gw (Postfix)", "control"),
    ("bare-lf", " from helo.example (rdns [203.0.113.5])\nX-Injected: yes", "control"),
    ("bare-cr", " from helo.example\r(rdns [203.0.113.5]) by gw (Postfix)", "control"),
    ("nul", " from helo.example (rdns [203.0.113.5]\x00) by gw", "control"),
    ("eight-bit", " from h\u00e9lo.example (rdns [203.0.113.5]) by gw", "control"),
    ("semicolon-in-helo", " from evil;x (rdns [203.0.113.5]) by gw (Postfix); date", "not a Postfix"),
    ("semicolon-in-rdns", " from helo.example (a;b [203.0.113.5]) by gw (Postfix); date", "not a Postfix"),
    ("space-in-helo", " from two words (rdns [203.0.113.5]) by gw (Postfix)", "not a Postfix"),
    ("paren-in-helo", " from x(y (rdns [203.0.113.5]) by gw (Postfix)", "not a Postfix"),
    ("missing-bracket", " from helo.example (rdns 203.0.113.5) by gw (Postfix)", "not a Postfix"),
    ("unclosed-bracket", " from helo.example (rdns [203.0.113.5) by gw (Postfix)", "not a Postfix"),
    ("no-from-clause", " by gw.example.net (Postfix, from userid 1000) id 4QX; date", "not a Postfix"),
    ("local-submission", " (from user@localhost) by gw (8.17.1/8.17.1/Submit) id x; date", "not a Postfix"),
    ("not-an-address", " from helo.example (rdns [999.1.2.3]) by gw (Postfix)", "not an IP address"),
    ("ipv6-tag-on-ipv4", " from helo.example (rdns [IPv6:203.0.113.5]) by gw (Postfix)", "not an IP address"),
    ("very-long", " from helo.example (rdns [203.0.113.5]) by gw (Postfix) " + "x" * MAX_RECEIVED_CHARS,
     "longer than"),
    ("long-name", " from " + "a" * 300 + " (rdns [203.0.113.5]) by gw (Postfix)", "not a Postfix"),
    ("empty", "", "not a Postfix"),
]


@pytest.mark.parametrize("value, reason", [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_anything_else_cannot_be_read(value, reason):
    parsed = parse_received(value)
    assert isinstance(parsed, Unreadable), parsed
    assert reason in parsed.reason


# ---------------------------------------------------------------- the hops of ours, walked past

TRUST = TrustSection(networks=(), relays=(ipaddress.ip_network("192.0.2.0/28"), ipaddress.ip_network(RELAY)))


def received(client: str, helo: str = "helo.example", rdns: str = "rdns.example") -> Header:
    literal = f"IPv6:{client}" if ":" in client else client
    return Header(b"Received", f" from {helo} ({rdns} [{literal}])\r\n\tby hop.example (Postfix) with ESMTP id X; "
                               f"Sat, 5 Dec 2026 14:00:00 +0000".encode())


def ctx_with(*received_headers: Header, client: str = RELAY, mail_from: str = "alice@example.org",
             truncated: bool = False, extra: tuple[Header, ...] = ()) -> MessageContext:
    headers = received_headers + (Header(b"From", b" alice@example.org"), Header(b"Subject", b" hi")) + extra
    return MessageContext(Connection(ip(client), "gw.example.net", "gw.example.net"),
                          Envelope(mail_from, ("bob@example.net",), "Q1"), Message(headers, headers_truncated=truncated))


def test_a_client_that_is_not_a_relay_is_judged_as_it_connected():
    assert relayed_client(ctx_with(received(OUTSIDE), client=STRANGER), TRUST) is None
    assert relayed_client(ctx_with(received(OUTSIDE)), TrustSection(networks=())) is None


def test_hops_of_ours_and_loopback_hops_are_walked_past():
    ctx = ctx_with(received(RELAY, "gw.example.net"),          # our own MTA's header, recording the relay
                   received("127.0.0.1", "localhost"),          # the gateway's content filter re-injecting
                   received("192.0.2.3", "inner.example.net"),  # an inner relay of ours
                   received(OUTSIDE, "mail.example.org"),       # the outside client: judged
                   received("198.51.100.1", "forged.example"))  # what the sender wrote below: never read
    relayed = relayed_client(ctx, TRUST)
    assert relayed.connection == Connection(ip(OUTSIDE), "rdns.example", "mail.example.org")
    assert relayed.hop == 4 and relayed.relay_ip == RELAY and not relayed.problem


def test_an_ipv4_relay_seen_on_a_dual_stack_socket_is_still_a_relay():
    relayed = relayed_client(ctx_with(received(OUTSIDE), client="::ffff:192.0.2.25"), TRUST)
    assert relayed.connection.client_ip == ip(OUTSIDE) and relayed.relay_ip == RELAY


@pytest.mark.parametrize("headers, words", [
    ((), "no Received header"),
    ((received(RELAY), received("192.0.2.3")), "every Received header names one of [trust] relays"),
    ((received("10.1.2.3"),), "client 10.1.2.3 is not a public address"),
    ((received("fd00::5"),), "client fd00::5 is not a public address"),
    ((received("169.254.1.1"),), "not a public address"),
    ((received("0.0.0.0"),), "not a public address"),
    ((received(RELAY), Header(b"Received", b" from x (y [192.0.2.99]) (unknown [198.51.100.66]) by gw")),
     "Received header 2: more than one client address"),
    (tuple(received(RELAY) for _ in range(MAX_HOPS + 1)) + (received(OUTSIDE),), f"top {MAX_HOPS} Received"),
])
def test_no_readable_outside_client_is_a_problem_never_the_relays_address(headers, words):
    relayed = relayed_client(ctx_with(*headers), TRUST)
    assert relayed.connection is None and words in relayed.problem
    assert relayed.log_fields() == {"relay": RELAY, "relay_problem": relayed.problem}


def test_the_header_limit_is_named():
    relayed = relayed_client(ctx_with(received(RELAY), truncated=True), TRUST)
    assert "header limit" in relayed.problem


# ---------------------------------------------------------------- config

def test_relays_parse_like_networks_and_may_not_overlap_trusted_networks():
    cfg = parse_config_text("[trust]\nnetworks = ::1\nrelays = 192.0.2.25, 2001:db8::25/128\n", "t.ini")
    assert cfg.trust.relays == (ipaddress.ip_network("192.0.2.25/32"), ipaddress.ip_network("2001:db8::25/128"))
    with pytest.raises(ConfigError) as bad:
        parse_config_text("[trust]\nrelays = 192.0.2.25, nonsense\n", "t.ini")
    assert str(bad.value) == "t.ini: [trust] relays: not a network: 'nonsense'"
    # The default networks hold 127.0.0.0/8: a loopback relay must take it out of them first.
    with pytest.raises(ConfigError) as clash:
        parse_config_text("[trust]\nrelays = 127.0.0.1\n", "t.ini")
    assert str(clash.value).startswith("t.ini: [trust] relays: 127.0.0.1/32 overlaps 127.0.0.0/8 of [trust] "
                                       "networks")
    with pytest.raises(ConfigError, match="overlaps 192.0.2.0/24"):
        parse_config_text("[trust]\nnetworks = 192.0.2.0/24\nrelays = ::ffff:192.0.2.25\n", "t.ini")


# ---------------------------------------------------------------- stages

def test_spf_iprev_and_the_forwarder_match_wait_for_the_headers_only_for_a_relay():
    cfg = replace(Config(), trust=TRUST)
    stages = {spec.name: spec for spec in pipeline.ORDERED_CHECKS}
    relay, other = Connection(ip(RELAY)), Connection(ip(STRANGER))
    for name in ("relay", "iprev", "spf", "forwarder"):
        assert stages[name].stage_for(relay, cfg) is Stage.EOH, name
    assert [stages[name].stage_for(other, cfg) for name in ("relay", "iprev", "spf", "forwarder")] == \
        [Stage.CONNECT, Stage.CONNECT, Stage.MAIL, Stage.CONNECT]
    assert stages["sender"].stage_for(relay, cfg) is Stage.MAIL   # it reads only MAIL FROM


# ---------------------------------------------------------------- what the checks and the user see

ZONE = {
    "example.org": {"TXT": ["v=spf1 ip4:203.0.113.0/24 -all"]},
    "mail.example.org": {"A": [OUTSIDE], "TXT": ["v=spf1 a -all"]},
    "5.113.0.203.in-addr.arpa": {"PTR": ["mail.example.org"]},
    "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject; rua=mailto:dmarc@example.org"]},
    signing.key_name("example.org"): {"TXT": [signing.key_record()]},
    # The relay itself is authorized by everyone and confirms its name: a fallback to it would pass.
    "gw.example.net": {"A": [RELAY], "TXT": ["v=spf1 +all"]},
    "25.2.0.192.in-addr.arpa": {"PTR": ["gw.example.net"]},
}
CFG = replace(Config(), trust=TRUST)
AUTHSERV_ID = "mx.example.net"


def run(ctx: MessageContext, cfg: Config = CFG):
    judgement = judge(ctx, FakeDns(ZONE), cfg, AUTHSERV_ID, now=NOW)
    judged = Judged(ctx, judgement.results, judgement.verdict, 1.0, ar_entries=judgement.ar_entries)
    return judgement, judged


def ar(judgement) -> dict[str, authres.AuthenticationResultsHeader]:
    parsed = authres.AuthenticationResultsHeader.parse_value(judgement.ar_value.replace("\n", ""))
    methods: dict = {}
    for result in parsed.results:   # the first of a method: spf's smtp.mailfrom entry comes before smtp.helo's
        methods.setdefault(result.method, result)
    return methods


def props(result) -> dict[str, str]:
    return {f"{prop.type}.{prop.name}": prop.value for prop in result.properties}


def test_spf_and_iprev_judge_the_recorded_client_and_dmarc_passes_on_its_spf():
    judgement, judged = run(ctx_with(received(RELAY, "gw.example.net"), received(OUTSIDE, "mail.example.org")))
    methods = ar(judgement)
    assert methods["spf"].result == "pass"
    assert f"client {OUTSIDE} recorded by relay {RELAY}" in judgement.ar_value
    assert methods["iprev"].result == "pass" and props(methods["iprev"])["policy.iprev"] == OUTSIDE
    assert "spf=pass" in judgement.ar_value and "smtp.helo=mail.example.org" in judgement.ar_value
    assert methods["dmarc"].result == "pass" and judgement.verdict.action == "accept"
    assert f"client-ip={OUTSIDE};" in judgement.received_spf and "helo=mail.example.org;" in judgement.received_spf
    line = format_line(judged.ctx, judged.results, judged.verdict, 1.0)
    assert f"client_ip={OUTSIDE} helo=mail.example.org " in line and f"relay={RELAY}" in line
    row = observe(judged, RecordRules(), NOW).row
    assert (row.source_ip, row.spf) == (OUTSIDE, "pass")


def test_spf_fails_on_the_recorded_client_even_though_the_relay_is_authorized():
    judgement, judged = run(ctx_with(received(RELAY, "gw.example.net"), received(STRANGER, "stranger.example")))
    methods = ar(judgement)
    assert methods["spf"].result == "fail"            # example.org's record lists 203.0.113.0/24 only
    assert methods["iprev"].result == "permerror"     # STRANGER has no PTR; the relay's would have passed
    assert methods["dmarc"].result == "fail" and judgement.verdict.action == "reject"
    assert RELAY not in {props(r).get("policy.iprev") for r in methods.values()}
    assert observe(judged, RecordRules(), NOW).row.source_ip == STRANGER


@pytest.mark.parametrize("received_header", [
    Header(b"Received", b" from gw.example.net (gw.example.net [192.0.2.25]) by gw (Postfix) id X"),
    Header(b"Received", b" from x (y [203.0.113.5]) (gw.example.net [198.51.100.66]) by gw (Postfix) id X"),
    Header(b"Received", b" from gw.example.net\r\n(gw.example.net [203.0.113.5]) by gw (Postfix) id X"),
])
def test_an_unreadable_record_judges_no_address_at_all(received_header):
    # A signed message: DKIM (and DMARC through it) does not depend on the client.
    signed = message(signing.sign(signing.simple_message("alice@example.org"), "example.org"))
    ctx = replace(ctx_with(), message=replace(signed, headers=(received_header,) + signed.headers))
    judgement, judged = run(ctx)
    methods = ar(judgement)
    assert methods["spf"].result == "none" and methods["iprev"].result == "permerror"
    assert "smtp.helo" not in judgement.ar_value and "policy.iprev" not in judgement.ar_value
    assert f"spf=none (dnssec=indeterminate; relay {RELAY}: " in judgement.ar_value
    assert f"iprev=permerror (relay {RELAY}: " in judgement.ar_value
    assert RELAY not in judgement.received_spf and "client-ip" not in judgement.received_spf
    assert methods["dkim"].result == "pass" and methods["dmarc"].result == "pass"
    line = format_line(judged.ctx, judged.results, judged.verdict, 1.0)
    assert "client_ip=- helo=- " in line and f"relay={RELAY} relay_problem=" in line
    assert "iprev=permerror" in line and "spf=none" in line
    assert observe(judged, RecordRules(), NOW) is None   # the source is unknown: no report row


def test_a_trusted_forwarder_is_matched_on_the_recorded_client():
    forwarders = parse_config_text(f"[forwarders]\nnetworks = {STRANGER}, {RELAY}\n", "t.ini").forwarders
    cfg = replace(CFG, forwarders=forwarders)
    behind_relay = ctx_with(received(RELAY), received(STRANGER))
    assert run(behind_relay, cfg)[0].results.forwarder == f"network {STRANGER}/32"
    # The relay's own address is in [forwarders] too, but an unreadable record matches nothing.
    assert run(ctx_with(received(RELAY)), cfg)[0].results.forwarder == ""


def test_a_client_outside_the_relays_is_judged_on_its_own_address_whatever_its_headers_say():
    ctx = ctx_with(received(OUTSIDE, "mail.example.org"), client=STRANGER)
    ctx = replace(ctx, connection=replace(ctx.connection, helo="mail.example.org"))
    judgement, judged = run(ctx)
    assert ar(judgement)["spf"].result == "fail" and "recorded by relay" not in judgement.ar_value
    assert judged.results.relay is None
    assert f"client_ip={STRANGER} " in format_line(judged.ctx, judged.results, judged.verdict, 1.0)
