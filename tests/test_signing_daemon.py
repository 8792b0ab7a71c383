"""Signing through the real daemon: `authmilter run` driven over the milter protocol as Postfix drives it, its key
lookups served by a real DNS server on loopback. Asserted: the header changes Postfix is asked for, that the
message Postfix would then deliver verifies (dkimpy and our own verifier), the log lines, the key warnings at
start-up, a refused reload, and `authmilter keys check`."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap

import pytest

from authmilter.checks.dkim.check import check_dkim
from authmilter.cli import parse_message
from authmilter.config import DkimSection
from authmilter.context import Header, Message
from authmilter.results import Status
from testlab.daemonrunner import DaemonRunner
from testlab.dnsserver import DnsServer, Fault
from testlab.lab import parse_log_fields
from testlab.milterclient import HDR_LEADSPC, ALL_PROTOCOL, MilterClient, split_message
from testlab.fakedns import FakeDns
from tests.signing_support import ED_RECORD, RSA_RECORD, dkimpy_results, install_keys

AUTHSERV = "mx.example.net"
ZONE = {
    "example.org": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}, {"MX": [10, "mail.example.org"]}],
    "mail.example.org": [{"A": "192.0.2.1"}],
    "1.2.0.192.in-addr.arpa": [{"PTR": "mail.example.org"}],
    "r._domainkey.example.org": [{"TXT": RSA_RECORD}],
    "e._domainkey.example.org": [{"TXT": ED_RECORD}],
    "c._domainkey.example.com": [{"TXT": RSA_RECORD}],
    "m._domainkey.mismatch.example": [{"TXT": ED_RECORD}],   # an Ed25519 record for an RSA key file
}
DKIMPY_ZONE = {name: records[0]["TXT"] for name, records in ZONE.items() if "_domainkey" in name}


@pytest.fixture(scope="module")
def dns():
    with DnsServer(ZONE, lifetime=900) as server:
        yield server


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return install_keys(tmp_path_factory.mktemp("keys"))


def signing_extra(keys, *, canonicalization: str = "simple/simple", lines: str | None = None) -> dict:
    if lines is None:
        lines = (f"example.org r {keys['rsa']}\nexample.org e {keys['ed25519']}\nexample.com c {keys['rsa']}\n"
                 f"other.example gone {keys['rsa']}\nmismatch.example m {keys['rsa']}")
    return {"trust": {"networks": "10.0.0.0/8"},  # a gateway: not checked, and never a reason to sign
            "signing": {"keys": "\n" + textwrap.indent(lines, "    "), "canonicalization": canonicalization}}


@pytest.fixture(scope="module")
def milter(tmp_path_factory, dns, keys):
    # simple/simple: a signature only survives if every header byte we signed is the byte Postfix writes.
    daemon = DaemonRunner(tmp_path_factory.mktemp("signing"), dns_server=dns, authserv_id=AUTHSERV,
                          extra=signing_extra(keys), lifetime=900).start()
    yield daemon
    daemon.stop()


MESSAGE = ("From: Jürgen Groß <alice@example.org>\r\nTo: bob@example.net\r\n"
           "Subject: Grüße aus Köln,\r\n\tgefaltet  mit\ttabs\r\n und   spaces \r\n"
           "Date: Sun, 22 Nov 2026 12:00:00 +0000\r\nMessage-ID: <d1@example.org>\r\n"
           "Authentication-Results: mx.example.net; dkim=pass header.d=example.org\r\n"
           "\r\nHallo Bob,  \r\n\r\nschöne Grüße\r\n").encode("utf-8")


def transact(milter, raw: bytes, *, ip: str, auth: str = "", mail_from: str = "alice@example.org",
             queue_id: str, protocol: int = ALL_PROTOCOL):
    headers, body = split_message(raw)
    with MilterClient(str(milter.socket_path), timeout=60) as client:
        client.negotiate(protocol=protocol)
        return client.transaction(client_ip=ip, helo="laptop.example.org", mail_from=mail_from,
                                  rcpts=["bob@example.net"], headers=headers, body=body, queue_id=queue_id,
                                  auth=auth)


def delivered(outcome, raw: bytes, leading_space: bool = True) -> bytes:
    """The message as Postfix writes it after applying the milter's changes (inserts at 0, deletions by index)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    headers, _ = parse_message(raw)
    lines = [(name, value) for name, value in headers]
    for index, name, value in outcome.changed():
        if value == "":
            occurrences = [i for i, (n, _) in enumerate(lines) if n.decode().lower() == name.lower()]
            del lines[occurrences[index - 1]]
    for index, name, value in outcome.inserted():
        text = value if leading_space else " " + value
        lines.insert(index, (name.encode(), text.replace("\n", "\r\n").encode()))
    return b"".join(n + b":" + v + b"\r\n" for n, v in lines) + b"\r\n" + body


def ours(message: bytes) -> list[Status]:
    headers, body = parse_message(message)
    result = check_dkim(Message(tuple(Header(n, v) for n, v in headers), body),
                        FakeDns({name: {"TXT": [value]} for name, value in DKIMPY_ZONE.items()}), DkimSection(),
                        now=__import__("time").time(), from_domain="example.org")
    return [sig.status for sig in result.signatures]


def log_line(milter, queue_id: str) -> dict[str, str]:
    text = milter.wait_for_log(f"queue_id={queue_id} ")
    [line] = [ln for ln in text.splitlines() if f"queue_id={queue_id} " in ln]
    return parse_log_fields(line)


def names(outcome) -> list[str]:
    return [name for _, name, _ in outcome.inserted()]


# ---------------------------------------------------------------- who is signed

def test_authenticated_client_gets_both_signatures_and_no_verification(milter):
    outcome = transact(milter, MESSAGE, ip="203.0.113.5", auth="alice", queue_id="SAUTH1")
    assert outcome.reply == "accept"
    assert names(outcome) == ["DKIM-Signature", "DKIM-Signature"]  # and no Authentication-Results: not verified
    assert outcome.changed() == [(1, "Authentication-Results", "")]  # the forged one is still removed
    message = delivered(outcome, MESSAGE)
    assert dkimpy_results(message, DKIMPY_ZONE) == [True, True]
    assert ours(message) == [Status.PASS, Status.PASS]
    fields = log_line(milter, "SAUTH1")
    assert fields["signed"] == "d=example.org s=r, d=example.org s=e"
    assert fields["signing_client"] == "authenticated" and fields["login"] == "alice"
    assert fields["action"] == "accept" and "spf" not in fields and "dkim" not in fields


def test_loopback_client_is_signed_as_a_signing_network(milter):
    outcome = transact(milter, MESSAGE, ip="127.0.0.1", queue_id="SLOCAL1")
    assert names(outcome) == ["DKIM-Signature", "DKIM-Signature"]
    assert dkimpy_results(delivered(outcome, MESSAGE), DKIMPY_ZONE) == [True, True]
    assert log_line(milter, "SLOCAL1")["signing_client"] == "network"


def test_relay_is_verified_never_signed(milter):
    outcome = transact(milter, MESSAGE, ip="192.0.2.1", queue_id="SRELAY1")
    assert "DKIM-Signature" not in names(outcome)
    assert "Authentication-Results" in names(outcome)
    fields = log_line(milter, "SRELAY1")
    assert "signed" not in fields and fields["spf"] == "pass"


def test_trust_network_client_outside_signing_networks_is_not_signed(milter):
    outcome = transact(milter, MESSAGE, ip="10.1.2.3", queue_id="STRUST1")
    assert "DKIM-Signature" not in names(outcome)
    fields = log_line(milter, "STRUST1")
    assert fields["skipped"] == "trusted_network" and "signed" not in fields


def test_authenticated_client_writing_from_another_domain_is_not_signed(milter):
    raw = MESSAGE.replace(b"<alice@example.org>", b"<ceo@example.com>", 1)
    outcome = transact(milter, raw, ip="203.0.113.5", auth="alice", queue_id="SORACLE1")
    assert names(outcome) == []
    assert outcome.changed() == [(1, "Authentication-Results", "")]
    fields = log_line(milter, "SORACLE1")
    assert fields["signed"] == "no"
    assert fields["signing_reason"] == ("From domain example.com is not the MAIL FROM domain example.org or a "
                                        "parent of it")


def test_mta_without_leading_space_option_gets_a_value_it_writes_byte_for_byte(milter):
    outcome = transact(milter, MESSAGE, ip="127.0.0.1", queue_id="SNOLEAD1", protocol=ALL_PROTOCOL & ~HDR_LEADSPC)
    values = [value for _, name, value in outcome.inserted() if name == "DKIM-Signature"]
    assert values and all(value.startswith("v=1;") for value in values)
    assert dkimpy_results(delivered(outcome, MESSAGE, leading_space=False), DKIMPY_ZONE) == [True, True]


def test_ten_megabyte_body_signed_through_the_milter_protocol(milter):
    line = "Zeile mit Umlauten äöü und   Leerzeichen \t\r\n".encode()
    raw = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + line * (10_000_000 // len(line))
    outcome = transact(milter, raw, ip="127.0.0.1", queue_id="SBIG1")
    assert names(outcome) == ["DKIM-Signature", "DKIM-Signature"]
    assert dkimpy_results(delivered(outcome, raw), DKIMPY_ZONE) == [True, True]


# ---------------------------------------------------------------- keys in DNS

def test_startup_logs_each_key_that_is_not_published_or_does_not_match(milter):
    text = milter.wait_for_log("m._domainkey.mismatch.example", timeout=20)
    milter.wait_for_log("gone._domainkey.other.example", timeout=20)
    text = milter.log_text()
    assert re.search(r"^INFO signing key r\._domainkey\.example\.org \(rsa-2048, .*\): published key matches",
                     text, re.M)
    assert re.search(r"^INFO signing key e\._domainkey\.example\.org \(ed25519, .*\): published key matches",
                     text, re.M)
    assert re.search(r"^WARNING signing key gone\._domainkey\.other\.example \(rsa-2048, .*\): NOT published: "
                     r"NXDOMAIN", text, re.M | re.I)
    assert re.search(r"^WARNING signing key m\._domainkey\.mismatch\.example .*: published key does NOT match: "
                     r"k=ed25519, the key file holds an rsa key", text, re.M)


def test_reload_with_a_world_readable_key_is_refused_and_signing_goes_on(tmp_path, dns, keys):
    with DaemonRunner(tmp_path, dns_server=dns, authserv_id=AUTHSERV,
                      extra=signing_extra(keys, lines=f"example.org r {keys['rsa']}")) as daemon:
        loose = tmp_path / "loose.pem"
        loose.write_bytes(keys["rsa"].read_bytes())
        loose.chmod(0o644)
        daemon.write_config(authserv_id=AUTHSERV, extra=signing_extra(keys, lines=f"example.org r {loose}"))
        daemon.signal(signal.SIGUSR1)
        daemon.wait_for_log("reload refused")
        assert f"{loose}: readable by others (mode 0644)" in daemon.log_text()
        outcome = transact(daemon, MESSAGE, ip="127.0.0.1", queue_id="SRELOAD1")
        assert names(outcome) == ["DKIM-Signature"]


def keys_check(config) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "authmilter", "keys", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)


def test_keys_check_says_per_key_whether_dns_matches(tmp_path, dns, keys):
    config = tmp_path / "a.ini"
    config.write_text(textwrap.dedent(f"""\
        [dns]
        nameservers = {dns.address}
        timeout = 2
        [signing]
        keys =
            example.org r {keys['rsa']}
            example.org e {keys['ed25519']}
            other.example gone {keys['rsa']} from=2030-01-01
            mismatch.example m {keys['rsa']}
        """))
    done = keys_check(config)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ok       r._domainkey.example.org (rsa-2048, ")
    assert lines[0].endswith("): published key matches (dnssec=insecure)")
    assert lines[1].startswith("ok       e._domainkey.example.org (ed25519, ")
    assert lines[2].startswith("PROBLEM  gone._domainkey.other.example (rsa-2048, ")
    assert ", signs from 2030-01-01): NOT published" in lines[2]
    assert "published key does NOT match: k=ed25519" in lines[3]

    config.write_text(config.read_text().replace(f"other.example gone {keys['rsa']} from=2030-01-01\n", "")
                      .replace(f"    mismatch.example m {keys['rsa']}\n", ""))
    done = keys_check(config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(done.stdout.splitlines()) == 2


def test_keys_check_exits_75_when_only_lookups_failed(tmp_path, dns, keys):
    config = tmp_path / "a.ini"
    config.write_text(f"[dns]\nnameservers = {dns.address}\ntimeout = 1\nmessage_deadline = 2\n"
                      f"[signing]\nkeys = example.com c {keys['rsa']}\n")
    dns.set_fault(Fault.SERVFAIL, "c._domainkey.example.com")
    try:
        done = keys_check(config)
    finally:
        dns.clear_faults()
    assert done.returncode == 75, done.stdout + done.stderr
    assert "lookup FAILED" in done.stdout


def test_key_watch_checks_again_after_its_interval(dns, keys):
    """The daemon's watch, in process with a short interval in place of a day: each round logs every key again."""
    import logging
    import time
    from types import SimpleNamespace

    from authmilter.config import DnsSection, parse_nameserver
    from authmilter.resolver import Resolver
    from authmilter.signing.check import KeyWatch
    from authmilter.signing.keys import load_keyring
    from tests.signing_support import signing_config

    resolver = Resolver(DnsSection(nameservers=(parse_nameserver(dns.address),), timeout=2))
    runtime = SimpleNamespace(keyring=load_keyring(signing_config(f"other.example gone {keys['rsa']}")),
                              resolver=resolver)
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # the logger may not propagate (logsetup)
    logger = logging.getLogger("authmilter")
    logger.addHandler(handler)
    watch = KeyWatch(lambda: runtime, interval=0.2).start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(warnings) < 3:
            time.sleep(0.05)
    finally:
        watch.stop()
        logger.removeHandler(handler)
        resolver.close()
    assert len(warnings) >= 3
    assert all("gone._domainkey.other.example" in text and "NOT published" in text for text in warnings)
