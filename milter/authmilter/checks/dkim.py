"""DKIM (RFC 6376, RFC 8301, RFC 8463) verification with dkimpy, through our DnsClient."""

from __future__ import annotations

from dataclasses import dataclass

from authmilter.results import AREntry, Dnssec, Status

# CONTRACT (other modules rely on these names; add fields freely, do not rename or remove):


@dataclass(frozen=True, slots=True)
class DkimSignatureResult:
    status: Status
    domain: str = ""          # d=
    selector: str = ""        # s=
    identity: str = ""        # i= (or "@" + d= when absent)
    algorithm: str = ""       # a=
    b_prefix: str = ""        # first 8 characters of b= (RFC 6008)
    key_bits: int = 0
    testing: bool = False     # key record has t=y
    reason: str = ""          # short text for the header comment when not pass
    dnssec: Dnssec = Dnssec.INDETERMINATE


@dataclass(frozen=True, slots=True)
class DkimResult:
    signatures: tuple[DkimSignatureResult, ...] = ()
    skipped: int = 0          # signatures not evaluated because of [dkim] max_signatures

    def passing_domains(self) -> tuple[str, ...]:
        return tuple(s.domain for s in self.signatures if s.status is Status.PASS)

    def ar_entries(self) -> tuple[AREntry, ...]:
        raise NotImplementedError

    def log_fields(self) -> dict[str, str]:
        raise NotImplementedError
