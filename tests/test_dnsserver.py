"""The test DNS server speaks real DNS as its docstring promises, checked with dnspython's own client."""

from __future__ import annotations

import socket
import time

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from testlab.dnsserver import DnsServer, Fault

ZONE = {
    "example.org": [{"TXT": "v=spf1 -all"}, {"MX": [10, "mx.example.org"]}],
    "mx.example.org": [{"A": "192.0.2.1"}, {"AAAA": "2001:DB8::1"}],
    "deep.a.b.example.org": [{"A": "192.0.2.2"}],
    "spfonly.example": [{"SPF": "v=spf1 +all"}],
    "spfnotxt.example": [{"SPF": "v=spf1 +all"}, {"TXT": "NONE"}],
    "both.example": [{"SPF": "v=spf1 -all"}, {"TXT": ["v=spf1 ", "+all"]}],
    "timeout.example": ["TIMEOUT"],
    "halftimeout.example": [{"TXT": "v=spf1 -all"}, "TIMEOUT"],
    "alias.example": [{"CNAME": "mx.example.org."}],
    "loop1.example": [{"CNAME": "loop2.example"}],
    "loop2.example": [{"CNAME": "loop1.example"}],
    "big.example": [{"TXT": "y" * 2000}],
    "raw.example": [{"TXT": "a\xefb"}],
    "foo:bar/baz.example": [{"TXT": "odd"}],
}


@pytest.fixture(scope="module")
def server():
    with DnsServer(ZONE, lifetime=60) as running:
        yield running


def ask(server, name, rdtype, *, tcp=False, payload=None, timeout=1.0):
    query = dns.message.make_query(name, rdtype, use_edns=0 if payload else False, payload=payload or 1232)
    send = dns.query.tcp if tcp else dns.query.udp
    kwargs = {} if tcp else {"ignore_trailing": True}
    return send(query, server.host, timeout=timeout, port=server.port, **kwargs)


def texts(reply, rdtype):
    # Lower-cased: name compression may reuse the question's spelling (as real servers' replies do).
    return sorted(rd.to_text().lower() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.from_text(rdtype)
                  for rd in rrset)


@pytest.mark.parametrize("name, rdtype, rcode, records", [
    ("example.org", "TXT", "NOERROR", ['"v=spf1 -all"']),
    ("EXAMPLE.Org.", "MX", "NOERROR", ["10 mx.example.org."]),
    ("mx.example.org", "AAAA", "NOERROR", ["2001:db8::1"]),
    ("mx.example.org", "TXT", "NOERROR", []),                     # NODATA
    ("a.b.example.org", "A", "NOERROR", []),                      # empty non-terminal: NODATA
    ("nothing.example.org", "A", "NXDOMAIN", []),
    ("spfonly.example", "TXT", "NOERROR", ['"v=spf1 +all"']),     # implicit TXT from SPF
    ("spfonly.example", "SPF", "NOERROR", ['"v=spf1 +all"']),
    ("spfnotxt.example", "TXT", "NOERROR", []),                   # TXT: NONE
    ("both.example", "TXT", "NOERROR", ['"v=spf1 " "+all"']),     # one record, two strings
    ("halftimeout.example", "TXT", "NOERROR", ['"v=spf1 -all"']),  # TIMEOUT spares types that have records
    ("alias.example", "A", "NOERROR", ["192.0.2.1"]),            # chain followed inside the data
    ("raw.example", "TXT", "NOERROR", ['"a\\239b"']),             # Latin-1 text becomes raw octets
    ("foo:bar/baz.example", "TXT", "NOERROR", ['"odd"']),
])
def test_answers(server, name, rdtype, rcode, records):
    reply = ask(server, name, rdtype)
    assert dns.rcode.to_text(reply.rcode()) == rcode
    assert texts(reply, rdtype) == records
    if not records:
        assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]


def test_timeout_name_never_answers(server):
    with pytest.raises(dns.exception.Timeout):
        ask(server, "timeout.example", "A", timeout=0.3)
    with pytest.raises(dns.exception.Timeout):
        ask(server, "halftimeout.example", "A", timeout=0.3)
    assert server.count("timeout.example", "A") == 1


def test_cname_loop_is_served_as_the_loop(server):
    reply = ask(server, "loop1.example", "A")
    assert texts(reply, "CNAME") == ["loop1.example.", "loop2.example."]


def test_big_answer_is_truncated_over_udp_and_whole_over_tcp(server):
    assert ask(server, "big.example", "TXT").flags & dns.flags.TC
    assert ask(server, "big.example", "TXT", payload=4096).flags & dns.flags.TC  # capped at 1232
    reply = ask(server, "big.example", "TXT", tcp=True)
    assert len(b"".join(next(iter(reply.answer[0])).strings)) == 2000
    assert server.count("big.example", "TXT", transport="tcp") == 1


def test_faults(server):
    try:
        server.set_fault(Fault.SERVFAIL, "example.org", "TXT")
        assert ask(server, "example.org", "TXT").rcode() == dns.rcode.SERVFAIL
        assert ask(server, "example.org", "MX").rcode() == dns.rcode.NOERROR
        server.set_fault(Fault.REFUSED, "mx.example.org")
        assert ask(server, "mx.example.org", "A").rcode() == dns.rcode.REFUSED
        server.set_fault(Fault.AD, "deep.a.b.example.org")
        assert ask(server, "deep.a.b.example.org", "A").flags & dns.flags.AD
        assert not ask(server, "example.org", "MX").flags & dns.flags.AD
        server.set_fault(Fault.TRUNCATE, "both.example")
        assert ask(server, "both.example", "TXT").flags & dns.flags.TC
        assert texts(ask(server, "both.example", "TXT", tcp=True), "TXT") == ['"v=spf1 " "+all"']
        server.set_fault(Fault.NO_SOA, "nothing.example.org")
        assert ask(server, "nothing.example.org", "A").authority == []
        server.set_fault(Fault.GARBAGE, "spfonly.example")
        with pytest.raises(Exception):
            ask(server, "spfonly.example", "TXT")
        server.set_fault(Fault.TIMEOUT)
        with pytest.raises(dns.exception.Timeout):
            ask(server, "example.org", "MX", timeout=0.3)
    finally:
        server.clear_faults()
    assert ask(server, "example.org", "TXT").rcode() == dns.rcode.NOERROR


def test_ttl_and_counts(server):
    server.set_ttl("mx.example.org", 7)
    before = server.count("mx.example.org", "A")
    assert ask(server, "mx.example.org", "A").answer[0].ttl == 7
    assert server.count("MX.example.org.", "A") == before + 1
    assert ask(server, "example.org", "MX").answer[0].ttl == 300


def test_stops_on_exit_and_after_its_lifetime():
    with DnsServer({"x.example": [{"A": "192.0.2.1"}]}) as server:
        assert server.running
    assert not server.running
    short = DnsServer({"x.example": [{"A": "192.0.2.1"}]}, lifetime=0.2).start()
    for _ in range(100):
        if not short.running:
            break
        time.sleep(0.05)
    assert not short.running
    short.stop()


def test_ipv6_loopback():
    try:
        server = DnsServer({"x.example": [{"AAAA": "2001:db8::5"}]}, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        assert server.address == f"[::1]:{server.port}"
        assert texts(ask(server, "x.example", "AAAA"), "AAAA") == ["2001:db8::5"]


def test_port_is_shared_by_udp_and_tcp(server):
    with socket.create_connection((server.host, server.port), timeout=1):
        pass
