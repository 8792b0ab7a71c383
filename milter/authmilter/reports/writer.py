"""The `reports` observer: counts each judged message for the aggregate reports without ever delaying a reply.

On the milter thread, observe() builds one Observation (record.py) and hands it to a bounded queue with
put_nowait(); when the queue is full the observation is dropped, counted and logged (at most once a minute). One
writer thread takes the observations off the queue, counts identical ones in memory and writes them to the store
in one transaction every [reports] flush_seconds.

When the store cannot be reached, the writer appends the batch to the journal (journal.py) and replays it once the
store answers again, before writing anything newer, so a reporter's high-water mark never passes counts still in
the journal. At close() (SIGTERM) the last counts go to the store, or to the journal if the store is down; at
start-up the journal is replayed. A counted message is lost only when the process is killed outright (kill -9,
at most one flush interval of counts) or when the disk refuses the journal (logged).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from authmilter.config import Config
from authmilter.errors import ConfigError
from authmilter.observers import Judged, Observer
from authmilter.reports.journal import Journal
from authmilter.reports.model import Observation
from authmilter.reports.record import RecordRules, observe
from authmilter.reports.store import ReportStore, StoreError, open_store

log = logging.getLogger("authmilter.reports")

HEARTBEAT_SECONDS = 60.0     # an idle writer still moves its high-water mark this often (days_ready waits on it)
STORE_RETRY_SECONDS = 10.0   # after a store failure, batches go straight to the journal for this long
WARN_EVERY_SECONDS = 60.0    # the least time between two log lines about drops or store failures
CLOSE_SECONDS = 20.0         # how long close() waits for the last write (the unit's TimeoutStopSec is 30 s)
_STOP = object()


@dataclass(frozen=True, slots=True)
class WriterGauges:
    queue_depth: int
    rows_written: int
    rows_dropped: int


class ReportRecorder:
    """The observer. Counters for metrics are plain attributes (read them with stats())."""

    name = "reports"

    def __init__(self, cfg: Config, *, store: ReportStore | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        section = cfg.reports
        self.section = section
        self.rules = RecordRules.from_config(cfg)
        self.reporter = section.reporter
        self.clock = clock
        self.monotonic = monotonic
        # queue.SimpleQueue is C code: put_nowait costs a tenth of queue.Queue's (which takes two locks and a
        # condition per item). Its bound is checked before the put, so with N milter threads racing it may hold
        # up to queue_size + N - 1 items.
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queue_size = section.queue_size
        self.journal = Journal(section.journal)
        self.store = store if store is not None else open_store(section, clock=clock)
        # Written by the writer thread only (dropped: under _drop_lock), read by anyone.
        self.received = 0          # observations taken off the queue
        self.dropped = 0           # observations refused by a full queue
        self.rows_written = 0      # distinct rows handed to the store (one per key per flush)
        self.messages_written = 0  # messages whose counts reached the store (replayed ones included)
        self.store_errors = 0
        self.journaled = 0         # messages written to the journal while the store was down
        self.lost = 0              # messages neither stored nor journaled (the disk refused the journal)
        self._drop_lock = threading.Lock()
        self._dropped_unlogged = 0
        self._next_drop_warning = 0.0
        self._next_store_warning = 0.0
        self._store_retry_at = 0.0
        self._drained_at = clock()  # the queue was last seen empty then: everything observed before is counted
        self._last_write = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reports-writer", daemon=True)
        self._thread.start()

    # -- the milter thread

    def observe(self, judged: Judged) -> None:
        observation = observe(judged, self.rules, self.clock())
        if observation is None:
            return
        if self.queue.qsize() >= self._queue_size:
            self._count_drop()
            return
        self.queue.put_nowait(observation)

    def _count_drop(self) -> None:
        with self._drop_lock:
            self.dropped += 1
            self._dropped_unlogged += 1
            now = self.monotonic()
            if now < self._next_drop_warning:
                return
            self._next_drop_warning = now + WARN_EVERY_SECONDS
            dropped, self._dropped_unlogged = self._dropped_unlogged, 0
        log.warning("reports: queue full (%d waiting for the writer): %d message(s) not counted since the last "
                    "warning; raise [reports] queue_size or check the store", self.section.queue_size, dropped)

    # -- metrics

    def gauges(self) -> WriterGauges:
        """What the metrics read at each scrape (metrics.ReportWriterStats): messages stored, and lost to a full
        queue or a disk that refused the journal."""
        return WriterGauges(self.queue.qsize(), self.messages_written, self.dropped + self.lost)

    def stats(self) -> dict[str, int]:
        return {"queue_depth": self.queue.qsize(), "received": self.received, "dropped": self.dropped,
                "rows_written": self.rows_written, "messages_written": self.messages_written,
                "store_errors": self.store_errors, "journaled": self.journaled, "lost": self.lost,
                "journal_pending": int(self.journal.pending())}

    # -- the writer thread

    def _run(self) -> None:
        pending: dict[Observation, int] = {}
        try:
            try:
                self._replay()  # what a previous run left in the journal
            except StoreError as exc:
                self._store_failed(exc)
            next_flush = self.monotonic() + self.section.flush_seconds
            while not self._stop.is_set():
                try:
                    item = self.queue.get(timeout=max(0.0, next_flush - self.monotonic()))
                except queue.Empty:
                    self._drained_at = self.clock()
                else:
                    if item is not _STOP:
                        pending[item] = pending.get(item, 0) + 1
                        self.received += 1
                if self.monotonic() >= next_flush:
                    self._drain(pending)
                    self._flush(pending)
                    pending = {}
                    next_flush = self.monotonic() + self.section.flush_seconds
            self._drain(pending)
            self._flush(pending, final=True)
        except Exception:
            # A bug, not a store failure: keep what is counted rather than lose it with the thread.
            log.exception("reports: the writer failed; %d counted message(s) go to the journal",
                          sum(pending.values()))
            self._to_journal(pending, self._drained_at)

    def _drain(self, pending: dict[Observation, int]) -> None:
        """Take what is queued now, so the batch covers everything observed until the queue ran empty."""
        for _ in range(self.section.queue_size + 1):
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                self._drained_at = self.clock()
                return
            if item is not _STOP:
                pending[item] = pending.get(item, 0) + 1
                self.received += 1

    def _flush(self, pending: dict[Observation, int], *, final: bool = False) -> None:
        flushed_until = self._drained_at
        now = self.monotonic()
        if not pending and not self.journal.pending() and now - self._last_write < HEARTBEAT_SECONDS and not final:
            return
        if now < self._store_retry_at and not final:
            self._to_journal(pending, flushed_until)
            return
        try:
            self._replay()  # older counts first: the high-water mark must not pass counts still in the journal
            self.store.add_counts(self.reporter, pending, flushed_until)
        except StoreError as exc:
            self._store_failed(exc)
            self._to_journal(pending, flushed_until)
            return
        self._last_write = now
        self.rows_written += len(pending)
        self.messages_written += sum(pending.values())

    def _replay(self) -> None:
        if not self.journal.pending():
            return
        try:
            replayed = self.journal.replay(self.store)
        except OSError as exc:
            log.error("reports: cannot replay the journal %s: %s", self.journal.path, exc)
            raise StoreError(f"journal {self.journal.path}: {exc.strerror or exc}") from None
        self.messages_written += replayed
        log.info("reports: the store is reachable; %d message(s) from the journal %s are stored",
                 replayed, self.journal.path)

    def _store_failed(self, exc: StoreError) -> None:
        self.store_errors += 1
        self._store_retry_at = self.monotonic() + STORE_RETRY_SECONDS
        if self.monotonic() >= self._next_store_warning:
            self._next_store_warning = self.monotonic() + WARN_EVERY_SECONDS
            log.warning("reports: store unavailable (%s); counts go to the journal %s until it is back",
                        exc, self.journal.path)

    def _to_journal(self, pending: dict[Observation, int], flushed_until: float) -> None:
        if not pending:
            return
        messages = sum(pending.values())
        try:
            self.journal.append(self.reporter, pending, flushed_until)
        except OSError as exc:
            self.lost += messages
            log.error("reports: cannot write the journal %s (%s): %d counted message(s) lost",
                      self.journal.path, exc.strerror or exc, messages)
            return
        self.journaled += messages

    # -- stopping

    def close(self) -> None:
        """Write every counted message to the store, or to the journal when the store cannot be reached."""
        self._stop.set()
        self.queue.put_nowait(_STOP)  # wakes the writer now rather than at its next flush
        self._thread.join(CLOSE_SECONDS)
        if self._thread.is_alive():
            log.error("reports: the writer did not finish within %d s; counts not yet written are lost",
                      CLOSE_SECONDS)
            return
        self.store.close()

    def keeps(self, cfg: Config) -> bool:
        """Whether a reload to `cfg` may keep this recorder (its queue, thread, store connection)."""
        return cfg.reports == self.section


def report_observers(cfg: Config, previous_observers: tuple[Observer, ...] = ()) -> tuple[Observer, ...]:
    """The `reports` observer for build_observers(): none when [reports] is off; the running one when a reload
    left [reports] unchanged (its record rules are refreshed: [dmarc] org_domain may have changed); else a new
    one, whose journal directory must be writable."""
    if not cfg.reports.enabled:
        return ()
    for observer in previous_observers:
        if isinstance(observer, ReportRecorder) and observer.keeps(cfg):
            observer.rules = RecordRules.from_config(cfg)
            return (observer,)
    _check_journal_directory(cfg)
    try:
        return (ReportRecorder(cfg),)
    except StoreError as exc:
        raise ConfigError(f"{cfg.source}: [reports] database: {exc}") from None


def _check_journal_directory(cfg: Config) -> None:
    directory = Path(cfg.reports.journal).parent
    try:
        directory.mkdir(parents=True, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{cfg.source}: [reports] journal: cannot create {directory}: "
                          f"{exc.strerror or exc}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{cfg.source}: [reports] journal: {directory} is not writable")
