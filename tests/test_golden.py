"""Golden behaviour: what the real daemon does with a dozen representative messages, compared with a file.

Each scenario goes through `authmilter run` over the milter protocol with real DNS (testlab/dnsserver.py): the
reply, every header change the milter asked for (A-R and Received-SPF inserted, forged A-R deleted) and the one
log line of the message. The file was written by the code before the structure change of issue 9; a refactoring
must leave all of it as it was. Values that change from run to run are masked: `ms=` in the log line and
`header.b=` in the A-R header (the test signatures carry the signing time in `t=`, so their `b=` changes).

Lookups started early (issue 13, `[dns] early_lookups`) must leave every bit of this unchanged: the test runs the
scenarios with early lookups (the default) and with the serial switch, and compares both with the same file. The
one field early lookups add to the log line, `dns_extra=` (lookups asked ahead that no check then needed), is taken
out before comparing; the serial code never writes it.

Regenerate only on purpose, when behaviour is meant to change: AUTHMILTER_WRITE_GOLDEN=1 pytest tests/test_golden.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from testlab.milterclient import MilterClient, split_message
from testlab.daemonrunner import DaemonRunner
from testlab.dnsserver import DnsServer
from tests.hostile import signing

GOLDEN = Path(__file__).parent / "data" / "golden" / "behaviour.json"
AUTHSERV_ID = "mx.golden.example"
GOOD_IP = "192.0.2.1"
FORWARDER_IP = "198.51.100.7"
STRANGER_IP = "203.0.113.9"
SRS_SECRET = "golden-srs-secret"

ZONE: dict = {
    "example.org": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}, {"MX": [10, "mail.example.org"]}],
    "mail.example.org": [{"A": GOOD_IP}],
    "1.2.0.192.in-addr.arpa": [{"PTR": "mail.example.org"}],
    "_dmarc.example.org": [{"TXT": "v=DMARC1; p=reject; rua=mailto:dmarc@example.org"}],
    signing.key_name("example.org"): [{"TXT": signing.key_record()}],
    "quarantine.example": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "_dmarc.quarantine.example": [{"TXT": "v=DMARC1; p=quarantine"}],
    "softfail.example": [{"TXT": "v=spf1 ~all"}],
    "_dmarc.softfail.example": [{"TXT": "v=DMARC1; p=none"}],
    "nullmx.example": [{"MX": [0, "."]}],
    "testmode.example": [{"TXT": "v=spf1 -all"}],
    "_dmarc.testmode.example": [{"TXT": "v=DMARC1; p=reject; t=y"}],
    "forwarder.example": [{"A": FORWARDER_IP}],
    "7.100.51.198.in-addr.arpa": [{"PTR": "forwarder.example"}],
    "9.113.0.203.in-addr.arpa": [{"PTR": "nowhere.example"}],
}

EXTRA = {
    "forwarders": {"networks": f"{FORWARDER_IP}/32"},
    "srs": {"secrets": SRS_SECRET},
    "trust": {"networks": "127.0.0.0/8"},
}


def _message(author: str, subject: str, *, extra: str = "", body: bytes = b"Hello.\r\n") -> bytes:
    return (f"{extra}From: {author}\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            f"Date: Sun, 22 Nov 2026 23:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}@golden>\r\n"
            "\r\n").encode("utf-8") + body


def _signed(subject: str, **kwargs) -> bytes:
    return signing.sign(_message("alice@example.org", subject, **kwargs), "example.org")


def _tampered(subject: str) -> bytes:
    return _signed(subject).replace(b"Hello.", b"Hellp.")


# name -> (client ip, helo, mail from, rcpts, raw message, auth login)
SCENARIOS: dict[str, tuple] = {
    "spf_pass_no_dkim": (GOOD_IP, "mail.example.org", "alice@example.org", ["bob@example.net"],
                         _message("alice@example.org", "plain"), ""),
    "dkim_pass_aligned": (STRANGER_IP, "relay.example", "bounce@other.example", ["bob@example.net"],
                          _signed("signed"), ""),
    "dkim_body_altered_dmarc_reject": (STRANGER_IP, "relay.example", "alice@example.org", ["bob@example.net"],
                                       _tampered("altered"), ""),
    "dmarc_quarantine": (STRANGER_IP, "relay.example", "x@quarantine.example", ["bob@example.net"],
                         _message("x@quarantine.example", "quarantine"), ""),
    "spf_softfail_p_none": (STRANGER_IP, "relay.example", "x@softfail.example", ["bob@example.net"],
                            _message("x@softfail.example", "softfail"), ""),
    "null_mx_sender": (GOOD_IP, "mail.example.org", "x@nullmx.example", ["bob@example.net"],
                       _message("x@nullmx.example", "nullmx"), ""),
    "dmarc_test_mode": (STRANGER_IP, "relay.example", "x@testmode.example", ["bob@example.net"],
                        _message("x@testmode.example", "testmode"), ""),
    "trusted_forwarder_override": (FORWARDER_IP, "forwarder.example", "alice@example.org", ["bob@example.net"],
                                   _message("alice@example.org", "forwarded"), ""),
    "forged_ar_removed": (GOOD_IP, "mail.example.org", "alice@example.org", ["bob@example.net"],
                          _message("alice@example.org", "forged",
                                   extra=f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass\r\n"
                                         "Authentication-Results: other.example; spf=pass\r\n"), ""),
    "trusted_network_skipped": ("127.0.0.5", "localhost", "alice@example.org", ["bob@example.net"],
                                _message("alice@example.org", "local"), ""),
    "authenticated_skipped": (STRANGER_IP, "laptop", "alice@example.org", ["bob@example.net"],
                              _message("alice@example.org", "auth"), "alice"),
    "two_from_headers": (GOOD_IP, "mail.example.org", "alice@example.org", ["bob@example.net"],
                         _message("alice@example.org", "twofrom", extra="From: mallory@evil.example\r\n"), ""),
    "forged_srs_bounce": (STRANGER_IP, "relay.example", "", ["SRS0=AAAA=ZZ=example.org=alice@example.net"],
                          _message("mailer-daemon@relay.example", "bounce"), ""),
    "injection_in_envelope": (STRANGER_IP, "evil;dmarc=pass (x", "a\"b;c@example.org", ["bob@example.net"],
                              _message("alice@example.org", "inject"), ""),
}

# Run-to-run values: the log's milliseconds, and what derives from a signature's t= (the signing time): b=.
_MASKS = ((re.compile(r"\bms=[0-9.]+"), "ms=<masked>"),
          (re.compile(r'\bheader\.b=(?:"[^"]*"|[A-Za-z0-9+/=]+)'), "header.b=<masked>"))


def _mask(text: str) -> str:
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


def _log_line(log_text: str, queue_id: str) -> str:
    lines = [line for line in log_text.splitlines() if f"queue_id={queue_id} " in line]
    # Strip the timestamp and logger prefix: the fields after the level are what we compare.
    return "\n".join(_mask(re.sub(r"^.*?(INFO|WARNING|ERROR) ", r"\1 ", line)) for line in lines)


_EXTRA_LOOKUPS = re.compile(r" dns_extra=\d+")


def _observe(tmp_path: Path, extra: dict) -> dict:
    observed: dict = {}
    with DnsServer(ZONE, lifetime=120) as server, \
            DaemonRunner(tmp_path, dns_server=server, authserv_id=AUTHSERV_ID, extra=extra, lifetime=110) as daemon:
        for index, (name, (ip, helo, mail_from, rcpts, raw, auth)) in enumerate(SCENARIOS.items()):
            queue_id = f"GOLD{index:02d}"
            headers, body = split_message(raw)
            with MilterClient(str(daemon.socket_path), timeout=30) as client:
                client.negotiate()
                outcome = client.transaction(client_ip=ip, helo=helo, mail_from=mail_from, rcpts=rcpts,
                                             headers=headers, body=body, queue_id=queue_id, auth=auth)
            daemon.wait_for_log(f"queue_id={queue_id} ", timeout=10)
            observed[name] = {
                "stage": outcome.stage,
                "reply": outcome.reply,
                "reply_text": outcome.reply_text,
                "inserted": [[index, name, _mask(value)] for index, name, value in outcome.inserted()],
                "changed": [list(item) for item in outcome.changed()],
                "quarantine": outcome.quarantine_reason(),
                "log": _log_line(daemon.log_text(), queue_id),
            }
        assert daemon.stop() == 0
    return observed


@pytest.mark.parametrize("early_lookups", ["yes", "no"])
def test_behaviour_matches_the_golden_file(tmp_path, early_lookups):
    observed = _observe(tmp_path, {**EXTRA, "dns": {"early_lookups": early_lookups}})
    extra_lookups = {name: _EXTRA_LOOKUPS.findall(seen["log"]) for name, seen in observed.items()}
    if early_lookups == "no":
        assert not any(extra_lookups.values()), extra_lookups
    for seen in observed.values():
        seen["log"] = _EXTRA_LOOKUPS.sub("", seen["log"])
    if os.environ.get("AUTHMILTER_WRITE_GOLDEN") and early_lookups == "no":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(observed, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden file written")
    expected = json.loads(GOLDEN.read_text())
    assert sorted(observed) == sorted(expected)
    for name in expected:
        assert observed[name] == expected[name], name
