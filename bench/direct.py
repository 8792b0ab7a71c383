"""The direct part: drive milters over the milter protocol from several client processes, no Postfix."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from dataclasses import asdict, dataclass

from bench import corpus, procstat
from testlab.milterclient import MilterClient, split_message
from bench.milters import RunningMilter

_MESSAGES: list[tuple[list[tuple[bytes, bytes]], bytes]] = []


def _init_worker(raw_messages: list[bytes]) -> None:
    global _MESSAGES
    _MESSAGES = [split_message(raw) for raw in raw_messages]


def _send_one(task: tuple[list[str], int, int]) -> tuple[float, str]:
    """One message through a chain of milters; each later milter sees the headers the earlier ones added."""
    sockets, index, serial = task
    headers, body = _MESSAGES[index]
    latency, reply = 0.0, "accept"
    for address in sockets:
        with MilterClient(address) as client:
            client.negotiate()
            outcome = client.transaction(client_ip=corpus.CLIENT_IP, helo=corpus.HELO, mail_from=corpus.SENDER,
                                         rcpts=[corpus.RCPT], headers=headers, body=body,
                                         queue_id=f"B{serial:08X}")
        latency += outcome.eoh_to_final_s
        reply = outcome.reply
        if reply not in ("accept", "continue"):
            break
        added = [_added_header(kind, data) for kind, data in outcome.modifications if kind in ("h", "i")]
        headers = [h for h in added if h] + headers
    return latency, reply


def _added_header(kind: str, data: bytes) -> tuple[bytes, bytes] | None:
    if kind == "i":
        data = data[4:]  # index
    name, _, rest = data.partition(b"\0")
    return name, rest.rstrip(b"\0")


@dataclass
class CaseResult:
    milter: str
    concurrency: int
    cache: str
    messages: int
    msgs_per_s: float
    cpu_ms_per_msg: float
    p50_ms: float
    p99_ms: float
    peak_rss_mb: float
    replies: dict

    def row(self) -> str:
        return (f"{self.milter:<22} {self.concurrency:>3} {self.cache:<5} {self.messages:>5} "
                f"{self.msgs_per_s:>9.1f} {self.cpu_ms_per_msg:>9.2f} {self.p50_ms:>8.2f} {self.p99_ms:>8.2f} "
                f"{self.peak_rss_mb:>8.1f}")


HEADER = (f"{'milter':<22} {'c':>3} {'cache':<5} {'msgs':>5} {'msg/s':>9} {'cpu ms':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'peak MB':>8}")


def run_case(milter: RunningMilter, raw_messages: list[bytes], *, concurrency: int, passes: int,
             cache: str, serial_base: int = 0) -> CaseResult:
    tasks = [(milter.sockets, index, serial_base + n)
             for n, index in enumerate(i for _ in range(passes) for i in range(len(raw_messages)))]
    procstat.reset_peak(milter.pids)
    before = procstat.sample(milter.pids)
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(concurrency, _init_worker, (raw_messages,)) as pool:
        results = pool.map(_send_one, tasks, chunksize=1)
    elapsed = time.perf_counter() - started
    after = procstat.sample(milter.pids)
    latencies = sorted(r[0] * 1000 for r in results)
    replies: dict[str, int] = {}
    for _, reply in results:
        replies[reply] = replies.get(reply, 0) + 1
    return CaseResult(
        milter=milter.name, concurrency=concurrency, cache=cache, messages=len(tasks),
        msgs_per_s=len(tasks) / elapsed,
        cpu_ms_per_msg=(after.cpu_seconds - before.cpu_seconds) * 1000 / len(tasks),
        p50_ms=statistics.median(latencies),
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        peak_rss_mb=after.hwm_kb / 1024, replies=replies)


def as_dict(result: CaseResult) -> dict:
    return asdict(result)


def summarize(rows: list[dict]) -> list[dict]:
    """Per contender and concurrency: the warm-cache CPU per message over the rounds (median, min, max)."""
    groups: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        if row["cache"] == "warm":
            groups.setdefault((row["milter"], row["concurrency"]), []).append(row["cpu_ms_per_msg"])
    return [{"milter": milter, "concurrency": concurrency, "rounds": len(values),
             "cpu_ms_per_msg_median": statistics.median(values), "cpu_ms_per_msg_min": min(values),
             "cpu_ms_per_msg_max": max(values)}
            for (milter, concurrency), values in groups.items()]


def summary_table(summary: list[dict]) -> str:
    lines = [f"{'warm cache, CPU ms per message':<34} {'c':>3} {'median':>7} {'min':>6} {'max':>6} {'rounds':>6}"]
    for item in sorted(summary, key=lambda s: (s["concurrency"], s["milter"])):
        lines.append(f"{item['milter']:<34} {item['concurrency']:>3} {item['cpu_ms_per_msg_median']:>7.2f} "
                     f"{item['cpu_ms_per_msg_min']:>6.2f} {item['cpu_ms_per_msg_max']:>6.2f} {item['rounds']:>6}")
    return "\n".join(lines)


def compare(summary: list[dict], base: str, variant: str) -> str:
    """One line per concurrency: the variant's median CPU per message against the base's, both from this run."""
    medians = {(s["milter"], s["concurrency"]): s["cpu_ms_per_msg_median"] for s in summary}
    lines = []
    for concurrency in sorted({c for _, c in medians}):
        if (base, concurrency) in medians and (variant, concurrency) in medians:
            off, on = medians[(base, concurrency)], medians[(variant, concurrency)]
            lines.append(f"{variant} vs {base}, c={concurrency}: {on:.2f} vs {off:.2f} ms CPU per message "
                         f"({on - off:+.2f} ms, {(on - off) / off:+.1%})")
    return "\n".join(lines)


__all__ = ["run_case", "CaseResult", "HEADER", "as_dict", "summarize", "summary_table", "compare"]
