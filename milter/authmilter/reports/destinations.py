"""Where one report goes: the rua URIs as published, cut to what we will send to.

In order: only mailto: URIs (RFC 9990 allows other schemes later; nobody uses them), each `!size` limit ignored
(we send one small gzip file), at most `max_rua` URIs taken in the order published (RFC 9990: "up to the
Receiver's limits on supported URIs"), external destinations verified through the DNS (RFC 9990 §4), the
operator's suppression list applied, duplicates dropped.

A DNS failure while verifying is never read as "not authorized" nor as "authorized": the whole report waits for
a later run (`Destinations.retry`). Every address dropped is named with its reason, for the log and `show`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from authmilter.checks.dmarc.orgdomain import PolicyLookups, TemporaryFailure, organizational_domain
from authmilter.checks.dmarc.record import is_dmarc_record, parse_record
from authmilter.config import OrgDomainMethod
from authmilter.errors import AuthmilterError
from authmilter.reports.model import PublishedPolicy
from authmilter.resolver import DnsClient, Outcome, to_a_labels

MAX_URI_CHARS = 512
# RFC 9989 §4.7 (as RFC 7489 §6.4): a URI may end in "!" size [unit] asking for reports below that size.
_SIZE_SUFFIX = re.compile(r"![0-9]+[kmgtKMGT]?$")
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")  # RFC 5322 dot-atom text, unquoted (no spaces)
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class Address:
    local: str
    domain: str  # lower-case A-labels

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def key(self) -> str:
        """For duplicates and the suppression list: the local part's case is the mailbox owner's business, but
        nobody publishes two rua addresses differing only in case, so they count as one."""
        return str(self).lower()


@dataclass(frozen=True, slots=True)
class Destinations:
    addresses: tuple[Address, ...] = ()
    dropped: tuple[tuple[str, str], ...] = ()   # (URI or address, why), in the order met
    retry: str = ""                            # non-empty: a DNS failure; decide again at a later run

    @property
    def suppressed_only(self) -> bool:
        """Every candidate address was on the suppression list (nothing else went wrong)."""
        return not self.addresses and bool(self.dropped) and all(why == SUPPRESSED for _, why in self.dropped)


SUPPRESSED = "suppressed by [reports] suppress"


@dataclass(frozen=True, slots=True)
class Suppression:
    """[reports] suppress: addresses ("user@domain") and domains ("domain": that domain and its subdomains)."""

    addresses: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, items: tuple[str, ...]) -> Suppression:
        addresses, domains = set(), set()
        for item in items:
            item = item.strip().lower()
            if item.startswith("mailto:"):
                item = item[len("mailto:"):]
            if "@" in item:
                local, _, domain = item.rpartition("@")
                addresses.add(f"{local}@{to_a_labels(domain) or domain}")
            elif item:
                domain = item.lstrip(".").rstrip(".")
                domains.add(to_a_labels(domain) or domain)
        return cls(frozenset(addresses), frozenset(domains))

    def covers(self, address: Address) -> bool:
        if address.key in self.addresses:
            return True
        labels = address.domain.split(".")
        return any(".".join(labels[index:]) in self.domains for index in range(len(labels)))


def parse_mailto(uri: str) -> Address | str:
    """The address of one rua URI, or why it is not one we send to."""
    text = uri.strip()
    if len(text) > MAX_URI_CHARS:
        return "URI too long"
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() != "mailto":
        return f"not a mailto: URI (scheme {scheme.lower()[:20]!r} is not supported)"
    rest = _SIZE_SUFFIX.sub("", rest)
    rest = rest.split("?", 1)[0]  # RFC 6068 hfields (?subject=...) are no business of a report
    try:
        address = unquote(rest, errors="strict") if "%" in rest else rest
    except UnicodeDecodeError:
        return "not a mail address (bad %-escape)"
    if "," in address:
        return "several addresses in one URI"
    local, at, domain = address.rpartition("@")
    if not at or not local or not _LOCAL_PART.fullmatch(local) or local.startswith(".") or local.endswith(".") \
            or ".." in local:
        return "not a mail address"
    host = _host(domain)
    if host is None:
        return "not a mail domain"
    return Address(local, host)


def _host(domain: str) -> str | None:
    """The domain as lower-case A-labels when it is a host name (no address literals: reports go by MX)."""
    a_labels = to_a_labels(domain.strip().rstrip("."))
    if not a_labels or len(a_labels) > 253:
        return None
    labels = a_labels.lower().split(".")
    if len(labels) < 2 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None
    return ".".join(labels)


def resolve(policy: PublishedPolicy, rua: tuple[str, ...], dns: DnsClient, *, max_rua: int,
            suppression: Suppression) -> Destinations:
    """The addresses one report goes to (see the module docstring for the order of the steps)."""
    dropped: list[tuple[str, str]] = []
    candidates: list[Address] = []
    for index, uri in enumerate(rua):
        if index >= max_rua:
            dropped.append((uri, f"over [reports] max_rua = {max_rua}"))
            continue
        parsed = parse_mailto(uri)
        if isinstance(parsed, str):
            dropped.append((uri, parsed))
        else:
            candidates.append(parsed)
    verifier = _Verifier(policy, dns)
    final: list[Address] = []
    seen: set[str] = set()
    for candidate in candidates:
        try:
            verified = verifier.verify(candidate)
        except _Retry as exc:
            return Destinations((), tuple(dropped), retry=str(exc))
        if isinstance(verified, str):
            dropped.append((str(candidate), verified))
            continue
        for address in verified:
            if suppression.covers(address):
                dropped.append((str(address), SUPPRESSED))
            elif address.key not in seen:
                seen.add(address.key)
                final.append(address)
    if len(final) > max_rua:  # an override may have named several addresses for one
        dropped.extend((str(address), f"over [reports] max_rua = {max_rua}") for address in final[max_rua:])
        final = final[:max_rua]
    return Destinations(tuple(final), tuple(dropped))


# ---------------------------------------------------------------- RFC 9990 §4

class _Retry(AuthmilterError):
    """A DNS failure while verifying: the report waits for a later run."""


@dataclass(slots=True)
class _Verifier:
    policy: PublishedPolicy
    dns: DnsClient
    lookups: PolicyLookups = field(init=False)
    method: OrgDomainMethod = field(init=False)
    record_domain: str = field(init=False)
    _org: dict[str, str] = field(default_factory=dict)
    _checked: dict[str, tuple[Address, ...] | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lookups = PolicyLookups(self.dns)
        # The Organizational Domain is found the way the policy itself was (the report says which).
        self.method = OrgDomainMethod.PSL if self.policy.discovery_method == "psl" else OrgDomainMethod.TREEWALK
        self.record_domain = to_a_labels(self.policy.domain.rstrip(".")) or self.policy.domain
        self.record_domain = self.record_domain.lower()

    def verify(self, address: Address) -> tuple[Address, ...] | str:
        """The address(es) to send to for this one, or why it is dropped; raises _Retry on DNS failure."""
        host = address.domain
        if host not in self._checked:
            self._checked[host] = self._check_host(host)
        outcome = self._checked[host]
        if isinstance(outcome, str):
            return outcome
        return outcome or (address,)

    def _check_host(self, host: str) -> tuple[Address, ...] | str:
        """() when reports may go to addresses at host as published, override addresses when the destination
        replaced them, or why host may not receive them."""
        # RFC 9990 §4: verification is needed when the Organizational Domain at which the record was found
        # differs from the Organizational Domain of the URI's host.
        if host == self.record_domain or self._org_domain(host) == self._org_domain(self.record_domain):
            return ()
        # Steps 1-3: <domain the policy came from>._report._dmarc.<destination host>.
        name = f"{self.record_domain}._report._dmarc.{host}"
        answer = self.dns.query(name, "TXT")
        if answer.outcome is Outcome.INVALID_NAME:
            return f"external destination: {name} cannot be asked ({answer.problem})"  # step 4
        if answer.outcome.is_temporary:
            # Step 5 lets us defer; we always do: a DNS failure is never "authorized" nor "refused".
            raise _Retry(f"{name}: {answer.problem}")
        if answer.outcome is not Outcome.ANSWER:
            return f"external destination not authorized: no record at {name}"
        records = []
        for raw in answer.records:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            if is_dmarc_record(text):  # step 6: "v=DMARC1" first, the rest tag=value pairs
                record = parse_record(text)
                if not record.syntax_error:
                    records.append(record)
        if not records:
            return f"external destination not authorized: no v=DMARC1 record at {name}"  # step 7
        # Steps 8-9: authorized; a rua there replaces the published address, but only with one on the same
        # host. One that points elsewhere means reporting to neither (RFC 9990 §4, after the example).
        for record in records:
            if not record.rua:
                continue
            override: list[Address] = []
            for uri in record.rua:
                parsed = parse_mailto(uri)
                if isinstance(parsed, str):
                    continue
                if parsed.domain != host:
                    return f"external destination's override {uri!r} points to another host than {host}"
                override.append(parsed)
            if override:
                return tuple(override)
        return ()

    def _org_domain(self, domain: str) -> str:
        if domain not in self._org:
            try:
                self._org[domain] = organizational_domain(domain, self.lookups, self.method)
            except TemporaryFailure as exc:
                raise _Retry(str(exc)) from None
        return self._org[domain]
