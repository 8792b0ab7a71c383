"""Every header we add, rendered, sanitized and folded in this one module: our Authentication-Results header (RFC
8601) and Received-SPF (RFC 7208 §9.1); and the recognising of forged A-R headers that claim our authserv-id.

All quoting and cleaning happens here, on the neutral AREntry values the checks produce and the notes policy
attaches to the verdict, so that nothing the sender or a DNS zone controls (MAIL FROM, HELO, From, d=, s=, i=, b=,
PTR names, exp= text) can add a method, close a comment or end the header. Values come out as libmilter wants
them: a leading space (we negotiate SMFIP_HDR_LEADSPC) and LF + TAB folding. We do our own quoting instead of authres's: authres 1.2.0 leaves some values
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

from authmilter.context import Connection, Envelope, MessageContext, unmapped
from authmilter.resolver import to_a_labels
from authmilter.results import AREntry, Note, Status, Verdict

if TYPE_CHECKING:
    from authmilter.checkresults import Results
    from authmilter.checks.spf import SpfIdentityResult, SpfResult
    from authmilter.config import Config

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
    """An internationalized domain in its A-label form (RFC 5890), so both headers stay ASCII and name the domain
    that was looked up; anything that is not a domain is left for the caller's cleaning to mark."""
    if domain.isascii() or not _DOMAINISH.fullmatch(domain):
        return domain
    return to_a_labels(domain) or domain


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
    # A value that cleans down to nothing (a d=, s= or i= of control characters only) says nothing, and `""` (or
    # a bare `@`) beside another quoted value makes authres 1.2.0 lose the whole header: such a property is left
    # out.
    rendered = [(render_value(prop.value), prop) for prop in entry.properties
                if clean_value(prop.value) not in ("", "@")]
    # RFC 8601 does not order properties. authres 1.2.0 silently drops a quoted value that any property follows, so
    # one quoted value goes last, where every parser we know reads it; an earlier one (only hostile signatures have
    # two) is shown in the method's comment instead of being lost.
    rendered.sort(key=lambda item: item[0].startswith('"'))
    quoted = [prop for value, prop in rendered if value.startswith('"')]
    moved = [f"{prop.ptype}.{prop.name} {clean_value(prop.value)}" for prop in quoted[:-1]]
    rendered = [(value, prop) for value, prop in rendered if prop not in quoted[:-1]]
    comment = "; ".join(part for part in (entry.comment, *moved) if part)
    tokens = [_with_comment_token(f"{method}={result}", comment)]
    for value, prop in rendered:
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


def _note_applies(note: Note, entry: AREntry) -> bool:
    if entry.method != note.method:
        return False
    return note.on is None or any((p.ptype, p.name) == note.on for p in entry.properties)


def collect_entries(results: Results, notes: Sequence[Note] = ()) -> tuple[AREntry, ...]:
    """Every shown result's entries in table order, with the notes of the verdict (policy's overrides) added as
    comments to the entries they explain."""
    if results.skipped:
        return ()
    out = []
    for method in results.methods():
        for entry in method.ar_entries():
            for note in notes:
                if _note_applies(note, entry):
                    entry = _with_comment(entry, note.text)
            out.append(entry)
    return tuple(out)


def render(authserv_id: str, results: Results, verdict: Verdict | None = None) -> str:
    return render_entries(authserv_id, collect_entries(results, verdict.notes if verdict is not None else ()))


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


# ---------------------------------------------------------------- Received-SPF (RFC 7208 §9.1)

_SPF_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"^{_SPF_ATEXT}(?:\.{_SPF_ATEXT})*$")
_UNSAFE = re.compile(r"[^\x20-\x7e]")


def _printable(text: str) -> str:
    """Header-safe ASCII: CR, LF and other controls become spaces, anything non-ASCII becomes "?"."""
    return _UNSAFE.sub(lambda m: " " if m.group() < "\x20" or m.group() == "\x7f" else "?", text)


def _ascii_address(address: str) -> str:
    local, at, domain = address.rpartition("@")
    return f"{local}{at}{_ascii_domain(domain)}" if at else _ascii_domain(address)


def _value(text: str) -> str:
    """A key-value value (§9.1 ABNF: dot-atom / quoted-string), so that nothing can end it early."""
    text = _printable(text)
    if _DOT_ATOM.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment_text(text: str) -> str:
    """Text safe inside an RFC 5322 comment: no parentheses or backslashes to unbalance it."""
    return " ".join(_printable(text).replace("(", "[").replace(")", "]").replace("\\", "/").split())


def received_spf_value(result: SpfResult, conn: Connection, env: Envelope, authserv_id: str) -> str:
    checked = result.mailfrom
    ip = unmapped(conn.client_ip)  # pyspf evaluates a mapped address as IPv4, so report what was checked
    ip_text = str(ip) if ip is not None else "unknown"
    comment = _comment_text(f"{authserv_id}: {_explain(checked, ip_text)}")
    pairs = []
    if ip is not None:
        pairs.append(("client-ip", ip_text))
    if env.mail_from:
        pairs.append(("envelope-from", _ascii_address(env.mail_from)))
    if conn.helo:
        pairs.append(("helo", _ascii_domain(conn.helo)))
    pairs.append(("receiver", authserv_id))
    if checked.status in (Status.PERMERROR, Status.TEMPERROR) and checked.reason:
        pairs.append(("problem", checked.reason))
    elif checked.mechanism:
        pairs.append(("mechanism", checked.mechanism))
    pairs.append(("identity", checked.identity))
    text = f"{checked.status} ({comment}) " + " ".join(f"{key}={_value(value)};" for key, value in pairs)
    return text


def _explain(result: SpfIdentityResult, ip: str) -> str:
    # The wording follows the examples of RFC 7208 §9.1.
    who = _ascii_address(result.sender)
    match result.status:
        case Status.PASS:
            return f"domain of {who} designates {ip} as permitted sender"
        case Status.FAIL:
            return f"domain of {who} does not designate {ip} as permitted sender"
        case Status.SOFTFAIL:
            return f"domain of transitioning {who} does not designate {ip} as permitted sender"
        case Status.NEUTRAL:
            return f"{ip} is neither permitted nor denied by domain of {who}"
        case Status.NONE:
            return f"domain of {who} does not designate permitted sender hosts"
        case Status.TEMPERROR:
            return f"temporary error in processing during lookup of {who}"
        case _:
            return f"permanent error in processing domain of {who}"


# ---------------------------------------------------------------- every header of one verdict

RECEIVED_SPF_NAME = "Received-SPF"


def as_header_value(value: str) -> str:
    """libmilter wants LF folding, and with SMFIP_HDR_LEADSPC the value's leading space is ours to supply."""
    value = value.replace("\r\n", "\n").replace("\r", "")
    return value if value[:1] in (" ", "\t") else " " + value


def render_headers(authserv_id: str, ctx: MessageContext, results: Results, entries: Sequence[AREntry],
                   cfg: Config) -> tuple[tuple[str, str], ...]:
    """(name, value) of every header this verdict adds, top first: A-R (from `entries`: collect_entries with the
    verdict's notes), then Received-SPF (both trace fields of this hop, so they go above the MTA's own Received:)."""
    headers: list[tuple[str, str]] = []
    ar_value = render_entries(authserv_id, entries)
    if ar_value.strip():
        headers.append((HEADER_NAME, as_header_value(ar_value)))
    if cfg.spf.received_spf_header and results.spf is not None:
        headers.append((RECEIVED_SPF_NAME, as_header_value(
            received_spf_value(results.spf, results.judged_connection(ctx.connection) or Connection(None),
                               ctx.envelope, authserv_id))))
    return tuple(headers)
