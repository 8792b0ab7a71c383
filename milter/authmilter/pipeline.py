"""The check table, and the one function that runs it for a message.

Each step of the table is a `CheckSpec`: a name, the names of the steps whose output it reads, a function from
`Inputs` to its output, and when it can work:

- `lookup_stage`: the milter stage at which its inputs are complete, so its DNS lookups could start (iprev at
  connect, SPF at MAIL FROM, DKIM keys and DMARC discovery at end of headers). It may depend on the client: a
  callable (Connection, Config) -> Stage.
- `due_stage`: the stage at which its result is needed (end of message for the message checks; RCPT for the
  per-recipient SRS bounce check).
- `body_plan`: for a check that reads the body, which body hashes it will need, asked at end of headers so the
  body can be streamed into them and never kept.
- `prefetch`: for a check that cannot run before end of message (it reads the body, or a step that does), the
  DNS questions it will ask, known at its lookup stage, so they can be asked then, side by side.

`start_early` runs at each stage (MAIL FROM, end of headers) with what is known then: a step whose lookup stage
has come, whose needs have started and which reads no body runs at once on a worker (early.py); the others have
their lookups prefetched. `evaluate` at end of message takes what the early steps gave, runs the rest in table
order, and with no early work (`[dns] early_lookups = no`, `authmilter check`) it is the serial code. The order is not written down by hand: `order_checks()` sorts
the table topologically (authentication_milter's `sort_callbacks`), keeping the declared order where the
dependencies allow, and refuses a cycle or a missing dependency at import time, so a bad table never reaches a
message. The declared order is also the order of the methods in the header and the log line.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any

from authmilter.checkresults import Results, StepOutput, dnssec_summary
from authmilter.checks import forwarder as forwarder_check
from authmilter.checks.arc import check as arc_check
from authmilter.checks import iprev as iprev_check
from authmilter.checks import singletons as singletons_check
from authmilter.checks import relayed as relayed_check
from authmilter.checks import sender as sender_check
from authmilter.checks import spf as spf_check
from authmilter.checks import srs as srs_check
from authmilter.checks.dkim import check as dkim_check
from authmilter.checks.dmarc import check as dmarc_check
from authmilter.config import Config, TrustSection
from authmilter.context import Connection, Message, MessageContext, unmapped
from authmilter.early import EarlyWork
from authmilter.errors import AuthmilterError
from authmilter.resolver import DnsClient
from authmilter.results import Dnssec, Status

log = logging.getLogger(__name__)


class Stage(IntEnum):
    """The milter stages, in the order Postfix reaches them."""

    CONNECT = 1
    HELO = 2
    MAIL = 3
    RCPT = 4
    EOH = 5   # end of headers: Postfix replays header and body after the final dot, so this is just before EOM
    EOM = 6


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


StageRule = Stage | Callable[[Connection, Config], Stage]


@dataclass(frozen=True, slots=True)
class CheckSpec:
    name: str
    needs: tuple[str, ...]
    run: Callable[[Inputs], Any]
    enabled: Callable[[Config], bool] = lambda cfg: True
    lookup_stage: StageRule = Stage.EOM
    due_stage: Stage = Stage.EOM
    # Its output is a checkresults.MethodResult: shown in the header, the log line and the DNSSEC summary.
    shown: bool = False
    # An RFC 8601 method: the log line has its key ("-") even when it did not run, so it can be grepped.
    always_logged: bool = False
    body_plan: Callable[[Message, Config], frozenset] | None = None
    # The (name, type) questions it will ask first, from what is known at its lookup stage (only ctx, cfg and now
    # are read). For a step that runs before end of message they also say whether it would wait for the network
    # (none of them cached): a step without them is taken to make no lookup of its own and runs on demand.
    prefetch: Callable[[Inputs], Iterable[tuple[str, str]]] | None = None

    def stage_for(self, conn: Connection, cfg: Config) -> Stage:
        """The stage at which this step's lookups can start for this client."""
        return self.lookup_stage(conn, cfg) if callable(self.lookup_stage) else self.lookup_stage


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

def _run_relay(i: Inputs):
    return relayed_check.relayed_client(i.ctx, i.cfg.trust)


def _run_iprev(i: Inputs):
    conn, relay = relayed_check.judged_connection(i.ctx, i.cfg.trust)
    if conn is None:
        # RFC 8601 §2.7.3: the evaluation cannot be completed, and retrying will not change the header.
        return iprev_check.IprevResult(Status.PERMERROR, reason=relay.note)
    return iprev_check.check_iprev(conn, i.dns, i.cfg.iprev)


def _run_srs(i: Inputs):
    return srs_check.parse_srs(i.ctx.envelope.mail_from)


def _run_spf(i: Inputs):
    # SPF always runs on the envelope as received: an SRS address is checked against the forwarder's domain, and
    # the result names the original sender beside it. Behind a relay of ours it judges the client the relay
    # recorded; when that cannot be read, no address at all (none, with the reason), never the relay's own.
    conn, relay = relayed_check.judged_connection(i.ctx, i.cfg.trust)
    result = spf_check.check_spf(conn or Connection(None), i.ctx.envelope, i.dns, i.cfg.spf)
    if relay is not None:
        result = spf_check.relayed(result, relay.note, readable=conn is not None)
    return dataclasses.replace(result, srs=i.done["srs"]) if i.done["srs"] is not None else result


def _run_sender(i: Inputs):
    return sender_check.check_sender_domain(i.ctx.envelope, i.dns)


def _run_forwarder(i: Inputs) -> str:
    # Behind a relay of ours the forwarder is the client the relay recorded, the one SPF judged (and iprev
    # confirmed); an unreadable record matches nothing, not even a [forwarders] network holding the relay.
    conn, _relay = relayed_check.judged_connection(i.ctx, i.cfg.trust)
    return forwarder_check.match_forwarder(conn or Connection(None), i.done["iprev"], i.cfg.forwarders)


def _run_author_domain(i: Inputs) -> str | None:
    return dmarc_check.author_domain(i.ctx.message)


def _run_dkim(i: Inputs):
    return dkim_check.check_dkim(i.ctx.message, i.dns, i.cfg.dkim, now=i.now, from_domain=i.done["author_domain"])


def _run_dmarc(i: Inputs):
    return dmarc_check.check_dmarc(i.ctx.message, i.done["spf"], i.done["dkim"], i.dns, i.cfg.dmarc)


def _iprev_prefetch(i: Inputs) -> Iterable[tuple[str, str]]:
    conn, _relay = relayed_check.judged_connection(i.ctx, i.cfg.trust)
    return iprev_check.first_lookups(conn) if conn is not None else []


def _sender_prefetch(i: Inputs) -> Iterable[tuple[str, str]]:
    return sender_check.first_lookups(i.ctx.envelope)


def _spf_prefetch(i: Inputs) -> Iterable[tuple[str, str]]:
    # The HELO check runs first, then MAIL FROM's: ask both first records at once.
    conn, _relay = relayed_check.judged_connection(i.ctx, i.cfg.trust)
    return spf_check.first_lookups(conn, i.ctx.envelope, i.cfg.spf) if conn is not None else []


def _dkim_prefetch(i: Inputs) -> Iterable[tuple[str, str]]:
    return dkim_check.key_lookups(i.ctx.message, i.cfg.dkim, dmarc_check.author_domain(i.ctx.message), now=i.now)


def _dmarc_prefetch(i: Inputs) -> Iterable[tuple[str, str]]:
    dkim_domains = dkim_check.signing_domains(i.ctx.message, i.cfg.dkim, dmarc_check.author_domain(i.ctx.message))
    conn, _relay = relayed_check.judged_connection(i.ctx, i.cfg.trust)
    return dmarc_check.discovery_lookups(i.ctx.message, i.ctx.envelope, conn or i.ctx.connection, dkim_domains,
                                         i.cfg.dmarc)


def _run_singletons(i: Inputs):
    return singletons_check.find_duplicates(i.ctx.message)


def _run_arc(i: Inputs):
    conn, _relay = relayed_check.judged_connection(i.ctx, i.cfg.trust)
    ip = unmapped(conn.client_ip) if conn is not None else None
    return arc_check.check_arc(i.ctx.message, i.dns, i.cfg.dkim, remote_ip=str(ip) if ip is not None else "")


def _arc_prefetch(i: Inputs) -> Iterable[tuple[str, str]]:
    return arc_check.key_lookups(i.ctx.message)


def _arc_body_plan(msg: Message, cfg: Config) -> frozenset:
    return arc_check.body_hash_keys(msg)


def _dkim_body_plan(msg: Message, cfg: Config) -> frozenset:
    # The same steps as the table: the author domain orders the signatures, and dkim picks them.
    return dkim_check.body_hash_keys(msg, cfg.dkim, dmarc_check.author_domain(msg))


def _unless_relayed(direct: Stage) -> StageRule:
    """`direct` for most clients; end of headers for one of [trust] relays, whose client is in a Received header."""
    def stage(conn: Connection, cfg: Config) -> Stage:
        return Stage.EOH if relayed_check.is_relay(conn.client_ip, cfg.trust) else direct
    return stage


CHECKS: tuple[CheckSpec, ...] = (
    # Whom a relay of ours received the message from: first, so the log line names the relay up front.
    CheckSpec("relay", (), _run_relay, lambda cfg: bool(cfg.trust.relays),
              lookup_stage=_unless_relayed(Stage.CONNECT), shown=True),
    CheckSpec("iprev", (), _run_iprev, lambda cfg: cfg.iprev.enabled,
              lookup_stage=_unless_relayed(Stage.CONNECT), shown=True, always_logged=True,
              prefetch=_iprev_prefetch),
    CheckSpec("srs", (), _run_srs, lookup_stage=Stage.MAIL, shown=True),
    CheckSpec("spf", ("srs",), _run_spf, lambda cfg: cfg.spf.enabled,
              lookup_stage=_unless_relayed(Stage.MAIL), shown=True, always_logged=True, prefetch=_spf_prefetch),
    # The sender-domain check reads only MAIL FROM, whoever the client is: it stays at MAIL even behind a relay.
    CheckSpec("sender", (), _run_sender, lookup_stage=Stage.MAIL, shown=True, prefetch=_sender_prefetch),
    # No configured forwarder means nobody can match: skip the call rather than ask for nothing.
    CheckSpec("forwarder", ("iprev",), _run_forwarder,
              lambda cfg: bool(cfg.forwarders.networks or cfg.forwarders.hostnames),
              lookup_stage=_unless_relayed(Stage.CONNECT)),
    CheckSpec("author_domain", (), _run_author_domain, lambda cfg: cfg.dkim.enabled, lookup_stage=Stage.EOH),
    CheckSpec("dkim", ("author_domain",), _run_dkim, lambda cfg: cfg.dkim.enabled,
              lookup_stage=Stage.EOH, shown=True, always_logged=True, body_plan=_dkim_body_plan,
              prefetch=_dkim_prefetch),
    CheckSpec("dmarc", ("spf", "dkim"), _run_dmarc, lambda cfg: cfg.dmarc.enabled,
              lookup_stage=Stage.EOH, shown=True, always_logged=True, prefetch=_dmarc_prefetch),
    # Always found (one pass over the header), whatever the action: "accept" still records them (issue 14).
    CheckSpec("singletons", (), _run_singletons, lookup_stage=Stage.EOH, shown=True),
    # Opt-in (issue 14): with [arc] enabled every checked message gets an arc= entry, "none" without ARC sets.
    CheckSpec("arc", (), _run_arc, lambda cfg: cfg.arc.enabled,
              lookup_stage=Stage.EOH, shown=True, body_plan=_arc_body_plan, prefetch=_arc_prefetch),
)

ORDERED_CHECKS = order_checks(CHECKS)


# ---------------------------------------------------------------- per recipient

@dataclass(frozen=True, slots=True)
class RecipientInputs:
    rcpt: str
    cfg: Config
    now: float


@dataclass(frozen=True, slots=True)
class RecipientCheckSpec:
    """A check of one RCPT TO address, due at RCPT: its output is read by policy.decide_recipient."""

    name: str
    run: Callable[[RecipientInputs], Any]
    enabled: Callable[[Config], bool] = lambda cfg: True
    due_stage: Stage = Stage.RCPT


def _run_srs_bounce(i: RecipientInputs):
    return srs_check.verify_bounce(i.rcpt, i.cfg.srs, i.now)


RECIPIENT_CHECKS: tuple[RecipientCheckSpec, ...] = (
    RecipientCheckSpec("srs_bounce", _run_srs_bounce),
)


def evaluate_recipient(rcpt: str, cfg: Config, *, now: float,
                       checks: Sequence[RecipientCheckSpec] = RECIPIENT_CHECKS) -> Mapping[str, Any]:
    """Every enabled recipient check for one RCPT TO address: name -> output (None when disabled)."""
    inputs = RecipientInputs(rcpt, cfg, now)
    return MappingProxyType({spec.name: spec.run(inputs) if spec.enabled(cfg) else None for spec in checks})


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


def body_plan(conn: Connection, msg: Message, cfg: Config,
              checks: Sequence[CheckSpec] = ORDERED_CHECKS) -> frozenset:
    """The body hashes the checks will need for a message with these headers (known at end of headers), so the
    adapter can stream the body into them and keep none of it. Empty when nothing will read the body."""
    if skip_reason(conn, cfg.trust):
        return frozenset()
    keys: set = set()
    for spec in checks:
        if spec.body_plan is not None and spec.enabled(cfg):
            keys |= spec.body_plan(msg, cfg)
    return frozenset(keys)


def start_early(work: EarlyWork, stage: Stage, ctx: MessageContext, cfg: Config, *, now: float,
                checks: Sequence[CheckSpec] = ORDERED_CHECKS) -> None:
    """At `stage`, with the facts known by then in `ctx`: start every step that can run now, and prefetch the
    lookups of those that must wait for the body. A step started at an earlier stage is not started again."""
    if skip_reason(ctx.connection, cfg.trust):
        return
    conn = ctx.connection
    for spec in checks:
        if work.has(spec.name) or not spec.enabled(cfg) or spec.stage_for(conn, cfg) > stage:
            continue
        needs_ready = all(work.has(need) or not _spec(checks, need).enabled(cfg) for need in spec.needs)
        runs_now = spec.body_plan is None and needs_ready
        if not runs_now and (spec.prefetch is None or work.prefetched(spec.name)):
            continue
        try:
            lookups = list(spec.prefetch(Inputs(ctx, work.dns, cfg, now, MappingProxyType({})))) \
                if spec.prefetch is not None else []
        except Exception:  # only a head start is lost: the check still asks for itself at end of message
            log.exception("prefetch of %s failed", spec.name)
            lookups = None
        if not runs_now:
            if lookups:
                work.prefetch(spec.name, lookups)
            continue
        # A step goes to a worker only when it will wait for the network: its first lookups are not all in the
        # cache. With a warm cache (or no lookup at all) it runs on demand, at end of message, in microseconds.
        cold = [question for question in lookups or () if not work.dns.is_cached(*question)]
        if len(cold) > 1:  # the step asks the first itself; the others (SPF's second identity) side by side
            work.prefetch(spec.name, cold[1:])
        work.start(spec.name, functools.partial(_run_early, spec, work, ctx, cfg, now),
                   on_worker=bool(cold) or lookups is None)


def _run_early(spec: CheckSpec, work: EarlyWork, ctx: MessageContext, cfg: Config, now: float) -> Any:
    done = {need: work.result(need) if work.has(need) else None for need in spec.needs}
    return spec.run(Inputs(ctx, work.dns, cfg, now, MappingProxyType(done)))


def _spec(checks: Sequence[CheckSpec], name: str) -> CheckSpec:
    return next(spec for spec in checks if spec.name == name)


def evaluate(ctx: MessageContext, dns: DnsClient, cfg: Config, *, now: float,
             checks: Sequence[CheckSpec] | None = None, early: EarlyWork | None = None) -> Results:
    """Run every enabled check for one message. A check that raises is a bug and is not caught here: the adapter
    turns it into the configured error action. With `early`, the steps it started are waited for (their lookups
    went through `early.dns`, which is then the message's DNS client), and the rest run here."""
    ordered = ORDERED_CHECKS if checks is None else order_checks(checks)
    if early is not None:
        dns = early.dns
    skipped = skip_reason(ctx.connection, cfg.trust)
    if skipped:
        return Results(_outputs(ordered, {}), skipped=skipped, dns_queries=dns.query_count,
                       dns_deadline_expired=dns.deadline_expired)
    done: dict[str, Any] = {}
    view = MappingProxyType(done)
    for spec in ordered:
        if not spec.enabled(cfg):
            done[spec.name] = None
        elif early is not None and early.has(spec.name):
            done[spec.name] = early.result(spec.name)
        else:
            done[spec.name] = spec.run(Inputs(ctx, dns, cfg, now, view))
    steps = _outputs(ordered, done)
    extra = early.dns.settle() if early is not None else 0  # first: the query count is final once settled
    return Results(steps, dns_queries=dns.query_count, dns_deadline_expired=dns.deadline_expired,
                   dnssec=dnssec_summary(steps), dns_extra=extra)


def _outputs(ordered: Sequence[CheckSpec], done: Mapping[str, Any]) -> tuple[StepOutput, ...]:
    # In declared order (the header's and the log's), whatever order the dependencies ran them in.
    declared = sorted(ordered, key=lambda spec: _DECLARED.get(spec.name, len(_DECLARED)))
    return tuple(StepOutput(spec.name, done.get(spec.name), spec.shown, spec.always_logged) for spec in declared)


_DECLARED = {spec.name: position for position, spec in enumerate(CHECKS)}


def results_of(*, skipped: str = "", dns_queries: int = 0, dns_deadline_expired: bool = False,
               dnssec: Dnssec | None = None, **outputs: Any) -> Results:
    """Results as `evaluate` would give them, from step outputs by name (for tests and tools): the table's order,
    flags and DNSSEC summary (unless `dnssec` is given), with None for every step not named."""
    unknown = set(outputs) - set(_DECLARED)
    if unknown:
        raise PipelineError(f"no such step(s) {sorted(unknown)}")
    steps = _outputs(ORDERED_CHECKS, outputs)
    return Results(steps, skipped=skipped, dns_queries=dns_queries, dns_deadline_expired=dns_deadline_expired,
                   dnssec=dnssec_summary(steps) if dnssec is None else dnssec)
