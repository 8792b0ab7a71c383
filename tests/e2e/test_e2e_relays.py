"""[trust] relays end to end, through the real Postfix, NSD and Unbound: a relay of ours (an address on the lab's
interface, listed in [trust] relays) hands over mail whose Received header records an outside client, and SPF,
iprev and DMARC's SPF part judge that client, never the relay.

The lab's IPv4 sources are loopback addresses, which the relay walk treats as hops of ours (a relay re-injecting to
itself), so the recorded outside client is the lab's IPv6 source GOOD_V6 (FCrDNS mail6.example.org, the only
address relayed.example.org's SPF record designates; its DMARC policy is p=reject). The relay is STRANGER_V4:
designated by nobody, without PTR, so any fallback to it would show as spf=fail and iprev=permerror for it.
"""

from __future__ import annotations

import pytest

from tests.e2e.signing import comments, our_ar
from testlab.zonedata import GOOD_V6, STRANGER_V4

pytestmark = pytest.mark.e2e

RELAY = STRANGER_V4
SENDER = "user@relayed.example.org"


@pytest.fixture(scope="module")
def relays(lab):
    return lab.variant("relays", {"trust": {"networks": "", "relays": RELAY}})


def relay_received(recorded: str) -> tuple[str, str]:
    # What the relay wrote when it received the mail from outside (Postfix's form, folded as Postfix folds).
    return ("Received", f"{recorded}\r\n\tby gw.relay.test (Postfix) with ESMTP id 4QRELAY;"
                        f" Sat, 5 Dec 2026 14:00:00 +0000 (UTC)")


def test_spf_iprev_and_dmarc_judge_the_client_the_relay_recorded(lab, relays):
    sent = lab.send(mail_from=SENDER, source=RELAY, helo="gw.relay.test", variant=relays,
                    headers=[relay_received(f"from mail6.example.org (mail6.example.org [IPv6:{GOOD_V6}])")])
    delivered = lab.delivered(sent)
    ar = our_ar(delivered)
    assert ar.only("spf", smtp_mailfrom=SENDER).result == "pass", ar.raw
    assert ar.only("spf", smtp_helo="mail6.example.org").result == "pass", ar.raw
    assert f"recorded by relay {RELAY}" in comments(ar, "spf")[0], ar.raw
    iprev = ar.only("iprev")
    assert (iprev.result, iprev.properties["policy.iprev"]) == ("pass", GOOD_V6), ar.raw
    assert ar.only("dmarc").result == "pass", ar.raw   # through SPF alone: the message is not signed
    log = lab.milter_log(sent)
    assert (log["client_ip"], log["helo"], log["relay"]) == (GOOD_V6, "mail6.example.org", RELAY), log["_line"]
    assert (log["spf"], log["iprev"], log["dmarc"]) == ("pass", "pass", "pass"), log["_line"]


def test_an_unreadable_record_is_reported_and_the_relay_is_never_judged(lab, relays):
    # A HELO name that carried its own "(name [address])": two client addresses, so nothing is judged; with no
    # SPF pass and no signature, DMARC's p=reject refuses the message.
    sent = lab.send(mail_from=SENDER, source=RELAY, helo="gw.relay.test", variant=relays,
                    headers=[relay_received(f"from x (y [IPv6:{GOOD_V6}]) (unknown [198.51.100.66])")])
    assert not sent.accepted and sent.reply("eom").code == 550, sent.stages
    log = lab.milter_log(sent)
    assert (log["client_ip"], log["helo"], log["relay"]) == ("-", "-", RELAY), log["_line"]
    assert "more than one client address" in log["relay_problem"], log["_line"]
    assert (log["spf"], log["iprev"], log["dmarc"], log["reason"]) == \
        ("none", "permerror", "fail", "dmarc_reject"), log["_line"]
    assert "more than one client address" in log["iprev_reason"], log["_line"]
    assert not lab.is_delivered(sent)
