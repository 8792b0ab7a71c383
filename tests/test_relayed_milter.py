"""[trust] relays through the real daemon (`authmilter run`), driven over the milter protocol, with real DNS on
loopback: SPF and iprev judge the client the relay recorded, DMARC's SPF part follows, an unreadable record never
falls back to the relay's own address, and the report row's source_ip is the judged client."""

from __future__ import annotations

import time

import pytest

from authmilter.reports.sqlite import SqliteStore
from authmilter.reports.sqlstore import utc_day
from testlab.daemonrunner import DaemonRunner
from testlab.dnsserver import DnsServer
from testlab.milterclient import MilterClient, split_message

pytestmark = pytest.mark.timeout(120)

RELAY = "192.0.2.25"       # our gateway, in [trust] relays
OUTSIDE = "203.0.113.5"    # in example.org's SPF record, with FCrDNS
STRANGER = "198.51.100.66"  # in nobody's record, no PTR
AUTHSERV_ID = "mx.example.net"
ZONE = {
    "example.org": [{"TXT": "v=spf1 ip4:203.0.113.0/24 -all"}],
    "_dmarc.example.org": [{"TXT": "v=DMARC1; p=reject; rua=mailto:dmarc@example.org"}],
    "mail.example.org": [{"A": OUTSIDE}],
    "5.113.0.203.in-addr.arpa": [{"PTR": "mail.example.org"}],
    # The relay is authorized by everyone and confirms its own name: any fallback to it would pass.
    "gw.example.net": [{"A": RELAY}, {"TXT": "v=spf1 +all"}],
    "25.2.0.192.in-addr.arpa": [{"PTR": "gw.example.net"}],
}


def message(recorded: str) -> bytes:
    return (f"Received: from gw.example.net (gw.example.net [{RELAY}])\r\n\tby mx.example.net (Postfix) with ESMTP "
            f"id 4QA; Sat, 5 Dec 2026 14:00:01 +0000\r\n"
            f"Received: {recorded}\r\n\tby gw.example.net (Postfix) with ESMTP id 4QB; Sat, 5 Dec 2026 14:00:00 "
            f"+0000\r\n"
            f"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: relayed\r\n\r\nHello.\r\n").encode()


def send(daemon: DaemonRunner, raw: bytes, queue_id: str):
    headers, body = split_message(raw)
    with MilterClient(str(daemon.socket_path), timeout=30) as client:
        client.negotiate()
        return client.transaction(client_ip=RELAY, helo="gw.example.net", mail_from="alice@example.org",
                                  rcpts=["bob@example.net"], headers=headers, body=body, queue_id=queue_id,
                                  hostname="gw.example.net")


def ar_of(outcome) -> str:
    return " ".join(" ".join(value.split()) for value in outcome.added_values("Authentication-Results"))


def log_line(daemon: DaemonRunner, queue_id: str) -> str:
    text = daemon.wait_for_log(f"queue_id={queue_id} ")
    return next(line for line in text.splitlines() if f"queue_id={queue_id} " in line)


def test_a_relay_client_is_judged_on_the_client_it_recorded(tmp_path):
    database = tmp_path / "reports.sqlite"
    extra = {"trust": {"networks": "", "relays": RELAY},
             "reports": {"enabled": "yes", "database": str(database), "org_name": "Test Receiver",
                         "from_address": "dmarc-noreply@example.net", "journal": str(tmp_path / "journal"),
                         "flush_seconds": "0.5"}}
    with DnsServer(ZONE, lifetime=110) as dns, \
            DaemonRunner(tmp_path, dns_server=dns, authserv_id=AUTHSERV_ID, extra=extra, lifetime=100) as daemon:
        passing = send(daemon, message(f"from mail.example.org (mail.example.org [{OUTSIDE}])"), "QPASS")
        failing = send(daemon, message(f"from gw.example.net (unknown [{STRANGER}])"), "QFAIL")
        unreadable = send(daemon, message(f"from x (y [{OUTSIDE}]) (gw.example.net [{STRANGER}])"), "QBAD")
        lines = {queue_id: log_line(daemon, queue_id) for queue_id in ("QPASS", "QFAIL", "QBAD")}
        assert daemon.stop() == 0

    # SPF, iprev and DMARC's SPF part on the recorded client.
    header = ar_of(passing)
    assert passing.reply == "accept"
    assert "spf=pass" in header and f"client {OUTSIDE} recorded by relay {RELAY}" in header
    assert "iprev=pass" in header and f"policy.iprev={OUTSIDE}" in header
    assert "dmarc=pass" in header
    assert f"client-ip={OUTSIDE};" in " ".join(passing.added_values("Received-SPF"))
    assert f"client_ip={OUTSIDE} helo=mail.example.org " in lines["QPASS"] and f"relay={RELAY} " in lines["QPASS"]

    # The relay is authorized by everyone; the client it recorded is not: SPF fails, DMARC rejects.
    assert failing.reply == "replycode" and failing.reply_text.startswith("550")
    assert f"client_ip={STRANGER} " in lines["QFAIL"] and "spf=fail" in lines["QFAIL"]
    assert "iprev=permerror" in lines["QFAIL"] and "dmarc=fail" in lines["QFAIL"]

    # Two client addresses in the relay's header: no address is judged, the relay's least of all.
    assert "client_ip=- helo=- " in lines["QBAD"] and "relay_problem=" in lines["QBAD"]
    assert "spf=none" in lines["QBAD"] and "iprev=permerror" in lines["QBAD"]
    assert "reason=dmarc_reject" in lines["QBAD"]
    assert "spf=pass" not in lines["QBAD"] and "iprev=pass" not in lines["QBAD"]

    # The report rows: the judged clients, the unreadable one not at all.
    store = SqliteStore(str(database), max_rows=1000)
    try:
        day = store.peek("example.org", utc_day(time.time()))
        rows = {stored.row.source_ip: (stored.row.spf, stored.count) for stored in day.rows}
    finally:
        store.close()
    assert rows == {OUTSIDE: ("pass", 1), STRANGER: ("fail", 1)}
