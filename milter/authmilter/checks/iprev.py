"""FCrDNS / iprev (RFC 8601 §3): PTR of the client IP, then A/AAAA of each name back to the IP."""

from __future__ import annotations

from dataclasses import dataclass

from authmilter.results import AREntry, Dnssec, Status

# CONTRACT (other modules rely on these names; add fields freely, do not rename or remove):


@dataclass(frozen=True, slots=True)
class IprevResult:
    status: Status                  # pass, fail, temperror, permerror
    client_ip: str = ""
    confirmed_name: str = ""        # the PTR name that resolved back to the IP (pass only)
    reason: str = ""
    dnssec: Dnssec = Dnssec.INDETERMINATE

    def ar_entries(self) -> tuple[AREntry, ...]:
        raise NotImplementedError

    def log_fields(self) -> dict[str, str]:
        raise NotImplementedError
