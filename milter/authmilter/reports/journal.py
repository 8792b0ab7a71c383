"""Counts that could not reach the store wait here, one line per batch, until the store is back.

A line is JSON: {"batch": id, "reporter": ..., "flushed_until": ..., "counts": [[observation, n], ...]}, written
with one write() and fsync'd, so a crash leaves at most a torn last line (skipped, and logged, on replay). Replay
hands each group of lines to the store as one transaction that also records the lines' ids: the store refuses a
group holding an id it already has, so a replay interrupted by a crash or a store failure is simply run again, and
nothing is counted twice. The file is emptied once every line is in the store. An exclusive flock serializes the
appends and the replay of anyone sharing the file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from authmilter.reports import codec
from authmilter.reports.model import Observation
from authmilter.reports.store import ReportStore

log = logging.getLogger("authmilter.reports")

LINES_PER_REPLAY_BATCH = 200  # a day of 5-second flushes replays in ~90 transactions


@dataclass(frozen=True, slots=True)
class Entry:
    batch: str
    reporter: str
    flushed_until: float
    counts: dict[Observation, int]


class Journal:
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def append(self, reporter: str, counts: Mapping[Observation, int], flushed_until: float) -> str:
        """Write one batch (OSError when the disk refuses: the caller logs the loss)."""
        batch = secrets.token_hex(12)
        line = json.dumps({"batch": batch, "reporter": reporter, "flushed_until": flushed_until,
                           "counts": [[codec.observation_to_obj(obs), n] for obs, n in counts.items()]},
                          separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, mode=0o750, exist_ok=True)
        with self._locked("a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        return batch

    def replay(self, store: ReportStore) -> int:
        """Put every journaled count into `store`, then empty the journal. Returns the messages replayed.
        StoreError propagates with the journal intact (what was applied is remembered by the store)."""
        if not self.pending():
            return 0
        with self._locked("r+") as handle:
            entries = list(self._entries(handle))
            messages = 0
            for start in range(0, len(entries), LINES_PER_REPLAY_BATCH):
                group = entries[start:start + LINES_PER_REPLAY_BATCH]
                for reporter in sorted({entry.reporter for entry in group}):
                    messages += _apply(store, [entry for entry in group if entry.reporter == reporter])
            handle.seek(0)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
        return messages

    def _entries(self, handle) -> Iterator[Entry]:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                counts = {codec.observation_from_obj(obj): int(n) for obj, n in data["counts"]}
                yield Entry(str(data["batch"]), str(data["reporter"]), float(data["flushed_until"]), counts)
            except (ValueError, KeyError, TypeError) as exc:
                # A torn last line after a crash or a full disk: what it held was never acknowledged as stored.
                log.error("reports: %s line %d is unreadable (%s); its counts are lost", self.path, number, exc)

    @contextmanager
    def _locked(self, mode: str) -> Iterator:
        with open(self.path, mode, encoding="ascii") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield handle
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _apply(store: ReportStore, entries: list[Entry]) -> int:
    """One transaction for the group; if the store already has some of its lines (a replay cut short by a crash
    between the store's commit and the journal's truncation), each line on its own, the applied ones skipped."""
    if _add(store, entries):
        return sum(sum(entry.counts.values()) for entry in entries)
    return sum(sum(entry.counts.values()) for entry in entries if len(entries) > 1 and _add(store, [entry]))


def _add(store: ReportStore, entries: list[Entry]) -> bool:
    merged: dict[Observation, int] = {}
    for entry in entries:
        for obs, n in entry.counts.items():
            merged[obs] = merged.get(obs, 0) + n
    return store.add_counts(entries[0].reporter, merged, max(entry.flushed_until for entry in entries),
                            batch_ids=[entry.batch for entry in entries])
