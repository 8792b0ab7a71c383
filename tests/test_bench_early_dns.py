"""bench/early_dns.py and its DNS server: the answers each message's checks need, many queries in flight at once,
and one real authmilter driven through the case (every check passes, the log and the server agree on the count)."""

from __future__ import annotations

import socket

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from bench import corpus, early_dns, milters
from bench.delayed_dns import DelayedDnsServer, client_ip

KEY = "MCowBQYDK2VwAyEA"  # only its text matters to the server


@pytest.fixture
def server():
    with DelayedDnsServer(KEY, rtt=0.01, host="127.0.0.1", port=0, lifetime=60) as running:
        yield running


def ask(server, name, rdtype):
    return dns.query.udp(dns.message.make_query(name, rdtype), server.host, port=server.port, timeout=5)


def texts(reply):
    return [rdata.to_text() if rdata.rdtype == dns.rdatatype.TXT else rdata.to_text().lower()
            for rrset in reply.answer for rdata in rrset]  # names may come back in the question's case (compression)


def test_each_message_has_its_own_records(server):
    assert texts(ask(server, "m7.bench.example", "TXT")) == ['"v=spf1 ip6:2001:db8::7 -all"']
    assert texts(ask(server, "M7.Bench.Example.", "MX")) == ["10 h7.bench.example."]
    assert texts(ask(server, "_dmarc.m7.bench.example", "TXT")) == ['"v=DMARC1; p=reject"']
    assert texts(ask(server, "s._domainkey.m7.bench.example", "TXT")) == [f'"v=DKIM1; k=rsa; p={KEY}"']
    assert texts(ask(server, dns.reversename.from_address(client_ip(7)), "PTR")) == ["h7.bench.example."]
    assert texts(ask(server, "h7.bench.example", "AAAA")) == ["2001:db8::7"]
    assert server.queries == 6


def test_the_rest_is_nodata_or_nxdomain_with_an_soa(server):
    nodata = ask(server, "h7.bench.example", "A")
    assert (nodata.rcode(), nodata.answer) == (dns.rcode.NOERROR, [])
    for name in ("_dmarc.bench.example", "_dmarc.example", "m7.other.example"):
        reply = ask(server, name, "TXT")
        assert reply.rcode() == dns.rcode.NXDOMAIN and reply.authority, name


def test_queries_in_flight_are_answered_side_by_side(server):
    # Ten queries sent before any reply is read: all ten come back (a server answering one at a time after a
    # sleep would too, but slower; what matters here is that none is lost while others wait for their timer).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        ids = set()
        for n in range(1, 11):
            query = dns.message.make_query(f"m{n}.bench.example", "TXT")
            ids.add(query.id)
            sock.sendto(query.to_wire(), (server.host, server.port))
        got = {dns.message.from_wire(sock.recvfrom(4096)[0]).id for _ in range(10)}
    assert got == ids
    assert server.queries == 10 and server.oversize == 0


def test_a_real_authmilter_through_the_case(tmp_path):
    private_key, public_key = corpus.rsa_key()
    messages = early_dns.make_messages([1, 2, 3], private_key)
    early_dns._init_worker(messages)
    with DelayedDnsServer(public_key, rtt=0.01, host="127.0.0.1", port=0, lifetime=120) as server:
        running = milters.start_authmilter(tmp_path, f"127.0.0.1:{server.port}",
                                           dns_options="early_lookups = yes\nworkers = 4\n")
        try:
            result = early_dns.run_case(running, server, [1, 2, 3], concurrency=1, rtt=0.01,
                                        log=tmp_path / "authmilter.log", workers=4)
        finally:
            running.stop()
    assert result.replies == {"accept": 3}
    assert result.dmarc_pass == 3           # SPF, DKIM and DMARC data of each message's own domain work
    assert result.log_lines == 3
    assert result.oversize_replies == 0     # the RSA-2048 key fits in a UDP reply: no TCP retry measured
    # Every query the log counts reached the server, except the tree walk's shared names answered from the cache.
    assert result.server_queries_per_msg <= result.log_queries_per_msg
    assert result.threads_after - result.threads_idle <= 4   # the pool never grows beyond [dns] workers
