"""DMARC end to end (issue 3, RFC 9989): alignment, policy discovery by the DNS tree walk, and what Postfix does
with each disposition — deliver, hold (milter quarantine) or refuse at end of DATA with 550 5.7.1.

Each test sends over SMTP inside the lab's namespace, then reads the delivered message (or the held queue file, or
the SMTP reply) and the milter's log line for that queue id. Zones: authzones.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from testlab.authzones import IDN_A_LABEL, IDN_U_LABEL, SELECTOR, keys
from tests.e2e.signing import ar_from_header_block, comments, held, message, our_ar, sign
from testlab.zonedata import GOOD_V4, STRANGER_V4

pytestmark = pytest.mark.e2e

@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    source: str
    mail_from: str
    author: str
    signer: str | None = None         # DKIM d= (signed with the lab RSA key under SELECTOR)


def send(lab, scenario: Scenario):
    data = message(author=scenario.author)
    if scenario.signer:
        data = sign(data, keys().rsa, domain=scenario.signer)
    return lab.send(mail_from=scenario.mail_from, source=scenario.source, data=data)


def delivered_ar(lab, sent):
    assert sent.accepted, "; ".join(map(str, sent.stages))
    return our_ar(lab.delivered(sent))


def assert_refused(lab, sent, domain: str) -> None:
    """550 5.7.1 at end of DATA, naming the domain, and nothing delivered."""
    assert not sent.accepted, "the message was accepted"
    reply = sent.reply("eom")
    assert reply.code == 550 and reply.text.startswith("5.7.1"), reply
    assert domain in reply.text, reply
    assert not lab.is_delivered(sent)


# ------------------------------------------------------------------ pass: by SPF, by DKIM, by both; relaxed


PASSING = [
    # name, source, MAIL FROM, From, DKIM d=, what the log says aligned
    (Scenario("spf-only", GOOD_V4, "a@example.com", "a@example.com"), "spf:example.com"),
    (Scenario("dkim-only", STRANGER_V4, "a@example.com", "a@example.com", "example.com"), "dkim:example.com"),
    (Scenario("both", GOOD_V4, "a@example.com", "a@example.com", "example.com"),
     "spf:example.com,dkim:example.com"),
    # RFC 9989 §4.4 relaxed alignment: same Organizational Domain, found by the tree walk.
    (Scenario("relaxed-spf", GOOD_V4, "a@bounces.example.com", "a@example.com"), "spf:bounces.example.com"),
    (Scenario("relaxed-dkim", STRANGER_V4, "a@example.org", "a@example.com", "news.example.com"),
     "dkim:news.example.com"),
    # Below a psd=y parent the Organizational Domain is one label under it: brand.psdtld.example.
    (Scenario("psd-relaxed", STRANGER_V4, "a@example.org", "a@news.brand.psdtld.example", "brand.psdtld.example"),
     "dkim:brand.psdtld.example"),
]


@pytest.mark.parametrize("scenario, aligned", PASSING, ids=[s.name for s, _ in PASSING])
def test_aligned_pass(lab, scenario, aligned):
    sent = send(lab, scenario)
    ar = delivered_ar(lab, sent)
    from_domain = scenario.author.split("@")[1]
    entry = ar.only("dmarc")
    assert (entry.result, entry.properties["header.from"]) == ("pass", from_domain), ar.raw
    assert entry.properties["policy.dmarc"] == "none"
    if scenario.signer:
        assert ar.only("dkim", header_d=scenario.signer).result == "pass"
    log = lab.milter_log(sent)
    assert (log["dmarc"], log["dmarc_from"], log["dmarc_aligned"], log["action"]) == (
        "pass", from_domain, aligned, "accept"), log["_line"]


def test_dkim_pass_overrides_spf_fail_by_default(lab):
    """Forwarded mail: SPF fails, the aligned DKIM signature survived. Even the spf_reject variant accepts it
    ([policy] dmarc_pass_overrides_spf = yes by default)."""
    data = sign(message(author="a@example.com"), keys().rsa, domain="example.com")
    sent = lab.send(mail_from="a@example.com", source=STRANGER_V4, data=data, variant="spf_reject")
    ar = delivered_ar(lab, sent)
    assert ar.only("spf", smtp_mailfrom="a@example.com").result == "fail"
    assert ar.only("dmarc").result == "pass"
    assert lab.milter_log(sent)["action"] == "accept"


# ------------------------------------------------------------------ fail: refused at end of DATA


REFUSED = [
    # Strict alignment (adkim=s aspf=s): a passing parent/child identifier is not enough.
    (Scenario("strict-spf", GOOD_V4, "a@bounces.strict.example", "a@strict.example"), "strict.example", ""),
    (Scenario("strict-dkim", STRANGER_V4, "a@strict.example", "a@strict.example", "mail.strict.example"),
     "strict.example", ""),
    (Scenario("p-reject", STRANGER_V4, "a@example.com", "a@example.com"), "example.com", ""),
    # np=reject for a subdomain that does not exist (no A, AAAA or MX: RFC 9989 §3.2.11).
    (Scenario("np-nonexistent", STRANGER_V4, "a@example.org", "a@ghost.example.com"), "ghost.example.com",
     "example.com"),
    # The PSD's policy applies to brand.psdtld.example, and other.psdtld.example is another organization.
    (Scenario("psd-policy", STRANGER_V4, "a@example.org", "a@brand.psdtld.example", "other.psdtld.example"),
     "brand.psdtld.example", "psdtld.example"),
]


@pytest.mark.parametrize("scenario, domain, record_domain", REFUSED, ids=[s.name for s, _, _ in REFUSED])
def test_dmarc_reject_refuses_at_end_of_data(lab, scenario, domain, record_domain):
    sent = send(lab, scenario)
    assert_refused(lab, sent, domain)
    log = lab.milter_log(sent)
    assert (log["dmarc"], log["dmarc_from"], log["dmarc_dis"], log["action"], log["reason"]) == (
        "fail", domain, "reject", "reject", "dmarc_reject"), log["_line"]
    assert log.get("dmarc_record_domain", "") == record_domain, log["_line"]


# ------------------------------------------------------------------ fail: delivered or held


def test_subdomain_covered_by_org_sp(lab):
    """shop.example.com has no record; the tree walk finds example.com's, whose sp=none applies to it."""
    sent = send(lab, Scenario("sp", STRANGER_V4, "a@shop.example.com", "a@shop.example.com"))
    ar = delivered_ar(lab, sent)
    entry = ar.only("dmarc")
    assert (entry.result, entry.properties["header.from"], entry.properties["policy.dmarc"]) == (
        "fail", "shop.example.com", "none"), ar.raw
    (comment,) = comments(ar, "dmarc")
    assert "p=reject sp=none" in comment and "dis=none" in comment, comment
    log = lab.milter_log(sent)
    assert (log["dmarc"], log["dmarc_record_domain"], log["action"]) == ("fail", "example.com", "accept")


def test_p_none_is_recorded_and_delivered(lab):
    sent = send(lab, Scenario("none", STRANGER_V4, "a@none.example", "a@none.example"))
    ar = delivered_ar(lab, sent)
    entry = ar.only("dmarc")
    assert (entry.result, entry.properties["policy.dmarc"]) == ("fail", "none"), ar.raw
    log = lab.milter_log(sent)
    assert (log["dmarc"], log["dmarc_policy"], log["action"]) == ("fail", "none", "accept"), log["_line"]


def test_p_quarantine_holds_the_message(lab):
    sent = send(lab, Scenario("quarantine", STRANGER_V4, "a@quarantine.example", "a@quarantine.example"))
    headers = held(lab, sent)
    ar = ar_from_header_block(headers)
    entry = ar.only("dmarc")
    assert (entry.result, entry.properties["policy.dmarc"]) == ("fail", "quarantine"), ar.raw
    log = lab.milter_log(sent)
    assert (log["dmarc"], log["action"], log["reason"]) == ("fail", "quarantine", "dmarc_quarantine"), log["_line"]


def test_testing_mode_lowers_reject_to_quarantine(lab):
    """RFC 9989 §4.7: t=y applies the policy one step lower: p=reject becomes a hold, not a refusal."""
    sent = send(lab, Scenario("t=y", STRANGER_V4, "a@testing.example", "a@testing.example"))
    ar = ar_from_header_block(held(lab, sent))
    entry = ar.only("dmarc")
    assert (entry.result, entry.properties["policy.dmarc"]) == ("fail", "quarantine"), ar.raw
    (comment,) = comments(ar, "dmarc")
    assert "p=reject" in comment and "dis=quarantine" in comment and "t=y" in comment, comment
    log = lab.milter_log(sent)
    assert (log["dmarc_policy"], log["dmarc_dis"], log["dmarc_testing"], log["action"]) == (
        "reject", "quarantine", "yes", "quarantine"), log["_line"]


@pytest.mark.parametrize("domain", ["unreachable.test", "bogus.test"])
def test_policy_lookup_failure_is_temperror_and_accepted_by_default(lab, domain):
    """A DNS failure during discovery means the policy is unknown, not absent (RFC 9989 §4.10); the default
    [dmarc] temperror_action is accept."""
    sent = send(lab, Scenario("temperror", STRANGER_V4, "a@example.org", f"a@{domain}"))
    ar = delivered_ar(lab, sent)
    entry = ar.only("dmarc")
    assert (entry.result, entry.properties["header.from"]) == ("temperror", domain), ar.raw
    assert "policy.dmarc" not in entry.properties
    log = lab.milter_log(sent)
    assert (log["dmarc"], log["action"]) == ("temperror", "accept"), log["_line"]


def test_pct_zero_without_t_is_testing_mode(lab):
    """Issue 3: a record with pct=0 and no t= was written to test without enforcement: read as t=y, so p=reject
    becomes a hold."""
    sent = send(lab, Scenario("pct=0", STRANGER_V4, "a@pct.example", "a@pct.example"))
    ar = ar_from_header_block(held(lab, sent))
    assert ar.only("dmarc").properties["policy.dmarc"] == "quarantine", ar.raw
    log = lab.milter_log(sent)
    assert (log["dmarc_testing"], log["dmarc_dis"], log["action"]) == ("yes", "quarantine", "quarantine")


@pytest.mark.parametrize("domain, reason", [
    ("multi.example", "several DMARC records"),
    ("badorder.example", "no DMARC record"),
])
def test_unusable_record_sets_mean_no_policy(lab, domain, reason):
    """RFC 9989 §4.10: several records, or a record not starting with v=DMARC1, are no policy at all."""
    sent = send(lab, Scenario("no-policy", STRANGER_V4, f"a@{domain}", f"a@{domain}"))
    ar = delivered_ar(lab, sent)
    assert ar.only("dmarc").result == "none", ar.raw
    assert reason in comments(ar, "dmarc")[0]
    log = lab.milter_log(sent)
    assert (log["dmarc"], log["action"]) == ("none", "accept"), log["_line"]


def test_idn_author_domain_is_looked_up_by_its_a_label(lab):
    """An SMTPUTF8 message From a U-label domain must find the policy published at the A-label: otherwise any
    IDN domain's p=reject could be bypassed by writing its name in Unicode."""
    data = message(author=f"a@{IDN_U_LABEL}")
    sent = lab.send(mail_from="a@example.org", source=STRANGER_V4, data=data, mail_params=" SMTPUTF8")
    assert not sent.accepted, sent.stages
    reply = sent.reply("eom")
    assert reply.code == 550 and reply.text.startswith("5.7.1"), reply
    log = lab.milter_log(sent)
    assert (log["dmarc"], log["dmarc_from"], log["action"]) == ("fail", IDN_A_LABEL, "reject"), log["_line"]


# ------------------------------------------------------------------ the From header itself


def test_multiple_from_is_refused(lab):
    data = message(author="a@example.com", extra=[b"From: <b@example.org>"])
    sent = lab.send(mail_from="a@example.com", source=GOOD_V4, data=data)
    assert not sent.accepted
    reply = sent.reply("eom")
    assert reply.code == 550 and reply.text.startswith("5.7.1"), reply
    assert not lab.is_delivered(sent)
    log = lab.milter_log(sent)
    assert (log["dmarc"], log["action"], log["reason"]) == ("permerror", "reject", "dmarc_from_error"), log["_line"]


def _one_dmarc_result(lab, sent) -> str:
    """Whatever happened to the message, exactly one dmarc result came of it: in the delivered header (which
    authres parses), else in the log line of the refusal."""
    log = lab.milter_log(sent)
    assert "," not in log["dmarc"], log["_line"]
    if not sent.accepted:
        assert sent.reply("eom").code == 550
        return log["dmarc"]
    ar = delivered_ar(lab, sent)
    dmarc = [entry for entry in ar.entries if entry.method == "dmarc"]
    assert len(dmarc) == 1, ar.raw
    assert dmarc[0].result == log["dmarc"]
    return dmarc[0].result


@pytest.mark.parametrize("from_line, expected", [
    # A ';' is no part of an address: the From is unusable (permerror), refused by default.
    (b"From: <a@evil.example;dmarc=pass>", "permerror"),
    (b"From: a@evil.example;dmarc=pass", "permerror"),
    # Quoted display names and comments are legal and name evil.example, which has no DMARC record.
    (b'From: "x; dmarc=pass" <a@evil.example>', "none"),
    (b"From: <a@evil.example> (dmarc=pass; example.com)", "none"),
], ids=["angle", "bare", "display-name", "comment"])
def test_from_built_to_inject_gives_one_dmarc_result(lab, from_line, expected):
    data = message(author="a@evil.example", from_line=from_line)
    sent = lab.send(mail_from="a@evil.example", source=STRANGER_V4, data=data)
    assert _one_dmarc_result(lab, sent) == expected
    assert sent.accepted is (expected == "none")


@pytest.mark.parametrize("domain, selector", [
    (b"example.com;dmarc=pass", SELECTOR.encode()),
    (b"evil.example dmarc=pass", SELECTOR.encode()),
    (b'evil.example";dmarc=pass', SELECTOR.encode()),
    (b"evil.example)dmarc=pass(", SELECTOR.encode()),
    (b"evil.example", b"lab;dmarc=pass"),
    (b"evil.example", b'lab" dmarc=pass'),
    (b"evil.example", b"lab(dmarc=pass"),
], ids=["d-semicolon", "d-space", "d-quote", "d-paren", "s-semicolon", "s-quote", "s-paren"])
def test_signature_built_to_inject_gives_one_dmarc_result(lab, domain, selector):
    data = sign(message(author="a@evil.example"), keys().rsa, domain=domain, selector=selector)
    sent = lab.send(mail_from="a@evil.example", source=STRANGER_V4, data=data)
    assert _one_dmarc_result(lab, sent) != "pass"
    if sent.accepted:
        ar = delivered_ar(lab, sent)
        for entry in ar.entries:
            if entry.method == "dkim":
                assert entry.result != "pass" or entry.properties.get("header.d") == "example.com", ar.raw
