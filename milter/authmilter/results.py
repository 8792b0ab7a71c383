"""Typed result values shared by every check, and the neutral form the A-R renderer consumes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """RFC 8601 §2.7 result words."""

    PASS = "pass"            # the identity is authorised / the signature verified
    FAIL = "fail"            # explicitly not authorised / signature or alignment failed
    SOFTFAIL = "softfail"    # SPF only: probably not authorised (RFC 7208 §2.6.5)
    NEUTRAL = "neutral"      # no assertion either way, or a malformed signature (RFC 8601 §2.7.1)
    NONE = "none"            # nothing to check: no record, no signature
    POLICY = "policy"        # verified, but our local policy refuses it (rsa-sha1, short key, expiry)
    TEMPERROR = "temperror"  # a transient failure, usually DNS; retrying may succeed
    PERMERROR = "permerror"  # a permanent error in the published data


class Dnssec(StrEnum):
    """How far the DNS answers behind a result can be trusted.

    A result is only as secure as the weakest answer it used: see weakest().
    """

    SECURE = "secure"                # every answer carried AD from a resolver we trust
    INSECURE = "insecure"            # answers were validated as provably unsigned, or AD was absent
    INDETERMINATE = "indeterminate"  # we cannot tell: AD is not trusted from this resolver, or no lookup ran


_STRENGTH = {Dnssec.SECURE: 2, Dnssec.INSECURE: 1, Dnssec.INDETERMINATE: 0}


def weakest(*statuses: Dnssec) -> Dnssec:
    """The least trustworthy of the given statuses; INDETERMINATE when none are given."""
    if not statuses:
        return Dnssec.INDETERMINATE
    return min(statuses, key=_STRENGTH.__getitem__)


@dataclass(frozen=True, slots=True)
class Property:
    """One RFC 8601 property, e.g. Property("smtp", "mailfrom", "user@example.org")."""

    ptype: str
    name: str
    value: str
    comment: str = ""  # rendered after the property, e.g. iprev's "policy.iprev=192.0.2.1 (mail.example.org)"


@dataclass(frozen=True, slots=True)
class AREntry:
    """One method result as it will appear in the Authentication-Results header.

    Values here are raw (unsanitized); renderer.py does all quoting and cleaning in one place.
    """

    method: str
    result: str
    comment: str | None = None  # rendered after the result: "dnssec=insecure", "2048-bit rsa key; dnssec=secure"
    properties: tuple[Property, ...] = ()


@dataclass(frozen=True, slots=True)
class Note:
    """A remark a policy decision adds beside one method's result in the header, e.g. why a fail did not count.

    It goes on the entries of `method` (and, when `on` names a property type and name, only on those carrying it).
    """

    method: str
    text: str
    on: tuple[str, str] | None = None


class Action(StrEnum):
    """What the milter does with a message or a recipient."""

    ACCEPT = "accept"          # accept and record the result in the header and log
    REJECT = "reject"          # 5xx
    TEMPFAIL = "tempfail"      # 4xx
    QUARANTINE = "quarantine"  # accept, but Postfix holds the message (milter quarantine)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One decision with a named reason, e.g. Verdict(REJECT, "550", "5.7.1", "...", "dmarc_reject")."""

    action: Action
    code: str = ""          # SMTP reply code for reject/tempfail
    status: str = ""        # RFC 3463 enhanced status code
    text: str = ""          # reply text (policy.py makes it safe for libmilter)
    reason: str = "accept"  # short machine-friendly name for the log line
    overridden: str = ""    # a policy override type (RFC 7489 appendix C: trusted_forwarder, local_policy...)
    notes: tuple[Note, ...] = ()  # shown beside the results in the header (policy.header_notes)


ACCEPT = Verdict(Action.ACCEPT)
