"""DMARC (RFC 9989): author domain, policy discovery by DNS tree walk, alignment, disposition."""

from __future__ import annotations

from dataclasses import dataclass

from authmilter.results import AREntry, Dnssec, Status

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

    def ar_entries(self) -> tuple[AREntry, ...]:
        raise NotImplementedError

    def log_fields(self) -> dict[str, str]:
        raise NotImplementedError
