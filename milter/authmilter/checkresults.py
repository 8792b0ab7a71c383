"""Every check's result for one message, in the order of the check table (pipeline.CHECKS).

Policy, the header renderer, the log line, the DNSSEC summary and the observers read this one type. It imports no
check: each step's output is held as the table produced it, and the ones that are method results offer the small
interface below, so whatever lists methods (header, log, DNSSEC summary, metrics, reports) loops over `methods()`
instead of naming them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from authmilter.context import Connection
from authmilter.results import AREntry, Dnssec, weakest

if TYPE_CHECKING:  # type-only: the accessors below name the checks' result types without importing them
    from authmilter.checks.dkim.check import DkimResult
    from authmilter.checks.dmarc.check import DmarcResult
    from authmilter.checks.iprev import IprevResult
    from authmilter.checks.relayed import RelayedClient
    from authmilter.checks.sender import SenderDomainResult
    from authmilter.checks.spf import SpfResult
    from authmilter.checks.srs import SrsInfo


class MethodResult(Protocol):
    """What every shown result offers: its A-R entries, its log fields and the DNSSEC status of its lookups."""

    def ar_entries(self) -> tuple[AREntry, ...]: ...

    def log_fields(self) -> Mapping[str, object]: ...

    def dnssec_statuses(self) -> tuple[Dnssec, ...]:
        """The statuses of the lookups this result rests on; () when it looked nothing up."""


@dataclass(frozen=True, slots=True)
class StepOutput:
    """One step of the table and what it gave for this message."""

    name: str
    value: Any              # the step's output; None when the step did not run (disabled, or nothing to check)
    shown: bool             # a MethodResult: rendered in the header, the log line and the DNSSEC summary
    always_logged: bool     # an RFC 8601 method: its log key is there ("-") even when it did not run


@dataclass(frozen=True, slots=True)
class Results:
    steps: tuple[StepOutput, ...] = ()
    skipped: str = ""                       # "trusted_network" or "authenticated": no check ran
    dns_queries: int = 0
    dns_deadline_expired: bool = False
    dnssec: Dnssec = Dnssec.INDETERMINATE   # weakest status over every shown result's lookups
    dns_extra: int = 0                      # lookups asked early that no check then needed (early.py)

    def get(self, name: str) -> Any:
        for step in self.steps:
            if step.name == name:
                return step.value
        return None

    def with_outputs(self, **outputs: Any) -> Results:
        """A copy with the named steps' outputs replaced (each must be a step of these results); the DNSSEC
        summary is recomputed."""
        unknown = set(outputs) - {step.name for step in self.steps}
        if unknown:
            raise KeyError(f"no such step(s) {sorted(unknown)}")
        steps = tuple(dataclasses.replace(step, value=outputs[step.name]) if step.name in outputs else step
                      for step in self.steps)
        return dataclasses.replace(self, steps=steps, dnssec=dnssec_summary(steps))

    def methods(self) -> Iterator[MethodResult]:
        """The results that were produced and are shown, in table order."""
        return (step.value for step in self.steps if step.shown and step.value is not None)

    # Typed reads for policy rules and reports, which reason about particular methods. A new check needs none of
    # these: `get(name)` reads any step.

    @property
    def iprev(self) -> IprevResult | None:
        return self.get("iprev")

    @property
    def srs(self) -> SrsInfo | None:
        return self.get("srs")

    @property
    def spf(self) -> SpfResult | None:
        return self.get("spf")

    @property
    def sender(self) -> SenderDomainResult | None:
        return self.get("sender")

    @property
    def dkim(self) -> DkimResult | None:
        return self.get("dkim")

    @property
    def dmarc(self) -> DmarcResult | None:
        return self.get("dmarc")

    @property
    def relay(self) -> RelayedClient | None:
        """Set when the client is one of [trust] relays: the client its Received header recorded."""
        return self.get("relay")

    def judged_connection(self, conn: Connection) -> Connection | None:
        """The client SPF and iprev judged: `conn` itself, or behind a relay of ours the one the relay recorded
        (None when its Received header could not be read). The header, the log line and the reports show it."""
        relay = self.relay
        return conn if relay is None else relay.connection

    @property
    def forwarder(self) -> str:
        """Why the client is a trusted forwarder ("" when it is not)."""
        return self.get("forwarder") or ""


def dnssec_summary(steps: tuple[StepOutput, ...]) -> Dnssec:
    """The weakest DNSSEC status among the lookups behind the shown results (STYLE: a result is only as secure as
    the weakest answer it used). Results that looked nothing up do not count."""
    statuses: list[Dnssec] = []
    for step in steps:
        if step.shown and step.value is not None:
            statuses.extend(step.value.dnssec_statuses())
    return weakest(*statuses)
