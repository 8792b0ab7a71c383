"""Memory cases: 20 concurrent 10 MB messages (one signature, then three hashed three ways), and 200 concurrent
connections (peak, then back to baseline?)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from bench import corpus, procstat
from testlab.milterclient import MilterClient, split_message
from bench.milters import RunningMilter


def _concurrently(milter: RunningMilter, raw: bytes, count: int) -> dict[str, int]:
    headers, body = split_message(raw)
    replies: dict[str, int] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def one(serial: int) -> None:
        reply = "error"
        try:
            with MilterClient(milter.sockets[0]) as client:
                client.negotiate()
                barrier.wait(timeout=60)  # every connection open before any message goes: true concurrency
                reply = client.transaction(client_ip=corpus.CLIENT_IP, helo=corpus.HELO, mail_from=corpus.SENDER,
                                           rcpts=[corpus.RCPT], headers=headers, body=body,
                                           queue_id=f"M{serial:06d}").reply
        except Exception as exc:  # noqa: BLE001 - a benchmark records failures, it does not stop on them
            reply = f"error: {type(exc).__name__}"
        with lock:
            replies[reply] = replies.get(reply, 0) + 1

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return replies


def run(start_milter, tmp: Path, private_key: bytes) -> list[dict]:
    rows = []
    cases = (("20 x 10 MB", corpus.make_message(9000, 10 * 1024 * 1024, private_key).raw, 20),
             ("20 x 10 MB, 3 signatures", corpus.make_multi_signed(9002, 10 * 1024 * 1024, private_key).raw, 20),
             ("200 connections x 10 KB", corpus.make_message(9001, 10 * 1024, private_key).raw, 200))
    print(f"\nmemory (authmilter): {'case':<26} {'replies':<18} {'rss before':>10} {'peak':>8} {'after':>8} MB")
    for name, raw, count in cases:
        workdir = tmp / f"memory-{len(rows)}-{count}"
        workdir.mkdir()
        milter = start_milter(workdir)
        try:
            # One message first, so the baseline includes what every process holds once warmed up.
            _concurrently(milter, raw, 1)
            time.sleep(0.5)
            before = procstat.sample(milter.pids)
            procstat.reset_peak(milter.pids)
            replies = _concurrently(milter, raw, count)
            peak = procstat.sample(milter.pids)
            time.sleep(2)  # let threads exit and memory be returned
            after = procstat.sample(milter.pids)
        finally:
            milter.stop()
        row = {"case": name, "replies": replies, "rss_before_mb": before.rss_kb / 1024,
               "peak_rss_mb": peak.hwm_kb / 1024, "rss_after_mb": after.rss_kb / 1024}
        rows.append(row)
        print(f"{'':<21}{name:<26} {str(replies):<18} {row['rss_before_mb']:>10.1f} {row['peak_rss_mb']:>8.1f} "
              f"{row['rss_after_mb']:>8.1f}", flush=True)
    return rows
