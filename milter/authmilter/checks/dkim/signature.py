"""Parsing and validating one DKIM-Signature header field (RFC 6376 §3.5, §6.1.1), before any DNS.

Tag syntax is dkimpy's `parse_tag_value`; what the tags must contain is checked here, so each defect gets its own
short reason and no check reads a clock we do not control (dkimpy's `validate_signature_fields` reads time.time()
and allows 10 hours; x= and t= are judged in dkim.py with the injected time and our tolerance).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from dkim.util import parse_tag_value

from authmilter.checks.dkim.body import BodyCanon, BodyHashKey, HashAlg
from authmilter.errors import AuthmilterError
from authmilter.results import Status

# a= values we can verify: RFC 6376 §3.3 (rsa-sha1, rsa-sha256) and RFC 8463 §3 (ed25519-sha256).
ALGORITHMS: dict[str, tuple[str, HashAlg]] = {
    "rsa-sha256": ("rsa", HashAlg.SHA256),
    "rsa-sha1": ("rsa", HashAlg.SHA1),
    "ed25519-sha256": ("ed25519", HashAlg.SHA256),
}
REQUIRED_TAGS = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")  # RFC 6376 §6.1.1
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_DIGITS = re.compile(rb"[0-9]{1,76}")  # RFC 6376 §3.5: l=, t=, x= are at most 76 digits (l= 76, t=/x= 12 SHOULD)
# d= and s= are DNS labels (RFC 6376 §3.5; UTF-8 U-labels allowed by RFC 8616); anything else cannot name a key.
_NAME = re.compile(rb"(?:[A-Za-z0-9_\-]|[\x80-\xff])+(?:\.(?:[A-Za-z0-9_\-]|[\x80-\xff])+)*")
MAX_SIGNED_HEADERS = 256
_CR_LF = re.compile(rb"[\r\n]")
_QP = re.compile(rb"=([0-9A-Fa-f]{2})")


class SignatureProblem(AuthmilterError):
    """A signature that cannot be verified, with the RFC 8601 result it earns and a short reason."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """What can be shown of a signature even when it is malformed: the tags, raw, without CR/LF."""

    domain: str = ""
    selector: str = ""
    identity: str = ""
    algorithm: str = ""
    b_prefix: str = ""


@dataclass(frozen=True, slots=True)
class ParsedSignature:
    identity: Identity
    tags: Mapping[bytes, bytes]     # tag -> raw value bytes (dkimpy's form; read-only: a memoized parse shares it)
    header_name: bytes
    header_value: bytes             # as received, with CRLF, for dkimpy's b= removal and header hashing
    key_type: str                   # "rsa" or "ed25519"
    hash_alg: HashAlg
    header_canon: str               # "simple" or "relaxed"
    body_key: BodyHashKey
    body_hash: bytes                # decoded bh=
    signature: bytes                # decoded b=
    signed_headers: tuple[bytes, ...]  # h=, lower-cased
    timestamp: int | None           # t=
    expiration: int | None          # x=
    auid_domain: str                # domain part of i= (or d=)


def _text(value: bytes) -> str:
    """A tag value for display: unfolded, no CR/LF, undecodable bytes replaced."""
    return _CR_LF.sub(b"", value).decode("utf-8", "replace").strip()


def _qp_decode(value: bytes) -> bytes:
    """RFC 6376 §2.11 dkim-quoted-printable, as used by i=."""
    return _QP.sub(lambda m: bytes([int(m.group(1), 16)]), re.sub(rb"\s+", b"", value))


def _b64(value: bytes, tag: str) -> bytes:
    compact = re.sub(rb"\s+", b"", value)
    if not _BASE64.fullmatch(compact):
        raise SignatureProblem(Status.NEUTRAL, f"{tag}= is not base64")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureProblem(Status.NEUTRAL, f"{tag}= is not base64") from None


# Each signature is read at end of headers (which body hashes to compute) and again at end of message (to verify):
# the tag parse and the display fields are pure functions of the value, so the second read is a cache hit. Only
# values of a plausible size are cached (a real DKIM-Signature is under 1 KB), which bounds the cache's memory.
_MEMO_MAX_BYTES = 4096


def identity_of(header_value: bytes) -> tuple[Identity, dict | None]:
    """Best-effort display fields, and the tag dict when the tag list parses (None otherwise).

    dkimpy's parser raises InvalidTagValueList (duplicate tag, a spec without "="); the caller maps it.
    """
    if len(header_value) > _MEMO_MAX_BYTES:
        return _identity_of(header_value)
    ident, tags = _identity_of_memo(bytes(header_value))
    return ident, dict(tags)  # a copy: callers own their tag dict


def _identity_of(header_value: bytes) -> tuple[Identity, dict]:
    tags = parse_tag_value(header_value)
    return _identity(tags), tags


@functools.lru_cache(maxsize=64)
def _identity_of_memo(header_value: bytes) -> tuple[Identity, dict]:
    return _identity_of(header_value)


def lenient_identity(header_value: bytes) -> Identity:
    """Display fields of a signature whose tag list does not parse: first occurrence of each tag wins."""
    if len(header_value) > _MEMO_MAX_BYTES:
        return _lenient_identity(header_value)
    return _lenient_identity_memo(bytes(header_value))


@functools.lru_cache(maxsize=64)
def _lenient_identity_memo(header_value: bytes) -> Identity:
    return _lenient_identity(header_value)


def _lenient_identity(header_value: bytes) -> Identity:
    tags: dict[bytes, bytes] = {}
    for spec in header_value.split(b";"):
        name, eq, value = spec.partition(b"=")
        if eq:
            tags.setdefault(name.strip(), value.strip())
    return _identity(tags)


def _identity(tags: dict) -> Identity:
    domain = _text(tags.get(b"d", b""))
    identity = _text(_qp_decode(tags[b"i"])) if b"i" in tags else (f"@{domain}" if domain else "")
    b_value = re.sub(rb"\s+", b"", tags.get(b"b", b""))
    return Identity(domain=domain, selector=_text(tags.get(b"s", b"")), identity=identity,
                    algorithm=_text(tags.get(b"a", b"")).lower(), b_prefix=_text(b_value[:8]))


def read_signature(header_name: bytes, header_value: bytes) -> ParsedSignature:
    """identity_of + parse_signature, memoized as identity_of is: the end of headers and the end of message read
    the same signature. Raises what they raise (a failed read is not cached)."""
    if len(header_value) > _MEMO_MAX_BYTES:
        ident, tags = _identity_of(header_value)
        return parse_signature(header_name, header_value, ident, tags)
    return _read_signature_memo(bytes(header_name), bytes(header_value))


@functools.lru_cache(maxsize=64)
def _read_signature_memo(header_name: bytes, header_value: bytes) -> ParsedSignature:
    ident, tags = identity_of(header_value)
    return parse_signature(header_name, header_value, ident, tags)


def parse_signature(header_name: bytes, header_value: bytes, ident: Identity, tags: dict) -> ParsedSignature:
    """Validate the tags of one signature; raises SignatureProblem (RFC 6376 §6.1.1) for anything unusable.

    Syntax defects give `neutral`: RFC 8601 §2.7.1 reserves it for "syntax errors or ... not otherwise able to be
    processed", and RFC 6376 §6.1.1 says such a signature MUST be ignored (PERMFAIL).
    """
    for tag in REQUIRED_TAGS:
        if tag not in tags:
            raise SignatureProblem(Status.NEUTRAL, f"missing {tag.decode()}= tag")
    if tags[b"v"] != b"1":
        # §6.1.1: "If the "v=" tag value is not 1, the Verifier MUST ignore the DKIM-Signature header field".
        raise SignatureProblem(Status.NEUTRAL, "unsupported version v=" + _text(tags[b"v"])[:16])
    algorithm = ALGORITHMS.get(tags[b"a"].strip().lower().decode("ascii", "replace"))
    if algorithm is None:
        raise SignatureProblem(Status.NEUTRAL, "unsupported algorithm " + _text(tags[b"a"])[:32])
    key_type, hash_alg = algorithm
    signature = _b64(tags[b"b"], "b")
    body_hash = _b64(tags[b"bh"], "bh")
    if not signature:
        raise SignatureProblem(Status.NEUTRAL, "empty b= tag")

    c_value = re.sub(rb"\s+", b"", tags.get(b"c", b"simple/simple")).lower()
    parts = c_value.split(b"/")
    if len(parts) == 1:
        parts.append(b"simple")  # §3.5 c=: "If only one algorithm is named, ... "simple" is used for the body"
    if len(parts) != 2 or not all(p in (b"simple", b"relaxed") for p in parts):
        raise SignatureProblem(Status.NEUTRAL, "unknown canonicalization c=" + _text(c_value)[:32])
    header_canon, body_canon = (p.decode() for p in parts)

    query_methods = [m.strip().lower() for m in tags.get(b"q", b"dns/txt").split(b":")]
    if b"dns/txt" not in query_methods:
        # §3.5 q=: unrecognized methods are ignored; with no dns/txt there is no way to fetch the key.
        raise SignatureProblem(Status.NEUTRAL, "no supported query method q=" + _text(tags[b"q"])[:32])

    domain_raw = _CR_LF.sub(b"", tags[b"d"]).strip()
    selector_raw = _CR_LF.sub(b"", tags[b"s"]).strip()
    if not _NAME.fullmatch(domain_raw):
        raise SignatureProblem(Status.NEUTRAL, "malformed d= domain")
    if not _NAME.fullmatch(selector_raw):
        raise SignatureProblem(Status.NEUTRAL, "malformed s= selector")

    auid_domain = ident.domain.lower()
    if b"i" in tags:
        auid = _qp_decode(tags[b"i"])
        _, at, auid_host = auid.rpartition(b"@")
        auid_domain = auid_host.decode("utf-8", "replace").lower().rstrip(".")
        domain = ident.domain.lower().rstrip(".")
        # §6.1.1: "the Verifier MUST verify that the domain ... in the "i=" tag ... is the same as, or a
        # subdomain of, the value of the "d=" tag. If not, ... PERMFAIL (domain mismatch)".
        if not at or not (auid_domain == domain or auid_domain.endswith("." + domain)):
            raise SignatureProblem(Status.NEUTRAL, "i= is not within d=")

    signed_headers = tuple(h.strip().lower() for h in re.sub(rb"\s+", b"", tags[b"h"]).split(b":") if h.strip())
    if len(signed_headers) > MAX_SIGNED_HEADERS:
        # Not an RFC limit: dkimpy's header selection costs |h=| x |headers|, and no signer needs this many.
        raise SignatureProblem(Status.NEUTRAL, "too many signed header fields")
    if b"from" not in signed_headers:
        # §6.1.1: "If the "h=" tag does not include the From header field, the Verifier MUST ignore the
        # DKIM-Signature header field and return PERMFAIL (From field not signed)."
        raise SignatureProblem(Status.NEUTRAL, "From not signed")

    limit = _number(tags, b"l")
    timestamp = _number(tags, b"t")
    expiration = _number(tags, b"x")
    if timestamp is not None and expiration is not None and expiration < timestamp:
        # §3.5 x=: "the value of the "x=" tag MUST be greater than the value of the "t=" tag if both are present".
        raise SignatureProblem(Status.NEUTRAL, "x= is before t=")

    return ParsedSignature(
        identity=ident, tags=MappingProxyType(tags), header_name=header_name, header_value=header_value,
        key_type=key_type, hash_alg=hash_alg, header_canon=header_canon,
        body_key=BodyHashKey(BodyCanon(body_canon), hash_alg, limit), body_hash=body_hash, signature=signature,
        signed_headers=signed_headers, timestamp=timestamp, expiration=expiration, auid_domain=auid_domain)


def _number(tags: dict, tag: bytes) -> int | None:
    if tag not in tags:
        return None
    value = re.sub(rb"\s+", b"", tags[tag])
    if not _DIGITS.fullmatch(value):
        raise SignatureProblem(Status.NEUTRAL, f"{tag.decode()}= is not a number")
    return int(value)
