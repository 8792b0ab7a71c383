"""Our one Authentication-Results header (RFC 8601): rendering, sanitizing, and recognising forged copies.

All quoting and cleaning happens here, on the neutral AREntry values the checks produce, so that nothing the
sender or a DNS zone controls (MAIL FROM, HELO, From, d=, s=, i=, b=, PTR names, exp= text) can add a method,
close a comment or end the header. We do our own quoting instead of authres's: authres 1.2.0 leaves some values
unquoted (`postmaster@[1.2.3.5]`) and writes comments raw.

The header is ASCII only: RFC 8601 allows UTF-8 only in RFC 6532 messages, and many consumers (authres among them)
parse ASCII only. Domain parts are converted to A-labels; any other non-ASCII character becomes "?".
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from authmilter.resolver import to_a_labels
from authmilter.results import AREntry, Status

if TYPE_CHECKING:
    from authmilter.pipeline import Results

HEADER_NAME = "Authentication-Results"
FOLD = "\n\t"          # libmilter wants LF line ends in inserted headers; Postfix turns them into CRLF
LINE_WIDTH = 78        # RFC 5322 §2.1.1 SHOULD; units are never split, so a line may exceed it, never 998
MAX_VALUE = 320        # a MAIL FROM path is at most 256 octets (RFC 5321 §4.5.3.1.3); anything longer is hostile
MAX_COMMENT = 200
MAX_KEYWORD = 64

# RFC 2045 §5.1 token: printable ASCII except SPACE and tspecials.
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+")
# RFC 8601 §2.2 pvalue alternative `[ [ local-part ] "@" ] domain-name`, local-part as an RFC 5322 dot-atom and
# domain-name as RFC 6376 §3.5 (letters, digits, hyphens); an address literal such as [1.2.3.5] is not one.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"(?:{_ATEXT}+(?:\.{_ATEXT}+)*)?@{_LABEL}(?:\.{_LABEL})*\.?")
_DOMAINISH = re.compile(r'[^\s@"\\()\[\]]+')
_KEYWORD_JUNK = re.compile(r"[^A-Za-z0-9_.-]")
# Unicode categories that are never shown: controls (CR, LF, NUL...), format characters (bidi overrides),
# surrogates (undecodable bytes kept by surrogateescape), private use, unassigned, line/paragraph separators.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


# ---------------------------------------------------------------- sanitizers

def _visible(text: str) -> str:
    """Drop invisible and control characters (CR, LF and NUL among them); TAB and other spaces become SPACE."""
    if text.isascii() and text.isprintable():
        return text  # nothing to drop or replace: the per-character walk was ~10% of a message's CPU (bench)
    out = []
    for ch in text:
        if ch == "\t" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif unicodedata.category(ch) not in _INVISIBLE:
            out.append(ch)
    return "".join(out)


def _ascii_domain(domain: str) -> str:
    if domain.isascii() or not _DOMAINISH.fullmatch(domain):
        return domain
    return to_a_labels(domain) or domain  # not a valid IDN: _ascii() marks the odd characters


def _ascii(text: str) -> str:
    if text.isascii():
        return text  # the common case; the per-character walk below was ~5% of a message's CPU (bench)
    return "".join(ch if ch.isascii() else "?" for ch in text)


def clean_value(text: str) -> str:
    """The value's text with controls removed, domain part in A-labels, ASCII only, bounded; not yet quoted."""
    text = _visible(text).strip()
    local, at, domain = text.rpartition("@")
    text = f"{local}@{_ascii_domain(domain)}" if at else _ascii_domain(text)
    return _ascii(text)[:MAX_VALUE]


def render_value(text: str) -> str:
    """An RFC 8601 pvalue: left bare when it is a token or a plain address, else an RFC 2045 quoted-string."""
    cleaned = clean_value(text)
    if _TOKEN.fullmatch(cleaned) or _ADDRESS.fullmatch(cleaned):
        return cleaned
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def needs_quoting(text: str) -> bool:
    return render_value(text).startswith('"')


def clean_comment(text: str | None) -> str:
    """Comment text that cannot close or nest a comment (no parentheses, no backslash), one line, bounded."""
    if not text:
        return ""
    cleaned = _ascii(_visible(text)).replace("(", "").replace(")", "").replace("\\", "")
    cleaned = " ".join(cleaned.split())
    if len(cleaned) > MAX_COMMENT:
        cleaned = cleaned[:MAX_COMMENT - 3].rstrip() + "..."
    return cleaned


def clean_keyword(text: str) -> str:
    """Method names, result words, ptypes and property names come from our code, but are kept to their grammar
    anyway (RFC 8601 §2.2 Keyword) so a bug cannot become an injection."""
    if len(text) > MAX_KEYWORD:
        return _KEYWORD_JUNK.sub("", text)[:MAX_KEYWORD]  # never ours: not worth a cache slot
    return _clean_keyword(text)


# A few dozen distinct words, from our own code, cleaned ~20 times per message: memoized (inputs are bounded above).
@functools.lru_cache(maxsize=512)
def _clean_keyword(text: str) -> str:
    return _KEYWORD_JUNK.sub("", text)[:MAX_KEYWORD]


# ---------------------------------------------------------------- rendering

def _with_comment_token(text: str, comment: str | None) -> str:
    """A comment stays on the line of what it describes."""
    cleaned = clean_comment(comment)
    return f"{text} ({cleaned})" if cleaned else text


def _entry_tokens(entry: AREntry) -> list[str]:
    """The folding units of one method: "method=result (comment)", then each "ptype.name=value (comment)"."""
    method, result = clean_keyword(entry.method), clean_keyword(entry.result)
    if not method or not result:
        return []
    tokens = [_with_comment_token(f"{method}={result}", entry.comment)]
    # RFC 8601 does not order properties. authres 1.2.0 drops a property that follows a quoted value, so quoted
    # values go last, where every parser we know reads them.
    rendered = [(render_value(prop.value), prop) for prop in entry.properties]
    for value, prop in sorted(rendered, key=lambda item: item[0].startswith('"')):
        ptype, name = clean_keyword(prop.ptype), clean_keyword(prop.name)
        if ptype and name:
            tokens.append(_with_comment_token(f"{ptype}.{name}={value}", prop.comment))
    return tokens


def render_entries(authserv_id: str, entries: Sequence[AREntry]) -> str:
    """The header VALUE: begins with a space (we negotiate SMFIP_HDR_LEADSPC), folded with LF + TAB."""
    groups = [tokens for tokens in (_entry_tokens(entry) for entry in entries) if tokens]
    head = render_value(authserv_id)
    if not groups:
        # RFC 8601 §2.2: "none" when no method was evaluated (trusted network, authenticated sender...).
        return f" {head}; none"
    groups = [[head]] + groups
    for tokens in groups[:-1]:
        tokens[-1] += ";"
    flat = " ".join(token for tokens in groups for token in tokens)
    if len(HEADER_NAME) + 2 + len(flat) <= LINE_WIDTH:
        return " " + flat
    # Too long for one line: each method starts a line, and a method's own tokens wrap where needed.
    lines: list[str] = []
    for tokens in groups:
        line = ""
        for token in tokens:
            if line and 8 + len(line) + 1 + len(token) > LINE_WIDTH:
                lines.append(line)
                line = token
            else:
                line = f"{line} {token}" if line else token
        lines.append(line)
    return " " + FOLD.join(lines)


def _with_comment(entry: AREntry, extra: str) -> AREntry:
    comment = "; ".join(part for part in (entry.comment, extra) if part)
    return dataclasses.replace(entry, comment=comment)


def _is_mailfrom_spf(entry: AREntry) -> bool:
    return entry.method == "spf" and any(p.ptype == "smtp" and p.name == "mailfrom" for p in entry.properties)


def collect_entries(results: Results) -> tuple[AREntry, ...]:
    """Every method's entries in a fixed order (iprev, spf, dkim, dmarc), with the SRS and trusted-forwarder
    notes that belong to no single check added as comments."""
    if results.skipped:
        return ()
    entries: list[AREntry] = []
    for result in (results.iprev, results.spf, results.dkim, results.dmarc):
        if result is not None:
            entries.extend(result.ar_entries())
    out = []
    for entry in entries:
        if _is_mailfrom_spf(entry):
            if results.srs is not None:
                entry = _with_comment(entry, f"{results.srs.scheme} from {results.srs.forwarder_domain} "
                                             f"for {results.srs.original_sender}")
            if results.forwarder and entry.result in (Status.FAIL, Status.SOFTFAIL):
                entry = _with_comment(entry, f"trusted forwarder {results.forwarder}")
        elif entry.method == "dmarc" and results.forwarder and entry.result == Status.FAIL:
            # Issue 4: the override must be auditable in the header, named as DMARC reports name it.
            entry = _with_comment(entry, f"override=trusted_forwarder {results.forwarder}")
        out.append(entry)
    return tuple(out)


def render(authserv_id: str, results: Results) -> str:
    return render_entries(authserv_id, collect_entries(results))


# ---------------------------------------------------------------- recognising our own id in incoming headers

def _skip_cfws(text: str, pos: int) -> int:
    """Index after any white space and (nested) comments at pos; len(text) on an unclosed comment."""
    while pos < len(text):
        if text[pos] in " \t\r\n":
            pos += 1
        elif text[pos] == "(":
            depth = 0
            while pos < len(text):
                ch = text[pos]
                if ch == "\\":
                    pos += 2
                    continue
                depth += ch == "("
                depth -= ch == ")"
                pos += 1
                if depth == 0:
                    break
        else:
            break
    return pos


def authserv_id_of(header_value: str) -> str:
    """The authserv-id an incoming header claims (RFC 8601 §2.2: [CFWS] authserv-id [CFWS authres-version]);
    "" when there is none."""
    pos = _skip_cfws(header_value, 0)
    if pos < len(header_value) and header_value[pos] == '"':
        out = []
        pos += 1
        while pos < len(header_value) and header_value[pos] != '"':
            if header_value[pos] == "\\":
                pos += 1
            if pos < len(header_value) and header_value[pos] not in "\r\n":
                out.append(header_value[pos])
            pos += 1
        return "".join(out).strip()
    end = pos
    while end < len(header_value) and header_value[end] not in ' \t\r\n();"':
        end += 1
    return header_value[pos:end]


def _normalized(authserv_id: str) -> str:
    return authserv_id.strip().rstrip(".").lower()


def is_ours(header_value: str, ids: Iterable[str]) -> bool:
    """True when an incoming A-R header claims one of our authserv-ids, however it is spelled (RFC 8601 §5: such
    headers from outside are forgeries and must be removed)."""
    claimed = _normalized(authserv_id_of(header_value))
    return bool(claimed) and any(claimed == _normalized(own) for own in ids if _normalized(own))
