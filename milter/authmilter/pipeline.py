"""Runs the checks in their declared order and returns one frozen Results.

CONTRACT: `Results` (names below) is read by policy.py, arheader.py and logline.py; `evaluate()` is called by the
adapter and the `check` command.

Each step of the pipeline is a `CheckSpec`: a name, the names of the steps whose output it reads, and a function
from `Inputs` to its output. The order is not written down by hand: `order_checks()` sorts the table
topologically (authentication_milter's `sort_callbacks`), keeping the declared order where the dependencies
allow, and refuses a cycle or a missing dependency at import time, so a bad table never reaches a message.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from authmilter.checks.dkim import check as dkim_check
from authmilter.checks.dmarc import check as dmarc_check
from authmilter.checks import forwarder as forwarder_check
from authmilter.checks import iprev as iprev_check
from authmilter.checks import sender as sender_check
from authmilter.checks import spf as spf_check
from authmilter.checks import srs as srs_check
from authmilter.checks.dkim.check import DkimResult
from authmilter.checks.dkim.body import BodyHashKey
from authmilter.checks.dmarc.check import DmarcResult
from authmilter.checks.iprev import IprevResult
from authmilter.checks.sender import SenderDomainResult
from authmilter.checks.spf import SpfResult
from authmilter.checks.srs import SrsInfo
from authmilter.config import Config, TrustSection
from authmilter.context import Connection, Message, MessageContext, unmapped
from authmilter.errors import AuthmilterError
from authmilter.resolver import DnsClient
from authmilter.results import Dnssec, Status, weakest


@dataclass(frozen=True, slots=True)
class Results:
    skipped: str = ""                       # "trusted_network" or "authenticated": no check ran
    iprev: IprevResult | None = None
    srs: SrsInfo | None = None
    spf: SpfResult | None = None
    sender: SenderDomainResult | None = None
    dkim: DkimResult | None = None
    dmarc: DmarcResult | None = None
    forwarder: str = ""                     # why the client is a trusted forwarder ("" when it is not)
    dns_queries: int = 0
    dns_deadline_expired: bool = False
    dnssec: Dnssec = Dnssec.INDETERMINATE   # weakest status over every check's lookups


class PipelineError(AuthmilterError):
    """The check table itself is wrong (a cycle, an unknown dependency): a bug, raised at import."""


@dataclass(frozen=True, slots=True)
class Inputs:
    """What a step may read: the frozen message facts, the per-message DNS client, the config, the clock, and
    the outputs of the steps it declared in `needs` (others are there too, but reading them is a bug)."""

    ctx: MessageContext
    dns: DnsClient
    cfg: Config
    now: float
    done: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CheckSpec:
    name: str                                # a Results field, or an intermediate value such as author_domain
    needs: tuple[str, ...]
    run: Callable[[Inputs], Any]
    enabled: Callable[[Config], bool] = lambda cfg: True


def order_checks(specs: Sequence[CheckSpec]) -> tuple[CheckSpec, ...]:
    """Topological order of `specs`; among steps that are ready, the one declared first runs first."""
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise PipelineError(f"duplicate check names in {names}")
    for spec in specs:
        unknown = [need for need in spec.needs if need not in names]
        if unknown:
            raise PipelineError(f"check {spec.name!r} needs unknown check(s) {unknown}")
    ordered: list[CheckSpec] = []
    placed: set[str] = set()
    pending = list(specs)
    while pending:
        ready = next((spec for spec in pending if placed.issuperset(spec.needs)), None)
        if ready is None:
            raise PipelineError(f"dependency cycle among checks {[spec.name for spec in pending]}")
        ordered.append(ready)
        placed.add(ready.name)
        pending.remove(ready)
    return tuple(ordered)


# ---------------------------------------------------------------- the real table

def _run_iprev(i: Inputs) -> IprevResult:
    return iprev_check.check_iprev(i.ctx.connection, i.dns, i.cfg.iprev)


def _run_srs(i: Inputs) -> SrsInfo | None:
    return srs_check.parse_srs(i.ctx.envelope.mail_from)


def _run_spf(i: Inputs) -> SpfResult:
    # SPF always runs on the envelope as received: an SRS address is checked against the forwarder's domain.
    return spf_check.check_spf(i.ctx.connection, i.ctx.envelope, i.dns, i.cfg.spf)


def _run_sender(i: Inputs) -> SenderDomainResult | None:
    return sender_check.check_sender_domain(i.ctx.envelope, i.dns)


def _run_forwarder(i: Inputs) -> str:
    return forwarder_check.match_forwarder(i.ctx.connection, i.done["iprev"], i.cfg.forwarders)


def _run_author_domain(i: Inputs) -> str | None:
    return dmarc_check.author_domain(i.ctx.message)


def _run_dkim(i: Inputs) -> DkimResult:
    return dkim_check.check_dkim(i.ctx.message, i.dns, i.cfg.dkim, now=i.now, from_domain=i.done["author_domain"])


def _run_dmarc(i: Inputs) -> DmarcResult:
    return dmarc_check.check_dmarc(i.ctx.message, i.done["spf"], i.done["dkim"], i.dns, i.cfg.dmarc)


CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec("iprev", (), _run_iprev, lambda cfg: cfg.iprev.enabled),
    CheckSpec("srs", (), _run_srs),
    CheckSpec("spf", (), _run_spf, lambda cfg: cfg.spf.enabled),
    CheckSpec("sender", (), _run_sender),
    # No configured forwarder means nobody can match: skip the call rather than ask for nothing.
    CheckSpec("forwarder", ("iprev",), _run_forwarder,
              lambda cfg: bool(cfg.forwarders.networks or cfg.forwarders.hostnames)),
    CheckSpec("author_domain", (), _run_author_domain, lambda cfg: cfg.dkim.enabled),
    CheckSpec("dkim", ("author_domain",), _run_dkim, lambda cfg: cfg.dkim.enabled),
    CheckSpec("dmarc", ("spf", "dkim"), _run_dmarc, lambda cfg: cfg.dmarc.enabled),
)

ORDERED_CHECKS = order_checks(CHECKS)

_RESULT_FIELDS = frozenset(f.name for f in fields(Results))


# ---------------------------------------------------------------- evaluation

def skip_reason(conn: Connection, trust: TrustSection) -> str:
    """"trusted_network" or "authenticated" when this client's mail is not checked, else ""."""
    if conn.client_ip is not None and _in_networks(conn.client_ip, trust.networks):
        return "trusted_network"
    if trust.authenticated and conn.authenticated_user:
        return "authenticated"
    return ""


def _in_networks(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Sequence) -> bool:
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; the operator wrote a.b.c.d/n (or the mapped
    # form: both are tried).
    candidates = {ip, unmapped(ip)}
    return any(candidate in network for candidate in candidates for network in networks)


def body_hash_keys(conn: Connection, msg: Message, cfg: Config) -> frozenset[BodyHashKey]:
    """The DKIM body hashes `evaluate` will need for a message with these headers (known at end of headers), so
    the adapter can stream the body into them and keep none of it. Empty when nothing will read the body."""
    if not cfg.dkim.enabled or skip_reason(conn, cfg.trust):
        return frozenset()
    # The same steps as the table: the author domain orders the signatures, and dkim picks them.
    return dkim_check.body_hash_keys(msg, cfg.dkim, dmarc_check.author_domain(msg))


def evaluate(ctx: MessageContext, dns: DnsClient, cfg: Config, *, now: float,
             checks: Sequence[CheckSpec] | None = None) -> Results:
    """Run every enabled check for one message. A check that raises is a bug and is not caught here: the adapter
    turns it into the configured error action."""
    skipped = skip_reason(ctx.connection, cfg.trust)
    if skipped:
        return Results(skipped=skipped, dns_queries=dns.query_count, dns_deadline_expired=dns.deadline_expired)
    ordered = ORDERED_CHECKS if checks is None else order_checks(checks)
    done: dict[str, Any] = {}
    view = MappingProxyType(done)
    for spec in ordered:
        done[spec.name] = spec.run(Inputs(ctx, dns, cfg, now, view)) if spec.enabled(cfg) else None
    values = {name: value for name, value in done.items() if name in _RESULT_FIELDS}
    values["forwarder"] = values.get("forwarder") or ""
    partial = Results(**values)
    return Results(**values, dns_queries=dns.query_count, dns_deadline_expired=dns.deadline_expired,
                   dnssec=dnssec_of(partial))


def dnssec_of(results: Results) -> Dnssec:
    """The weakest DNSSEC status among the lookups behind the results (STYLE: a result is only as secure as the
    weakest answer it used). Checks that looked nothing up do not count."""
    statuses: list[Dnssec] = []
    if results.iprev is not None and results.iprev.status is not Status.NONE:
        statuses.append(results.iprev.dnssec)
    if results.spf is not None:
        statuses.append(results.spf.mailfrom.dnssec)
        if results.spf.helo is not None:
            statuses.append(results.spf.helo.dnssec)
    if results.dkim is not None:
        statuses.extend(signature.dnssec for signature in results.dkim.signatures if signature.key_queried)
    if results.dmarc is not None and not results.dmarc.from_error:
        statuses.append(results.dmarc.dnssec)
    return weakest(*statuses)
