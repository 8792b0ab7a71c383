"""Issue 14's spoofs through the real Postfix: a validly signed message with a second Subject on top, and one with
content appended after its signature's l=. Each is sent over SMTP from an address no SPF record designates, so
only the DKIM signature could make DMARC pass; the reply, the delivered mailbox and the milter's log line say what
happened. The default milter refuses or does not align them; the "spoofs_accept" variant shows the two settings
that let them through (recorded), and the legitimate controls pass on the default milter.

Zones: authzones.py (example.com: DMARC p=reject, the lab RSA key; signer.example: the key, no DMARC record).
"""

from __future__ import annotations

import pytest
from dkim.canonicalization import CanonicalizationPolicy

from testlab.authzones import DKIM_DOMAIN, keys
from testlab.zonedata import STRANGER_V4
from tests.e2e.signing import comments, header_fields, message, our_ar, sign

pytestmark = pytest.mark.e2e

ACCEPT_VARIANT = "spoofs_accept"
ACCEPTING = {"policy": {"duplicate_headers_action": "accept"}, "dkim": {"accept_partial_body": "yes"}}
BODY = b"Dear Bob,\r\n\r\nthe quarterly figures are attached.\r\n\r\nAlice\r\n"
APPENDED = b"\r\nP.S. Our bank details have changed: please pay IBAN XX00 0000 0000.\r\n"
SPOOFED_SUBJECT = b"Subject: Urgent: our bank details have changed\r\n"


def signed(domain: str = "example.com", *, whole_body_l: bool = False) -> bytes:
    data = message(author=f"alice@{domain}", subject="Subject: Quarterly figures", body=BODY)
    length = None
    if whole_body_l:
        # A signer that puts l= on its own whole body: legitimate until someone appends.
        relaxed = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
        length = len(relaxed.canonicalize_body(BODY))
    return sign(data, keys().rsa, domain=domain, length=length)


def send(lab, data: bytes, domain: str = "example.com", variant: str = "default"):
    return lab.send(mail_from=f"alice@{domain}", source=STRANGER_V4, data=data, variant=variant)


def accepting(lab) -> str:
    return lab.variant(ACCEPT_VARIANT, ACCEPTING)


def results(ar) -> dict[str, str]:
    return {entry.method: entry.result for entry in ar.entries if entry.method in ("dkim", "dmarc")}


def assert_refused(lab, sent, words: str) -> None:
    assert not sent.accepted, "the message was accepted"
    reply = sent.reply("eom")
    assert reply.code == 550 and reply.text.startswith("5.7.1"), reply
    assert words in reply.text, reply
    assert not lab.is_delivered(sent)


# ---------------------------------------------------------------- a second Subject on top


def test_extra_subject_on_signed_mail_is_refused_naming_it(lab):
    sent = send(lab, SPOOFED_SUBJECT + signed())
    assert_refused(lab, sent, "multiple Subject headers")
    log = lab.milter_log(sent)
    assert (log["dkim"], log["duplicate_headers"], log["reason"]) == ("pass", "subject", "duplicate_headers"), \
        log["_line"]


def test_extra_subject_accepted_and_recorded_when_configured(lab):
    sent = send(lab, SPOOFED_SUBJECT + signed(), variant=accepting(lab))
    assert sent.accepted, "; ".join(map(str, sent.stages))
    delivered = lab.delivered(sent)
    ar = our_ar(delivered)
    # The signature still verifies on the lower Subject: the verdict is unchanged, the header says what is odd.
    assert results(ar) == {"dkim": "pass", "dmarc": "pass"}, ar.raw
    assert "multiple Subject headers" in comments(ar, "dmarc")[0], ar.raw
    subjects = [value.strip() for name, value in header_fields(delivered.raw) if name.lower() == "subject"]
    assert subjects == ["Urgent: our bank details have changed", "Quarterly figures"]
    log = lab.milter_log(sent)
    assert (log["duplicate_headers"], log["action"]) == ("subject", "accept"), log["_line"]


def test_single_subject_control_passes(lab):
    sent = send(lab, signed())
    assert sent.accepted, "; ".join(map(str, sent.stages))
    ar = our_ar(lab.delivered(sent))
    assert results(ar) == {"dkim": "pass", "dmarc": "pass"}, ar.raw
    assert "duplicate_headers" not in lab.milter_log(sent)


# ---------------------------------------------------------------- content after l=


def test_content_after_l_does_not_make_dmarc_pass(lab):
    sent = send(lab, signed(whole_body_l=True) + APPENDED)
    assert_refused(lab, sent, "example.com")   # DMARC p=reject: the only signature no longer counts
    log = lab.milter_log(sent)
    assert (log["dkim"], log["dmarc"], log["reason"]) == ("policy", "fail", "dmarc_reject"), log["_line"]


def test_content_after_l_is_dkim_policy_in_the_header(lab):
    sent = send(lab, signed(DKIM_DOMAIN, whole_body_l=True) + APPENDED, DKIM_DOMAIN)
    assert sent.accepted, "; ".join(map(str, sent.stages))
    ar = our_ar(lab.delivered(sent))
    assert results(ar)["dkim"] == "policy", ar.raw
    assert comments(ar, "dkim")[0].startswith("unsigned content after l="), ar.raw


def test_content_after_l_passes_when_configured(lab):
    sent = send(lab, signed(whole_body_l=True) + APPENDED, variant=accepting(lab))
    assert sent.accepted, "; ".join(map(str, sent.stages))
    ar = our_ar(lab.delivered(sent))
    assert results(ar) == {"dkim": "pass", "dmarc": "pass"}, ar.raw


def test_l_covering_the_whole_body_control_passes(lab):
    sent = send(lab, signed(whole_body_l=True))
    assert sent.accepted, "; ".join(map(str, sent.stages))
    ar = our_ar(lab.delivered(sent))
    assert results(ar) == {"dkim": "pass", "dmarc": "pass"}, ar.raw
