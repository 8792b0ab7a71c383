"""Precedence and actions of policy.decide / decide_recipient, as tables over contract result values."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from authmilter import policy
from authmilter.checks import srs as srs_check
from authmilter.checks.dmarc.check import DmarcResult
from authmilter.checks.iprev import IprevResult
from authmilter.checks.sender import SenderDomainResult
from authmilter.checks.spf import SpfIdentityResult, SpfResult
from authmilter.config import Config
from authmilter.context import Connection, Envelope, MessageContext
from authmilter.pipeline import evaluate_recipient, results_of
from authmilter.results import Action, Status

NOW = 1_790_000_000.0


def spf(status: Status, explanation: str = "") -> SpfResult:
    return SpfResult(SpfIdentityResult("mailfrom", "user@example.org", "example.org", status,
                                       reason="" if status is Status.PASS else "test",
                                       explanation=explanation))


def dmarc(status: Status, disposition: str = "none", **kw) -> DmarcResult:
    return DmarcResult(status, kw.pop("from_domain", "example.com"), disposition=disposition, **kw)


def iprev(status: Status) -> IprevResult:
    return IprevResult(status, "192.0.2.1")


def cfg(**sections) -> Config:
    """Config() with some keys changed: cfg(spf={"fail_action": Action.REJECT})."""
    base = Config()
    return replace(base, **{name: replace(getattr(base, name), **keys) for name, keys in sections.items()})


def ctx(*rcpts: str) -> MessageContext:
    return MessageContext(Connection(ipaddress.ip_address("192.0.2.1"), helo="mail.example.org"),
                          Envelope("user@example.org", rcpts or ("bob@example.net",), queue_id="4AbCd"))


PASSING = results_of(iprev=iprev(Status.PASS), spf=spf(Status.PASS), dmarc=dmarc(Status.PASS))
DMARC_REJECT = dmarc(Status.FAIL, "reject", policy="reject")
DMARC_QUARANTINE = dmarc(Status.FAIL, "quarantine", policy="quarantine")
REJECT_SPF = {"fail_action": Action.REJECT}

# (id, results, config sections, expected (action, code, status, reason, overridden))
CASES = [
    ("all pass", PASSING, {}, (Action.ACCEPT, "", "", "accept", "")),
    ("nothing ran", results_of(), {}, (Action.ACCEPT, "", "", "accept", "")),
    ("trusted network", results_of(skipped="trusted_network"), {}, (Action.ACCEPT, "", "", "trusted_network", "")),
    ("authenticated", results_of(skipped="authenticated"), {}, (Action.ACCEPT, "", "", "authenticated", "")),
    # DMARC
    ("from error", results_of(dmarc=dmarc(Status.PERMERROR, from_error=True, from_domain="")), {},
     (Action.REJECT, "550", "5.7.1", "dmarc_from_error", "")),
    ("from error accepted by config", results_of(dmarc=dmarc(Status.PERMERROR, from_error=True)),
     {"dmarc": {"from_error_action": Action.ACCEPT}}, (Action.ACCEPT, "", "", "accept", "")),
    ("dmarc reject", results_of(dmarc=DMARC_REJECT), {}, (Action.REJECT, "550", "5.7.1", "dmarc_reject", "")),
    ("dmarc reject downgraded", results_of(dmarc=DMARC_REJECT), {"dmarc": {"reject_action": Action.QUARANTINE}},
     (Action.QUARANTINE, "", "", "dmarc_reject", "")),
    ("dmarc reject ignored", results_of(dmarc=DMARC_REJECT), {"dmarc": {"reject_action": Action.ACCEPT}},
     (Action.ACCEPT, "", "", "accept", "")),
    ("dmarc quarantine", results_of(dmarc=DMARC_QUARANTINE), {}, (Action.QUARANTINE, "", "", "dmarc_quarantine", "")),
    ("dmarc quarantine as header only", results_of(dmarc=DMARC_QUARANTINE),
     {"dmarc": {"quarantine_action": Action.ACCEPT}}, (Action.ACCEPT, "", "", "accept", "")),
    ("dmarc fail p=none", results_of(dmarc=dmarc(Status.FAIL, "none", policy="none")), {},
     (Action.ACCEPT, "", "", "accept", "")),
    ("dmarc fail t=y lowered reject to quarantine",
     results_of(dmarc=dmarc(Status.FAIL, "quarantine", policy="reject", testing=True)), {},
     (Action.QUARANTINE, "", "", "dmarc_quarantine", "")),
    ("dmarc temperror accepted by default", results_of(dmarc=dmarc(Status.TEMPERROR)), {},
     (Action.ACCEPT, "", "", "accept", "")),
    ("dmarc temperror tempfails", results_of(dmarc=dmarc(Status.TEMPERROR)),
     {"dmarc": {"temperror_action": Action.TEMPFAIL}}, (Action.TEMPFAIL, "451", "4.7.1", "dmarc_temperror", "")),
    # trusted forwarders (issue 4)
    ("forwarder: dmarc reject accepted", results_of(dmarc=DMARC_REJECT, forwarder="network 192.0.2.0/24"), {},
     (Action.ACCEPT, "", "", "trusted_forwarder:dmarc_reject", "trusted_forwarder")),
    ("forwarder: dmarc reject quarantined", results_of(dmarc=DMARC_REJECT, forwarder="host lists.example.edu"),
     {"forwarders": {"dmarc_fail_action": Action.QUARANTINE}},
     (Action.QUARANTINE, "", "", "trusted_forwarder:dmarc_reject", "trusted_forwarder")),
    ("forwarder: never stricter than DMARC alone", results_of(dmarc=DMARC_QUARANTINE, forwarder="network 10.0.0.0/8"),
     {"forwarders": {"dmarc_fail_action": Action.QUARANTINE}, "dmarc": {"quarantine_action": Action.ACCEPT}},
     (Action.ACCEPT, "", "", "accept", "")),
    ("forwarder: spf fail exempt", results_of(spf=spf(Status.FAIL), forwarder="network 10.0.0.0/8"),
     {"spf": REJECT_SPF}, (Action.ACCEPT, "", "", "accept", "")),
    ("forwarder: spf softfail exempt", results_of(spf=spf(Status.SOFTFAIL), forwarder="network 10.0.0.0/8"),
     {"spf": {"softfail_action": Action.QUARANTINE}}, (Action.ACCEPT, "", "", "accept", "")),
    ("forwarder: still refused on null MX",
     results_of(sender=SenderDomainResult("example.org", null_mx=True), forwarder="network 10.0.0.0/8"), {},
     (Action.REJECT, "550", "5.7.27", "null_mx", "")),
    # SPF
    ("spf fail accepted by default", results_of(spf=spf(Status.FAIL)), {}, (Action.ACCEPT, "", "", "accept", "")),
    ("spf fail rejects", results_of(spf=spf(Status.FAIL)), {"spf": REJECT_SPF},
     (Action.REJECT, "550", "5.7.23", "spf_fail", "")),
    ("spf fail quarantines", results_of(spf=spf(Status.FAIL)), {"spf": {"fail_action": Action.QUARANTINE}},
     (Action.QUARANTINE, "", "", "spf_fail", "")),
    ("spf fail but dmarc pass", results_of(spf=spf(Status.FAIL), dmarc=dmarc(Status.PASS)), {"spf": REJECT_SPF},
     (Action.ACCEPT, "", "", "accept", "")),
    ("spf fail, dmarc pass, no override", results_of(spf=spf(Status.FAIL), dmarc=dmarc(Status.PASS)),
     {"spf": REJECT_SPF, "policy": {"dmarc_pass_overrides_spf": False}},
     (Action.REJECT, "550", "5.7.23", "spf_fail", "")),
    ("spf softfail", results_of(spf=spf(Status.SOFTFAIL)), {"spf": {"softfail_action": Action.QUARANTINE}},
     (Action.QUARANTINE, "", "", "spf_softfail", "")),
    ("spf temperror accepted by default", results_of(spf=spf(Status.TEMPERROR)), {},
     (Action.ACCEPT, "", "", "accept", "")),
    ("spf temperror tempfails", results_of(spf=spf(Status.TEMPERROR)), {"spf": {"temperror_action": Action.TEMPFAIL}},
     (Action.TEMPFAIL, "451", "4.7.24", "spf_temperror", "")),
    ("spf permerror rejects", results_of(spf=spf(Status.PERMERROR)), {"spf": {"permerror_action": Action.REJECT}},
     (Action.REJECT, "550", "5.7.24", "spf_permerror", "")),
    # iprev, sender domain
    ("iprev fail accepted by default", results_of(iprev=iprev(Status.FAIL)), {}, (Action.ACCEPT, "", "", "accept", "")),
    ("iprev fail rejects", results_of(iprev=iprev(Status.FAIL)), {"iprev": {"fail_action": Action.REJECT}},
     (Action.REJECT, "550", "5.7.25", "iprev_fail", "")),
    ("iprev permerror (no PTR) rejects like fail", results_of(iprev=iprev(Status.PERMERROR)),
     {"iprev": {"fail_action": Action.REJECT}}, (Action.REJECT, "550", "5.7.25", "iprev_fail", "")),
    ("iprev temperror tempfails", results_of(iprev=iprev(Status.TEMPERROR)),
     {"iprev": {"temperror_action": Action.TEMPFAIL}}, (Action.TEMPFAIL, "451", "4.7.25", "iprev_temperror", "")),
    ("null MX", results_of(sender=SenderDomainResult("example.org", null_mx=True)), {},
     (Action.REJECT, "550", "5.7.27", "null_mx", "")),
    ("null MX accepted by config", results_of(sender=SenderDomainResult("example.org", null_mx=True)),
     {"sender": {"null_mx_action": Action.ACCEPT}}, (Action.ACCEPT, "", "", "accept", "")),
    ("no address accepted by default", results_of(sender=SenderDomainResult("example.org", no_address=True)), {},
     (Action.ACCEPT, "", "", "accept", "")),
    ("no address rejects", results_of(sender=SenderDomainResult("example.org", no_address=True)),
     {"sender": {"no_address_action": Action.REJECT}}, (Action.REJECT, "550", "5.1.8", "sender_no_address", "")),
    ("no address tempfails", results_of(sender=SenderDomainResult("example.org", no_address=True)),
     {"sender": {"no_address_action": Action.TEMPFAIL}},
     (Action.TEMPFAIL, "451", "4.1.8", "sender_no_address", "")),
    ("sender DNS failure is not no-address", results_of(sender=SenderDomainResult("example.org", temporary=True)),
     {"sender": {"no_address_action": Action.REJECT}}, (Action.ACCEPT, "", "", "accept", "")),
    # precedence between rules
    ("dmarc reject before spf fail", results_of(spf=spf(Status.FAIL), dmarc=DMARC_REJECT), {"spf": REJECT_SPF},
     (Action.REJECT, "550", "5.7.1", "dmarc_reject", "")),
    ("from error before everything", results_of(spf=spf(Status.FAIL), dmarc=dmarc(Status.PERMERROR, from_error=True),
                                             sender=SenderDomainResult("example.org", null_mx=True)),
     {"spf": REJECT_SPF}, (Action.REJECT, "550", "5.7.1", "dmarc_from_error", "")),
    ("reject before tempfail", results_of(spf=spf(Status.TEMPERROR), sender=SenderDomainResult("x.org", null_mx=True)),
     {"spf": {"temperror_action": Action.TEMPFAIL}}, (Action.REJECT, "550", "5.7.27", "null_mx", "")),
    ("tempfail before quarantine", results_of(iprev=iprev(Status.TEMPERROR), dmarc=DMARC_QUARANTINE),
     {"iprev": {"temperror_action": Action.TEMPFAIL}},
     (Action.TEMPFAIL, "451", "4.7.25", "iprev_temperror", "")),
    ("iprev reject before dmarc quarantine", results_of(iprev=iprev(Status.FAIL), dmarc=DMARC_QUARANTINE),
     {"iprev": {"fail_action": Action.REJECT}}, (Action.REJECT, "550", "5.7.25", "iprev_fail", "")),
    ("an accepted rule lets the next one decide", results_of(spf=spf(Status.FAIL), iprev=iprev(Status.FAIL)),
     {"iprev": {"fail_action": Action.REJECT}}, (Action.REJECT, "550", "5.7.25", "iprev_fail", "")),
    # monitor mode
    ("monitor: reject recorded, accepted", results_of(dmarc=DMARC_REJECT), {"policy": {"enforce": False}},
     (Action.ACCEPT, "", "", "monitor:dmarc_reject", "local_policy")),
    ("monitor: quarantine lifted too", results_of(dmarc=DMARC_QUARANTINE), {"policy": {"enforce": False}},
     (Action.ACCEPT, "", "", "monitor:dmarc_quarantine", "local_policy")),
    ("monitor: tempfail accepted", results_of(spf=spf(Status.TEMPERROR)),
     {"policy": {"enforce": False}, "spf": {"temperror_action": Action.TEMPFAIL}},
     (Action.ACCEPT, "", "", "monitor:spf_temperror", "local_policy")),
    ("monitor: forwarder override kept", results_of(dmarc=DMARC_REJECT, forwarder="network 10.0.0.0/8"),
     {"policy": {"enforce": False}, "forwarders": {"dmarc_fail_action": Action.QUARANTINE}},
     (Action.ACCEPT, "", "", "monitor:trusted_forwarder:dmarc_reject", "trusted_forwarder")),
]


@pytest.mark.parametrize("name,results,sections,expected", CASES, ids=[c[0] for c in CASES])
def test_decide(name, results, sections, expected):
    verdict = policy.decide(results, ctx(), cfg(**sections))
    assert (verdict.action, verdict.code, verdict.status, verdict.reason, verdict.overridden) == expected
    if verdict.action in (Action.REJECT, Action.TEMPFAIL):
        assert verdict.text, "a refusal says why"


# (id, rcpts, results, sections, expected action, reason)
POSTMASTER = [
    ("postmaster only", ("postmaster@example.net",), results_of(dmarc=DMARC_REJECT), {},
     Action.ACCEPT, "postmaster:dmarc_reject"),
    ("case-insensitive, abuse", ("Abuse@Example.NET", "POSTMASTER@other.example"), results_of(dmarc=DMARC_REJECT), {},
     Action.ACCEPT, "postmaster:dmarc_reject"),
    ("bare postmaster", ("<Postmaster>",), results_of(sender=SenderDomainResult("x.org", null_mx=True)), {},
     Action.ACCEPT, "postmaster:null_mx"),
    ("tempfail too", ("postmaster@example.net",), results_of(spf=spf(Status.TEMPERROR)),
     {"spf": {"temperror_action": Action.TEMPFAIL}}, Action.ACCEPT, "postmaster:spf_temperror"),
    ("mixed list is not exempt", ("postmaster@example.net", "bob@example.net"), results_of(dmarc=DMARC_REJECT), {},
     Action.REJECT, "dmarc_reject"),
    ("lookalike is not exempt", ("postmaster+x@example.net",), results_of(dmarc=DMARC_REJECT), {},
     Action.REJECT, "dmarc_reject"),
    ("quarantine still applies", ("postmaster@example.net",), results_of(dmarc=DMARC_QUARANTINE), {},
     Action.QUARANTINE, "dmarc_quarantine"),
]


@pytest.mark.parametrize("name,rcpts,results,sections,action,reason", POSTMASTER, ids=[p[0] for p in POSTMASTER])
def test_postmaster_and_abuse_are_never_refused(name, rcpts, results, sections, action, reason):
    verdict = policy.decide(results, ctx(*rcpts), cfg(**sections))
    assert (verdict.action, verdict.reason) == (action, reason)


def test_spf_reject_shows_the_explanation_made_safe():
    results = results_of(spf=spf(Status.FAIL, explanation="100% forged\r\n550 5.7.1 ok\x00 see <http://x.example/>"))
    verdict = policy.decide(results, ctx(), cfg(spf=REJECT_SPF))
    assert verdict.text == "SPF validation failed: 100%% forged 550 5.7.1 ok see <http://x.example/>"


def test_spf_reject_without_explanation_when_configured():
    results = results_of(spf=spf(Status.FAIL, explanation="secret text"))
    verdict = policy.decide(results, ctx(), cfg(spf={**REJECT_SPF, "show_explanation": False}))
    assert "secret" not in verdict.text and "example.org" in verdict.text


def test_dmarc_reject_text_names_the_domain():
    verdict = policy.decide(results_of(dmarc=dmarc(Status.FAIL, "reject", from_domain="bank.example")), ctx(), cfg())
    assert "DMARC policy of bank.example" in verdict.text


@pytest.mark.parametrize("text,safe", [
    ("plain", "plain"),
    ("50% off", "50%% off"),
    ("%s%n%%", "%%s%%n%%%%"),
    ("a\r\nb\nc\rd", "a b c d"),
    ("nul\x00byte\ttab", "nul byte tab"),
    ("caf\u00e9 \u202e", "caf"),
    ("", ""),
])
def test_safe_reply_text(text, safe):
    assert policy.safe_reply_text(text) == safe


def test_safe_reply_text_is_bounded_even_after_doubling():
    safe = policy.safe_reply_text("%" * 1000)
    assert len(safe) <= policy.MAX_REPLY_TEXT
    assert safe.endswith("...") and safe[:-3].count("%") % 2 == 0


# ---------------------------------------------------------------- per recipient (SRS bounces)

SECRET = "s3cret"


def srs0(local="user", domain="example.org", now=NOW, secret=SECRET, ours="fwd.example.net") -> str:
    stamp = srs_check.make_timestamp(now)
    return f"SRS0={srs_check.make_hash(secret, stamp, domain, local)}={stamp}={domain}={local}@{ours}"


SRS = {"secrets": (SECRET,), "max_age_days": 21}

RECIPIENTS = [
    ("genuine bounce", srs0(), SRS, {}, Action.ACCEPT, "accept"),
    ("plain recipient", "bob@example.net", SRS, {}, Action.ACCEPT, "accept"),
    ("forged hash", srs0(secret="guess"), SRS, {}, Action.REJECT, "srs_bad_hash"),
    ("expired", srs0(now=NOW - 40 * 86400), SRS, {}, Action.REJECT, "srs_expired"),
    ("malformed", "SRS0=x@fwd.example.net", SRS, {}, Action.REJECT, "srs_malformed"),
    ("no secrets: not checked", srs0(secret="guess"), {}, {}, Action.ACCEPT, "accept"),
    ("monitor mode", srs0(secret="guess"), SRS, {"enforce": False}, Action.ACCEPT, "monitor:srs_bad_hash"),
]


@pytest.mark.parametrize("name,rcpt,srs,policy_keys,action,reason", RECIPIENTS, ids=[r[0] for r in RECIPIENTS])
def test_decide_recipient(name, rcpt, srs, policy_keys, action, reason):
    config = cfg(srs=srs, policy=policy_keys)
    verdict = policy.decide_recipient(rcpt, evaluate_recipient(rcpt, config, now=NOW), config)
    assert (verdict.action, verdict.reason) == (action, reason)
    if action is Action.REJECT:
        assert (verdict.code, verdict.status) == ("550", "5.7.1")
        assert "SRS" in verdict.text


def test_is_exempt_recipient():
    assert policy.is_exempt_recipient('"postmaster"@example.net')
    assert not policy.is_exempt_recipient("postmaster.x@example.net")
    assert not policy.is_exempt_recipient("")
