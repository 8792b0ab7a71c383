"""[milter] cpu: what happens where the daemon cannot be pinned (the pinned daemon itself: tests/test_adapter.py)."""

from __future__ import annotations

import logging
import os

from authmilter import cpu


def test_a_system_that_refuses_pinning_leaves_the_milter_on_every_cpu_and_says_so(monkeypatch, caplog):
    def refuse(pid, cpus):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    with caplog.at_level(logging.WARNING, logger="authmilter.cpu"):
        assert cpu.pin("auto") is None
    [record] = caplog.records
    assert record.getMessage().startswith("cannot keep the milter on CPU ")
    assert record.getMessage().endswith("(Operation not permitted): running on every CPU")


def test_all_pins_nothing(monkeypatch):
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: (_ for _ in ()).throw(AssertionError(pid)))
    assert cpu.pin("all") is None


def test_auto_picks_an_allowed_cpu():
    assert cpu._current_cpu(os.sched_getaffinity(0)) in os.sched_getaffinity(0)
    assert cpu._current_cpu({4093}) == 4093  # not where we run: the only allowed one instead
