"""`authmilter reports send` and `authmilter reports show`: arguments in, exit status out.

Exit statuses follow cli.py (sysexits.h): 0 done (including "nothing to send"), 64 usage, 70 a report failed the
schema (our bug: it is kept, never sent), 75 some report could not be sent now and is retried at a later run (the
MTA refused it, a DNS error, the store unreachable), 78 bad configuration.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, TextIO

from authmilter.config import Config
from authmilter.errors import AuthmilterError, ConfigError
from authmilter.exitcodes import EX_OK, EX_SOFTWARE, EX_TEMPFAIL
from authmilter.reports import destinations, fromspf, mail, send, smtp, xmlreport

log = logging.getLogger("authmilter.reports")

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class DayError(AuthmilterError, ValueError):
    """A --day that is not a usable day (the CLI turns it into a usage error)."""


def parse_day(text: str, *, today: str, allow_today: bool) -> str:
    if not _DAY.fullmatch(text):
        raise DayError(f"--day: expected YYYY-MM-DD, got {text!r}")
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        raise DayError(f"--day: no such day: {text}") from None
    if text > today or (text == today and not allow_today):
        raise DayError(f"--day: {text} is not over yet (UTC){'' if allow_today else '; only --dry-run may name today'}")
    return text


def utc_day(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date().isoformat()


# ---------------------------------------------------------------- send

def send_command(cfg: Config, *, day: str | None, dry_run: str | None, out: TextIO = sys.stdout,
                 clock: Callable[[], float] = time.time, transport: smtp.Transport | None = None) -> int:
    from authmilter.reports.store import StoreError, open_store

    section = cfg.reports
    if not section.enabled:
        raise ConfigError(f"{cfg.source}: [reports] enabled: reports are off (enabled = no): nothing is recorded "
                          f"or sent")
    now = clock()
    if day is not None:
        day = parse_day(day, today=utc_day(now), allow_today=dry_run is not None)
    store = open_store(section, clock=clock)
    try:
        if dry_run is not None:
            return _dry_run(cfg, store, day, Path(dry_run), out, now)
        return _send(cfg, store, day, out, clock, transport)
    except StoreError as exc:
        log.error("reports send: the report store is unavailable: %s", exc)
        print(f"reports send: the report store is unavailable: {exc} (nothing lost: retried at the next run)",
              file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        store.close()


def _send(cfg: Config, store, day: str | None, out: TextIO, clock, transport) -> int:
    from authmilter.resolver import Resolver

    resolver = Resolver(cfg.dns)
    own_transport = transport is None
    transport = transport or smtp.SmtpTransport(cfg.reports.smtp_host, cfg.reports.smtp_port,
                                                cfg.reports.smtp_timeout)
    try:
        sender = send.Sender(cfg, store, transport, resolver.for_message, clock=clock)
        results = sender.run_day(day) if day is not None else sender.run()
        if any(result.status in ("sent", "failed") for result in results):
            # Only when mail went out (or tried to): an hourly run with nothing to send stays quiet.
            warning = fromspf.check_from_spf(cfg, resolver.for_message())
            if warning:
                log.warning("reports send: %s (RFC 9990: report mail must pass DMARC aligned)", warning)
        pruned = store.prune(cfg.reports.keep_days)
        if pruned:
            log.info("reports send: forgot %d finished domain-day(s) older than %d days", pruned,
                     cfg.reports.keep_days)
    finally:
        if own_transport:
            transport.close()
        resolver.close()
    counts = Counter(result.status for result in results)
    parts = [f"{counts[status]} {label}" for status, label in (
        ("sent", "sent"), ("failed", "failed (retried later)"), ("invalid", "invalid (kept, not sent)"),
        ("no_destination", "without a destination"), ("suppressed", "suppressed"), ("given_up", "given up"),
        ("skipped", "left to another sender")) if counts[status]]
    print(f"reports send: {', '.join(parts) if parts else 'nothing to send'}", file=out)
    if counts["invalid"]:
        return EX_SOFTWARE
    if counts["failed"]:
        return EX_TEMPFAIL
    return EX_OK


# ---------------------------------------------------------------- --dry-run DIR

def _dry_run(cfg: Config, store, day: str | None, directory: Path, out: TextIO, now: float) -> int:
    """Write what `send` would send as .xml.gz files into directory; the store is only read."""
    if day is None:
        section = cfg.reports
        wanted = store.days_ready(now, section.grace_hours * 3600, section.silent_reporter_hours * 3600)
    else:
        wanted = [(domain, day) for domain in store.days(day)]
    reporter = send.reporter_of(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    written = invalid = 0
    for policy_domain, report_day in wanted:
        report = store.peek(policy_domain, report_day)
        if report is None or not report.triggered:
            continue
        if not report.report_id:
            # Never claimed: the real id is assigned by the first `send`. This one only names the file.
            digest = hashlib.blake2b(f"{policy_domain}/{report_day}".encode(), digest_size=8).hexdigest()
            report = _with_id(report, f"dryrun{digest}")
        document = xmlreport.build(report, reporter)
        problems = xmlreport.SchemaCheck.problems(document)
        if problems:
            invalid += 1
            log.error("dry run: report for %s %s fails the RFC 9990 schema: %s", policy_domain, report_day,
                      "; ".join(problems))
            continue
        attachment = mail.report_file(reporter.domain, report, document)
        path = directory / attachment.name
        _write_atomically(path, attachment.data)
        written += 1
        print(f"{path} ({len(report.rows)} records, {xmlreport.messages(report)} messages)", file=out)
    print(f"reports send --dry-run: {written} report file{'s' if written != 1 else ''} written to {directory}"
          + (f", {invalid} invalid" if invalid else "") + "; nothing sent, the store unchanged", file=out)
    return EX_SOFTWARE if invalid else EX_OK


def _with_id(report, report_id: str):
    import dataclasses

    return dataclasses.replace(report, report_id=report_id)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


# ---------------------------------------------------------------- show

COLUMNS = ("domain", "day", "rows", "messages", "pass", "fail", "destinations", "status")


def show_command(cfg: Config, *, day: str | None, out: TextIO = sys.stdout,
                 clock: Callable[[], float] = time.time) -> int:
    from authmilter.reports.store import StoreError, open_store

    if day is not None:
        day = parse_day(day, today=utc_day(clock()), allow_today=True)
    store = open_store(cfg.reports, clock=clock)
    try:
        summaries = store.summary(day)
    except StoreError as exc:
        print(f"reports show: the report store is unavailable: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        store.close()
    suppression = destinations.Suppression.parse(cfg.reports.suppress)
    table = [COLUMNS]
    for item in summaries:
        status = item.status if item.triggered or item.status != "pending" else "not triggered"
        if item.reason and item.status not in ("sent", "pending"):
            status += f": {item.reason}"
        table.append((item.policy_domain, item.day, str(item.rows), str(item.messages), str(item.dmarc_pass),
                      str(item.dmarc_fail), _destinations(item.rua, cfg.reports.max_rua, suppression),
                      _one_line(status, 100)))
    if len(table) == 1:
        print(f"no report rows{' for ' + day if day else ''}", file=out)
        return EX_OK
    widths = [max(len(row[index]) for row in table) for index in range(len(COLUMNS) - 1)]
    for row in table:
        cells = [cell.ljust(width) if index not in (2, 3, 4, 5) else cell.rjust(width)
                 for index, (cell, width) in enumerate(zip(row, widths))]
        print("  ".join(cells + [row[-1]]).rstrip(), file=out)
    return EX_OK


def _destinations(rua: tuple[str, ...], max_rua: int, suppression: destinations.Suppression) -> str:
    """The mailto addresses as published, capped and suppressed (RFC 9990 §4 verification needs the DNS:
    `send` does it)."""
    addresses = []
    for uri in rua[:max_rua]:
        parsed = destinations.parse_mailto(uri)
        if isinstance(parsed, destinations.Address) and not suppression.covers(parsed):
            addresses.append(str(parsed))
    return ",".join(addresses) or "-"


def _one_line(text: str, limit: int) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in " ".join(text.split()))
    return text if len(text) <= limit else text[:limit - 3] + "..."
