"""The tags of one ARC-Message-Signature or ARC-Seal (RFC 8617 §4.1.2, §4.1.3), judged before any DNS.

An AMS is a DKIM signature with i= as instance and no v=; an ARC-Seal has no h= and no body hash and always uses
relaxed header canonicalization. Tag values are compared as written (the ValiMail suite's "tag values are case
sensitive" cases). The key is a DKIM key record: `ArcSignature` offers what checks/dkim/key.py reads of a signature
(`identity`, `key_type`, `hash_alg`, `auid_domain`), so the key is fetched and judged by the DKIM code.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from authmilter.checks.dkim.body import BodyCanon, BodyHashKey, HashAlg
from authmilter.checks.dkim.signature import Identity
from authmilter.context import Header
from authmilter.errors import AuthmilterError

# RFC 8617 §4.1.2 a=: as DKIM; rsa-sha1 is refused as RFC 8301 refuses it for DKIM.
ALGORITHMS: dict[bytes, tuple[str, HashAlg]] = {
    b"rsa-sha256": ("rsa", HashAlg.SHA256),
    b"ed25519-sha256": ("ed25519", HashAlg.SHA256),
}
AMS_REQUIRED = (b"i", b"a", b"b", b"bh", b"d", b"h", b"s")
AS_REQUIRED = (b"i", b"a", b"b", b"cv", b"d", b"s")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_DIGITS = re.compile(rb"[0-9]{1,12}")
# d= and s= are DNS names (as in checks/dkim/signature.py): anything else cannot name a key, and nothing a sender
# smuggles (CR, LF, ";", spaces) survives into a header comment.
DNS_NAME = re.compile(rb"(?:[A-Za-z0-9_\-]|[\x80-\xff])+(?:\.(?:[A-Za-z0-9_\-]|[\x80-\xff])+)*")
_CANONS = {b"simple", b"relaxed"}
AS = b"arc-seal"
MAX_SIGNED_HEADERS = 256


class ArcSignatureProblem(AuthmilterError):
    """An AMS or AS that cannot be verified; in a chain that is `fail` (RFC 8617 §5.2 steps 4 and 7)."""


@dataclass(frozen=True, slots=True)
class ArcSignature:
    field: str                      # "ARC-Message-Signature" or "ARC-Seal", for reasons
    instance: int
    identity: Identity              # domain (d=), selector (s=), algorithm (a=): what key.py reads
    key_type: str
    hash_alg: HashAlg
    signature: bytes                # decoded b=
    header_canon: str = "relaxed"
    body_key: BodyHashKey | None = None  # AMS only
    body_hash: bytes = b""               # AMS only: decoded bh=
    signed_headers: tuple[bytes, ...] = ()  # AMS only: h=, lower-cased
    timestamp: int | None = None

    @property
    def auid_domain(self) -> str:
        # key.py's t=s test compares the signing identity with d=; an ARC signature has no i= identity.
        return self.identity.domain.lower()

    @property
    def domain(self) -> str:
        return self.identity.domain


def _problem(field: str, instance: int, what: str) -> ArcSignatureProblem:
    return ArcSignatureProblem(f"{field} i={instance}: {what}")


def _common(field: str, instance: int, tags: dict, required: tuple[bytes, ...]) -> tuple:
    for tag in required:
        if tag not in tags:
            raise _problem(field, instance, f"missing {tag.decode()}=")
    algorithm = ALGORITHMS.get(tags[b"a"].strip())
    if algorithm is None:
        raise _problem(field, instance, "unsupported algorithm")
    domain, selector = tags[b"d"].strip(), tags[b"s"].strip()
    if not DNS_NAME.fullmatch(domain):
        raise _problem(field, instance, "malformed d=")
    if not DNS_NAME.fullmatch(selector):
        raise _problem(field, instance, "malformed s=")
    signature = _b64(tags[b"b"], field, instance, "b")
    timestamp = None
    if b"t" in tags:
        if not _DIGITS.fullmatch(tags[b"t"].strip()):
            raise _problem(field, instance, "t= is not a number")
        timestamp = int(tags[b"t"].strip())
    identity = Identity(domain=domain.decode("utf-8", "replace"), selector=selector.decode("utf-8", "replace"),
                        algorithm=tags[b"a"].strip().decode("ascii"))
    return identity, algorithm, signature, timestamp


def _b64(value: bytes, field: str, instance: int, tag: str) -> bytes:
    compact = re.sub(rb"\s+", b"", value)
    if not _BASE64.fullmatch(compact):
        raise _problem(field, instance, f"{tag}= is not base64")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise _problem(field, instance, f"{tag}= is not base64") from None


def read_ams(instance: int, tags: dict) -> ArcSignature:
    field = "ARC-Message-Signature"
    identity, (key_type, hash_alg), signature, timestamp = _common(field, instance, tags, AMS_REQUIRED)
    body_hash = _b64(tags[b"bh"], field, instance, "bh")
    c_value = tags.get(b"c", b"relaxed/relaxed").strip()
    parts = c_value.split(b"/")
    if len(parts) == 1:
        parts.append(b"simple")  # RFC 6376 §3.5 c=, which the AMS inherits
    if len(parts) != 2 or not set(parts) <= _CANONS:
        raise _problem(field, instance, "unknown canonicalization c=")
    signed = tuple(h.strip().lower() for h in re.sub(rb"\s+", b"", tags[b"h"]).split(b":") if h.strip())
    if AS in signed:
        # RFC 8617 §4.1.2: "The AMS header field MUST NOT ... include ARC-Seal header fields" in h=.
        raise _problem(field, instance, "h= includes ARC-Seal")
    if len(signed) > MAX_SIGNED_HEADERS:
        raise _problem(field, instance, "too many signed header fields")
    limit = None
    if b"l" in tags:
        if not _DIGITS.fullmatch(tags[b"l"].strip()):
            raise _problem(field, instance, "l= is not a number")
        limit = int(tags[b"l"].strip())
    return ArcSignature(field, instance, identity, key_type, hash_alg, signature,
                        header_canon=parts[0].decode(),
                        body_key=BodyHashKey(BodyCanon(parts[1].decode()), hash_alg, limit),
                        body_hash=body_hash, signed_headers=signed, timestamp=timestamp)


def read_seal(instance: int, tags: dict) -> ArcSignature:
    field = "ARC-Seal"
    if b"h" in tags:
        # RFC 8617 §4.1.3: "The ARC-Seal does not use the "h" tag"; a seal that has one is invalid.
        raise _problem(field, instance, "h= is not allowed")
    identity, (key_type, hash_alg), signature, timestamp = _common(field, instance, tags, AS_REQUIRED)
    return ArcSignature(field, instance, identity, key_type, hash_alg, signature, timestamp=timestamp)


def header_pair(header: Header) -> tuple[bytes, bytes]:
    """(name, value with CRLF): the form dkimpy's canonicalization and header selection read."""
    return header.name, header.value + b"\r\n"
