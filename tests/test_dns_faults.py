"""DNS faults through the REAL resolver (authmilter.resolver) against a real DNS server on loopback (DnsServer).

Each case breaks one lookup (or all of them) the way a hostile or broken network does, runs one check or the whole
pipeline, and asserts the RFC's answer: a DNS failure is temperror (RFC 7208 §2.6.6/§5, RFC 6376 §6.1.2 "key
unavailable", RFC 9989 §4.10 / DMARC's temperror, RFC 8601 §2.7.3 iprev), broken published data is permerror,
a truncated UDP answer is retried over TCP and gives the normal result. Where the per-message deadline (or query
budget) is what ended a lookup, the test asserts `deadline_expired` and the detail text, never elapsed time.
No thread may be left behind (the DnsServer's own threads excepted, which stop with it).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import replace

import pytest

from authmilter import pipeline
from authmilter.checks.dkim.check import check_dkim
from authmilter.checks.dmarc.check import check_dmarc
from authmilter.checks.iprev import check_iprev
from authmilter.checks.spf import check_spf
from authmilter.cli import parse_message
from authmilter.config import (Config, DkimSection, DmarcSection, DnsSection, IprevSection, SpfSection,
                               TrustAd, TrustSection)
from authmilter.context import Connection, Envelope, Header, Message, MessageContext
from authmilter.resolver import Resolver
from authmilter.results import Status
from testlab.dnsserver import DnsServer, Fault
from tests.hostile import signing

pytestmark = pytest.mark.timeout(60)

CLIENT = "192.0.2.10"
REVERSE = "10.2.0.192.in-addr.arpa"
DOMAIN = "example.org"
HUGE_SPF_IPS = 900  # ~ 16 KB of "ip4:198.51.x.y " terms: far beyond one UDP datagram and one TXT string


def huge_spf_record() -> str:
    # Only ip4 terms (no DNS lookups, RFC 7208 §4.6.4), the client's address last: a correct evaluation must read
    # the whole record.
    terms = [f"ip4:198.51.{i // 250}.{i % 250}" for i in range(HUGE_SPF_IPS)]
    return "v=spf1 " + " ".join(terms) + f" ip4:{CLIENT} -all"


def base_zone() -> dict:
    return {
        DOMAIN: [{"TXT": f"v=spf1 ip4:{CLIENT} -all"}, {"MX": [10, f"mx.{DOMAIN}"]}],
        f"mx.{DOMAIN}": [{"A": CLIENT}],
        f"_dmarc.{DOMAIN}": [{"TXT": "v=DMARC1; p=reject"}],
        signing.key_name(DOMAIN): [{"TXT": signing.key_record()}],
        REVERSE: [{"PTR": f"mx.{DOMAIN}"}],
        # SPF over 10 KB, only served over TCP
        "huge.example": [{"TXT": huge_spf_record()}],
        "_dmarc.huge.example": [{"TXT": "v=DMARC1; p=none"}],
        # a DKIM key record over 10 KB: a p= far too long to be a key
        signing.key_name("hugekey.example"): [{"TXT": "v=DKIM1; k=ed25519; p=" + "QUFB" * 2600}],
        # CNAME loops, for every kind of lookup
        "loop.example": [{"CNAME": "loop2.example"}],
        "loop2.example": [{"CNAME": "loop.example"}],
        "_dmarc.loopdmarc.example": [{"CNAME": "_dmarc2.loopdmarc.example"}],
        "_dmarc2.loopdmarc.example": [{"CNAME": "_dmarc.loopdmarc.example"}],
        signing.key_name("loopkey.example"): [{"CNAME": "k2.loopkey.example"}],
        "k2.loopkey.example": [{"CNAME": signing.key_name("loopkey.example")}],
        "loopptr.example": [{"CNAME": "loopptr2.example"}],
        "loopptr2.example": [{"CNAME": "loopptr.example"}],
        # an include chain: each hop is one DNS lookup (RFC 7208 §4.6.4)
        **{f"chain{i}.example": [{"TXT": f"v=spf1 include:chain{i + 1}.example -all"}] for i in range(12)},
        "chain12.example": [{"TXT": f"v=spf1 ip4:{CLIENT} -all"}],
    }


def dns_section(server: DnsServer, **overrides) -> DnsSection:
    values = dict(nameservers=(server.nameserver,), timeout=1.0, message_deadline=4.0, max_queries=100,
                  trust_ad=TrustAd.NO, cache_size=0)
    values.update(overrides)
    return DnsSection(**values)


def our_threads() -> set[threading.Thread]:
    """Live threads, minus the DnsServer's (named dnsserver-PORT, or running its TCP connection handler)."""
    return {t for t in threading.enumerate()
            if t.is_alive() and not t.name.startswith("dnsserver-") and "_serve_tcp_conn" not in t.name}


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    before = our_threads()
    yield
    # Nothing of ours runs in the background: the resolver uses plain sockets in the calling thread.
    leftover = our_threads() - before
    assert not leftover, f"threads left behind: {sorted(t.name for t in leftover)}"


@pytest.fixture
def server():
    with DnsServer(base_zone(), lifetime=60) as srv:
        yield srv
    assert not srv.running


def resolver_for(server: DnsServer, **overrides) -> Resolver:
    return Resolver(dns_section(server, **overrides))


def message_from(raw: bytes) -> Message:
    headers, body = parse_message(raw)
    return Message(tuple(Header(name, value) for name, value in headers), body)


def signed_message(domain: str = DOMAIN) -> Message:
    return message_from(signing.sign(signing.simple_message(f"alice@{domain}"), domain))


def context(mail_from: str = f"alice@{DOMAIN}", *, message: Message | None = None, helo: str = f"mx.{DOMAIN}",
            client: str = CLIENT) -> MessageContext:
    return MessageContext(Connection(ipaddress.ip_address(client), "", helo),
                          Envelope(mail_from, ("bob@example.net",), "FAULTQ"),
                          message if message is not None else signed_message())


def config(server: DnsServer, **dns_overrides) -> Config:
    return Config(dns=dns_section(server, **dns_overrides), trust=TrustSection(networks=()))


# ================================================================ the baseline: no fault

def test_no_fault_everything_passes(server):
    ctx = context()
    dns = resolver_for(server).for_message()
    results = pipeline.evaluate(ctx, dns, config(server), now=time.time())
    assert results.iprev.status is Status.PASS
    assert results.spf.mailfrom.status is Status.PASS
    assert [s.status for s in results.dkim.signatures] == [Status.PASS]
    assert results.dmarc.status is Status.PASS
    assert not results.dns_deadline_expired


# ================================================================ SPF

SPF_FAULTS = [
    # (fault, on which lookup, expected status, words in the reason)
    (Fault.SERVFAIL, (DOMAIN, "TXT"), Status.TEMPERROR, "SERVFAIL"),      # RFC 7208 §5 / §2.6.6
    (Fault.REFUSED, (DOMAIN, "TXT"), Status.TEMPERROR, "REFUSED"),
    (Fault.GARBAGE, (DOMAIN, "TXT"), Status.TEMPERROR, "malformed"),
    (Fault.TIMEOUT, (DOMAIN, "TXT"), Status.TEMPERROR, "no reply"),
    # A truncated UDP answer is retried over TCP (RFC 7766 §5): the normal result.
    (Fault.TRUNCATE, (DOMAIN, "TXT"), Status.PASS, ""),
]


@pytest.mark.parametrize("fault, where, expected, words", SPF_FAULTS, ids=[f[0].value for f in SPF_FAULTS])
def test_spf_mailfrom_fault(server, fault, where, expected, words):
    server.set_fault(fault, *where)
    dns = resolver_for(server).for_message()
    result = check_spf(context().connection, context().envelope, dns, SpfSection(check_helo=False))
    assert result.mailfrom.status is expected, result
    assert words in result.mailfrom.reason
    if fault is Fault.TRUNCATE:
        assert server.count(DOMAIN, "TXT", transport="tcp") >= 1
    # One slow lookup ended by its own timeout, well inside the message's budget: not the deadline.
    assert not dns.deadline_expired


def test_spf_timeout_ended_by_the_message_deadline(server):
    server.set_fault(Fault.TIMEOUT, DOMAIN, "TXT")
    # The per-query timeout is longer than the whole message's budget: the budget is what ends the wait.
    dns = resolver_for(server, timeout=10.0, message_deadline=0.5).for_message()
    result = check_spf(context().connection, context().envelope, dns, SpfSection(check_helo=False))
    assert result.mailfrom.status is Status.TEMPERROR
    assert "deadline" in result.mailfrom.reason
    assert dns.deadline_expired


def test_spf_record_over_10_kb_comes_over_tcp_and_is_evaluated_whole(server):
    record = huge_spf_record()
    assert len(record) > 10_000
    dns = resolver_for(server).for_message()
    ctx = context("alice@huge.example", helo="mx.huge.example")
    result = check_spf(ctx.connection, ctx.envelope, dns, SpfSection(check_helo=False))
    assert result.mailfrom.status is Status.PASS, result
    assert result.mailfrom.mechanism == f"ip4:{CLIENT}"
    assert server.count("huge.example", "TXT", transport="tcp") >= 1


def test_spf_cname_loop_is_temperror(server):
    dns = resolver_for(server).for_message()
    ctx = context("alice@loop.example", helo="mx.loop.example")
    result = check_spf(ctx.connection, ctx.envelope, dns, SpfSection(check_helo=False))
    # A CNAME loop is a DNS error, not "no record" (a recursive resolver answers SERVFAIL for it).
    assert result.mailfrom.status is Status.TEMPERROR, result
    assert "CNAME loop" in result.mailfrom.reason


def test_spf_include_chain_over_ten_lookups_is_permerror(server):
    dns = resolver_for(server).for_message()
    ctx = context("alice@chain0.example", helo="mx.chain0.example")
    result = check_spf(ctx.connection, ctx.envelope, dns, SpfSection(check_helo=False))
    # RFC 7208 §4.6.4: more than 10 DNS-querying terms is permerror.
    assert result.mailfrom.status is Status.PERMERROR, result
    assert not dns.deadline_expired


def test_spf_query_budget_of_the_message_ends_it(server):
    # max_queries below what the include chain needs: our own per-message budget stops it first.
    dns = resolver_for(server, max_queries=5).for_message()
    ctx = context("alice@chain0.example", helo="mx.chain0.example")
    result = check_spf(ctx.connection, ctx.envelope, dns, SpfSection(check_helo=False))
    assert result.mailfrom.status is Status.TEMPERROR, result
    assert "query limit" in result.mailfrom.reason
    assert dns.deadline_expired


# ================================================================ DKIM (RFC 6376 §6.1.2)

KEY = signing.key_name(DOMAIN)
DKIM_FAULTS = [
    (Fault.SERVFAIL, Status.TEMPERROR, "SERVFAIL"),
    (Fault.REFUSED, Status.TEMPERROR, "REFUSED"),
    (Fault.GARBAGE, Status.TEMPERROR, "malformed"),
    (Fault.TIMEOUT, Status.TEMPERROR, "no reply"),
    (Fault.TRUNCATE, Status.PASS, ""),
]


@pytest.mark.parametrize("fault, expected, words", DKIM_FAULTS, ids=[f[0].value for f in DKIM_FAULTS])
def test_dkim_key_lookup_fault(server, fault, expected, words):
    server.set_fault(fault, KEY, "TXT")
    dns = resolver_for(server).for_message()
    result = check_dkim(signed_message(), dns, DkimSection(), now=time.time(), from_domain=DOMAIN)
    [sig] = result.signatures
    assert sig.status is expected, sig
    assert words in sig.reason
    assert sig.domain == DOMAIN
    assert not dns.deadline_expired


def test_dkim_key_timeout_ended_by_the_message_deadline(server):
    server.set_fault(Fault.TIMEOUT, KEY, "TXT")
    dns = resolver_for(server, timeout=10.0, message_deadline=0.5).for_message()
    [sig] = check_dkim(signed_message(), dns, DkimSection(), now=time.time(), from_domain=DOMAIN).signatures
    assert sig.status is Status.TEMPERROR
    assert "deadline" in sig.reason
    assert dns.deadline_expired


def test_dkim_key_record_over_10_kb_is_permerror(server):
    dns = resolver_for(server).for_message()
    msg = signed_message("hugekey.example")
    [sig] = check_dkim(msg, dns, DkimSection(), now=time.time(), from_domain="hugekey.example").signatures
    # Fetched whole over TCP, then refused as a key: RFC 6376 §6.1.2 PERMFAIL (key syntax error / unusable key).
    assert sig.status is Status.PERMERROR, sig
    assert server.count(signing.key_name("hugekey.example"), "TXT", transport="tcp") >= 1


def test_dkim_key_cname_loop_is_temperror(server):
    dns = resolver_for(server).for_message()
    [sig] = check_dkim(signed_message("loopkey.example"), dns, DkimSection(), now=time.time(),
                       from_domain="loopkey.example").signatures
    assert sig.status is Status.TEMPERROR, sig
    assert "CNAME loop" in sig.reason


def test_dkim_key_nxdomain_is_permerror(server):
    dns = resolver_for(server).for_message()
    [sig] = check_dkim(signed_message("nokey.example"), dns, DkimSection(), now=time.time(),
                       from_domain="nokey.example").signatures
    assert sig.status is Status.PERMERROR  # §6.1.2: "PERMFAIL (no key for signature)"
    assert sig.reason == "no key"


# ================================================================ DMARC (RFC 9989)

def _spf_and_dkim(server, domain: str):
    ctx = context(f"alice@{domain}", helo=f"mx.{domain}")
    dns = resolver_for(server).for_message()
    return ctx, check_spf(ctx.connection, ctx.envelope, dns, SpfSection(check_helo=False)), \
        check_dkim(ctx.message, dns, DkimSection(), now=time.time(), from_domain=domain)


DMARC_FAULTS = [Fault.SERVFAIL, Fault.REFUSED, Fault.GARBAGE, Fault.TIMEOUT]


@pytest.mark.parametrize("fault", DMARC_FAULTS, ids=[f.value for f in DMARC_FAULTS])
def test_dmarc_policy_lookup_fault_is_temperror(server, fault):
    ctx, spf, dkim = _spf_and_dkim(server, DOMAIN)
    server.set_fault(fault, f"_dmarc.{DOMAIN}", "TXT")
    dns = resolver_for(server).for_message()
    result = check_dmarc(ctx.message, spf, dkim, dns, DmarcSection())
    # The policy is unknown, not absent: never "none" (which would let a p=reject domain be spoofed on a
    # DNS hiccup), never "pass".
    assert result.status is Status.TEMPERROR, result
    assert result.from_domain == DOMAIN


def test_dmarc_truncated_policy_answer_is_retried_over_tcp(server):
    ctx, spf, dkim = _spf_and_dkim(server, DOMAIN)
    server.set_fault(Fault.TRUNCATE, f"_dmarc.{DOMAIN}", "TXT")
    dns = resolver_for(server).for_message()
    result = check_dmarc(ctx.message, spf, dkim, dns, DmarcSection())
    assert result.status is Status.PASS
    assert result.p == "reject"
    assert server.count(f"_dmarc.{DOMAIN}", "TXT", transport="tcp") >= 1


def test_dmarc_policy_cname_loop_is_temperror(server):
    ctx = context("alice@loopdmarc.example", message=message_from(signing.simple_message("a@loopdmarc.example")))
    dns = resolver_for(server).for_message()
    result = check_dmarc(ctx.message, None, None, dns, DmarcSection())
    assert result.status is Status.TEMPERROR, result


def test_dmarc_deadline_spent_before_the_policy_lookup(server):
    ctx, spf, dkim = _spf_and_dkim(server, DOMAIN)
    server.set_fault(Fault.TIMEOUT, f"_dmarc.{DOMAIN}", "TXT")
    dns = resolver_for(server, timeout=10.0, message_deadline=0.5).for_message()
    result = check_dmarc(ctx.message, spf, dkim, dns, DmarcSection())
    assert result.status is Status.TEMPERROR
    assert dns.deadline_expired


# ================================================================ iprev (RFC 8601 §3)

IPREV_FAULTS = [
    (Fault.SERVFAIL, (REVERSE, "PTR"), Status.TEMPERROR),
    (Fault.TIMEOUT, (REVERSE, "PTR"), Status.TEMPERROR),
    (Fault.GARBAGE, (REVERSE, "PTR"), Status.TEMPERROR),
    (Fault.TRUNCATE, (REVERSE, "PTR"), Status.PASS),
    # The forward lookup fails and no other name confirms the address.
    (Fault.SERVFAIL, (f"mx.{DOMAIN}", "A"), Status.TEMPERROR),
]


@pytest.mark.parametrize("fault, where, expected", IPREV_FAULTS,
                         ids=[f"{f[0].value}-{f[1][1]}" for f in IPREV_FAULTS])
def test_iprev_fault(server, fault, where, expected):
    server.set_fault(fault, *where)
    dns = resolver_for(server).for_message()
    result = check_iprev(context().connection, dns, IprevSection())
    assert result.status is expected, result


def test_iprev_ptr_to_a_cname_loop_is_not_a_pass(server):
    server.add("11.2.0.192.in-addr.arpa", [{"PTR": "loopptr.example"}])
    dns = resolver_for(server).for_message()
    result = check_iprev(context(client="192.0.2.11").connection, dns, IprevSection())
    assert result.status is Status.TEMPERROR, result


# ================================================================ the whole pipeline

def test_pipeline_everything_times_out_and_the_deadline_ends_it(server):
    server.set_fault(Fault.TIMEOUT)  # the resolver never answers anything
    cfg = config(server, timeout=10.0, message_deadline=0.6)
    dns = Resolver(cfg.dns).for_message()
    results = pipeline.evaluate(context(), dns, cfg, now=time.time())
    assert results.dns_deadline_expired
    assert results.iprev.status is Status.TEMPERROR
    assert results.spf.mailfrom.status is Status.TEMPERROR
    assert [s.status for s in results.dkim.signatures] == [Status.TEMPERROR]
    assert results.dmarc.status is Status.TEMPERROR
    # Once the budget is spent no more time is waited: later lookups are refused at once with the same reason.
    assert "deadline" in results.spf.mailfrom.reason
    assert "deadline" in results.dkim.signatures[0].reason


@pytest.mark.parametrize("fault", [Fault.SERVFAIL, Fault.GARBAGE, Fault.REFUSED], ids=lambda f: f.value)
def test_pipeline_every_lookup_fails(server, fault):
    server.set_fault(fault)
    cfg = config(server)
    dns = Resolver(cfg.dns).for_message()
    results = pipeline.evaluate(context(), dns, cfg, now=time.time())
    assert results.iprev.status is Status.TEMPERROR
    assert results.spf.mailfrom.status is Status.TEMPERROR
    assert [s.status for s in results.dkim.signatures] == [Status.TEMPERROR]
    assert results.dmarc.status is Status.TEMPERROR
    assert not results.dns_deadline_expired


def test_pipeline_query_budget_spent_by_spf_leaves_the_rest_temperror(server):
    # SPF's include chain eats the message's whole query budget; DKIM and DMARC then get "limit spent" answers.
    cfg = config(server, max_queries=10)
    dns = Resolver(cfg.dns).for_message()
    msg = message_from(signing.simple_message(f"alice@{DOMAIN}"))
    ctx = context("alice@chain0.example", helo="mx.chain0.example", message=msg)
    results = pipeline.evaluate(ctx, dns, cfg, now=time.time())
    assert results.dns_deadline_expired
    assert results.dmarc.status is Status.TEMPERROR
    assert results.dns_queries >= 10


class StopServerAfter:
    """A DnsClient that passes every query to the real per-message client and stops the DNS server after the
    n-th one: "a resolver that goes away" in the middle of one message."""

    def __init__(self, dns, server: DnsServer, n: int):
        self.dns, self.server, self.n, self.seen = dns, server, n, 0

    def query(self, name, rdtype):
        answer = self.dns.query(name, rdtype)
        self.seen += 1
        if self.seen == self.n:
            self.server.stop()
        return answer

    @property
    def query_count(self):
        return self.dns.query_count

    @property
    def deadline_expired(self):
        return self.dns.deadline_expired


def test_pipeline_resolver_goes_away_mid_message(server):
    cfg = config(server)
    # iprev's PTR and A lookups succeed; then the server is gone (nothing listens: ICMP port unreachable).
    dns = StopServerAfter(Resolver(cfg.dns).for_message(), server, 2)
    results = pipeline.evaluate(context(), dns, cfg, now=time.time())
    assert not server.running
    assert results.iprev.status is Status.PASS
    assert results.spf.mailfrom.status is Status.TEMPERROR
    assert [s.status for s in results.dkim.signatures] == [Status.TEMPERROR]
    assert results.dmarc.status is Status.TEMPERROR


def test_resolver_gone_between_messages(server):
    cfg = config(server)
    resolver = Resolver(cfg.dns)
    first = pipeline.evaluate(context(), resolver.for_message(), cfg, now=time.time())
    assert first.dmarc.status is Status.PASS
    server.stop()
    second = pipeline.evaluate(context(), resolver.for_message(), cfg, now=time.time())
    assert second.iprev.status is Status.TEMPERROR
    assert second.spf.mailfrom.status is Status.TEMPERROR
    assert second.dmarc.status is Status.TEMPERROR


def test_pipeline_with_cache_answers_after_the_server_went_away(server):
    # With the cache on, what was answered before is still answered (no query reaches the dead server).
    cfg = replace(config(server), dns=replace(dns_section(server), cache_size=100))
    resolver = Resolver(cfg.dns)
    first = pipeline.evaluate(context(), resolver.for_message(), cfg, now=time.time())
    server.stop()
    second = pipeline.evaluate(context(), resolver.for_message(), cfg, now=time.time())
    assert (first.spf.mailfrom.status, second.spf.mailfrom.status) == (Status.PASS, Status.PASS)
    assert second.dmarc.status is Status.PASS


# ================================================================ the real daemon, with a resolver that never answers

def daemon_threads(pid: int) -> int:
    from pathlib import Path
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


WORKERS = 4


@pytest.mark.timeout(90)
def test_daemon_with_a_silent_resolver_answers_every_message_and_keeps_no_thread(server, tmp_path):
    from testlab.milterclient import MilterClient, split_message
    from testlab.daemonrunner import DaemonRunner

    import authres

    server.set_fault(Fault.TIMEOUT)
    # [dns] timeout (per query) is longer than the message's budget: the budget is what ends every message.
    extra = {"dns": {"timeout": "10", "message_deadline": "0.6", "workers": str(WORKERS)},
             "dmarc": {"temperror_action": "accept"}}
    with DaemonRunner(tmp_path, dns_server=server, authserv_id="mx.faults.example", extra=extra,
                      lifetime=80) as daemon:
        baseline = daemon_threads(daemon.pid)
        headers, body = split_message(signing.sign(signing.simple_message(f"alice@{DOMAIN}"), DOMAIN))
        values = []
        for number in range(3):
            with MilterClient(str(daemon.socket_path), timeout=30) as client:
                client.negotiate()
                outcome = client.transaction(client_ip=CLIENT, helo=f"mx.{DOMAIN}", mail_from=f"alice@{DOMAIN}",
                                             rcpts=["bob@example.net"], headers=headers, body=body,
                                             queue_id=f"SILENT{number}")
            assert outcome.reply == "accept", outcome
            values.extend(outcome.added_values("Authentication-Results"))
        # libmilter's per-connection threads end with their connections; of ours, only the early-lookup pool's
        # workers remain (at most [dns] workers, made on demand and kept), however dead the DNS.
        assert daemon.wait_for_log(lambda text: text.count("queue_id=SILENT") == 3, 10)
        deadline = time.monotonic() + 10
        while daemon_threads(daemon.pid) > baseline + WORKERS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon_threads(daemon.pid) <= baseline + WORKERS
        status = daemon.stop()
        log = daemon.log_text()
    assert status == 0
    assert "Traceback" not in log
    assert len(values) == 3
    for value in values:
        results = {(r.method, tuple(p.name for p in r.properties)): r.result
                   for r in authres.AuthenticationResultsHeader.parse("Authentication-Results:" + value).results}
        assert results[("iprev", ("iprev",))] == "temperror"
        assert results[("spf", ("mailfrom",))] == "temperror"
        assert results[("dmarc", ("from",))] == "temperror"
        assert [v for (m, _), v in results.items() if m == "dkim"] == ["temperror"]
    # The log line names the deadline as what ended each message.
    lines = [line for line in log.splitlines() if "queue_id=SILENT" in line]
    assert len(lines) == 3 and all("dns_deadline_expired=yes" in line for line in lines), lines


# ================================================================ DMARC when an aligned identifier hit a DNS error

@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_dmarc_is_temperror_not_fail_when_the_aligned_checks_hit_dns_errors(server, signed):
    from authmilter import policy
    from authmilter.results import Action

    server.set_fault(Fault.SERVFAIL, DOMAIN, "TXT")      # SPF of the (aligned) MAIL FROM domain
    server.set_fault(Fault.SERVFAIL, KEY, "TXT")         # the (aligned) DKIM key
    msg = signed_message() if signed else message_from(signing.simple_message(f"alice@{DOMAIN}"))
    ctx = context(message=msg)
    cfg = config(server)
    results = pipeline.evaluate(ctx, Resolver(cfg.dns).for_message(), cfg, now=time.time())
    assert results.spf.mailfrom.status is Status.TEMPERROR
    assert results.dmarc.status is Status.TEMPERROR, results.dmarc
    # p=reject must not turn a DNS failure into a permanent 550.
    assert policy.decide(results, ctx, cfg).action is not Action.REJECT
