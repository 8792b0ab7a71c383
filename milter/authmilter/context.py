"""Frozen facts about one SMTP transaction, collected by the adapter and handed to the checks."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def bare_address(address: str) -> str:
    """An envelope address as the MTA hands it (`<user@example.org>`, `<>`) without its angle brackets; "" for
    the null sender."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return "" if address == "<>" else address


def unmapped(ip: IPAddress | None) -> IPAddress | None:
    """An IPv4 client seen through a dual-stack socket arrives as ::ffff:a.b.c.d; checks want a.b.c.d."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class Connection:
    """What is known once the client has connected and said HELO/EHLO (one per SMTP session)."""

    client_ip: IPAddress | None
    client_name: str = ""             # Postfix's verified reverse name, or "unknown"; not trusted by checks
    helo: str = ""
    authenticated_user: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """One transaction: renewed at each MAIL FROM."""

    mail_from: str                    # without angle brackets; "" is the null sender
    rcpts: tuple[str, ...] = ()
    queue_id: str = ""


@dataclass(frozen=True, slots=True)
class Header:
    """One header field exactly as received.

    `value` keeps its leading space (SMFIP_HDR_LEADSPC) and its folding as CRLF followed by WSP, so that
    name + b":" + value + b"\\r\\n" reproduces the bytes the sender signed.
    """

    name: bytes
    value: bytes
    # The name as header lookups compare it (RFC 5322 §1.2.2: case-insensitive), computed once: every check asks
    # for headers by name, a few dozen times per message.
    lookup_name: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lookup_name", self.name.strip().lower())

    @property
    def name_text(self) -> str:
        return self.name.decode("utf-8", "surrogateescape")

    @property
    def value_text(self) -> str:
        """Unfolded, stripped text for parsing (From, DKIM-Signature tags); undecodable bytes kept as escapes."""
        unfolded = self.value.replace(b"\r\n", b"").replace(b"\n", b"")
        return unfolded.decode("utf-8", "surrogateescape").strip()

    def raw(self) -> bytes:
        return self.name + b":" + self.value + b"\r\n"

    def is_named(self, name: str) -> bool:
        return self.lookup_name == name.lower().encode("ascii")


# The result reason of every header-based check when the header byte cap cut the header: what was kept proves
# nothing (a From, a signature or a second From may lie past the cap).
HEADER_LIMIT = "header limit"


@dataclass(frozen=True, slots=True)
class Message:
    """The message content: headers in order and the body with CRLF line ends.

    The milter does not keep the body: it streams it into the DKIM body hashers and hands over only the hashes
    (`body_hashes`, then `body` is empty). `authmilter check` reads a file and keeps the whole body instead.
    """

    headers: tuple[Header, ...] = ()
    body: bytes = b""
    headers_truncated: bool = False   # the header byte cap was reached; later headers were not kept (HEADER_LIMIT)
    # None: `body` holds the body. Otherwise the body was streamed and these are the only traces of it: one
    # (key, hash) pair per body hash the checks planned at end of headers (pipeline.body_plan; for DKIM a
    # BodyHashKey and its digest), a tuple so Message stays hashable.
    body_hashes: tuple[tuple[Any, Any], ...] | None = None

    def get_all(self, name: str) -> tuple[Header, ...]:
        wanted = name.lower().encode("ascii")
        return tuple(h for h in self.headers if h.lookup_name == wanted)

    def header_bytes(self) -> bytes:
        return b"".join(h.raw() for h in self.headers)

    def as_bytes(self) -> bytes:
        return self.header_bytes() + b"\r\n" + self.body


@dataclass(frozen=True, slots=True)
class MessageContext:
    """Everything the checks may read about one message."""

    connection: Connection
    envelope: Envelope
    message: Message = field(default_factory=Message)
