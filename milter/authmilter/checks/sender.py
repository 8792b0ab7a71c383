"""Null MX (RFC 7505) and sender domains that cannot receive mail at all."""

from __future__ import annotations

from dataclasses import dataclass

# CONTRACT (other modules rely on these names; add fields freely, do not rename or remove):


@dataclass(frozen=True, slots=True)
class SenderDomainResult:
    domain: str
    null_mx: bool = False       # MX 0 . published (RFC 7505 §3)
    no_address: bool = False    # no MX, A or AAAA
    temporary: bool = False     # could not tell: DNS failed

    def log_fields(self) -> dict[str, str]:
        raise NotImplementedError
