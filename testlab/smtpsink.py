"""An SMTP server on loopback that keeps what it receives: the MTA `reports send` talks to, in tests and the bench.

    from testlab.smtpsink import SmtpSink

    with SmtpSink() as sink:                 # 127.0.0.1, a free port; stops by itself after `lifetime` seconds
        sink.host, sink.port
        sink.refuse_next(1, "451 4.3.0 try again later")   # the next DATA gets this reply instead of 250
        sink.refuse_rcpt("nobody@example.org", "550 5.1.1 no such user")
        sink.messages                        # [Received(mail_from, rcpts, data)], data = the bytes after DATA
        sink.wait_for(3, timeout=10)         # until 3 messages were accepted

aiosmtpd's Controller runs the server in its own thread with its own event loop; the data kept is the message as
it arrived (dot-unstuffed, CRLF line ends), so a test can compare it byte for byte with what was sent.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

from aiosmtpd.controller import Controller


@dataclass(frozen=True, slots=True)
class Received:
    mail_from: str
    rcpts: tuple[str, ...]
    data: bytes


class _Handler:
    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.sink._rcpt_refusals.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        return self.sink._take(envelope)


class SmtpSink:
    def __init__(self, host: str = "127.0.0.1", *, lifetime: float = 300.0):
        self.host = host
        self.port = _free_port(host)
        self.messages: list[Received] = []
        self.refused: list[Received] = []
        self._lock = threading.Condition()
        self._refusals: list[str] = []
        self._rcpt_refusals: dict[str, str] = {}
        self._controller = Controller(_Handler(self), hostname=host, port=self.port, ready_timeout=10,
                                      data_size_limit=64 * 1024 * 1024)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True
        self._stopped = False

    def start(self) -> SmtpSink:
        self._controller.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._timer.cancel()
        self._controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def refuse_next(self, count: int, reply: str = "451 4.3.0 try again later") -> None:
        with self._lock:
            self._refusals.extend([reply] * count)

    def refuse_rcpt(self, address: str, reply: str = "550 5.1.1 no such user") -> None:
        self._rcpt_refusals[address.lower()] = reply

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        end = time.monotonic() + timeout
        with self._lock:
            while len(self.messages) < count and time.monotonic() < end:
                self._lock.wait(max(end - time.monotonic(), 0.01))
            return list(self.messages)

    def _take(self, envelope) -> str:
        received = Received(envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.original_content))
        with self._lock:
            if self._refusals:
                self.refused.append(received)
                return self._refusals.pop(0)
            self.messages.append(received)
            self._lock.notify_all()
        return "250 2.0.0 OK"


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class CountingSink:
    """The cheapest SMTP server that still speaks SMTP, for benchmarks: it keeps no message, only counts them (and
    their bytes), so what a bench measures is the client, not the sink. One client connection at a time.

        with CountingSink() as sink:
            sink.port ...; sink.messages, sink.octets
    """

    def __init__(self, host: str = "127.0.0.1", *, lifetime: float = 900.0):
        self.host = host
        self.messages = 0
        self.octets = 0
        self._server = socket.create_server((host, 0))
        self.port = self._server.getsockname()[1]
        self._server.settimeout(0.5)
        self._end = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._serve, name=f"countingsink-{self.port}", daemon=True)
        self._stopped = threading.Event()

    def __enter__(self) -> CountingSink:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._server.close()

    def _serve(self) -> None:
        while not self._stopped.is_set() and time.monotonic() < self._end:
            try:
                conn, _ = self._server.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                conn.settimeout(30)
                try:
                    self._session(conn.makefile("rb"), conn)
                except (OSError, ValueError):
                    pass

    def _session(self, reader, conn: socket.socket) -> None:
        conn.sendall(b"220 sink ESMTP\r\n")
        while not self._stopped.is_set():
            line = reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                conn.sendall(b"250-sink\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go ahead\r\n")
                size = 0
                for data_line in iter(reader.readline, b""):
                    if data_line == b".\r\n":
                        break
                    size += len(data_line)
                self.messages += 1
                self.octets += size
                conn.sendall(b"250 2.0.0 OK\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:  # HELO, MAIL, RCPT, RSET, NOOP
                conn.sendall(b"250 OK\r\n")
