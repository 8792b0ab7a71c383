"""Lookups started before end of message: each check at its stage, side by side, in one bounded pool of workers.

Postfix hands the milter the client at connect, the sender at MAIL FROM, and the header and body only after the
final dot, immediately followed by end of message. On the Internet every cold lookup is a round trip, so the
checks whose inputs are complete at MAIL FROM (iprev, SPF, the sender domain) run there, on a worker, while the
client sends its message; at end of headers every DKIM key and the DMARC discovery names are asked at once.
End of message then waits only for what is still running (pipeline.evaluate), and decides as before.

Nothing here decides anything: a step runs the table's own function on the same inputs, and a prefetched answer
is the answer the check would have got by asking itself, so results are those of the serial code. The
per-message DnsClient (its deadline and query cap) bounds every lookup started here. When the transaction ends
early (RSET, a new MAIL FROM, the connection closing), `abandon()` cancels what has not started and makes every
later lookup of that transaction return at once, so a worker is never held for long by a message nobody waits for.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future
from typing import Any

from authmilter.resolver import Answer, DnsClient, Outcome, WorkerPool, name_key

log = logging.getLogger(__name__)

ENDED = "transaction ended before its lookups were needed"


def _key(name: str, rdtype: str) -> tuple[tuple[bytes, ...], str] | None:
    # Compared as the cache compares (RFC 4343: case-insensitively; with or without the root dot). None: a name
    # that cannot be asked, which the inner client answers at once and does not count.
    labels = name_key(name)
    return None if labels is None else (labels, str(rdtype).upper())


class EarlyDns:
    """A message's DnsClient with answers asked for ahead of time.

    `prefetch(name, type)` asks on a worker now; the check that later asks the same question gets that answer
    (waiting for it if it is still on its way) instead of asking again. `query_count` counts the checks'
    questions, as the serial code did; `settle()` counts the prefetched answers no check asked for (tree-walk names
    the walk did not reach, a key of a signature dropped later): the price of asking early, shown in the log.
    The inner client counts every lookup that went out, and its query cap and deadline bound them all.
    """

    def __init__(self, inner: DnsClient, pool: WorkerPool | None) -> None:
        self._inner = inner
        self._pool = pool
        self._lock = threading.Lock()
        self._prefetched: dict[tuple[tuple[bytes, ...], str], Future] = {}   # not yet read by any check
        self._read: set[tuple[tuple[bytes, ...], str]] = set()
        self._extra = 0
        self._abandoned = False

    @property
    def query_count(self) -> int:
        # The inner client counted every lookup once, whoever asked it: the checks' questions are those, less
        # the prefetches nobody read (final once settle() has run, at the verdict).
        return self._inner.query_count - self._extra

    @property
    def deadline_expired(self) -> bool:
        return self._inner.deadline_expired

    def settle(self) -> int:
        """At the verdict: drop the prefetches still queued (nobody will read them) and count those that went
        out for nothing. Each was asked of the inner client exactly once, so the log's dns_queries plus dns_extra
        is every lookup this message made."""
        with self._lock:
            unread, self._prefetched = list(self._prefetched.values()), {}
        self._extra += sum(1 for future in unread if not future.cancel())
        return self._extra

    def is_cached(self, name: str, rdtype: str) -> bool:
        """A question the cache answers now is asked in microseconds by whoever needs it: handing it to a
        worker would cost more than it saves (a client without a cache says no)."""
        peek = getattr(self._inner, "is_cached", None)
        return bool(peek is not None and peek(name, rdtype))

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def prefetch(self, name: str, rdtype: str) -> None:
        """Ask now, on a worker, unless the cache has it (the check will find it there), it is on its way, or a
        check already read its answer."""
        if self._pool is None or self.is_cached(name, rdtype):
            return
        key = _key(name, rdtype)
        if key is None:
            return
        with self._lock:
            if self._abandoned or key in self._prefetched or key in self._read:
                return
            future = self._pool.submit(lambda: self._inner.query(name, rdtype))
            if future is not None:
                self._prefetched[key] = future

    def query(self, name: str, rdtype: str) -> Answer:
        if self._abandoned:
            return Answer(str(name).rstrip("."), str(rdtype).upper(), Outcome.TIMEOUT, detail=ENDED)
        if not self._prefetched:  # the common case with a warm cache: no bookkeeping at all
            return self._inner.query(name, rdtype)
        key = _key(name, rdtype)
        with self._lock:
            pending = self._prefetched.pop(key, None) if key is not None else None
            if pending is not None:
                self._read.add(key)
        if pending is None:
            return self._inner.query(name, rdtype)
        if pending.cancel():  # still queued behind other work: asking here is sooner than waiting for a worker
            return self._inner.query(name, rdtype)
        try:
            answer = pending.result()  # bounded: the inner client's deadline ends every lookup
        except CancelledError:  # abandoned meanwhile
            return Answer(str(name).rstrip("."), str(rdtype).upper(), Outcome.TIMEOUT, detail=ENDED)
        # The same question may be asked in another case or with the root dot: answer with the name asked.
        return dataclasses.replace(answer, name=str(name).rstrip(".")) if answer.name != str(name).rstrip(".") \
            else answer

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            pending = list(self._prefetched.values())
        for future in pending:
            future.cancel()


class _Step:
    """One table step of one transaction, run once: by a worker, or by whoever needs it first.

    Whoever asks for the result of a step nobody has started runs it on their own thread rather than wait for a
    worker, so a busy pool delays nothing beyond the serial code, and a step that needs another never waits for
    work stuck in the queue (the table is acyclic, so no two steps wait on each other). The lock is held while
    the step runs, so whoever asks meanwhile waits on it for the result: one lock, no event.
    """

    __slots__ = ("name", "_func", "_lock", "_state", "_value", "_error", "_future")

    def __init__(self, name: str, func: Callable[[], Any]) -> None:
        self.name = name
        self._func = func
        self._lock = threading.Lock()
        self._state = "pending"
        self._value: Any = None
        self._error: BaseException | None = None
        self._future: Future | None = None

    def start_on(self, pool: WorkerPool) -> None:
        self._future = pool.submit(self.run)  # None when the pool is closed: the step then runs on demand

    def run(self) -> None:
        with self._lock:
            if self._state != "pending":
                return
            try:
                self._value = self._func()
            except BaseException as exc:  # re-raised where the result is read: a check that raises is a bug
                self._error = exc
            finally:
                self._func = None  # drop the inputs it closed over as soon as it is done
                self._state = "done"

    def result(self) -> Any:
        self.run()
        if self._error is not None:
            raise self._error
        return self._value

    def cancel(self) -> None:
        # Never waits: a step already running ends on its own (its lookups return at once once abandoned).
        if self._lock.acquire(blocking=False):
            try:
                if self._state == "pending":
                    self._state = "cancelled"
                    self._func = None
            finally:
                self._lock.release()
        if self._future is not None:
            self._future.cancel()


class EarlyWork:
    """The early steps and prefetches of one transaction: made at MAIL FROM, read at RCPT and end of message."""

    def __init__(self, dns: EarlyDns, pool: WorkerPool | None) -> None:
        self.dns = dns
        self._pool = pool
        self._steps: dict[str, _Step] = {}
        self._prefetched_for: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self._steps

    def start(self, name: str, func: Callable[[], Any], *, on_worker: bool = True) -> None:
        """Run a step now on a worker, or on demand (whoever first needs its result) when there is no pool or
        `on_worker` is false (a step with no lookup to wait for)."""
        step = _Step(name, func)
        self._steps[name] = step
        if on_worker and self._pool is not None and not self.dns.abandoned:
            step.start_on(self._pool)

    def result(self, name: str) -> Any:
        return self._steps[name].result()

    def prefetch(self, name: str, lookups: Iterable[tuple[str, str]]) -> None:
        """Ask a step's lookups ahead of it, once per step."""
        if name in self._prefetched_for:
            return
        self._prefetched_for.add(name)
        for qname, rdtype in lookups:
            self.dns.prefetch(qname, rdtype)

    def prefetched(self, name: str) -> bool:
        return name in self._prefetched_for

    def abandon(self) -> None:
        self.dns.abandon()
        for step in self._steps.values():
            step.cancel()
