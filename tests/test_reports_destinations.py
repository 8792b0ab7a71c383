"""Where a report goes: rua parsing, max_rua, !size, suppression, and RFC 9990 §4 external destination
verification through our resolver against a real DNS server on loopback."""

from __future__ import annotations

import pytest

from authmilter.config import DnsSection
from authmilter.reports.destinations import SUPPRESSED, Suppression, parse_mailto, resolve
from authmilter.reports.model import PublishedPolicy
from authmilter.resolver import Resolver
from testlab.dnsserver import DnsServer, Fault

POLICY = PublishedPolicy("example.com", "reject")

ZONE = {
    "_dmarc.example.com": [{"TXT": "v=DMARC1; p=reject; rua=mailto:rua@example.com"}],
    # thirdparty.example accepts example.com's reports
    "example.com._report._dmarc.thirdparty.example": [{"TXT": "v=DMARC1;"}],
    # override.example accepts them and wants them at another mailbox on the same host
    "example.com._report._dmarc.override.example": [
        {"TXT": "v=DMARC1; rua=mailto:dmarc@override.example,mailto:copy@override.example!5m"}],
    # sneaky.example "accepts" but redirects to another host: report to neither (RFC 9990 §4)
    "example.com._report._dmarc.sneaky.example": [{"TXT": "v=DMARC1; rua=mailto:victim@elsewhere.example"}],
    # not a DMARC record / broken tag list / only some other record
    "example.com._report._dmarc.spf.example": [{"TXT": "v=spf1 -all"}],
    "example.com._report._dmarc.broken.example": [{"TXT": "v=DMARC1; this is not a tag list"}],
    "example.com._report._dmarc.twice.example": [{"TXT": "v=spf1 -all"}, {"TXT": "v=DMARC1"}],
    "example.com._report._dmarc.flaky.example": [{"TXT": "v=DMARC1"}],
    "_dmarc.flakyorg.example": [{"TXT": "v=DMARC1; p=none"}],
}


@pytest.fixture(scope="module")
def server():
    with DnsServer(ZONE) as dns_server:
        yield dns_server


@pytest.fixture
def dns(server):
    server.clear_faults()
    server.reset_counts()
    resolver = Resolver(DnsSection(nameservers=(server.nameserver,), timeout=1.0, cache_size=0))
    yield resolver.for_message()
    resolver.close()


def addresses(found) -> list[str]:
    return [str(address) for address in found.addresses]


def run(dns, *rua, max_rua=5, suppress=(), policy=POLICY):
    return resolve(policy, tuple(rua), dns, max_rua=max_rua, suppression=Suppression.parse(tuple(suppress)))


def test_own_domain_and_its_subdomains_need_no_verification(dns, server):
    found = run(dns, "mailto:rua@example.com", "mailto:dmarc@reports.example.com")
    assert addresses(found) == ["rua@example.com", "dmarc@reports.example.com"]
    assert not found.retry and not found.dropped
    assert server.count("example.com._report._dmarc.reports.example.com", "TXT") == 0
    assert server.count("example.com._report._dmarc.example.com", "TXT") == 0


def test_external_destination_authorized(dns, server):
    found = run(dns, "mailto:reports@thirdparty.example")
    assert addresses(found) == ["reports@thirdparty.example"]
    assert server.count("example.com._report._dmarc.thirdparty.example", "TXT") == 1


@pytest.mark.parametrize("host, why", [
    ("nobody.example", "no record at example.com._report._dmarc.nobody.example"),
    ("spf.example", "no v=DMARC1 record"),
    ("broken.example", "no v=DMARC1 record"),
])
def test_external_destination_not_authorized(dns, host, why):
    found = run(dns, f"mailto:reports@{host}", "mailto:rua@example.com")
    assert addresses(found) == ["rua@example.com"]
    assert found.dropped[0][0] == f"reports@{host}" and why in found.dropped[0][1]


def test_one_dmarc_record_among_others_authorizes(dns):
    assert addresses(run(dns, "mailto:r@twice.example")) == ["r@twice.example"]


def test_the_destination_may_replace_the_address_on_its_own_host(dns):
    found = run(dns, "mailto:whatever@override.example")
    assert addresses(found) == ["dmarc@override.example", "copy@override.example"]


def test_an_override_to_another_host_means_neither(dns):
    found = run(dns, "mailto:reports@sneaky.example", "mailto:rua@example.com")
    assert addresses(found) == ["rua@example.com"]
    assert "another host" in found.dropped[0][1]
    assert "victim@elsewhere.example" not in addresses(found)


@pytest.mark.parametrize("fault", [Fault.SERVFAIL, Fault.TIMEOUT])
def test_a_dns_error_is_try_again_later_never_send_anyway(dns, server, fault):
    server.set_fault(fault, "example.com._report._dmarc.flaky.example")
    found = run(dns, "mailto:rua@example.com", "mailto:r@flaky.example")
    assert found.retry and "example.com._report._dmarc.flaky.example" in found.retry
    assert found.addresses == ()  # not even the verified one: the report waits whole, to go out complete


def test_a_dns_error_finding_the_organizational_domain_is_try_again_later(dns, server):
    server.set_fault(Fault.SERVFAIL, "_dmarc.thirdparty.example")
    found = run(dns, "mailto:reports@thirdparty.example")
    assert found.retry and found.addresses == ()


def test_a_name_too_long_to_ask_is_not_authorized(dns):
    host = ".".join(["a" * 60] * 3) + ".example"
    policy = PublishedPolicy("b" * 60 + "." + "c" * 50 + ".example.com", "none")
    found = run(dns, f"mailto:r@{host}", policy=policy)
    assert found.addresses == () and "cannot be asked" in found.dropped[0][1] and not found.retry


def test_max_rua_takes_the_first_ones_published(dns):
    found = run(dns, "mailto:a@example.com", "mailto:b@example.com", "mailto:c@example.com", max_rua=2)
    assert addresses(found) == ["a@example.com", "b@example.com"]
    assert found.dropped == (("mailto:c@example.com", "over [reports] max_rua = 2"),)


def test_max_rua_also_caps_an_override(dns):
    assert addresses(run(dns, "mailto:x@override.example", max_rua=1)) == ["dmarc@override.example"]


def test_size_suffixes_and_duplicates(dns):
    found = run(dns, "mailto:rua@example.com!10m", "mailto:RUA@Example.com!500k", " mailto:other@example.com!1 ")
    assert addresses(found) == ["rua@example.com", "other@example.com"]


def test_only_mailto(dns):
    found = run(dns, "https://reports.example.com/dmarc", "mailto:rua@example.com")
    assert addresses(found) == ["rua@example.com"]
    assert "not a mailto: URI" in found.dropped[0][1]


def test_suppression_by_address_and_by_domain(dns):
    found = run(dns, "mailto:rua@example.com", "mailto:dmarc@reports.example.com", "mailto:keep@example.com",
                "mailto:r@thirdparty.example", suppress=("RUA@example.com", "thirdparty.example",
                                                         "reports.example.com"))
    assert addresses(found) == ["keep@example.com"]
    assert sorted(uri for uri, why in found.dropped if why == SUPPRESSED) == \
        ["dmarc@reports.example.com", "r@thirdparty.example", "rua@example.com"]
    everything = run(dns, "mailto:rua@example.com", suppress=("example.com",))
    assert everything.addresses == () and everything.suppressed_only


@pytest.mark.parametrize("uri, expected", [
    ("mailto:dmarc@example.com", "dmarc@example.com"),
    ("MAILTO:Dmarc@EXAMPLE.com!25M", "Dmarc@example.com"),
    ("mailto:dmarc@example.com?subject=report", "dmarc@example.com"),
    ("mailto:d%2Bmarc@example.com", "d+marc@example.com"),
    ("mailto:a@b\u00fccher.example", "a@xn--bcher-kva.example"),
    ("mailto:a@example.com.", "a@example.com"),
])
def test_parse_mailto(uri, expected):
    assert str(parse_mailto(uri)) == expected


@pytest.mark.parametrize("uri", [
    "mailto:", "mailto:@example.com", "mailto:a@", "mailto:a b@example.com", "mailto:a@[192.0.2.1]",
    "mailto:a@localhost", "mailto:a@b.example,c@d.example", "mailto:a\r\nBcc: x@example.com@example.com",
    "mailto:a@exa_mple.com", "mailto:.a@example.com", "ftp://example.com", "mailto:" + "a" * 600 + "@example.com",
    "mailto:%ff@example.com",
])
def test_parse_mailto_refuses(uri):
    assert isinstance(parse_mailto(uri), str)
