"""DMARC (RFC 9989): author domain, policy discovery by DNS tree walk, alignment, disposition."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from authmilter.checks.dmarc.record import DmarcRecord, Request
from authmilter.checks.dmarc.fromheader import FromParse, parse_from_headers
from authmilter.checks.dmarc.orgdomain import (Discovery, PolicyLookups, TemporaryFailure, discover,
                                         organizational_domain, psl_org_domain, walk_targets)
from authmilter.config import DmarcSection, OrgDomainMethod
from authmilter.context import HEADER_LIMIT, Connection, Envelope, Message
from authmilter.resolver import DnsClient, Outcome
from authmilter.results import AREntry, Dnssec, Property, Status, weakest

if TYPE_CHECKING:  # type-only: keeps the check modules free of import cycles whatever the others import
    from authmilter.checks.dkim.check import DkimResult
    from authmilter.checks.spf import SpfResult

MAX_ALIGNMENT_IDENTIFIERS = 10  # distinct passing DKIM domains we walk for relaxed alignment

# CONTRACT (other modules rely on these names; add fields freely, do not rename or remove):


@dataclass(frozen=True, slots=True)
class DmarcResult:
    status: Status                 # pass, fail, none, temperror, permerror
    from_domain: str = ""          # RFC 5322 From domain ("" when it could not be determined)
    from_error: bool = False       # permerror because of no/several From headers or an unparseable From
    policy: str = ""               # published policy that applies: "none", "quarantine", "reject" ("" if none)
    disposition: str = "none"      # what the record asks us to do after t=y lowering: none/quarantine/reject
    testing: bool = False          # t=y (or pct=0 with no t=)
    reason: str = ""
    dnssec: Dnssec = Dnssec.INDETERMINATE
    # Added by the DMARC owner (kept for the log and for aggregate reports later):
    record_domain: str = ""        # whose _dmarc record applied (the From domain, its org domain or a PSD)
    org_domain: str = ""           # Organizational Domain of the From domain, by the configured method
    p: str = ""                    # published p= ("" when absent or invalid)
    sp: str = ""                   # published sp= ("" when absent)
    np: str = ""                   # published np= ("" when absent)
    psd: str = ""                  # published psd= ("y", "n", "u"), "" without a record
    adkim: str = ""                # "r" or "s", "" without a record
    aspf: str = ""                 # "r" or "s", "" without a record
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: tuple[str, ...] = ()
    record: str = ""               # the raw policy record (untrusted text)
    spf_aligned: str = ""          # the SPF-authenticated domain that aligned ("" if none)
    dkim_aligned: str = ""         # the first passing DKIM d= that aligned ("" if none)

    def ar_entries(self) -> tuple[AREntry, ...]:
        """RFC 9989 §11.2 / RFC 8601: dmarc=<status> (<comment>) header.from=<domain> policy.dmarc=<disp>."""
        properties: list[Property] = []
        if self.from_domain:
            properties.append(Property("header", "from", self.from_domain))
        if self.status in (Status.PASS, Status.FAIL):
            properties.append(Property("policy", "dmarc", self.disposition))
        return (AREntry("dmarc", self.status.value, self._comment(), tuple(properties)),)

    def _comment(self) -> str:
        parts = []
        if self.status in (Status.PASS, Status.FAIL):
            words = [f"p={self.p or 'none'}", f"sp={self.sp or self.p or 'none'}"]
            if self.np:
                words.append(f"np={self.np}")
            words.append(f"dis={self.disposition}")
            if self.testing:
                words.append("t=y")
            parts.append(" ".join(words))
        elif self.reason:
            parts.append(self.reason)
        if not self.from_error:
            parts.append(f"dnssec={self.dnssec.value}")
        return "; ".join(parts)

    def dnssec_statuses(self) -> tuple[Dnssec, ...]:
        return () if self.from_error else (self.dnssec,)  # no author domain: no policy was looked up

    def log_fields(self) -> dict[str, str]:
        fields = {
            "dmarc": self.status.value,
            "dmarc_from": self.from_domain,
            "dmarc_policy": self.policy,
            "dmarc_dis": self.disposition if self.status in (Status.PASS, Status.FAIL) else "",
            "dmarc_testing": "yes" if self.testing else "",
            "dmarc_record_domain": self.record_domain if self.record_domain != self.from_domain else "",
            "dmarc_aligned": ",".join(x for x in (f"spf:{self.spf_aligned}" if self.spf_aligned else "",
                                                  f"dkim:{self.dkim_aligned}" if self.dkim_aligned else "") if x),
            "dmarc_reason": self.reason,
            "dmarc_dnssec": self.dnssec.value,
        }
        return {key: value for key, value in fields.items() if value}


def author_domain(msg: Message) -> str | None:
    """The RFC 5322 From domain (lowercase A-labels), or None when the From is missing, repeated or unparseable."""
    parsed = parse_from_headers(msg.get_all("From"))
    return parsed.domain if parsed.ok else None


def discovery_lookups(msg: Message, env: Envelope, conn: Connection, dkim_domains: Sequence[str],
                      cfg: DmarcSection) -> list[tuple[str, str]]:
    """The _dmarc names check_dmarc may ask, known at end of headers, to be asked side by side: every name of the
    author domain's tree walk (the walk still chooses among the answers in the RFC's order; names it does not
    reach are the price of not waiting for each answer), and the walks of the SPF and DKIM domains that relaxed
    alignment may need (those under the same parent as the author domain)."""
    domain = None if msg.headers_truncated else author_domain(msg)
    if not cfg.enabled or domain is None:
        return []
    if cfg.org_domain is OrgDomainMethod.PSL:
        org = psl_org_domain(domain)
        return [(f"_dmarc.{name}", "TXT") for name in dict.fromkeys((domain, org))]
    spf_domain = (env.mail_from.rpartition("@")[2] if env.mail_from else conn.helo).lower().rstrip(".")
    names = dict.fromkeys(walk_targets(domain))
    parent = domain.split(".")[-2:]
    for identifier in (spf_domain, *(d.lower().rstrip(".") for d in dkim_domains)):
        if identifier and identifier != domain and identifier.split(".")[-2:] == parent:
            names.update(dict.fromkeys(walk_targets(identifier)))
    return [(f"_dmarc.{name}", "TXT") for name in names]


def check_dmarc(msg: Message, spf: SpfResult | None, dkim: DkimResult | None, dns: DnsClient,
                cfg: DmarcSection) -> DmarcResult:
    """Evaluate DMARC for one message from the SPF and DKIM results already computed."""
    if msg.headers_truncated:
        # The From header may lie past the cap, or a second From may: "no From" or an author domain read from
        # what was kept would both be guesses, so no policy is looked up.
        return DmarcResult(Status.PERMERROR, reason=HEADER_LIMIT)
    parsed: FromParse = parse_from_headers(msg.get_all("From"))
    if not parsed.ok:
        # RFC 9989 §4.4 leaves a message without one usable author domain to local policy; the issue (and the
        # classic From-header bypasses) make it a permerror the operator can reject.
        return DmarcResult(Status.PERMERROR, from_error=True, reason=parsed.error)
    domain = parsed.domain
    if not cfg.enabled:
        return DmarcResult(Status.NONE, from_domain=domain, reason="DMARC checks disabled")
    lookups = PolicyLookups(dns)
    try:
        return _evaluate(domain, spf, dkim, dns, cfg, lookups)
    except TemporaryFailure as exc:
        # RFC 9989 §4.10: a DNS failure during discovery means the policy is unknown, not absent.
        return DmarcResult(Status.TEMPERROR, from_domain=domain, reason=str(exc),
                           dnssec=lookups.weakest_dnssec())


def _evaluate(domain: str, spf: SpfResult | None, dkim: DkimResult | None, dns: DnsClient, cfg: DmarcSection,
              lookups: PolicyLookups) -> DmarcResult:
    found = discover(domain, lookups, cfg.org_domain)
    record = found.record
    if record is None:
        reason = f"several DMARC records at _dmarc.{found.several}" if found.several else "no DMARC record"
        return DmarcResult(Status.NONE, from_domain=domain, org_domain=found.org_domain, reason=reason,
                           dnssec=lookups.weakest_dnssec())
    tags = _record_fields(record, found)
    if record.syntax_error:
        # RFC 8601 §2.7.7 (as extended for dmarc): a syntactically incorrect record is a permerror.
        return DmarcResult(Status.PERMERROR, from_domain=domain, dnssec=lookups.weakest_dnssec(),
                           reason=f"bad DMARC record at _dmarc.{found.record_domain}: {record.syntax_error}",
                           **tags)
    request, existence_dnssec = _applicable_request(domain, found, dns)
    dnssec_parts = [lookups.weakest_dnssec()] + ([existence_dnssec] if existence_dnssec else [])
    if request is None:
        return DmarcResult(Status.NONE, from_domain=domain, dnssec=weakest(*dnssec_parts),
                           reason=f"DMARC record at _dmarc.{found.record_domain} has no valid p=", **tags)

    alignment = _Alignment(domain, found.org_domain, lookups, cfg)
    spf_domain = _spf_passing_domain(spf)
    spf_aligned = alignment.aligned(spf_domain, record.aspf_strict) if spf_domain else False
    dkim_aligned_domain, dkim_unknown = "", False
    for candidate in _dkim_passing_domains(dkim):
        aligned = alignment.aligned(candidate, record.adkim_strict)
        if aligned:
            dkim_aligned_domain = candidate
            break
        dkim_unknown = dkim_unknown or aligned is None
    dnssec = weakest(lookups.weakest_dnssec(), *dnssec_parts[1:])
    tags["org_domain"] = alignment.from_org or found.org_domain
    common = dict(from_domain=domain, policy=request.value, testing=record.testing, dnssec=dnssec, **tags)
    if spf_aligned or dkim_aligned_domain:
        return DmarcResult(Status.PASS, disposition="none",
                           spf_aligned=spf_domain if spf_aligned else "", dkim_aligned=dkim_aligned_domain,
                           **common)
    if spf_aligned is None or dkim_unknown:
        return DmarcResult(Status.TEMPERROR, reason="DNS failure while checking relaxed alignment", **common)
    if (unverified := _unverified_aligned(spf, dkim, alignment, record)):
        # Nothing passed, but an identifier that would align could not be checked (SPF or DKIM temperror): a
        # retry may pass, so fail (and a p=reject 550) would punish a DNS hiccup. RFC 8601 §2.7.1: temperror.
        return DmarcResult(Status.TEMPERROR, reason=f"{unverified} could not be checked (temperror)", **common)
    return DmarcResult(Status.FAIL, disposition=_lowered(request, record.testing).value,
                       reason=_fail_reason(spf_domain, dkim), **common)


def _record_fields(record: DmarcRecord, found: Discovery) -> dict:
    return dict(
        record_domain=found.record_domain, org_domain=found.org_domain,
        p=record.p.value if record.p else "", sp=record.sp.value if record.sp else "",
        np=record.np.value if record.np else "", psd=record.psd.value,
        adkim="s" if record.adkim_strict else "r", aspf="s" if record.aspf_strict else "r",
        rua=record.rua, ruf=record.ruf, fo=record.fo, record=record.raw,
    )


def _applicable_request(domain: str, found: Discovery, dns: DnsClient) -> tuple[Request | None, Dnssec | None]:
    """RFC 9989 §4.10.1: p= at the Author Domain; for a subdomain, np= when it does not exist, else sp=, else p=.

    Returns the request and the DNSSEC status of the existence lookups (None when none were needed).
    """
    record = found.record
    assert record is not None
    base = record.policy_request()
    if base is None or found.record_domain == domain:
        return base, None
    subdomain = record.sp or base
    if record.np is None or record.np == subdomain:
        return subdomain, None
    exists, dnssec = _domain_exists(domain, dns)
    return (subdomain if exists else record.np), dnssec


def _domain_exists(domain: str, dns: DnsClient) -> tuple[bool, Dnssec]:
    """RFC 9989 §3.2.11: a domain is non-existent when A, AAAA and MX all answer NXDOMAIN.

    Anything else, including a temporary failure, counts as existing: np= must not be applied on a guess.
    """
    statuses = []
    for rdtype in ("A", "AAAA", "MX"):
        answer = dns.query(domain, rdtype)
        statuses.append(answer.dnssec)
        if answer.outcome is not Outcome.NXDOMAIN:
            return True, weakest(*statuses)
    return False, weakest(*statuses)


class _Alignment:
    """RFC 9989 §4.4.1/§4.4.2: strict means equal; relaxed means the same Organizational Domain.

    The From domain's Organizational Domain is found on first need: most mail aligns exactly.
    """

    def __init__(self, from_domain: str, from_org: str, lookups: PolicyLookups, cfg: DmarcSection) -> None:
        self.from_domain, self.from_org, self.lookups, self.cfg = from_domain, from_org, lookups, cfg

    def aligned(self, identifier: str, strict: bool) -> bool | None:
        """None when a DNS failure left an Organizational Domain unknown."""
        identifier = identifier.lower().rstrip(".")
        if identifier == self.from_domain:
            return True
        if strict:
            return False
        try:
            if not self.from_org:
                self.from_org = organizational_domain(self.from_domain, self.lookups, self.cfg.org_domain)
            # An Organizational Domain is the domain itself or an ancestor, so only the From domain's org
            # domain or its subdomains can share it; skip the walk for anything else.
            if identifier != self.from_org and not identifier.endswith("." + self.from_org):
                return False
            return organizational_domain(identifier, self.lookups, self.cfg.org_domain) == self.from_org
        except TemporaryFailure:
            return None


def _unverified_aligned(spf: SpfResult | None, dkim: DkimResult | None, alignment: _Alignment,
                        record: DmarcRecord) -> str:
    """The first aligned identifier whose SPF or DKIM result is temperror, described; "" when there is none."""
    if spf is not None and spf.mailfrom.status is Status.TEMPERROR and spf.mailfrom.domain:
        if alignment.aligned(spf.mailfrom.domain, record.aspf_strict) is not False:
            return f"SPF of {spf.mailfrom.domain.lower().rstrip('.')}"
    for signature in (dkim.signatures if dkim is not None else ())[:MAX_ALIGNMENT_IDENTIFIERS]:
        if signature.status is Status.TEMPERROR and signature.domain:
            if alignment.aligned(signature.domain, record.adkim_strict) is not False:
                return f"DKIM of {signature.domain.lower().rstrip('.')}"
    return ""


def _spf_passing_domain(spf: SpfResult | None) -> str:
    """RFC 9989 §4.4.2: the MAIL FROM domain that passed SPF (for the null sender, spf.mailfrom is the HELO)."""
    if spf is None or spf.mailfrom.status is not Status.PASS:
        return ""
    return spf.mailfrom.domain.lower().rstrip(".")


def _dkim_passing_domains(dkim: DkimResult | None) -> tuple[str, ...]:
    if dkim is None:
        return ()
    unique = dict.fromkeys(d.lower().rstrip(".") for d in dkim.passing_domains() if d)
    return tuple(unique)[:MAX_ALIGNMENT_IDENTIFIERS]


def _lowered(request: Request, testing: bool) -> Request:
    """RFC 9989 §4.7 t=y: apply the policy one step lower (reject -> quarantine, quarantine -> none)."""
    if not testing:
        return request
    return {Request.REJECT: Request.QUARANTINE, Request.QUARANTINE: Request.NONE}.get(request, Request.NONE)


def _fail_reason(spf_domain: str, dkim: DkimResult | None) -> str:
    passing = _dkim_passing_domains(dkim)
    if not spf_domain and not passing:
        return "no SPF or DKIM pass"
    named = ([f"spf {spf_domain}"] if spf_domain else []) + [f"dkim {d}" for d in passing[:3]]
    return "not aligned: " + ", ".join(named)
