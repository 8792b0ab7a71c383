"""Keeping the milter's threads on one CPU (`[milter] cpu`).

Why: libmilter runs each connection in its own thread, and every callback into our Python code takes the global
interpreter lock. With the threads spread over several CPUs, a thread that releases the lock wakes a waiter on
another CPU at once, and the lock ping-pongs between CPUs. Measured with `perf stat` at concurrency 16 on the bench
mix (2 vCPUs): 74 context switches and 6-7 CPU migrations per message, against 10-13 and none on one CPU, where
the running thread goes on until it blocks and the waiters find the lock free. `make bench` (medians of 3 rounds):
3.55 ms of CPU per message and 248-279 messages/s spread over the CPUs, 1.95 ms and 364-394 messages/s on one.
Only one thread runs Python at a time anyway, so the other CPUs are left to Postfix.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

AUTO = "auto"   # the CPU the daemon starts on
ALL = "all"     # no pinning: the threads may run on every CPU the process is allowed


def parse_cpu(text: str) -> str:
    """`auto`, `all` or a CPU number (whether this machine has it is checked at start-up: `check_cpu`)."""
    value = text.strip().lower()
    if value in (AUTO, ALL) or (value.isascii() and value.isdigit() and len(value) <= 5):
        return value
    raise ValueError(f"expected auto, all or a CPU number, got {text!r}")


def check_cpu(setting: str) -> str:
    """Why `setting` cannot be used on this machine, or "" when it can."""
    if setting in (AUTO, ALL):
        return ""
    allowed = os.sched_getaffinity(0)
    if int(setting) not in allowed:
        return f"CPU {setting} is not one this process may use ({_listed(allowed)})"
    return ""


def pin(setting: str) -> int | None:
    """Put every thread of this process on one CPU, as `setting` says; threads started later (libmilter's) inherit
    it from their creator. Returns the CPU, or None when nothing was pinned."""
    if setting == ALL:
        return None
    allowed = os.sched_getaffinity(0)
    cpu = int(setting) if setting != AUTO else _current_cpu(allowed)
    try:
        move_threads("self", {cpu})
    except OSError as exc:  # e.g. a sandbox that forbids sched_setaffinity: slower, not broken
        log.warning("cannot keep the milter on CPU %d (%s): running on every CPU", cpu, exc.strerror or exc)
        return None
    return cpu


def move_threads(pid: int | str, cpus: set[int]) -> None:
    """Every thread of process `pid` ("self": this one) onto `cpus`: sched_setaffinity acts on one thread."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except ProcessLookupError:
            continue  # a thread that ended meanwhile


def _current_cpu(allowed: set[int]) -> int:
    """The CPU this thread last ran on (field 39 of /proc/self/stat), if it is an allowed one. Several daemons on
    one machine thus tend to land on different CPUs."""
    try:
        fields = Path("/proc/thread-self/stat").read_text().rsplit(")", 1)[1].split()
        cpu = int(fields[36])  # fields after "(comm)" start at field 3
    except (OSError, IndexError, ValueError):
        return min(allowed)
    return cpu if cpu in allowed else min(allowed)


def _listed(cpus: set[int]) -> str:
    return "CPUs " + ",".join(str(cpu) for cpu in sorted(cpus))
