"""ARC-sealed test messages, made with dkimpy's arc_sign (shared by the unit and end-to-end tests).

A sealer here is a list server: it records its own Authentication-Results for what it received, may change the
message (subject tag, footer: what breaks the author's DKIM signature), then seals it.
"""

from __future__ import annotations

import re
from pathlib import Path

import dkim as dkimpy

KEYS = Path(__file__).parent / "data" / "dkim" / "keys"
PRIVATE_KEY = (KEYS / "rsa2048.key").read_bytes()
PUBLIC_KEY = (KEYS / "rsa2048.pub.b64").read_text().strip()
SELECTOR = "arc"
SEALED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]


def key_record() -> str:
    return f"v=DKIM1; k=rsa; p={PUBLIC_KEY}"


def key_name(domain: str) -> str:
    return f"{SELECTOR}._domainkey.{domain}"


def as_list_mail(message: bytes) -> bytes:
    """What a mailing list does to a message: a subject tag and a footer (the author's DKIM signature breaks)."""
    message = re.sub(rb"(?m)^Subject: ", b"Subject: [list] ", message, count=1)
    return message + b"-- \r\nlist footer\r\n"


def seal(message: bytes, sealer: str, recorded: str, *, change=as_list_mail, private_key: bytes = PRIVATE_KEY) -> bytes:
    """`message` (CRLF) as `sealer` forwards it: its Authentication-Results header saying `recorded` (the
    results without the authserv-id, e.g. "dmarc=pass header.from=example.org"), the change a list makes, then
    the next ARC set on top. The chain's cv comes from an "arc=" result in `recorded` (none for the first hop)."""
    received = f"Authentication-Results: {sealer}; {recorded}\r\n".encode() + message
    changed = change(received)
    arc_set = dkimpy.arc_sign(changed, SELECTOR.encode(), sealer.encode(), private_key, sealer.encode(),
                              include_headers=SEALED_HEADERS)
    if not arc_set:
        raise ValueError("dkimpy made no ARC set (no Authentication-Results of the sealer?)")
    return b"".join(_crlf(line) for line in arc_set) + changed


def _crlf(line: bytes) -> bytes:
    line = line.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return line if line.endswith(b"\r\n") else line + b"\r\n"
