"""FCrDNS / iprev (RFC 8601 §3): PTR of the client IP, then A/AAAA of each name back to the IP.

Result words follow RFC 8601 §2.7.3:
  pass      a PTR name's forward lookup contains the client IP
  fail      PTR names exist, but none resolves back (forward lookups answered without the IP, or empty)
  temperror the PTR lookup failed, or a forward lookup failed and no other name confirmed the IP
  permerror no PTR data is published for the IP (NXDOMAIN or NODATA on the reverse name)

A connection without a client IP (a unix-socket test connection, or Postfix not telling) has nothing to check:
check_iprev returns status NONE, which is not an RFC 8601 iprev word, so ar_entries() writes no iprev entry at all.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from authmilter.config import IprevSection
from authmilter.context import Connection, IPAddress, unmapped
from authmilter.resolver import Answer, DnsClient
from authmilter.results import AREntry, Dnssec, Property, Status, weakest

# CONTRACT (other modules rely on these names; add fields freely, do not rename or remove):


@dataclass(frozen=True, slots=True)
class IprevResult:
    status: Status                  # pass, fail, temperror, permerror; none when there was no client IP
    client_ip: str = ""
    confirmed_name: str = ""        # the PTR name that resolved back to the IP (pass only)
    reason: str = ""
    dnssec: Dnssec = Dnssec.INDETERMINATE
    ptr_names: tuple[str, ...] = ()  # the PTR names followed (printable form), for the log and debugging
    names_ignored: int = 0          # PTR names beyond [iprev] max_names, not followed

    def ar_entries(self) -> tuple[AREntry, ...]:
        if self.status is Status.NONE:
            return ()
        comment = f"dnssec={self.dnssec}"
        if self.status is not Status.PASS and self.reason:
            comment = f"{self.reason}; {comment}"
        # The host goes in a comment on policy.iprev, as Fastmail's authentication_milter writes it: a
        # reader sees which name confirmed the address without a second property type.
        prop = Property("policy", "iprev", self.client_ip, comment=self.confirmed_name)
        # No address (a relay's Received header that could not be read): the reason says so, no empty property.
        return (AREntry("iprev", str(self.status), comment, (prop,) if self.client_ip else ()),)

    def dnssec_statuses(self) -> tuple[Dnssec, ...]:
        # No client IP (or an unreadable relay record): nothing was looked up.
        return () if self.status is Status.NONE or not self.client_ip else (self.dnssec,)

    def log_fields(self) -> dict[str, str]:
        if self.status is Status.NONE:
            return {"iprev": str(self.status)}
        fields = {"iprev": str(self.status), "iprev_dnssec": str(self.dnssec)}
        if self.confirmed_name:
            fields["iprev_host"] = self.confirmed_name
        if self.reason:
            fields["iprev_reason"] = self.reason
        return fields


def first_lookups(conn: Connection) -> list[tuple[str, str]]:
    """The PTR lookup check_iprev starts with (the forward lookups depend on its answer)."""
    ip = unmapped(conn.client_ip)
    return [] if ip is None else [(ip.reverse_pointer, "PTR")]


def check_iprev(conn: Connection, dns: DnsClient, cfg: IprevSection) -> IprevResult:
    """Forward-confirm the client's reverse DNS; never raises for anything DNS returns."""
    ip = unmapped(conn.client_ip)  # a v4 client on a v6 socket has its PTR under in-addr.arpa
    if ip is None:
        return IprevResult(Status.NONE, reason="no client IP address")
    client = str(ip)
    reverse = dns.query(ip.reverse_pointer, "PTR")
    if reverse.outcome.is_temporary:
        return IprevResult(Status.TEMPERROR, client, reason=f"PTR lookup: {reverse.problem}",
                           dnssec=reverse.dnssec)
    names = _ptr_names(reverse)
    if not names:
        # RFC 8601 §2.7.3: no PTR data published (NXDOMAIN or NOERROR without answers) is permerror.
        return IprevResult(Status.PERMERROR, client, reason="no PTR record", dnssec=reverse.dnssec)

    followed, ignored = names[:cfg.max_names], len(names) - min(len(names), cfg.max_names)
    shown = tuple(printable_name(n) for n in followed)
    rdtype = "A" if ip.version == 4 else "AAAA"
    statuses = [reverse.dnssec]
    temporary: Answer | None = None
    for name in followed:
        forward = dns.query(name, rdtype)
        statuses.append(forward.dnssec)
        if forward.ok and _contains(forward, ip):
            # The PTR and the confirming forward answer are the only lookups this pass rests on.
            return IprevResult(Status.PASS, client, printable_name(name),
                               dnssec=weakest(reverse.dnssec, forward.dnssec), ptr_names=shown,
                               names_ignored=ignored)
        if forward.outcome.is_temporary and temporary is None:
            temporary = forward
    dnssec = weakest(*statuses)
    extra = f", {ignored} more not followed" if ignored else ""
    if temporary is not None:
        # RFC 8601 §2.7.3: a transient DNS error leaves the evaluation incomplete; a retry may confirm.
        return IprevResult(Status.TEMPERROR, client,
                           reason=f"{rdtype} lookup of {printable_name(temporary.name)}: {temporary.problem}",
                           dnssec=dnssec, ptr_names=shown, names_ignored=ignored)
    # RFC 8601 §2.7.3: reverse and forward both answered but disagree, or the forward lookup was empty.
    return IprevResult(Status.FAIL, client,
                       reason=f"{_count(len(followed))} not resolving to {client}{extra}",
                       dnssec=dnssec, ptr_names=shown, names_ignored=ignored)


def printable_name(name: str) -> str:
    """A DNS name as text that cannot break a header or log line: lowercase, without the trailing dot, and
    bytes outside printable ASCII (CR, LF, space, controls, non-ASCII) in DNS presentation form \\DDD."""
    name = name.rstrip(".").lower()
    if name.isascii() and name.isprintable() and " " not in name:
        return name
    return "".join(ch if (ch.isascii() and ch.isprintable() and ch != " ") else _octets(ch) for ch in name)


def _octets(ch: str) -> str:
    # The resolver hands non-ASCII octets over as Latin-1 characters; anything wider came from elsewhere.
    raw = ch.encode("latin-1") if ord(ch) < 256 else ch.encode("utf-8", "surrogateescape")
    return "".join(f"\\{b:03d}" for b in raw)


def _ptr_names(answer: Answer) -> tuple[str, ...]:
    if not answer.ok:
        return ()
    seen: dict[str, None] = {}
    for record in answer.records:
        if isinstance(record, str) and record.strip("."):
            seen.setdefault(record.rstrip("."), None)
    return tuple(seen)


def _contains(answer: Answer, ip: IPAddress) -> bool:
    for record in answer.records:
        try:
            if ipaddress.ip_address(record) == ip:
                return True
        except ValueError:
            continue  # an unusable record is simply not a match
    return False


def _count(n: int) -> str:
    return "1 PTR name" if n == 1 else f"{n} PTR names"
