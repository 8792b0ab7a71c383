"""`authmilter check --zone FILE`: every DNS lookup answered from a zone file instead of a resolver.

An administrator tries a message against records before publishing them, and the README's examples work on a
machine with no DNS. The file is in master-file format (RFC 1035 §5) with absolute owner names, read by
dnspython's dns.zone; one zone with its SOA, or records of any names without one. Answers are what an
authoritative server would give for that data, in the same Answer/Outcome values as authmilter.resolver, so the
checks cannot tell the difference: a name with no records and nothing below it is NXDOMAIN, an existing name
(or one with names below it, RFC 8020) without the type is no data, CNAMEs are followed within the file, and
wildcards are expanded (RFC 4592). Nothing here is validated, so every answer's DNSSEC status is indeterminate.
"""

from __future__ import annotations

import threading
from pathlib import Path

import dns.exception
import dns.name
import dns.node
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer
import dns.ttl
import dns.zone

from authmilter.config import DnsSection
from authmilter.errors import AuthmilterError
from authmilter.resolver import MAX_CNAME_CHAIN, Answer, Outcome, _record, name_text, to_query_name
from authmilter.results import Dnssec

_WILDCARD = b"*"
NODATA = "no records of that type"  # the details the real resolver gives, as they may reach a header's comment


class ZoneFileError(AuthmilterError):
    """A zone file that cannot be used: "FILE: reason" (or "FILE:LINE: reason")."""


class ZoneData:
    """The records of one zone file, looked up as an authoritative server would answer."""

    def __init__(self, zone: dns.zone.Zone, source: str):
        self.source = source
        self._zone = zone
        # Every owner name and every name above one: a name in here exists (RFC 8020: names with only names
        # below them, "empty non-terminals", exist too), any other name is NXDOMAIN.
        self._existing: set[dns.name.Name] = set()
        for name in zone.nodes:
            while name not in self._existing:
                self._existing.add(name)
                if name == dns.name.root:
                    break
                name = name.parent()

    @classmethod
    def load(cls, path: str | Path) -> "ZoneData":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ZoneFileError(f"{path}: cannot read: {reason}") from None
        origin = _origin_of(text, str(path))
        try:
            # relativize=False keeps owner names absolute; check_origin=False accepts a file without SOA and NS.
            zone = dns.zone.from_text(text, origin=origin, relativize=False, check_origin=False,
                                      filename=str(path), allow_include=False)
        except dns.exception.DNSException as exc:
            raise ZoneFileError(_reason(str(path), exc)) from None
        except ValueError as exc:  # dnspython's transaction refuses e.g. a second SOA
            raise ZoneFileError(f"{path}: {exc}") from None
        return cls(zone, str(path))

    def answer(self, qname: dns.name.Name, rdtype: str) -> Answer:
        asked = name_text(qname)
        try:
            wanted = dns.rdatatype.from_text(rdtype)
        except dns.exception.DNSException:
            return Answer(asked, rdtype, Outcome.ERROR, detail=f"unknown record type {rdtype}")
        current = qname
        seen = {qname}
        ttl: int | None = None
        for _ in range(MAX_CNAME_CHAIN + 1):
            node = self._node(current)
            if node is None:
                # RFC 6604 §3: at the end of a CNAME chain, NXDOMAIN speaks of the chain's last name.
                if current in self._existing:
                    return Answer(asked, rdtype, Outcome.NODATA, dnssec=Dnssec.INDETERMINATE, detail=NODATA)
                return Answer(asked, rdtype, Outcome.NXDOMAIN, dnssec=Dnssec.INDETERMINATE, detail="NXDOMAIN")
            found = node.get_rdataset(dns.rdataclass.IN, wanted)
            if found is not None and len(found):
                ttl = found.ttl if ttl is None else min(ttl, found.ttl)
                return Answer(asked, rdtype, Outcome.ANSWER, tuple(_record(rdata) for rdata in found),
                              Dnssec.INDETERMINATE, ttl)
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME) \
                if wanted != dns.rdatatype.CNAME else None
            if cname is None or not len(cname):
                return Answer(asked, rdtype, Outcome.NODATA, dnssec=Dnssec.INDETERMINATE, detail=NODATA)
            ttl = cname.ttl if ttl is None else min(ttl, cname.ttl)
            current = next(iter(cname)).target
            if current in seen:
                return Answer(asked, rdtype, Outcome.ERROR, detail="CNAME loop")
            seen.add(current)
        return Answer(asked, rdtype, Outcome.ERROR, detail="CNAME chain too long")

    def _node(self, name: dns.name.Name) -> dns.node.Node | None:
        """The node that answers for name: its own, or a wildcard's (RFC 4592 §3.3.1) when name does not exist."""
        node = self._zone.nodes.get(name)
        if node is not None or name in self._existing:
            return node
        encloser = name.parent()
        while encloser not in self._existing and encloser != dns.name.root:
            encloser = encloser.parent()
        return self._zone.nodes.get(dns.name.Name((_WILDCARD, *encloser.labels)))


class ZoneResolver:
    """Stands where authmilter.resolver.Resolver stands in a Runtime: for_message() and close()."""

    def __init__(self, data: ZoneData, dns_cfg: DnsSection):
        self.data = data
        self.cfg = dns_cfg

    def for_message(self) -> "ZoneDns":
        return ZoneDns(self.data, self.cfg.max_queries)

    def close(self) -> None:
        pass  # nothing to release: the records are in memory


class ZoneDns:
    """The DnsClient of one message. The query limit of [dns] max_queries holds as with the real resolver, so
    a message that needs too many lookups gets the same temperror; time does not count, nothing waits."""

    def __init__(self, data: ZoneData, max_queries: int):
        self._data = data
        self._max_queries = max_queries
        self._lock = threading.Lock()
        self._count = 0
        self._expired = False

    @property
    def query_count(self) -> int:
        return self._count

    @property
    def deadline_expired(self) -> bool:
        return self._expired

    def query(self, name: str, rdtype: str) -> Answer:
        rdtype = str(rdtype).upper()
        qname = to_query_name(name)
        if isinstance(qname, str):
            return Answer(str(name).rstrip("."), rdtype, Outcome.INVALID_NAME, detail=qname)
        with self._lock:
            self._count += 1
            if self._count > self._max_queries:
                self._expired = True
                return Answer(name_text(qname), rdtype, Outcome.TIMEOUT,
                              detail=f"DNS query limit of the message ({self._max_queries}) spent")
        return self._data.answer(qname, rdtype)


# ---------------------------------------------------------------- finding the origin

def _origin_of(text: str, source: str) -> dns.name.Name:
    """The zone's origin: its SOA's owner, or the root when there is no SOA.

    dnspython takes the origin as given and refuses an SOA anywhere else; it also skips, without a word, records
    outside the origin. So the owner names are read first (dnspython's own tokenizer, so comments, quoting and
    parentheses are read as it reads them), to choose the origin and to refuse, with a reason, a file mixing one
    zone's SOA with other zones' names (those records would silently be missing).
    """
    tokens = dns.tokenizer.Tokenizer(text, source)
    origin = dns.name.root
    owner: dns.name.Name | None = None
    owners: list[tuple[dns.name.Name, int]] = []
    soas: list[tuple[dns.name.Name, int]] = []
    try:
        while True:
            token = tokens.get(want_leading=True)
            if token.is_eof():
                break
            if token.is_eol():
                continue
            line = tokens.line_number
            if token.is_whitespace():
                fields = _rest_of_line(tokens)
                if not fields:
                    continue
            elif token.value.startswith("$"):
                fields = _rest_of_line(tokens)
                if token.value.upper() == "$ORIGIN" and fields:
                    origin = dns.name.from_text(fields[0], origin)
                continue
            else:
                owner = tokens.as_name(token, origin)
                owners.append((owner, line))
                fields = _rest_of_line(tokens)
            if owner is not None and _record_type(fields) == "SOA":
                soas.append((owner, line))
    except dns.exception.DNSException as exc:
        raise ZoneFileError(f"{source}:{tokens.line_number}: {exc}") from None
    if not soas:
        return dns.name.root
    zone_origin, first_line = soas[0]
    if len(soas) > 1:
        name, line = soas[1]
        raise ZoneFileError(f"{source}:{line}: a second SOA ({name}; the first, line {first_line}, is "
                            f"{zone_origin}): a file holds one zone with its SOA, or any names without an SOA")
    for name, line in owners:
        if not name.is_subdomain(zone_origin):
            raise ZoneFileError(f"{source}:{line}: {name} is outside the zone of the SOA ({zone_origin}): remove "
                                f"the SOA to mix names of several zones in one file")
    return zone_origin


def _rest_of_line(tokens: dns.tokenizer.Tokenizer) -> list[str]:
    """The remaining fields of one entry (the tokenizer joins lines inside parentheses); quoted strings as ""."""
    fields = []
    while True:
        token = tokens.get()
        if token.is_eol_or_eof():
            if token.is_eof():
                tokens.unget(token)
            return fields
        fields.append("" if token.is_quoted_string() else token.value)


def _record_type(fields: list[str]) -> str:
    """The type of an entry whose owner was taken: the first field that is neither a TTL nor a class."""
    for value in fields:
        try:
            dns.ttl.from_text(value)
            continue
        except dns.exception.DNSException:
            pass
        try:
            dns.rdataclass.from_text(value)
            continue
        except dns.exception.DNSException:
            pass
        return value.upper()
    return ""


def _reason(source: str, exc: dns.exception.DNSException) -> str:
    text = str(exc) or type(exc).__name__
    if "default TTL" in text:
        text += " (give each record a TTL, or begin the file with a line such as '$TTL 3600')"
    # dnspython's syntax errors already begin with "FILE:LINE:".
    return text if text.startswith(f"{source}:") else f"{source}: {text}"
