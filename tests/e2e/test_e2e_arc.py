"""ARC end to end (issue 14): a list-forwarded message sealed with dkimpy's arc_sign by lists.fwd.example (key in
the lab zone, authzones.py), through Postfix, to a milter with [arc] enabled and that sealer trusted. The author's
domain example.com publishes p=reject; the list's subject tag and footer break the author's DKIM signature."""

from __future__ import annotations

import pytest

from testlab.authzones import keys
from testlab.zonedata import STRANGER_V4
from tests import arc_support
from tests.e2e.signing import message, our_ar, sign

pytestmark = pytest.mark.e2e

SEALER = "lists.fwd.example"
RECORDED = "dkim=pass header.d=example.com; dmarc=pass header.from=example.com; " \
           "iprev=pass smtp.remote-ip=192.0.2.1"


@pytest.fixture(scope="module")
def arc_variant(lab):
    return lab.variant("arc_trusted", {"arc": {"enabled": "yes", "trusted_sealers": SEALER}})


def list_mail() -> bytes:
    signed = sign(message(author="a@example.com"), keys().rsa, domain="example.com")
    return arc_support.seal(signed, SEALER, RECORDED, private_key=keys().rsa.private)


def send(lab, data: bytes, variant: str):
    # From an address no SPF record names, with the author's MAIL FROM: SPF fails, DKIM broke, DMARC fails.
    return lab.send(mail_from="a@example.com", source=STRANGER_V4, data=data, variant=variant)


def test_a_trusted_sealer_overrides_dmarc_reject(lab, arc_variant):
    data = list_mail()
    sent = send(lab, data, arc_variant)
    assert sent.accepted, "; ".join(map(str, sent.stages))
    ar = our_ar(lab.delivered(sent))
    assert ar.only("arc").result == "pass", ar.raw
    assert ar.only("arc").properties["smtp.remote-ip"] == STRANGER_V4
    assert ar.only("dmarc").result == "fail"
    assert f"override=local_policy arc=pass as[1].d={SEALER} remote-ip[1]=192.0.2.1" in " ".join(ar.raw.split())
    log = lab.milter_log(sent)
    assert (log["arc"], log["arc_d"], log["action"], log["reason"], log["overridden"]) == (
        "pass", SEALER, "accept", "trusted_arc_sealer:dmarc_reject", "local_policy")
    # The same message to the default milter (ARC off): DMARC's reject stands.
    refused = send(lab, data, "default")
    assert not refused.accepted and refused.reply("eom").code == 550


def test_a_broken_chain_is_refused(lab, arc_variant):
    data = list_mail().replace(b"list footer", b"list footer, edited after sealing")
    sent = send(lab, data, arc_variant)
    assert not sent.accepted
    reply = sent.reply("eom")
    assert reply.code == 550 and reply.text.startswith("5.7.1"), reply
    log = lab.milter_log(sent)
    assert (log["arc"], log["reason"]) == ("fail", "dmarc_reject")
    assert not lab.is_delivered(sent)
