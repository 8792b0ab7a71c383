"""One RFC 9990 aggregate report as XML, built from the stored rows of one policy domain and UTC day, and the
schema check every report passes before it may leave.

The XML is written with xml.etree, which escapes '&', '<' and '>' in text (so a `]]>` a hostile sender put in a
DKIM s= or d= is harmless). What it does not do is refuse characters that XML 1.0 forbids: a control character
would be written as is and break the whole report for a domain that did nothing wrong. The recording side
already strips them; every text is cleaned here once more because a report that fails the schema is never sent.
"""

from __future__ import annotations

import calendar
import datetime
import logging
import re
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import resources

from authmilter import __version__
from authmilter.reports.model import DkimAuth, DomainDay, Override, PublishedPolicy, SpfAuth, StoredRow

log = logging.getLogger(__name__)

NAMESPACE = "urn:ietf:params:xml:ns:dmarc-2.0"
VERSION = "1.0"  # RFC 9990 first-level elements: version "MUST have the value 1.0"
SCHEMA_RESOURCE = "rfc9990-aggregate.xsd"
SECONDS_PER_DAY = 86400
MAX_TEXT_CHARS = 1024  # no identifier in a report is longer than a domain name; this only bounds a store bug

# XML 1.0 §2.2 Char: tab, LF, CR, U+0020-U+D7FF, U+E000-U+FFFD, U+10000-U+10FFFF. Everything else is removed.
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class Reporter:
    """Who we are in report_metadata, the file name, the Subject and the Message-ID."""

    org_name: str        # report_metadata/org_name
    email: str           # report_metadata/email: where a domain owner can write to us
    domain: str          # the receiver domain (RFC 9990: Submitter in the Subject, first part of the file name)
    extra_contact: str = ""
    generator: str = f"authmilter {__version__}"


def day_range(day: str) -> tuple[int, int]:
    """RFC 9990 date_range of one UTC day: its first and last second since the epoch (the period is the day,
    not the first and last message seen). Raises ValueError for anything but YYYY-MM-DD."""
    date = datetime.date.fromisoformat(day)
    begin = calendar.timegm(date.timetuple())
    return begin, begin + SECONDS_PER_DAY - 1


def clean(text: str) -> str:
    """Text that XML 1.0 can carry: forbidden characters removed, length capped."""
    return _NOT_XML_CHAR.sub("", str(text))[:MAX_TEXT_CHARS]


def build(report: DomainDay, reporter: Reporter) -> bytes:
    """The report's XML document (UTF-8, with declaration): records sorted by count, largest first."""
    root = ET.Element(_q("feedback"))
    _text(root, "version", VERSION)
    _metadata(root, report, reporter)
    _policy(root, report.policy)
    for stored in sorted(report.rows, key=_row_order):
        _record(root, stored)
    ET.indent(root, space=" ")  # people read these too; the indentation is whitespace the schema ignores
    return ET.tostring(root, encoding="utf-8", xml_declaration=True, default_namespace=NAMESPACE) + b"\n"


def messages(report: DomainDay) -> int:
    return sum(stored.count for stored in report.rows)


# ---------------------------------------------------------------- elements (in the order RFC 9990 lists them)

def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def _text(parent: ET.Element, name: str, value: object) -> ET.Element:
    element = ET.SubElement(parent, _q(name))
    element.text = clean(str(value))
    return element


def _metadata(root: ET.Element, report: DomainDay, reporter: Reporter) -> None:
    meta = ET.SubElement(root, _q("report_metadata"))
    _text(meta, "org_name", reporter.org_name)
    _text(meta, "email", reporter.email)
    if reporter.extra_contact:
        _text(meta, "extra_contact_info", reporter.extra_contact)
    _text(meta, "report_id", report.report_id)
    begin, end = day_range(report.day)
    period = ET.SubElement(meta, _q("date_range"))
    _text(period, "begin", begin)
    _text(period, "end", end)
    overflow = sum(stored.count for stored in report.rows if stored.row.overflow)
    if overflow:
        # The one place RFC 9990 gives for "what went wrong while reporting": say that one record is a summary.
        _text(meta, "error", f"{overflow} message(s) arrived after the limit of distinct records for this domain "
                             f"and day was reached; they are counted in one summary record")
    _text(meta, "generator", reporter.generator)


def _policy(root: ET.Element, policy: PublishedPolicy) -> None:
    published = ET.SubElement(root, _q("policy_published"))
    _text(published, "domain", policy.domain)
    if policy.discovery_method:
        _text(published, "discovery_method", policy.discovery_method)
    _text(published, "p", policy.p)
    if policy.sp:
        _text(published, "sp", policy.sp)
    if policy.np:
        _text(published, "np", policy.np)
    if policy.adkim:
        _text(published, "adkim", policy.adkim)
    if policy.aspf:
        _text(published, "aspf", policy.aspf)
    if policy.testing:
        _text(published, "testing", policy.testing)


def _record(root: ET.Element, stored: StoredRow) -> None:
    key = stored.row
    record = ET.SubElement(root, _q("record"))
    row = ET.SubElement(record, _q("row"))
    _text(row, "source_ip", key.source_ip)
    _text(row, "count", stored.count)
    evaluated = ET.SubElement(row, _q("policy_evaluated"))
    _text(evaluated, "disposition", key.disposition)
    _text(evaluated, "dkim", key.dkim)
    _text(evaluated, "spf", key.spf)
    for reason in key.reasons:
        _reason(evaluated, reason)
    identifiers = ET.SubElement(record, _q("identifiers"))
    _text(identifiers, "header_from", key.header_from)
    # RFC 9990 identifiers: envelope_from "MAY be existing but empty" for the null reverse-path; we say so.
    _text(identifiers, "envelope_from", key.envelope_from)
    if key.envelope_to:
        _text(identifiers, "envelope_to", key.envelope_to)
    auth = ET.SubElement(record, _q("auth_results"))
    for signature in key.dkim_results:
        _dkim(auth, signature)
    if key.spf_results:
        # AuthResultType allows at most one spf element: the MAIL FROM result (HELO for the null sender).
        _spf(auth, key.spf_results[0])


def _reason(parent: ET.Element, reason: Override) -> None:
    element = ET.SubElement(parent, _q("reason"))
    _text(element, "type", reason.type)
    if reason.comment:
        _text(element, "comment", reason.comment)


def _dkim(parent: ET.Element, signature: DkimAuth) -> None:
    element = ET.SubElement(parent, _q("dkim"))
    _text(element, "domain", signature.domain)
    _text(element, "selector", signature.selector)  # RFC 9990 made the selector required
    _text(element, "result", signature.result)


def _spf(parent: ET.Element, spf: SpfAuth) -> None:
    element = ET.SubElement(parent, _q("spf"))
    _text(element, "domain", spf.domain)
    _text(element, "scope", spf.scope)
    _text(element, "result", spf.result)


def _row_order(stored: StoredRow) -> tuple:
    """Largest counts first, then a stable order, so one day's report is the same document however the store
    returned its rows."""
    return (-stored.count, stored.row.overflow, repr(stored.row))


# ---------------------------------------------------------------- validation

class SchemaCheck:
    """The RFC 9990 XSD (shipped in this package, Appendix A of the RFC), loaded once per process.

    xmlschema is a run-time dependency: the rule is that no report leaves unvalidated, so the check belongs to
    `reports send`, not to the tests alone. Loading the schema takes a fifth of a second; each check about a
    millisecond for a small report.
    """

    _lock = threading.Lock()
    _schema = None

    @classmethod
    def _load(cls):
        with cls._lock:
            if cls._schema is None:
                import xmlschema  # deferred: only `reports send` and `show` pay for it, never the milter

                source = resources.files("authmilter.reports").joinpath(SCHEMA_RESOURCE)
                with resources.as_file(source) as path:
                    cls._schema = xmlschema.XMLSchema(str(path))
            return cls._schema

    @classmethod
    def problems(cls, document: bytes, limit: int = 3) -> list[str]:
        """The schema errors of one document (empty: valid), at most `limit` of them, each with its path."""
        schema = cls._load()
        try:
            # The very bytes that are sent, parsed by expat (C); xmlschema then walks the tree. Handing it the
            # text instead costs a fifth more for the same check. No defaults are filled in: we check, not decode.
            root = ET.fromstring(document)
        except ET.ParseError as exc:  # a document that does not even parse: say why, keep the report
            return [f"not well-formed XML: {exc}"]
        found: list[str] = []
        for error in schema.iter_errors(root, use_defaults=False):
            found.append(f"{error.path or '/'}: {error.reason or error.message}")
            if len(found) >= limit:
                break
        return found
