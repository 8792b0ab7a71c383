"""A real authoritative DNS server for tests: UDP and TCP on loopback, zone data in the OpenSPF YAML shape.

Usage:

    from testlab.dnsserver import DnsServer, Fault

    zone = {                                   # the OpenSPF suite's `zonedata` shape (already parsed from YAML)
        "example.org": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}, {"MX": [10, "mx.example.org"]}],
        "mx.example.org": [{"A": "192.0.2.1"}, {"AAAA": "2001:db8::1"}],
        "alias.example.org": [{"CNAME": "example.org"}],
        "slow.example.org": ["TIMEOUT"],
    }
    with DnsServer(zone) as server:            # host="127.0.0.1", port=0 (a free port); also host="::1"
        server.host, server.port               # where it listens, UDP and TCP on the same port
        server.nameserver                      # authmilter.config.Nameserver(host, port), for DnsSection
        server.address                         # "127.0.0.1:5353" / "[::1]:5353", for `--resolver`
        server.set_fault(Fault.SERVFAIL, "broken.example.org")          # per name
        server.set_fault(Fault.TIMEOUT, "example.org", "MX")            # per (name, type)
        server.set_fault(Fault.AD)                                      # global: every answer has AD set
        server.clear_faults()
        server.set_ttl("example.org", 5)       # per-name TTL (default: ttl=300 given to the constructor)
        server.count("example.org", "TXT")     # queries received for (name, type), over UDP and TCP
        server.count("example.org", "TXT", transport="tcp")
        server.total_queries                   # all queries received
        server.reset_counts()
        server.set_zone(other_zone)            # replace all data (e.g. the next OpenSPF scenario); keeps faults
        server.add(name, [{"A": "192.0.2.9"}]) # add records to one name
        server.stop()                          # a resolver that "goes away": nothing listens any more

Zone data (keys of the dict are owner names; case-insensitive; a trailing dot is optional):
  {"A": "1.2.3.4"}, {"AAAA": "::1"}, {"MX": [10, "mx.example"]} ({"MX": [0, "."]} is the null MX),
  {"PTR": "name"}, {"CNAME": "target"}, {"NS": "ns.example"},
  {"TXT": "text"} or {"TXT": ["str1", "str2"]} (one record with several character-strings; strings longer than
  255 octets are split), {"TXT": []} (a record with no strings at all: illegal on the wire, served anyway),
  {"SPF": ...} (type 99, same value forms), {"TXT": "NONE"}, and the bare string "TIMEOUT".
  Text values are str or bytes; a str whose characters are all below U+0100 is sent as Latin-1, so the suite's
  "\\xEF\\xBB\\xBF" escapes become those raw octets; any other str is sent as UTF-8.
  As in the OpenSPF harness: an SPF record is also served as TXT when the name has no TXT record of its own
  (unless "TXT: NONE"); "TIMEOUT" makes every query for that name go unanswered unless the name has records of
  the queried type.
  A name with no node but with descendants (an empty non-terminal) answers NODATA; any other unknown name
  answers NXDOMAIN. NXDOMAIN and NODATA replies carry an SOA in the authority section (owner: the name's last
  two labels) whose TTL and minimum are `negative_ttl` (constructor, default 300) unless Fault.NO_SOA applies.
  CNAME: a query of another type for an alias gets the CNAME followed by the whole chain, as a recursive
  resolver sends it: the target's records, or NODATA / NXDOMAIN (RFC 6604) with the SOA for the chain's last
  name, or no reply when that name is a TIMEOUT name; a loop is sent as the CNAMEs up to the repeat. With
  chase_cnames=False (an authoritative server that does not hold the target) it gets only the first CNAME, and
  the client must ask again for the target.

Fault modes (Fault, a StrEnum), set globally (no name), per name, or per (name, type); several may apply:
  TIMEOUT    no reply at all (UDP and TCP)
  SERVFAIL   rcode SERVFAIL, no records (what a validating resolver says for a bogus DNSSEC answer)
  REFUSED    rcode REFUSED
  TRUNCATE   over UDP: an empty reply with TC set, always (forces the TCP retry); TCP answers normally
  GARBAGE    reply with the query's ID followed by bytes that do not parse as DNS
  AD         set the AD bit on the reply (as a validating resolver does for a secure answer)
  NO_SOA     negative answers come without the SOA record
  DROP_FIRST_UDP  the first UDP query for each (name, type) gets no reply (a datagram lost on the way)
Over UDP a reply larger than 512 octets (or the query's EDNS payload size) is sent empty with TC set.

Bounds: the server runs daemon threads that stop on stop() / leaving the `with` block, and by themselves after
`lifetime` seconds (default 300). TCP connections are served in short-lived threads with a 2-second idle limit.
Every thread it starts is named "dnsserver-PORT" (UDP, TCP accept) or "dnsserver-PORT-tcp" (one TCP connection),
so a test looking for leftover threads can tell them apart.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.SPF
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

__all__ = ["DnsServer", "Fault", "QueryLog", "dns_name"]

IN = dns.rdataclass.IN
UDP_DEFAULT_SIZE = 512  # RFC 1035 §4.2.1, without EDNS
TCP_IDLE_SECONDS = 2.0
EDNS_PAYLOAD = 1232  # the DNS Flag Day 2020 size; a query's smaller EDNS size wins
GARBAGE = b"\x81\x80\xff\xff\x00\x00\x00\x00\x00\x00" + b"\xde\xad\xbe\xef" * 4


class Fault(StrEnum):
    TIMEOUT = "timeout"
    SERVFAIL = "servfail"
    REFUSED = "refused"
    TRUNCATE = "truncate"
    GARBAGE = "garbage"
    AD = "ad"
    NO_SOA = "no_soa"
    DROP_FIRST_UDP = "drop_first_udp"  # the first UDP query for each (name, type) is lost, later copies answered


@dataclass(frozen=True, slots=True)
class QueryLog:
    name: str        # lower-case, without the trailing dot, dnspython text form (odd octets escaped)
    rdtype: str
    transport: str   # "udp" or "tcp"


def _octets(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    value = str(value)  # YAML may have read "TXT: 1234" as a number
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def dns_name(text: str | bytes) -> dns.name.Name:
    """A name from zone-data text, label by label, so spaces, ':' or '%' stay plain octets (no escapes)."""
    raw = _octets(text).rstrip(b".")
    if not raw:
        return dns.name.root
    return dns.name.Name([*raw.split(b"."), b""])


def _key(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _user_key(name: str | bytes) -> str:
    return _key(dns_name(name))


def _txt_strings(value: Any) -> list[bytes]:
    if isinstance(value, (list, tuple)):
        return [_octets(v) for v in value]
    raw = _octets(value)
    # A character-string holds at most 255 octets (RFC 1035 §3.3); long texts are split like zone files do.
    return [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]


def _make_rdata(rdtype: str, value: Any) -> dns.rdata.Rdata:
    if rdtype == "A":
        return dns.rdtypes.IN.A.A(IN, dns.rdatatype.A, str(ipaddress.IPv4Address(value)))
    if rdtype == "AAAA":
        return dns.rdtypes.IN.AAAA.AAAA(IN, dns.rdatatype.AAAA, str(ipaddress.IPv6Address(value)))
    if rdtype == "MX":
        preference, exchange = value
        return dns.rdtypes.ANY.MX.MX(IN, dns.rdatatype.MX, int(preference), dns_name(exchange))
    if rdtype in ("PTR", "CNAME", "NS"):
        cls = {"PTR": dns.rdtypes.ANY.PTR.PTR, "CNAME": dns.rdtypes.ANY.CNAME.CNAME,
               "NS": dns.rdtypes.ANY.NS.NS}[rdtype]
        return cls(IN, dns.rdatatype.from_text(rdtype), dns_name(value))
    if rdtype in ("TXT", "SPF"):
        strings = _txt_strings(value)
        number = dns.rdatatype.from_text(rdtype)
        if not strings:
            # No character-strings at all: dnspython refuses to build it, but hostile servers send it.
            return dns.rdata.GenericRdata(IN, number, b"")
        cls = dns.rdtypes.ANY.TXT.TXT if rdtype == "TXT" else dns.rdtypes.ANY.SPF.SPF
        return cls(IN, number, strings)
    raise ValueError(f"unsupported record type in zone data: {rdtype}")


class _Node:
    """Everything known about one owner name."""

    __slots__ = ("name", "records", "timeout", "no_txt")

    def __init__(self, name: dns.name.Name):
        self.name = name
        self.records: dict[str, list[dns.rdata.Rdata]] = {}
        self.timeout = False
        self.no_txt = False

    def add(self, entries: Iterable[Any]) -> None:
        for entry in entries:
            if isinstance(entry, str):
                if entry.upper() != "TIMEOUT":
                    raise ValueError(f"unknown zone entry {entry!r}")
                self.timeout = True
                continue
            for rdtype, value in entry.items():
                rdtype = rdtype.upper()
                if rdtype == "TXT" and isinstance(value, str) and value == "NONE":
                    self.no_txt = True
                    continue
                self.records.setdefault(rdtype, []).append(_make_rdata(rdtype, value))

    def rdatas(self, rdtype: str) -> list[dns.rdata.Rdata]:
        found = self.records.get(rdtype, [])
        if rdtype == "TXT" and not found and not self.no_txt and "SPF" in self.records:
            # OpenSPF harness rule: an SPF RR is served as TXT too when the name has no TXT of its own.
            found = [_make_rdata("TXT", list(rd.strings)) if hasattr(rd, "strings")
                     else dns.rdata.GenericRdata(IN, dns.rdatatype.TXT, b"") for rd in self.records["SPF"]]
        return found


class DnsServer:
    """See the module docstring."""

    def __init__(self, zonedata: dict | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 ttl: int = 300, negative_ttl: int = 300, lifetime: float = 300.0, chase_cnames: bool = True):
        self.default_ttl = ttl
        self.negative_ttl = negative_ttl
        self.lifetime = lifetime
        self.chase_cnames = chase_cnames
        self._lock = threading.Lock()
        self._nodes: dict[str, _Node] = {}
        self._parents: set[str] = set()
        self._ttls: dict[str, int] = {}
        self._faults: dict[tuple[str | None, str | None], set[Fault]] = {}
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._udp, self._tcp, bound_port = _bind_pair(host, port)
        self.host = host
        self.port = bound_port
        if zonedata:
            self.set_zone(zonedata)

    # ------------------------------------------------------------ public API

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def nameserver(self):
        from authmilter.config import Nameserver
        return Nameserver(self.host, self.port)

    def set_zone(self, zonedata: dict) -> None:
        nodes: dict[str, _Node] = {}
        for owner, entries in zonedata.items():
            try:
                name = dns_name(owner)
            except dns.exception.DNSException:
                continue  # a name no query can reach (label > 63 octets...): nothing to serve
            node = nodes.setdefault(_key(name), _Node(name))
            node.add(entries or [])
        parents = set()
        for node in nodes.values():
            parent = node.name
            while len(parent) > 1:
                parent = parent.parent()
                parents.add(_key(parent))
        with self._lock:
            self._nodes, self._parents = nodes, parents

    def add(self, owner: str, entries: Iterable[Any]) -> None:
        name = dns_name(owner)
        with self._lock:
            nodes = dict(self._nodes)
            node = nodes.setdefault(_key(name), _Node(name))
            node.add(entries)
            parent = name
            while len(parent) > 1:
                parent = parent.parent()
                self._parents.add(_key(parent))
            self._nodes = nodes

    def set_fault(self, fault: Fault | str, name: str | None = None, rdtype: str | None = None) -> None:
        key = (_user_key(name) if name is not None else None, rdtype.upper() if rdtype else None)
        with self._lock:
            self._faults.setdefault(key, set()).add(Fault(fault))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def set_ttl(self, name: str, ttl: int) -> None:
        with self._lock:
            self._ttls[_user_key(name)] = ttl

    def count(self, name: str, rdtype: str, *, transport: str | None = None) -> int:
        key = _user_key(name)
        with self._lock:
            return sum(n for (qname, qtype, proto), n in self._counts.items()
                       if qname == key and qtype == rdtype.upper() and transport in (None, proto))

    @property
    def total_queries(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    @property
    def queries(self) -> list[QueryLog]:
        """Every (name, type, transport) asked so far, one entry per distinct triple (see count() for numbers)."""
        with self._lock:
            return [QueryLog(*key) for key in self._counts]

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()

    def start(self) -> DnsServer:
        self._started = time.monotonic()
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, name=f"dnsserver-{self.port}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self._threads.clear()
        for sock in (self._udp, self._tcp):
            try:
                sock.close()
            except OSError:
                pass

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------ serving

    def _expired(self) -> bool:
        return self._stop.is_set() or time.monotonic() - self._started > self.lifetime

    def _serve_udp(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ)
            while not self._expired():
                if not selector.select(timeout=0.1):
                    continue
                try:
                    wire, peer = self._udp.recvfrom(65535)
                except OSError:
                    continue
                reply = self._handle(wire, "udp")
                if reply is not None:
                    try:
                        self._udp.sendto(reply, peer)
                    except OSError:
                        pass
        self._stop.set()

    def _serve_tcp(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._tcp, selectors.EVENT_READ)
            while not self._expired():
                if not selector.select(timeout=0.1):
                    continue
                try:
                    conn, _ = self._tcp.accept()
                except OSError:
                    continue
                threading.Thread(target=self._serve_tcp_conn, args=(conn,), name=f"dnsserver-{self.port}-tcp",
                                 daemon=True).start()
        self._stop.set()

    def _serve_tcp_conn(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TCP_IDLE_SECONDS)
            while not self._expired():
                try:
                    header = _recv_exact(conn, 2)
                    if header is None:
                        return
                    wire = _recv_exact(conn, struct.unpack("!H", header)[0])
                    if wire is None:
                        return
                except OSError:
                    return
                reply = self._handle(wire, "tcp")
                if reply is None:
                    continue  # a TIMEOUT fault: the client waits for nothing on this query
                try:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

    def _faults_for(self, key: str, rdtype: str) -> set[Fault]:
        found: set[Fault] = set()
        for fault_key in ((None, None), (None, rdtype), (key, None), (key, rdtype)):
            found |= self._faults.get(fault_key, set())
        return found

    def _handle(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None  # not DNS: a real server would drop it too
        if len(query.question) != 1:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        qname, qtype = question.name, dns.rdatatype.to_text(question.rdtype)
        key = _key(qname)
        with self._lock:
            self._counts[(key, qtype, transport)] += 1
            faults = self._faults_for(key, qtype)
            nodes, parents, ttls = self._nodes, self._parents, dict(self._ttls)

        if Fault.TIMEOUT in faults:
            return None
        if Fault.DROP_FIRST_UDP in faults and transport == "udp" and self._counts[(key, qtype, "udp")] == 1:
            return None
        if Fault.GARBAGE in faults:
            return wire[:2] + GARBAGE
        response = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
        response.flags |= dns.flags.AA
        if Fault.AD in faults:
            response.flags |= dns.flags.AD
        if Fault.REFUSED in faults or Fault.SERVFAIL in faults:
            response.set_rcode(dns.rcode.REFUSED if Fault.REFUSED in faults else dns.rcode.SERVFAIL)
            return response.to_wire()
        if transport == "udp" and Fault.TRUNCATE in faults:
            response.flags |= dns.flags.TC
            return response.to_wire()

        if not self._answer(response, qname, qtype, nodes, parents, ttls, Fault.NO_SOA in faults):
            return None  # a TIMEOUT name
        limit = UDP_DEFAULT_SIZE
        if query.edns >= 0:
            limit = max(UDP_DEFAULT_SIZE, min(query.payload, EDNS_PAYLOAD))
        if transport == "tcp":
            limit = 65535
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # RFC 1035 §4.2.1 / RFC 7766: too big for UDP, so say so and let the client come back over TCP.
            truncated = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
            truncated.flags |= dns.flags.AA | dns.flags.TC | (response.flags & dns.flags.AD)
            return truncated.to_wire()

    def _answer(self, response: dns.message.Message, qname: dns.name.Name, qtype: str,
                nodes: dict[str, _Node], parents: set[str], ttls: dict[str, int], no_soa: bool) -> bool:
        """Fill the response; False when the name is a TIMEOUT name without records of that type."""
        current = qname
        seen: set[str] = set()
        while True:
            key = _key(current)
            node = nodes.get(key)
            if node is None:
                # For a chased target too, as a recursive resolver says it: RFC 6604 §3, the rcode speaks of the
                # chain's last name.
                if key not in parents:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                self._negative(response, current, no_soa)
                return True
            ttl = ttls.get(key, self.default_ttl)
            rdatas = node.rdatas(qtype)
            cnames = node.rdatas("CNAME") if qtype != "CNAME" else []
            if not rdatas and not cnames and node.timeout:
                return False
            if cnames:
                rrset = dns.rrset.from_rdata_list(current, ttl, cnames[:1])
                response.answer.append(rrset)
                seen.add(key)
                target = cnames[0].target
                if not self.chase_cnames or _key(target) in seen:
                    return True
                current = target
                continue
            if rdatas:
                response.answer.append(dns.rrset.from_rdata_list(current, ttl, rdatas))
            else:
                self._negative(response, current, no_soa)
            return True

    def _negative(self, response: dns.message.Message, qname: dns.name.Name, no_soa: bool) -> None:
        if no_soa:
            return
        apex = dns.name.Name(qname.labels[-3:]) if len(qname) > 3 else qname
        soa = dns.rdtypes.ANY.SOA.SOA(IN, dns.rdatatype.SOA, dns.name.from_text("ns.invalid."),
                                      dns.name.from_text("hostmaster.invalid."), 1, 3600, 600, 86400,
                                      self.negative_ttl)
        response.authority.append(dns.rrset.from_rdata_list(apex, self.negative_ttl, [soa]))


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket, int]:
    """UDP and TCP sockets on the same port. With port 0 the kernel picks a free UDP port, whose TCP twin may be
    taken by another test's server: then try another port rather than fail."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for attempt in range(50):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            udp.bind((host, port))
            bound_port = udp.getsockname()[1]
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, bound_port))
            tcp.listen(64)
            return udp, tcp, bound_port
        except OSError as exc:
            udp.close()
            tcp.close()
            if port != 0 or exc.errno != errno.EADDRINUSE or attempt == 49:
                raise
    raise AssertionError("unreachable")


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = conn.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)
