"""iprev / FCrDNS (RFC 8601 §3, results §2.7.3) over the fake resolver."""

from __future__ import annotations

import ipaddress

import pytest

from authmilter.checks.iprev import check_iprev
from authmilter.config import IprevSection
from authmilter.context import Connection
from authmilter.results import AREntry, Dnssec, Property, Status
from testlab.fakedns import FakeDns

V4 = "192.0.2.1"
V4_REV = "1.2.0.192.in-addr.arpa"
V6 = "2001:db8::1"
V6_REV = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"

CFG = IprevSection()


def run(ip: str | None, zone: dict, cfg: IprevSection = CFG, **fake) -> tuple:
    dns = FakeDns(zone, **fake)
    conn = Connection(ipaddress.ip_address(ip) if ip else None, helo="helo.example")
    return check_iprev(conn, dns, cfg), dns


CASES = [
    # id, client ip, zone, fake-resolver options, status, confirmed name, words the reason must contain
    ("v4-pass", V4, {V4_REV: {"PTR": ["mail.example.org."]}, "mail.example.org": {"A": [V4]}}, {},
     Status.PASS, "mail.example.org", ""),
    ("v4-pass-second-address", V4,
     {V4_REV: {"PTR": ["mail.example.org"]}, "mail.example.org": {"A": ["198.51.100.7", V4]}}, {},
     Status.PASS, "mail.example.org", ""),
    ("v4-pass-second-name", V4,
     {V4_REV: {"PTR": ["other.example.net", "Mail.Example.ORG"]}, "other.example.net": {"A": ["198.51.100.7"]},
      "mail.example.org": {"A": [V4]}}, {},
     Status.PASS, "mail.example.org", ""),
    ("v4-pass-despite-timeout-on-other-name", V4,
     {V4_REV: {"PTR": ["slow.example.net", "mail.example.org"]}, "mail.example.org": {"A": [V4]}},
     {"timeout": {"slow.example.net"}}, Status.PASS, "mail.example.org", ""),
    ("v6-pass-other-text-form", V6,
     {V6_REV: {"PTR": ["mail6.example.org"]}, "mail6.example.org": {"AAAA": ["2001:0db8:0000::0001"]}}, {},
     Status.PASS, "mail6.example.org", ""),
    ("v6-only-a-record-fails", V6,
     {V6_REV: {"PTR": ["mail6.example.org"]}, "mail6.example.org": {"A": [V4]}}, {},
     Status.FAIL, "", "1 PTR name not resolving to 2001:db8::1"),
    ("v4-mismatch", V4, {V4_REV: {"PTR": ["mail.example.org"]}, "mail.example.org": {"A": ["192.0.2.99"]}}, {},
     Status.FAIL, "", "not resolving to 192.0.2.1"),
    ("v4-forward-nxdomain", V4, {V4_REV: {"PTR": ["gone.example.org"]}}, {},
     Status.FAIL, "", "not resolving"),
    ("v4-forward-nodata", V4, {V4_REV: {"PTR": ["mail.example.org"]}, "mail.example.org": {"MX": [(10, "x")]}},
     {}, Status.FAIL, "", "not resolving"),
    ("v4-no-ptr-nxdomain", V4, {}, {}, Status.PERMERROR, "", "no PTR record"),
    ("v4-no-ptr-nodata", V4, {V4_REV: {"TXT": ["hello"]}}, {}, Status.PERMERROR, "", "no PTR record"),
    ("v6-no-ptr", V6, {}, {}, Status.PERMERROR, "", "no PTR record"),
    ("ptr-servfail", V4, {V4_REV: {"PTR": ["mail.example.org"]}}, {"servfail": {V4_REV}},
     Status.TEMPERROR, "", "PTR lookup: SERVFAIL"),
    ("ptr-timeout", V6, {}, {"timeout": {V6_REV}}, Status.TEMPERROR, "", "PTR lookup: timeout"),
    ("forward-servfail-only-name", V4, {V4_REV: {"PTR": ["mail.example.org"]}},
     {"servfail": {("mail.example.org", "A")}}, Status.TEMPERROR, "", "A lookup of mail.example.org: SERVFAIL"),
    ("forward-timeout-and-mismatch", V4,
     {V4_REV: {"PTR": ["a.example.org", "b.example.org"]}, "b.example.org": {"A": ["192.0.2.99"]}},
     {"timeout": {"a.example.org"}}, Status.TEMPERROR, "", "a.example.org: timeout"),
    ("dns-budget-spent", V4, {V4_REV: {"PTR": ["mail.example.org"]}, "mail.example.org": {"A": [V4]}},
     {"max_queries": 1}, Status.TEMPERROR, "", "budget"),
]


@pytest.mark.parametrize("ip, zone, fake, status, confirmed, reason", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_iprev_table(ip, zone, fake, status, confirmed, reason):
    result, _ = run(ip, zone, **fake)
    assert result.status is status
    assert result.confirmed_name == confirmed
    assert result.client_ip == str(ipaddress.ip_address(ip))
    if reason:
        assert reason in result.reason
    else:
        assert result.reason == ""
    (entry,) = result.ar_entries()
    assert entry.method == "iprev" and entry.result == str(status)
    assert entry.properties == (Property("policy", "iprev", result.client_ip, comment=confirmed),)


def test_pass_entry_names_the_confirmed_host_and_dnssec():
    result, _ = run(V4, {V4_REV: {"PTR": ["mail.example.org"]}, "mail.example.org": {"A": [V4]}})
    assert result.ar_entries() == (
        AREntry("iprev", "pass", "dnssec=insecure", (Property("policy", "iprev", V4, "mail.example.org"),)),)
    assert result.log_fields() == {"iprev": "pass", "iprev_dnssec": "insecure", "iprev_host": "mail.example.org"}


def test_fail_entry_comment_carries_the_reason():
    result, _ = run(V4, {V4_REV: {"PTR": ["mail.example.org"]}, "mail.example.org": {"A": ["192.0.2.99"]}})
    (entry,) = result.ar_entries()
    assert entry.comment == "1 PTR name not resolving to 192.0.2.1; dnssec=insecure"
    assert result.log_fields()["iprev_reason"] == "1 PTR name not resolving to 192.0.2.1"


@pytest.mark.parametrize("secure, expected", [
    ({V4_REV, "mail.example.org"}, Dnssec.SECURE),
    ({V4_REV}, Dnssec.INSECURE),
    ({"mail.example.org"}, Dnssec.INSECURE),
])
def test_dnssec_is_the_weakest_of_the_lookups_used(secure, expected):
    result, _ = run(V4, {V4_REV: {"PTR": ["mail.example.org"]}, "mail.example.org": {"A": [V4]}}, secure=secure)
    assert result.status is Status.PASS
    assert result.dnssec is expected
    assert result.ar_entries()[0].comment == f"dnssec={expected}"


def test_pass_ignores_an_insecure_unrelated_name_for_dnssec():
    zone = {V4_REV: {"PTR": ["other.example.net", "mail.example.org"]}, "other.example.net": {"A": ["192.0.2.50"]},
            "mail.example.org": {"A": [V4]}}
    result, _ = run(V4, zone, secure={V4_REV, "mail.example.org"})
    assert result.dnssec is Dnssec.SECURE


def _many_names(count: int, matching_index: int) -> dict:
    names = [f"h{i}.example.org" for i in range(count)]
    zone = {V4_REV: {"PTR": names}}
    for i, name in enumerate(names):
        zone[name] = {"A": [V4 if i == matching_index else "198.51.100.1"]}
    return zone


def test_more_ptr_names_than_max_names_are_not_followed():
    result, dns = run(V4, _many_names(12, matching_index=11))
    assert result.status is Status.FAIL
    assert result.names_ignored == 2
    assert "2 more not followed" in result.reason
    forward = [q for q in dns.asked if q[1] == "A"]
    assert len(forward) == CFG.max_names == 10
    assert ("h11.example.org", "A") not in forward


def test_max_names_is_configurable():
    dns = FakeDns(_many_names(12, matching_index=11))
    result = check_iprev(Connection(ipaddress.ip_address(V4)), dns, IprevSection(max_names=12))
    assert result.status is Status.PASS and result.confirmed_name == "h11.example.org"


def test_pass_stops_at_the_first_confirmed_name():
    _, dns = run(V4, _many_names(5, matching_index=0))
    assert dns.asked == [(V4_REV, "PTR"), ("h0.example.org", "A")]


@pytest.mark.parametrize("hostile", ["evil\r\nX-Injected: yes.example", "a;b=c.example", "sp ace\t.example",
                                     "ünicode.example"])
def test_hostile_ptr_names_never_put_line_breaks_in_results(hostile):
    for forward in ([V4], ["192.0.2.99"]):
        result, _ = run(V4, {V4_REV: {"PTR": [hostile]}, hostile: {"A": forward}})
        texts = [result.confirmed_name, result.reason, *result.ptr_names, *result.log_fields().values()]
        for entry in result.ar_entries():
            texts += [entry.comment or "", *(p.value for p in entry.properties), *(p.comment for p in entry.properties)]
        for text in texts:
            assert "\r" not in text and "\n" not in text and "\t" not in text
            assert text.isascii()
    assert result.status is Status.FAIL


def test_hostile_confirmed_name_is_escaped_in_presentation_form():
    hostile = "evil\r\nx.example"
    result, _ = run(V4, {V4_REV: {"PTR": [hostile]}, hostile: {"A": [V4]}})
    assert result.status is Status.PASS
    assert result.confirmed_name == "evil\\013\\010x.example"


def test_no_client_ip_writes_no_iprev_entry():
    result, dns = run(None, {})
    assert result.status is Status.NONE
    assert result.ar_entries() == ()
    assert result.log_fields() == {"iprev": "none"}
    assert dns.asked == []


def test_ipv4_mapped_ipv6_client_uses_in_addr_arpa():
    zone = {V4_REV: {"PTR": ["mail.example.org"]}, "mail.example.org": {"A": [V4]}}
    result, dns = run("::ffff:192.0.2.1", zone)
    assert result.status is Status.PASS
    assert result.client_ip == V4
    assert dns.asked[0] == (V4_REV, "PTR")


def test_unparseable_forward_records_do_not_crash():
    zone = {V4_REV: {"PTR": ["mail.example.org"]}, "mail.example.org": {"A": ["not-an-ip", "999.1.1.1"]}}
    result, _ = run(V4, zone)
    assert result.status is Status.FAIL
