"""What happens after a verdict: one list of observers, called by one caller for the milter and `authmilter check`.

An observer sees each judged message (and each recipient refused at RCPT) once, after the verdict and before the
reply goes out, so it must never block: anything slow (a database write, a network call) is handed to a queue with
`put_nowait` and done by a thread of its own. An observer that raises is logged and counted, and never changes the
reply or stops the observers after it. The log line is the first observer; aggregate reports and metrics follow.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from authmilter.context import MessageContext
from authmilter.results import AREntry, Verdict

if TYPE_CHECKING:
    from authmilter.checkresults import Results

log = logging.getLogger("authmilter")


@dataclass(frozen=True, slots=True)
class Judged:
    """One verdict and what led to it.

    For a message: `results` holds every check's result. For a recipient refused at RCPT (`refused_rcpt` set):
    the message part of `ctx` is empty and `results` says only what the RCPT stage knew (nothing was checked).
    """

    ctx: MessageContext
    results: Results
    verdict: Verdict
    elapsed_ms: float
    refused_rcpt: str | None = None
    # The A-R entries of this verdict, made once by the renderer (collect_entries), so an observer that counts
    # methods reads them instead of making them again on the reply's thread.
    ar_entries: tuple[AREntry, ...] = ()


class Observer(Protocol):
    """Anything told about verdicts. `name` is what the error log and the error counter call it."""

    name: str

    def observe(self, judged: Judged) -> None:
        """Called once per verdict, on the thread that will send the reply: must return in microseconds."""

    def close(self) -> None:
        """The daemon is stopping (or a reload replaced this observer): finish or hand over queued work."""


class ObserverFailures:
    """Counts observer failures by observer name, so a metrics observer (or a test) can read them."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


def notify(observers: Sequence[Observer], judged: Judged, failures: ObserverFailures | None = None) -> None:
    """Tell every observer, in order. A failing observer is logged and counted; the next ones still run."""
    for observer in observers:
        try:
            observer.observe(judged)
        except Exception:
            if failures is not None:
                failures.add(observer.name)
            queue_id = judged.ctx.envelope.queue_id or "-"
            log.exception("queue_id=%s observer %s failed; the reply is unchanged", queue_id, observer.name)


def close_all(observers: Sequence[Observer]) -> None:
    for observer in observers:
        try:
            observer.close()
        except Exception:
            log.exception("closing observer %s failed", observer.name)
