"""Strict RFC 5322 From parsing for DMARC: one mailbox, one unambiguous domain, or an error.

Lenient parsers (email.utils.parseaddr among them) have let spoofs through DMARC by reading a different domain
from the one a mail reader shows: a second address in a comment, an encoded word that decodes to an address, a
quoted local part holding "@", group syntax, route addresses. So this parser accepts a narrow subset of RFC 5322
§3.4 (plus RFC 6532 UTF-8) and calls everything else an error; DMARC turns that error into permerror.

Accepted: `addr-spec`, or `[display-name] <addr-spec>` with CFWS around the parts. Refused (with a reason):
several From fields, several or no mailboxes, group syntax, route addresses, domain literals, obsolete syntax,
unbalanced quotes, brackets or comments, a comment or display name that carries an address, a quoted local part
holding a special character, bytes that are not UTF-8, control characters, and a domain that is not a hostname.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import decode_header

from authmilter.context import Header
from authmilter.errors import AuthmilterError
from authmilter.resolver import to_a_labels

MAX_FROM_BYTES = 4096  # far beyond any honest From; bounds the work an attacker can ask of us

_ATEXT = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_WSP = " \t"
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
# Characters that must not hide inside a comment, a quoted local part or a display name: with them a lenient
# reader could find a second address or a second header field there.
_ADDRESS_CHARS = set("@<>")
_LOCAL_PART_FORBIDDEN = set('@<>,;:()[]\\"')


@dataclass(frozen=True, slots=True)
class FromParse:
    """The outcome of reading the author domain: `domain` (lowercase A-labels) or `error` (a short reason)."""

    domain: str = ""
    local_part: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class _Reject(AuthmilterError):
    """Internal: unwinds the parser with a reason; never leaves this module."""


def parse_from_headers(headers: Sequence[Header]) -> FromParse:
    """The author domain of a message, from all its From header fields (RFC 9989 §4.4 / RFC 5322 §3.6.2)."""
    if not headers:
        return FromParse(error="no From header")
    if len(headers) > 1:
        # RFC 5322 §3.6 allows exactly one From; which one a reader shows is anyone's guess.
        return FromParse(error=f"{len(headers)} From headers")
    return parse_from_value(headers[0].value)


def parse_from_value(raw: bytes) -> FromParse:
    """Parse one From field value as received (leading space and CRLF folding kept)."""
    if len(raw) > MAX_FROM_BYTES:
        return FromParse(error="From header too long")
    return _parse_bounded(bytes(raw))


# A message's From is read three times (the body hasher's signature ordering at end of headers, the dkim step's
# ordering, and DMARC); the parse is pure and its result frozen, so identical bytes are parsed once. Keys are at
# most MAX_FROM_BYTES (longer values are refused above), so the cache is bounded in memory too.
@functools.lru_cache(maxsize=256)
def _parse_bounded(raw: bytes) -> FromParse:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # RFC 6532 allows UTF-8 in headers, nothing else: other 8-bit bytes have no defined meaning.
        return FromParse(error="From header has 8-bit bytes that are not UTF-8")
    try:
        text = _unfold(text)
        local_part, domain = _Parser(text).mailbox()
        return FromParse(domain=_normalize_domain(domain), local_part=local_part)
    except _Reject as exc:
        return FromParse(error=str(exc))


def _unfold(text: str) -> str:
    """RFC 5322 §2.2.3: CRLF followed by WSP is folding; any other CR or LF is smuggling."""
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", text)
    for char in unfolded:
        if (ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F:
            raise _Reject("control character in From header")
    return unfolded


class _Parser:
    """A recursive-descent reader over one unfolded From value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # ------------------------------------------------------------ grammar

    def mailbox(self) -> tuple[str, str]:
        """mailbox-list with exactly one mailbox: name-addr / addr-spec, then the end."""
        self.cfws()
        if self.at_end():
            raise _Reject("From header has no address")
        start = self.pos
        words = self.phrase()
        self.cfws()
        if self.peek() == "<":
            display = self.text[start:self.pos]
            local_part, domain = self.angle_addr()
            self.check_display_name(words, display, local_part, domain)
        else:
            # No angle brackets: the whole mailbox must be a bare addr-spec.
            self.pos = start
            local_part, domain = self.addr_spec()
        self.cfws()
        if not self.at_end():
            char = self.peek()
            if char == ",":
                raise _Reject("From header has several addresses")
            if char == ":":
                raise _Reject("group syntax in From header")
            raise _Reject(f"unexpected {char!r} in From header")
        return local_part, domain

    def phrase(self) -> list[str]:
        """display-name = 1*word; returns the words (quoted strings unquoted). May be empty."""
        words = []
        while True:
            self.cfws()
            char = self.peek()
            if char == '"':
                words.append(self.quoted_string())
            elif char is not None and _is_atext(char):
                words.append(self.atom())
            elif char == "." and words:
                # obs-phrase allows dots ("John Q. Public"); harmless in a display name, and common.
                self.pos += 1
                words.append(".")
            else:
                return words
            if self.peek() == ":":
                raise _Reject("group syntax in From header")

    def angle_addr(self) -> tuple[str, str]:
        self.expect("<")
        self.cfws()
        if self.peek() == "@":
            raise _Reject("route address in From header")
        local_part, domain = self.addr_spec()
        self.cfws()
        if self.peek() is None:
            raise _Reject("unbalanced <> in From header")
        if self.peek() != ">":
            raise _Reject(f"unexpected {self.peek()!r} in From address")
        self.pos += 1
        return local_part, domain

    def addr_spec(self) -> tuple[str, str]:
        self.cfws()
        if self.peek() == '"':
            local_part = self.quoted_string()
            if not local_part or any(c in _LOCAL_PART_FORBIDDEN for c in local_part):
                raise _Reject("quoted local part with special characters in From header")
        else:
            local_part = self.dot_atom("local part")
        self.cfws()
        if self.peek() != "@":
            if self.peek() in ("<", ">"):
                raise _Reject("unbalanced <> in From header")
            raise _Reject("From address has no domain")
        self.pos += 1
        self.cfws()
        if self.peek() == "[":
            raise _Reject("domain literal in From header")
        domain = self.dot_atom("domain")
        return local_part, domain

    def dot_atom(self, what: str) -> str:
        start = self.pos
        while True:
            if self.atom_chars() == 0:
                raise _Reject(f"malformed {what} in From header")
            if self.peek() != ".":
                break
            self.pos += 1
        return self.text[start:self.pos]

    def atom(self) -> str:
        start = self.pos
        self.atom_chars()
        return self.text[start:self.pos]

    def atom_chars(self) -> int:
        start = self.pos
        while not self.at_end() and _is_atext(self.text[self.pos]):
            self.pos += 1
        return self.pos - start

    def quoted_string(self) -> str:
        """RFC 5322 §3.2.4; quoted-pairs are decoded. Unterminated quotes are an error."""
        self.expect('"')
        out = []
        while True:
            char = self.peek()
            if char is None:
                raise _Reject("unbalanced quotes in From header")
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == "\\":
                escaped = self.peek()
                if escaped is None:
                    raise _Reject("unbalanced quotes in From header")
                self.pos += 1
                out.append(escaped)
                continue
            out.append(char)

    def cfws(self) -> None:
        while True:
            char = self.peek()
            if char is not None and char in _WSP:
                self.pos += 1
            elif char == "(":
                self.comment()
            else:
                return

    def comment(self) -> None:
        """Nested comments (RFC 5322 §3.2.2). One that holds an address-like text is a spoofing attempt."""
        self.expect("(")
        depth, start = 1, self.pos
        while depth:
            char = self.peek()
            if char is None:
                raise _Reject("unbalanced comment in From header")
            self.pos += 1
            if char == "\\":
                if self.peek() is None:
                    raise _Reject("unbalanced comment in From header")
                self.pos += 1
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
        if any(c in _ADDRESS_CHARS for c in self.text[start:self.pos - 1]):
            raise _Reject("comment with an address in From header")

    def check_display_name(self, words: list[str], display: str, local_part: str, domain: str) -> None:
        """A display name that looks like an address is how readers are shown one domain while DMARC checks
        another; encoded words (RFC 2047) are decoded first because that is what readers display."""
        shown = " ".join(words).strip()
        decoded = _decode_encoded_words(display)
        if not any(c in _ADDRESS_CHARS for c in shown + decoded):
            return
        # "alice@example.org" <alice@example.org> is common and honest: the name is the address itself.
        if shown.lower() == f"{local_part}@{domain}".lower():
            return
        raise _Reject("display name with an address in From header")

    # ------------------------------------------------------------ helpers

    def peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise _Reject(f"expected {char!r} in From header")
        self.pos += 1


def _is_atext(char: str) -> bool:
    # RFC 6532 §3.2: UTF-8 non-ASCII characters are atext too.
    return char in _ATEXT or ord(char) > 0x7F


def _decode_encoded_words(word: str) -> str:
    if not _ENCODED_WORD.search(word):
        return word
    try:
        parts = decode_header(word)
    except Exception:  # email.header raises assorted errors on hostile input; the raw word is what we judge then
        return word
    decoded = []
    for payload, charset in parts:
        decoded.append(payload if isinstance(payload, str) else _decode_payload(payload, charset))
    return "".join(decoded)


def _decode_payload(payload: bytes, charset: str | None) -> str:
    """Decode with the declared charset when it is a real text codec; a hostile label falls back to UTF-8."""
    try:
        return payload.decode(charset or "ascii", "replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return payload.decode("utf-8", "replace")


def _normalize_domain(domain: str) -> str:
    """Lowercase A-labels, or _Reject when the domain is not a usable host name (RFC 1123 §2.1)."""
    if not domain.isascii():
        converted = to_a_labels(domain)
        if converted is None:
            raise _Reject("From domain is not a valid IDN")
        domain = converted
    domain = domain.lower()
    labels = domain.split(".")
    if len(domain) > 253 or not all(_LABEL.match(label) for label in labels):
        raise _Reject("From domain is not a valid host name")
    if labels[-1].isdigit():
        raise _Reject("From domain is not a valid host name")
    return domain
