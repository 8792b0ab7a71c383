"""Trusted forwarders: by network, or by an iprev-confirmed host name (never the bare PTR or the HELO)."""

from __future__ import annotations

import ipaddress

import pytest

from authmilter.checks.forwarder import match_forwarder
from authmilter.checks.iprev import IprevResult, check_iprev
from authmilter.config import ForwardersSection, IprevSection, parse_config_text
from authmilter.context import Connection
from authmilter.results import Status
from testlab.fakedns import FakeDns

CFG = parse_config_text(
    "[forwarders]\n"
    "networks = 192.0.2.0/24, 2001:db8:f::/48\n"
    "hostnames = Lists.Example.EDU., .relay.example.net\n",
    "test.ini").forwarders


def conn(ip: str | None, helo: str = "") -> Connection:
    return Connection(ipaddress.ip_address(ip) if ip else None, helo=helo)


def confirmed(name: str, ip: str = "198.51.100.5") -> IprevResult:
    return IprevResult(Status.PASS, ip, confirmed_name=name)


@pytest.mark.parametrize("ip, iprev, expected", [
    ("192.0.2.77", None, "network 192.0.2.0/24"),
    ("::ffff:192.0.2.77", None, "network 192.0.2.0/24"),
    ("2001:db8:f:1::25", None, "network 2001:db8:f::/48"),
    ("198.51.100.5", confirmed("lists.example.edu"), "host lists.example.edu"),
    ("198.51.100.5", confirmed("LISTS.example.edu."), "host lists.example.edu"),
    ("198.51.100.5", confirmed("mx1.relay.example.net"), "host mx1.relay.example.net"),
    ("198.51.100.5", confirmed("a.b.relay.example.net"), "host a.b.relay.example.net"),
    # a ".suffix" entry covers the hosts under it, not the name itself
    ("198.51.100.5", confirmed("relay.example.net"), ""),
    ("198.51.100.5", confirmed("evilrelay.example.net"), ""),
    ("198.51.100.5", confirmed("lists.example.edu.evil.example"), ""),
    ("198.51.100.5", confirmed("xlists.example.edu"), ""),
    # only a forward-confirmed name counts
    ("198.51.100.5", IprevResult(Status.FAIL, "198.51.100.5", ptr_names=("lists.example.edu",),
                                 reason="1 PTR name not resolving to 198.51.100.5"), ""),
    ("198.51.100.5", IprevResult(Status.TEMPERROR, "198.51.100.5", reason="PTR lookup: timeout"), ""),
    ("198.51.100.5", IprevResult(Status.PERMERROR, "198.51.100.5", reason="no PTR record"), ""),
    ("198.51.100.5", None, ""),
    (None, None, ""),
    ("2001:db8:e::1", None, ""),
])
def test_match_forwarder(ip, iprev, expected):
    assert match_forwarder(conn(ip), iprev, CFG) == expected


def test_helo_name_is_never_trusted():
    assert match_forwarder(conn("198.51.100.5", helo="lists.example.edu"), None, CFG) == ""


def test_empty_config_trusts_nobody():
    assert match_forwarder(conn("192.0.2.77"), confirmed("lists.example.edu"), ForwardersSection()) == ""


def _iprev(zone: dict) -> IprevResult:
    return check_iprev(conn("198.51.100.5"), FakeDns(zone), IprevSection())


def test_with_real_iprev_a_confirmed_ptr_matches():
    zone = {"5.100.51.198.in-addr.arpa": {"PTR": ["lists.example.edu"]},
            "lists.example.edu": {"A": ["198.51.100.5"]}}
    assert match_forwarder(conn("198.51.100.5"), _iprev(zone), CFG) == "host lists.example.edu"


def test_with_real_iprev_a_claimed_but_unconfirmed_ptr_does_not():
    # Anyone controlling 198.51.100.5's reverse zone can claim lists.example.edu; its A record says otherwise.
    zone = {"5.100.51.198.in-addr.arpa": {"PTR": ["lists.example.edu"]},
            "lists.example.edu": {"A": ["203.0.113.9"]}}
    iprev = _iprev(zone)
    assert iprev.status is Status.FAIL
    assert match_forwarder(conn("198.51.100.5"), iprev, CFG) == ""
