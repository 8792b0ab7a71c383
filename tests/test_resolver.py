"""The real resolver against a real DNS server on loopback: outcomes, records, DNSSEC trust, cache, deadline."""

from __future__ import annotations

import threading

import pytest

from authmilter import resolver as resolver_module
from authmilter.config import DnsSection, Nameserver, TrustAd
from authmilter.resolver import Outcome, Resolver, to_query_name, trusts_ad
from authmilter.results import Dnssec
from testlab.dnsserver import DnsServer, Fault

ZONE = {
    "example.org": [{"TXT": "v=spf1 -all"}, {"TXT": ["v=DMARC1; ", "p=none"]}, {"MX": [10, "mx.example.org."]},
                    {"NS": "ns1.example.org"}],
    "mx.example.org": [{"A": "192.0.2.1"}, {"A": "192.0.2.2"}, {"AAAA": "2001:DB8:0:0::1"}],
    "nullmx.example": [{"MX": [0, "."]}],
    "1.2.0.192.in-addr.arpa": [{"PTR": "mx.example.org."}],
    "deep.a.b.example.org": [{"A": "192.0.2.3"}],
    "alias.example.org": [{"CNAME": "mx.example.org"}],
    "alias2.example.org": [{"CNAME": "alias.example.org"}],
    "dangling.example.org": [{"CNAME": "gone.example.org"}],
    "loop1.example.org": [{"CNAME": "loop2.example.org"}],
    "loop2.example.org": [{"CNAME": "loop1.example.org"}],
    "loop4.example.org": [{"CNAME": "CNAME.example.org."}],
    "cname.example.org": [{"CNAME": "CNAME.example.org."}],
    "4.2.0.192.in-addr.arpa": [{"PTR": "Mail.EXAMPLE.org."}],
    "alias-nodata.example.org": [{"CNAME": "mx.example.org"}],
    "big.example.org": [{"TXT": "v=spf1 " + "ip4:192.0.2.1 " * 300 + "-all"}],
    "hostile.example.org": [{"TXT": []}, {"TXT": "v=spf1 -all"}],
    "foo:bar/baz.example.org": [{"TXT": "colon"}],
    "with space.example.org": [{"TXT": "space"}],
    "xn--bcher-kva.example": [{"A": "192.0.2.9"}],
    "xn--zca.example": [{"A": "192.0.2.10"}],
    "slow.example.org": ["TIMEOUT"],
    "servfail.example.org": [{"A": "192.0.2.4"}],
    "refused.example.org": [{"A": "192.0.2.4"}],
    "garbage.example.org": [{"A": "192.0.2.4"}],
    "truncated.example.org": [{"TXT": "small but truncated"}],
    "secure.example.org": [{"A": "192.0.2.5"}, {"CNAME": "secure-target.example.org"}],
    "secure-target.example.org": [{"A": "192.0.2.6"}],
    "secure-alias.example.org": [{"CNAME": "secure-target.example.org"}],
    "plain-alias.example.org": [{"CNAME": "secure-target.example.org"}],
    "short.example.org": [{"A": "192.0.2.7"}],
    "nosoa.example.org": [{"A": "192.0.2.8"}],
}
SECURE = ("secure.example.org", "secure-target.example.org", "secure-alias.example.org", "gone-secure.example.org")


def configure(server: DnsServer) -> None:
    server.set_fault(Fault.SERVFAIL, "servfail.example.org")
    server.set_fault(Fault.REFUSED, "refused.example.org")
    server.set_fault(Fault.GARBAGE, "garbage.example.org")
    server.set_fault(Fault.TRUNCATE, "truncated.example.org")
    server.set_fault(Fault.NO_SOA, "nosoa.example.org")
    server.set_fault(Fault.NO_SOA, "nothing-nosoa.example.org")
    server.set_ttl("short.example.org", 5)
    for name in SECURE:
        server.set_fault(Fault.AD, name)


@pytest.fixture(scope="module")
def server():
    with DnsServer(ZONE, lifetime=120) as running:
        configure(running)
        yield running


@pytest.fixture(scope="module")
def authoritative_only():
    """A server that answers an alias with the CNAME alone, so the resolver must ask for the target itself."""
    with DnsServer(ZONE, lifetime=120, chase_cnames=False) as running:
        configure(running)
        yield running


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(server: DnsServer, clock=None, **settings) -> Resolver:
    settings.setdefault("timeout", 0.5)
    settings.setdefault("trust_ad", TrustAd.YES)
    cfg = DnsSection(nameservers=(server.nameserver,), **settings)
    return Resolver(cfg, clock=clock) if clock else Resolver(cfg)


def ask(server: DnsServer, name: str, rdtype: str, **settings):
    return make(server, **settings).for_message().query(name, rdtype)


# ---------------------------------------------------------------- outcomes and record shapes

@pytest.mark.parametrize("name, rdtype, outcome, records", [
    ("example.org", "TXT", Outcome.ANSWER, (b"v=spf1 -all", b"v=DMARC1; p=none")),  # strings of a record joined
    ("Example.ORG.", "mx", Outcome.ANSWER, ((10, "mx.example.org"),)),
    ("example.org", "NS", Outcome.ANSWER, ("ns1.example.org",)),
    ("nullmx.example", "MX", Outcome.ANSWER, ((0, ""),)),                          # RFC 7505 null MX
    ("mx.example.org", "A", Outcome.ANSWER, ("192.0.2.1", "192.0.2.2")),
    ("mx.example.org", "AAAA", Outcome.ANSWER, ("2001:db8::1",)),
    ("1.2.0.192.in-addr.arpa", "PTR", Outcome.ANSWER, ("mx.example.org",)),
    ("alias.example.org", "CNAME", Outcome.ANSWER, ("mx.example.org",)),
    ("alias2.example.org", "A", Outcome.ANSWER, ("192.0.2.1", "192.0.2.2")),       # two-step chain
    ("mx.example.org", "TXT", Outcome.NODATA, ()),
    ("a.b.example.org", "A", Outcome.NODATA, ()),                                  # exists only by its child
    ("nothing.example.org", "A", Outcome.NXDOMAIN, ()),
    ("dangling.example.org", "A", Outcome.NXDOMAIN, ()),                           # CNAME to nowhere
    ("loop1.example.org", "A", Outcome.ERROR, ()),
    ("loop4.example.org", "A", Outcome.ERROR, ()),                                 # into a self-loop
    ("4.2.0.192.in-addr.arpa", "PTR", Outcome.ANSWER, ("mail.example.org",)),      # targets lower-cased
    ("alias-nodata.example.org", "TXT", Outcome.NODATA, ()),                       # chain to a NODATA
    ("servfail.example.org", "A", Outcome.SERVFAIL, ()),
    ("refused.example.org", "A", Outcome.ERROR, ()),
    ("garbage.example.org", "A", Outcome.ERROR, ()),
    ("slow.example.org", "A", Outcome.TIMEOUT, ()),
    ("hostile.example.org", "TXT", Outcome.ANSWER, (b"v=spf1 -all",)),             # the string-less record skipped
    ("foo:bar/baz.example.org", "TXT", Outcome.ANSWER, (b"colon",)),               # legal DNS, not a hostname
    ("with space.example.org", "TXT", Outcome.ANSWER, (b"space",)),
    ("Bücher.example", "A", Outcome.ANSWER, ("192.0.2.9",)),                       # IDNA 2008 A-label
    ("BÜCHER.example", "A", Outcome.ANSWER, ("192.0.2.9",)),                       # UTS-46 maps case
    ("ß.example", "A", Outcome.ANSWER, ("192.0.2.10",)),                           # non-transitional: not "ss"
    ("bücher\u3002example", "A", Outcome.ANSWER, ("192.0.2.9",)),                  # ideographic full stop
    ("", "A", Outcome.INVALID_NAME, ()),
    ("a..example.org", "TXT", Outcome.INVALID_NAME, ()),
    ("x" * 64 + ".example.org", "A", Outcome.INVALID_NAME, ()),
    (".".join(["abcdefghi"] * 26), "A", Outcome.INVALID_NAME, ()),                 # 259 octets
    ("\u2603\u200d.example", "A", Outcome.INVALID_NAME, ()),                       # not valid IDNA 2008
])
@pytest.mark.parametrize("via", ["recursive", "authoritative"])
def test_outcomes_and_records(server, authoritative_only, via, name, rdtype, outcome, records):
    target = server if via == "recursive" else authoritative_only
    answer = ask(target, name, rdtype)
    assert answer.outcome is outcome, answer.detail
    assert tuple(sorted(answer.records)) == tuple(sorted(records))
    if outcome is not Outcome.ANSWER:
        assert answer.detail


def test_answer_names_are_a_labels_without_the_dot(server):
    assert ask(server, "Bücher.example.", "A").name == "xn--bcher-kva.example"


@pytest.mark.parametrize("name, detail", [
    ("loop1.example.org", "CNAME loop"),
    ("refused.example.org", "REFUSED"),
    ("garbage.example.org", "malformed reply"),
    ("servfail.example.org", "SERVFAIL"),
    ("slow.example.org", "no reply"),
    ("a..b", "empty label"),
])
def test_failure_details_name_the_cause(server, name, detail):
    assert detail in ask(server, name, "A").detail


def test_invalid_names_send_nothing(server):
    before = server.total_queries
    assert ask(server, "bad..example", "A").outcome is Outcome.INVALID_NAME
    assert server.total_queries == before


def test_query_never_raises_on_odd_input(server):
    client = make(server).for_message()
    assert client.query(None, "A").outcome is Outcome.INVALID_NAME  # type: ignore[arg-type]
    assert client.query("example.org", "NOSUCHTYPE").outcome is Outcome.ERROR
    assert client.query("a\r\nb;c.example.org", "TXT").outcome is Outcome.NXDOMAIN


def test_truncated_answer_is_retried_over_tcp(server):
    answer = ask(server, "truncated.example.org", "TXT")
    assert answer.records == (b"small but truncated",)
    assert server.count("truncated.example.org", "TXT", transport="tcp") >= 1


def test_a_lost_udp_query_is_sent_again_within_the_timeout():
    """A datagram lost on the way must not cost the whole timeout and a temperror: the query is resent."""
    with DnsServer(ZONE, lifetime=60) as lossy:
        lossy.set_fault(Fault.DROP_FIRST_UDP)
        answer = make(lossy, timeout=1.5).for_message().query("mx.example.org", "A")
        assert answer.outcome is Outcome.ANSWER, answer
        assert lossy.count("mx.example.org", "A", transport="udp") == 2
        assert lossy.count("mx.example.org", "A", transport="tcp") == 0


def test_huge_txt_comes_whole_over_tcp(server):
    before = server.count("big.example.org", "TXT", transport="tcp")
    answer = ask(server, "big.example.org", "TXT")
    assert answer.ok and len(answer.records[0]) == len("v=spf1 " + "ip4:192.0.2.1 " * 300 + "-all")
    assert server.count("big.example.org", "TXT", transport="tcp") == before + 1


def test_a_chain_ending_in_nodata_takes_one_query_from_a_recursive_server(server):
    before = server.count("mx.example.org", "TXT")
    assert ask(server, "alias-nodata.example.org", "TXT").outcome is Outcome.NODATA
    assert server.count("mx.example.org", "TXT") == before  # the reply's SOA already said so


def test_authoritative_only_server_is_asked_for_each_step_of_a_chain(authoritative_only):
    before = authoritative_only.count("mx.example.org", "A")
    assert ask(authoritative_only, "alias2.example.org", "A").ok
    assert authoritative_only.count("alias.example.org", "A") >= 1
    assert authoritative_only.count("mx.example.org", "A") == before + 1


# ---------------------------------------------------------------- DNSSEC

@pytest.mark.parametrize("trust, name, expected", [
    (TrustAd.YES, "secure.example.org", Dnssec.SECURE),
    (TrustAd.YES, "mx.example.org", Dnssec.INSECURE),
    (TrustAd.YES, "nothing.example.org", Dnssec.INSECURE),
    (TrustAd.YES, "gone-secure.example.org", Dnssec.SECURE),           # authenticated denial
    (TrustAd.AUTO, "secure.example.org", Dnssec.SECURE),               # the server is on loopback
    (TrustAd.AUTO, "mx.example.org", Dnssec.INSECURE),
    (TrustAd.NO, "secure.example.org", Dnssec.INDETERMINATE),
    (TrustAd.NO, "mx.example.org", Dnssec.INDETERMINATE),
])
def test_ad_bit_counts_only_when_trusted(server, trust, name, expected):
    assert ask(server, name, "A", trust_ad=trust).dnssec is expected


@pytest.mark.parametrize("name, expected", [
    ("secure-alias.example.org", Dnssec.SECURE),
    ("plain-alias.example.org", Dnssec.INSECURE),  # the target is signed, the alias is not
])
def test_chain_is_as_secure_as_its_weakest_step(authoritative_only, name, expected):
    answer = ask(authoritative_only, name, "A")
    assert answer.records == ("192.0.2.6",)
    assert answer.dnssec is expected


def test_validation_failure_is_servfail_never_a_pass(server):
    server.set_fault(Fault.AD, "servfail.example.org")
    try:
        answer = ask(server, "servfail.example.org", "A")
    finally:
        server.clear_faults()
        configure(server)
    assert answer.outcome is Outcome.SERVFAIL and answer.outcome.is_temporary
    assert answer.records == () and answer.dnssec is not Dnssec.SECURE


def test_client_reports_the_weakest_status_it_saw(server):
    client = make(server).for_message()
    assert client.dnssec is Dnssec.INDETERMINATE  # nothing asked yet
    client.query("secure.example.org", "A")
    assert client.dnssec is Dnssec.SECURE
    client.query("mx.example.org", "A")
    assert client.dnssec is Dnssec.INSECURE


@pytest.mark.parametrize("trust, servers, system, expected", [
    (TrustAd.AUTO, ("127.0.0.1", "::1"), (), True),
    (TrustAd.AUTO, ("127.0.0.53", "192.0.2.53"), (), False),
    (TrustAd.AUTO, (), ("127.0.0.1",), True),       # system resolver on loopback
    (TrustAd.AUTO, (), ("10.0.0.1",), False),
    (TrustAd.AUTO, (), (), False),                  # no resolver at all
    (TrustAd.YES, ("192.0.2.53",), (), True),
    (TrustAd.NO, ("127.0.0.1",), (), False),
])
def test_trusts_ad(monkeypatch, trust, servers, system, expected):
    monkeypatch.setattr(resolver_module, "system_nameservers",
                        lambda: tuple(Nameserver(host) for host in system))
    cfg = DnsSection(nameservers=tuple(Nameserver(host) for host in servers), trust_ad=trust)
    assert trusts_ad(cfg) is expected


# ---------------------------------------------------------------- cache

def test_cache_hit_within_ttl_and_refetch_after(server):
    clock = FakeClock()
    shared = make(server, clock)
    before = server.count("short.example.org", "A")
    first, second = shared.for_message(), shared.for_message()
    assert first.query("short.example.org", "A").ttl == 5
    clock.now += 3
    cached = second.query("short.example.org", "A")
    assert cached.records == ("192.0.2.7",) and cached.ttl == 2
    assert server.count("short.example.org", "A") == before + 1
    assert second.query_count == 1  # cache hits count for the log line
    clock.now += 3
    assert second.query("short.example.org", "A").ok
    assert server.count("short.example.org", "A") == before + 2


def test_cache_max_ttl_caps_long_ttls(server):
    clock = FakeClock()
    shared = make(server, clock, cache_max_ttl=10)
    before = server.count("mx.example.org", "AAAA")
    shared.for_message().query("mx.example.org", "AAAA")
    clock.now += 9
    shared.for_message().query("mx.example.org", "AAAA")
    assert server.count("mx.example.org", "AAAA") == before + 1
    clock.now += 2
    shared.for_message().query("mx.example.org", "AAAA")
    assert server.count("mx.example.org", "AAAA") == before + 2


@pytest.mark.parametrize("name, rdtype, outcome, negative_ttl", [
    ("nothing-at-all.example.org", "A", Outcome.NXDOMAIN, 300),      # the server's SOA minimum
    ("deep.a.b.example.org", "MX", Outcome.NODATA, 300),
    ("nothing-nosoa.example.org", "A", Outcome.NXDOMAIN, 60),        # no SOA: our short default
    ("nosoa.example.org", "TXT", Outcome.NODATA, 60),
])
def test_negative_answers_are_cached_for_the_soa_time(server, name, rdtype, outcome, negative_ttl):
    clock = FakeClock()
    shared = make(server, clock)
    before = server.count(name, rdtype)
    assert shared.for_message().query(name, rdtype).outcome is outcome
    clock.now += negative_ttl - 1
    assert shared.for_message().query(name, rdtype).outcome is outcome
    assert server.count(name, rdtype) == before + 1
    clock.now += 2
    shared.for_message().query(name, rdtype)
    assert server.count(name, rdtype) == before + 2


@pytest.mark.parametrize("name, outcome", [
    ("servfail.example.org", Outcome.SERVFAIL),
    ("refused.example.org", Outcome.ERROR),
    ("garbage.example.org", Outcome.ERROR),
])
def test_failures_are_not_cached(server, name, outcome):
    shared = make(server, FakeClock())
    before = server.count(name, "A")
    assert shared.for_message().query(name, "A").outcome is outcome
    assert shared.for_message().query(name, "A").outcome is outcome
    assert server.count(name, "A") == before + 2


def test_cache_size_bounds_the_cache(server):
    shared = make(server, FakeClock(), cache_size=2)
    client = shared.for_message()
    before = server.count("mx.example.org", "A")
    for name in ("mx.example.org", "alias.example.org", "secure.example.org", "mx.example.org"):
        client.query(name, "A")
    assert server.count("mx.example.org", "A") == before + 2  # evicted by the two names after it


def test_no_cache_when_size_is_zero(server):
    shared = make(server, FakeClock(), cache_size=0)
    before = server.count("example.org", "MX")
    shared.for_message().query("example.org", "MX")
    shared.for_message().query("example.org", "MX")
    assert server.count("example.org", "MX") == before + 2


def test_cache_is_shared_safely_between_threads(server):
    shared = make(server)
    results = []

    def work():
        client = shared.for_message()
        results.extend(client.query(name, "A").outcome for name in
                       ("mx.example.org", "alias.example.org", "nothing.example.org") * 5)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results.count(Outcome.ANSWER) == 80 and results.count(Outcome.NXDOMAIN) == 40


# ---------------------------------------------------------------- the per-message deadline

def test_query_limit_ends_the_lookups(server):
    client = make(server, max_queries=3).for_message()
    for name in ("mx.example.org", "example.org", "alias.example.org"):
        assert client.query(name, "A").outcome is not Outcome.TIMEOUT
    assert not client.deadline_expired
    before = server.count("short.example.org", "A")
    answer = client.query("short.example.org", "A")
    assert answer.outcome is Outcome.TIMEOUT and "query limit" in answer.detail
    assert client.deadline_expired
    assert server.count("short.example.org", "A") == before  # nothing was sent
    assert client.query_count == 4


def test_time_without_a_lookup_in_flight_spends_no_budget(server):
    """Lookups start at MAIL FROM and at end of headers: the seconds the client takes to send its message between
    the two must not leave the DKIM and DMARC lookups without a budget."""
    clock = FakeClock()
    client = make(server, clock, message_deadline=2.0).for_message()
    assert client.query("mx.example.org", "A").ok
    clock.now += 30
    assert client.query("example.org", "MX").ok
    assert not client.deadline_expired
    assert client.deadline.remaining() == 2.0


def test_lookups_side_by_side_spend_the_budget_once():
    from authmilter.resolver import Deadline
    clock = FakeClock()
    deadline = Deadline(2.0, 10, clock)
    deadline.begin()
    clock.now += 0.5
    deadline.begin()          # a second lookup joins the first
    clock.now += 0.5
    deadline.end()
    assert deadline.remaining() == 1.0
    clock.now += 0.25
    deadline.end()
    assert deadline.remaining() == 0.75


def test_spent_time_budget_ends_the_lookups_without_sending(server):
    clock = FakeClock()
    client = make(server, clock, message_deadline=2.0).for_message()
    assert client.query("mx.example.org", "A").ok
    # 2.5 s spent waiting on a lookup (as a slow server would have cost)
    client.deadline.begin()
    clock.now += 2.5
    client.deadline.end()
    before = server.count("example.org", "MX")
    answer = client.query("example.org", "MX")
    assert answer.outcome is Outcome.TIMEOUT and "deadline" in answer.detail
    assert client.deadline_expired
    assert server.count("example.org", "MX") == before
    # an answer already in the cache costs no time, so it is still given
    assert client.query("mx.example.org", "A").ok


def test_deadline_caps_a_slow_lookup(server):
    # The per-query timeout (30 s) would wait far longer; the message's budget (0.3 s) is what ends it.
    client = make(server, timeout=30.0, message_deadline=0.3).for_message()
    answer = client.query("slow.example.org", "TXT")
    assert answer.outcome is Outcome.TIMEOUT and "deadline" in answer.detail
    assert client.deadline_expired
    follow_up = client.query("other.slow.example.org", "TXT")
    assert follow_up.outcome is Outcome.TIMEOUT and "deadline" in follow_up.detail


def test_query_timeout_without_deadline_is_not_the_deadline(server):
    client = make(server, timeout=0.2, message_deadline=20.0).for_message()
    answer = client.query("slow.example.org", "A")
    assert answer.outcome is Outcome.TIMEOUT and "deadline" not in answer.detail
    assert not client.deadline_expired


# ---------------------------------------------------------------- nameservers

def test_a_dead_server_is_skipped_for_the_next_one(server):
    dead = DnsServer(ZONE)
    dead.start()
    dead.stop()
    cfg = DnsSection(nameservers=(dead.nameserver, server.nameserver), timeout=1.0)
    assert Resolver(cfg).for_message().query("mx.example.org", "A").ok


def test_a_resolver_gone_mid_run_is_a_temporary_failure():
    going = DnsServer(ZONE).start()
    resolver = make(going)
    client = resolver.for_message()
    assert client.query("mx.example.org", "A").ok
    going.stop()
    answer = client.query("example.org", "TXT")
    assert answer.outcome.is_temporary and answer.detail


def test_servfail_from_one_server_tries_the_next(server):
    with DnsServer({"x.example": [{"A": "192.0.2.1"}]}) as failing:
        failing.set_fault(Fault.SERVFAIL)
        cfg = DnsSection(nameservers=(failing.nameserver, server.nameserver), timeout=1.0)
        assert Resolver(cfg).for_message().query("mx.example.org", "A").ok


def test_no_nameservers_is_an_error(monkeypatch):
    monkeypatch.setattr(resolver_module, "system_nameservers", lambda: ())
    answer = Resolver(DnsSection()).for_message().query("example.org", "A")
    assert answer.outcome is Outcome.ERROR and "no nameservers" in answer.detail


def test_closed_resolver_answers_error(server):
    resolver = make(server)
    resolver.close()
    assert resolver.for_message().query("mx.example.org", "A").outcome is Outcome.ERROR


@pytest.mark.parametrize("name, expected", [
    ("Example.ORG.", "example.org"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("_dmarc.example.org", "_dmarc.example.org"),
])
def test_to_query_name(name, expected):
    assert to_query_name(name).to_text(omit_final_dot=True).lower() == expected
