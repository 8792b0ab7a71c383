"""Issue 13's bench case: end of message to final reply when every cold lookup is a round trip away.

The model. The DNS server (bench/delayed_dns.py) answers every query one round trip (RTT, 25 ms by default) after
it came in, many at once, as a remote authoritative server does for a sender no cache has seen; each message N
comes from its own sender domain mN.bench.example and its own client IP 2001:db8::N, so no answer helps the next.
The client speaks the milter protocol as Postfix does for a pipelining SMTP client: connect, HELO, then MAIL FROM,
RCPT and DATA arrive in one flight, and the client waits one round trip for the 354 before it sends the content
(the same RTT: the window in which lookups started at MAIL FROM overlap the dialogue). Postfix hands the header and
the body to the milter only after the final dot, immediately followed by end of message, so we measure from
sending end of message to the final reply: the time an smtpd process is held and the sending server waits.

Per message a serial milter asks, one after another: PTR and AAAA (iprev), the HELO and MAIL FROM SPF records,
the sender's MX, the DKIM key, the DMARC record (and the tree walk's parents): about 8 RTT. With early lookups,
iprev, SPF and the MX start at MAIL FROM (one RTT of them hides behind the 354 wait), the DKIM key and the DMARC
names start together at end of headers: the target is p50 <= 2 RTT and p99 <= 4 RTT.

Contenders, each in a fresh process per concurrency (cold cache), under the same DNS in the same run: authmilter
(early lookups, the default), authmilter with `[dns] early_lookups = no` (the serial code), and OpenDKIM +
OpenDMARC chained as Postfix chains them (every SMTP event to each in turn; at end of message the whole message to
OpenDKIM, then with OpenDKIM's header to OpenDMARC: measured from OpenDKIM's end of message to OpenDMARC's reply).
For authmilter it counts the DNS queries per message twice: at the server, and from the log line (dns_queries +
dns_extra, the latter the lookups asked early that no check then needed), and samples the daemon's thread count
(/proc/PID/status) to compare with the bound: [dns] workers + one libmilter thread per connection + the idle ones.

Run alone: `python -m bench.early_dns` (as root: it makes its own network namespace, like `make bench`).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dkim

from bench import corpus, milters, procstat
from bench.delayed_dns import SELECTOR, DelayedDnsServer, client_ip, host_name, sender_domain
from authmilter.cpu import move_threads
from testlab.milterclient import MilterClient, split_message

RCPT = "user@mx.bench.example"
WORKERS = 32  # [dns] workers (the default) for both authmilter contenders: the bound the thread count is compared with
_MESSAGES: dict[int, tuple[list[tuple[bytes, bytes]], bytes]] = {}


def _make_message(task: tuple[int, bytes]) -> tuple[int, bytes]:
    number, private_key = task
    domain = sender_domain(number)
    headers = (f"From: Sender {number} <news@{domain}>\r\n"
               f"To: <{RCPT}>\r\n"
               f"Subject: early lookups bench message {number}\r\n"
               f"Date: Sat, 05 Dec 2026 12:00:00 +0000\r\n"
               f"Message-ID: <early-{number}@{domain}>\r\n"
               "MIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=us-ascii\r\n").encode()
    message = headers + b"\r\n" + corpus.make_body(4096, number)
    signature = dkim.sign(message, SELECTOR.encode(), domain.encode(), private_key,
                          canonicalize=(b"relaxed", b"relaxed"),
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return number, signature + message


def make_messages(numbers: list[int], private_key: bytes) -> dict[int, bytes]:
    """Message N from mN.bench.example, signed d=mN.bench.example s=s (one key pair for all), signed on every CPU."""
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        return dict(pool.map(_make_message, [(n, private_key) for n in numbers], chunksize=16))


def _init_worker(messages: dict[int, bytes]) -> None:
    global _MESSAGES
    _MESSAGES = {n: split_message(raw) for n, raw in messages.items()}


def _ok(reply) -> bool:
    return reply is None or reply.code in ("c", "s")


def send_one(sockets: list[str], number: int, rtt: float) -> tuple[float | None, str, str]:
    """One SMTP transaction of a pipelining client through a chain of milters: (seconds from end of message to
    the last milter's final reply or None when it never got there, that reply, the Authentication-Results values
    the milters added)."""
    headers, body = _MESSAGES[number]
    ip, helo, sender = client_ip(number), host_name(number), f"news@{sender_domain(number)}"
    queue_id = f"E{number:08X}"
    clients = [MilterClient(address) for address in sockets]
    try:
        for client in clients:
            client.negotiate()
        # Postfix gives every SMTP event to each milter in turn; a milter that ends the transaction ends it here.
        events = (lambda c: c.connect(helo, ip, 25000, macros={"j": "mx.bench.example", "{client_addr}": ip,
                                                               "{daemon_name}": "bench"}),
                  lambda c: c.helo(helo),
                  lambda c: c.mail(sender, macros={"{mail_addr}": sender}),
                  lambda c: c.rcpt(RCPT, macros={"{rcpt_addr}": RCPT, "i": queue_id}),
                  lambda c: c.data(macros={"i": queue_id}))
        for event in events:
            for client in clients:
                reply = event(client)
                if not _ok(reply):
                    return None, f"{reply.name} before end of message", ""
        time.sleep(rtt)  # the pipelining client waits one round trip for the 354, then sends the content
        started = time.perf_counter()
        results: list[str] = []
        reply_name = "accept"
        for position, client in enumerate(clients):
            # Each later milter sees the message with the earlier milters' headers, as cleanup replays it.
            for name, value in headers:
                if not _ok(client.header(name, value)):
                    break
            client.eoh(macros={"i": queue_id})
            client.body(body)
            if position == 0:
                started = time.perf_counter()  # the end of message Postfix sends after the final dot
            outcome = client.eom(macros={"i": queue_id})
            reply_name = outcome.reply
            added = outcome.added_values("Authentication-Results")
            results += added
            headers = [(b"Authentication-Results", b" " + value.encode()) for value in added] + headers
            if reply_name not in ("accept", "continue"):
                break
        return time.perf_counter() - started, reply_name, " ; ".join(results)
    finally:
        for client in clients:
            client.quit()


def _connection(task: tuple[list[str], list[int], float]) -> list[tuple[float, str, str]]:
    """One of the concurrent connections: its messages one after another."""
    sockets, numbers, rtt = task
    return [send_one(sockets, number, rtt) for number in numbers]


class ThreadSampler:
    """The most threads the milter's processes had at once, read from /proc/PID/status every 20 ms."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thread-sampler", daemon=True)

    def count(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total += int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.max = max(self.max, self.count())

    def __enter__(self) -> ThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class CaseResult:
    milter: str
    concurrency: int
    messages: int
    rtt_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    replies: dict
    msgs_per_s: float
    cpu_ms_per_msg: float                 # the milters' own CPU (user + system, all threads)
    dmarc_pass: int                       # messages whose added A-R says dmarc=pass: the DNS data works
    server_queries_per_msg: float
    log_queries_per_msg: float | None = None  # authmilter: dns_queries + dns_extra from its log lines
    log_extra_per_msg: float | None = None
    log_lines: int | None = None
    log_ms_p50: float | None = None           # the log line's ms=: the milter's own end of message to verdict
    threads_idle: int | None = None
    threads_max: int | None = None
    threads_bound: int | None = None      # [dns] workers + one per connection + the idle ones
    threads_after: int | None = None      # once every connection closed: the idle ones + the pool's workers, kept
    oversize_replies: int = 0
    dns_late_mean_ms: float = 0.0             # how much later than the RTT the server's replies left (busy CPU)
    dns_late_max_ms: float = 0.0
    extra: dict = field(default_factory=dict)

    def _rtts(self, ms: float) -> str:
        return f"{ms / self.rtt_ms:>5.1f}" if self.rtt_ms else f"{'-':>5}"

    def row(self) -> str:
        def opt(value, fmt):
            return format(value, fmt) if value is not None else "-"
        threads = f"{self.threads_max}/{self.threads_bound}" if self.threads_max is not None else "-"
        return (f"{self.milter:<22} {self.concurrency:>3} {self.messages:>5} {self.p50_ms:>8.1f} "
                f"{self._rtts(self.p50_ms)} {self.p99_ms:>8.1f} {self._rtts(self.p99_ms)} "
                f"{self.server_queries_per_msg:>7.2f} {opt(self.log_queries_per_msg, '>7.2f')} "
                f"{opt(self.log_extra_per_msg, '>6.2f')} {self.dmarc_pass:>5} {threads:>9} {self.msgs_per_s:>6.1f} "
                f"{self.cpu_ms_per_msg:>6.2f} {self.msgs_per_s * self.cpu_ms_per_msg / 10:>5.0f}% "
                f"{self.dns_late_mean_ms:>4.1f}/{self.dns_late_max_ms:<4.0f}")


HEADER = (f"{'milter':<22} {'c':>3} {'msgs':>5} {'p50 ms':>8} {'RTT':>5} {'p99 ms':>8} {'RTT':>5} "
          f"{'dns/msg':>7} {'log/msg':>7} {'extra':>6} {'dmarc':>5} {'threads':>9} {'msg/s':>6} {'cpu ms':>6} "
          f"{'cpu':>6} {'dns late':>9}")


def _log_counts(log: Path) -> tuple[int, int, int, list[float]]:
    """(log lines with dns_queries=, their dns_queries sum, their dns_extra sum, their ms= values)."""
    lines = queries = extra = 0
    spent: list[float] = []
    for line in log.read_text(errors="replace").splitlines():
        found = re.search(r"\bdns_queries=(\d+)", line)
        if found:
            lines += 1
            queries += int(found.group(1))
            more = re.search(r"\bdns_extra=(\d+)", line)
            extra += int(more.group(1)) if more else 0
            took = re.search(r"\bms=([0-9.]+)", line)
            if took:
                spent.append(float(took.group(1)))
    return lines, queries, extra, spent


def run_case(running: milters.RunningMilter, server: DelayedDnsServer, numbers: list[int], *, concurrency: int,
             rtt: float, log: Path | None, workers: int = WORKERS) -> CaseResult:
    shares = [numbers[i::concurrency] for i in range(concurrency)]
    before = server.queries
    oversize_before = server.oversize
    late_before = server.lateness[0]
    server.reset_largest_lateness()
    sampler = ThreadSampler(running.pids)
    idle = sampler.count()
    cpu_before = procstat.sample(running.pids).cpu_seconds
    began = time.perf_counter()
    with sampler, multiprocessing.get_context("fork").Pool(concurrency) as pool:
        results = [r for share in pool.map(_connection, [(running.sockets, s, rtt) for s in shares], chunksize=1)
                   for r in share]
    elapsed = time.perf_counter() - began
    cpu = procstat.sample(running.pids).cpu_seconds - cpu_before
    queries = server.queries - before
    latencies = sorted(r[0] * 1000 for r in results if r[0] is not None) or [float("nan")]
    replies: dict[str, int] = {}
    for _, reply, _ in results:
        replies[reply] = replies.get(reply, 0) + 1
    result = CaseResult(
        milter=running.name, concurrency=concurrency, messages=len(results), rtt_ms=rtt * 1000,
        p50_ms=statistics.median(latencies), p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        max_ms=latencies[-1], replies=replies, msgs_per_s=len(results) / elapsed,
        cpu_ms_per_msg=cpu * 1000 / len(results),
        dmarc_pass=sum(1 for r in results if re.search(r"\bdmarc=pass\b", r[2])),
        server_queries_per_msg=queries / len(results), oversize_replies=server.oversize - oversize_before,
        dns_late_mean_ms=(server.lateness[0] - late_before) * 1000 / max(queries, 1),
        dns_late_max_ms=server.lateness[1] * 1000)
    if log is not None:
        time.sleep(0.5)  # the log line is written after the reply; libmilter's connection threads end
        lines, logged, extra, spent = _log_counts(log)
        result.log_ms_p50 = statistics.median(spent) if spent else None
        result.log_lines = lines
        result.log_queries_per_msg = (logged + extra) / len(results)
        result.log_extra_per_msg = extra / len(results)
        result.threads_idle = idle
        result.threads_max = sampler.max
        result.threads_bound = workers + concurrency + idle
        result.threads_after = sampler.count()
    return result


def _start_authmilter(workdir: Path, *, label: str, early: bool, workers: int, cpu: str) -> milters.RunningMilter:
    dns = (f"early_lookups = {'yes' if early else 'no'}\nworkers = {workers}\nmessage_deadline = 60\n"
           "max_queries = 200\n")
    running = milters.start_authmilter(workdir, "127.0.0.1:53", dns_options=dns, cpu=cpu)
    running.name = label
    return running


def run(tmp: Path, *, rtt: float = 0.025, counts: tuple[tuple[int, int], ...] = ((1, 200), (16, 800)),
        only: list[str] | None = None, workers: int = WORKERS, cpu: str = "auto",
        dedicated_cpu: bool = False) -> list[dict]:
    """Every contender at every (concurrency, messages); prints the table, returns the rows. dedicated_cpu: every
    milter on the last CPU, the clients and the DNS server on the others (a host with a core for the milter)."""
    private_key, public_key = corpus.rsa_key()
    numbers_for, first = {}, 1
    for concurrency, count in counts:
        numbers_for[concurrency] = list(range(first, first + count))
        first += count
    messages = make_messages([n for numbers in numbers_for.values() for n in numbers], private_key)
    contenders = [(label, functools.partial(_start_authmilter, label=label, early=early, workers=workers, cpu=cpu),
                   True) for label, early in (("authmilter early", True), ("authmilter serial", False))]
    if milters.opendkim_available():
        contenders.append(("opendkim+opendmarc", milters.start_opendkim_opendmarc, False))
    else:
        print("(OpenDKIM/OpenDMARC not installed: `make bench` installs them from Debian)")
    if only:
        contenders = [c for c in contenders if c[0] in only]
    print(f"early lookups: every DNS answer {rtt * 1000:.0f} ms after its query (RTT), a sender domain and client "
          f"IP per message, the client waits one RTT for the 354; end of message -> final reply")
    print(HEADER)
    rows = []
    _init_worker(messages)  # the pools fork from here: each worker has every message already split
    allowed = os.sched_getaffinity(0)
    cpus = sorted(allowed)
    if dedicated_cpu and len(cpus) < 2:
        raise SystemExit("--dedicated-cpu needs at least two CPUs")
    with DelayedDnsServer(public_key, rtt=rtt, host="127.0.0.1", port=53) as server:
        if dedicated_cpu:  # the client pools fork from this process: they inherit it
            os.sched_setaffinity(server.pid, set(cpus[:-1]))
            os.sched_setaffinity(0, set(cpus[:-1]))
            print(f"(milters on CPU {cpus[-1]}; the clients and the DNS server on CPU {','.join(map(str, cpus[:-1]))})")
        for concurrency, _ in counts:
            for label, start, is_authmilter in contenders:
                workdir = tmp / f"{label.replace(' ', '-')}-{concurrency}"
                workdir.mkdir()
                running = start(workdir)
                if dedicated_cpu:  # every thread, so that libmilter's later ones inherit it
                    for pid in (pid for root in running.pids for pid in procstat.tree(root)):
                        move_threads(pid, {cpus[-1]})
                try:
                    result = run_case(running, server, numbers_for[concurrency], concurrency=concurrency, rtt=rtt,
                                      log=workdir / "authmilter.log" if is_authmilter else None, workers=workers)
                finally:
                    running.stop()
                print(result.row(), flush=True)
                rows.append(asdict(result) | {"dedicated_cpu": dedicated_cpu})
    os.sched_setaffinity(0, allowed)
    print("RTT: the latency in round trips. dns/msg: queries the DNS server received per message; log/msg: "
          "dns_queries + dns_extra from authmilter's log lines (extra: asked early, not needed); dmarc: messages "
          "with dmarc=pass; threads: max sampled / bound ([dns] workers + connections + idle); cpu: the milter's CPU "
          "per message and its share of one CPU; dns late: mean/max ms the DNS replies left after their RTT")
    _verdict(rows)
    return rows


def _verdict(rows: list[dict]) -> None:
    """The issue's targets, said plainly beside the figures."""
    for row in rows:
        if row["milter"] == "authmilter early" and row["rtt_ms"]:
            rtt = row["rtt_ms"]
            busy = row["msgs_per_s"] * row["cpu_ms_per_msg"] / 10
            print(f"target c={row['concurrency']}: p50 {row['p50_ms']:.1f} ms <= {2 * rtt:.0f} "
                  f"{_met(row['p50_ms'] <= 2 * rtt)}, p99 {row['p99_ms']:.1f} ms <= {4 * rtt:.0f} "
                  f"{_met(row['p99_ms'] <= 4 * rtt)} (the milter busy {busy:.0f}% of one CPU, "
                  f"{row['cpu_ms_per_msg']:.1f} ms CPU per message; its log's ms= p50 {row['log_ms_p50']:.1f})")
        if row["threads_max"] is not None:
            # Pool workers are kept once made, libmilter's connection threads end with their connection: what is
            # left after the run is the idle threads plus the pool; the rest of the peak was libmilter's own.
            pool = row["threads_after"] - row["threads_idle"]
            workers = row["threads_bound"] - row["threads_idle"] - row["concurrency"]
            print(f"  threads {row['milter']} c={row['concurrency']}: peak {row['threads_max']} (bound "
                  f"{row['threads_bound']} = workers {workers} + connections {row['concurrency']} + idle "
                  f"{row['threads_idle']}) {_met(row['threads_max'] <= row['threads_bound'])}; pool kept {pool} "
                  f"<= {workers} {_met(pool <= workers)}, libmilter's at the peak "
                  f"{row['threads_max'] - row['threads_after']}")


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.early_dns")
    parser.add_argument("--rtt-ms", type=float, default=25.0, help="the DNS round trip, and the client's (25)")
    parser.add_argument("--cases", nargs="+", default=["1:200", "16:800"], metavar="C:N",
                        help="concurrency:messages of each case (1:200 16:800)")
    parser.add_argument("--only", action="append", default=[], metavar="MILTER",
                        help="'authmilter early', 'authmilter serial' or opendkim+opendmarc")
    parser.add_argument("--workers", type=int, default=WORKERS, help="authmilter's [dns] workers (32, the default)")
    parser.add_argument("--cpu", default="auto", help="authmilter's [milter] cpu (auto, the default: one CPU)")
    parser.add_argument("--dedicated-cpu", action="store_true",
                        help="the milters on the last CPU, the clients and the DNS server on the others")
    parser.add_argument("--json", default="bench-results/early_dns.json", help="where to write the figures")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the early-lookups bench needs root (network namespace, DNS on port 53)", file=sys.stderr)
        return 77
    from bench.__main__ import NS_ENV, _in_namespace
    if NS_ENV not in os.environ:
        return _in_namespace(argv if argv is not None else sys.argv[1:], module="bench.early_dns")
    counts = tuple((int(c), int(n)) for c, _, n in (case.partition(":") for case in args.cases))
    with tempfile.TemporaryDirectory(prefix="authmilter-early-") as tmp:
        rows = run(Path(tmp), rtt=args.rtt_ms / 1000, counts=counts, only=args.only, workers=args.workers,
                   cpu=args.cpu, dedicated_cpu=args.dedicated_cpu)
    report = {"rtt_ms": args.rtt_ms, "workers": args.workers, "cpu": args.cpu,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
              "early_dns": rows, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
