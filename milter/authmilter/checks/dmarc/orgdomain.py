"""Policy discovery and Organizational Domains, by the RFC 9989 DNS Tree Walk (default) or the Public Suffix List.

Both methods sit behind discover() and organizational_domain(), so DMARC swaps them with one config key. All
lookups go through one PolicyLookups per message: each _dmarc name is asked once however many identifiers walk
past it, and the DNSSEC status and any temporary failure are remembered for the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from authmilter.checks.dmarc.record import DmarcRecord, Psd, RecordSet, select_record
from authmilter.config import OrgDomainMethod
from authmilter.errors import AuthmilterError
from authmilter.resolver import DnsClient, Outcome
from authmilter.results import Dnssec, weakest

WALK_LABEL_LIMIT = 8  # RFC 9989 §4.10 step 5: longer names jump straight to their last 7 labels


class TemporaryFailure(AuthmilterError):
    """Internal: a lookup that matters failed temporarily; DMARC maps it to temperror. Never escapes dmarc.py."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{detail} looking up {name}")
        self.name = name


@dataclass(slots=True)
class PolicyLookups:
    """The _dmarc TXT lookups of one message (mutable by design: it is a per-call memo, never shared)."""

    dns: DnsClient
    seen: dict[str, RecordSet | TemporaryFailure] = field(default_factory=dict)
    dnssec: list[Dnssec] = field(default_factory=list)

    def records_at(self, domain: str) -> RecordSet:
        """The DMARC record set at _dmarc.<domain>; raises TemporaryFailure on SERVFAIL/timeout/error."""
        if domain not in self.seen:
            self.seen[domain] = self._lookup(domain)
        found = self.seen[domain]
        if isinstance(found, TemporaryFailure):
            raise found
        return found

    def _lookup(self, domain: str) -> RecordSet | TemporaryFailure:
        name = f"_dmarc.{domain}"
        answer = self.dns.query(name, "TXT")
        if answer.outcome is not Outcome.INVALID_NAME:
            self.dnssec.append(answer.dnssec)
        if answer.outcome.is_temporary:
            return TemporaryFailure(name, answer.problem)
        if answer.outcome is not Outcome.ANSWER:
            return RecordSet()  # NXDOMAIN, NODATA, or a name too long to ask: no record there
        return select_record(answer.records)

    def weakest_dnssec(self) -> Dnssec:
        return weakest(*self.dnssec) if self.dnssec else Dnssec.INDETERMINATE


@dataclass(frozen=True, slots=True)
class Discovery:
    """Where the policy came from and what the Organizational Domain of the author domain is."""

    org_domain: str                    # "" when not yet needed (the Author Domain has its own record)
    record: DmarcRecord | None = None  # the policy record that applies (None: no policy)
    record_domain: str = ""            # the domain whose _dmarc record that is
    several: str = ""                  # a domain where several DMARC records were found and discarded


def walk_targets(domain: str) -> list[str]:
    """The names a Tree Walk visits, longest first (RFC 9989 §4.10 steps 4-8), down to the single-label TLD."""
    labels = domain.split(".")
    targets = [domain]
    count = len(labels)
    # Step 5: from 8 labels or more, jump to the last 7; then remove one label at a time.
    count = min(count - 1, WALK_LABEL_LIMIT - 1)
    while count >= 1:
        targets.append(".".join(labels[-count:]))
        count -= 1
    return targets


def _tree_walk(domain: str, lookups: PolicyLookups) -> tuple[str, dict[str, RecordSet]]:
    """Walk up from `domain`; returns its Organizational Domain and the record sets seen on the way.

    RFC 9989 §4.10.2: a record with psd=n makes its domain the Organizational Domain; a record with psd=y
    (other than at the starting domain) makes the domain one label below it the Organizational Domain; else
    the domain with the fewest labels that has a record is; with no record at all, the domain itself.
    """
    seen: dict[str, RecordSet] = {}
    fewest = ""
    for index, target in enumerate(walk_targets(domain)):
        found = lookups.records_at(target)
        seen[target] = found
        record = found.record
        if record is None:
            continue
        if record.psd is Psd.NO:
            return target, seen
        if record.psd is Psd.YES and index > 0:
            return _one_label_below(domain, target), seen
        fewest = target
    return fewest or domain, seen


def _one_label_below(domain: str, ancestor: str) -> str:
    labels = domain.split(".")
    return ".".join(labels[-(ancestor.count(".") + 2):])


def organizational_domain(domain: str, lookups: PolicyLookups, method: OrgDomainMethod) -> str:
    """The Organizational Domain of any domain (for relaxed alignment); TemporaryFailure on DNS trouble."""
    if method is OrgDomainMethod.PSL:
        return psl_org_domain(domain)
    return _tree_walk(domain, lookups)[0]


def discover(author_domain: str, lookups: PolicyLookups, method: OrgDomainMethod) -> Discovery:
    """Find the policy record for the author domain and its Organizational Domain.

    RFC 9989 §4.10.1: the record applied is, in order of preference, the one at the Author Domain, at its
    Organizational Domain, or at its Public Suffix Domain. TemporaryFailure propagates (temperror).
    """
    if method is OrgDomainMethod.PSL:
        org = psl_org_domain(author_domain)
        candidates = [author_domain] if org == author_domain else [author_domain, org]
        seen = {target: lookups.records_at(target) for target in candidates}
        psd = ""
    elif (at_author := lookups.records_at(author_domain)).record is not None:
        # The Author Domain's own record applies whatever lies above it; its Organizational Domain is only
        # needed for relaxed alignment, so the walk waits until alignment asks (organizational_domain()).
        return Discovery(org_domain="", record=at_author.record, record_domain=author_domain)
    else:
        org, seen = _tree_walk(author_domain, lookups)
        psd = _psd_above(org, seen)
        candidates = [author_domain, org] + ([psd] if psd else [])
        # The walk may have stopped before the org domain when psd= ended it (a psd=y just above it): ask.
        for target in candidates:
            if target not in seen:
                seen[target] = lookups.records_at(target)
    several = next((d for d in candidates if seen[d].several), "")
    for target in candidates:
        record = seen[target].record
        if record is not None:
            return Discovery(org_domain=org, record=record, record_domain=target, several=several)
    return Discovery(org_domain=org, several=several)


def _psd_above(org: str, seen: dict[str, RecordSet]) -> str:
    """The nearest ancestor of the org domain that the walk saw publish psd=y (RFC 9989 §3.2.10)."""
    for target, found in seen.items():
        if found.record is not None and found.record.psd is Psd.YES and target != org \
                and org.endswith("." + target):
            return target
    return ""


@lru_cache(maxsize=1)
def _psl():
    # Loaded once, lazily: only operators who chose org_domain = psl pay for parsing the bundled list.
    from publicsuffixlist import PublicSuffixList
    return PublicSuffixList()


def psl_org_domain(domain: str) -> str:
    """RFC 7489 §3.2: the registrable domain, or the domain itself when it is a public suffix."""
    return _psl().privatesuffix(domain) or domain
