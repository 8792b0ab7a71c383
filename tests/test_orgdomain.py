"""Organizational Domain and policy discovery: RFC 9989 DNS Tree Walk and the optional PSL method."""

from __future__ import annotations

import pytest

from authmilter.checks.dmarc.orgdomain import (PolicyLookups, TemporaryFailure, discover, organizational_domain,
                                         walk_targets)
from authmilter.config import OrgDomainMethod
from testlab.fakedns import FakeDns

TREE = OrgDomainMethod.TREEWALK
PSL = OrgDomainMethod.PSL


@pytest.mark.parametrize("domain, targets", [
    ("com", ["com"]),
    ("example.com", ["example.com", "com"]),
    ("a.b.example.com", ["a.b.example.com", "b.example.com", "example.com", "com"]),
    # RFC 9989 §4.10 step 5: 8 labels or more jump to the last 7 after the first query.
    ("1.2.3.4.5.6.7.8", ["1.2.3.4.5.6.7.8", "2.3.4.5.6.7.8", "3.4.5.6.7.8", "4.5.6.7.8", "5.6.7.8", "6.7.8",
                         "7.8", "8"]),
    ("a.b.c.d.e.f.g.h.i.example", ["a.b.c.d.e.f.g.h.i.example", "d.e.f.g.h.i.example", "e.f.g.h.i.example",
                                   "f.g.h.i.example", "g.h.i.example", "h.i.example", "i.example", "example"]),
])
def test_walk_targets(domain, targets):
    assert walk_targets(domain) == targets


def dmarc(*records):
    return {"TXT": list(records)}


ZONE = {
    "_dmarc.example.com": dmarc("v=DMARC1; p=reject"),
    "_dmarc.mail.example.com": dmarc("v=DMARC1; p=none"),
    "_dmarc.dept.example.com": dmarc("v=DMARC1; p=quarantine; psd=n"),
    "_dmarc.gov": dmarc("v=DMARC1; p=reject; psd=y"),
    "_dmarc.agency.gov": dmarc("v=DMARC1; p=none"),
    "_dmarc.psd-start.example": dmarc("v=DMARC1; p=none; psd=y"),
    "_dmarc.co.example": dmarc("v=DMARC1; p=reject; psd=y"),
    "_dmarc.brand.co.example": dmarc("v=DMARC1; p=reject"),
    "_dmarc.twice.example": dmarc("v=DMARC1; p=reject", "v=DMARC1; p=none"),
    "_dmarc.other.example": dmarc("v=spf1 -all", "some verification token"),
}


@pytest.mark.parametrize("domain, org", [
    ("example.com", "example.com"),
    ("x.y.example.com", "example.com"),           # fewest labels with a record
    ("a.mail.example.com", "example.com"),        # an intermediate record without psd= does not stop the walk
    ("a.dept.example.com", "dept.example.com"),   # psd=n makes its domain the org domain
    ("dept.example.com", "dept.example.com"),
    ("x.agency.gov", "agency.gov"),               # psd=y: one label below the PSD
    ("agency.gov", "agency.gov"),
    ("nothing.gov", "nothing.gov"),               # psd=y above, no record of its own
    ("psd-start.example", "psd-start.example"),   # psd=y at the starting domain is not a boundary above it
    ("deep.brand.co.example", "brand.co.example"),
    ("unpublished.example", "unpublished.example"),  # no record anywhere: the domain itself
    ("twice.example", "twice.example"),           # several records count as none
    ("other.example", "other.example"),           # TXT records that are not DMARC are discarded
])
def test_tree_walk_org_domain(domain, org):
    assert organizational_domain(domain, PolicyLookups(FakeDns(ZONE)), TREE) == org


def test_tree_walk_stops_at_psd_n_without_asking_further():
    dns = FakeDns(ZONE)
    organizational_domain("a.dept.example.com", PolicyLookups(dns), TREE)
    assert dns.asked == [("_dmarc.a.dept.example.com", "TXT"), ("_dmarc.dept.example.com", "TXT")]


def test_lookups_are_shared_between_walks():
    dns = FakeDns(ZONE)
    lookups = PolicyLookups(dns)
    organizational_domain("x.y.example.com", lookups, TREE)
    organizational_domain("y.example.com", lookups, TREE)
    assert len(dns.asked) == len(set(dns.asked)) == 4


def test_long_names_cost_at_most_eight_queries():
    dns = FakeDns(ZONE)
    domain = ".".join(f"l{i}" for i in range(30)) + ".example.com"
    assert organizational_domain(domain, PolicyLookups(dns), TREE) == "example.com"
    assert len(dns.asked) == 8


@pytest.mark.parametrize("failure", ["timeout", "servfail"])
def test_dns_failure_during_walk_is_temporary(failure):
    dns = FakeDns(ZONE, **{failure: {"_dmarc.example.com"}})
    with pytest.raises(TemporaryFailure, match="_dmarc.example.com"):
        organizational_domain("mail.example.com", PolicyLookups(dns), TREE)


@pytest.mark.parametrize("domain, record_domain, org, p", [
    # The Author Domain's own record applies: no walk, the org domain is left for alignment to find ("").
    ("example.com", "example.com", "", "reject"),
    ("x.y.example.com", "example.com", "example.com", "reject"),
    # RFC 9989 §4.10.1: Author Domain, then Organizational Domain, then PSD; an intermediate record is neither.
    ("a.mail.example.com", "example.com", "example.com", "reject"),
    ("mail.example.com", "mail.example.com", "", "none"),
    ("a.dept.example.com", "dept.example.com", "dept.example.com", "quarantine"),
    ("x.agency.gov", "agency.gov", "agency.gov", "none"),
    ("nothing.gov", "gov", "nothing.gov", "reject"),          # the PSD's record applies
    ("x.nothing.gov", "gov", "nothing.gov", "reject"),
])
def test_discover_policy_record(domain, record_domain, org, p):
    found = discover(domain, PolicyLookups(FakeDns(ZONE)), TREE)
    assert (found.record_domain, found.org_domain) == (record_domain, org)
    assert found.record.p.value == p


def test_discover_stops_at_the_author_record():
    dns = FakeDns(ZONE)
    discover("mail.example.com", PolicyLookups(dns), TREE)
    assert dns.asked == [("_dmarc.mail.example.com", "TXT")]


def test_discover_nothing():
    found = discover("unpublished.example", PolicyLookups(FakeDns(ZONE)), TREE)
    assert found.record is None and found.org_domain == "unpublished.example" and not found.several


def test_discover_several_records_reports_where():
    found = discover("twice.example", PolicyLookups(FakeDns(ZONE)), TREE)
    assert found.record is None and found.several == "twice.example"


PSL_ZONE = {
    "_dmarc.example.co.uk": dmarc("v=DMARC1; p=reject"),
    "_dmarc.sub.example.co.uk": dmarc("v=DMARC1; p=none"),
    "_dmarc.co.uk": dmarc("v=DMARC1; p=quarantine; psd=y"),
}


@pytest.mark.parametrize("domain, org", [
    ("example.co.uk", "example.co.uk"),
    ("a.b.example.co.uk", "example.co.uk"),
    ("co.uk", "co.uk"),
    ("x.example.com", "example.com"),
])
def test_psl_org_domain_needs_no_dns(domain, org):
    dns = FakeDns(PSL_ZONE)
    assert organizational_domain(domain, PolicyLookups(dns), PSL) == org
    assert dns.asked == []


def test_psl_discovery_asks_author_then_org_only():
    dns = FakeDns(PSL_ZONE)
    found = discover("a.b.example.co.uk", PolicyLookups(dns), PSL)
    assert (found.record_domain, found.org_domain, found.record.p.value) == ("example.co.uk", "example.co.uk",
                                                                             "reject")
    assert dns.asked == [("_dmarc.a.b.example.co.uk", "TXT"), ("_dmarc.example.co.uk", "TXT")]


def test_psl_and_tree_walk_differ_where_a_psd_publishes():
    # A name under a public suffix with no record of its own: the tree walk finds the PSD's psd=y record,
    # RFC 7489's PSL method never asks there.
    dns = FakeDns(PSL_ZONE)
    assert discover("nobody.co.uk", PolicyLookups(dns), PSL).record is None
    tree = discover("nobody.co.uk", PolicyLookups(FakeDns(PSL_ZONE)), TREE)
    assert (tree.record_domain, tree.org_domain) == ("co.uk", "nobody.co.uk")
