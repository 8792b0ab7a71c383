"""A throw-away Ed25519 DKIM key (fixed seed, so runs are repeatable) and a signer for test messages."""

from __future__ import annotations

import base64

import dkim as dkimpy
import nacl.signing

SEED = b"authmilter-h8-hostile-test-key!!"  # 32 octets; protects nothing
SELECTOR = "h8"
SIGNED_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id")

_KEY = nacl.signing.SigningKey(SEED)


def key_record() -> str:
    """The TXT value to publish at SELECTOR._domainkey.<domain> (RFC 8463 §4)."""
    public = base64.b64encode(bytes(_KEY.verify_key)).decode("ascii")
    return f"v=DKIM1; k=ed25519; p={public}"


def key_name(domain: str) -> str:
    return f"{SELECTOR}._domainkey.{domain}"


def sign(message: bytes, domain: str, *, selector: str = SELECTOR) -> bytes:
    """The message (CRLF) with an ed25519-sha256 relaxed/relaxed DKIM-Signature on top."""
    header = dkimpy.sign(message, selector.encode(), domain.encode(), base64.b64encode(SEED),
                         signature_algorithm=b"ed25519-sha256", canonicalize=(b"relaxed", b"relaxed"),
                         include_headers=list(SIGNED_HEADERS))
    return header.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + message


def simple_message(author: str = "alice@example.org", *, subject: str = "hello",
                   body: bytes = b"Hello.\r\n") -> bytes:
    return (f"From: {author}\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            f"Date: Sun, 22 Nov 2026 23:00:00 +0000\r\nMessage-ID: <h8.{subject.replace(' ', '.')}@example.org>\r\n"
            "\r\n").encode("utf-8") + body
