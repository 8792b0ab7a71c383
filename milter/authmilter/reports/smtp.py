"""Handing report mail to the MTA: SMTP to the local one (`[reports] smtp_host:smtp_port`), one connection a run.

SMTP rather than the sendmail command: under the unit's NoNewPrivileges= Postfix's setgid postdrop cannot run.
"""

from __future__ import annotations

import smtplib
import socket
from typing import Protocol

from authmilter.errors import AuthmilterError


class SendError(AuthmilterError):
    """The MTA did not take the message (refused it, or could not be reached)."""


class Transport(Protocol):
    def send(self, sender: str, recipients: tuple[str, ...], message: bytes) -> tuple[str, ...]:
        """Hand one message over; returns the recipients the MTA refused while it accepted others. Raises
        SendError when it accepted none."""
        ...

    def close(self) -> None:
        ...


class SmtpTransport:
    """SMTP to the local MTA, one connection reused for every report of a run (RSET between messages)."""

    def __init__(self, host: str, port: int, timeout: float, *, helo: str | None = None):
        self.host, self.port, self.timeout = host, port, timeout
        # socket.getfqdn() (smtplib's default) may ask the DNS; the host name is what we are.
        self.helo = helo or socket.gethostname()
        self._smtp: smtplib.SMTP | None = None

    def send(self, sender: str, recipients: tuple[str, ...], message: bytes) -> tuple[str, ...]:
        for attempt in (1, 2):
            try:
                smtp = self._connection()
                refused = smtp.sendmail(sender, list(recipients), message)
                return tuple(sorted(refused))
            except smtplib.SMTPServerDisconnected as exc:
                self._drop()
                if attempt == 2:  # a kept connection the MTA closed gets one fresh try
                    raise SendError(f"{self._where()}: connection lost: {exc}") from None
            except smtplib.SMTPRecipientsRefused as exc:
                self._reset()
                raise SendError(f"{self._where()} refused every recipient: {_replies(exc.recipients)}") from None
            except smtplib.SMTPResponseException as exc:
                self._reset()
                raise SendError(f"{self._where()} refused the message: {exc.smtp_code} "
                                f"{_text(exc.smtp_error)}") from None
            except (OSError, smtplib.SMTPException) as exc:
                self._drop()
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise SendError(f"{self._where()}: {reason}") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._drop()

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:
            self._smtp = smtplib.SMTP(self.host, self.port, local_hostname=self.helo, timeout=self.timeout)
        return self._smtp

    def _reset(self) -> None:
        try:
            if self._smtp is not None:
                self._smtp.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            finally:
                self._smtp = None

    def _where(self) -> str:
        return f"MTA {self.host}:{self.port}"


def _text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return " ".join(text.split())[:300]


def _replies(recipients: dict) -> str:
    return "; ".join(f"{rcpt}: {code} {_text(text)}" for rcpt, (code, text) in sorted(recipients.items()))
