"""The one caller of the core, shared by the milter (adapter.py) and `authmilter check` (cli.py).

For a message: run the checks, decide, render the headers, then tell the observers (the log line first). For a
recipient: run the recipient checks, decide, and tell the observers when the recipient is refused. Before either,
`start_lookups` (MAIL FROM) and `reach_end_of_headers` start the checks' lookups early (early.py); the verdict is
still given at end of message, from the same results. Nothing here
imports pymilter, so `authmilter check` judges a message exactly as the milter does without loading libmilter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from authmilter import pipeline, policy, renderer
from authmilter.checkresults import Results
from authmilter.context import MessageContext
from authmilter.config import Config
from authmilter.early import EarlyDns, EarlyWork
from authmilter.observers import Judged, notify
from authmilter.resolver import DnsClient
from authmilter.results import Action, AREntry, Verdict
from authmilter.runtime import Runtime


@dataclass(frozen=True, slots=True)
class Judgement:
    results: Results
    verdict: Verdict
    headers: tuple[tuple[str, str], ...]   # (name, value) to add, top first; values ready for libmilter
    ar_entries: tuple[AREntry, ...] = ()   # what the A-R header says, before rendering (for the observers)

    def header(self, name: str) -> str:
        """The value of the header we add under `name`, "" when we add none."""
        return next((value for header_name, value in self.headers if header_name == name), "")

    @property
    def ar_value(self) -> str:
        return self.header(renderer.HEADER_NAME)

    @property
    def received_spf(self) -> str:
        return self.header(renderer.RECEIVED_SPF_NAME)


def start_lookups(ctx: MessageContext, runtime: Runtime, *, now: float) -> EarlyWork | None:
    """At MAIL FROM: start what can start (iprev, SPF, the sender domain). None when everything waits for end of
    message ([dns] early_lookups = no), unless SPF is judged at RCPT, which then runs there."""
    pool = getattr(runtime.resolver, "pool", None)
    if pool is None and runtime.cfg.spf.reject_at != "rcpt":
        return None
    work = EarlyWork(EarlyDns(runtime.resolver.for_message(), pool), pool)
    pipeline.start_early(work, pipeline.Stage.MAIL, ctx, runtime.cfg, now=now)
    return work


def reach_end_of_headers(work: EarlyWork, ctx: MessageContext, runtime: Runtime, *, now: float) -> None:
    """The header is complete: start the DKIM key lookups and the DMARC discovery, side by side."""
    pipeline.start_early(work, pipeline.Stage.EOH, ctx, runtime.cfg, now=now)


def judge(ctx: MessageContext, dns: DnsClient, cfg: Config, authserv_id: str, *, now: float,
          early: EarlyWork | None = None) -> Judgement:
    """Check, decide, render: the pure core of one message, with no observer told (judge_message tells them)."""
    results = pipeline.evaluate(ctx, dns, cfg, now=now, early=early)
    verdict = policy.decide(results, ctx, cfg)
    entries = renderer.collect_entries(results, verdict.notes)
    return Judgement(results, verdict, renderer.render_headers(authserv_id, ctx, results, entries, cfg), entries)


def judge_message(ctx: MessageContext, runtime: Runtime, *, now: float,
                  clock: Callable[[], float] = time.monotonic, started: float | None = None,
                  early: EarlyWork | None = None) -> Judgement:
    """The whole end-of-message path without any milter I/O, then the observers. `started` is when the caller's
    work on the message began (for the log's milliseconds); now is the wall clock time stamps are judged against."""
    started = clock() if started is None else started
    dns = early.dns if early is not None else runtime.resolver.for_message()
    judgement = judge(ctx, dns, runtime.cfg, runtime.authserv_id, now=now, early=early)
    elapsed_ms = (clock() - started) * 1000.0
    judged = Judged(ctx, judgement.results, judgement.verdict, elapsed_ms, ar_entries=judgement.ar_entries)
    notify(runtime.observers, judged, runtime.observer_failures)
    return judgement


def judge_recipient(ctx: MessageContext, rcpt: str, runtime: Runtime, *, now: float,
                    early: EarlyWork | None = None) -> Verdict:
    """The verdict for one RCPT TO; the observers hear of it only when it refuses the recipient. With
    `[spf] reject_at = rcpt`, an SPF fail started at MAIL FROM is waited for and refused here."""
    checks = pipeline.evaluate_recipient(rcpt, runtime.cfg, now=now)
    verdict = policy.decide_recipient(rcpt, checks, runtime.cfg)
    if verdict.action is Action.ACCEPT and early is not None and runtime.cfg.spf.reject_at == "rcpt" \
            and early.has("spf"):
        results = pipeline.results_of(spf=early.result("spf"),
                                      forwarder=early.result("forwarder") if early.has("forwarder") else None)
        verdict = policy.decide_spf_at_rcpt(results, ctx, rcpt, runtime.cfg)
    if verdict.action in (Action.REJECT, Action.TEMPFAIL):
        judged = Judged(ctx, Results(), verdict, 0.0, refused_rcpt=rcpt)
        notify(runtime.observers, judged, runtime.observer_failures)
    return verdict
