"""Prometheus metrics ([metrics] listen): what the milter decided and what it cost, counted for graphs and alerts.

One MetricsObserver owns a private CollectorRegistry (nothing goes to prometheus_client's global one) and is fed
from four places, none of them a check:
  - every verdict, as an observer (observers.py): messages, results, end-of-message time;
  - the DNS layer, through the resolver's `on_query` hook: lookups by type and outcome, and their latency;
  - the milter shell (adapter.AuthMilter's `events`): open connections and errors by milter stage;
  - the daemon: reloads, and at scrape time the observer failures and the report writer's queue (`watch_*`).
metricsserver.py serves the registry over HTTP; `authmilter check` never starts it.

No label value comes from the mail or the network: no domain, address, selector or local part. Every label is a
word written by our code (actions, reasons, RFC 8601 results, record types, DNS outcomes, milter stages, observer
names), and `_Words` maps anything else, and anything past a fixed number of distinct words, to "other": the
number of series stays bounded whatever arrives, even if a future reason were built from a sender's text.
"""

from __future__ import annotations

import platform
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from authmilter import __version__
from authmilter.observers import Judged
from authmilter.results import AREntry, Status

if TYPE_CHECKING:
    from authmilter.config import Config
    from authmilter.resolver import Outcome

OTHER = "other"
_WORD = re.compile(r"[a-z][a-z0-9_]{0,39}")

# End of message is bounded by [dns] message_deadline (at most 250 s, 20 by default); most messages take
# milliseconds. DNS lookups: a warm local resolver answers in well under a millisecond, a cold one in tens.
EOM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)
DNS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The adapter's stage names (adapter.AuthMilter._guarded and friends), pre-set to 0 so a graph starts at 0.
MILTER_STAGES = ("connect", "helo", "mail", "rcpt", "header", "body", "eom")
RECORD_TYPES = ("A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME", "NS")


class ReportWriterStats(Protocol):
    """What the report writer tells the metrics at each scrape (any object with these three attributes)."""

    queue_depth: int    # observations waiting in its queue now
    rows_written: int   # observations stored since it started (a counter)
    rows_dropped: int   # observations lost since it started: queue full, store and journal failed (a counter)


_RESULT_WORDS = frozenset(status.value for status in Status)


class _Words:
    """A label value as itself when it is one of our words, else "other"; at most `limit` distinct words."""

    def __init__(self, limit: int, known: tuple[str, ...] = ()) -> None:
        self._seen = set(known)
        self._limit = limit
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        word = str(value)
        if word in self._seen:
            return word
        if not _WORD.fullmatch(word):
            return OTHER
        with self._lock:
            if word not in self._seen and len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(word)
        return word


class _Children:
    """A labelled metric's children by label values, kept in a plain dict: `labels()` takes a lock and checks
    its arguments on every call, and this runs a dozen times per message on the milter's one CPU."""

    __slots__ = ("_metric", "_cache")

    def __init__(self, metric) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], object] = {}

    def __call__(self, *values: str):
        child = self._cache.get(values)
        if child is None:  # two threads may both get here: labels() returns the same child to both
            child = self._cache[values] = self._metric.labels(*values)
        return child


def split_reason(reason: str) -> tuple[str, str, str]:
    """(reason label, override, would-be reason) of a verdict's reason.

    policy.py writes a plain word ("dmarc_reject") or, when an override or exemption changed the verdict, the
    override's word before the one it replaced ("monitor:dmarc_reject", "postmaster:trusted_forwarder:spf_fail").
    The messages counter keeps only the first word, so its reasons stay the short list policy.py names; the
    would-be reason (the last word) goes to the overrides counter.
    """
    first, colon, _ = reason.partition(":")
    if not colon:
        return reason, "", ""
    return first, first, reason.rpartition(":")[2]


def method_results(entries: Iterable[AREntry]) -> Iterator[tuple[str, str]]:
    """(method, result) as the Authentication-Results header counts them, from the entries the renderer made
    (Judged.ar_entries): one dkim entry per evaluated signature, dkim=none when there was none, one dkim=policy for
    those past [dkim] max_signatures; the HELO identity's SPF entry counts as spf_helo. Nothing for a skipped
    message (no check ran, no entry)."""
    for entry in entries:
        if entry.method == "spf" and any((p.ptype, p.name) == ("smtp", "helo") for p in entry.properties):
            yield "spf_helo", entry.result
        else:
            yield entry.method, entry.result


class MetricsObserver:
    """The Observer that counts verdicts, and the owner of every authmilter_* metric (see the module doc)."""

    name = "metrics"

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        Info("authmilter_build", "authmilter's version and the Python it runs on (value 1)", registry=reg).info(
            {"version": __version__, "python": platform.python_version()})
        # -- verdicts (observe)
        self._messages = _Children(Counter(
            "authmilter_messages", "Messages judged at end of message, by action taken and policy reason",
            ("action", "reason"), registry=reg))
        self._overrides = _Children(Counter(
            "authmilter_overrides", "Messages whose verdict an override changed or softened (monitor mode, "
            "postmaster exemption, trusted forwarder), by override and the reason it replaced",
            ("override", "reason"), registry=reg))
        self._refused_rcpts = _Children(Counter(
            "authmilter_refused_recipients", "Recipients refused at RCPT (bounces to forged or expired SRS "
            "addresses), by reason", ("reason",), registry=reg))
        self._results = _Children(Counter(
            "authmilter_results", "Authentication results by method and RFC 8601 result (dkim: one per signature)",
            ("method", "result"), registry=reg))
        self._eom_seconds = Histogram(
            "authmilter_eom_duration_seconds", "Time from end of message to the verdict: every check, DNS "
            "included", buckets=EOM_BUCKETS, registry=reg)
        self._deadline_expired = Counter(
            "authmilter_dns_deadline_expired", "Messages whose DNS budget ([dns] message_deadline or "
            "max_queries) ran out before every lookup was made", registry=reg)
        # -- DNS (dns_query, the resolver's hook)
        self._dns_queries = _Children(Counter(
            "authmilter_dns_queries", "DNS lookups sent to the nameservers, by record type and outcome "
            "(answer, nodata, nxdomain, servfail, timeout, error)", ("type", "outcome"), registry=reg))
        self._dns_seconds = _Children(Histogram(
            "authmilter_dns_query_duration_seconds", "Time of each DNS lookup sent to the nameservers, retries "
            "and CNAME chasing included, by record type", ("type",), buckets=DNS_BUCKETS, registry=reg))
        self._dns_cache_hits = _Children(Counter(
            "authmilter_dns_cache_hits", "DNS lookups answered from the cache, by record type", ("type",),
            registry=reg))
        # -- the milter shell (adapter events) and the daemon
        self._connections = Gauge("authmilter_connections_open", "Milter connections from the MTA open now",
                                  registry=reg)
        self._connections_total = Counter("authmilter_connections", "Milter connections from the MTA accepted",
                                          registry=reg)
        errors = Counter("authmilter_errors", "Internal errors by milter stage (each answered with [milter] "
                                              "error_action)", ("stage",), registry=reg)
        self._errors = _Children(errors)
        reloads = Counter("authmilter_config_reloads", "Configuration reloads (SIGHUP, SIGUSR1) by outcome",
                          ("outcome",), registry=reg)
        self._reloads = _Children(reloads)
        for stage in MILTER_STAGES:
            self._errors(stage)
        for outcome in ("success", "failure"):
            self._reloads(outcome)
        self._scraped = _ScrapeTime(registry=reg)
        self._action_words = _Words(8, ("accept", "reject", "tempfail", "quarantine"))
        self._reason_words = _Words(64)
        self._result_words = _Words(32, tuple(status.value for status in Status))
        self._method_words = _Words(16, ("iprev", "spf", "spf_helo", "dkim", "dmarc"))
        self._stage_words = _Words(16, MILTER_STAGES)
        self._outcome_words = _Words(16)
        self._dns_by_key: dict[tuple[str, object, bool], object] = {}
        self._results_by_key: dict[tuple[str, Status], object] = {}

    # ------------------------------------------------------------ Observer

    def observe(self, judged: Judged) -> None:
        verdict = judged.verdict
        reason, override, replaced = split_reason(verdict.reason)
        reason = self._reason_words(reason)
        if judged.refused_rcpt is not None:
            self._refused_rcpts(reason).inc()
            return
        self._messages(self._action_words(verdict.action), reason).inc()
        if override:  # the override's word is the reason label itself
            self._overrides(reason, self._reason_words(replaced)).inc()
        self._eom_seconds.observe(judged.elapsed_ms / 1000.0)
        results = judged.results
        for key in method_results(judged.ar_entries):
            child = self._results_by_key.get(key)
            if child is None:
                child = self._results(self._method_words(key[0]), self._result_words(key[1]))
                if key[1] in _RESULT_WORDS:  # only the RFC 8601 words of our own results may add keys
                    self._results_by_key[key] = child
            child.inc()
        if results.dns_deadline_expired:
            self._deadline_expired.inc()

    def close(self) -> None:
        """Nothing is queued: every count is made in observe()."""

    # ------------------------------------------------------------ DNS layer (resolver.QueryHook)

    def dns_query(self, rdtype: str, outcome: Outcome, seconds: float | None) -> None:
        # Ten of these per message: one dict lookup finds the children to move (the first time, _dns_children).
        children = self._dns_by_key.get((rdtype, outcome, seconds is None))
        if children is None:
            children = self._dns_children(rdtype, outcome, seconds is None)
        if seconds is None:
            children.inc()
        else:
            children[0].inc()
            children[1].observe(seconds)

    def _dns_children(self, rdtype: str, outcome: Outcome, cached: bool):
        kind = rdtype if rdtype in RECORD_TYPES else OTHER
        children = (self._dns_cache_hits(kind) if cached else
                    (self._dns_queries(kind, self._outcome_words(outcome)), self._dns_seconds(kind)))
        if kind != OTHER:  # the key holds rdtype as given: only our own record types may add keys
            self._dns_by_key[(rdtype, outcome, cached)] = children
        return children

    # ------------------------------------------------------------ milter shell (adapter events)

    def connection_opened(self) -> None:
        self._connections.inc()
        self._connections_total.inc()

    def connection_closed(self) -> None:
        self._connections.dec()

    def milter_error(self, stage: str) -> None:
        self._errors(self._stage_words(stage)).inc()

    # ------------------------------------------------------------ daemon

    def reloaded(self, ok: bool) -> None:
        self._reloads("success" if ok else "failure").inc()

    def watch_observer_failures(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """`counts()` is read at each scrape: observer name -> failures (runtime's ObserverFailures.counts)."""
        self._scraped.observer_failures = counts

    def watch_report_writer(self, stats: Callable[[], ReportWriterStats] | None) -> None:
        """The report writer registers its `stats` here when it is built, and again when a reload rebuilds it
        (the last registration wins; None unregisters). Read at each scrape, on the scraping thread."""
        self._scraped.report_writer = stats


class _ScrapeTime:
    """Values owned by others, read when Prometheus scrapes rather than pushed on every change."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.observer_failures: Callable[[], Mapping[str, int]] | None = None
        self.report_writer: Callable[[], ReportWriterStats] | None = None
        self._observer_words = _Words(32)
        registry.register(self)

    def describe(self):
        return self._families(0, 0, 0, {})

    def collect(self):
        failures = dict(self.observer_failures()) if self.observer_failures is not None else {}
        if self.report_writer is not None:
            stats = self.report_writer()
            return self._families(stats.queue_depth, stats.rows_written, stats.rows_dropped, failures)
        return self._families(0, 0, 0, failures)

    def _families(self, depth: int, written: int, dropped: int, failures: Mapping[str, int]) -> list:
        failed = CounterMetricFamily("authmilter_observer_failures", "Observers that raised on a verdict (the "
                                     "reply was unchanged), by observer", labels=("observer",))
        totals: dict[str, int] = {}
        for name, count in failures.items():
            word = self._observer_words(name)
            totals[word] = totals.get(word, 0) + count
        for word, count in sorted(totals.items()):
            failed.add_metric((word,), count)
        return [
            failed,
            GaugeMetricFamily("authmilter_report_queue_depth", "Observations waiting in the report writer's "
                              "queue", value=depth),
            CounterMetricFamily("authmilter_report_rows_written", "Observations the report writer stored",
                                value=written),
            CounterMetricFamily("authmilter_report_rows_dropped", "Observations the report writer lost (queue "
                                "full, store and journal failing)", value=dropped),
        ]


# ---------------------------------------------------------------- wiring helpers (runtime.py, daemon.py)

def observer_for(cfg: Config, previous: Sequence | None) -> MetricsObserver | None:
    """The metrics observer for a new Runtime (`previous`: the observers of the one it replaces, None at start-up).
    A reload keeps the running one: its counters and its HTTP server go on, and changing [metrics] listen takes a
    restart, which the daemon says. None is made at a reload when the daemon started without metrics, as nothing
    would serve it."""
    if previous is not None:
        return find(previous)
    return MetricsObserver() if cfg.metrics.listen else None


def find(observers) -> MetricsObserver | None:
    return next((o for o in observers if isinstance(o, MetricsObserver)), None)


def dns_hook(observers) -> Callable[[str, Outcome, float | None], None] | None:
    """The resolver's on_query hook: the metrics observer's, when there is one."""
    metrics = find(observers)
    return metrics.dns_query if metrics is not None else None
