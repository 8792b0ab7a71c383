"""Sender Rewriting Scheme: recognise SRS0/SRS1 reverse paths, and verify bounces to our own SRS addresses.

The address forms are libsrs2's (also written by postsrsd and pysrs):

  SRS0=HHHH=TT=orig-domain=orig-local@forwarder.example
  SRS1=HHHH=first-forwarder.example==HHHH=TT=orig-domain=orig-local@second.example

The character after the tag may be "=", "+" or "-"; every later separator is "=". The original local part is the
rest of the string, so it may itself contain "=". In SRS1 the part after the first forwarder starts with the
separator the SRS0 address had, so "SRS0" + that part is the SRS0 local part the first forwarder wrote.

Hashes are HMAC-SHA1 keyed with the secret over the ASCII-lowercased fields, base64 with the standard alphabet,
truncated (4 characters by default everywhere); compared case-insensitively because MTAs may fold local parts.
An SRS0 hash covers (timestamp, domain, local), an SRS1 hash (first forwarder, rest). Timestamps are days since the
epoch mod 1024, as two base32 characters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from authmilter.config import SrsSection

# CONTRACT (other modules rely on these names; add fields freely, do not rename or remove):


@dataclass(frozen=True, slots=True)
class SrsInfo:
    """A parsed SRS0/SRS1 envelope sender."""

    scheme: str               # "SRS0" or "SRS1"
    forwarder_domain: str     # the domain of the rewritten address (SPF is checked against it)
    original_sender: str      # the decoded original sender, e.g. "user@example.org"
    first_forwarder: str = ""  # SRS1 only: the forwarder that wrote the inner SRS0 address
    hash: str = ""            # the hash as written (SRS1: the outer hash)
    timestamp: str = ""       # the SRS0 timestamp as written (for SRS1, the inner one)

    def log_fields(self) -> dict[str, str]:
        return {"srs_forwarder": self.forwarder_domain, "srs_original": self.original_sender}

    def ar_entries(self) -> tuple:
        return ()  # no method of its own: the SPF entry names the forwarder and the original sender

    def dnssec_statuses(self) -> tuple:
        return ()  # parsed from the address alone

    @property
    def note(self) -> str:
        """How the SPF header entry names the rewrite."""
        return f"{self.scheme} from {self.forwarder_domain} for {self.original_sender}"


@dataclass(frozen=True, slots=True)
class SrsBounce:
    """The verdict on one RCPT TO address that may be one of our SRS addresses."""

    status: str               # "not_srs", "valid", "bad_hash", "expired", "malformed"
    reason: str = ""
    original_recipient: str = ""  # valid only: where the bounce would go after reversing


SRS_SEPARATORS = "=+-"
TIME_BASECHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
TIME_PRECISION = 86400     # one day
TIME_SLOTS = 1024          # two base32 characters
HASH_MIN_LENGTH = 4        # libsrs2's and pysrs's default hashmin; shorter hashes are too easy to guess
_HASH_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_MAX_ADDRESS = 1024        # an SMTP path is at most 256 octets (RFC 5321 §4.5.3.1.3); be generous, not unbounded


@dataclass(frozen=True, slots=True)
class _Srs0:
    hash: str
    timestamp: str
    domain: str
    local: str


@dataclass(frozen=True, slots=True)
class _Srs1:
    hash: str
    first_forwarder: str
    rest: str                 # starts with the SRS0 separator: "=HHHH=TT=domain=local"
    inner: _Srs0


def parse_srs(mail_from: str) -> SrsInfo | None:
    """Decode an SRS0/SRS1 reverse path; None when it is not one, or is malformed."""
    local, domain = _split_address(mail_from)
    if not local or not _plausible_domain(domain):
        return None
    parsed = _parse_local(local)
    if parsed is None:
        return None
    if isinstance(parsed, _Srs1):
        inner = parsed.inner
        return SrsInfo("SRS1", domain.lower(), f"{inner.local}@{inner.domain}",
                       first_forwarder=parsed.first_forwarder, hash=parsed.hash, timestamp=inner.timestamp)
    return SrsInfo("SRS0", domain.lower(), f"{parsed.local}@{parsed.domain}", hash=parsed.hash,
                   timestamp=parsed.timestamp)


def verify_bounce(rcpt: str, cfg: SrsSection, now: float) -> SrsBounce:
    """Is this recipient a genuine SRS address we wrote (a real bounce), or forged backscatter?"""
    if not cfg.secrets:
        return SrsBounce("not_srs", "no SRS secrets configured")
    local, domain = _split_address(rcpt)
    if not _has_srs_tag(local):
        return SrsBounce("not_srs")
    if cfg.domains and domain.lower().rstrip(".") not in {d.lower().rstrip(".") for d in cfg.domains}:
        return SrsBounce("not_srs", f"{domain} is not one of our SRS domains")
    parsed = _parse_local(local)
    if parsed is None or not domain:
        return SrsBounce("malformed", "not a well-formed SRS0/SRS1 address")
    if isinstance(parsed, _Srs1):
        if not _hash_matches(parsed.hash, cfg.secrets, parsed.first_forwarder, parsed.rest):
            return SrsBounce("bad_hash", "SRS1 hash does not match our secrets")
        # An SRS1 address carries no timestamp of ours: the inner one belongs to the first forwarder, who
        # checks it when the bounce reaches them (libsrs2 reverses SRS1 on the hash alone).
        return SrsBounce("valid", original_recipient=f"SRS0{parsed.rest}@{parsed.first_forwarder}")
    if not _hash_matches(parsed.hash, cfg.secrets, parsed.timestamp, parsed.domain, parsed.local):
        return SrsBounce("bad_hash", "SRS0 hash does not match our secrets")
    age = timestamp_age_days(parsed.timestamp, now)
    if age > cfg.max_age_days:
        return SrsBounce("expired", f"SRS0 timestamp is {age} days old (limit {cfg.max_age_days})")
    return SrsBounce("valid", original_recipient=f"{parsed.local}@{parsed.domain}")


def make_hash(secret: str, *fields: str, length: int = HASH_MIN_LENGTH) -> str:
    """libsrs2's hash: HMAC-SHA1 over the ASCII-lowercased fields, standard base64, first `length` characters."""
    mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha1)
    for value in fields:
        mac.update(value.encode("utf-8", "surrogateescape").lower())  # bytes.lower() folds ASCII only, as C does
    return base64.b64encode(mac.digest()).decode("ascii")[:length]


def make_timestamp(now: float) -> str:
    day = int(now // TIME_PRECISION)
    return TIME_BASECHARS[(day >> 5) & 31] + TIME_BASECHARS[day & 31]


def timestamp_age_days(stamp: str, now: float) -> int:
    """Days since the stamp was written, modulo the 1024-day cycle (a future stamp looks about 1024 days old)."""
    then = 0
    for ch in stamp.upper():
        then = (then << 5) | TIME_BASECHARS.index(ch)
    today = int(now // TIME_PRECISION) % TIME_SLOTS
    return (today - then) % TIME_SLOTS


# ---------------------------------------------------------------- parsing


def _split_address(address: str) -> tuple[str, str]:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if len(address) > _MAX_ADDRESS or "@" not in address:
        return "", ""
    local, _, domain = address.rpartition("@")
    return local, domain


def _has_srs_tag(local: str) -> bool:
    return len(local) > 5 and local[:4].upper() in ("SRS0", "SRS1") and local[4] in SRS_SEPARATORS


def _parse_local(local: str) -> _Srs0 | _Srs1 | None:
    if not _has_srs_tag(local):
        return None
    body = local[5:]
    if local[:4].upper() == "SRS0":
        return _parse_srs0_body(body)
    parts = body.split("=", 2)
    if len(parts) != 3:
        return None
    hash_, first_forwarder, rest = parts
    # rest is the SRS0 local part without its tag; its first character is the SRS0 separator.
    if not _valid_hash(hash_) or not _plausible_domain(first_forwarder) or not rest or rest[0] not in SRS_SEPARATORS:
        return None
    inner = _parse_srs0_body(rest[1:])
    if inner is None:
        return None
    return _Srs1(hash_, first_forwarder.lower(), rest, inner)


def _parse_srs0_body(body: str) -> _Srs0 | None:
    parts = body.split("=", 3)
    if len(parts) != 4:
        return None
    hash_, stamp, domain, local = parts
    if not _valid_hash(hash_) or not _valid_timestamp(stamp) or not _plausible_domain(domain) or not local:
        return None
    return _Srs0(hash_, stamp, domain, local)


def _valid_hash(text: str) -> bool:
    return HASH_MIN_LENGTH <= len(text) <= 27 and all(ch in _HASH_CHARS for ch in text)


def _valid_timestamp(text: str) -> bool:
    # libsrs2 refuses any stamp that is not exactly two characters (srs_timestamp_check).
    return len(text) == 2 and all(ch in TIME_BASECHARS for ch in text.upper())


def _plausible_domain(text: str) -> bool:
    # Enough to refuse garbage, not a full RFC 5321 check: a domain or an address literal, no controls or blanks.
    return (0 < len(text) <= 255 and text.isascii() and text.isprintable()
            and not any(ch in text for ch in " @<>\"\\,;"))


def _hash_matches(hash_: str, secrets: tuple[str, ...], *fields: str) -> bool:
    # Compare as long a prefix as was written: a longer hash is checked in full (pysrs does the same).
    wanted = hash_.lower()
    return any(hmac.compare_digest(make_hash(secret, *fields, length=len(hash_)).lower(), wanted)
               for secret in secrets)
