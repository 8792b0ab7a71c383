"""The benchmark's fixed message mix and the DNS data that makes every check pass.

Mix (issue 5): 14 x 10 KB, 5 x 100 KB, 1 x 2 MB, each signed rsa-2048 relaxed/relaxed by bench.example, whose SPF
covers the loopback senders and whose DMARC record is p=reject, so SPF, DKIM, DMARC and iprev all pass.
"""

from __future__ import annotations

import base64
import random
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dkim

DOMAIN = "bench.example"
SELECTOR = "sel2048"
SENDER = f"news@{DOMAIN}"
RCPT = "user@mx.bench.example"
HELO = f"mail.{DOMAIN}"
CLIENT_IP = "127.0.0.10"
CLIENT_NAME = f"mail.{DOMAIN}"
MIX = ((14, 10 * 1024), (5, 100 * 1024), (1, 2 * 1024 * 1024))


@dataclass(frozen=True)
class BenchMessage:
    size: int
    raw: bytes   # CRLF, signed


def rsa_key(bits: int = 2048) -> tuple[bytes, str]:
    """(private key PEM, the p= value of the DNS key record)."""
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp, "key.pem")
        subprocess.run(["openssl", "genrsa", "-out", str(key), str(bits)], check=True, capture_output=True)
        der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                             capture_output=True).stdout
        return key.read_bytes(), base64.b64encode(der).decode()


def make_body(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [b"mail", b"authentication", b"results", b"header", b"postfix", b"milter", b"domain", b"key",
             b"signature", b"policy", b"alignment", b"report", b"the", b"and", b"of", b"to"]
    lines, total = [], 0
    while total < size:
        line = b" ".join(rng.choice(words) for _ in range(10))[:76]
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


def make_message(index: int, size: int, private_key: bytes) -> BenchMessage:
    headers = (
        f"From: Bench News <{SENDER}>\r\n"
        f"To: <{RCPT}>\r\n"
        f"Subject: benchmark message {index} of {size} bytes\r\n"
        f"Date: Sun, 22 Nov 2026 12:00:00 +0000\r\n"
        f"Message-ID: <bench-{index}-{size}@{DOMAIN}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
    ).encode()
    message = headers + b"\r\n" + make_body(size, index)
    signature = dkim.sign(message, SELECTOR.encode(), DOMAIN.encode(), private_key,
                          canonicalize=(b"relaxed", b"relaxed"),
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return BenchMessage(size, signature + message)


def make_multi_signed(index: int, size: int, private_key: bytes) -> BenchMessage:
    """The same message with two more signatures over it: simple/simple, and relaxed/relaxed with l=. A streaming
    verifier hashes the body three ways at once and must still hold none of it."""
    message = make_message(index, size, private_key).raw
    for canon, length in (((b"simple", b"simple"), False), ((b"relaxed", b"relaxed"), True)):
        message = dkim.sign(message, SELECTOR.encode(), DOMAIN.encode(), private_key, canonicalize=canon,
                            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
                            length=length) + message
    return BenchMessage(size, message)


def make_mix(private_key: bytes) -> list[BenchMessage]:
    messages, index = [], 0
    for count, size in MIX:
        for _ in range(count):
            messages.append(make_message(index, size, private_key))
            index += 1
    return messages


def zone(public_key: str, client_ips: list[str]) -> dict:
    """OpenSPF-style zone data for testlab/dnsserver.py: every lookup the checks make has an answer."""
    data: dict = {
        DOMAIN: [{"TXT": "v=spf1 ip4:127.0.0.0/8 ip6:::1 -all"}, {"MX": [10, f"mx.{DOMAIN}"]},
                 {"A": "127.0.0.10"}],
        f"_dmarc.{DOMAIN}": [{"TXT": "v=DMARC1; p=reject; rua=mailto:dmarc@bench.example"}],
        f"{SELECTOR}._domainkey.{DOMAIN}": [{"TXT": _split_txt(f"v=DKIM1; k=rsa; p={public_key}")}],
        f"mx.{DOMAIN}": [{"A": "127.0.0.1"}],
    }
    for ip in client_ips:
        reverse = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
        data[reverse] = [{"PTR": CLIENT_NAME}]
    data[CLIENT_NAME] = [{"A": ip} for ip in client_ips] + [{"TXT": "v=spf1 a -all"}]
    return data


def _split_txt(text: str) -> list[str]:
    return [text[i:i + 255] for i in range(0, len(text), 255)]
