"""DMARC policy record parsing (RFC 9989 §4.7 tags, §4.8 formal definition).

Pure text in, frozen value out. Which record of a TXT set counts (§4.10: records that do not start with v=DMARC1
are discarded; several DMARC records are treated as none) is decided by select_record().
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

MAX_RECORD_CHARS = 4096  # a TXT RRset larger than this is not a policy anybody meant

# RFC 9989 §4.8: dmarc-version = "v" *WSP "=" *WSP %s"DMARC1" -- case-sensitive value, first tag.
_VERSION = re.compile(r"^[ \t]*v[ \t]*=[ \t]*DMARC1[ \t]*(?:;|$)")
_TAG_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class Request(StrEnum):
    """dmarc-request values of p=, sp= and np=."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class Psd(StrEnum):
    YES = "y"      # this is a Public Suffix Domain
    NO = "n"       # this is an Organizational Domain (the tree walk stops here)
    UNKNOWN = "u"  # the default


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """One parsed v=DMARC1 record. Tags kept for the reports to come (rua, ruf, fo)."""

    raw: str
    p: Request | None = None      # None: absent or invalid (see policy_request())
    sp: Request | None = None     # None: absent or invalid -> p applies
    np: Request | None = None     # None: absent or invalid -> sp, then p applies
    psd: Psd = Psd.UNKNOWN
    testing: bool = False         # t=y, or the legacy pct=0 without t= (see parse_record)
    adkim_strict: bool = False
    aspf_strict: bool = False
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: tuple[str, ...] = ("0",)
    syntax_error: str = ""        # non-empty: the tag list is broken; the record yields permerror

    def policy_request(self) -> Request | None:
        """The p= to apply, or None when the record asks for no DMARC processing.

        RFC 9989 §5.3 (as RFC 7489 §6.6.3 step 6): without a valid p=, a record that names a syntactically valid
        aggregate-report URI is treated as p=none; otherwise no DMARC processing applies.
        """
        if self.p is not None:
            return self.p
        if any(_valid_uri(uri) for uri in self.rua):
            return Request.NONE
        return None


@dataclass(frozen=True, slots=True)
class RecordSet:
    """What one _dmarc TXT lookup held, after RFC 9989 §4.10 steps 2/7."""

    record: DmarcRecord | None = None
    several: int = 0  # how many DMARC records were found when there were several (all discarded)


def is_dmarc_record(text: str) -> bool:
    return bool(_VERSION.match(text))


def select_record(txts: tuple[bytes, ...]) -> RecordSet:
    """RFC 9989 §4.10: discard TXT records not starting with v=DMARC1; several DMARC records count as none."""
    candidates = []
    for txt in txts:
        text = txt.decode("utf-8", "replace") if isinstance(txt, bytes) else str(txt)
        if is_dmarc_record(text):
            candidates.append(text)
    if len(candidates) > 1:
        return RecordSet(several=len(candidates))
    if not candidates:
        return RecordSet()
    return RecordSet(record=parse_record(candidates[0]))


def parse_record(text: str) -> DmarcRecord:
    """Parse a record already known to start with v=DMARC1. Never raises."""
    if len(text) > MAX_RECORD_CHARS:
        return DmarcRecord(raw=text[:MAX_RECORD_CHARS], syntax_error="record too long")
    tags: dict[str, str] = {}
    parts = text.split(";")
    if parts and not parts[-1].strip():
        parts = parts[:-1]  # one trailing ";" is allowed
    for part in parts:
        name, sep, value = part.partition("=")
        name, value = name.strip(" \t"), value.strip(" \t")
        if not sep or not _TAG_NAME.match(name):
            return DmarcRecord(raw=text, syntax_error=f"malformed tag {part.strip()!r}")
        name = name.lower()
        if name in tags:
            return DmarcRecord(raw=text, syntax_error=f"duplicate tag {name}")
        tags[name] = value
    # Unknown tags, including the legacy rf= and ri= that RFC 9989 removed, MUST be ignored (§4.7).
    testing = _yes(tags.get("t"))
    if "t" not in tags and tags.get("pct", "").strip() == "0":
        # RFC 9989 removed pct=. Our choice (issue 3): pct=0 with no t= is what an owner published to test
        # without enforcement, and t=y was designed as its replacement, so honour it as t=y. Any other pct
        # value is ignored, as RFC 9989 says.
        testing = True
    return DmarcRecord(
        raw=text,
        p=_request(tags.get("p")),
        sp=_request(tags.get("sp")),
        np=_request(tags.get("np")),
        psd=_psd(tags.get("psd")),
        testing=testing,
        adkim_strict=tags.get("adkim", "r").strip().lower() == "s",
        aspf_strict=tags.get("aspf", "r").strip().lower() == "s",
        rua=_uri_list(tags.get("rua", "")),
        ruf=_uri_list(tags.get("ruf", "")),
        fo=tuple(f.strip() for f in tags["fo"].split(":") if f.strip()) if "fo" in tags else ("0",),
    )


def _request(value: str | None) -> Request | None:
    if value is None:
        return None
    try:
        return Request(value.strip().lower())
    except ValueError:
        return None


def _psd(value: str | None) -> Psd:
    try:
        return Psd((value or "u").strip().lower())
    except ValueError:
        return Psd.UNKNOWN


def _yes(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "y"


def _uri_list(value: str) -> tuple[str, ...]:
    return tuple(uri.strip() for uri in value.split(",") if uri.strip())


def _valid_uri(uri: str) -> bool:
    """RFC 3986 scheme ":" something; reports are mailto: in practice."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$", uri))
