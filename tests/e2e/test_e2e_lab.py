"""The lab itself: DNS answers secure, insecure and bogus as designed, and Postfix delivers without a milter.

If these fail, every other end-to-end result is meaningless, so they say what is wrong with the lab.
"""

from __future__ import annotations

import re

import pytest

from testlab.zonedata import GOOD_V4, GOOD_V6, LONG_TXT, RECIPIENT_DOMAIN, STRANGER_V4

pytestmark = pytest.mark.e2e


def _flags(dig_output: str) -> set[str]:
    for line in dig_output.splitlines():
        if line.startswith(";; flags:"):
            return set(line.split(";")[2].split(":", 1)[1].split())
    raise AssertionError(f"no flags in dig output:\n{dig_output}")


def _status(dig_output: str) -> str:
    for line in dig_output.splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    raise AssertionError(f"no status in dig output:\n{dig_output}")


@pytest.mark.parametrize("name, status, authentic", [
    ("secure.test", "NOERROR", True),         # signed, chain of trust from the test. anchor
    ("nx.secure.test", "NXDOMAIN", True),     # authenticated denial
    ("insecure.test", "NOERROR", False),      # insecure delegation from the signed parent
    ("example.org", "NOERROR", False),        # outside every trust anchor
    ("bogus.test", "SERVFAIL", False),        # DS matches no key: validation fails
    ("expired.test", "SERVFAIL", False),      # expired signatures
    ("unreachable.test", "SERVFAIL", False),  # nobody answers for it
])
def test_unbound_validates_as_designed(lab, name, status, authentic):
    output = lab.dig(name, "TXT")
    assert _status(output) == status, output
    assert ("ad" in _flags(output)) is authentic, output


def test_reverse_zones_answer_for_both_families(lab):
    assert "mail.example.org." in lab.dig("10.0.0.127.in-addr.arpa", "PTR")
    assert "mail6.example.org." in lab.dig(
        "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "PTR")


@pytest.mark.parametrize("source", [GOOD_V4, GOOD_V6])
def test_postfix_delivers_without_a_milter(lab, source):
    sent = lab.send(mail_from="user@example.org", source=source, variant="")
    assert sent.accepted, sent.stages
    message = lab.delivered(sent)
    received = message.get_all("Received")[0]
    assert source in received
    assert "Authentication-Results" not in dict(message.headers)
    assert message.get_all("To") == [f"<user@{RECIPIENT_DOMAIN}>"]


def test_long_txt_records_are_split_into_character_strings(lab):
    output = lab.dig("longtxt.example.org", "TXT", dnssec=False)
    record = next(line for line in output.splitlines() if "\tTXT\t" in line)
    strings = re.findall(r'"([^"]*)"', record)
    assert len(strings) == 3 and "".join(strings) == LONG_TXT


def test_a_variant_started_later_gets_its_own_port_and_policy(lab):
    # Monitor mode: a policy that would reject only records. The shared variants are unaffected.
    name = lab.variant("lab_monitor", {"policy": {"enforce": "no"}, "spf": {"fail_action": "reject"}})
    sent = lab.send(mail_from="user@example.org", source=STRANGER_V4, variant=name)
    assert sent.accepted, sent.stages
    values = lab.delivered(sent).get_all("Authentication-Results")
    assert len(values) == 1 and "spf=fail" in values[0]
    assert lab.milter_log(sent)["spf"] == "fail"
    assert lab.milter_port(name) not in (lab.milter_port("default"), lab.milter_port("spf_reject"))
