"""Mail handed to us by one of our own relays ([trust] relays): whom the relay received it from.

A filtering gateway or backup MX that does not pass the outside client on with XFORWARD connects to us with its own
address, so SPF, iprev and DMARC's SPF part would judge our own relay. For a client in [trust] relays they judge
instead the client and HELO name that the relay recorded in the Received header it added (RFC 5321 §4.4), found by
walking down from the top of the message:

- a hop whose recorded client is itself in [trust] relays, or is a loopback address (a relay re-injecting mail to
  itself, e.g. after a content filter), is one of ours: walk on to the header below it. Our own MTA's Received
  header, if the milter is shown it, records the relay and is walked past the same way;
- the first hop that names a client outside the relays is the one judged. Its header was written by a relay, so
  only the parts the outside client chose (its HELO name, its reverse DNS) are hostile, and the parse is strict:
  Postfix's and Sendmail's `from HELO (RDNS [IP])`, Exim's `from RDNS ([IP] helo=HELO)` and `from [IP] (helo=...)`,
  `[IPv6:...]` and Exim's bare IPv6, an optional `:port`; the HELO and the names must be plain host names or
  address literals. Anything else cannot be read: no bracketed address, a second bracketed address anywhere in the
  header (a HELO name that smuggles "(x [192.0.2.1])" in front of the real one), CR, LF or other controls that
  are not folding, `;` or spaces inside a name, a header over MAX_RECEIVED_CHARS, more than MAX_HOPS hops of ours;
- a recorded client in a private, shared, link-local, multicast, unspecified or reserved range cannot be the outside
  client of a relay that receives mail from the Internet: it is an inner hop of ours that [trust] relays does not
  list, so it is not judged (the reason says to list it). Documentation ranges count as public.

When the header cannot be read the result says why, and the checks report it (spf=none, iprev=permerror, the
reason in the comment): they NEVER fall back to the relay's own address, which would make every message from the
relay pass or fail on the relay's own reputation. DKIM and DMARC's DKIM part do not depend on the client at all.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from authmilter.config import TrustSection
from authmilter.context import Connection, IPAddress, MessageContext, unmapped

MAX_HOPS = 20                # Received headers examined from the top; a relay chain of ours is a few hops deep
MAX_RECEIVED_CHARS = 4096    # a relay's own header with TLS details is a few hundred characters

# A host name as an MTA records it (a HELO argument it accepted, a verified reverse name, or Postfix's "unknown"):
# letters, digits, '-', '_' and dots, nothing that could open a comment, a literal or a new clause.
_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?"
_ADDRESS = r"(?:IPv6:)?[0-9A-Fa-f:.]{2,45}"
_TOKEN = rf"(?:{_NAME}|\[{_ADDRESS}\])"     # a HELO argument: a name or an address literal (RFC 5321 §4.1.3)
_PORT = r"(?::\d{1,5})?"
_END = r"(?=\s|$)"

# Postfix `from HELO (RDNS [IP])`, Sendmail `from HELO (ident@RDNS [IP])`, `from HELO ([IP])`, `... (may be forged)`.
_POSTFIX_SENDMAIL = re.compile(
    rf"from (?P<helo>{_TOKEN}) \((?:[A-Za-z0-9._-]{{1,64}}@)?(?:(?P<rdns>{_NAME}) )?"
    rf"\[(?P<ip>{_ADDRESS})\]{_PORT}(?: \(may be forged\))?\){_END}", re.IGNORECASE)
# Exim's $sender_rcvhost: `from RDNS ([IP]:PORT helo=HELO ident=ID)` (helo= only when it differs from RDNS) ...
_EXIM_NAMED = re.compile(
    rf"from (?P<rdns>{_NAME}) \(\[(?P<ip>{_ADDRESS})\]{_PORT}(?: helo=(?P<helo>{_TOKEN}))?"
    rf"(?: ident=[A-Za-z0-9._-]{{1,64}})?\){_END}", re.IGNORECASE)
# ... and without a verified name: `from [IP] (port=PORT helo=HELO ident=ID)`, the parenthesis optional.
_EXIM_ADDRESS = re.compile(
    rf"from \[(?P<ip>{_ADDRESS})\]{_PORT}(?: \((?:port=\d{{1,5}})? ?(?:helo=(?P<helo>{_TOKEN}))?"
    rf"(?: ?ident=[A-Za-z0-9._-]{{1,64}})?\))?{_END}", re.IGNORECASE)
_FORMS = (_POSTFIX_SENDMAIL, _EXIM_NAMED, _EXIM_ADDRESS)

_ANY_LITERAL = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]", re.IGNORECASE)
_FOLDING = re.compile(r"\r?\n(?=[ \t])")
_NOT_PRINTABLE = re.compile(r"[^\t\x20-\x7e]")
_BLANKS = re.compile(r"[ \t]+")

# Ranges no outside client of an Internet-facing relay can have (RFC 6890's special-purpose registries, without
# the documentation ranges, which tests and examples use as stand-ins for public addresses).
_NOT_PUBLIC = tuple(ipaddress.ip_network(net) for net in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "64:ff9b:1::/48", "100::/64", "fc00::/7", "fe80::/10", "ff00::/8"))


@dataclass(frozen=True, slots=True)
class RecordedClient:
    """The client one Received header says its writer received the message from."""

    ip: IPAddress
    helo: str        # the HELO/EHLO argument as recorded ("" when the header does not say)
    rdns: str = ""   # the writer's reverse name for the client ("unknown" as Postfix writes it); not trusted


@dataclass(frozen=True, slots=True)
class Unreadable:
    reason: str


def parse_received(value: bytes | str) -> RecordedClient | Unreadable:
    """The client recorded in one Received header value (as received: folded, with its leading space), or why it
    cannot be read. Never raises for anything in the header."""
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    if len(text) > MAX_RECEIVED_CHARS:
        return Unreadable(f"header longer than {MAX_RECEIVED_CHARS} characters")
    text = _FOLDING.sub("", text)
    if _NOT_PRINTABLE.search(text):
        # CR or LF outside folding, NUL and other controls, or 8-bit bytes: a relay we trust writes none of them.
        return Unreadable("control or non-ASCII characters in the header")
    text = _BLANKS.sub(" ", text).strip()
    match = next((m for form in _FORMS if (m := form.match(text))), None)
    if match is None:
        return Unreadable("not a Postfix, Sendmail or Exim 'from' clause with a bracketed client address")
    try:
        ip = _address(match.group("ip"))
    except ValueError:
        return Unreadable("the client address is not an IP address")
    # The from clause names exactly one client; another address literal after it (in a later comment, or after a
    # HELO name that carried its own "(name [address])") makes the header ambiguous, and a hostile HELO is the
    # only way such a header comes from a relay of ours.
    if any(_is_address(literal) for literal in _ANY_LITERAL.findall(text, match.end())):
        return Unreadable("more than one client address in the header")
    helo = match.group("helo") or ""
    rdns = match.groupdict().get("rdns") or ""
    if match.re is _EXIM_NAMED and not helo:
        helo = rdns   # Exim leaves helo= out when the HELO argument was the verified host name
    return RecordedClient(ip, helo, rdns)


def _address(text: str) -> IPAddress:
    if text[:5].lower() == "ipv6:":
        ip = ipaddress.ip_address(text[5:])
        if ip.version != 6:
            raise ValueError(text)
        return ip
    return ipaddress.ip_address(text)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- the client we judge

def in_networks(ip: IPAddress | None, networks: Sequence) -> bool:
    """Whether `ip` is in one of `networks`; an IPv4 client seen as ::ffff:a.b.c.d matches a.b.c.d/n too."""
    if ip is None:
        return False
    candidates = {ip, unmapped(ip)}
    return any(candidate in network for candidate in candidates for network in networks)


def is_relay(ip: IPAddress | None, trust: TrustSection) -> bool:
    return bool(trust.relays) and in_networks(ip, trust.relays)


@dataclass(frozen=True, slots=True)
class RelayedClient:
    """A message from one of [trust] relays: the client its Received header recorded (the one SPF, iprev and
    DMARC's SPF part judge), or why none could be read. Shown in the log line (relay=, relay_problem=); it adds no
    A-R method (RFC 8601 has none for it): the methods it feeds name the judged address themselves."""

    relay_ip: str                       # the relay's own address, the SMTP client the MTA saw
    connection: Connection | None       # the judged client; None when its Received header could not be read
    problem: str = ""                   # why connection is None
    hop: int = 0                        # which Received header (1 = topmost) named the client, or failed

    def ar_entries(self) -> tuple:
        return ()

    def log_fields(self) -> dict[str, str]:
        fields = {"relay": self.relay_ip}
        if self.problem:
            fields["relay_problem"] = self.problem
        return fields

    def dnssec_statuses(self) -> tuple:
        return ()   # parsing a header looks nothing up

    @property
    def note(self) -> str:
        """The A-R comment that says which address was judged and who recorded it."""
        if self.connection is None:
            return f"relay {self.relay_ip}: {self.problem}"
        return f"client {unmapped(self.connection.client_ip)} recorded by relay {self.relay_ip}"


def relayed_client(ctx: MessageContext, trust: TrustSection) -> RelayedClient | None:
    """For a client in [trust] relays, whom it received the message from (see the module doc); None for any other
    client. Reads only headers, so it is complete at end of headers."""
    conn = ctx.connection
    if not is_relay(conn.client_ip, trust):
        return None
    relay_ip = str(unmapped(conn.client_ip))
    received = ctx.message.get_all("Received")
    for hop, header in enumerate(received[:MAX_HOPS], 1):
        parsed = parse_received(header.value)
        if isinstance(parsed, Unreadable):
            return RelayedClient(relay_ip, None, f"Received header {hop}: {parsed.reason}", hop)
        ip = unmapped(parsed.ip)
        if ip.is_loopback or in_networks(ip, trust.relays):
            continue    # one of our own hops: the client it recorded is further down
        if any(ip in network for network in _NOT_PUBLIC if network.version == ip.version):
            return RelayedClient(relay_ip, None, f"Received header {hop}: client {ip} is not a public address "
                                                 f"(list it in [trust] relays if it is a relay of ours)", hop)
        return RelayedClient(relay_ip, Connection(ip, parsed.rdns, parsed.helo), hop=hop)
    if len(received) > MAX_HOPS:
        problem = f"no client outside [trust] relays in the top {MAX_HOPS} Received headers"
    elif ctx.message.headers_truncated:
        problem = "no client outside [trust] relays in the Received headers kept (header limit)"
    elif not received:
        problem = "no Received header"
    else:
        problem = "every Received header names one of [trust] relays"
    return RelayedClient(relay_ip, None, problem, len(received[:MAX_HOPS]))


def judged_connection(ctx: MessageContext, trust: TrustSection) -> tuple[Connection | None, RelayedClient | None]:
    """The connection SPF, iprev and the trusted-forwarder match judge, and the relay it came through: the real
    connection and None for a client that is not a listed relay; else the client the relay recorded (None when its
    header could not be read: the caller reports the RelayedClient's problem, never the relay's own address)."""
    relayed = relayed_client(ctx, trust)
    if relayed is None:
        return ctx.connection, None
    return relayed.connection, relayed
