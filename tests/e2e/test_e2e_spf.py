"""SPF end to end: real Postfix, real DNS (NSD behind a validating Unbound), the real milter (issue 2's cover list).

Every test sends over SMTP from an address on the lab namespace's lo, reads the delivered message (or the SMTP
reply), parses our Authentication-Results header back with authres and checks the milter's log line for that
queue id. Zone data: testlab/zonedata.py.
"""

from __future__ import annotations

import pytest

from tests.e2e.headers import parse_ar
from testlab.zonedata import (GOOD_HELO, GOOD_V4, GOOD_V6, MX_NAME, RECIPIENT_DOMAIN, STRANGER_V4,
                                STRANGER_V6)

pytestmark = pytest.mark.e2e

RCPT = f"user@{RECIPIENT_DOMAIN}"


def our_ar(message):
    """Our header: exactly one Authentication-Results with our authserv-id, and it is above Postfix's Received."""
    ours = [(index, value) for index, (name, value) in enumerate(message.headers)
            if name.lower() == "authentication-results" and parse_ar(value).authserv_id.lower() == MX_NAME]
    assert len(ours) == 1, f"expected one A-R for {MX_NAME}: {message.headers}"
    index, value = ours[0]
    received = [i for i, (name, _) in enumerate(message.headers) if name.lower() == "received"]
    assert received and index < received[0], "our A-R must be inserted at the top, above Received"
    return parse_ar(value)


def deliver(lab, **send):
    sent = lab.send(**send)
    assert sent.accepted, "; ".join(map(str, sent.stages))
    return sent, lab.delivered(sent)


# ------------------------------------------------------------------ the seven results

@pytest.mark.parametrize("mail_from, source, expected", [
    ("user@example.org", GOOD_V4, "pass"),
    ("user@example.org", STRANGER_V4, "fail"),
    ("user@softfail.example.org", STRANGER_V4, "softfail"),
    ("user@neutral.example.org", STRANGER_V4, "neutral"),
    ("user@nospf.example.org", STRANGER_V4, "none"),
    ("user@syntax.example.org", STRANGER_V4, "permerror"),    # unknown mechanism
    ("user@toomany.example.org", STRANGER_V4, "permerror"),   # 11 DNS mechanisms: RFC 7208 §4.6.4
    ("user@unreachable.test", GOOD_V4, "temperror"),          # its name servers do not answer
    ("user@bogus.test", GOOD_V4, "temperror"),                # DNSSEC validation fails: SERVFAIL
    ("user@expired.test", GOOD_V4, "temperror"),              # expired signatures: SERVFAIL
])
def test_mailfrom_result_reaches_header_and_log(lab, mail_from, source, expected):
    sent, message = deliver(lab, mail_from=mail_from, source=source)
    ar = our_ar(message)
    entry = ar.only("spf", smtp_mailfrom=mail_from)
    assert entry.result == expected
    # The default policy records every SPF result and lets DMARC decide: nothing here is refused.
    log = lab.milter_log(sent)
    assert (log["spf"], log["mail_from"], log["client_ip"], log["action"]) == (expected, mail_from, source,
                                                                              "accept")
    received_spf = message.get_all("Received-SPF")
    assert len(received_spf) == 1 and received_spf[0].split()[0] == expected


def test_pass_header_names_both_identities_and_the_sender(lab):
    sent, message = deliver(lab, mail_from="user@example.org", source=GOOD_V4, helo=GOOD_HELO)
    ar = our_ar(message)
    assert ar.only("spf", smtp_mailfrom="user@example.org").result == "pass"
    assert ar.only("spf", smtp_helo=GOOD_HELO).result == "pass"
    assert "spf=pass (dnssec=insecure) smtp.mailfrom=user@example.org" in ar.raw
    received_spf = message.get_all("Received-SPF")[0]
    assert f"client-ip={GOOD_V4};" in received_spf and "identity=mailfrom" in received_spf
    log = lab.milter_log(sent)
    assert (log["spf_helo"], log["helo"], log["queue_id"]) == ("pass", GOOD_HELO, sent.queue_id)


# ------------------------------------------------------------------ null sender, IPv6

@pytest.mark.parametrize("helo, source, expected", [
    (GOOD_HELO, GOOD_V4, "pass"),
    ("badhelo.example.org", STRANGER_V4, "fail"),
])
def test_null_sender_is_checked_as_postmaster_at_helo(lab, helo, source, expected):
    sent, message = deliver(lab, mail_from="", source=source, helo=helo)
    ar = our_ar(message)
    # RFC 7208 §2.4: with an empty reverse-path the MAIL FROM identity is postmaster@HELO.
    assert ar.only("spf", smtp_mailfrom=f"postmaster@{helo}").result == expected
    assert ar.only("spf", smtp_helo=helo).result == expected
    assert message.get_all("Return-Path") == ["<>"]
    log = lab.milter_log(sent)
    assert (log["mail_from"], log["spf"], log["action"]) == ("<>", expected, "accept")


@pytest.mark.parametrize("source, expected", [(GOOD_V6, "pass"), (STRANGER_V6, "fail")])
def test_ipv6_client(lab, source, expected):
    sent, message = deliver(lab, mail_from="user@example.org", source=source, helo="mail6.example.org")
    ar = our_ar(message)
    assert ar.only("spf", smtp_mailfrom="user@example.org").result == expected
    assert f"client-ip={source}" in message.get_all("Received-SPF")[0].replace('"', "")
    log = lab.milter_log(sent)
    assert (log["client_ip"], log["spf"]) == (source, expected)


# ------------------------------------------------------------------ DNSSEC status

@pytest.mark.parametrize("domain, dnssec", [
    ("secure.test", "secure"),      # signed, validated from the test. trust anchor: AD
    ("insecure.test", "insecure"),  # insecure delegation from a signed parent
    ("example.org", "insecure"),    # outside every trust anchor
])
def test_dnssec_status_is_in_the_header_and_log(lab, domain, dnssec):
    sent, message = deliver(lab, mail_from=f"user@{domain}", source=GOOD_V4)
    ar = our_ar(message)
    assert ar.only("spf", smtp_mailfrom=f"user@{domain}").result == "pass"
    assert f"spf=pass (dnssec={dnssec}) smtp.mailfrom=user@{domain}" in ar.raw
    assert lab.milter_log(sent)["spf_dnssec"] == dnssec


# ------------------------------------------------------------------ Authentication-Results hygiene

@pytest.mark.parametrize("forged", [
    f"{MX_NAME}; spf=pass smtp.mailfrom=user@example.org",
    "MX.Example.NET; spf=pass smtp.mailfrom=user@example.org",                 # case
    f"(looks harmless) {MX_NAME} (really) ; spf=pass smtp.mailfrom=a@b",      # comments
    f"  {MX_NAME}  ;\r\n\tspf=pass\r\n\tsmtp.mailfrom=user@example.org",      # folding, extra spaces
    f"{MX_NAME} 1; spf=pass smtp.mailfrom=user@example.org",                  # with a version
])
def test_forged_header_with_our_authserv_id_is_removed(lab, forged):
    sent, message = deliver(lab, mail_from="user@example.org", source=STRANGER_V4,
                            headers=[("Authentication-Results", forged)])
    values = message.get_all("Authentication-Results")
    assert len(values) == 1, values                      # ours only: the forged one is gone
    ar = our_ar(message)
    assert ar.only("spf", smtp_mailfrom="user@example.org").result == "fail"
    assert lab.milter_log(sent)["spf"] == "fail"


def test_header_of_another_authserv_id_is_kept(lab):
    theirs = "relay.example.com; spf=pass smtp.mailfrom=user@example.org"
    sent, message = deliver(lab, mail_from="user@example.org", source=STRANGER_V4,
                            headers=[("Authentication-Results", theirs)])
    values = message.get_all("Authentication-Results")
    assert theirs in values and len(values) == 2
    assert our_ar(message).only("spf", smtp_mailfrom="user@example.org").result == "fail"
    assert lab.milter_log(sent)["spf"] == "fail"


def test_fleet_members_headers_are_removed_too(lab):
    # An MX fleet lists its members' ids in [milter] remove_authserv_ids; forged headers claiming any are removed.
    variant = lab.variant("fleet", {"milter": {"remove_authserv_ids": "mx2.example.net, mx3.example.net"}})
    kept = "relay.example.com; spf=pass smtp.mailfrom=user@example.org"
    sent, message = deliver(lab, mail_from="user@example.org", source=STRANGER_V4, variant=variant,
                            headers=[("Authentication-Results", "MX2.example.net; spf=pass smtp.mailfrom=a@b"),
                                     ("Authentication-Results", kept),
                                     ("Authentication-Results", "mx3.example.net; dmarc=pass header.from=b")])
    values = message.get_all("Authentication-Results")
    assert len(values) == 2 and kept in values, values
    assert our_ar(message).only("spf", smtp_mailfrom="user@example.org").result == "fail"
    assert lab.milter_log(sent)["spf"] == "fail"


# ------------------------------------------------------------------ injection through MAIL FROM and HELO

EXPECTED_METHODS = ["iprev", "spf", "spf", "dkim", "dmarc"]


@pytest.mark.parametrize("mail_from", [
    '"a;spf=pass"@example.org',
    '"x) spf=pass (y"@example.org',
    '"q\\"; dkim=pass header.d=example.org"@example.org',
])
def test_mail_from_cannot_change_the_header_structure(lab, mail_from):
    sent = lab.send(mail_from=mail_from, source=STRANGER_V4, author="user@example.org")
    mail_reply = sent.reply("mail")
    if mail_reply.code != 250:  # Postfix refused the address itself: nothing reached the milter
        assert mail_reply.code >= 500 and not sent.accepted
        return
    message = lab.delivered(sent)
    ar = our_ar(message)
    assert ar.methods() == EXPECTED_METHODS, ar.raw
    # The address comes back intact, as one quoted value, and its result is example.org's -all.
    assert ar.only("spf", smtp_mailfrom=mail_from).result == "fail", ar.raw
    assert [entry.result for entry in ar.entries if entry.method == "dkim"] == ["none"]
    log = lab.milter_log(sent)
    assert (log["spf"], log["mail_from"]) == ("fail", mail_from)


@pytest.mark.parametrize("helo", [
    "evil;spf=pass",
    "evil(spf=pass)",
    'evil"x";spf=pass',
    "two words; spf=pass",
])
def test_helo_cannot_change_the_header_structure(lab, helo):
    sent = lab.send(mail_from="user@example.org", source=STRANGER_V4, helo=helo)
    helo_reply = sent.reply("helo")
    if helo_reply.code != 250:
        assert helo_reply.code >= 500 and not sent.accepted
        return
    message = lab.delivered(sent)
    ar = our_ar(message)
    assert ar.methods() == EXPECTED_METHODS, ar.raw
    assert ar.only("spf", smtp_mailfrom="user@example.org").result == "fail"
    helo_entry = ar.only("spf", smtp_helo=helo)  # intact, as one quoted value
    assert helo_entry.result == "none", ar.raw   # not a domain name: nothing to check (RFC 7208 §2.3)
    log = lab.milter_log(sent)
    assert (log["helo"], log["spf"]) == (helo, "fail")


# ------------------------------------------------------------------ rejecting

def test_fail_is_rejected_with_5_7_23_when_configured(lab):
    sent = lab.send(mail_from="user@example.org", source=STRANGER_V4, variant="spf_reject")
    assert not sent.accepted
    reply = sent.reply("eom")
    assert reply.code == 550 and reply.text.startswith("5.7.23"), reply
    # The domain's exp= text, expanded (RFC 7208 §6.2), is shown: it is safe after sanitizing.
    assert f"{STRANGER_V4} is not allowed to send mail for example.org" in reply.text
    log = lab.milter_log(sent)
    assert (log["spf"], log["action"], log["reply"]) == ("fail", "reject", "550 5.7.23")
    queue_id = lab.queue_id(sent)
    assert any("milter-reject: END-OF-MESSAGE" in line for line in lab.maillog(queue_id))
    assert not lab.is_delivered(sent)


def test_reject_policy_still_delivers_a_pass(lab):
    sent, message = deliver(lab, mail_from="user@example.org", source=GOOD_V4, variant="spf_reject")
    assert our_ar(message).only("spf", smtp_mailfrom="user@example.org").result == "pass"
    assert lab.milter_log(sent)["action"] == "accept"


def test_postmaster_is_never_rejected(lab):
    # RFC 5321 §4.5.1: postmaster must stay reachable, even for mail a policy would refuse; it is still labelled.
    sent, message = deliver(lab, mail_from="user@example.org", source=STRANGER_V4, variant="spf_reject",
                            rcpts=(f"postmaster@{RECIPIENT_DOMAIN}",))
    assert our_ar(message).only("spf", smtp_mailfrom="user@example.org").result == "fail"
    assert lab.milter_log(sent)["spf"] == "fail"


def test_a_header_field_over_64_kb_does_not_stall_the_message(lab):
    """libmilter drops a connection on any command over 64 KB. Through Postfix (default header_size_limit) such a
    field arrives trimmed below that, so the message is still judged and delivered, never stalled by
    milter_default_action."""
    sent, message = deliver(lab, mail_from="user@example.org", source=GOOD_V4,
                            headers=[("X-Huge", "x" * 80_000)])
    assert our_ar(message).only("spf", smtp_mailfrom="user@example.org").result == "pass"
    assert lab.milter_log(sent)["action"] == "accept"
