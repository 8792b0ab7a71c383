"""`authmilter reports send`: from the stored rows of each finished (policy domain, UTC day) to one report mail.

For each (domain, day) the store says is ready, one sender claims it (however many run at once, on however many
hosts: the store's claim is the lock), then:

    stored message?  -- yes -> resend those exact bytes (same id, same Date, same file): a retry is a duplicate
         | no                   the consumer can recognise, never a second report
    destinations (rua, RFC 9990 §4 checks, suppression)  -- DNS failure -> try again at a later run
         |                                                -- nobody left -> no_destination / suppressed
    XML -> schema check  -- invalid -> logged, kept (rows stay), never sent
         |
    message -> sign() -> store.record_built(bytes) -> SMTP to the local MTA -> mark_sent (only after the MTA's 250)
                                                                              or mark_failed (retry later)

Who gets a report at all was decided when each message was recorded (record.py: a DMARC pass, or a fail we
accepted or quarantined; never mail addressed to our own report mailboxes; [reports] report_rejects_only and
report_mailboxes switch it): the store offers only the days that some message triggered.
"""

from __future__ import annotations

import email.parser
import email.utils
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable

from authmilter.config import Config
from authmilter.reports import destinations, mail, xmlreport
from authmilter.reports.model import DomainDay
from authmilter.reports.smtp import SendError, Transport
from authmilter.reports.store import StoreError
from authmilter.resolver import DnsClient, to_a_labels

log = logging.getLogger("authmilter.reports")

# How long one sender may hold a claim before another may take the report over (a sender killed mid-way): far
# longer than building and handing over one report takes, short enough that a crash costs one timer period.
LEASE_SECONDS = 900
# Runs with this many reports or more build and check their XML in a worker process (see _builder).
PARALLEL_FROM = 50
LOOKAHEAD = 16  # reports built ahead of the one being handed to the MTA

Clock = Callable[[], float]


# ---------------------------------------------------------------- the hook for signing (issue 11)

def sign(message: bytes, cfg: Config) -> bytes:
    """The one place where a signer is applied to a built report message, before its bytes are stored and sent.

    RFC 9990 §3.5 wants report mail to pass DMARC aligned where it arrives: when [signing] has a key for the From
    domain of [reports] from_address, the report carries its DKIM signature (signing.signer.sign_message), which
    survives forwarding where SPF does not. Because the result is stored, a resend carries the same signature byte
    for byte. Without a key, reports rely on SPF for from_address's domain, which `reports send` checks
    (fromspf.py).
    """
    if not cfg.signing.keys:
        return message
    from authmilter.signing.signer import sign_message

    return sign_message(message, cfg)


# ---------------------------------------------------------------- one run

@dataclass(frozen=True, slots=True)
class Result:
    """What happened to one (domain, day) in this run: for the log, the summary and the exit status."""

    policy_domain: str
    day: str
    status: str        # sent, failed, invalid, suppressed, no_destination, given_up, skipped, written
    detail: str = ""
    report_id: str = ""


def reporter_of(cfg: Config) -> xmlreport.Reporter:
    section = cfg.reports
    domain = section.from_address.rpartition("@")[2].rstrip(".")
    return xmlreport.Reporter(
        org_name=" ".join(section.org_name.split()),  # one line: it goes into a header too
        email=section.from_address,
        domain=(to_a_labels(domain) or domain).lower(),
        extra_contact=" ".join(section.contact.split()),
    )


class Sender:
    """One `reports send` run against one store."""

    def __init__(self, cfg: Config, store, transport: Transport, dns_factory: Callable[[], DnsClient], *,
                 clock: Clock = time.time, sender_id: str | None = None):
        self.cfg = cfg
        self.section = cfg.reports
        self.store = store
        self.transport = transport
        self.dns_factory = dns_factory
        self.clock = clock
        self.sender_id = sender_id or f"{self.section.reporter}:{os.getpid()}"
        self.reporter = reporter_of(cfg)
        self.suppression = destinations.Suppression.parse(self.section.suppress)

    # -------------------------------------------------------- the run

    def run(self) -> list[Result]:
        """Every report the store says is ready, each claimed, built or resent, and handed over."""
        now = self.clock()
        ready = self.store.days_ready(now, self.section.grace_hours * 3600,
                                      self.section.silent_reporter_hours * 3600)
        return self._process(ready)

    def run_day(self, day: str) -> list[Result]:
        """The reports of one named day (`--day`), even before the grace period and the fleet's flushes are over:
        the operator asked for it. Days nothing triggered and reports already done are left alone."""
        from authmilter.reports.store import OPEN_STATUSES

        wanted = []
        for policy_domain in self.store.days(day):
            report = self.store.peek(policy_domain, day)
            if report is not None and report.triggered and report.status in OPEN_STATUSES:
                wanted.append((policy_domain, day))
        return self._process(wanted)

    def one(self, policy_domain: str, day: str) -> Result:
        return self._process([(policy_domain, day)])[0]

    def _process(self, items: list[tuple[str, str]]) -> list[Result]:
        """Claim, prepare and hand over each report. XML building and the schema check, half the CPU a report
        costs, run in worker processes when a run is large, while this one talks to the store, the DNS
        and the MTA; at most LOOKAHEAD reports are in flight, each finished in the order claimed."""
        results: list[Result] = []
        pending: deque[_Pending] = deque()
        with _builder(len(items)) as builder:
            for policy_domain, day in items:
                prepared = self._guarded(policy_domain, day, "", lambda: self._prepare(policy_domain, day, builder))
                if isinstance(prepared, Result):
                    results.append(prepared)
                else:
                    pending.append(prepared)
                while pending and (len(pending) > LOOKAHEAD or pending[0].built.done()):
                    results.append(self._finish_guarded(pending.popleft()))
            while pending:
                results.append(self._finish_guarded(pending.popleft()))
        return results

    def _guarded(self, policy_domain: str, day: str, report_id: str, step: Callable[[], object]):
        try:
            return step()
        except StoreError:
            raise  # the store is gone for every report: the run stops, the claims' leases expire
        except Exception:
            # A bug with one report must not stop the others; the claim's lease lets a later run retry it.
            log.exception("report for %s %s failed unexpectedly", policy_domain, day)
            return Result(policy_domain, day, "failed", "internal error (logged)", report_id)

    def _finish_guarded(self, item: _Pending) -> Result:
        report = item.report
        return self._guarded(report.policy_domain, report.day, report.report_id, lambda: self._finish(item))

    def _prepare(self, policy_domain: str, day: str, builder) -> Result | _Pending:
        """Claim one report; anything decided without the XML (resend, give up, destinations) ends here."""
        report = self.store.claim(policy_domain, day, self.sender_id, LEASE_SECONDS)
        if report is None:
            return Result(policy_domain, day, "skipped", "claimed by another sender, or done")
        now = self.clock()
        if self._too_old(report.day, now):
            reason = f"not sent within [reports] give_up_days = {self.section.give_up_days} of the day's end"
            self.store.mark_status(report.policy_domain, report.day, "given_up", reason)
            log.warning("report for %s %s given up (id %s): %s", report.policy_domain, report.day,
                        report.report_id, reason)
            return Result(report.policy_domain, report.day, "given_up", reason, report.report_id)
        stored = self.store.built_payload(report.policy_domain, report.day)
        if stored is not None:
            return self._deliver(report, stored, None)
        found = destinations.resolve(report.policy, report.rua, self.dns_factory(),
                                     max_rua=self.section.max_rua, suppression=self.suppression)
        for uri, why in found.dropped:
            log.info("report for %s %s: not sending to %s: %s", report.policy_domain, report.day, uri, why)
        if found.retry:
            return self._failed(report, f"DNS error while verifying a destination: {found.retry}", now)
        if not found.addresses:
            status = "suppressed" if found.suppressed_only else "no_destination"
            reason = "; ".join(f"{uri}: {why}" for uri, why in found.dropped) or "no rua= address"
            self.store.mark_status(report.policy_domain, report.day, status, reason[:1000])
            log.info("report for %s %s not sent (%s): %s", report.policy_domain, report.day, status, reason)
            return Result(report.policy_domain, report.day, status, reason, report.report_id)
        recipients = tuple(str(address) for address in found.addresses)
        return _Pending(report, recipients, builder.submit(build_checked, report, self.reporter))

    def _finish(self, item: _Pending) -> Result:
        report = item.report
        document, problems = item.built.result()
        now = self.clock()
        if problems:
            # Our bug, not the domain's: keep everything (rows, status) so a fixed release sends it, and say so
            # loudly at every run until then.
            reason = "report fails the RFC 9990 schema: " + "; ".join(problems)
            log.error("report for %s %s (id %s) kept, not sent: %s", report.policy_domain, report.day,
                      report.report_id, reason)
            self._mark_failed(report, reason, now)
            return Result(report.policy_domain, report.day, "invalid", reason, report.report_id)
        attachment = mail.report_file(self.reporter.domain, report, document)
        message = sign(mail.build(report, self.reporter, item.recipients, attachment, now=now), self.cfg)
        self.store.record_built(report.policy_domain, report.day, report.report_id, message)
        return self._deliver(report, message, item.recipients)

    def _deliver(self, report: DomainDay, message: bytes, recipients: tuple[str, ...] | None) -> Result:
        """Hand one message to the MTA. recipients None: a resend, to whom the stored message's To names."""
        resend = recipients is None
        recipients = recipients_of(message) if recipients is None else recipients
        try:
            refused = self.transport.send(self.section.from_address, recipients, message)
        except SendError as exc:
            return self._failed(report, str(exc), self.clock())
        self.store.mark_sent(report.policy_domain, report.day)
        detail = f"to {', '.join(recipients)}" + (" (resent unchanged)" if resend else "")
        if refused:
            detail += f"; refused by the MTA: {', '.join(refused)}"
        log.info("report for %s %s sent (id %s, %d records, %d messages) %s", report.policy_domain, report.day,
                 report.report_id, len(report.rows), xmlreport.messages(report), detail)
        return Result(report.policy_domain, report.day, "sent", detail, report.report_id)

    def _failed(self, report: DomainDay, reason: str, now: float) -> Result:
        self._mark_failed(report, reason, now)
        log.warning("report for %s %s (id %s) not sent, retried after %d minutes: %s", report.policy_domain,
                    report.day, report.report_id, self.section.retry_minutes, reason)
        return Result(report.policy_domain, report.day, "failed", reason, report.report_id)

    def _mark_failed(self, report: DomainDay, reason: str, now: float) -> None:
        self.store.mark_failed(report.policy_domain, report.day, reason[:1000],
                               now + self.section.retry_minutes * 60)

    def _too_old(self, day: str, now: float) -> bool:
        return now > xmlreport.day_range(day)[1] + 1 + self.section.give_up_days * 86400


@dataclass(slots=True)
class _Pending:
    """A claimed report whose destinations are known, waiting for its XML and schema check."""

    report: DomainDay
    recipients: tuple[str, ...]
    built: Future  # -> (document, schema problems)


def build_checked(report: DomainDay, reporter: xmlreport.Reporter) -> tuple[bytes, list[str]]:
    """The report's XML and its schema problems (empty: valid). Runs in a worker process for large runs."""
    document = xmlreport.build(report, reporter)
    return document, xmlreport.SchemaCheck.problems(document)


class _Inline:
    """The builder of small runs: computes on submit, in this process."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc_info) -> None:
        pass


def _builder(count: int):
    """Worker processes for runs of PARALLEL_FROM reports or more on a machine with several CPUs, else inline.

    The worker is forked (a spawned one would re-run the `authmilter` command line as its main module), so only
    from a process with no other thread (fork copies only the caller: a lock another thread held stays held); the
    schema is loaded first, so the worker inherits it instead of loading its own.
    """
    if count < PARALLEL_FROM or (os.cpu_count() or 1) < 2 or threading.active_count() > 1:
        return _Inline()
    xmlreport.SchemaCheck.problems(b"<feedback/>")
    # As many workers as CPUs: this process mostly waits (store commits, the MTA), so they rarely compete with it.
    return ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                               mp_context=multiprocessing.get_context("fork"))


def recipients_of(message: bytes) -> tuple[str, ...]:
    """The To addresses of a built message: a resend goes to whom the stored bytes say, nobody else."""
    headers = email.parser.BytesHeaderParser().parsebytes(message)
    return tuple(address for _, address in email.utils.getaddresses(headers.get_all("To", [])) if address)
