"""The values shared by the recording side and the sending side of DMARC aggregate reports (RFC 9990).

Everything here is frozen and hashable: an Observation's `row` is the key identical messages are counted under,
in memory, in the journal and in the store.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DkimAuth:
    """One evaluated DKIM signature (RFC 9990 DKIMAuthResultType)."""

    domain: str
    selector: str
    result: str  # none, pass, fail, policy, neutral, temperror, permerror


@dataclass(frozen=True, slots=True)
class SpfAuth:
    """RFC 9990 SPFAuthResultType. The scope is always "mfrom": for the null sender the domain is the HELO one."""

    domain: str
    result: str  # none, neutral, pass, fail, softfail, temperror, permerror
    scope: str = "mfrom"


@dataclass(frozen=True, slots=True)
class Override:
    """RFC 9990 PolicyOverrideReason: why the disposition differs from what the published policy asked."""

    type: str  # trusted_forwarder, policy_test_mode, local_policy, mailing_list, other ...
    comment: str = ""


@dataclass(frozen=True, slots=True)
class RowKey:
    """One RFC 9990 §3.1 record tuple: messages with identical keys are counted together."""

    source_ip: str
    disposition: str  # policy_evaluated/disposition: none, pass (DMARC pass, p=quarantine/reject), quarantine, reject
    dkim: str  # policy_evaluated/dkim (aligned DKIM): pass or fail
    spf: str  # policy_evaluated/spf (aligned SPF): pass or fail
    reasons: tuple[Override, ...]
    header_from: str
    envelope_from: str  # "" for the null sender
    envelope_to: str  # "" unless [reports] envelope_to = yes
    dkim_results: tuple[DkimAuth, ...]
    spf_results: tuple[SpfAuth, ...]
    overflow: bool = False  # the one row per policy domain and day that counts what exceeded the row cap


@dataclass(frozen=True, slots=True)
class PublishedPolicy:
    """RFC 9990 policy_published, per policy domain and day."""

    domain: str  # the domain whose record was applied
    p: str
    sp: str = ""
    np: str = ""
    adkim: str = "r"
    aspf: str = "r"
    testing: str = "n"  # "y" for t=y (and pct=0 read as t=y)
    discovery_method: str = "treewalk"  # "treewalk" or "psl"


@dataclass(frozen=True, slots=True)
class Observation:
    """What the milter thread puts on the queue: one per judged message."""

    day: str  # UTC day "YYYY-MM-DD" of the verdict
    policy_domain: str  # the From (author) domain: reports are per author domain (RFC 9990 §2.1)
    policy: PublishedPolicy
    rua: tuple[str, ...]  # the rua URIs as published (raw, sanitized)
    row: RowKey
    triggers_report: bool  # a DMARC pass, or a fail that we accepted or quarantined (rejects alone do not)
    to_report_mailbox: bool  # addressed to a report mailbox we host (never triggers a report: loops)


@dataclass(frozen=True, slots=True)
class StoredRow:
    """What the sender reads back for one policy domain and day."""

    row: RowKey
    count: int


@dataclass(frozen=True, slots=True)
class DomainDay:
    """One report to build."""

    policy_domain: str
    day: str
    policy: PublishedPolicy
    rua: tuple[str, ...]
    rows: tuple[StoredRow, ...]
    report_id: str  # alphanumeric, fixed once the report is first built (a retry reuses it)
    status: str  # pending, built, sent, failed, suppressed, no_destination
    triggered: bool = True  # some message of the day may trigger a report (see Observation.triggers_report)
