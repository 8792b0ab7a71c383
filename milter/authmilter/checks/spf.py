"""SPF (RFC 7208) for the MAIL FROM and HELO identities, with pyspf doing the evaluation through our DnsClient."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import spf as pyspf

from authmilter.config import SpfSection
from authmilter.context import Connection, Envelope, unmapped
from authmilter.resolver import Answer, DnsClient, Outcome
from authmilter.results import AREntry, Dnssec, Property, Status, weakest

if TYPE_CHECKING:
    from authmilter.checks.srs import SrsInfo

log = logging.getLogger(__name__)

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
    mechanism: str = ""    # the top-level mechanism that matched ("" when none did); raw, from DNS


@dataclass(frozen=True, slots=True)
class SpfResult:
    """mailfrom is the MAIL FROM result; for the null sender it is the postmaster@HELO result (RFC 7208 §2.4)."""

    mailfrom: SpfIdentityResult
    helo: SpfIdentityResult | None = None  # when the HELO identity was checked too
    srs: SrsInfo | None = None             # MAIL FROM was an SRS address: named beside the MAIL FROM result
    relay: str = ""                        # behind a relay of ours: which address was judged, and who recorded it

    def ar_entries(self) -> tuple[AREntry, ...]:
        # RFC 8601 §2.7.2: smtp.mailfrom carries the full address that was checked; for the null sender that is
        # postmaster@HELO, so a reader sees which identity produced the result.
        note = "; ".join(part for part in (self.srs.note if self.srs is not None else "", self.relay) if part)
        entries = [_ar_entry(self.mailfrom, Property("smtp", "mailfrom", self.mailfrom.sender), note)]
        if self.helo is not None:
            entries.append(_ar_entry(self.helo, Property("smtp", "helo", self.helo.domain), self.relay))
        return tuple(entries)

    def dnssec_statuses(self) -> tuple[Dnssec, ...]:
        return (self.mailfrom.dnssec,) + ((self.helo.dnssec,) if self.helo is not None else ())

    def log_fields(self) -> dict[str, str]:
        fields = {"spf": str(self.mailfrom.status)}
        if self.helo is not None:
            fields["spf_helo"] = str(self.helo.status)
        fields["spf_dnssec"] = str(self.mailfrom.dnssec)
        return fields


def relayed(result: SpfResult, note: str, *, readable: bool) -> SpfResult:
    """`result` for a message from a relay of ours ([trust] relays): `note` names the judged client, or says why
    the relay's Received header could not be read. Then no address was judged (check_spf ran without one): the
    MAIL FROM result is none with that reason (RFC 7208 §2.6.1: nothing could be evaluated), and there is no HELO
    result, since the HELO name is unknown too."""
    if readable:
        return dataclasses.replace(result, relay=note)
    mailfrom = dataclasses.replace(result.mailfrom, status=Status.NONE, reason=note, explanation="", mechanism="")
    return dataclasses.replace(result, mailfrom=mailfrom, helo=None)


# ---------------------------------------------------------------- A-R entries

def _ar_entry(result: SpfIdentityResult, prop: Property, note: str = "") -> AREntry:
    comment = "; ".join(part for part in (f"dnssec={result.dnssec}", result.reason, note) if part)
    return AREntry("spf", str(result.status), comment, (prop,))


# ---------------------------------------------------------------- the DNS bridge to pyspf

@dataclass(slots=True)
class _Lookups:
    """The DNS of one identity check: which client answers, and the DNSSEC status of every answer used."""

    dns: DnsClient
    dnssec: list[Dnssec] = field(default_factory=list)

    def query(self, name: str, rdtype: str) -> Answer:
        answer = self.dns.query(name, rdtype)
        if answer.outcome is not Outcome.INVALID_NAME:  # nothing was asked, so nothing to trust or distrust
            self.dnssec.append(answer.dnssec)
        return answer


_current: ContextVar[_Lookups | None] = ContextVar("authmilter_spf_lookups", default=None)


def _pyspf_lookup(name, qtype, strict=True, timeout=None):
    """pyspf's process-wide DNS hook, routed to the DnsClient of the check running in this thread/context.

    Returns what pyspf's DNSLookup_dnspython returns: [((name, qtype), value), ...].
    """
    lookups = _current.get()
    if lookups is None:
        # pyspf must never fall back to its own resolver: a lookup outside check_spf is a bug, reported as an
        # SPF temporary error rather than a query to some other DNS server.
        raise pyspf.TempError(f"DNS lookup of {name}/{qtype} outside an SPF check")
    name = str(name).rstrip(".")
    answer = lookups.query(name, qtype)
    if answer.outcome.is_temporary:
        # RFC 7208 §5: a DNS error other than "no such name" ends the evaluation with temperror.
        raise pyspf.TempError(f"DNS {answer.problem} for {name}/{qtype}")
    if not answer.ok:
        # NXDOMAIN and NODATA are void lookups (RFC 7208 §4.6.4); pyspf counts an empty list as one.
        return []
    key = (name, qtype)
    if qtype in ("TXT", "SPF"):
        # pyspf joins each record's strings itself; ours are already concatenated (RFC 7208 §3.3).
        return [(key, (record,)) for record in answer.records]
    return [(key, record) for record in answer.records]


pyspf.DNSLookup = _pyspf_lookup


class _Query(pyspf.query):
    def validated_ptrs(self):
        """RFC 7208 §5.5: "If a DNS error occurs while doing an A RR lookup, then that domain name is skipped and
        the search continues." pyspf lets the error end the whole check as temperror (suite case
        ptr-cname-loop); the same list also feeds the %{p} macro (§7.3), which follows the same rule."""
        validated = []
        for name in self.dns_ptr(self.i)[:pyspf.MAX_PTR]:  # §4.6.4: at most 10 PTR names are looked up
            try:
                addresses = self.dns_a(name, self.A)
            except pyspf.TempError:
                continue
            if self.cidrmatch(addresses, self.cidrmax):
                validated.append(name)
        return validated


# ---------------------------------------------------------------- identities

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_\-\u0080-\U0010ffff]{1,63}(?<!-)$")


def _domain_problem(domain: str) -> str:
    """Why `domain` cannot be an SPF domain (RFC 7208 §4.3), or "" when it can."""
    if not domain:
        return "no domain"
    if domain.startswith("["):
        return "address literal"
    labels = domain.split(".")
    if len(labels) < 2:
        return "not a fully qualified domain name"
    if len(domain) > 253 or not all(_LABEL.match(label) for label in labels):
        return "malformed domain"
    return ""


def _helo_problem(helo: str) -> str:
    """Why the HELO identity cannot be checked (RFC 7208 §2.3: only a valid FQDN), or "" when it can."""
    name = helo.rstrip(".")
    try:
        ipaddress.ip_address(name.strip("[]"))
        return "HELO is an address, not a domain"
    except ValueError:
        pass
    problem = _domain_problem(name)
    return f"HELO {problem}" if problem else ""


def _split_sender(mail_from: str) -> tuple[str, str]:
    """(local-part, domain) per RFC 7208 §4.3: a missing local-part becomes "postmaster"."""
    local, at, domain = mail_from.rpartition("@")
    if not at:
        return "postmaster", mail_from
    return local or "postmaster", domain


def check_spf(conn: Connection, env: Envelope, dns: DnsClient, cfg: SpfSection) -> SpfResult:
    if not env.mail_from:
        # RFC 7208 §2.4: with the null reverse-path, the MAIL FROM check is the HELO check (postmaster@HELO);
        # one evaluation serves both entries.
        helo_result = _check_helo(conn, dns)
        return SpfResult(helo_result, helo_result if cfg.check_helo else None)
    helo_result = _check_helo(conn, dns) if cfg.check_helo else None
    local, domain = _split_sender(env.mail_from)
    domain = domain.rstrip(".")
    mailfrom = _evaluate(conn, "mailfrom", local, domain, conn.helo, dns, problem=_domain_problem(domain))
    return SpfResult(mailfrom, helo_result)


def first_lookups(conn: Connection, env: Envelope, cfg: SpfSection) -> list[tuple[str, str]]:
    """The record lookups check_spf starts with (HELO's, then MAIL FROM's), so both can be asked at once; the
    rest of an evaluation depends on what those records say."""
    if conn.client_ip is None:
        return []
    helo = conn.helo.rstrip(".")
    names = [helo] if (cfg.check_helo or not env.mail_from) and not _helo_problem(conn.helo) else []
    if env.mail_from:
        domain = _split_sender(env.mail_from)[1].rstrip(".")
        if not _domain_problem(domain):
            names.append(domain)
    return [(name, "TXT") for name in names]


def _check_helo(conn: Connection, dns: DnsClient) -> SpfIdentityResult:
    # RFC 7208 §2.3: the HELO check is check_host() on the HELO domain with sender postmaster@HELO.
    helo = conn.helo.rstrip(".")
    return _evaluate(conn, "helo", "postmaster", helo, helo, dns, problem=_helo_problem(conn.helo))


_PREFIXES = ("SPF Permanent Error: ", "SPF Temporary Error: ")
_MAX_REASON = 160


def _evaluate(conn: Connection, identity: str, local: str, domain: str, helo: str, dns: DnsClient,
              *, problem: str) -> SpfIdentityResult:
    sender = f"{local}@{domain}"
    if problem:
        # RFC 7208 §4.3: a malformed or single-label domain, or an address literal, is "none" without any lookup.
        return SpfIdentityResult(identity, sender, domain, Status.NONE, problem)
    if conn.client_ip is None:
        return SpfIdentityResult(identity, sender, domain, Status.NONE, "client address unknown")
    lookups = _Lookups(dns)
    token = _current.set(lookups)
    try:
        # The one place where pyspf's exceptions become results: check() itself maps TempError/PermError; anything
        # else it raises on hostile data (recursion, odd encodings) is a permanent problem with that data.
        try:
            query = _Query(i=str(conn.client_ip), s=sender, h=helo, strict=True)
            # pyspf splits at the first "@"; the domain is what follows the last one (RFC 5321 §4.1.2).
            query.l, query.o, query.d = local, domain, domain
            query.ident = identity
            # With an empty default, pyspf's explanation is exactly the domain's exp= text (RFC 7208 §6.2).
            query.set_default_explanation("")
            word, _code, text = query.check()
        except (pyspf.PermError, pyspf.TempError) as exc:  # raised by the constructor for a bad client IP
            word, text, query = ("temperror" if isinstance(exc, pyspf.TempError) else "permerror"), str(exc), None
        except Exception as exc:  # noqa: BLE001 - see above; logged with its traceback for the developers
            log.warning("pyspf failed on %s identity %r", identity, domain, exc_info=True)
            word, text, query = "permerror", f"SPF evaluation failed: {type(exc).__name__}", None
    finally:
        _current.reset(token)
    try:
        status = Status(word)
    except ValueError:  # "ambiguous" and friends only exist in pyspf's harsh mode
        status = Status.PERMERROR
    mechanism = (getattr(query, "mechanism", None) or "") if query is not None else ""
    return SpfIdentityResult(
        identity, sender, domain, status,
        reason=_reason(status, text, mechanism),
        explanation=text if status is Status.FAIL else "",
        dnssec=weakest(*lookups.dnssec),
        mechanism=mechanism,
    )


def _reason(status: Status, text: str, mechanism: str) -> str:
    if status in (Status.PERMERROR, Status.TEMPERROR):
        for prefix in _PREFIXES:
            text = text.removeprefix(prefix)
        return text[:_MAX_REASON]
    if status is Status.NONE:
        return "no SPF record"
    if status is Status.PASS:
        return ""
    if mechanism:
        return f"matched {mechanism}"[:_MAX_REASON]
    return "no mechanism matched"
