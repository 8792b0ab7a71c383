"""Messages for the DKIM/DMARC scenarios, signed with dkimpy, and how to read back what the receiver made of them.

`sign()` drives dkimpy's own signer (`DomainSigner.gen_header`: its canonicalization, hashing, RSA and Ed25519) but
builds the tag list itself, because dkimpy's `sign()` has no x= and always stamps t= with the wall clock, and
because the injection scenarios need d= and s= values no sane signer would write. Everything else (which headers,
which canonicalization, which algorithm) is an argument, so each scenario states exactly what it signs.

Messages are bytes with CRLF line ends: SMTP carries them that way, and a `simple` signature covers every byte.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterable

import dkim as dkimpy
import nacl.encoding
import nacl.signing
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import HASH_ALGORITHMS, parse_pem_private_key

from testlab.authzones import SELECTOR, LabKey
from tests.e2e.headers import ParsedAR, parse_ar
from testlab.netns import wait_until
from testlab.zonedata import MX_NAME, RECIPIENT_DOMAIN

RCPT = f"user@{RECIPIENT_DOMAIN}"
HOLD_TIMEOUT = 15.0
SIGNED_HEADERS = ("from", "to", "subject", "date", "message-id")

# A Subject and a From folded the way MUAs fold them, with runs of blanks a relaxed canonicalization would squeeze:
# a `simple` header signature only survives if every byte, folding included, reaches the verifier unchanged.
FOLDED_SUBJECT = b"Subject: A  quarterly   report on\r\n\tfolding,  canonicalization\r\n    and other  things"


def new_message_id() -> str:
    return f"{uuid.uuid4().hex}@lab.test"


def message(*, author: str, subject: bytes | str = b"Subject: authmilter e2e", body: bytes = b"Hello.\r\n",
            extra: Iterable[bytes] = (), to: str = RCPT, from_line: bytes | None = None) -> bytes:
    """An RFC 5322 message. `subject` and `from_line` are whole header lines (so tests can fold them)."""
    subject_line = subject.encode() if isinstance(subject, str) else subject
    if not subject_line.lower().startswith(b"subject:"):
        subject_line = b"Subject: " + subject_line
    lines = [
        from_line if from_line is not None else f"From: Lab Author <{author}>".encode("utf-8"),
        f"To: <{to}>".encode(),
        subject_line,
        b"Date: Sun, 22 Nov 2026 12:00:00 +0000",
        f"Message-ID: <{new_message_id()}>".encode(),
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def sign(msg: bytes, key: LabKey, *, domain: str | bytes, selector: str | bytes = SELECTOR,
         canon: tuple[str, str] = ("relaxed", "relaxed"), algorithm: str | None = None,
         headers: tuple[str, ...] = SIGNED_HEADERS, timestamp: int | None = None,
         expiration: int | None = None, identity: str | None = None, length: int | None = None) -> bytes:
    """`msg` with one DKIM-Signature prepended (RFC 6376 §5).

    `algorithm` defaults to the key's (rsa-sha256 / ed25519-sha256); "rsa-sha1" with an RSA key is allowed on
    purpose. `domain`/`selector` may be bytes to sign with values that are not domain names at all. `length`: an
    l= tag, the body hash then covering only that many canonical octets (RFC 6376 §3.5).
    """
    algorithm_b = (algorithm or key.signature_algorithm).encode()
    domain_b = domain if isinstance(domain, bytes) else domain.encode()
    selector_b = selector if isinstance(selector, bytes) else selector.encode()
    signer = dkimpy.DKIM(msg, linesep=b"\r\n")
    signer.signature_algorithm = algorithm_b
    signer.hasher = HASH_ALGORITHMS[algorithm_b]
    if key.algorithm == "ed25519":
        private = nacl.signing.SigningKey(key.private, encoder=nacl.encoding.Base64Encoder)
    else:
        private = parse_pem_private_key(key.private)
    policy = CanonicalizationPolicy.from_c_value("/".join(canon).encode())
    include = tuple(h.lower().encode() for h in headers)
    canonical_body = policy.canonicalize_body(signer.body)
    body_hash = signer.hasher(canonical_body if length is None else canonical_body[:length]).digest()
    stamp = int(time.time()) if timestamp is None else timestamp
    fields = [
        (b"v", b"1"),
        (b"a", algorithm_b),
        (b"c", policy.to_c_value()),
        (b"d", domain_b),
        (b"i", identity.encode() if identity else b"@" + domain_b),
        (b"q", b"dns/txt"),
        (b"s", selector_b),
        (b"t", str(stamp).encode()),
        *([(b"x", str(expiration).encode())] if expiration is not None else []),
        *([(b"l", str(length).encode())] if length is not None else []),
        (b"h", b" : ".join(include)),
        (b"bh", base64.b64encode(body_hash)),
        (b"b", b"0" * 60),  # dkimpy's placeholder: b= folds onto its own line before signing
    ]
    value = signer.gen_header(fields, include, policy, b"DKIM-Signature", private)
    return b"DKIM-Signature: " + value + msg


def replace_header(msg: bytes, name: str, new_line: bytes) -> bytes:
    """Replace the whole (possibly folded) header `name` by `new_line`: a change made after signing."""
    head, sep, body = msg.partition(b"\r\n\r\n")
    pattern = re.compile(rb"(?im)^" + re.escape(name.encode()) + rb":.*(?:\r\n[ \t].*)*$")
    new_head, count = pattern.subn(lambda _: new_line, head, count=1)
    assert count == 1, f"no {name} header to replace"
    return new_head + sep + body


# ---------------------------------------------------------------- reading back what the receiver wrote


def header_fields(raw: bytes | str) -> list[tuple[str, str]]:
    """(name, unfolded value) of a header block or whole message, raw UTF-8 tolerated.

    Not `email` with compat32: it turns a header with 8-bit bytes into a Header object instead of text."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    head = re.split(r"\r?\n\r?\n", text, maxsplit=1)[0]
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", head)
    fields = []
    for line in unfolded.splitlines():
        name, colon, value = line.partition(":")
        if colon:
            fields.append((name.strip(), value))
    return fields


def our_ar(delivered) -> ParsedAR:
    """Exactly one Authentication-Results with our authserv-id, parsed back with authres."""
    return ar_from_header_block(delivered.raw)


def ar_from_header_block(headers: bytes | str) -> ParsedAR:
    """Our A-R from a message or a raw header block (e.g. postcat's output for a held message)."""
    ours = [value for name, value in header_fields(headers)
            if name.lower() == "authentication-results" and parse_ar(value).authserv_id.lower() == MX_NAME]
    assert len(ours) == 1, f"expected exactly one A-R for {MX_NAME} in:\n{headers!r}"
    return parse_ar(ours[0])


def held(lab, sent) -> str:
    """Wait (bounded) until Postfix has the message in its hold queue (milter quarantine); return its headers as
    postcat -h prints them."""
    assert sent.accepted, "; ".join(map(str, sent.stages))
    config = str(lab.postfix_config)

    def in_hold() -> bool:
        listing = lab.namespace.run("postqueue", "-c", config, "-j", timeout=15).stdout.decode()
        return any(entry.get("queue_id") == sent.queue_id and entry.get("queue_name") == "hold"
                   for entry in map(json.loads, filter(None, listing.splitlines())))

    wait_until(in_hold, HOLD_TIMEOUT, f"{sent.queue_id} in the hold queue")
    assert not lab.is_delivered(sent)
    return lab.namespace.run("postcat", "-c", config, "-h", "-q", sent.queue_id, timeout=15).stdout.decode(
        "utf-8", "replace")


def comments(ar: ParsedAR, method: str) -> list[str]:
    """The result comment of every `method` entry, in order (authres drops comments; RFC 8601 §2.2 puts the
    result comment right after `method=result`)."""
    found = []
    for segment in _resinfo_segments(ar.raw):
        match = re.match(r"\s*" + re.escape(method) + r"\s*=\s*[a-z]+\s*\(", segment, re.I)
        if match:
            found.append(_balanced(segment, match.end() - 1))
    return found


def _resinfo_segments(raw: str) -> list[str]:
    """Split an unfolded A-R value at the semicolons that are not inside a quoted string or a comment."""
    segments, current, depth, quoted, escaped = [], [], 0, False, False
    for ch in raw:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif ch == '"' and depth == 0:
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == ";" and depth == 0:
            segments.append("".join(current))
            current = []
            continue
        current.append(ch)
    segments.append("".join(current))
    return segments[1:]  # the first one is the authserv-id


def _balanced(text: str, open_at: int) -> str:
    depth, escaped = 0, False
    for index in range(open_at, len(text)):
        ch = text[index]
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:index]
    raise AssertionError(f"unbalanced comment in {text!r}")
