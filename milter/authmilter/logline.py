"""One key=value line per message: who sent it, what each check said, what we did and why, and what it cost.

Values are quoted ("...") when they hold a space, a quote or a backslash, and anything invisible (CR, LF, NUL,
other controls, bidi overrides, undecodable bytes) is written as an escape, so a sender's HELO or MAIL FROM can
neither start a new log line nor fake a key. Every value is bounded. `LogLineObserver` is the first observer
told about each verdict (observers.py): it writes the line for a message, or for a recipient refused at RCPT.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Iterable

from authmilter.checkresults import Results
from authmilter.context import Connection, MessageContext
from authmilter.observers import Judged
from authmilter.results import Action, Verdict

log = logging.getLogger("authmilter")

MAX_VALUE = 256
NOT_EVALUATED = "-"
_KEY_JUNK = re.compile(r"[^a-z0-9_]")
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# Keys this module writes itself: a check's log_fields() cannot claim them, wherever they sit in the line.
OWN_KEYS = frozenset({"queue_id", "client_ip", "helo", "mail_from", "rcpt_count", "skipped", "forwarder", "dnssec",
                      "action", "reason", "overridden", "reply", "dns_queries", "dns_extra", "dns_deadline_expired",
                      "ms"})


def format_value(value: object) -> str:
    raw = str(value)
    if len(raw) > MAX_VALUE:
        raw = raw[:MAX_VALUE - 3] + "..."
    if raw == "":
        return '""'
    if raw.isascii() and raw.isprintable():
        # The common case, without the per-character walk: only SP, '"' and '\\' need quoting or escaping.
        if not any(ch in raw for ch in ' "\\'):
            return raw
        return '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'
    out: list[str] = []
    quote = False
    for ch in raw:
        category = unicodedata.category(ch)
        if ch in '\\"':
            out.append("\\" + ch)
            quote = True
        elif ch == " ":
            out.append(ch)
            quote = True
        elif category in _INVISIBLE or (category.startswith("Z") and ch != " "):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else
                       f"\\U{code:08x}")
            quote = True
        else:
            out.append(ch)
    text = "".join(out)
    return f'"{text}"' if quote else text


def format_key(key: str) -> str:
    if len(key) > 64:
        return _KEY_JUNK.sub("_", key.lower())[:64] or "_"  # never one of ours: not worth a cache slot
    return _format_key(key)


# Keys come from our code (a few dozen), and each is formatted twice per message: memoized, bounded above.
@functools.lru_cache(maxsize=512)
def _format_key(key: str) -> str:
    return _KEY_JUNK.sub("_", key.lower())[:64] or "_"


def format_pairs(pairs: Iterable[tuple[str, object]]) -> str:
    """key=value pairs joined by spaces; the first occurrence of a key wins, so no check can overwrite another's
    field."""
    seen: set[str] = set()
    out = []
    for key, value in pairs:
        key = format_key(key)
        if key in seen:
            continue
        seen.add(key)
        out.append(f"{key}={format_value(value)}")
    return " ".join(out)


def _check_fields(results: Results) -> list[tuple[str, object]]:
    pairs: list[tuple[str, object]] = []
    for step in results.steps:
        if step.shown and step.value is not None:
            pairs.extend(step.value.log_fields().items())
        elif step.always_logged:
            # An RFC 8601 method always has a key, so a line can be grepped for "dkim=-" as well as "dkim=fail".
            pairs.append((step.name, NOT_EVALUATED))
    return pairs


def format_line(ctx: MessageContext, results: Results, verdict: Verdict, elapsed_ms: float) -> str:
    # client_ip and helo are the client the checks judged: behind a relay of ours, the one its Received header
    # recorded ("-" when it could not be read); the relay's own address is then the relay= field.
    conn, env = results.judged_connection(ctx.connection) or Connection(None, helo=NOT_EVALUATED), ctx.envelope
    pairs: list[tuple[str, object]] = [
        ("queue_id", env.queue_id or NOT_EVALUATED),
        ("client_ip", conn.client_ip if conn.client_ip is not None else NOT_EVALUATED),
        ("helo", conn.helo),
        ("mail_from", env.mail_from or "<>"),
        ("rcpt_count", len(env.rcpts)),
    ]
    if results.skipped:
        pairs.append(("skipped", results.skipped))
    pairs.extend((key, value) for key, value in _check_fields(results) if format_key(key) not in OWN_KEYS)
    if results.forwarder:
        pairs.append(("forwarder", results.forwarder))
    pairs.append(("dnssec", results.dnssec))
    pairs.append(("action", verdict.action))
    pairs.append(("reason", verdict.reason))
    if verdict.overridden:
        pairs.append(("overridden", verdict.overridden))
    if verdict.action in (Action.REJECT, Action.TEMPFAIL) and verdict.code:
        pairs.append(("reply", f"{verdict.code} {verdict.status}".strip()))
    pairs.append(("dns_queries", results.dns_queries))
    if results.dns_extra:
        # Lookups asked early (early.py) that no check then needed: the price of not waiting for each answer.
        pairs.append(("dns_extra", results.dns_extra))
    if results.dns_deadline_expired:
        pairs.append(("dns_deadline_expired", "yes"))
    pairs.append(("ms", f"{elapsed_ms:.1f}"))
    return format_pairs(pairs)


def format_recipient_line(queue_id: str, rcpt: str, verdict: Verdict) -> str:
    return format_pairs((("queue_id", queue_id or NOT_EVALUATED), ("rcpt", rcpt), ("action", verdict.action),
                         ("reason", verdict.reason)))


class LogLineObserver:
    """One INFO line per verdict. Logging hands the line to its handler at once: no queue needed here."""

    name = "log"

    def observe(self, judged: Judged) -> None:
        if judged.refused_rcpt is not None:
            log.info("%s", format_recipient_line(judged.ctx.envelope.queue_id, judged.refused_rcpt, judged.verdict))
        else:
            log.info("%s", format_line(judged.ctx, judged.results, judged.verdict, judged.elapsed_ms))

    def close(self) -> None:
        pass
