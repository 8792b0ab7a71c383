"""SPF (RFC 7208) for the MAIL FROM and HELO identities, with pyspf doing the evaluation through our DnsClient."""

from __future__ import annotations

from dataclasses import dataclass

from authmilter.results import AREntry, Dnssec, Status

# CONTRACT (other modules rely on these names; add fields freely, do not rename or remove):


@dataclass(frozen=True, slots=True)
class SpfIdentityResult:
    identity: str          # "mailfrom" or "helo" (RFC 7208 §2.4 / §2.3)
    sender: str            # the full identity checked: "user@example.org", or "postmaster@helo.example"
    domain: str            # the domain whose record was evaluated
    status: Status
    reason: str = ""       # short text for the header comment and log when not pass/none
    explanation: str = ""  # the domain's exp= text on fail ("" if none); raw, untrusted
    dnssec: Dnssec = Dnssec.INDETERMINATE


@dataclass(frozen=True, slots=True)
class SpfResult:
    """mailfrom is the MAIL FROM result; for the null sender it is the postmaster@HELO result (RFC 7208 §2.4)."""

    mailfrom: SpfIdentityResult
    helo: SpfIdentityResult | None = None  # when the HELO identity was checked too

    def ar_entries(self) -> tuple[AREntry, ...]:
        raise NotImplementedError

    def log_fields(self) -> dict[str, str]:
        raise NotImplementedError
