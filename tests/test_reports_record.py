"""What a judged message adds to the aggregate reports (RFC 9990 §3.1 rows), and what it does not."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from authmilter.checks.dkim.check import DkimResult, DkimSignatureResult
from authmilter.checks.dmarc.check import DmarcResult
from authmilter.checks.spf import SpfIdentityResult, SpfResult
from authmilter.observers import Judged
from authmilter.reports.model import DkimAuth, Override, SpfAuth
from authmilter.reports.record import COMMENT_MAX, FIELD_MAX, RecordRules, clean, observe
from authmilter.results import Action, Status, Verdict
from tests.reports_helpers import STRANGER_IP, ZONE, cfg, judged

NOW = 1_795_000_000.0  # 2026-11-18
RULES = RecordRules()


def record(j: Judged, rules: RecordRules = RULES):
    return observe(j, rules, NOW)


# ---------------------------------------------------------------- what is recorded, and how

def test_aligned_dkim_pass_under_p_reject():
    obs = record(judged(signed=True))
    assert obs.day == "2026-11-18" and obs.policy_domain == "example.org"
    assert obs.rua == ("mailto:dmarc@example.org",)
    row = obs.row
    assert (row.source_ip, row.disposition, row.dkim, row.spf) == (STRANGER_IP, "pass", "pass", "fail")
    assert row.reasons == ()
    assert (row.header_from, row.envelope_from, row.envelope_to) == ("example.org", "relay.example", "")
    assert row.dkim_results == (DkimAuth("example.org", "h8", "pass"),)
    assert row.spf_results == (SpfAuth("relay.example", "pass"),)  # SPF passed for the relay, unaligned
    assert obs.policy.domain == "example.org" and obs.policy.p == "reject"
    assert (obs.policy.adkim, obs.policy.aspf, obs.policy.testing, obs.policy.discovery_method) == \
        ("r", "r", "n", "treewalk")
    assert obs.triggers_report and not obs.to_report_mailbox


def test_spf_aligned_pass_under_p_none_is_disposition_none():
    obs = record(judged(author="x@none.example", ip="192.0.2.99", mail_from="x@none.example", helo="h.example",
                        zone={**ZONE, "none.example": {"TXT": ["v=spf1 ip4:192.0.2.99 -all"]}}))
    assert (obs.row.disposition, obs.row.dkim, obs.row.spf) == ("none", "fail", "pass")
    assert obs.row.spf_results == (SpfAuth("none.example", "pass"),)
    assert obs.row.dkim_results == ()


def test_dmarc_reject_is_recorded_but_does_not_trigger_a_report():
    obs = record(judged(signed=True, tamper=True))
    assert obs.row.disposition == "reject" and obs.row.reasons == ()
    assert obs.row.dkim_results == (DkimAuth("example.org", "h8", "fail"),)
    assert not obs.triggers_report
    assert record(judged(signed=True, tamper=True), RecordRules(report_rejects_only=True)).triggers_report


def test_quarantine_triggers_a_report_and_keeps_the_published_tags():
    obs = record(judged(author="x@quarantine.example"))
    assert obs.row.disposition == "quarantine" and obs.triggers_report
    assert (obs.policy.p, obs.policy.sp, obs.policy.adkim) == ("quarantine", "none", "s")
    assert obs.rua == ()


def test_test_mode_lowers_reject_to_quarantine_with_the_reason():
    obs = record(judged(author="x@testmode.example"))
    assert obs.row.disposition == "quarantine"
    assert obs.row.reasons == (Override("policy_test_mode", "t=y: reject applied as quarantine"),)
    assert obs.policy.testing == "y"


def test_monitor_mode_is_local_policy():
    obs = record(judged(signed=True, tamper=True, config=cfg(policy={"enforce": False})))
    assert obs.row.disposition == "none"
    assert obs.row.reasons == (Override("local_policy", "monitor mode (would have been dmarc_reject)"),)
    assert obs.triggers_report  # accepted: the domain owner should hear about it


def test_local_downgrade_of_a_dmarc_reject():
    obs = record(judged(signed=True, tamper=True, config=cfg(dmarc={"reject_action": Action.QUARANTINE})))
    assert obs.row.disposition == "quarantine"
    assert obs.row.reasons == (Override("local_policy", "local action for a DMARC reject: quarantine"),)


def test_a_reject_by_another_local_rule_names_it():
    # DMARC passes (aligned DKIM) but the client has no PTR and the operator rejects failed iprev.
    obs = record(judged(signed=True, config=cfg(iprev={"fail_action": Action.REJECT})))
    assert obs.row.disposition == "reject" and obs.row.dkim == "pass"
    assert obs.row.reasons == (Override("local_policy", "reject by local rule iprev_fail"),)
    assert obs.triggers_report  # a DMARC pass always does


def test_null_mx_sender_reject_is_local_policy():
    obs = record(judged(author="x@nullmx.example", mail_from="x@nullmx.example"))
    assert obs.row.disposition == "reject"
    assert obs.row.reasons == (Override("local_policy", "reject by local rule null_mx"),)


def test_trusted_forwarder_override():
    config = cfg(forwarders={"networks": (__import__("ipaddress").ip_network("203.0.113.0/24"),)})
    obs = record(judged(signed=True, tamper=True, config=config))
    assert obs.row.disposition == "none"
    assert obs.row.reasons == (Override("trusted_forwarder", "network 203.0.113.0/24"),)


def test_null_sender_spf_is_the_helo_domain():
    obs = record(judged(signed=True, mail_from="", helo="relay.example"))
    assert obs.row.envelope_from == ""
    assert obs.row.spf_results == (SpfAuth("relay.example", "pass", "mfrom"),)


def test_envelope_to_only_when_configured():
    j = judged(signed=True, rcpts=("Bob@Example.NET", "carol@other.example"))
    assert record(j).row.envelope_to == ""
    assert record(j, RecordRules(envelope_to=True)).row.envelope_to == "example.net"


def test_mail_to_a_report_mailbox_never_triggers():
    j = judged(signed=True, rcpts=("dmarc-reports@example.net",))
    assert record(j, RecordRules(report_mailboxes=frozenset({"dmarc-reports@example.net"}))).to_report_mailbox
    assert record(j, RecordRules(report_mailboxes=frozenset({"@example.net"}))).to_report_mailbox
    assert not record(j, RecordRules(report_mailboxes=frozenset({"other@example.net"}))).to_report_mailbox


def test_psl_discovery_is_named():
    config = cfg(dmarc={"org_domain": __import__("authmilter.config").config.OrgDomainMethod.PSL})
    obs = observe(judged(signed=True, config=config), RecordRules.from_config(config), NOW)
    assert obs.policy.discovery_method == "psl"


@pytest.mark.parametrize("kwargs", [
    pytest.param({"ip": "192.0.2.1", "config": cfg(trust={"networks": (
        __import__("ipaddress").ip_network("192.0.2.0/24"),)})}, id="trusted-network"),
    pytest.param({"user": "alice"}, id="authenticated"),
    pytest.param({"author": "x@nodmarc.example"}, id="no-dmarc-record"),
    pytest.param({"author": "x@unknown.example"}, id="no-such-domain"),
])
def test_not_recorded(kwargs):
    assert record(judged(signed=True, **kwargs)) is None


def test_a_refused_recipient_is_not_recorded():
    j = judged(signed=True)
    assert record(replace(j, refused_rcpt="SRS0=x@example.net")) is None


def test_a_tempfailed_message_is_not_recorded():
    # DMARC could not be evaluated and the operator tempfails: the retry will be judged, and counted, again.
    zone = {**ZONE, "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject"]}}
    j = judged(signed=True, zone=zone)
    tempfailed = replace(j, verdict=Verdict(Action.TEMPFAIL, "451", "4.7.1", "later", "dmarc_temperror"))
    assert record(tempfailed) is None


def test_one_observation_per_message_whatever_the_recipients():
    obs = record(judged(signed=True, rcpts=("a@example.net", "b@example.net", "c@example.net")))
    assert obs is not None and obs.row.envelope_to == ""


# ---------------------------------------------------------------- sanitizing what the sender controls

def test_clean_strips_what_xml_cannot_carry_and_caps():
    assert clean("ex\x00am\x1bple.org\r\n\x7f\x85") == "example.org"
    assert clean("a\ud800b\ufffec") == "abc"  # a lone surrogate (from surrogateescape) and a non-character
    assert clean("]]></x>&<y>") == "]]></x>&<y>"  # XML-escaping is the builder's job; these are valid text
    assert clean("ü" * 1000) == "ü" * FIELD_MAX
    assert clean("x" * 5000, COMMENT_MAX) == "x" * COMMENT_MAX


def _hostile_judged() -> Judged:
    """A message whose DKIM d= and s= carry control characters, ']]>' and megabytes (as a parser may hand them
    on), with a DMARC result for its From domain."""
    base = judged(signed=True)
    evil_domain = "evil\x00\x01.example]]>" + "d" * 100_000
    evil_selector = "s\x1b[31m]]><!--\ud800" + "s" * 100_000
    signatures = tuple(DkimSignatureResult(Status.FAIL, domain=evil_domain, selector=evil_selector + str(n))
                       for n in range(80))
    spf = SpfResult(SpfIdentityResult("mailfrom", "x@" + evil_domain, evil_domain, Status.FAIL))
    dmarc = replace(base.results.dmarc, rua=tuple("mailto:\x00" + "r" * 10_000 for _ in range(100)))
    results = base.results.with_outputs(dkim=DkimResult(signatures), spf=spf, dmarc=dmarc)
    return replace(base, results=results)


def test_hostile_values_are_sanitized_and_capped():
    obs = record(_hostile_judged())
    assert len(obs.row.dkim_results) == 50
    for auth in obs.row.dkim_results:
        assert auth.domain.startswith("evil.example]]>") and len(auth.domain) == FIELD_MAX
        assert auth.selector.startswith("s[31m]]><!--") and len(auth.selector) == FIELD_MAX
    assert obs.row.spf_results[0].domain.startswith("evil.example]]>")
    assert len(obs.rua) == 20 and all(len(uri) == FIELD_MAX and "\x00" not in uri for uri in obs.rua)


def test_hostile_values_serialize_as_well_formed_xml():
    obs = record(_hostile_judged())
    root = ET.Element("record")
    for auth in obs.row.dkim_results:
        dkim = ET.SubElement(root, "dkim")
        ET.SubElement(dkim, "domain").text = auth.domain
        ET.SubElement(dkim, "selector").text = auth.selector
    text = ET.tostring(root, encoding="unicode")
    parsed = ET.fromstring(text)  # raises on any character XML 1.0 does not allow
    assert parsed.find("dkim/selector").text == obs.row.dkim_results[0].selector


def test_a_message_without_dkim_or_spf_results_still_has_a_row():
    base = judged(signed=True)
    results = base.results.with_outputs(dkim=None, spf=None)
    obs = record(replace(base, results=results))
    assert obs.row.dkim_results == () and obs.row.spf_results == ()


def test_dmarc_result_fields_used_exist():
    # The contract record.py reads (checks/dmarc/check.py CONTRACT): a rename there must fail here first.
    names = set(DmarcResult.__dataclass_fields__)
    assert {"record_domain", "p", "sp", "np", "adkim", "aspf", "testing", "rua", "policy", "disposition",
            "dkim_aligned", "spf_aligned", "from_domain", "status"} <= names
