"""ARC through the real core (pipeline, policy, renderer, log line, report row): the opt-in arc= entry, the
trusted-sealer override and when it must not apply, and hostile chains."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace

import pytest

from authmilter.checks.arc.check import body_hash_keys, check_arc
from authmilter.config import ConfigError, DkimSection, parse_config_text
from authmilter.context import Connection, Envelope, Header, Message, MessageContext
from authmilter.judge import judge
from authmilter.logline import format_line
from authmilter.observers import Judged
from authmilter.reports.model import Override
from authmilter.reports.record import RecordRules, observe
from authmilter.results import Action, Status
from testlab.fakedns import FakeDns
from tests import arc_support
from tests.hostile import signing
from tests.reports_helpers import STRANGER_IP, ZONE, cfg, message

NOW = 1_796_500_000.0
LIST = "lists.example.net"
FWD = "fwd.example.com"
ARC_ZONE = {**ZONE, arc_support.key_name(LIST): {"TXT": [arc_support.key_record()]},
            arc_support.key_name(FWD): {"TXT": [arc_support.key_record()]},
            arc_support.key_name("evil.example"): {"TXT": [arc_support.key_record()]}}
RECORDED_PASS = "dkim=pass header.d=example.org; dmarc=pass header.from=example.org; " \
                "iprev=pass smtp.remote-ip=192.0.2.1"


def original() -> bytes:
    return signing.sign(signing.simple_message(), "example.org")


def list_mail(recorded: str = RECORDED_PASS, sealer: str = LIST) -> bytes:
    return arc_support.seal(original(), sealer, recorded)


def arc_cfg(**arc):
    return cfg(arc={"enabled": True, **arc})


def run(raw: bytes, config, zone=None):
    ctx = MessageContext(Connection(ipaddress.ip_address(STRANGER_IP), helo="relay.example"),
                         Envelope("bounce@relay.example", ("bob@example.net",), queue_id="Q1"), message(raw))
    judgement = judge(ctx, FakeDns(zone or ARC_ZONE), config, "mx.example.net", now=NOW)
    judged = Judged(ctx, judgement.results, judgement.verdict, 1.0)
    return judgement, format_line(ctx, judgement.results, judgement.verdict, 1.0), observe(judged, RecordRules(), NOW)


def arc_entry(ar_value: str) -> str:
    # The arc entry is the last of the table's, so it runs to the end of the header.
    match = re.search(r"(?<![a-z])arc=.*$", " ".join(ar_value.split()))
    assert match, ar_value
    return match.group(0)


# ---------------------------------------------------------------- the entry

def test_disabled_by_default_no_entry():
    judgement, line, _ = run(list_mail(), cfg())
    assert not re.search(r"(?<![a-z])arc=", judgement.ar_value) and " arc=" not in line
    assert judgement.verdict.reason == "dmarc_reject"


def test_enabled_without_arc_sets_says_none():
    judgement, line, _ = run(original(), arc_cfg())
    assert arc_entry(judgement.ar_value) == f"arc=none (no ARC sets) smtp.remote-ip={STRANGER_IP}"
    assert " arc=none" in line


def test_a_valid_chain_passes_and_names_the_sealers():
    raw = arc_support.seal(list_mail(), FWD, "arc=pass smtp.remote-ip=198.51.100.7", change=lambda m: m)
    judgement, line, _ = run(raw, arc_cfg())
    assert arc_entry(judgement.ar_value) == (
        f"arc=pass (as.2.{FWD}=pass, ams.2.{FWD}=pass, as.1.{LIST}=pass; dnssec=insecure) "
        f"smtp.remote-ip={STRANGER_IP}")
    assert f"arc=pass arc_i=2 arc_d={FWD}" in line
    # No sealer is trusted: DMARC's own verdict stands.
    assert judgement.verdict.action is Action.REJECT and judgement.verdict.reason == "dmarc_reject"


def test_a_broken_chain_fails():
    raw = list_mail().replace(b"list footer", b"list f00ter")
    judgement, _, _ = run(raw, arc_cfg(trusted_sealers=(LIST,)))
    assert arc_entry(judgement.ar_value).startswith(
        "arc=fail (ARC-Message-Signature i=1: body hash mismatch; dnssec=insecure)")
    assert judgement.verdict.reason == "dmarc_reject"


def test_a_key_lookup_timeout_is_temperror():
    zone = {**ARC_ZONE}
    dns = FakeDns(zone, timeout={arc_support.key_name(LIST)})
    result = check_arc(message(list_mail()), dns, DkimSection())
    assert result.status is Status.TEMPERROR and "timeout" in result.reason


# ---------------------------------------------------------------- the trusted-sealer override

def test_trusted_sealer_overrides_a_dmarc_reject():
    judgement, line, observation = run(list_mail(), arc_cfg(trusted_sealers=(LIST,)))
    comment = f"arc=pass as[1].d={LIST} remote-ip[1]=192.0.2.1"
    assert judgement.results.dmarc.status is Status.FAIL
    assert judgement.verdict.action is Action.ACCEPT
    assert judgement.verdict.reason == "trusted_arc_sealer:dmarc_reject"
    assert judgement.verdict.overridden == "local_policy"
    assert f"dnssec=insecure; override=local_policy {comment})" in " ".join(judgement.ar_value.split())
    assert "reason=trusted_arc_sealer:dmarc_reject overridden=local_policy" in line
    assert f"arc_d={LIST} arc_hop_ip=192.0.2.1" in line
    assert observation.row.reasons == (Override("local_policy", comment),)
    assert observation.row.disposition == "none"


def test_trusted_sealer_action_quarantine():
    judgement, _, observation = run(list_mail(), arc_cfg(trusted_sealers=(LIST,),
                                                         trusted_sealer_action=Action.QUARANTINE))
    assert judgement.verdict.action is Action.QUARANTINE
    assert judgement.verdict.reason == "trusted_arc_sealer:dmarc_reject"
    assert observation.row.disposition == "quarantine"


def test_the_newest_hop_must_be_the_trusted_one():
    # lists.example.net (trusted) sealed first; an untrusted hop sealed last: nothing vouches for the last hop.
    raw = arc_support.seal(list_mail(), FWD, "arc=pass smtp.remote-ip=198.51.100.7; " + RECORDED_PASS,
                           change=lambda m: m)
    judgement, _, _ = run(raw, arc_cfg(trusted_sealers=(LIST,)))
    assert judgement.verdict.reason == "dmarc_reject"
    judgement, _, observation = run(raw, arc_cfg(trusted_sealers=(FWD,)))
    assert judgement.verdict.reason == "trusted_arc_sealer:dmarc_reject"
    assert observation.row.reasons == (Override("local_policy", f"arc=pass as[2].d={FWD} remote-ip[2]=198.51.100.7"),)


def test_unlisted_sealer_changes_nothing():
    judgement, _, observation = run(list_mail(sealer="evil.example"), arc_cfg(trusted_sealers=(LIST,)))
    assert judgement.verdict.action is Action.REJECT and judgement.verdict.reason == "dmarc_reject"
    assert "override" not in judgement.ar_value
    assert observation.row.reasons == ()


@pytest.mark.parametrize("recorded", [
    "dmarc=fail header.from=example.org; spf=fail smtp.mailfrom=alice@example.org",
    "dmarc=pass header.from=other.example",                      # a pass, but for another From domain
    "spf=pass smtp.mailfrom=x@unrelated.example; dkim=pass header.d=unrelated.example",  # unaligned passes
    "dmarc=none header.from=example.org",
])
def test_a_sealer_that_saw_no_pass_changes_nothing(recorded):
    judgement, _, _ = run(list_mail(recorded), arc_cfg(trusted_sealers=(LIST,)))
    assert judgement.verdict.reason == "dmarc_reject", recorded


@pytest.mark.parametrize("recorded", [
    "dkim=pass header.d=example.org",
    "spf=pass smtp.mailfrom=bounces@mail.example.org",            # relaxed alignment: the same org domain
])
def test_an_aligned_spf_or_dkim_pass_is_enough(recorded):
    judgement, _, _ = run(list_mail(recorded), arc_cfg(trusted_sealers=(LIST,)))
    assert judgement.verdict.reason == "trusted_arc_sealer:dmarc_reject", recorded


def test_a_forged_chain_from_a_trusted_name_changes_nothing():
    # The seal names the trusted sealer, but the message was changed after sealing.
    raw = list_mail().replace(b"Subject: [list] hello", b"Subject: [list] pay now")
    judgement, _, _ = run(raw, arc_cfg(trusted_sealers=(LIST,)))
    assert arc_entry(judgement.ar_value).startswith("arc=fail")
    assert judgement.verdict.reason == "dmarc_reject"


def test_a_chain_signed_with_another_key_changes_nothing():
    zone = {**ARC_ZONE, arc_support.key_name(LIST): {"TXT": [f"v=DKIM1; p={signing.key_record().split('p=')[1]}"]}}
    judgement, _, _ = run(list_mail(), arc_cfg(trusted_sealers=(LIST,)), zone)
    assert arc_entry(judgement.ar_value).startswith("arc=fail")
    assert judgement.verdict.reason == "dmarc_reject"


def test_a_dmarc_pass_needs_no_override():
    raw = arc_support.seal(original(), LIST, RECORDED_PASS, change=lambda m: m)  # the list changed nothing
    judgement, _, observation = run(raw, arc_cfg(trusted_sealers=(LIST,)))
    assert judgement.results.dmarc.status is Status.PASS and judgement.verdict.reason == "accept"
    assert observation.row.reasons == ()


# ---------------------------------------------------------------- hostile chains

def _arc_message(sets: list[tuple[bytes, bytes]]) -> Message:
    return Message(tuple(Header(name, value) for name, value in sets) + message(original()).headers, b"x\r\n")


def _set(i: str, d: str = LIST) -> list[tuple[bytes, bytes]]:
    return [(b"ARC-Seal", f" i={i}; cv={'none' if i == '1' else 'pass'}; a=rsa-sha256; d={d}; s=arc; b=AAAA".encode()),
            (b"ARC-Message-Signature", f" i={i}; a=rsa-sha256; d={d}; s=arc; h=from; bh=AAAA; b=AAAA".encode()),
            (b"ARC-Authentication-Results", f" i={i}; {d}; dmarc=pass header.from=example.org".encode())]


@pytest.mark.parametrize("headers, reason", [
    ([h for i in range(51, 0, -1) for h in _set(str(i))], "more than 50 ARC sets"),
    ([h for i in range(50, 0, -1) for h in _set(str(i))] + [_set("51")[0]], "more than 50 ARC sets"),
    (_set("1") + _set("1"), "duplicate ARC-Seal for i=1"),
    (_set("2") + _set("1") + [_set("2")[1]], "duplicate ARC-Message-Signature for i=2"),
    ([(b"ARC-Seal", b" cv=none; a=rsa-sha256; d=x.example; s=arc; b=AAAA")] + _set("1")[1:],
     "ARC-Seal without a valid i="),
    ([(b"ARC-Authentication-Results", b" x.example; dmarc=pass")] + _set("1")[:2],
     "ARC-Authentication-Results without i="),
    (_set("3") + _set("1"), "ARC set i=2 missing"),
    (_set("0"), "ARC instance 0 out of range"),
    (_set("99999999"), "ARC-Seal without a valid i="),
    (_set("1")[:2], "no ARC-Authentication-Results for i=1"),
])
def test_broken_structure_fails_without_dns(headers, reason):
    dns = FakeDns(ARC_ZONE)
    msg = _arc_message(headers)
    result = check_arc(msg, dns, DkimSection())
    assert (result.status, result.reason) == (Status.FAIL, reason)
    assert dns.asked == [] and body_hash_keys(msg) == frozenset()


@pytest.mark.parametrize("domain", ["lists.example.net\r\n X-Injected: 1", "lists.example.net;dkim=pass",
                                    "evil (comment) example", "lists.example.net\x00"])
def test_smuggled_d_fails_and_the_header_stays_clean(domain):
    raw = list_mail()
    raw = raw.replace(f"d={LIST}; s=arc;\r\n t=".encode(), f"d={domain}; s=arc;\r\n t=".encode(), 1)
    judgement, line, _ = run(raw, arc_cfg(trusted_sealers=(LIST,)))
    entry = arc_entry(judgement.ar_value)
    assert entry.startswith("arc=fail"), entry
    assert "\r" not in judgement.ar_value.replace("\n\t", "") and "\n" not in judgement.ar_value.replace("\n\t", "")
    assert "X-Injected" not in entry and "dkim=pass" not in entry
    assert judgement.verdict.reason == "dmarc_reject"
    assert "\n" not in line


def test_garbage_aar_payload_gives_no_override():
    raw = list_mail("dmarc=pass header.from=example.org")
    raw = raw.replace(b"ARC-Authentication-Results: i=1; lists.example.net;",
                      b"ARC-Authentication-Results: i=1; ((((;", 1)
    judgement, _, _ = run(raw, arc_cfg(trusted_sealers=(LIST,)))
    # The AAR is sealed: changing it breaks the seal, and even an unparseable AAR never crashes anything.
    assert arc_entry(judgement.ar_value).startswith("arc=fail")
    assert judgement.verdict.reason == "dmarc_reject"


# ---------------------------------------------------------------- config

def test_config_keys():
    config = parse_config_text("[arc]\nenabled = yes\ntrusted_sealers = Lists.Example.NET., fwd.example.com\n"
                               "trusted_sealer_action = quarantine\n", "t.ini")
    assert config.arc.enabled and config.arc.trusted_sealers == ("lists.example.net", "fwd.example.com")
    assert config.arc.trusted_sealer_action is Action.QUARANTINE


@pytest.mark.parametrize("text, problem", [
    ("trusted_sealers = lists example.net", "[arc] trusted_sealers: not a domain name"),
    ("trusted_sealer_action = reject", "[arc] trusted_sealer_action: expected one of accept, quarantine"),
])
def test_bad_config_is_refused(text, problem):
    with pytest.raises(ConfigError) as caught:
        parse_config_text(f"[arc]\n{text}\n", "t.ini")
    assert f"t.ini: {problem}" in str(caught.value)
