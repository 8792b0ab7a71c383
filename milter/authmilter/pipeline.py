"""Runs the checks in their declared order and returns one frozen Results.

CONTRACT: `Results` (names below) is read by policy.py, arheader.py and logline.py; `evaluate()` is called by the
adapter and the `check` command.
"""

from __future__ import annotations

from dataclasses import dataclass

from authmilter.checks.dkim import DkimResult
from authmilter.checks.dmarc import DmarcResult
from authmilter.checks.iprev import IprevResult
from authmilter.checks.sender import SenderDomainResult
from authmilter.checks.spf import SpfResult
from authmilter.checks.srs import SrsInfo
from authmilter.results import Dnssec


@dataclass(frozen=True, slots=True)
class Results:
    skipped: str = ""                       # "trusted_network" or "authenticated": no check ran
    iprev: IprevResult | None = None
    srs: SrsInfo | None = None
    spf: SpfResult | None = None
    sender: SenderDomainResult | None = None
    dkim: DkimResult | None = None
    dmarc: DmarcResult | None = None
    forwarder: str = ""                     # why the client is a trusted forwarder ("" when it is not)
    dns_queries: int = 0
    dns_deadline_expired: bool = False
    dnssec: Dnssec = Dnssec.INDETERMINATE   # weakest status over every check's lookups
