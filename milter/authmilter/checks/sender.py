"""Null MX (RFC 7505) and sender domains that cannot receive mail at all.

A MAIL FROM domain is where bounces go. If it publishes the null MX it has declared that it sends no mail
(RFC 7505 §4.2 lets a receiver refuse such mail with 550 5.7.27). If it has no MX and no address record, a bounce
cannot be delivered either (RFC 5321 §5.1: without MX records the domain itself is the implicit MX).
"""

from __future__ import annotations

from dataclasses import dataclass

from authmilter.context import Envelope
from authmilter.resolver import Answer, DnsClient, Outcome
from authmilter.results import Dnssec, weakest

# CONTRACT (other modules rely on these names; add fields freely, do not rename or remove):


@dataclass(frozen=True, slots=True)
class SenderDomainResult:
    domain: str
    null_mx: bool = False       # MX 0 . published (RFC 7505 §3)
    no_address: bool = False    # no MX, A or AAAA
    temporary: bool = False     # could not tell: DNS failed
    reason: str = ""            # why one of the flags is set
    dnssec: Dnssec = Dnssec.INDETERMINATE

    @property
    def status(self) -> str:
        """One word for the log: null_mx, no_address, temperror or ok."""
        if self.null_mx:
            return "null_mx"
        if self.no_address:
            return "no_address"
        if self.temporary:
            return "temperror"
        return "ok"

    def ar_entries(self) -> tuple:
        return ()  # RFC 8601 has no method for it: it shows in the log and, when it decides, in the reply

    def dnssec_statuses(self) -> tuple:
        return ()  # it decides only on null MX or no address at all, never on how trusted the answer was

    def log_fields(self) -> dict[str, str]:
        fields = {"sender_domain": self.status}
        if self.reason:
            fields["sender_domain_reason"] = self.reason
        return fields


def first_lookups(env: Envelope) -> list[tuple[str, str]]:
    """The MX lookup check_sender_domain starts with (A and AAAA only if that finds nothing)."""
    domain = _domain_of(env.mail_from) if env.mail_from else ""
    return [(domain, "MX")] if domain and not domain.startswith("[") else []


def check_sender_domain(env: Envelope, dns: DnsClient) -> SenderDomainResult | None:
    """None for the null sender (bounces have no domain to check)."""
    if not env.mail_from:
        return None
    domain = _domain_of(env.mail_from)
    if not domain:
        return SenderDomainResult("", reason="no domain in MAIL FROM")
    if domain.startswith("["):
        # An address literal (RFC 5321 §4.1.3) is an address already; there is nothing to look up.
        return SenderDomainResult(domain)

    mx = dns.query(domain, "MX")
    if mx.ok:
        if _is_null_mx(mx):
            return SenderDomainResult(domain, null_mx=True, reason="null MX published", dnssec=mx.dnssec)
        return SenderDomainResult(domain, dnssec=mx.dnssec)
    if mx.outcome is Outcome.INVALID_NAME:
        return SenderDomainResult(domain, no_address=True, reason="not a valid domain name")
    if mx.outcome is Outcome.NXDOMAIN:
        # The name does not exist, so A and AAAA cannot either: no need to ask.
        return SenderDomainResult(domain, no_address=True, reason="domain does not exist", dnssec=mx.dnssec)
    if mx.outcome.is_temporary:
        return SenderDomainResult(domain, temporary=True, reason=f"MX lookup: {mx.problem}",
                                  dnssec=mx.dnssec)

    # RFC 5321 §5.1: no MX records, so the domain's own address records are its implicit MX.
    answers = [mx]
    for rdtype in ("A", "AAAA"):
        answer = dns.query(domain, rdtype)
        answers.append(answer)
        if answer.ok:
            return SenderDomainResult(domain, dnssec=weakest(*(a.dnssec for a in answers)))
    dnssec = weakest(*(a.dnssec for a in answers))
    failed = next((a for a in answers if a.outcome.is_temporary), None)
    if failed is not None:
        return SenderDomainResult(domain, temporary=True, reason=f"{failed.rdtype} lookup: {failed.problem}",
                                  dnssec=dnssec)
    return SenderDomainResult(domain, no_address=True, reason="no MX, A or AAAA record", dnssec=dnssec)


def _domain_of(mail_from: str) -> str:
    address = mail_from.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    _, at, domain = address.rpartition("@")
    if not at:
        return ""
    return domain.strip().rstrip(".").lower()


def _is_null_mx(answer: Answer) -> bool:
    # RFC 7505 §3: a null MX is a single MX record with preference 0 and the root as exchange; a domain that
    # mixes "." with real exchanges is misconfigured but still has somewhere to send bounces.
    return len(answer.records) == 1 and tuple(answer.records[0]) == (0, "")
