"""What the reports tests share: messages judged by the real core (judge.judge over a FakeDns zone), and the
Judged values the recorder sees."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace

from authmilter.config import Config
from authmilter.context import Connection, Envelope, Header, Message, MessageContext
from authmilter.judge import judge
from authmilter.observers import Judged
from testlab.fakedns import FakeDns
from tests.hostile import signing

AUTHOR = "alice@example.org"
GOOD_IP = "192.0.2.1"        # in example.org's SPF record, with FCrDNS
STRANGER_IP = "203.0.113.9"  # no PTR, in nobody's SPF record

ZONE = {
    "example.org": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"], "MX": [(10, "mail.example.org")]},
    "mail.example.org": {"A": [GOOD_IP]},
    "1.2.0.192.in-addr.arpa": {"PTR": ["mail.example.org"]},
    "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject; rua=mailto:dmarc@example.org"]},
    signing.key_name("example.org"): {"TXT": [signing.key_record()]},
    "none.example": {"TXT": ["v=spf1 -all"], "MX": [(10, "mail.none.example")]},
    "_dmarc.none.example": {"TXT": ["v=DMARC1; p=none; rua=mailto:d@none.example"]},
    "quarantine.example": {"TXT": ["v=spf1 -all"], "MX": [(10, "mail.none.example")]},
    "_dmarc.quarantine.example": {"TXT": ["v=DMARC1; p=quarantine; sp=none; adkim=s"]},
    "testmode.example": {"TXT": ["v=spf1 -all"], "MX": [(10, "mail.none.example")]},
    "_dmarc.testmode.example": {"TXT": ["v=DMARC1; p=reject; t=y"]},
    "nullmx.example": {"MX": [(0, ".")], "TXT": ["v=spf1 -all"]},
    "_dmarc.nullmx.example": {"TXT": ["v=DMARC1; p=none"]},
    "nodmarc.example": {"TXT": ["v=spf1 +all"], "MX": [(10, "mail.none.example")]},
    "relay.example": {"TXT": ["v=spf1 ip4:203.0.113.0/24 -all"], "A": [STRANGER_IP]},
    "mail.none.example": {"A": ["192.0.2.99"]},
}


def cfg(**sections) -> Config:
    base = Config()
    base = replace(base, trust=replace(base.trust, networks=()))  # the test clients must be checked
    return replace(base, **{name: replace(getattr(base, name), **keys) for name, keys in sections.items()})


def message(raw: bytes) -> Message:
    head, _, body = raw.partition(b"\r\n\r\n")
    headers: list[Header] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            last = headers.pop()
            headers.append(Header(last.name, last.value + b"\r\n" + line))
        else:
            name, _, value = line.partition(b":")
            headers.append(Header(name, value))
    return Message(tuple(headers), body)


def judged(*, author: str = AUTHOR, ip: str = STRANGER_IP, helo: str = "relay.example",
           mail_from: str = "bounce@relay.example", rcpts=("bob@example.net",), signed: bool = False,
           tamper: bool = False, user: str | None = None, config: Config | None = None,
           zone: dict | None = None, now: float | None = None) -> Judged:
    """One message through the real core: checks, policy, verdict."""
    raw = signing.simple_message(author)
    if signed:
        raw = signing.sign(raw, author.rpartition("@")[2])
    if tamper:
        raw = raw.replace(b"Hello.", b"Hellp.")
    ctx = MessageContext(Connection(ipaddress.ip_address(ip), helo=helo, authenticated_user=user),
                         Envelope(mail_from, tuple(rcpts), queue_id="Q1"), message(raw))
    config = config or cfg()
    judgement = judge(ctx, FakeDns(zone or ZONE), config, "mx.example.net", now=now or time.time())
    return Judged(ctx, judgement.results, judgement.verdict, 1.0)
