"""A byte-exact MTA side of the milter protocol (version 6), for benchmarks and tests: what Postfix would send, and
what the milter answers.

miltertest's codec encodes header values and body chunks as UTF-8 text and refuses a negotiation reply that carries
SMFIR_SETSYMLIST macro lists; we need raw 8-bit bytes, no per-chunk re-encoding, and those lists. Every step honours
what the milter negotiated away, as Postfix does: a step it asked not to see (SMFIP_NO*) is not sent, and after one
it asked not to answer (SMFIP_NR*) we do not wait, or a milter that asks for "no reply to headers" would leave us
waiting forever.

Two levels: the step methods (connect, helo, mail, rcpt, header(s), body, eom, abort, quit), each returning the
milter's Reply or None when none is due, and `transaction(...)`, one whole SMTP transaction built on them.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

SMFI_VERSION = 6
ALL_ACTIONS = 0x1FF
ALL_PROTOCOL = 0x1FFFFF
CHUNK = 65535

NOCONNECT, NOHELO, NOMAIL, NORCPT, NOBODY, NOHDRS, NOEOH = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40
NR_HDR, NODATA, SKIP = 0x80, 0x200, 0x400
HDR_LEADSPC = 0x100000
NR_CONN, NR_HELO, NR_MAIL, NR_RCPT, NR_DATA, NR_EOH, NR_BODY = (
    0x1000, 0x2000, 0x4000, 0x8000, 0x10000, 0x40000, 0x80000)

FINAL_REPLIES = {"a", "c", "r", "t", "y", "d", "s"}
_REPLY_NAMES = {"a": "accept", "c": "continue", "r": "reject", "t": "tempfail", "y": "replycode",
                "d": "discard", "s": "skip"}


class ProtocolError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Reply:
    """One packet from the milter: its SMFIR_* letter and payload."""

    code: str
    data: bytes = b""

    @property
    def name(self) -> str:
        """"accept", "continue", "reject", "tempfail", "replycode", "discard", "skip" (else the letter)."""
        return _REPLY_NAMES.get(self.code, self.code)

    @property
    def text(self) -> str:
        """For SMFIR_REPLYCODE: "550 5.7.1 text"."""
        return self.data.rstrip(b"\0").decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class HeaderChange:
    kind: str      # "insert" (SMFIR_INSHEADER), "add" (SMFIR_ADDHEADER) or "change" (SMFIR_CHGHEADER; "" deletes)
    index: int     # insert position / 1-based occurrence to change; 0 for "add"
    name: str
    value: str


_CHANGE_KINDS = {"i": "insert", "h": "add", "m": "change"}


@dataclass
class Outcome:
    """What the milter answered at end of message (or earlier, when it stopped the transaction at `stage`)."""

    final: Reply
    stage: str = "eom"
    modifications: list[tuple[str, bytes]] = field(default_factory=list)   # raw (letter, payload), in order
    eoh_to_final_s: float = 0.0

    @property
    def reply(self) -> str:
        return self.final.name

    @property
    def reply_text(self) -> str:
        return self.final.text

    def header_changes(self) -> list[HeaderChange]:
        """The header modifications, decoded. Raises AssertionError on one whose framing is wrong (a protocol
        error)."""
        changes = []
        for code, data in self.modifications:
            if code in ("i", "m"):
                assert len(data) >= 4, f"short {code!r} reply: {data!r}"
                index, rest = struct.unpack("!I", data[:4])[0], data[4:]
            elif code == "h":
                index, rest = 0, data
            else:
                continue
            parts = rest.split(b"\0")
            assert len(parts) == 3 and parts[2] == b"", f"bad {code!r} reply framing: {data!r}"
            changes.append(HeaderChange(_CHANGE_KINDS[code], index, parts[0].decode("utf-8", "replace"),
                                        parts[1].decode("utf-8", "replace")))
        return changes

    def inserted(self) -> list[tuple[int, str, str]]:
        """(index, name, value) of each SMFIR_INSHEADER, in order."""
        return [(c.index, c.name, c.value) for c in self.header_changes() if c.kind == "insert"]

    def changed(self) -> list[tuple[int, str, str]]:
        """(index, name, value) of each SMFIR_CHGHEADER, in order ("" value = deleted)."""
        return [(c.index, c.name, c.value) for c in self.header_changes() if c.kind == "change"]

    def added_values(self, name: str) -> list[str]:
        """Values of every header named `name` the milter inserted or added."""
        return [c.value for c in self.header_changes()
                if c.kind in ("insert", "add") and c.name.lower() == name.lower()]

    def quarantine_reason(self) -> str | None:
        for code, data in self.modifications:
            if code == "q":
                return data.rstrip(b"\0").decode("utf-8", "replace")
        return None


def _frame(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + cmd + data


def _b(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _cstr(value: str | bytes) -> bytes:
    return _b(value) + b"\0"


class MilterClient:
    def __init__(self, address: str | tuple[str, int], timeout: float = 120.0):
        """address: "/path/to.sock", "host:port" or (host, port)."""
        if isinstance(address, str) and address.startswith("/"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        else:
            if isinstance(address, str):
                host, _, port = address.rpartition(":")
                address = (host.strip("[]"), int(port))
            self.sock = socket.create_connection(address, timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.protocol = 0
        self.actions = 0
        self.symlists: dict[int, str] = {}   # SMFIR_SETSYMLIST: stage -> space-separated macro names

    def quit(self) -> None:
        try:
            self.sock.sendall(_frame(b"Q"))
        except OSError:
            pass
        self.sock.close()

    close = quit

    def __enter__(self) -> MilterClient:
        return self

    def __exit__(self, *exc) -> None:
        self.quit()

    # -- framing

    def _recv(self) -> Reply:
        while True:
            while len(self.buffer) < 4 or len(self.buffer) < 4 + struct.unpack("!I", self.buffer[:4])[0]:
                data = self.sock.recv(65536)
                if not data:
                    raise ProtocolError("milter closed the connection")
                self.buffer += data
            length = struct.unpack("!I", self.buffer[:4])[0]
            packet, self.buffer = self.buffer[4:4 + length], self.buffer[4 + length:]
            if packet[:1] != b"p":  # progress: keep waiting
                return Reply(packet[:1].decode("latin-1"), packet[1:])

    def _step(self, cmd: bytes, data: bytes, skipped: int, no_reply: int,
              macros: dict[str, str] | None = None) -> Reply | None:
        if self.protocol & skipped:
            return None
        self.macros(cmd, macros or {})
        self.sock.sendall(_frame(cmd, data))
        if self.protocol & no_reply:
            return None
        return self._recv()

    # -- the conversation, in SMTP order

    def negotiate(self, actions: int = ALL_ACTIONS, protocol: int = ALL_PROTOCOL) -> None:
        self.sock.sendall(_frame(b"O", struct.pack("!III", SMFI_VERSION, actions, protocol)))
        reply = self._recv()
        if reply.code != "O":
            raise ProtocolError(f"expected option negotiation, got {reply.code!r}")
        _, self.actions, self.protocol = struct.unpack("!III", reply.data[:12])
        rest = reply.data[12:]
        while len(rest) >= 4:
            (stage,) = struct.unpack("!I", rest[:4])
            names, _, rest = rest[4:].partition(b"\0")
            self.symlists[stage] = names.decode()

    def macros(self, stage: str | bytes, values: dict[str, str]) -> None:
        if values:
            payload = b"".join(_cstr(k) + _cstr(v) for k, v in values.items())
            self.sock.sendall(_frame(b"D", _b(stage) + payload))

    def connect(self, hostname: str, ip: str, port: int = 25, macros: dict | None = None) -> Reply | None:
        family = b"6" if ":" in ip else b"4"
        return self._step(b"C", _cstr(hostname) + family + struct.pack("!H", port) + _cstr(ip),
                          NOCONNECT, NR_CONN, macros)

    def helo(self, name: str | bytes) -> Reply | None:
        return self._step(b"H", _cstr(name), NOHELO, NR_HELO)

    def mail(self, sender: str, macros: dict | None = None) -> Reply | None:
        return self._step(b"M", _cstr(f"<{sender}>"), NOMAIL, NR_MAIL, macros)

    def rcpt(self, rcpt: str, macros: dict | None = None) -> Reply | None:
        return self._step(b"R", _cstr(f"<{rcpt}>"), NORCPT, NR_RCPT, macros)

    def data(self, macros: dict | None = None) -> Reply | None:
        return self._step(b"T", b"", NODATA, NR_DATA, macros)

    def header(self, name: str | bytes, value: str | bytes) -> Reply | None:
        """value as Postfix sends it with SMFIP_HDR_LEADSPC (leading space kept, folded with bare LF); without
        that option negotiated the leading whitespace is stripped, as Postfix does."""
        value = _b(value)
        if not self.protocol & HDR_LEADSPC:
            value = value.lstrip(b" \t")
        return self._step(b"L", _cstr(name) + _cstr(value), NOHDRS, NR_HDR)

    def headers(self, pairs) -> Reply | None:
        """Each header in turn; the first reply that ends the header phase (skip or a final one), else None."""
        for name, value in pairs:
            reply = self.header(name, value)
            if reply is not None and reply.code != "c":
                return reply
        return None

    def eoh(self, macros: dict | None = None) -> Reply | None:
        return self._step(b"N", b"", NOEOH, NR_EOH, macros)

    def body(self, data: bytes) -> Reply | None:
        """The body in CHUNK-sized pieces; the first reply that ends the body phase (skip or a final one), else
        None."""
        for offset in range(0, len(data), CHUNK):
            reply = self._step(b"B", data[offset:offset + CHUNK], NOBODY, NR_BODY)
            if reply is not None and reply.code != "c":
                return reply
        return None

    def eom(self, macros: dict | None = None) -> Outcome:
        """End of message: the modifications the milter asks for, in order, then its final reply."""
        self.macros(b"E", macros or {})
        self.sock.sendall(_frame(b"E"))
        modifications: list[tuple[str, bytes]] = []
        while True:
            reply = self._recv()
            if reply.code in FINAL_REPLIES:
                return Outcome(reply, "eom", modifications)
            modifications.append((reply.code, reply.data))

    def abort(self) -> None:
        self.sock.sendall(_frame(b"A"))

    # -- one whole transaction

    def transaction(self, *, client_ip: str, helo: str | bytes, mail_from: str, rcpts, headers, body: bytes,
                    queue_id: str = "BENCH", connect: bool = True, hostname: str = "unknown", auth: str = "",
                    mta: str = "mx.example.net") -> Outcome:
        """One SMTP transaction, the macros Postfix would send included. headers are (name, value) with the value
        as Postfix sends it with SMFIP_HDR_LEADSPC. The Outcome's stage says where the milter ended it (an SMFIR_SKIP
        ends only the header or body phase). auth: the SASL login ({auth_authen}), "" for none."""
        def stopped(reply: Reply | None, stage: str) -> Outcome | None:
            if reply is None or reply.code in ("c", "s"):
                return None
            return Outcome(reply, stage)

        if connect:
            reply = self.connect(hostname, client_ip, 25000,
                                 macros={"j": mta, "{daemon_name}": "authmilter-test", "{client_addr}": client_ip})
            if (out := stopped(reply, "connect")):
                return out
            if (out := stopped(self.helo(helo), "helo")):
                return out
        mail_macros = {"{mail_addr}": mail_from, **({"{auth_authen}": auth} if auth else {})}
        if (out := stopped(self.mail(mail_from, macros=mail_macros), "mail")):
            return out
        for rcpt in rcpts:
            if (out := stopped(self.rcpt(rcpt, macros={"{rcpt_addr}": rcpt, "i": queue_id}), "rcpt")):
                return out
        if (out := stopped(self.data(macros={"i": queue_id}), "data")):
            return out
        if (out := stopped(self.headers(headers), "header")):
            return out
        started = time.perf_counter()
        if (out := stopped(self.eoh(macros={"i": queue_id}), "eoh")):
            return out
        if (out := stopped(self.body(body), "body")):
            return out
        outcome = self.eom(macros={"i": queue_id})
        outcome.eoh_to_final_s = time.perf_counter() - started
        return outcome


def split_message(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Split a CRLF message into (name, value) headers the way Postfix hands them to a milter with
    SMFIP_HDR_LEADSPC (value keeps its leading whitespace; folded lines joined with LF + WSP) and the body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\n" + line)
        else:
            name, _, value = line.partition(b":")
            headers.append((name, value))
    return headers, body
