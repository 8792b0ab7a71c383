"""A byte-exact MTA side of the milter protocol (version 6), for benchmarks and load tests.

miltertest's codec encodes header values and body chunks as UTF-8 text; we need raw 8-bit bytes and no per-chunk
re-encoding, and we must honour the NO*/NR* steps the milter negotiates away (Postfix does), or a milter that asks
for "no reply to headers" would leave us waiting forever.
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

FINAL_REPLIES = {b"a", b"c", b"r", b"t", b"y", b"d", b"s"}


class ProtocolError(Exception):
    pass


@dataclass
class Outcome:
    """What the milter answered at end of message (or earlier, when it stopped the transaction)."""

    reply: str                                   # "accept", "continue", "reject", "tempfail", "replycode", ...
    reply_text: str = ""
    stage: str = "eom"
    modifications: list[tuple[str, bytes]] = field(default_factory=list)
    eoh_to_final_s: float = 0.0


_REPLY_NAMES = {b"a": "accept", b"c": "continue", b"r": "reject", b"t": "tempfail", b"y": "replycode",
                b"d": "discard", b"s": "skip"}


def _frame(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + cmd + data


def _cstr(value: str | bytes) -> bytes:
    return (value.encode() if isinstance(value, str) else value) + b"\0"


class MilterClient:
    def __init__(self, address: str, timeout: float = 120.0):
        """address: "/path/to.sock" or "host:port"."""
        if address.startswith("/"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        else:
            host, _, port = address.rpartition(":")
            self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.protocol = 0
        self.actions = 0

    def close(self) -> None:
        try:
            self.sock.sendall(_frame(b"Q"))
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> MilterClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _recv(self) -> tuple[bytes, bytes]:
        while True:
            while len(self.buffer) < 4 or len(self.buffer) < 4 + struct.unpack("!I", self.buffer[:4])[0]:
                data = self.sock.recv(65536)
                if not data:
                    raise ProtocolError("milter closed the connection")
                self.buffer += data
            length = struct.unpack("!I", self.buffer[:4])[0]
            packet, self.buffer = self.buffer[4:4 + length], self.buffer[4 + length:]
            if packet[:1] != b"p":  # progress: keep waiting
                return packet[:1], packet[1:]

    def negotiate(self, actions: int = ALL_ACTIONS, protocol: int = ALL_PROTOCOL) -> None:
        self.sock.sendall(_frame(b"O", struct.pack("!III", SMFI_VERSION, actions, protocol)))
        cmd, data = self._recv()
        if cmd != b"O":
            raise ProtocolError(f"expected option negotiation, got {cmd!r}")
        _, self.actions, self.protocol = struct.unpack("!III", data[:12])

    def _step(self, cmd: bytes, data: bytes, skipped: int, no_reply: int) -> tuple[bytes, bytes] | None:
        if self.protocol & skipped:
            return None
        self.sock.sendall(_frame(cmd, data))
        if self.protocol & no_reply:
            return None
        return self._recv()

    def macros(self, stage: bytes, values: dict[str, str]) -> None:
        payload = b"".join(_cstr(k) + _cstr(v) for k, v in values.items())
        self.sock.sendall(_frame(b"D", stage + payload))

    def transaction(self, *, client_ip: str, helo: str, mail_from: str, rcpts: list[str],
                    headers: list[tuple[bytes, bytes]], body: bytes, queue_id: str = "BENCH",
                    connect: bool = True) -> Outcome:
        """One SMTP transaction. headers are (name, value) with the value as Postfix sends it (no leading space
        unless SMFIP_HDR_LEADSPC was negotiated: then pass values that keep it)."""
        def stopped(reply: tuple[bytes, bytes] | None, stage: str) -> Outcome | None:
            if reply is None or reply[0] == b"c":
                return None
            return Outcome(_REPLY_NAMES.get(reply[0], reply[0].decode()), reply[1].rstrip(b"\0").decode(
                "utf-8", "replace"), stage)

        if connect:
            family = b"6" if ":" in client_ip else b"4"
            self.macros(b"C", {"j": "mx.bench.example", "{daemon_name}": "bench"})
            reply = self._step(b"C", _cstr("client.bench.example") + family + struct.pack("!H", 25000)
                               + _cstr(client_ip), NOCONNECT, NR_CONN)
            if (out := stopped(reply, "connect")):
                return out
            reply = self._step(b"H", _cstr(helo), NOHELO, NR_HELO)
            if (out := stopped(reply, "helo")):
                return out
        self.macros(b"M", {"{mail_addr}": mail_from})
        reply = self._step(b"M", _cstr(f"<{mail_from}>"), NOMAIL, NR_MAIL)
        if (out := stopped(reply, "mail")):
            return out
        for rcpt in rcpts:
            self.macros(b"R", {"{rcpt_addr}": rcpt})
            reply = self._step(b"R", _cstr(f"<{rcpt}>"), NORCPT, NR_RCPT)
            if (out := stopped(reply, "rcpt")):
                return out
        self.macros(b"T", {"i": queue_id})
        reply = self._step(b"T", b"", NODATA, NR_DATA)
        if (out := stopped(reply, "data")):
            return out
        if not self.protocol & NOHDRS:
            for name, value in headers:
                if not self.protocol & HDR_LEADSPC:
                    value = value.lstrip(b" \t")
                reply = self._step(b"L", name + b"\0" + value + b"\0", NOHDRS, NR_HDR)
                if reply is not None and reply[0] == b"s":
                    break
                if (out := stopped(reply, "header")):
                    return out
        self.macros(b"N", {"i": queue_id})
        started = time.perf_counter()
        reply = self._step(b"N", b"", NOEOH, NR_EOH)
        if (out := stopped(reply, "eoh")):
            return out
        if not self.protocol & NOBODY:
            for offset in range(0, len(body), CHUNK):
                reply = self._step(b"B", body[offset:offset + CHUNK], NOBODY, NR_BODY)
                if reply is not None and reply[0] == b"s":
                    break
                if (out := stopped(reply, "body")):
                    return out
        self.macros(b"E", {"i": queue_id})
        self.sock.sendall(_frame(b"E"))
        modifications: list[tuple[str, bytes]] = []
        while True:
            cmd, data = self._recv()
            if cmd in FINAL_REPLIES:
                outcome = Outcome(_REPLY_NAMES.get(cmd, cmd.decode()), data.rstrip(b"\0").decode("utf-8", "replace"))
                outcome.modifications = modifications
                outcome.eoh_to_final_s = time.perf_counter() - started
                return outcome
            modifications.append((cmd.decode(), data))

    def abort(self) -> None:
        self.sock.sendall(_frame(b"A"))


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
