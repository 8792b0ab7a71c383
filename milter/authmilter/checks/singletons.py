"""Header fields that RFC 5322 §3.6 allows at most once, found more than once.

A second Subject (or Date, To...) above a validly signed message is the spoof of RFC 6376 §8.15 (shown against
real mail readers in "Composition Kills", USENIX Security 2020): the DKIM signature covers the lower instance (RFC 6376 §5.4.2 signs header fields bottom-up), while most
mail readers show the upper one. So the signature, and the DMARC pass built on it, vouch for text nobody reads.
This module only finds the repeats; policy decides what to do about them ([policy] duplicate_headers_action).

From is not listed: a repeated From is already refused through DMARC's From parse (checks/dmarc/fromheader.py),
which must see it anyway to name an author domain. Bcc is not listed either: it is removed before delivery, so
no reader is shown a second one. Resent-* fields repeat legitimately, one block per resend (§3.6.6).
"""

from __future__ import annotations

from dataclasses import dataclass

from authmilter.context import Message

# RFC 5322 §3.6, the table's "1" in the max column (less From, see above), in the order the reply names them.
# Spelled as the RFC spells them; matching is on the lowercase form (§1.2.2: field names are case-insensitive).
SINGLETONS: tuple[str, ...] = ("Subject", "Date", "To", "Cc", "Sender", "Reply-To", "Message-ID", "In-Reply-To",
                               "References")
_BY_LOOKUP_NAME = {name.lower().encode("ascii"): name for name in SINGLETONS}


@dataclass(frozen=True, slots=True)
class DuplicateHeaders:
    """The singleton fields a message carries more than once, as the RFC spells them, in SINGLETONS order."""

    names: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.names)

    def describe(self) -> str:
        """For the reply and the header comment: "multiple Subject headers", "multiple Subject and Date headers"."""
        if len(self.names) == 1:
            listed = self.names[0]
        else:
            listed = ", ".join(self.names[:-1]) + " and " + self.names[-1]
        return f"multiple {listed} headers"

    # The result protocol (checkresults.MethodResult): shown so the log line carries the field, with no A-R
    # method of its own (RFC 8601 registers none for this); policy puts a note beside DMARC's entry instead.

    def ar_entries(self) -> tuple:
        return ()

    def log_fields(self) -> dict[str, str]:
        return {"duplicate_headers": ",".join(name.lower() for name in self.names)} if self.names else {}

    def dnssec_statuses(self) -> tuple:
        return ()  # read from the header alone


def find_duplicates(msg: Message) -> DuplicateHeaders:
    """Which singleton fields `msg` repeats: one pass over the kept headers ([milter] max_header_bytes)."""
    counts = dict.fromkeys(_BY_LOOKUP_NAME, 0)
    for header in msg.headers:
        if header.lookup_name in counts:
            counts[header.lookup_name] += 1
    return DuplicateHeaders(tuple(_BY_LOOKUP_NAME[name] for name, count in counts.items() if count > 1))
