"""The MTA side of the milter protocol, for tests: what Postfix would send, and what the milter answers.

Built on the `miltertest` package's constants and message framing, with two additions the tests need: raw bytes
(8-bit header values) and a negotiation reply that carries SMFIR_SETSYMLIST macro lists, which miltertest's
strict decoder refuses. Replies are honoured as negotiated: after an event the milter asked not to answer
(SMFIP_NR_*), the client does not wait.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from miltertest import constants as c

FINAL_REPLIES = {c.SMFIR_ACCEPT, c.SMFIR_CONTINUE, c.SMFIR_REJECT, c.SMFIR_TEMPFAIL, c.SMFIR_REPLYCODE,
                 c.SMFIR_DISCARD}


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


@dataclass
class Reply:
    code: str                   # one SMFIR_* letter
    data: bytes = b""

    @property
    def text(self) -> str:
        """For SMFIR_REPLYCODE: "550 5.7.1 text"."""
        return self.data.rstrip(b"\0").decode("utf-8", "replace")


@dataclass
class EomResult:
    """What the milter did at end-of-message: its modifications in order and its final reply."""

    modifications: list[tuple[str, tuple]] = field(default_factory=list)
    final: Reply | None = None

    def inserted(self) -> list[tuple[int, str, str]]:
        return [args for kind, args in self.modifications if kind == "insheader"]

    def changed(self) -> list[tuple[int, str, str]]:
        return [args for kind, args in self.modifications if kind == "chgheader"]

    def quarantine_reason(self) -> str | None:
        for kind, args in self.modifications:
            if kind == "quarantine":
                return args[0]
        return None


class MilterClient:
    def __init__(self, address, timeout: float = 20.0) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.buf = b""
        self.actions = 0
        self.protocol = 0
        self.symlists: dict[int, str] = {}

    # -- framing

    def _send(self, cmd: str, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack("!Lc", len(data) + 1, cmd.encode()) + data)

    def _recv(self) -> Reply:
        while True:
            if len(self.buf) >= 5:
                (length,) = struct.unpack("!L", self.buf[:4])
                if len(self.buf) >= 4 + length:
                    cmd = self.buf[4:5].decode()
                    data = self.buf[5:4 + length]
                    self.buf = self.buf[4 + length:]
                    if cmd == c.SMFIR_PROGRESS:
                        continue
                    return Reply(cmd, data)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("milter closed the connection")
            self.buf += chunk

    def _expect_reply(self, nr_bit: int) -> Reply | None:
        if self.protocol & nr_bit:
            return None
        return self._recv()

    # -- the conversation, in SMTP order

    def negotiate(self, actions: int = c.SMFI_V6_ACTS, protocol: int = c.SMFI_V6_PROT) -> None:
        self._send(c.SMFIC_OPTNEG, struct.pack("!LLL", c.MILTER_VERSION, actions, protocol))
        reply = self._recv()
        assert reply.code == c.SMFIC_OPTNEG, reply
        _version, self.actions, self.protocol = struct.unpack("!LLL", reply.data[:12])
        rest = reply.data[12:]
        while len(rest) >= 4:
            (stage,) = struct.unpack("!L", rest[:4])
            macros, _, rest = rest[4:].partition(b"\0")
            self.symlists[stage] = macros.decode()

    def macros(self, stage_cmd: str, values: dict[str, str]) -> None:
        if values:
            pairs = b"".join(_b(k) + b"\0" + _b(v) + b"\0" for k, v in values.items())
            self._send(c.SMFIC_MACRO, stage_cmd.encode() + pairs)

    def connect(self, hostname: str, ip: str, port: int = 25, macros: dict | None = None) -> Reply | None:
        self.macros(c.SMFIC_CONNECT, macros or {})
        family = c.SMFIA_INET6 if ":" in ip else c.SMFIA_INET
        self._send(c.SMFIC_CONNECT, _b(hostname) + b"\0" + family.encode() + struct.pack("!H", port)
                   + _b(ip) + b"\0")
        return self._expect_reply(c.SMFIP_NR_CONN)

    def helo(self, name: str) -> Reply | None:
        self._send(c.SMFIC_HELO, _b(name) + b"\0")
        return self._expect_reply(c.SMFIP_NR_HELO)

    def mail(self, sender: str, macros: dict | None = None) -> Reply | None:
        self.macros(c.SMFIC_MAIL, macros or {})
        self._send(c.SMFIC_MAIL, _b(f"<{sender}>") + b"\0")
        return self._expect_reply(c.SMFIP_NR_MAIL)

    def rcpt(self, rcpt: str, macros: dict | None = None) -> Reply | None:
        self.macros(c.SMFIC_RCPT, macros or {})
        self._send(c.SMFIC_RCPT, _b(f"<{rcpt}>") + b"\0")
        return self._expect_reply(c.SMFIP_NR_RCPT)

    def header(self, name: str | bytes, value: str | bytes) -> Reply | None:
        """value as Postfix sends it with SMFIP_HDR_LEADSPC: leading space kept, folded with bare LF."""
        self._send(c.SMFIC_HEADER, _b(name) + b"\0" + _b(value) + b"\0")
        return self._expect_reply(c.SMFIP_NR_HDR)

    def headers(self, pairs) -> None:
        for name, value in pairs:
            self.header(name, value)

    def body(self, data: bytes) -> None:
        for start in range(0, len(data), c.MILTER_CHUNK_SIZE):
            self._send(c.SMFIC_BODY, data[start:start + c.MILTER_CHUNK_SIZE])
            self._expect_reply(c.SMFIP_NR_BODY)

    def eom(self, macros: dict | None = None) -> EomResult:
        self.macros(c.SMFIC_BODYEOB, macros or {})
        self._send(c.SMFIC_BODYEOB)
        result = EomResult()
        while True:
            reply = self._recv()
            if reply.code in FINAL_REPLIES:
                result.final = reply
                return result
            result.modifications.append(_decode_modification(reply))

    def abort(self) -> None:
        self._send(c.SMFIC_ABORT)

    def quit(self) -> None:
        try:
            self._send(c.SMFIC_QUIT)
        finally:
            self.sock.close()

    def message(self, *, ip: str, helo: str, mail_from: str, rcpts=("user@example.net",), headers=(),
                body: bytes = b"", queue_id: str = "4ABCDE", hostname: str = "unknown",
                auth: str = "") -> EomResult:
        """One whole transaction; returns the end-of-message result (or the RCPT rejection as `final`)."""
        self.connect(hostname, ip, macros={"j": "mx.example.net", "{client_addr}": ip})
        self.helo(helo)
        self.mail(mail_from, macros={"{auth_authen}": auth} if auth else {})
        for rcpt in rcpts:
            reply = self.rcpt(rcpt, macros={"{i}": queue_id})
            if reply is not None and reply.code != c.SMFIR_CONTINUE:
                return EomResult(final=reply)
        self.headers(headers)
        self.body(body)
        return self.eom(macros={"{i}": queue_id})


def _decode_modification(reply: Reply) -> tuple[str, tuple]:
    data = reply.data
    if reply.code in (c.SMFIR_INSHEADER, c.SMFIR_CHGHEADER):
        (index,) = struct.unpack("!L", data[:4])
        name, value = _two_strings(data[4:])
        kind = "insheader" if reply.code == c.SMFIR_INSHEADER else "chgheader"
        return kind, (index, name.decode(), value.decode("utf-8", "replace"))
    if reply.code == c.SMFIR_ADDHEADER:
        name, value = _two_strings(data)
        return "addheader", (name.decode(), value.decode("utf-8", "replace"))
    if reply.code == c.SMFIR_QUARANTINE:
        return "quarantine", (data.rstrip(b"\0").decode("utf-8", "replace"),)
    return reply.code, (data,)


def _two_strings(data: bytes) -> tuple[bytes, bytes]:
    name, _, rest = data.partition(b"\0")
    return name, rest[:-1] if rest.endswith(b"\0") else rest
