"""The only module that talks DNS.

Every check asks a DnsClient for (name, type) and gets an Answer that says what happened and how far it can be
trusted. A DnsClient is per message: it carries the message's Deadline, counts queries and remembers the weakest
DNSSEC status it saw. The Resolver behind it is long-lived and owns the cache.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import struct
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Callable, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from authmilter.config import DnsSection, Nameserver, TrustAd
from authmilter.results import Dnssec, weakest


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

    @property
    def problem(self) -> str:
        """What went wrong, for a result's reason: the detail when there is one, else the outcome's name."""
        return self.detail or self.outcome.value


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


# ================================================================ implementation (dnspython)
#
# The exchange with the nameserver is done here, on plain sockets, rather than through dns.query: we need to cap
# each wait at what is left of the message's deadline, to parse replies with continue_on_error (a hostile record,
# such as a TXT with no strings, must spoil only itself), and to tell "the deadline ended it" from "the server
# did not answer". dnspython still builds and parses every message.

log = logging.getLogger(__name__)

EDNS_PAYLOAD = 1232             # DNS Flag Day 2020: avoids IP fragmentation; larger answers come over TCP
MAX_CNAME_CHAIN = 8             # RFC 1034 §3.6.2 asks to follow chains and detect loops; real chains are short
# RFC 2308 §5 advises against caching negative answers without an SOA, for fear of loops between servers; a
# stub at the end of the chain cannot loop, and a minute spares the resolver a burst of repeats.
NEGATIVE_TTL_WITHOUT_SOA = 60
MAX_STRAY_REPLIES = 16          # replies with another ID ignored before we give up on a server
_IDNA = dns.name.IDNA_2008_Practical  # IDNA 2008 with the UTS-46 mapping (case, width, ß kept: non-transitional)
_DOT_LIKE = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})  # UTS-46 maps these to "."

Clock = Callable[[], float]
# Told of each lookup: its record type, its outcome, and the seconds it spent on the network (None when the cache
# answered). The metrics are fed through this; the checks never see it.
QueryHook = Callable[[str, Outcome, "float | None"], None]


def system_nameservers() -> tuple[Nameserver, ...]:
    """The nameservers of /etc/resolv.conf (inside `ip netns exec`, the namespace's own copy)."""
    try:
        system = dns.resolver.Resolver(configure=True)
    except (dns.exception.DNSException, OSError):
        return ()
    found = []
    for server in system.nameservers:
        host = str(server)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            continue  # a DoH URL or similar: not something we speak
        found.append(Nameserver(host, getattr(system, "port", 53) or 53))
    return tuple(found)


def _effective_nameservers(dns_cfg: DnsSection) -> tuple[Nameserver, ...]:
    return dns_cfg.nameservers or system_nameservers()


def trusts_ad(dns_cfg: DnsSection) -> bool:
    """Whether the AD bit of our resolver's replies may be taken as "DNSSEC-validated".

    AD says nothing unless the path to the validating resolver cannot be tampered with (RFC 6840 §5.7, RFC 4035
    §4.9.3); like Postfix (TLS_README), "auto" trusts it only when every resolver is on loopback.
    """
    if dns_cfg.trust_ad is TrustAd.YES:
        return True
    if dns_cfg.trust_ad is TrustAd.NO:
        return False
    servers = _effective_nameservers(dns_cfg)
    return bool(servers) and all(ipaddress.ip_address(server.host).is_loopback for server in servers)


def to_query_name(name: str) -> dns.name.Name | str:
    """The absolute DNS name to ask for, or a reason why it cannot be asked.

    ASCII labels are taken octet for octet, with no zone-file escapes: SPF domains such as "foo:bar/baz.example"
    or names with spaces are legal in the DNS (RFC 2181 §11) and only hostnames are stricter; the checks judge
    those. Non-ASCII labels become A-labels (IDNA 2008, UTS-46 mapping).
    """
    if not isinstance(name, str):
        return "not text"
    text = name.translate(_DOT_LIKE)
    if text.endswith("."):
        text = text[:-1]
    if not text:
        return "empty name"
    labels = []
    for label in text.split("."):
        if not label:
            return "empty label"
        if label.isascii():
            raw = label.encode("ascii")
        else:
            try:
                raw = _IDNA.encode(label)
            except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
                return f"not a valid internationalized label: {exc}"
        if len(raw) > 63:
            return "label longer than 63 octets"  # RFC 1035 §2.3.4
        labels.append(raw)
    labels.append(b"")
    try:
        return dns.name.Name(labels)
    except dns.name.NameTooLong:
        return "name longer than 255 octets"  # RFC 1035 §2.3.4
    except dns.exception.DNSException as exc:
        return str(exc) or type(exc).__name__


def to_a_labels(name: str) -> str | None:
    """The name as the DNS will be asked for it: every non-ASCII label as its A-label (IDNA 2008, UTS-46), ASCII
    labels unchanged, no trailing dot; None when it cannot be a DNS name. Checks and headers use this one
    conversion, so a header names exactly the domain that was looked up (Python's "idna" codec is IDNA 2003:
    it would turn "straße" into "strasse", another domain)."""
    qname, text = _query_name_and_text(name)
    return None if isinstance(qname, str) else text


def name_key(name: str) -> tuple[bytes, ...] | None:
    """The name as the cache compares it (lower-cased labels), or None when it cannot be asked (INVALID_NAME,
    which no client counts as a query)."""
    if isinstance(name, str) and len(name) <= _MEMO_NAME_CHARS:
        return _name_key_memo(name)
    qname, _ = _query_name_and_text(name)
    return None if isinstance(qname, str) else _cache_labels(qname)


@functools.lru_cache(maxsize=1024)  # asked several times per message for the same few names (early.py)
def _name_key_memo(name: str) -> tuple[bytes, ...] | None:
    qname, _ = _query_name_and_text(name)
    return None if isinstance(qname, str) else _cache_labels(qname)


def _query_name_and_text(name: str) -> tuple[dns.name.Name | str, str]:
    """to_query_name() and the name's text, memoized for the few names every message asks (the sender's domain,
    its _dmarc and _domainkey names, the client's PTR name): building a dns.name.Name is most of a cached
    lookup's cost. Both results are immutable. Names longer than any valid one are not cached."""
    if isinstance(name, str) and len(name) <= _MEMO_NAME_CHARS:
        return _query_name_memo(name)
    qname = to_query_name(name)
    return qname, ("" if isinstance(qname, str) else name_text(qname))


_MEMO_NAME_CHARS = 300  # a valid name has at most 253 characters (RFC 1035 §2.3.4) plus a final dot


def _cache_labels(qname: dns.name.Name) -> tuple[bytes, ...]:
    return tuple(label.lower() for label in qname.labels)


@functools.lru_cache(maxsize=1024)
def _query_name_memo(name: str) -> tuple[dns.name.Name | str, str]:
    qname = to_query_name(name)
    return qname, ("" if isinstance(qname, str) else name_text(qname))


def name_text(name: dns.name.Name, *, lower: bool = False) -> str:
    """The name as plain text without the trailing dot; octets outside ASCII are kept as Latin-1 characters."""
    return ".".join((label.lower() if lower else label).decode("latin-1") for label in name.labels if label)


def _record(rdata) -> object:
    # Target names are lower-cased (ASCII only, as DNS compares them, RFC 4343): name compression can hand back
    # the question's spelling ("mx.EXAMPLE.org"), and no check should have to care.
    rdtype = rdata.rdtype
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return rdata.address
    if rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        return b"".join(rdata.strings)
    if rdtype == dns.rdatatype.MX:
        return (int(rdata.preference), name_text(rdata.exchange, lower=True))
    if rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS):
        return name_text(rdata.target, lower=True)
    return rdata.to_text()


# ---------------------------------------------------------------- per-message budget

class Deadline:
    """One message's DNS budget: the time its lookups kept it waiting, and a number of lookups.

    The clock runs only while at least one lookup of the message is in flight. Lookups may start at MAIL FROM and
    the rest at end of headers (early.py): the seconds in between belong to the client sending its message, and a
    slow body must not spend the budget of the DKIM and DMARC lookups that follow it. Lookups side by side spend it
    once, at the rate of the wall clock. With one lookup at a time this is the old "time spent in DNS".
    """

    def __init__(self, seconds: float, max_queries: int, clock: Clock):
        self.seconds = seconds
        self.max_queries = max_queries
        self._clock = clock
        self._lock = threading.Lock()
        self._spent = 0.0
        self._in_flight = 0
        self._since = 0.0
        self.used = 0

    def remaining(self) -> float:
        with self._lock:
            running = self._clock() - self._since if self._in_flight else 0.0
            return self.seconds - self._spent - running

    def begin(self) -> None:
        """A lookup goes out: the clock runs until the last one in flight is back."""
        with self._lock:
            if self._in_flight == 0:
                self._since = self._clock()
            self._in_flight += 1

    def end(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._spent += self._clock() - self._since

    def take_query(self) -> bool:
        """Count one lookup; False when the query budget was already spent."""
        if self.used >= self.max_queries:
            return False
        self.used += 1
        return True


# ---------------------------------------------------------------- cache

class _Cache:
    """LRU of final Answers keyed by (name, type), shared by every message and connection thread."""

    def __init__(self, size: int, max_ttl: int, clock: Clock):
        self._size = size
        self._max_ttl = max_ttl
        self._clock = clock
        self._lock = threading.Lock()
        # key: (the name's lower-cased labels, rdtype)
        self._entries: OrderedDict[tuple[tuple[bytes, ...], str], tuple[float, Answer]] = OrderedDict()

    def get_entry(self, key: tuple[tuple[bytes, ...], str]) -> tuple[Answer, int] | None:
        """The stored answer and its remaining TTL (the caller builds the one copy it hands out)."""
        if self._size <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, answer = entry
            left = expires - self._clock()
            if left <= 0:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
        return answer, max(1, int(left))

    def put(self, key: tuple[tuple[bytes, ...], str], answer: Answer) -> None:
        ttl = min(answer.ttl, self._max_ttl)
        if self._size <= 0 or ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (self._clock() + ttl, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# ---------------------------------------------------------------- one exchange with one server

@dataclass(frozen=True, slots=True)
class _Reply:
    message: dns.message.Message | None = None
    failure: Outcome | None = None   # TIMEOUT or ERROR when no usable message came back
    detail: str = ""


def _parse_reply(query: dns.message.Message, wire: bytes) -> _Reply | None:
    """A parsed reply to query; None when the packet is someone else's (other ID) and should be ignored."""
    if len(wire) < 2 or wire[:2] != struct.pack("!H", query.id):
        return None
    try:
        reply = dns.message.from_wire(wire, continue_on_error=True, ignore_trailing=True)
    except dns.exception.DNSException as exc:
        return _Reply(failure=Outcome.ERROR, detail=f"malformed reply ({type(exc).__name__})")
    if not query.is_response(reply) or len(reply.question) != 1:
        return _Reply(failure=Outcome.ERROR, detail="malformed reply (does not answer the question)")
    return _Reply(reply)


UDP_SENDS = 3  # the first send and two resends, spread over the wait


def _udp_exchange(query: dns.message.Message, wire: bytes, server: Nameserver, wait: float) -> _Reply:
    """One UDP exchange. A datagram lost on the way (a busy server's full receive buffer, a lossy path) would
    otherwise cost the whole wait and a temperror: the query is sent again at each third of the wait, as stub
    resolvers do (RFC 1035 §4.2.1), and any of the copies' replies is taken."""
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    start = time.monotonic()
    end = start + wait
    sends = 0
    strays = 0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((server.host, server.port))
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                if sends < UDP_SENDS and now >= start + wait * sends / UDP_SENDS:
                    sock.send(wire)
                    sends += 1
                next_send = start + wait * sends / UDP_SENDS if sends < UDP_SENDS else end
                sock.settimeout(max(min(end, next_send) - now, 0.001))
                try:
                    data = sock.recv(65535)
                except (socket.timeout, TimeoutError):
                    continue
                reply = _parse_reply(query, data)
                if reply is not None:
                    return reply
                strays += 1
                if strays >= MAX_STRAY_REPLIES:
                    return _Reply(failure=Outcome.ERROR, detail=f"only stray replies from {server}")
        except OSError as exc:
            return _Reply(failure=Outcome.ERROR, detail=f"{server}: {exc.strerror or exc}")
    return _Reply(failure=Outcome.TIMEOUT, detail=f"no reply from {server}")


def _recv_exact(sock: socket.socket, size: int, end: float) -> bytes:
    data = bytearray()
    while len(data) < size:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("connection closed")
        data += chunk
    return bytes(data)


def _tcp_exchange(query: dns.message.Message, wire: bytes, server: Nameserver, wait: float) -> _Reply:
    end = time.monotonic() + wait
    try:
        with socket.create_connection((server.host, server.port), timeout=max(wait, 0.001)) as sock:
            sock.sendall(struct.pack("!H", len(wire)) + wire)  # RFC 1035 §4.2.2 length prefix
            size = struct.unpack("!H", _recv_exact(sock, 2, end))[0]
            reply = _parse_reply(query, _recv_exact(sock, size, end))
    except (socket.timeout, TimeoutError):
        return _Reply(failure=Outcome.TIMEOUT, detail=f"no reply from {server} over TCP")
    except OSError as exc:
        return _Reply(failure=Outcome.ERROR, detail=f"{server} over TCP: {exc.strerror or exc}")
    if reply is None:
        return _Reply(failure=Outcome.ERROR, detail=f"reply with the wrong ID from {server} over TCP")
    return reply


# ---------------------------------------------------------------- resolver

@dataclass(frozen=True, slots=True)
class _Step:
    """One reply interpreted for one name: where a lookup stands after it."""

    outcome: Outcome | None         # None: the reply ends in a CNAME whose target must be asked next
    records: tuple = ()
    ttl: int = 0
    secure: bool = False
    next_name: dns.name.Name | None = None
    detail: str = ""


class WorkerPool:
    """The DNS workers of early lookups (early.py): at most `workers` threads, made on demand and kept, shared by
    every connection."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="authmilter-dns")

    def submit(self, func: Callable[[], object]) -> Future | None:
        """None once the pool is closed (the daemon is stopping): the caller does the work itself."""
        try:
            return self._executor.submit(func)
        except RuntimeError:
            return None

    def close(self) -> None:
        # Queued work belongs to transactions nobody will answer any more; running lookups end within their
        # timeout, and the workers are pool's threads, which the interpreter joins at exit.
        self._executor.shutdown(wait=False, cancel_futures=True)


class Resolver:
    """Long-lived: owns the configuration, the nameserver list and the cache shared by all messages."""

    def __init__(self, dns_cfg: DnsSection, *, clock: Clock = time.monotonic, on_query: QueryHook | None = None):
        self.cfg = dns_cfg
        self.clock = clock
        self.on_query = on_query
        self.nameservers = _effective_nameservers(dns_cfg)
        self.trust_ad = trusts_ad(dns_cfg)
        self.cache = _Cache(dns_cfg.cache_size, dns_cfg.cache_max_ttl, clock)
        # Threads are made only when early lookups first need one: `authmilter check` never starts any.
        self.pool = WorkerPool(dns_cfg.workers) if dns_cfg.early_lookups else None
        self._closed = False

    def for_message(self) -> MessageDns:
        return MessageDns(self, Deadline(self.cfg.message_deadline, self.cfg.max_queries, self.clock))

    def close(self) -> None:
        self._closed = True
        if self.pool is not None:
            self.pool.close()
        self.cache.clear()

    def _tell(self, rdtype: str, outcome: Outcome, seconds: float | None) -> None:
        if self.on_query is None:
            return
        try:
            self.on_query(rdtype, outcome, seconds)
        except Exception:  # a broken hook must not turn into a DNS failure and so into a temperror
            log.exception("DNS query hook failed")

    # The lookup proper: called by MessageDns after the budget and the cache were checked.
    def _resolve(self, qname: dns.name.Name, rdtype: str, deadline: Deadline) -> tuple[Answer, bool]:
        """(answer, whether the message's deadline is what ended it)."""
        asked = name_text(qname)
        if self._closed:
            return Answer(asked, rdtype, Outcome.ERROR, detail="resolver closed"), False
        if not self.nameservers:
            return Answer(asked, rdtype, Outcome.ERROR, detail="no nameservers configured"), False
        try:
            rdtype_number = dns.rdatatype.from_text(rdtype)
        except dns.exception.DNSException:
            return Answer(asked, rdtype, Outcome.ERROR, detail=f"unknown record type {rdtype}"), False
        current = qname
        seen = {qname}
        ttl = None
        secure = True
        for _ in range(MAX_CNAME_CHAIN + 1):
            reply, by_deadline = self._exchange(current, rdtype_number, deadline)
            if reply.message is None:
                return Answer(asked, rdtype, reply.failure or Outcome.ERROR, detail=reply.detail), by_deadline
            step = _interpret(reply.message, current, rdtype_number)
            if step.outcome in (Outcome.SERVFAIL, Outcome.ERROR):
                return Answer(asked, rdtype, step.outcome, detail=step.detail), False
            # RFC 4035 §3.2.3: AD is per reply, so a chain is authenticated only if every reply along it was.
            secure = secure and step.secure
            ttl = step.ttl if ttl is None else min(ttl, step.ttl)
            if step.outcome is not None:
                return Answer(asked, rdtype, step.outcome, step.records, self._dnssec(secure), ttl,
                              step.detail), False
            if step.next_name in seen:
                return Answer(asked, rdtype, Outcome.ERROR, detail="CNAME loop"), False
            seen.add(step.next_name)
            current = step.next_name
        return Answer(asked, rdtype, Outcome.ERROR, detail="CNAME chain too long"), False

    def _dnssec(self, secure: bool) -> Dnssec:
        if not self.trust_ad:
            return Dnssec.INDETERMINATE
        return Dnssec.SECURE if secure else Dnssec.INSECURE

    def _exchange(self, qname: dns.name.Name, rdtype: int, deadline: Deadline) -> tuple[_Reply, bool]:
        """Ask each nameserver in turn until one gives a usable reply; (reply, deadline ended it)."""
        query = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        # RFC 6840 §5.7: AD in a query asks a validating resolver to say whether the answer was validated,
        # without the RRSIGs that DO would add to every reply.
        query.flags |= dns.flags.AD
        wire = query.to_wire()
        failure = _Reply(failure=Outcome.TIMEOUT, detail="no nameserver answered")
        servers = self.nameservers
        started = time.monotonic()
        for index, server in enumerate(servers):
            left = deadline.remaining()
            if left <= 0:
                return _Reply(failure=Outcome.TIMEOUT, detail=_deadline_detail(deadline)), True
            # The query timeout is shared among the servers still to try, so one dead server cannot eat it all.
            lookup_left = self.cfg.timeout - (time.monotonic() - started)
            if lookup_left <= 0:
                break
            share = lookup_left / (len(servers) - index)
            wait = min(share, left)
            capped = left <= share
            reply = _udp_exchange(query, wire, server, wait)
            if reply.message is not None and reply.message.flags & dns.flags.TC:
                # RFC 7766 §5: a truncated UDP reply is retried over TCP.
                left = deadline.remaining()
                if left <= 0:
                    return _Reply(failure=Outcome.TIMEOUT, detail=_deadline_detail(deadline)), True
                share = (self.cfg.timeout - (time.monotonic() - started)) / (len(servers) - index)
                wait = min(share, left)
                capped = left <= share
                reply = _tcp_exchange(query, wire, server, wait)
            if reply.message is not None:
                rcode = reply.message.rcode()
                if rcode in (dns.rcode.SERVFAIL, dns.rcode.REFUSED) and index + 1 < len(servers):
                    failure = _Reply(reply.message)
                    continue  # another server may know better
                return reply, False
            if reply.failure is Outcome.TIMEOUT and capped:
                return _Reply(failure=Outcome.TIMEOUT, detail=_deadline_detail(deadline)), True
            failure = reply
        return failure, False


def _deadline_detail(deadline: Deadline) -> str:
    return f"DNS deadline of the message ({deadline.seconds:g}s) spent"


def _negative_ttl(message: dns.message.Message) -> int:
    """RFC 2308 §5: the SOA's own TTL and its MINIMUM field, whichever is smaller."""
    for rrset in message.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return min(rrset.ttl, next(iter(rrset)).minimum)
    return NEGATIVE_TTL_WITHOUT_SOA


def _interpret(message: dns.message.Message, qname: dns.name.Name, rdtype: int) -> _Step:
    secure = bool(message.flags & dns.flags.AD)
    rcode = message.rcode()
    if rcode == dns.rcode.SERVFAIL:
        # A validating resolver says SERVFAIL for bogus data (RFC 4035 §5.5): never a pass.
        return _Step(Outcome.SERVFAIL, detail="SERVFAIL")
    if rcode == dns.rcode.REFUSED:
        return _Step(Outcome.ERROR, detail="REFUSED")
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return _Step(Outcome.ERROR, detail=dns.rcode.to_text(rcode))
    # Follow the chain inside this reply (a recursive resolver sends it whole, RFC 1034 §4.3.2).
    current = qname
    ttl = None
    seen = {qname}
    while True:
        answer = _find(message, current, rdtype)
        if answer is not None:
            ttl = answer.ttl if ttl is None else min(ttl, answer.ttl)
            if rcode == dns.rcode.NXDOMAIN:
                return _Step(Outcome.ERROR, detail="records in an NXDOMAIN reply")
            return _Step(Outcome.ANSWER, tuple(_record(rd) for rd in answer), ttl, secure)
        cname = _find(message, current, dns.rdatatype.CNAME) if rdtype != dns.rdatatype.CNAME else None
        if cname is None or not len(cname):
            break
        ttl = cname.ttl if ttl is None else min(ttl, cname.ttl)
        target = next(iter(cname)).target
        if target in seen:
            return _Step(Outcome.ERROR, detail="CNAME loop")
        if len(seen) > MAX_CNAME_CHAIN:
            return _Step(Outcome.ERROR, detail="CNAME chain too long")
        seen.add(target)
        current = target
    negative_ttl = _negative_ttl(message)
    ttl = negative_ttl if ttl is None else min(ttl, negative_ttl)
    if rcode == dns.rcode.NXDOMAIN:
        # RFC 6604 §3: with a CNAME chain, NXDOMAIN speaks of the chain's last name.
        return _Step(Outcome.NXDOMAIN, ttl=ttl, secure=secure, detail="NXDOMAIN")
    if current != qname and not _has_soa(message):
        # The chain ends in a name this reply says nothing more about: ask for it (an authoritative server that
        # does not hold the target). With an SOA, the reply is a NODATA for the chain's last name.
        return _Step(None, ttl=ttl, secure=secure, next_name=current)
    return _Step(Outcome.NODATA, ttl=ttl, secure=secure, detail="no records of that type")


def _has_soa(message: dns.message.Message) -> bool:
    return any(rrset.rdtype == dns.rdatatype.SOA for rrset in message.authority)


def _find(message: dns.message.Message, name: dns.name.Name, rdtype: int):
    for rrset in message.answer:
        if rrset.name == name and rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN:
            return rrset
    return None


class MessageDns:
    """The DnsClient of one message: its Deadline, its query count and the weakest DNSSEC status it saw."""

    def __init__(self, resolver: Resolver, deadline: Deadline):
        self._resolver = resolver
        self.deadline = deadline
        self._lock = threading.Lock()
        self._count = 0
        self._expired = False
        self._weakest: Dnssec | None = None

    @property
    def query_count(self) -> int:
        return self._count

    @property
    def deadline_expired(self) -> bool:
        return self._expired

    @property
    def dnssec(self) -> Dnssec:
        """The weakest status of the answers this message got (INDETERMINATE if none)."""
        with self._lock:
            return self._weakest if self._weakest is not None else Dnssec.INDETERMINATE

    def is_cached(self, name: str, rdtype: str) -> bool:
        """Whether the shared cache holds the answer now (a peek: no query is counted, no time spent)."""
        labels = name_key(name)
        return labels is not None and self._resolver.cache.get_entry((labels, str(rdtype).upper())) is not None

    def query(self, name: str, rdtype: str) -> Answer:
        try:
            return self._query(name, rdtype)
        except Exception as exc:  # a bug here must not become a lost message; the check maps ERROR to temperror
            log.exception("DNS lookup %r/%r failed unexpectedly", name, rdtype)
            return Answer(str(name), str(rdtype), Outcome.ERROR, detail=f"internal error: {type(exc).__name__}")

    def _query(self, name: str, rdtype: str) -> Answer:
        rdtype = str(rdtype).upper()
        qname, asked = _query_name_and_text(name)
        if isinstance(qname, str):
            return Answer(str(name).rstrip("."), rdtype, Outcome.INVALID_NAME, detail=qname)
        with self._lock:
            self._count += 1
            allowed = self.deadline.take_query()
            if not allowed:
                self._expired = True
        if not allowed:
            return self._note(Answer(asked, rdtype, Outcome.TIMEOUT,
                                     detail=f"DNS query limit of the message ({self.deadline.max_queries}) spent"))
        # Keyed by the lower-cased labels (DNS compares names ASCII case-insensitively, RFC 4343): a tuple of bytes
        # hashes and compares in C, where dns.name.Name does both in Python (most of a cache hit's cost).
        key = (_cache_labels(qname), rdtype)
        found = self._resolver.cache.get_entry(key)
        if found is not None:  # served even when the time budget is spent: it costs no time
            cached, ttl = found
            log.debug("dns %s/%s: %s (cached)", asked, rdtype, cached.outcome)
            self._resolver._tell(rdtype, cached.outcome, None)
            # One direct copy instead of two dataclasses.replace() calls: this path runs ~10 times per message.
            return self._note(Answer(asked, cached.rdtype, cached.outcome, cached.records, cached.dnssec, ttl,
                                     cached.detail))
        if self.deadline.remaining() <= 0:
            with self._lock:
                self._expired = True
            return self._note(Answer(asked, rdtype, Outcome.TIMEOUT, detail=_deadline_detail(self.deadline)))
        started = self._resolver.clock()
        self.deadline.begin()
        try:
            answer, by_deadline = self._resolver._resolve(qname, rdtype, self.deadline)
        finally:
            self.deadline.end()
        self._resolver._tell(rdtype, answer.outcome, self._resolver.clock() - started)
        if by_deadline:
            with self._lock:
                self._expired = True
        log.debug("dns %s/%s: %s %s", asked, rdtype, answer.outcome, answer.detail)
        if answer.outcome in (Outcome.ANSWER, Outcome.NODATA, Outcome.NXDOMAIN):
            # SERVFAIL, TIMEOUT and ERROR are not cached: the next message should ask again (RFC 2308 §7 allows
            # at most 5 minutes; a mail check is better served by a fresh try).
            self._resolver.cache.put(key, answer)
        return self._note(answer)

    def _note(self, answer: Answer) -> Answer:
        with self._lock:
            self._weakest = answer.dnssec if self._weakest is None else weakest(self._weakest, answer.dnssec)
        return answer
