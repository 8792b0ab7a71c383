"""An authoritative DNS server for the early-lookups bench: every answer leaves one round trip after its query
came in, and many queries are in flight at once (a reply is scheduled on a heap, never slept on), as on the
Internet where each cold lookup is a round trip to a remote server but the server does not answer one at a time.

Answers are made from the name's pattern, so each message N can come from its own sender domain and its own client
IP and no answer one message got helps the next (the milter's cache is as cold as for the long tail of senders):

  mN.bench.example               TXT "v=spf1 ip6:<client N> -all", MX 10 hN.bench.example
  _dmarc.mN.bench.example        TXT "v=DMARC1; p=reject"
  s._domainkey.mN.bench.example  TXT the DKIM key (one key pair for every domain)
  PTR of client N                hN.bench.example
  hN.bench.example               AAAA client N (no A: NODATA)
  anything else                  NXDOMAIN (no node) or NODATA (a node without that type), with the zone's SOA

Client N is 2001:db8::N (documentation prefix; it is only a value in the milter protocol, nothing is sent to it).
UDP only: every answer fits in 512 octets (an RSA-2048 key included); one that did not would be sent with TC set
and counted in `oversize`, so a bench run shows it rather than silently measuring TCP retries.

Runs in a process of its own (`DelayedDnsServer.start()` forks it) so the client's and the milters' CPU do not
delay its timers; it stops on stop() or after `lifetime` seconds, whatever happens to the bench.
"""

from __future__ import annotations

import heapq
import ipaddress
import multiprocessing
import re
import selectors
import socket
import time

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.AAAA
import dns.rrset

ZONE = "bench.example"
SELECTOR = "s"
PREFIX = ipaddress.IPv6Address("2001:db8::")
TTL = 300
UDP_LIMIT = 512
IN = dns.rdataclass.IN

_SENDER = re.compile(r"^(?:(_dmarc|s\._domainkey)\.)?m(\d+)\.bench\.example$")
_HOST = re.compile(r"^h(\d+)\.bench\.example$")


def client_ip(n: int) -> str:
    return str(PREFIX + n)


def sender_domain(n: int) -> str:
    return f"m{n}.{ZONE}"


def host_name(n: int) -> str:
    return f"h{n}.{ZONE}"


def _client_number(ptr_name: str) -> int | None:
    """N from the ip6.arpa name of 2001:db8::N, None for any other name."""
    if not ptr_name.endswith(".ip6.arpa"):
        return None
    nibbles = ptr_name[:-len(".ip6.arpa")].split(".")
    if len(nibbles) != 32:
        return None
    try:
        address = ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16))
    except ValueError:
        return None
    number = int(address) - int(PREFIX)
    return number if 0 < number < 2 ** 32 else None


def _txt(text: str) -> dns.rdtypes.ANY.TXT.TXT:
    raw = text.encode()
    return dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, [raw[i:i + 255] for i in range(0, len(raw), 255)])


def records(qname: str, qtype: str, dkim_key: str) -> tuple[bool, list]:
    """(the name exists, the rdatas of that type) for a lower-case name without the root dot."""
    if (match := _SENDER.match(qname)):
        label, number = match.group(1), int(match.group(2))
        if label == "_dmarc":
            return True, [_txt("v=DMARC1; p=reject")] if qtype == "TXT" else []
        if label:
            return True, [_txt(f"v=DKIM1; k=rsa; p={dkim_key}")] if qtype == "TXT" else []
        if qtype == "TXT":
            return True, [_txt(f"v=spf1 ip6:{client_ip(number)} -all")]
        if qtype == "MX":
            return True, [dns.rdtypes.ANY.MX.MX(IN, dns.rdatatype.MX, 10, dns.name.from_text(host_name(number)))]
        return True, []
    if (match := _HOST.match(qname)):
        if qtype == "AAAA":
            return True, [dns.rdtypes.IN.AAAA.AAAA(IN, dns.rdatatype.AAAA, client_ip(int(match.group(1))))]
        return True, []
    number = _client_number(qname)
    if number is not None:
        if qtype == "PTR":
            return True, [dns.rdtypes.ANY.PTR.PTR(IN, dns.rdatatype.PTR, dns.name.from_text(host_name(number)))]
        return True, []
    return qname == ZONE, []


_SOA = dns.rdtypes.ANY.SOA.SOA(IN, dns.rdatatype.SOA, dns.name.from_text(f"ns.{ZONE}"),
                                dns.name.from_text(f"hostmaster.{ZONE}"), 1, 3600, 600, 86400, TTL)


def answer(wire: bytes, dkim_key: str) -> tuple[bytes | None, bool]:
    """(the reply's wire form or None for a datagram that is not a query, whether it was too big for UDP)."""
    try:
        query = dns.message.from_wire(wire)
    except Exception:
        return None, False
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire(), False
    question = query.question[0]
    qname = question.name.to_text(omit_final_dot=True).lower()
    exists, rdatas = records(qname, dns.rdatatype.to_text(question.rdtype), dkim_key)
    if rdatas:
        response.answer.append(dns.rrset.from_rdata_list(question.name, TTL, rdatas))
    else:
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        apex = dns.name.from_text(ZONE) if qname.endswith(ZONE) else question.name
        response.authority.append(dns.rrset.from_rdata_list(apex, TTL, [_SOA]))
    reply = response.to_wire()
    if len(reply) > (max(UDP_LIMIT, query.payload) if query.edns >= 0 else UDP_LIMIT):
        truncated = dns.message.make_response(query)
        truncated.flags |= dns.flags.AA | dns.flags.TC
        return truncated.to_wire(), True
    return reply, False


def _serve(sock: socket.socket, rtt: float, dkim_key: str, counts, stop, lifetime: float) -> None:
    """The server process: read every datagram that came in, schedule its reply at arrival + rtt, send what is
    due. counts[0]: queries, counts[1]: replies too big for UDP, counts[2] and [3]: the replies' total and largest
    lateness past their due time, in microseconds (a busy CPU makes the round trip longer than asked)."""
    sock.setblocking(False)
    due: list[tuple[float, int, bytes, object]] = []
    serial = 0
    ends = time.monotonic() + lifetime
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        while not stop.is_set() and time.monotonic() < ends:
            now = time.monotonic()
            wait = min(0.1, max(0.0, due[0][0] - now)) if due else 0.1
            if selector.select(timeout=wait):
                arrived = time.monotonic()
                while True:
                    try:
                        wire, peer = sock.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    reply, oversize = answer(wire, dkim_key)
                    counts[0] += 1
                    counts[1] += oversize
                    if reply is not None:
                        serial += 1
                        heapq.heappush(due, (arrived + rtt, serial, reply, peer))
            now = time.monotonic()
            while due and due[0][0] <= now:
                when, _, reply, peer = heapq.heappop(due)
                late = int((time.monotonic() - when) * 1e6)
                counts[2] += late
                counts[3] = max(counts[3], late)
                try:
                    sock.sendto(reply, peer)
                except OSError:
                    pass
    sock.close()


class DelayedDnsServer:
    """See the module docstring. `queries` and `oversize` are read from the server process while it runs."""

    def __init__(self, dkim_key: str, *, rtt: float = 0.025, host: str = "127.0.0.1", port: int = 53,
                 lifetime: float = 900.0) -> None:
        self.rtt = rtt
        self._context = multiprocessing.get_context("fork")
        self._counts = self._context.Array("q", 4, lock=False)
        self._stop = self._context.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self._process = self._context.Process(target=_serve, name="delayed-dns", daemon=True,
                                              args=(self._sock, rtt, dkim_key, self._counts, self._stop, lifetime))

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def queries(self) -> int:
        return self._counts[0]

    @property
    def oversize(self) -> int:
        return self._counts[1]

    @property
    def lateness(self) -> tuple[float, float]:
        """(total, largest) seconds the replies so far left after their due time."""
        return self._counts[2] / 1e6, self._counts[3] / 1e6

    def reset_largest_lateness(self) -> None:
        self._counts[3] = 0

    def start(self) -> DelayedDnsServer:
        self._process.start()
        self._sock.close()  # the server process holds its own copy
        return self

    def stop(self) -> None:
        self._stop.set()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def __enter__(self) -> DelayedDnsServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


__all__ = ["DelayedDnsServer", "client_ip", "sender_domain", "host_name", "records", "answer", "SELECTOR"]
