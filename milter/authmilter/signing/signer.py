"""Making DKIM-Signature headers (RFC 6376 §5, RFC 8463), streaming: the body goes chunk by chunk into the verifier's
own canonicalizer and hash (checks.dkim.body.BodyHasher), so no message is ever held whole.

The header fields are signed exactly as they will leave Postfix: the adapter rebuilds each one as received with
SMFIP_HDR_LEADSPC (its leading space and folding, CRLF before each continuation: adapter.restore_folding), and our
own DKIM-Signature is hashed in the form Postfix will write it. dkimpy canonicalizes and hashes the header fields
(`hash_headers`, the code its verifier uses); OpenSSL, through `cryptography`, makes the signature.

`SigningSession` serves one milter transaction; `sign_message` signs a whole message in memory (our own aggregate
reports, which are small).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import dkim as dkimpy
from dkim.canonicalization import CanonicalizationPolicy

from authmilter.checks.dkim.body import BodyCanon, BodyHasher, BodyHashKey, HashAlg, hash_body
from authmilter.config import SigningSection
from authmilter.context import Connection, Envelope, Header, IPAddress
from authmilter.logline import format_pairs
from authmilter.signing.decide import SigningClient, SigningDomain, signing_client, signing_domain
from authmilter.signing.keys import Keyring, SigningKey, utc_today

SIGNATURE_NAME = "DKIM-Signature"

# RFC 6376 §5.4.1: the fields that carry what a reader sees and how the body is read; each signed once per
# occurrence, and only when present (signing an absent field, except the two below, would break the signature of
# any message to which a list or a gateway legitimately adds one).
SIGNED_FIELDS = (
    b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc",
    b"in-reply-to", b"references",
    b"mime-version", b"content-type", b"content-transfer-encoding", b"content-id", b"content-description",
    b"resent-date", b"resent-from", b"resent-sender", b"resent-to", b"resent-cc", b"resent-message-id",
)
# RFC 6376 §5.4.2 / §8.15: listing a field once more than it occurs signs its absence, so nobody can add a second
# From (what a reader shows) or a Subject after we signed.
OVERSIGNED_FIELDS = (b"from", b"subject")
LIST_PREFIX = b"list-"  # RFC 2369 / RFC 2919 List-* fields, signed when present (a list signing its own mail)
MAX_PER_FIELD = 20      # occurrences of one field we sign; the header byte cap bounds the rest
MAX_LIST_FIELDS = 10    # distinct List-* names signed (RFC 2369 and RFC 2919 define eight)
_FIELD_NAME = re.compile(rb"[!-9;-~]+")  # RFC 5322 §3.6.8 ftext
FOLD_WIDTH = 76         # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters
B64_LINE = 72


@dataclass(frozen=True, slots=True)
class Signature:
    key: SigningKey
    value: str  # the header value: leading space, CRLF + TAB folding

    def log_text(self) -> str:
        return f"d={self.key.domain} s={self.key.selector}"


@dataclass(frozen=True, slots=True)
class SigningOutcome:
    """What end of message makes of a signing transaction: the signatures (maybe none) and why not."""

    client: SigningClient
    signatures: tuple[Signature, ...] = ()
    reason: str = ""  # why nothing was signed

    def log_fields(self) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = list(self.client.log_fields())
        if self.signatures:
            fields.append(("signed", ", ".join(s.log_text() for s in self.signatures)))
            fields.append(("signed_a", ",".join(s.key.algorithm for s in self.signatures)))
        else:
            fields.append(("signed", "no"))
            fields.append(("signing_reason", self.reason))
        return fields

    def log_line(self, conn: Connection, env: Envelope, elapsed_ms: float) -> str:
        """The one line for a signing transaction, in the verifier's key=value style (logline.format_pairs)."""
        return format_pairs([
            ("queue_id", env.queue_id or "-"),
            ("client_ip", conn.client_ip if conn.client_ip is not None else "-"),
            ("helo", conn.helo),
            ("mail_from", env.mail_from or "<>"),
            ("rcpt_count", len(env.rcpts)),
            *self.log_fields(),
            ("action", "accept"),
            ("ms", f"{elapsed_ms:.1f}"),
        ])

    def milter_headers(self, leading_space: bool) -> list[tuple[str, str]]:
        """(name, value) to insert through libmilter: LF folding, and the leading space only when the MTA agreed
        to SMFIP_HDR_LEADSPC (otherwise it writes "Name: " itself), so Postfix writes exactly the signed bytes."""
        return [(SIGNATURE_NAME, s.value.replace("\r\n", "\n")[0 if leading_space else 1:])
                for s in self.signatures]


def start_session(keyring: Keyring | None, section: SigningSection, client_ip: IPAddress | None,
                  auth_user: str | None, mail_from: str) -> SigningSession | None:
    """At MAIL FROM: a session when this transaction is a signing one (then it is not verified), else None."""
    if keyring is None:
        return None  # no keys configured: every message is verified, as without [signing]
    client = signing_client(section, client_ip, auth_user)
    return SigningSession(keyring, section, client, mail_from) if client is not None else None


class SigningSession:
    """One transaction whose client may have its mail signed (decide.signing_client said so at MAIL FROM).

    `begin_body(headers, truncated)` once the header is complete (idempotent), `update(chunk)` for each body chunk,
    `finish(now)` at end of message. Holds the header fields and one hash state per body canonicalization.
    """

    __slots__ = ("keyring", "section", "client", "mail_from", "_headers", "_domain", "_hasher", "_body_key")

    def __init__(self, keyring: Keyring, section: SigningSection, client: SigningClient, mail_from: str) -> None:
        self.keyring = keyring
        self.section = section
        self.client = client
        self.mail_from = mail_from
        self._headers: tuple[Header, ...] = ()
        self._domain: SigningDomain | None = None
        self._hasher: BodyHasher | None = None
        self._body_key = body_key(section.canonicalization)

    def begin_body(self, headers: Sequence[Header], truncated: bool) -> None:
        if self._domain is not None:
            return
        self._headers = tuple(headers)
        self._domain = signing_domain(self.client, self.section, self.keyring, self.mail_from, self._headers,
                                      truncated)
        if self._domain.signs:
            self._hasher = BodyHasher((self._body_key,))

    def update(self, chunk: bytes) -> None:
        if self._hasher is not None:
            self._hasher.update(chunk)

    def finish(self, now: float, headers: Sequence[Header] = (), truncated: bool = False) -> SigningOutcome:
        """The signatures; `headers`/`truncated` serve a message with no body chunk at all."""
        self.begin_body(headers, truncated)
        assert self._domain is not None
        if not self._domain.signs:
            return SigningOutcome(self.client, reason=self._domain.reason)
        assert self._hasher is not None
        digest = self._hasher.finish()[self._body_key].digest
        self._hasher = None
        keys = self.keyring.active(self._domain.domain, utc_today(now))
        if not keys:
            return SigningOutcome(self.client, reason=f"no key of {self._domain.domain} signs yet (from= dates)")
        return SigningOutcome(self.client, sign_headers(keys, self._headers, self.section, digest, now))


def body_key(canonicalization: str) -> BodyHashKey:
    return BodyHashKey(BodyCanon(canonicalization.split("/")[1]), HashAlg.SHA256)


def sign_headers(keys: Sequence[SigningKey], headers: Sequence[Header], section: SigningSection,
                 body_digest: bytes, now: float) -> tuple[Signature, ...]:
    """One signature per key (RFC 8463 §3: a domain with an RSA and an Ed25519 key signs with both)."""
    names = signed_field_names(headers)
    stamp = int(now)
    expiry = stamp + section.expire_days * 86400 if section.expire_days else None
    return tuple(Signature(key, signature_value(key, headers, names, section.canonicalization, body_digest,
                                                stamp, expiry)) for key in keys)


def signed_field_names(headers: Sequence[Header]) -> tuple[bytes, ...]:
    """The h= list (RFC 6376 §5.4): each signed field once per occurrence, From and Subject once more."""
    counts: Counter[bytes] = Counter()
    lists: dict[bytes, None] = {}
    for header in headers:
        name = header.lookup_name
        if name != header.name.lower() or not _FIELD_NAME.fullmatch(name):
            continue  # a name with blanks before its colon (obsolete syntax): verifiers would not find it
        counts[name] += 1
        if name.startswith(LIST_PREFIX) and len(lists) < MAX_LIST_FIELDS:
            lists[name] = None
    names: list[bytes] = []
    for name in (*SIGNED_FIELDS, *lists):
        names += [name] * (min(counts[name], MAX_PER_FIELD) + (1 if name in OVERSIGNED_FIELDS else 0))
    return tuple(names)


def signature_value(key: SigningKey, headers: Sequence[Header], names: Sequence[bytes], canonicalization: str,
                    body_digest: bytes, timestamp: int, expiry: int | None) -> str:
    """The DKIM-Signature value, b= included, as it will be written: leading space, CRLF + TAB folding."""
    tags = [("v", "1"), ("a", key.algorithm), ("c", canonicalization), ("d", key.domain), ("s", key.selector),
            ("t", str(timestamp))]
    if expiry is not None:
        tags.append(("x", str(expiry)))
    unsigned = _fold(tags, names, base64.b64encode(body_digest).decode("ascii"))  # ends in "b="
    policy = CanonicalizationPolicy.from_c_value(canonicalization.encode("ascii"))
    hasher = hashlib.sha256()
    # RFC 6376 §3.7: the signed fields in h= order (each instance from the bottom up), then this signature's own
    # field with an empty b= and no final CRLF. dkimpy's verifier hashes with the same function.
    dkimpy.hash_headers(hasher, policy, policy.canonicalize_headers([(h.name, h.value + b"\r\n") for h in headers]),
                        list(names), (SIGNATURE_NAME.encode(), unsigned.encode("ascii")), None)
    signature = base64.b64encode(key.sign_digest(hasher.digest())).decode("ascii")
    return unsigned + "\r\n\t".join(signature[i:i + B64_LINE] for i in range(0, len(signature), B64_LINE))


def _fold(tags: list[tuple[str, str]], names: Sequence[bytes], body_hash: str) -> str:
    """Tags separated by "; ", lines folded with CRLF + TAB before a tag or after a ':' of h=; b= on a line of its
    own, so the signature can be appended without refolding what was signed."""
    lines: list[str] = []
    line = ""

    def put(piece: str, separator: str) -> None:
        nonlocal line
        # The first line also holds "DKIM-Signature: "; the others start with a TAB.
        width = FOLD_WIDTH - len(SIGNATURE_NAME) - 2 if not lines else FOLD_WIDTH - 1
        if line and len(line) + len(separator) + len(piece) > width:
            lines.append(line)
            line = piece
        else:
            line = line + separator + piece if line else piece

    for name, value in tags:
        put(f"{name}={value};", " ")
    field_names = [name.decode("ascii") for name in names]
    for index, name in enumerate(field_names):
        last = index == len(field_names) - 1
        put(("h=" if index == 0 else "") + name + (";" if last else ":"), " " if index == 0 else "")
    put(f"bh={body_hash};", " ")
    lines.append(line)
    lines.append("b=")
    return " " + "\r\n\t".join(lines)


# ---------------------------------------------------------------- a whole message (reports)

def sign_message(raw: bytes, cfg, *, keyring: Keyring | None = None, now: float | None = None) -> bytes:
    """`raw` signed with the key(s) of its From domain, as it should go out over SMTP (CRLF line ends, our
    DKIM-Signature header(s) on top). Unchanged, apart from CRLF line ends, when [signing] has no key that signs
    for that domain today. For messages we write ourselves (`authmilter reports send`): no client check applies.

    `keyring`: the loaded keys (load_keyring(cfg)) to reuse across messages; loaded from `cfg` when None.
    ConfigError when a key file is unusable.
    """
    import time

    from authmilter.checks.dmarc.fromheader import parse_from_headers
    from authmilter.cli import parse_message
    from authmilter.signing.keys import load_keyring

    now = time.time() if now is None else now
    parsed, body = parse_message(raw)
    headers = tuple(Header(name, value) for name, value in parsed)
    message = b"".join(h.raw() for h in headers) + b"\r\n" + body
    if keyring is None:
        keyring = load_keyring(cfg)
    if keyring is None:
        return message
    author = parse_from_headers([h for h in headers if h.is_named("From")])
    keys = keyring.active(author.domain, utc_today(now)) if author.ok else ()
    if not keys:
        return message
    section = cfg.signing
    key = body_key(section.canonicalization)
    digest = hash_body(body, (key,))[key].digest
    signatures = sign_headers(keys, headers, section, digest, now)
    return b"".join(f"{SIGNATURE_NAME}:{s.value}\r\n".encode("ascii") for s in signatures) + message
