"""The only module that talks DNS.

Every check asks a DnsClient for (name, type) and gets an Answer that says what happened and how far it can be
trusted. A DnsClient is per message: it carries the message's Deadline, counts queries and remembers the weakest
DNSSEC status it saw. The Resolver behind it is long-lived and owns the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from authmilter.results import Dnssec


class Outcome(StrEnum):
    """What a lookup ended in."""

    ANSWER = "answer"              # NOERROR with records of the asked type (CNAMEs followed)
    NODATA = "nodata"              # NOERROR, the name exists, no records of that type
    NXDOMAIN = "nxdomain"          # the name does not exist
    SERVFAIL = "servfail"          # the server failed, including DNSSEC validation failure (bogus)
    TIMEOUT = "timeout"            # no answer in time, or the message's DNS deadline is spent
    ERROR = "error"                # a malformed or unusable answer, a CNAME loop, refused
    INVALID_NAME = "invalid_name"  # the name cannot be queried (empty label, too long, bad IDNA); nothing sent

    @property
    def is_temporary(self) -> bool:
        """RFC 7208 §5 and RFC 6376 §6.1.2: these map to temperror."""
        return self in (Outcome.SERVFAIL, Outcome.TIMEOUT, Outcome.ERROR)

    @property
    def is_empty(self) -> bool:
        """NXDOMAIN or NODATA: RFC 7208 §4.6.4 counts these as void lookups."""
        return self in (Outcome.NXDOMAIN, Outcome.NODATA)


@dataclass(frozen=True, slots=True)
class Answer:
    """The result of one lookup.

    records, by rdtype:
      A, AAAA      -> str (address text, e.g. "192.0.2.1", "2001:db8::1")
      TXT, SPF     -> bytes (each record's character-strings concatenated, RFC 7208 §3.3 / RFC 6376 §3.6.2.2)
      MX           -> tuple[int, str] (preference, exchange without trailing dot; "" for the null MX ".")
      PTR, CNAME, NS -> str (target without trailing dot)
    """

    name: str                      # the name as asked (A-label form), without trailing dot
    rdtype: str
    outcome: Outcome
    records: tuple = ()
    dnssec: Dnssec = Dnssec.INDETERMINATE
    ttl: int = 0
    detail: str = ""               # short human reason for anything but ANSWER, safe to log after sanitizing

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.ANSWER


class DnsClient(Protocol):
    """What every check uses for DNS. One instance per message."""

    def query(self, name: str, rdtype: str) -> Answer:
        """Look up name/rdtype. Never raises for anything the network or the name controls."""
        ...

    @property
    def query_count(self) -> int:
        """Queries sent or answered from cache for this message (for the log line)."""
        ...

    @property
    def deadline_expired(self) -> bool:
        """True once the message's DNS budget (time or query count) was spent and a lookup was refused for it."""
        ...
