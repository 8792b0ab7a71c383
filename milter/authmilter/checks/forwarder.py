"""Trusted forwarders: clients whose forwarded mail may fail SPF (and DMARC) for reasons that are not forgery.

A client is a trusted forwarder when its IP is in [forwarders] networks, or when iprev CONFIRMED a name that is
in [forwarders] hostnames (exactly, or under a ".suffix" entry). Only the forward-confirmed name counts: a PTR
record alone, or the HELO name, is whatever the client's owner wants it to be.
"""

from __future__ import annotations

from authmilter.checks.iprev import IprevResult
from authmilter.config import ForwardersSection
from authmilter.context import Connection, unmapped
from authmilter.results import Status


def match_forwarder(conn: Connection, iprev: IprevResult | None, cfg: ForwardersSection) -> str:
    """A short reason ("network 192.0.2.0/24", "host lists.example.edu"), or "" when not a trusted forwarder."""
    ip = unmapped(conn.client_ip)  # a v4 client on a v6 socket must still match a v4 network
    if ip is not None:
        for network in cfg.networks:
            if ip.version == network.version and ip in network:
                return f"network {network}"
    if iprev is None or iprev.status is not Status.PASS or not iprev.confirmed_name:
        return ""
    name = iprev.confirmed_name.rstrip(".").lower()
    for entry in cfg.hostnames:
        wanted = entry.strip().rstrip(".").lower()
        if not wanted or wanted == ".":
            continue
        # ".example.edu" means hosts under example.edu, not example.edu itself (as in Postfix's ".domain").
        if (wanted.startswith(".") and name.endswith(wanted)) or name == wanted:
            return f"host {name}"
    return ""
