"""Reading the delivered Authentication-Results header back, the way a downstream consumer would (authres)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import authres


@dataclass(frozen=True, slots=True)
class Entry:
    method: str
    result: str
    properties: dict[str, str]   # "smtp.mailfrom" -> value


@dataclass(frozen=True, slots=True)
class ParsedAR:
    authserv_id: str
    entries: tuple[Entry, ...]
    raw: str                      # the unfolded header value, comments included

    def methods(self) -> list[str]:
        return [entry.method for entry in self.entries]

    def only(self, method: str, **properties: str) -> Entry:
        """The single entry for `method` (whose properties include the given ones, `smtp_helo="x"` meaning
        smtp.helo=x); AssertionError if there is not exactly one."""
        wanted = {key.replace("_", ".", 1): value for key, value in properties.items()}
        found = [entry for entry in self.entries if entry.method == method
                 and all(entry.properties.get(key) == value for key, value in wanted.items())]
        assert len(found) == 1, f"expected one {method} entry with {wanted}, got {found} in {self.raw!r}"
        return found[0]

    def with_property(self, method: str, ptype_name: str) -> list[Entry]:
        return [entry for entry in self.entries if entry.method == method and ptype_name in entry.properties]


def parse_ar(value: str) -> ParsedAR:
    """Parse one Authentication-Results value with authres; a header that does not parse fails the test."""
    unfolded = re.sub(r"\r?\n[ \t]", " ", value).strip()
    header = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {unfolded}")
    entries = tuple(Entry(str(result.method), str(result.result),
                          {f"{prop.type}.{prop.name}": _unquote(str(prop.value)) for prop in result.properties})
                    for result in header.results)
    return ParsedAR(str(header.authserv_id), entries, unfolded)


def _unquote(value: str) -> str:
    """authres returns a quoted-string's content with its quoted-pairs still escaped (RFC 5322 §3.2.4)."""
    return re.sub(r"\\(.)", r"\1", value)
