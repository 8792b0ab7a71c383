"""The through-Postfix part: the same messages over SMTP to a private Postfix, with each milter and with none.

Latency is measured where a sending MTA feels it: from the end of DATA (".") to Postfix's 250, which includes the
milter's whole end-of-message work and every milter-protocol round trip. "Added latency" is that p50 minus the
p50 of the same Postfix with no milter, in the same run. The inet case is measured twice, without and with
`quickack 1` on the loopback routes, to show that the rest of the Nagle stall is the peer's delayed ACK.
"""

from __future__ import annotations

import multiprocessing
import os
import smtplib
import statistics
import subprocess
import time
from pathlib import Path

from authmilter.cpu import move_threads
from bench import corpus, milters, procstat
from testlab import postfixlab
from testlab.zonedata import RECIPIENT_DOMAIN

LISTENERS = {"none": 2500, "authmilter-unix": 2501, "authmilter-inet": 2502, "null-pymilter": 2503,
             "opendkim+opendmarc": 2504, "authmilter-unix cpu=all": 2505}
INET_PORT = 8894
RCPT = f"bench@{RECIPIENT_DOMAIN}"


def _send(task: tuple[int, bytes]) -> tuple[float, int]:
    port, message = task
    client = smtplib.SMTP("127.0.0.1", port, timeout=120, source_address=(corpus.CLIENT_IP, 0))
    try:
        client.ehlo(corpus.HELO)
        client.mail(corpus.SENDER)
        client.rcpt(RCPT)
        code, _ = client.docmd("DATA")
        if code != 354:
            return 0.0, code
        client.send(message + b".\r\n")
        started = time.perf_counter()
        code, _ = client.getreply()
        return time.perf_counter() - started, code
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            pass


def _measure(port: int, payloads: list[bytes], concurrency: int, pids: list[int]) -> dict:
    tasks = [(port, payload) for payload in payloads]
    if concurrency == 1:
        before = procstat.sample(pids) if pids else None
        started = time.perf_counter()
        results = [_send(task) for task in tasks]
        elapsed = time.perf_counter() - started
    else:
        with multiprocessing.get_context("fork").Pool(concurrency) as pool:
            # Forking 16 senders is not Postfix's or the milter's time: the clock starts once they exist.
            pool.map(abs, range(concurrency), chunksize=1)
            before = procstat.sample(pids) if pids else None
            started = time.perf_counter()
            results = pool.map(_send, tasks, chunksize=1)
            elapsed = time.perf_counter() - started
    latencies = sorted(r[0] * 1000 for r in results if r[1] == 250)
    failures = sum(1 for r in results if r[1] != 250)
    cpu = (procstat.sample(pids).cpu_seconds - before.cpu_seconds) * 1000 / len(tasks) if pids else 0.0
    return {"messages": len(tasks), "failures": failures, "msgs_per_s": len(tasks) / elapsed,
            "p50_ms": statistics.median(latencies) if latencies else None,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None,
            "milter_cpu_ms_per_msg": cpu}


def _dedicate_last_cpu(milter_pids: list[int]) -> None:
    """Every thread of the milters (their later threads inherit it) on the last CPU; this process, hence Postfix and
    the SMTP clients started after this, on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--dedicated-cpu needs at least two CPUs")
    for pid in (pid for root in milter_pids for pid in procstat.tree(root)):
        move_threads(pid, {cpus[-1]})
    os.sched_setaffinity(0, set(cpus[:-1]))
    print(f"(milters on CPU {cpus[-1]}; Postfix and the SMTP clients on CPU {','.join(map(str, cpus[:-1]))})")


def _quickack(enabled: bool) -> None:
    """Linux keeps TCP_QUICKACK per route; on loopback both the milter's and Postfix's ACKs use these routes."""
    value = "1" if enabled else "0"
    for prefix in ("127.0.0.0/8", "127.0.0.1"):
        subprocess.run(["ip", "route", "change", "local", prefix, "dev", "lo", "table", "local", "quickack",
                        value], check=False, capture_output=True)


def run(tmp: Path, messages: list[bytes], public_key: str, *, quick: bool, dedicated_cpu: bool = False) -> list[dict]:
    """dedicated_cpu: every milter on the last CPU, Postfix and the SMTP clients on the others (a host with a core
    to spare for the milter), instead of everything sharing every CPU."""
    del public_key  # the DNS server started by the caller already serves the key
    os.chmod(tmp, 0o755)  # Postfix's smtpd runs as `postfix` and must reach the milter sockets below tmp
    workdir = tmp / "postfix-part"
    workdir.mkdir()
    contenders: dict[str, milters.RunningMilter] = {}
    for name, start in (("authmilter-unix", lambda d: milters.start_authmilter(d, "127.0.0.1:53")),
                        ("authmilter-unix cpu=all", lambda d: milters.start_authmilter(d, "127.0.0.1:53", cpu="all")),
                        ("authmilter-inet", lambda d: milters.start_authmilter(d, "127.0.0.1:53",
                                                                               inet_port=INET_PORT)),
                        ("null-pymilter", milters.start_nullmilter),
                        ("opendkim+opendmarc", milters.start_opendkim_opendmarc)):
        if name == "opendkim+opendmarc" and not milters.opendkim_available():
            continue
        if dedicated_cpu and name == "authmilter-unix cpu=all":
            continue  # on one dedicated CPU it is the same as the default
        directory = workdir / name.replace(" ", "_")  # the socket path goes into master.cf unquoted
        directory.mkdir()
        contenders[name] = start(directory)
    listeners = {LISTENERS["none"]: ""}
    for name, running in contenders.items():
        specs = [f"inet:{s}" if not s.startswith("/") else f"unix:{s}" for s in running.sockets]
        listeners[LISTENERS[name]] = ",".join(specs)
    if dedicated_cpu:
        _dedicate_last_cpu([pid for running in contenders.values() for pid in running.pids])
    config = postfixlab.prepare(workdir / "postfix", listeners)
    subprocess.run(["postfix", "-c", str(config), "check"], check=True)
    master = subprocess.Popen(["timeout", "1800", str(postfixlab.DAEMON_DIRECTORY / "master"), "-c", str(config),
                               "-d"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows: list[dict] = []
    try:
        milters.wait_for_port(LISTENERS["none"], master)
        ten_kb = [m for m in messages if len(m) < 20 * 1024][:1] * (20 if quick else 50)
        # 60 messages (under a second) made the c=16 throughput swing by +-30% between runs of the same setup.
        mix = messages * (1 if quick else 10)
        mix_concurrencies = (1, 16) if quick else (1, 4, 16)
        print("\nthrough Postfix: end of DATA -> 250, 10 KB message at concurrency 1; the mix at "
              + ", ".join(f"c={c}" for c in mix_concurrencies))
        print(f"{'milter':<30} {'case':<10} {'msgs':>5} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'+p50 ms':>8} {'cpu ms':>7} {'% of none':>9}")
        baseline: dict[str, float] = {}
        baseline_rate: dict[str, float] = {}
        cases = [(name, False) for name in ("none", *contenders)]
        if "authmilter-inet" in contenders:
            cases.append(("authmilter-inet", True))
        for name, quickack in cases:
            _quickack(quickack)
            pids = contenders[name].pids if name in contenders else []
            _measure(LISTENERS[name], ten_kb[:3], 1, pids)  # warm the DNS cache and Postfix's processes
            cases_here = [("latency", ten_kb, 1)] + [(f"mix c={c}", mix, c) for c in mix_concurrencies]
            for case, payloads, concurrency in cases_here:
                figures = _measure(LISTENERS[name], payloads, concurrency, pids)
                label = name + (" +quickack" if quickack else "")
                if name == "none":
                    baseline[case] = figures["p50_ms"] or 0.0
                    baseline_rate[case] = figures["msgs_per_s"]
                added = (figures["p50_ms"] or 0.0) - baseline.get(case, 0.0)
                share = 100.0 * figures["msgs_per_s"] / baseline_rate[case] if baseline_rate.get(case) else 0.0
                figures.update({"milter": label, "case": case, "added_p50_ms": added,
                                "throughput_pct_of_none": share})
                rows.append(figures)
                print(f"{label:<30} {case:<10} {figures['messages']:>5} {figures['msgs_per_s']:>8.1f} "
                      f"{figures['p50_ms'] or 0:>8.2f} {figures['p99_ms'] or 0:>8.2f} {added:>8.2f} "
                      f"{figures['milter_cpu_ms_per_msg']:>7.2f} {share:>8.0f}%", flush=True)
        _quickack(False)
    finally:
        subprocess.run(["postfix", "-c", str(config), "stop"], check=False, capture_output=True)
        try:
            master.wait(timeout=20)
        except subprocess.TimeoutExpired:
            master.kill()
        for running in contenders.values():
            running.stop()
    return rows
