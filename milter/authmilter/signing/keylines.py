"""The syntax of `[signing] keys` and `[signing] login_domains` lines: parsed with the rest of the INI file.

Only text is judged here (names, paths, dates); the key files are read by keys.py at start-up, where a file problem
is reported with the file and the reason.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

# RFC 6376 §3.1: a selector is a dot-separated sequence of sub-domain labels.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_FROM_DATE = re.compile(r"from=(\d{4}-\d{2}-\d{2})")
MAX_LINES = 1000  # far beyond any real key table; bounds what one config can make us load


@dataclass(frozen=True, slots=True)
class KeyLine:
    """One `DOMAIN SELECTOR KEYFILE [from=YYYY-MM-DD]` line."""

    domain: str                          # lowercase A-labels, no trailing dot (the d= value)
    selector: str                        # lowercase (the s= value)
    path: str                            # absolute path of the private key file
    not_before: datetime.date | None = None  # signs from 00:00 UTC of this day; None: always

    def __str__(self) -> str:
        since = f" from={self.not_before.isoformat()}" if self.not_before else ""
        return f"{self.domain} {self.selector} {self.path}{since}"


@dataclass(frozen=True, slots=True)
class LoginDomains:
    """One `LOGIN DOMAIN [DOMAIN...]` line: the SASL login may have mail signed for exactly these From domains."""

    login: str
    domains: tuple[str, ...]


def domain_a_labels(text: str) -> str:
    """A domain name as d= and DNS carry it (lowercase A-labels); ValueError when it cannot be one."""
    from authmilter.resolver import to_a_labels  # resolver imports config: imported when a value is parsed

    name = text.strip().rstrip(".")
    converted = to_a_labels(name) if name and "@" not in name else None
    if not converted or "." not in converted:
        raise ValueError(f"not a domain name: {text.strip()!r}")
    return converted.lower()


def parse_key_line(line: str) -> KeyLine:
    words = line.split()
    if len(words) not in (3, 4):
        raise ValueError(f"expected DOMAIN SELECTOR KEYFILE [from=YYYY-MM-DD], got {line.strip()!r}")
    domain_text, selector, path = words[:3]
    domain = domain_a_labels(domain_text)
    if len(selector) > 63 or not _SELECTOR.fullmatch(selector):
        raise ValueError(f"not a selector: {selector!r} (letters, digits, '-' and dots)")
    if not path.startswith("/"):
        raise ValueError(f"the key file must be an absolute path, got {path!r}")
    not_before = None
    if len(words) == 4:
        match = _FROM_DATE.fullmatch(words[3])
        if not match:
            raise ValueError(f"expected from=YYYY-MM-DD after the key file, got {words[3]!r}")
        try:
            not_before = datetime.date.fromisoformat(match.group(1))
        except ValueError:
            raise ValueError(f"not a date: {words[3]!r}") from None
    return KeyLine(domain, selector.lower(), path, not_before)


def parse_key_lines(text: str) -> tuple[KeyLine, ...]:
    """A multi-line value, one key per line; blank lines are ignored."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_LINES:
        raise ValueError(f"more than {MAX_LINES} keys")
    return tuple(parse_key_line(line) for line in lines)


def parse_login_domains(text: str) -> tuple[LoginDomains, ...]:
    """A multi-line value: `LOGIN DOMAIN [DOMAIN...]` per line (domains separated by spaces or commas)."""
    entries: dict[str, LoginDomains] = {}
    for line in text.splitlines():
        words = line.replace(",", " ").split()
        if not words:
            continue
        if len(words) < 2:
            raise ValueError(f"expected LOGIN DOMAIN [DOMAIN...], got {line.strip()!r}")
        login, domains = words[0], tuple(dict.fromkeys(domain_a_labels(word) for word in words[1:]))
        if login in entries:
            raise ValueError(f"login {login!r} listed twice")
        entries[login] = LoginDomains(login, domains)
        if len(entries) > MAX_LINES:
            raise ValueError(f"more than {MAX_LINES} logins")
    return tuple(entries.values())
