"""The milter sessions libmilter has handed us, so that a stop can let the messages in flight finish.

Debian's libmilter is built with its pool of worker threads (_FFR_WORKERS_POOL), and its own stop (smfi_stop, or a
signal its signal thread takes) ends that pool by closing every session at once, including those a worker is still
running, and by destroying the mutex the other workers wait on: heap corruption or a hang. So the daemon never asks
libmilter to stop. It refuses new sessions itself, waits here until every transaction begun before the stop has
been answered (or [milter] stop_timeout ran out), ends the remaining connections through libmilter's ordinary close
path, and waits here again until every session's close callback has run before it leaves the process.

Each AuthMilter reports its creation and its close; the callbacks read `stopping` and `cut_off`.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Session(Protocol):
    def in_flight(self) -> bool:
        """A transaction begun before the stop is not answered yet."""


class Sessions:
    """The live sessions, and the two switches of a stop (each set once, never cleared)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._live: set[Session] = set()
        # Plain attributes read by the callbacks without the lock: each is a single bool that only ever goes from
        # False to True, and a callback that reads it a moment late still gets a reply.
        self.stopping = False   # new sessions are refused; transactions begun from now on get error_action
        self.cut_off = False    # stop_timeout ran out: every answer from now on is error_action

    def opened(self, session: Session) -> None:
        with self._changed:
            self._live.add(session)

    def closed(self, session: Session) -> None:
        with self._changed:
            self._live.discard(session)
            self._changed.notify_all()

    def stop(self) -> None:
        self.stopping = True

    def cut(self) -> None:
        self.cut_off = True

    def open_count(self) -> int:
        with self._changed:
            return len(self._live)

    def in_flight(self) -> int:
        """How many sessions hold a transaction begun before the stop and not answered yet."""
        with self._changed:
            live = list(self._live)
        return sum(1 for session in live if session.in_flight())

    def wait_closed(self, timeout: float) -> bool:
        """True once every session has closed; False if `timeout` seconds passed first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._live:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True
