"""Early lookups (issue 13): the same results as the serial code, fewer waits, and nothing left behind.

In process: the early path (a worker pool, checks started at MAIL FROM, lookups prefetched at end of headers) gives
exactly the Results of the serial path for a range of messages, against a real DNS server on loopback; what was
asked ahead is used, counted once, and what nobody needed is counted as extra; an abandoned transaction returns its
lookups at once and leaves no reference behind. Through the daemon: transactions aborted under load with a dead DNS
keep the thread count within the pool's bound and the next message is judged right; `[spf] reject_at = rcpt`
refuses an SPF fail at RCPT TO, and its conflict with a DMARC override is refused at start-up.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
import weakref

import pytest

from authmilter import pipeline
from authmilter.config import Config, ConfigError, DnsSection, TrustAd, TrustSection, parse_config_text
from authmilter.context import Connection, Envelope, Message, MessageContext
from authmilter.early import ENDED, EarlyDns, EarlyWork
from authmilter.resolver import Answer, Outcome, Resolver, WorkerPool
from testlab.daemonrunner import DaemonRunner
from testlab.dnsserver import DnsServer, Fault
from testlab.fakedns import FakeDns
from testlab.milterclient import MilterClient, split_message
from tests.hostile import signing
from tests.test_dns_faults import base_zone, daemon_threads, message_from

pytestmark = pytest.mark.timeout(120)

CLIENT = "192.0.2.10"
STRANGER = "203.0.113.9"
NOW = 1_800_000_000.0


def _zone() -> dict:
    zone = base_zone()
    zone.update({
        "sub.example.org": [{"MX": [10, "mx.example.org"]}],
        "list.example": [{"TXT": "v=spf1 -all"}],
        signing.key_name("list.example"): [{"TXT": signing.key_record()}],
        "fail.example": [{"TXT": "v=spf1 -all"}],
        "_dmarc.fail.example": [{"TXT": "v=DMARC1; p=reject"}],
    })
    return zone


@pytest.fixture
def server():
    with DnsServer(_zone(), lifetime=100) as srv:
        yield srv


def _cfg(server: DnsServer, **dns) -> Config:
    values = dict(nameservers=(server.nameserver,), timeout=2.0, message_deadline=5.0, trust_ad=TrustAd.NO,
                  cache_size=0)
    values.update(dns)
    return Config(dns=DnsSection(**values), trust=TrustSection(networks=()))


# name -> (client ip, helo, mail from, raw message)
MESSAGES = {
    "aligned signature": (CLIENT, "mx.example.org", "alice@example.org",
                          signing.sign(signing.simple_message("alice@example.org"), "example.org")),
    "altered body": (STRANGER, "relay.example", "alice@example.org",
                     signing.sign(signing.simple_message("alice@example.org"), "example.org").replace(b"\r\n\r\n",
                                                                                          b"\r\n\r\nX")),
    "spf fail, no signature": (STRANGER, "relay.example", "bob@fail.example", signing.simple_message("bob@fail.example")),
    "null sender": (STRANGER, "mx.example.org", "", signing.simple_message("mailer-daemon@example.org")),
    "list signature, subdomain author": (STRANGER, "relay.example", "x@list.example",
                                         signing.sign(signing.simple_message("alice@sub.example.org"),
                                                      "list.example")),
    "no DNS names at all": (STRANGER, "[192.0.2.1]", "bad@[192.0.2.1]", signing.simple_message("nobody")),
}


def _contexts(ip: str, helo: str, mail_from: str, raw: bytes) -> tuple[MessageContext, MessageContext]:
    """(what is known at MAIL FROM, what is known at end of message)."""
    import ipaddress
    conn = Connection(ipaddress.ip_address(ip), "unknown", helo, None)
    at_mail = MessageContext(conn, Envelope(mail_from, (), "QEARLY"))
    return at_mail, MessageContext(conn, Envelope(mail_from, ("rcpt@example.net",), "QEARLY"), message_from(raw))


def _serial(cfg: Config, resolver: Resolver, at_eom: MessageContext):
    return pipeline.evaluate(at_eom, resolver.for_message(), cfg, now=NOW)


def _early(cfg: Config, resolver: Resolver, at_mail: MessageContext, at_eom: MessageContext):
    work = EarlyWork(EarlyDns(resolver.for_message(), resolver.pool), resolver.pool)
    pipeline.start_early(work, pipeline.Stage.MAIL, at_mail, cfg, now=NOW)
    at_eoh = dataclasses.replace(at_eom, message=Message(at_eom.message.headers))
    pipeline.start_early(work, pipeline.Stage.EOH, at_eoh, cfg, now=NOW)
    try:
        return pipeline.evaluate(at_eom, resolver.for_message(), cfg, now=NOW, early=work)
    finally:
        work.abandon()


@pytest.mark.parametrize("name", MESSAGES)
def test_early_lookups_give_the_serial_results(server, name):
    cfg = _cfg(server)
    resolver = Resolver(cfg.dns)
    try:
        at_mail, at_eom = _contexts(*MESSAGES[name])
        serial = _serial(cfg, resolver, at_eom)
        asked_serially = server.total_queries
        early = _early(cfg, resolver, at_mail, at_eom)
        assert dataclasses.replace(early, dns_extra=0) == serial
        # Every lookup the early path sent is one the serial code asked, or one it counted as extra.
        assert server.total_queries - asked_serially <= serial.dns_queries + early.dns_extra
    finally:
        resolver.close()


def test_tree_walk_names_are_asked_side_by_side_and_the_unreached_counted(server):
    cfg = _cfg(server)
    resolver = Resolver(cfg.dns)
    try:
        # The author domain has its own record: the serial walk stops there, the early one also asked _dmarc.org.
        at_mail, at_eom = _contexts(*MESSAGES["aligned signature"])
        results = _early(cfg, resolver, at_mail, at_eom)
        assert results.dmarc.status.value == "pass"
        assert server.count("_dmarc.org", "TXT") == 1
        assert results.dns_extra == 1
    finally:
        resolver.close()


def _wait_until(ready, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready()


class _Inputs:
    """Stands for the inputs an early step closes over (a message's headers, its context)."""


class _GatedDns(FakeDns):
    """FakeDns whose answers wait for `gate` (a lookup on its way), counting what was asked of it."""

    def __init__(self, zone: dict) -> None:
        super().__init__(zone)
        self.gate = threading.Event()

    def query(self, name: str, rdtype: str) -> Answer:
        self.gate.wait(10)
        return super().query(name, rdtype)


def test_a_prefetched_answer_is_used_once_and_counted_once():
    inner = FakeDns({"example.org": {"TXT": ["v=spf1 -all"]}})
    pool = WorkerPool(2)
    try:
        dns = EarlyDns(inner, pool)
        dns.prefetch("Example.ORG.", "TXT")
        dns.prefetch("nothing.example", "TXT")
        _wait_until(lambda: len(inner.asked) == 2)
        answer = dns.query("example.org", "TXT")
        assert answer.outcome is Outcome.ANSWER and answer.name == "example.org"
        assert dns.query("example.org", "TXT").ok   # asked again: a second, ordinary lookup
        assert dns.settle() == 1                    # nothing.example went out for nothing
        assert dns.query_count == 2                 # what the checks asked
        assert sorted(inner.asked) == [("example.org", "TXT"), ("example.org", "TXT"), ("nothing.example", "TXT")]
    finally:
        pool.close()


def test_a_prefetch_still_queued_at_the_verdict_is_dropped_not_counted():
    inner = _GatedDns({})
    pool = WorkerPool(1)
    try:
        dns = EarlyDns(inner, pool)
        dns.prefetch("first.example", "TXT")    # holds the only worker
        dns.prefetch("second.example", "TXT")   # queued behind it
        time.sleep(0.05)
        assert dns.settle() == 1                # first went out; second is cancelled before it could
        inner.gate.set()
    finally:
        pool.close()
    time.sleep(0.05)
    assert [name for name, _ in inner.asked] == ["first.example"]


def test_an_abandoned_transaction_returns_at_once_and_leaves_nothing_behind():
    inner = _GatedDns({"example.org": {"TXT": ["v=spf1 -all"]}})
    pool = WorkerPool(2)
    try:
        dns = EarlyDns(inner, pool)
        work = EarlyWork(dns, pool)
        payload = _Inputs()
        alive = weakref.ref(payload)
        work.start("slow", lambda: (payload, dns.query("example.org", "TXT"))[1])
        work.start("queued", lambda: (payload, dns.query("example.org", "MX"))[1])
        work.start("queued2", lambda: (payload, dns.query("example.org", "A"))[1])
        dns.prefetch("other.example", "TXT")
        time.sleep(0.05)
        work.abandon()
        answer = dns.query("example.org", "TXT")
        assert answer.outcome is Outcome.TIMEOUT and answer.detail == ENDED
        inner.gate.set()                        # the lookup that was on its way comes back
        deadline = time.monotonic() + 5
        del payload, work, dns                  # what the adapter lets go of when the transaction ends
        while alive() is not None and time.monotonic() < deadline:
            time.sleep(0.02)
            gc.collect()
        assert alive() is None, "an abandoned step still holds its inputs"
        assert len(inner.asked) <= 2            # only what had started: nothing queued ran after abandon()
    finally:
        pool.close()


def test_a_step_nobody_has_started_runs_for_whoever_needs_it():
    """A full pool delays nothing beyond the serial code: the result is computed on the asking thread."""
    blocker = threading.Event()
    pool = WorkerPool(1)
    try:
        work = EarlyWork(EarlyDns(FakeDns({}), pool), pool)
        work.start("blocker", lambda: blocker.wait(10))
        work.start("needed", lambda: threading.current_thread().name)
        assert work.result("needed") == threading.current_thread().name
    finally:
        blocker.set()
        pool.close()


def test_lookups_wait_for_a_slow_client_without_spending_the_deadline(server):
    """The seconds between MAIL FROM and end of headers belong to the client, not to the DNS budget."""
    cfg = _cfg(server, message_deadline=0.5)
    resolver = Resolver(cfg.dns)
    try:
        at_mail, at_eom = _contexts(*MESSAGES["aligned signature"])
        work = EarlyWork(EarlyDns(resolver.for_message(), resolver.pool), resolver.pool)
        pipeline.start_early(work, pipeline.Stage.MAIL, at_mail, cfg, now=NOW)
        work.result("spf")
        time.sleep(0.8)                          # a slow body
        pipeline.start_early(work, pipeline.Stage.EOH, dataclasses.replace(at_eom, message=Message(
            at_eom.message.headers)), cfg, now=NOW)
        results = pipeline.evaluate(at_eom, resolver.for_message(), cfg, now=NOW, early=work)
        assert not results.dns_deadline_expired
        assert [str(s.status) for s in results.dkim.signatures] == ["pass"]
    finally:
        resolver.close()


# ---------------------------------------------------------------- through the daemon

WORKERS = 3


def test_transactions_aborted_under_load_leak_no_thread_and_the_next_message_is_judged(server, tmp_path):
    server.set_fault(Fault.TIMEOUT)
    extra = {"dns": {"timeout": "5", "message_deadline": "3", "workers": str(WORKERS)},
             "trust": {"networks": ""}}
    with DaemonRunner(tmp_path, dns_server=server, authserv_id="mx.early.example", extra=extra,
                      lifetime=100) as daemon:
        baseline = daemon_threads(daemon.pid)
        most = baseline
        clients = []
        for number in range(30):
            client = MilterClient(str(daemon.socket_path), timeout=30)
            client.negotiate()
            client.connect("unknown", f"198.51.100.{number + 1}", macros={"{client_addr}": f"198.51.100.{number + 1}"})
            client.helo(f"h{number}.example.org")
            client.mail(f"a{number}@example.org")
            client.rcpt("bob@example.net")
            clients.append(client)
            most = max(most, daemon_threads(daemon.pid))
        for client in clients:
            client.abort()                       # RSET: the transaction ends, its lookups are not waited for
            client.mail("again@example.org")     # a new MAIL FROM starts another one, also abandoned below
            most = max(most, daemon_threads(daemon.pid))
        for client in clients:
            client.quit()
        # libmilter's own: one thread per connection, gone with it; ours: at most WORKERS, however dead the DNS.
        deadline = time.monotonic() + 20
        while daemon_threads(daemon.pid) > baseline + WORKERS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon_threads(daemon.pid) <= baseline + WORKERS
        assert most <= baseline + WORKERS + len(clients)
        server.clear_faults()
        # The pool is free again: the next message gets every answer, not a deadline spent queueing.
        headers, body = split_message(signing.sign(signing.simple_message("alice@example.org"), "example.org"))
        with MilterClient(str(daemon.socket_path), timeout=30) as client:
            client.negotiate()
            outcome = client.transaction(client_ip=CLIENT, helo="mx.example.org", mail_from="alice@example.org",
                                         rcpts=["bob@example.net"], headers=headers, body=body, queue_id="QAFTER")
        assert outcome.reply == "accept"
        [value] = outcome.added_values("Authentication-Results")
        assert "spf=pass" in value and "dkim=pass" in value and "dmarc=pass" in value and "iprev=pass" in value
        assert daemon.stop() == 0
        log = daemon.log_text()
    assert "Traceback" not in log
    [line] = [line for line in log.splitlines() if "queue_id=QAFTER" in line]
    assert "dns_deadline_expired" not in line


REJECT_AT_RCPT = {"spf": {"fail_action": "reject", "reject_at": "rcpt"},
                  "policy": {"dmarc_pass_overrides_spf": "no"}, "trust": {"networks": ""}}


@pytest.mark.parametrize("early_lookups", ["yes", "no"])
def test_spf_fail_is_refused_at_rcpt_without_taking_the_body(server, tmp_path, early_lookups):
    extra = {**REJECT_AT_RCPT, "dns": {"early_lookups": early_lookups}}
    with DaemonRunner(tmp_path, dns_server=server, authserv_id="mx.early.example", extra=extra,
                      lifetime=60) as daemon:
        headers, body = split_message(signing.simple_message("bob@fail.example"))
        with MilterClient(str(daemon.socket_path), timeout=30) as client:
            client.negotiate()
            refused = client.transaction(client_ip=STRANGER, helo="relay.example", mail_from="bob@fail.example",
                                         rcpts=["alice@example.net"], headers=headers, body=body, queue_id="QRCPT")
        # postmaster@ stays reachable (RFC 5321 §4.5.1): the recipient is taken, and the message is judged at
        # end of message as usual
        with MilterClient(str(daemon.socket_path), timeout=30) as client:
            client.negotiate()
            exempt = client.transaction(client_ip=STRANGER, helo="relay.example", mail_from="bob@fail.example",
                                        rcpts=["postmaster@example.net"], headers=headers, body=body,
                                        queue_id="QPOST")
        # a sender whose SPF passes is not affected
        good_headers, good_body = split_message(signing.simple_message("alice@example.org"))
        with MilterClient(str(daemon.socket_path), timeout=30) as client:
            client.negotiate()
            passed = client.transaction(client_ip=CLIENT, helo="mx.example.org", mail_from="alice@example.org",
                                        rcpts=["bob@example.net"], headers=good_headers, body=good_body,
                                        queue_id="QGOOD")
        assert daemon.stop() == 0
        log = daemon.log_text()
    assert (refused.stage, refused.reply) == ("rcpt", "replycode")
    assert refused.reply_text.startswith("550 5.7.23 ")
    assert "SPF" in refused.reply_text
    assert exempt.stage == "eom"
    assert (passed.stage, passed.reply) == ("eom", "accept")
    assert any("queue_id=QRCPT rcpt=alice@example.net action=reject reason=spf_fail" in line
               for line in log.splitlines()), log


def test_reject_at_rcpt_with_the_dmarc_override_is_refused_at_start_up():
    with pytest.raises(ConfigError) as raised:
        parse_config_text("[spf]\nfail_action = reject\nreject_at = rcpt\n", "F.ini")
    assert str(raised.value) == ("F.ini: [spf] reject_at: rcpt cannot work with [policy] dmarc_pass_overrides_spf "
                                 "= yes (the default): a DMARC pass is only known after the headers, long after "
                                 "RCPT; set that key to no, or reject_at to eom")
    with pytest.raises(ConfigError) as raised:
        parse_config_text("[spf]\nreject_at = rcpt\n[policy]\ndmarc_pass_overrides_spf = no\n", "F.ini")
    assert "[spf] reject_at: rcpt refuses an SPF fail at RCPT TO, which needs [spf] fail_action = reject" \
        in str(raised.value)
    cfg = parse_config_text("[spf]\nfail_action = reject\nreject_at = rcpt\n[policy]\n"
                            "dmarc_pass_overrides_spf = no\n", "F.ini")
    assert cfg.spf.reject_at == "rcpt"


def test_arc_keys_are_asked_at_end_of_headers_and_used_by_the_chain_check():
    """ARC (opt-in) verifies at end of message; its keys were asked side by side at end of headers."""
    from authmilter.checks.arc import check as arc_check
    from tests import arc_support
    from tests.reports_helpers import message as parsed
    from tests.test_arc import ARC_ZONE, FWD, list_mail
    message = parsed(arc_support.seal(list_mail(), FWD, "arc=pass smtp.remote-ip=192.0.2.7"))  # two hops
    names = [name for name, _ in arc_check.key_lookups(message)]
    assert names and len(names) == len(set(names))
    inner = FakeDns(ARC_ZONE)
    pool = WorkerPool(2)
    try:
        dns = EarlyDns(inner, pool)
        for name in names:
            dns.prefetch(name, "TXT")
        _wait_until(lambda: len(inner.asked) == len(names))
        result = arc_check.check_arc(message, dns, Config().dkim)
        assert len(result.hops) == 2
        assert str(result.status) == "pass"
        assert dns.settle() == 0                          # every key asked ahead was the chain's
        assert len(inner.asked) == len(names)             # and none was asked twice
    finally:
        pool.close()
