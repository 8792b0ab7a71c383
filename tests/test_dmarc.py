"""DMARC (RFC 9989) over a fake resolver: alignment, policy discovery, t=/pct=, errors, the A-R entry."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authmilter.checks.dkim.check import DkimResult, DkimSignatureResult
from authmilter.checks.dmarc.check import DmarcResult, check_dmarc
from authmilter.checks.dmarc.record import Psd, Request, parse_record, select_record
from authmilter.checks.spf import SpfIdentityResult, SpfResult
from authmilter.config import DmarcSection, OrgDomainMethod
from authmilter.context import Header, Message
from authmilter.results import Dnssec, Property, Status
from testlab.fakedns import FakeDns

CFG = DmarcSection()
PSL_CFG = DmarcSection(org_domain=OrgDomainMethod.PSL)


def message(*froms: str) -> Message:
    return Message(headers=tuple(Header(b"From", f" {f}".encode()) for f in froms)
                   + (Header(b"Subject", b" hello"),))


def spf(domain: str, status: Status = Status.PASS) -> SpfResult:
    return SpfResult(SpfIdentityResult("mailfrom", f"bounce@{domain}", domain, status))


def dkim(*domains: str, status: Status = Status.PASS) -> DkimResult:
    return DkimResult(tuple(DkimSignatureResult(status, domain=d, selector="s1") for d in domains))


def dmarc(*records: str) -> dict:
    return {"TXT": list(records)}


ZONE = {
    "example.com": {"A": ["192.0.2.1"], "MX": [(10, "mx.example.com")]},
    "_dmarc.example.com": dmarc("v=DMARC1; p=reject; sp=quarantine; rua=mailto:agg@example.com"),
    "sub.example.com": {"A": ["192.0.2.2"]},
    "mail.example.com": {"A": ["192.0.2.3"]},
    "strict.example": {"A": ["192.0.2.4"]},
    "_dmarc.strict.example": dmarc("v=DMARC1; p=reject; adkim=s; aspf=s"),
    "mail.strict.example": {"A": ["192.0.2.5"]},
    "np.example": {"A": ["192.0.2.6"]},
    "_dmarc.np.example": dmarc("v=DMARC1; p=quarantine; sp=none; np=reject"),
    "exists.np.example": {"MX": [(10, "mx.np.example")]},
    "_dmarc.quarantine.example": dmarc("v=DMARC1; p=quarantine"),
    "_dmarc.none.example": dmarc("v=DMARC1; p=none"),
    "_dmarc.testing.example": dmarc("v=DMARC1; p=reject; t=y"),
    "_dmarc.testq.example": dmarc("v=DMARC1; p=quarantine; t=y"),
    "_dmarc.pct0.example": dmarc("v=DMARC1; p=reject; pct=0"),
    "_dmarc.pct0t.example": dmarc("v=DMARC1; p=reject; pct=0; t=n"),
    "_dmarc.pct50.example": dmarc("v=DMARC1; p=reject; pct=50"),
    "_dmarc.twice.example": dmarc("v=DMARC1; p=reject", "v=DMARC1; p=none"),
    "_dmarc.mixed.example": dmarc("v=spf1 -all", "v=DMARC1; p=reject", "google-site-verification=x"),
    "_dmarc.notfirst.example": dmarc("p=reject; v=DMARC1"),
    "_dmarc.lowercase.example": dmarc("v=dmarc1; p=reject"),
    "_dmarc.broken.example": dmarc("v=DMARC1; p=reject; junk"),
    "_dmarc.badp.example": dmarc("v=DMARC1; p=bogus"),
    "_dmarc.badp-rua.example": dmarc("v=DMARC1; p=bogus; rua=mailto:agg@badp-rua.example"),
    "_dmarc.unknown-tags.example": dmarc("v=DMARC1; p=reject; foo=bar; rf=afrf; ri=3600"),
    "_dmarc.split.example": dmarc(("v=DMARC1; ", "p=reject")),
    "_dmarc.gov": dmarc("v=DMARC1; p=reject; sp=quarantine; np=reject; psd=y"),
    "agency.gov": {"A": ["192.0.2.7"]},
    "_dmarc.slow.example": {"TXT": ["v=DMARC1; p=reject"]},
    "_dmarc.secure.example": dmarc("v=DMARC1; p=reject"),
}


def run(from_: str, spf_result=None, dkim_result=None, *, zone=ZONE, cfg=CFG, **fake) -> DmarcResult:
    return check_dmarc(message(from_), spf_result, dkim_result, FakeDns(zone, **fake), cfg)


# ---------------------------------------------------------------- alignment

@pytest.mark.parametrize("from_, spf_result, dkim_result, status, spf_aligned, dkim_aligned", [
    # aligned pass via SPF only, DKIM only, both
    ("a@example.com", spf("example.com"), None, Status.PASS, "example.com", ""),
    ("a@example.com", None, dkim("example.com"), Status.PASS, "", "example.com"),
    ("a@example.com", spf("example.com"), dkim("example.com"), Status.PASS, "example.com", "example.com"),
    # relaxed: same organizational domain
    ("a@example.com", spf("mail.example.com"), None, Status.PASS, "mail.example.com", ""),
    ("a@sub.example.com", None, dkim("example.com"), Status.PASS, "", "example.com"),
    ("a@sub.example.com", None, dkim("other.example", "mail.example.com"), Status.PASS, "", "mail.example.com"),
    # strict: exact match only
    ("a@strict.example", spf("strict.example"), None, Status.PASS, "strict.example", ""),
    ("a@strict.example", spf("mail.strict.example"), dkim("mail.strict.example"), Status.FAIL, "", ""),
    # unrelated or non-passing identifiers never align
    ("a@example.com", spf("evil.example"), dkim("evil.example"), Status.FAIL, "", ""),
    ("a@example.com", spf("example.com", Status.SOFTFAIL), dkim("example.com", status=Status.FAIL),
     Status.FAIL, "", ""),
    ("a@example.com", spf("example.com", Status.NEUTRAL), None, Status.FAIL, "", ""),
    ("a@example.com", None, None, Status.FAIL, "", ""),
    # a look-alike suffix is not a subdomain
    ("a@example.com", spf("badexample.com"), dkim("notexample.com"), Status.FAIL, "", ""),
])
def test_alignment(from_, spf_result, dkim_result, status, spf_aligned, dkim_aligned):
    result = run(from_, spf_result, dkim_result)
    assert (result.status, result.spf_aligned, result.dkim_aligned) == (status, spf_aligned, dkim_aligned)


def test_null_sender_aligns_through_helo_domain():
    helo = SpfResult(SpfIdentityResult("mailfrom", "postmaster@mail.example.com", "mail.example.com",
                                       Status.PASS))
    assert run("a@example.com", helo).status is Status.PASS


def test_relaxed_alignment_uses_the_tree_walk_org_domain():
    # psd=n at dept.example.com makes it an Organizational Domain of its own: example.com no longer aligns.
    zone = dict(ZONE)
    zone["_dmarc.dept.example.com"] = dmarc("v=DMARC1; p=reject; psd=n")
    assert run("a@dept.example.com", spf("example.com"), zone=zone).status is Status.FAIL
    assert run("a@x.dept.example.com", spf("y.dept.example.com"), zone=zone).status is Status.PASS


def test_relaxed_alignment_psl_mode():
    zone = {"_dmarc.example.co.uk": dmarc("v=DMARC1; p=reject")}
    assert run("a@news.example.co.uk", spf("bounce.example.co.uk"), zone=zone, cfg=PSL_CFG).status is Status.PASS
    assert run("a@example.co.uk", spf("other.co.uk"), zone=zone, cfg=PSL_CFG).status is Status.FAIL


def test_temperror_when_relaxed_alignment_needs_a_failing_lookup():
    result = run("a@example.com", None, dkim("mail.example.com"), servfail={"_dmarc.mail.example.com"})
    assert result.status is Status.TEMPERROR and "alignment" in result.reason


# ---------------------------------------------------------------- policy, disposition, t=, pct=

@pytest.mark.parametrize("from_, spf_result, dkim_result, status", [
    # An aligned identifier that could not be checked makes the result temperror, not fail: a retry may pass.
    ("a@example.com", spf("example.com", Status.TEMPERROR), None, Status.TEMPERROR),
    ("a@example.com", spf("mail.example.com", Status.TEMPERROR), None, Status.TEMPERROR),   # relaxed
    ("a@example.com", None, dkim("example.com", status=Status.TEMPERROR), Status.TEMPERROR),
    ("a@strict.example", spf("mail.strict.example", Status.TEMPERROR), None, Status.FAIL),  # strict: no align
    ("a@example.com", spf("other.example", Status.TEMPERROR), None, Status.FAIL),        # unaligned anyway
    ("a@example.com", spf("example.com", Status.TEMPERROR), dkim("example.com"), Status.PASS),
])
def test_temperror_of_an_aligned_identifier(from_, spf_result, dkim_result, status):
    assert run(from_, spf_result, dkim_result).status is status


@pytest.mark.parametrize("from_, policy, disposition, testing", [
    ("a@example.com", "reject", "reject", False),
    ("a@quarantine.example", "quarantine", "quarantine", False),
    ("a@none.example", "none", "none", False),
    # subdomain sender: the org domain's sp= applies (found by the tree walk)
    ("a@sub.example.com", "quarantine", "quarantine", False),
    ("a@deep.sub.example.com", "quarantine", "quarantine", False),
    # non-existent subdomain: np= (NXDOMAIN for A, AAAA and MX)
    ("a@ghost.np.example", "reject", "reject", False),
    ("a@exists.np.example", "none", "none", False),
    ("a@np.example", "quarantine", "quarantine", False),
    # psd=y at a public-suffix-like parent: its sp=/np= cover the names below it
    ("a@agency.gov", "quarantine", "quarantine", False),
    ("a@ghost.gov", "reject", "reject", False),
    # t=y lowers the disposition one step
    ("a@testing.example", "reject", "quarantine", True),
    ("a@testq.example", "quarantine", "none", True),
    # pct=0 without t= is taken as t=y (our choice, see dmarcrecord.py); any other pct is ignored
    ("a@pct0.example", "reject", "quarantine", True),
    ("a@pct0t.example", "reject", "reject", False),
    ("a@pct50.example", "reject", "reject", False),
    # unknown and legacy tags are ignored; records split over character-strings are joined
    ("a@unknown-tags.example", "reject", "reject", False),
    ("a@split.example", "reject", "reject", False),
    ("a@mixed.example", "reject", "reject", False),
    # an invalid p= with a valid rua= is p=none (RFC 9989 §5.3)
    ("a@badp-rua.example", "none", "none", False),
])
def test_policy_and_disposition_on_fail(from_, policy, disposition, testing):
    result = run(from_, spf("evil.example"))
    assert result.status is Status.FAIL
    assert (result.policy, result.disposition, result.testing) == (policy, disposition, testing)


def test_pass_has_no_disposition_even_under_reject():
    result = run("a@example.com", spf("example.com"))
    assert (result.status, result.policy, result.disposition) == (Status.PASS, "reject", "none")


def test_np_existence_check_only_when_it_matters():
    dns = FakeDns(ZONE)
    check_dmarc(message("a@ghost.sub.example.com"), spf("evil.example"), None, dns, CFG)
    assert not any(rdtype in ("A", "AAAA", "MX") for _, rdtype in dns.asked)  # no np= at example.com
    dns = FakeDns(ZONE)
    check_dmarc(message("a@ghost.np.example"), spf("evil.example"), None, dns, CFG)
    assert [q for q in dns.asked if q[1] != "TXT"] == [("ghost.np.example", "A"), ("ghost.np.example", "AAAA"),
                                                      ("ghost.np.example", "MX")]


def test_record_tags_are_kept_for_reports():
    result = run("a@example.com", spf("example.com"))
    assert (result.p, result.sp, result.np, result.adkim, result.aspf, result.psd) == (
        "reject", "quarantine", "", "r", "r", "u")
    assert result.rua == ("mailto:agg@example.com",) and result.record_domain == "example.com"
    assert result.org_domain == ""  # exact alignment never needed it
    assert run("a@example.com", spf("mail.example.com")).org_domain == "example.com"
    assert run("a@sub.example.com", spf("evil.example")).org_domain == "example.com"


# ---------------------------------------------------------------- none, permerror, temperror

@pytest.mark.parametrize("from_, reason", [
    ("a@unpublished.example", "no DMARC record"),
    ("a@twice.example", "several DMARC records at _dmarc.twice.example"),
    ("a@notfirst.example", "no DMARC record"),      # a record not starting with v=DMARC1 is discarded
    ("a@lowercase.example", "no DMARC record"),     # DMARC1 is case-sensitive (RFC 9989 §4.8)
    ("a@badp.example", "has no valid p="),          # invalid p= and no rua=: no DMARC processing
])
def test_none(from_, reason):
    result = run(from_, spf("evil.example"))
    assert result.status is Status.NONE and reason in result.reason
    assert result.disposition == "none"


def test_several_records_at_the_author_domain_fall_back_to_the_org_domain():
    zone = dict(ZONE)
    zone["_dmarc.sub.example.com"] = dmarc("v=DMARC1; p=none", "v=DMARC1; p=none")
    result = run("a@sub.example.com", spf("evil.example"), zone=zone)
    assert (result.status, result.record_domain, result.policy) == (Status.FAIL, "example.com", "quarantine")


def test_syntax_error_is_permerror():
    result = run("a@broken.example", spf("broken.example"))
    assert result.status is Status.PERMERROR and not result.from_error
    assert "malformed tag 'junk'" in result.reason


@pytest.mark.parametrize("froms, reason", [
    ((), "no From header"),
    (("a@example.com", "b@example.com"), "2 From headers"),
    (("a@example.com, b@evil.example",), "several addresses"),
    (("<a@evil.example;dmarc=pass>",), "unexpected ';'"),
])
def test_from_errors_are_permerror(froms, reason):
    dns = FakeDns(ZONE)
    result = check_dmarc(message(*froms), spf("example.com"), None, dns, CFG)
    assert (result.status, result.from_error, result.from_domain) == (Status.PERMERROR, True, "")
    assert reason in result.reason and dns.asked == []


@pytest.mark.parametrize("fake", [
    {"timeout": {"_dmarc.slow.example"}},
    {"servfail": {"_dmarc.slow.example"}},
    {"servfail": {("_dmarc.example", "TXT")}},   # a failure higher up the walk also leaves the policy unknown
])
def test_dns_failure_in_discovery_is_temperror(fake):
    result = run("a@x.slow.example", spf("slow.example"), **fake)
    assert result.status is Status.TEMPERROR and result.from_domain == "x.slow.example"
    assert "_dmarc." in result.reason


def test_dns_failure_above_an_author_record_does_not_matter():
    assert run("a@slow.example", spf("slow.example"), servfail={"_dmarc.example"}).status is Status.PASS


def test_deadline_spent_is_temperror():
    result = run("a@example.com", spf("example.com"), max_queries=0)
    assert result.status is Status.TEMPERROR


def test_disabled():
    result = run("a@example.com", spf("evil.example"), cfg=DmarcSection(enabled=False))
    assert result.status is Status.NONE and result.disposition == "none"


# ---------------------------------------------------------------- DNSSEC

def test_dnssec_is_the_weakest_of_the_walk():
    assert run("a@secure.example", spf("secure.example"),
               secure={"_dmarc.secure.example"}).dnssec is Dnssec.SECURE
    # the walk from a subdomain also read an unsigned name
    assert run("a@x.secure.example", spf("secure.example"),
               secure={"_dmarc.secure.example"}).dnssec is Dnssec.INSECURE


# ---------------------------------------------------------------- the A-R entry and the log

def test_ar_entry_on_fail():
    (entry,) = run("a@example.com", spf("evil.example")).ar_entries()
    assert (entry.method, entry.result) == ("dmarc", "fail")
    assert entry.comment == "p=reject sp=quarantine dis=reject; dnssec=insecure"
    assert entry.properties == (Property("header", "from", "example.com"), Property("policy", "dmarc", "reject"))


def test_ar_entry_shows_testing_and_np():
    (entry,) = run("a@ghost.np.example", spf("evil.example")).ar_entries()
    assert entry.comment == "p=quarantine sp=none np=reject dis=reject; dnssec=insecure"
    (entry,) = run("a@testing.example", spf("evil.example")).ar_entries()
    assert entry.comment == "p=reject sp=reject dis=quarantine t=y; dnssec=insecure"
    assert entry.properties[-1] == Property("policy", "dmarc", "quarantine")


def test_ar_entry_on_pass_none_and_errors():
    (entry,) = run("a@example.com", spf("example.com")).ar_entries()
    assert (entry.result, entry.properties[-1]) == ("pass", Property("policy", "dmarc", "none"))
    (entry,) = run("a@unpublished.example", spf("evil.example")).ar_entries()
    assert (entry.result, entry.comment, entry.properties) == (
        "none", "no DMARC record; dnssec=insecure", (Property("header", "from", "unpublished.example"),))
    (entry,) = check_dmarc(message("<a@evil.example;dmarc=pass>"), None, None, FakeDns(ZONE), CFG).ar_entries()
    assert (entry.result, entry.properties) == ("permerror", ())
    assert entry.comment.startswith("unexpected ';'")


def test_log_fields():
    fields = run("a@sub.example.com", spf("evil.example")).log_fields()
    assert fields["dmarc"] == "fail" and fields["dmarc_from"] == "sub.example.com"
    assert fields["dmarc_policy"] == "quarantine" and fields["dmarc_dis"] == "quarantine"
    assert fields["dmarc_record_domain"] == "example.com"
    assert run("a@example.com", spf("example.com")).log_fields()["dmarc_aligned"] == "spf:example.com"


# ---------------------------------------------------------------- record parsing

@pytest.mark.parametrize("txts, p", [
    ((b"v=DMARC1; p=reject",), Request.REJECT),
    ((b"v=DMARC1;p=reject;",), Request.REJECT),
    ((b"  v = DMARC1 ; p = Reject ",), Request.REJECT),
    ((b"v=DMARC1",), None),
    ((b"v=DMARC1x; p=reject",), "discarded"),
    ((b"v=DMARC2; p=reject",), "discarded"),
    ((b"xv=DMARC1; p=reject",), "discarded"),
    ((b"",), "discarded"),
])
def test_record_selection(txts, p):
    found = select_record(txts)
    if p == "discarded":
        assert found.record is None
    else:
        assert found.record.p == p


@pytest.mark.parametrize("text, error", [
    ("v=DMARC1; p=reject; p=none", "duplicate tag p"),
    ("v=DMARC1; p=reject;; sp=none", "malformed tag ''"),
    ("v=DMARC1; =reject", "malformed tag '=reject'"),
    ("v=DMARC1; p=reject; x" * 400, "record too long"),
])
def test_record_syntax_errors(text, error):
    assert parse_record(text).syntax_error == error


def test_record_values():
    record = parse_record("v=DMARC1; p=quarantine; sp=bogus; np=REJECT; psd=Y; adkim=s; aspf=x; "
                          "rua=mailto:a@x.example, mailto:b@y.example; fo=1:d; t=y")
    assert (record.p, record.sp, record.np, record.psd) == (Request.QUARANTINE, None, Request.REJECT, Psd.YES)
    assert (record.adkim_strict, record.aspf_strict, record.testing) == (True, False, True)
    assert record.rua == ("mailto:a@x.example", "mailto:b@y.example") and record.fo == ("1", "d")


# ---------------------------------------------------------------- through the renderer: no injection

HOSTILE_ZONE = dict(ZONE)
HOSTILE_ZONE["_dmarc.hostile.example"] = dmarc("v=DMARC1; p=reject; x) dmarc=pass (\r\nX: y; ")


@pytest.mark.parametrize("from_", [
    "<a@evil.example;dmarc=pass>",
    "a@evil.example (dmarc=pass)",
    '"a;dmarc=pass"@evil.example',
    "a@hostile.example",
    "=?utf-8?q?a=40example.com=3B_dmarc=3Dpass?= <x@evil.example>",
])
def test_rendered_header_has_exactly_one_dmarc_result(from_):
    import authres

    from authmilter.renderer import render
    from authmilter.pipeline import results_of

    result = check_dmarc(message(from_), spf("example.com"), None, FakeDns(HOSTILE_ZONE), CFG)
    value = render("mx.example", results_of(dmarc=result))
    parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results:" + value.replace("\n\t", " "))
    assert [(r.method, r.result) for r in parsed.results] == [("dmarc", result.status.value)]
    assert result.status is not Status.PASS


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["v=DMARC1", ";", "p", "=", "reject", "sp", "np", "none", "t", "y", "pct",
                                 "0", "psd", "n", "rua", "mailto:a@b.example", ",", " ", "\t", "x", "\x00",
                                 "é", "adkim", "s", "fo", ":"]), max_size=30).map("".join))
def test_fuzzed_records_never_raise(text):
    zone = {"_dmarc.fuzz.example": dmarc(text)}
    result = run("a@fuzz.example", spf("evil.example"), zone=zone)
    assert result.status in (Status.FAIL, Status.NONE, Status.PERMERROR)
    assert result.disposition in ("none", "quarantine", "reject")
