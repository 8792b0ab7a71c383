"""iprev (FCrDNS), SRS, trusted forwarders and null MX end to end (issue 4), through the real Postfix and milter.

Reverse zones (127.in-addr.arpa, 2001:db8::/32) are served by NSD behind the validating Unbound. SRS addresses are
written by pysrs (an independent implementation, as postsrsd/libsrs2 would write them), never by our own code.
Policies other than the defaults run on their own milter variants (Lab.variant), each with its own smtpd port.
Zones: zonedata.py and authzones.py.
"""

from __future__ import annotations

import base64
import re
import time

import pytest

from testlab.authzones import (PTR_ZONE_DEAD_V4, SRS1_FORWARDER_V4, SRS_FORWARDER_V4, TRUSTED_FORWARDER_V4,
                                 TRUSTED_HOST, TRUSTED_HOST_V4, TWO_PTR_V4, UNTRUSTED_V4, keys)
from tests.e2e.signing import ar_from_header_block, comments, held, message, our_ar, sign
from testlab.zonedata import (GOOD_V4, GOOD_V6, MISMATCH_V4, PTR_TEMPERROR_V4, RECIPIENT_DOMAIN,
                                STRANGER_V4, STRANGER_V6)

pytestmark = pytest.mark.e2e

RCPT = f"user@{RECIPIENT_DOMAIN}"
SRS_SECRET = "lab-srs-secret"


def delivered_ar(lab, sent):
    assert sent.accepted, "; ".join(map(str, sent.stages))
    return our_ar(lab.delivered(sent))


# ------------------------------------------------------------------ iprev


@pytest.mark.parametrize("source, host", [
    (GOOD_V4, "mail.example.org"),
    (GOOD_V6, "mail6.example.org"),
    (TWO_PTR_V4, "confirmed.fwd.example"),   # of two PTR names, the one that resolves back is named
], ids=["ipv4", "ipv6", "two-ptr-names"])
def test_iprev_pass_names_the_confirmed_host(lab, source, host):
    sent = lab.send(mail_from="user@example.org", source=source)
    ar = delivered_ar(lab, sent)
    entry = ar.only("iprev")
    assert (entry.result, entry.properties["policy.iprev"]) == ("pass", source), ar.raw
    # RFC 8601 §3: iprev=pass policy.iprev=<ip> (<confirmed name>): the comment follows the property. An IPv6
    # address holds ':' (a tspecial), so it is a quoted-string there.
    assert re.search(r"iprev=pass\s+(\([^)]*\)\s+)?policy\.iprev=(" + re.escape(source) + "|" +
                     re.escape(f'"{source}"') + r")\s+\(" + re.escape(host) + r"\)", ar.raw), ar.raw
    log = lab.milter_log(sent)
    assert (log["iprev"], log["iprev_host"], log["client_ip"]) == ("pass", host, source), log["_line"]


@pytest.mark.parametrize("source, expected, reason", [
    (MISMATCH_V4, "fail", "not resolving to"),        # PTR mismatch.example.org, whose A is another address
    (STRANGER_V4, "permerror", "no PTR"),             # no PTR record at all
    (STRANGER_V6, "permerror", "no PTR"),             # the same under ip6.arpa
    (PTR_TEMPERROR_V4, "temperror", "SERVFAIL"),      # PTR fine, its name's zone does not answer
    (PTR_ZONE_DEAD_V4, "temperror", "SERVFAIL"),      # the reverse zone itself does not answer
], ids=["mismatch", "no-ptr", "no-ptr-ipv6", "forward-temperror", "ptr-zone-temperror"])
def test_iprev_failures_are_recorded_and_accepted_by_default(lab, source, expected, reason):
    sent = lab.send(mail_from="user@example.org", source=source)
    ar = delivered_ar(lab, sent)
    entry = ar.only("iprev")
    assert (entry.result, entry.properties["policy.iprev"]) == (expected, source), ar.raw
    (comment,) = comments(ar, "iprev")
    assert reason in comment, comment
    log = lab.milter_log(sent)
    assert (log["iprev"], log["client_ip"], log["action"]) == (expected, source, "accept"), log["_line"]
    assert reason in log["iprev_reason"], log["_line"]


@pytest.fixture(scope="module")
def iprev_strict(lab):
    return lab.variant("iprev_strict", {"iprev": {"fail_action": "reject", "temperror_action": "tempfail"}})


@pytest.mark.parametrize("source, code, status, action", [
    (MISMATCH_V4, 550, "5.7.25", "reject"),
    (PTR_ZONE_DEAD_V4, 451, "4.7.25", "tempfail"),
], ids=["fail-rejects", "temperror-tempfails"])
def test_iprev_actions_when_configured(lab, iprev_strict, source, code, status, action):
    sent = lab.send(mail_from="user@example.org", source=source, variant=iprev_strict)
    assert not sent.accepted
    reply = sent.reply("eom")
    assert reply.code == code and reply.text.startswith(status), reply
    log = lab.milter_log(sent)
    assert (log["action"], log["reason"]) == (action, f"iprev_{log['iprev']}"), log["_line"]


def test_iprev_pass_is_not_refused_by_the_strict_variant(lab, iprev_strict):
    sent = lab.send(mail_from="user@example.org", source=GOOD_V4, variant=iprev_strict)
    assert delivered_ar(lab, sent).only("iprev").result == "pass"


# ------------------------------------------------------------------ SRS forwarding


@pytest.fixture
def pysrs(monkeypatch):
    guarded = pytest.importorskip("SRS.Guarded")
    # pysrs 1.0.3 still calls base64.encodestring, removed in Python 3.9; encodebytes is the same function.
    monkeypatch.setattr(base64, "encodestring", base64.encodebytes, raising=False)
    return guarded.Guarded


def _forwarded_message(original: str) -> bytes:
    """The original author's message with its DKIM signature intact (a plain forward keeps it)."""
    domain = original.split("@")[1]
    return sign(message(author=original), keys().rsa, domain=domain)


@pytest.mark.parametrize("separator, fold_case", [("=", False), ("+", False), ("-", False), ("=", True)],
                         ids=["equals", "plus", "minus", "lowercased"])
def test_srs0_forward_is_checked_against_the_forwarder(lab, pysrs, separator, fold_case):
    srs0 = pysrs(secret="fwd-secret", separator=separator).forward("alice@example.com", "fwd.example")
    assert srs0.startswith(f"SRS0{separator}") and srs0.endswith("@fwd.example")
    if fold_case:  # some MTAs fold local parts; SRS must still be recognised
        srs0 = srs0.lower()
    sent = lab.send(mail_from=srs0, source=SRS_FORWARDER_V4, data=_forwarded_message("alice@example.com"))
    ar = delivered_ar(lab, sent)
    assert ar.only("spf", smtp_mailfrom=srs0).result == "pass"
    assert "SRS0 from fwd.example for alice@example.com" in comments(ar, "spf")[0], ar.raw
    assert ar.only("dmarc").result == "pass"
    log = lab.milter_log(sent)
    assert (log["spf"], log["srs_forwarder"], log["srs_original"], log["mail_from"]) == (
        "pass", "fwd.example", "alice@example.com", srs0), log["_line"]


def test_srs1_second_hop_names_the_original_sender(lab, pysrs):
    srs0 = pysrs(secret="fwd-secret").forward("alice@example.com", "fwd.example")
    srs1 = pysrs(secret="fwd2-secret").forward(srs0, "fwd2.example")
    assert srs1.startswith("SRS1=") and "=fwd.example==" in srs1 and srs1.endswith("@fwd2.example")
    sent = lab.send(mail_from=srs1, source=SRS1_FORWARDER_V4, data=_forwarded_message("alice@example.com"))
    ar = delivered_ar(lab, sent)
    assert ar.only("spf", smtp_mailfrom=srs1).result == "pass"
    assert "SRS1 from fwd2.example for alice@example.com" in comments(ar, "spf")[0], ar.raw
    log = lab.milter_log(sent)
    assert (log["spf"], log["srs_forwarder"], log["srs_original"]) == (
        "pass", "fwd2.example", "alice@example.com"), log["_line"]


def test_srs_address_from_the_wrong_client_fails_spf_for_the_forwarder(lab, pysrs):
    """SPF is about who sends for fwd.example, not for the original domain: a stranger fails it."""
    srs0 = pysrs(secret="fwd-secret").forward("alice@example.org", "fwd.example")
    sent = lab.send(mail_from=srs0, source=STRANGER_V4)
    ar = delivered_ar(lab, sent)
    assert ar.only("spf", smtp_mailfrom=srs0).result == "fail"
    log = lab.milter_log(sent)
    assert (log["spf"], log["srs_forwarder"], log["srs_original"]) == ("fail", "fwd.example",
                                                                       "alice@example.org")


# ------------------------------------------------------------------ SRS bounces to our own addresses


@pytest.fixture(scope="module")
def srs_ours(lab):
    return lab.variant("srs_ours", {"srs": {"secrets": f"{SRS_SECRET}, older-secret",
                                            "domains": RECIPIENT_DOMAIN}})


def _bounce(lab, variant: str, rcpts: tuple[str, ...]):
    data = message(author=f"MAILER-DAEMON@{RECIPIENT_DOMAIN}", to=rcpts[-1],
                   subject="Subject: Undelivered Mail Returned to Sender")
    return lab.send(mail_from="", rcpts=rcpts, source=GOOD_V4, data=data, variant=variant)


def _srs0_with_stamp(pysrs, stamp_time: float) -> str:
    """An SRS0 address of ours written `stamp_time` (pysrs's own hash and timestamp functions)."""
    srs = pysrs(secret=SRS_SECRET)
    stamp = srs.timestamp_create(stamp_time)
    digest = srs.hash_create(stamp.encode(), b"example.org", b"bob").decode()
    return f"SRS0={digest}={stamp}=example.org=bob@{RECIPIENT_DOMAIN}"


def _rcpt_replies(sent) -> list[tuple[int, str]]:
    return [(stage.code, stage.text) for stage in sent.stages if stage.stage == "rcpt"]


def test_genuine_srs_bounce_is_accepted(lab, srs_ours, pysrs):
    genuine = pysrs(secret=SRS_SECRET).forward("bob@example.org", RECIPIENT_DOMAIN)
    sent = _bounce(lab, srs_ours, (genuine,))
    assert _rcpt_replies(sent)[0][0] == 250
    lab.delivered(sent)
    log = lab.milter_log(sent)
    assert (log["action"], log["rcpt_count"]) == ("accept", "1"), log["_line"]


@pytest.mark.parametrize("secret, fold_case", [("older-secret", False), (SRS_SECRET, True)],
                         ids=["older-secret", "lowercased-by-an-mta"])
def test_other_genuine_srs_bounces_are_accepted(lab, srs_ours, pysrs, secret, fold_case):
    """Secrets are tried newest first, then older ones (rotation); hashes compare case-insensitively because
    MTAs may fold local parts."""
    genuine = pysrs(secret=secret).forward("bob@example.org", RECIPIENT_DOMAIN)
    sent = _bounce(lab, srs_ours, (genuine.lower() if fold_case else genuine,))
    assert sent.accepted, sent.stages
    lab.delivered(sent)


@pytest.mark.parametrize("kind", ["bad-hash", "expired"])
def test_forged_srs_bounce_is_refused_for_that_recipient_only(lab, srs_ours, pysrs, kind):
    genuine = _srs0_with_stamp(pysrs, time.time())
    if kind == "bad-hash":
        digest = genuine.split("=")[1]
        forged = genuine.replace(f"={digest}=", "=" + ("AAAA" if digest != "AAAA" else "BBBB") + "=", 1)
    else:
        forged = _srs0_with_stamp(pysrs, time.time() - 40 * 86400)  # [srs] max_age_days is 21
    alone = _bounce(lab, srs_ours, (forged,))
    assert not alone.accepted
    ((code, text),) = _rcpt_replies(alone)
    assert code == 550 and text.startswith("5.7.1"), text
    assert "SRS" in text, text
    log_line = next((line for line in lab.milter_log_lines(srs_ours) if f"rcpt={forged}" in line), "")
    assert f"reason=srs_{kind.replace('-', '_')}" in log_line, lab.milter_log_lines(srs_ours)[-5:]

    # With a legitimate recipient beside it, only the forged one is refused and the message is delivered.
    mixed = _bounce(lab, srs_ours, (forged, RCPT))
    assert [code for code, _ in _rcpt_replies(mixed)] == [550, 250]
    lab.delivered(mixed)
    assert lab.milter_log(mixed)["rcpt_count"] == "1"


def test_srs_bounce_is_not_judged_without_secrets(lab, pysrs):
    """The default variant has no [srs] secrets: it cannot tell forged from genuine, so it refuses nothing."""
    forged = _srs0_with_stamp(pysrs, time.time()).replace("SRS0=", "SRS0=ZZ", 1)
    sent = _bounce(lab, "default", (forged,))
    assert sent.accepted, sent.stages


# ------------------------------------------------------------------ trusted forwarders


@pytest.fixture(scope="module")
def forwarders(lab):
    return lab.variant("forwarders", {"forwarders": {"networks": f"{TRUSTED_FORWARDER_V4}/32",
                                                     "hostnames": TRUSTED_HOST}})


def _list_forward() -> bytes:
    """alice@example.com's signed message after a mailing list appended a footer: DKIM breaks, and the list
    server is not in example.com's SPF, so DMARC fails under p=reject."""
    signed = sign(message(author="alice@example.com", body=b"Hi list.\r\n"), keys().rsa, domain="example.com",
                  canon=("relaxed", "relaxed"))
    return signed + b"--\r\nlists.fwd.example: unsubscribe at https://lists.fwd.example/\r\n"


@pytest.mark.parametrize("source, reason", [
    (TRUSTED_FORWARDER_V4, f"network {TRUSTED_FORWARDER_V4}/32"),
    (TRUSTED_HOST_V4, f"host {TRUSTED_HOST}"),
], ids=["network", "fcrdns-host"])
def test_trusted_forwarder_dmarc_fail_is_accepted_with_the_override_recorded(lab, forwarders, source, reason):
    sent = lab.send(mail_from="alice@example.com", source=source, data=_list_forward(), variant=forwarders)
    ar = delivered_ar(lab, sent)
    assert ar.only("spf", smtp_mailfrom="alice@example.com").result == "fail"
    assert ar.only("dkim", header_d="example.com").result == "fail"
    entry = ar.only("dmarc")
    assert (entry.result, entry.properties["policy.dmarc"]) == ("fail", "reject"), ar.raw
    (dmarc_comment,) = comments(ar, "dmarc")
    assert "override=trusted_forwarder" in dmarc_comment and reason in dmarc_comment, dmarc_comment
    log = lab.milter_log(sent)
    assert (log["action"], log["overridden"], log["forwarder"], log["dmarc"]) == (
        "accept", "trusted_forwarder", reason, "fail"), log["_line"]
    assert log["reason"] == "trusted_forwarder:dmarc_reject", log["_line"]


def test_trusted_forwarder_override_can_be_a_hold(lab):
    """[forwarders] dmarc_fail_action = quarantine: the DMARC reject becomes a hold, still recorded as the
    trusted_forwarder override."""
    variant = lab.variant("forwarders_hold", {"forwarders": {"networks": f"{TRUSTED_FORWARDER_V4}/32",
                                                             "dmarc_fail_action": "quarantine"}})
    sent = lab.send(mail_from="alice@example.com", source=TRUSTED_FORWARDER_V4, data=_list_forward(),
                    variant=variant)
    assert sent.accepted, sent.stages
    log = lab.milter_log(sent)
    assert (log["action"], log["overridden"], log["reason"]) == (
        "quarantine", "trusted_forwarder", "trusted_forwarder:dmarc_reject"), log["_line"]
    ar = ar_from_header_block(held(lab, sent))
    assert "override=trusted_forwarder" in comments(ar, "dmarc")[0], ar.raw


def test_the_same_forward_from_an_untrusted_client_is_refused(lab, forwarders):
    sent = lab.send(mail_from="alice@example.com", source=UNTRUSTED_V4, data=_list_forward(), variant=forwarders)
    assert not sent.accepted
    reply = sent.reply("eom")
    assert reply.code == 550 and reply.text.startswith("5.7.1") and "example.com" in reply.text, reply
    log = lab.milter_log(sent)
    assert (log["action"], log["reason"], log.get("forwarder", "")) == ("reject", "dmarc_reject", ""), log["_line"]


# ------------------------------------------------------------------ null MX


def test_null_mx_sender_is_refused(lab):
    sent = lab.send(mail_from="user@nullmx.example", source=GOOD_V4)
    assert not sent.accepted
    refusal = next(stage for stage in sent.stages if stage.code >= 400)
    assert refusal.code == 550 and refusal.text.startswith("5.7.27"), sent.stages
    assert "nullmx.example" in refusal.text
    log = lab.milter_log(sent)
    assert (log["action"], log["reason"]) == ("reject", "null_mx"), log["_line"]
