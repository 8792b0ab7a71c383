"""`check --zone`: a zone file answers as the real resolver answers for the same records, through a real DNS
server on loopback: same outcomes, same record values, DNSSEC indeterminate."""

from __future__ import annotations

import pytest

from authmilter.config import DnsSection, TrustAd
from authmilter.resolver import Outcome, Resolver
from authmilter.results import Dnssec
from authmilter.zonefile import ZoneData, ZoneFileError, ZoneResolver
from testlab.dnsserver import DnsServer

ZONE_TEXT = """\
$TTL 300
; one domain's records and the client's PTR, in one file without an SOA
example.org.              MX    10 Mail.Example.org.
example.org.              TXT   "v=spf1 ip4:192.0.2.0/24 " "-all"
_dmarc.example.org.       TXT   "v=DMARC1; p=reject"
mail.example.org.         A     192.0.2.1
mail.example.org.         AAAA  2001:db8::1
alias.example.org.        CNAME mail.example.org.
dangling.example.org.     CNAME nowhere.example.org.
sel._domainkey.example.org. TXT "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
null.example.             MX    0 .
1.2.0.192.in-addr.arpa.   PTR   mail.example.org.
"""
# The same records for testlab.dnsserver (a real server, queried by the real resolver).
SERVER_ZONE = {
    "example.org": [{"MX": [10, "Mail.Example.org"]}, {"TXT": ["v=spf1 ip4:192.0.2.0/24 ", "-all"]}],
    "_dmarc.example.org": [{"TXT": "v=DMARC1; p=reject"}],
    "mail.example.org": [{"A": "192.0.2.1"}, {"AAAA": "2001:db8::1"}],
    "alias.example.org": [{"CNAME": "mail.example.org"}],
    "dangling.example.org": [{"CNAME": "nowhere.example.org"}],
    "sel._domainkey.example.org": [{"TXT": "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}],
    "null.example": [{"MX": [0, "."]}],
    "1.2.0.192.in-addr.arpa": [{"PTR": "mail.example.org"}],
}
QUERIES = [
    ("example.org", "TXT"), ("example.org", "MX"), ("example.org", "A"), ("EXAMPLE.org.", "TXT"),
    ("_dmarc.example.org", "TXT"), ("mail.example.org", "A"), ("mail.example.org", "AAAA"),
    ("alias.example.org", "A"), ("alias.example.org", "CNAME"), ("alias.example.org", "TXT"),
    ("dangling.example.org", "A"), ("nowhere.example.org", "A"), ("sel._domainkey.example.org", "TXT"),
    ("_domainkey.example.org", "TXT"),   # exists only as a parent of a name: no data, not NXDOMAIN (RFC 8020)
    ("null.example", "MX"), ("1.2.0.192.in-addr.arpa", "PTR"), ("2.2.0.192.in-addr.arpa", "PTR"),
    ("example.com", "TXT"), ("bad..name", "A"), ("straße.example", "A"),
]


@pytest.fixture(scope="module")
def zone_dns(tmp_path_factory):
    path = tmp_path_factory.mktemp("zone") / "records.zone"
    path.write_text(ZONE_TEXT)
    return ZoneResolver(ZoneData.load(path), DnsSection()).for_message()


@pytest.fixture(scope="module")
def real_dns():
    with DnsServer(SERVER_ZONE, lifetime=120) as server:
        resolver = Resolver(DnsSection(nameservers=(server.nameserver,), trust_ad=TrustAd.NO, cache_size=0))
        yield resolver.for_message()
        resolver.close()


@pytest.mark.parametrize("name, rdtype", QUERIES)
def test_zone_file_answers_as_the_real_resolver(zone_dns, real_dns, name, rdtype):
    from_file = zone_dns.query(name, rdtype)
    from_server = real_dns.query(name, rdtype)
    assert (from_file.name, from_file.rdtype, from_file.outcome, from_file.records) == \
        (from_server.name, from_server.rdtype, from_server.outcome, from_server.records)
    assert from_file.dnssec is Dnssec.INDETERMINATE
    if from_file.outcome is not Outcome.ANSWER:
        assert from_file.problem == from_server.problem   # the words a header comment may show


def test_records_come_back_as_the_checks_expect_them(zone_dns):
    assert zone_dns.query("example.org", "TXT").records == (b"v=spf1 ip4:192.0.2.0/24 -all",)
    assert zone_dns.query("example.org", "MX").records == ((10, "mail.example.org"),)
    assert zone_dns.query("null.example", "MX").records == ((0, ""),)
    assert zone_dns.query("nowhere.example.org", "A").outcome is Outcome.NXDOMAIN


def test_wildcards_are_expanded(tmp_path):
    path = tmp_path / "wild.zone"
    path.write_text("$TTL 300\n*.example.org. TXT \"v=spf1 -all\"\nhost.example.org. A 192.0.2.5\n"
                    "x.y.example.org. A 192.0.2.6\n")
    dns = ZoneResolver(ZoneData.load(path), DnsSection()).for_message()
    assert dns.query("anything.example.org", "TXT").records == (b"v=spf1 -all",)
    assert dns.query("a.b.example.org", "TXT").records == (b"v=spf1 -all",)         # RFC 4592 §2.2.1
    assert dns.query("host.example.org", "TXT").outcome is Outcome.NODATA           # an existing name: no expansion
    assert dns.query("y.example.org", "TXT").outcome is Outcome.NODATA              # neither for a parent of one
    assert dns.query("z.y.example.org", "TXT").outcome is Outcome.NXDOMAIN          # closest encloser y: no *.y


def test_a_file_with_an_soa_is_one_zone(tmp_path):
    path = tmp_path / "with-soa.zone"
    path.write_text("$ORIGIN example.org.\n$TTL 300\n@ SOA ns hostmaster ( 1 7200 3600 1209600 300 )\n"
                    "@ TXT \"v=spf1 -all\"\nmail A 192.0.2.1\n")
    dns = ZoneResolver(ZoneData.load(path), DnsSection()).for_message()
    assert dns.query("example.org", "TXT").records == (b"v=spf1 -all",)
    assert dns.query("mail.example.org", "A").records == ("192.0.2.1",)
    assert dns.query("example.org", "SOA").outcome is Outcome.ANSWER


def test_the_query_limit_holds_as_with_the_real_resolver(tmp_path):
    path = tmp_path / "records.zone"
    path.write_text(ZONE_TEXT)
    dns = ZoneResolver(ZoneData.load(path), DnsSection(max_queries=10)).for_message()
    answers = [dns.query("example.org", "TXT") for _ in range(11)]
    assert all(answer.ok for answer in answers[:10])
    assert answers[10].outcome is Outcome.TIMEOUT and answers[10].detail == "DNS query limit of the message (10) spent"
    assert dns.deadline_expired and dns.query_count == 11


def test_an_include_is_refused(tmp_path):
    path = tmp_path / "include.zone"
    path.write_text("$INCLUDE /etc/passwd\n")
    with pytest.raises(ZoneFileError) as raised:
        ZoneData.load(path)
    assert str(raised.value).startswith(f"{path}:1: ")
