"""`make bench`: measure authmilter against the do-nothing pymilter floor and OpenDKIM + OpenDMARC (verifying),
and against OpenDKIM and dkimpy-milter signing the same messages (bench/signing.py); then issue 13's case, end of
message to reply with every DNS answer a round trip away (bench/early_dns.py).

Runs inside a network namespace of its own (created here, removed at the end), so every milter, OpenDKIM's and
OpenDMARC's resolver included, sends its DNS to our authoritative test server on 127.0.0.1:53 and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NS_ENV = "AUTHMILTER_BENCH_NETNS"


def _in_namespace(argv: list[str], module: str = "bench") -> int:
    """Re-run this module (or another bench module) inside a fresh namespace whose resolv.conf points at 127.0.0.1."""
    name = f"authmilter-bench-{os.getpid()}"
    etc = Path("/etc/netns") / name
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        env = dict(os.environ, **{NS_ENV: name})
        return subprocess.run(["ip", "netns", "exec", name, "timeout", "3000", sys.executable, "-m", module,
                               *argv], env=env).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(etc, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 4 only, one pass, one round")
    parser.add_argument("--rounds", type=int, default=None,
                        help="direct part: rounds per concurrency, contenders interleaved (default 3, quick 1)")
    parser.add_argument("--json", default=None,
                        help="where to write the figures (bench-results/bench.json; with --early-dns-only "
                             "bench-results/early_dns.json)")
    parser.add_argument("--no-postfix", action="store_true", help="skip the through-Postfix part")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory cases")
    parser.add_argument("--no-direct", action="store_true", help="skip the direct part")
    parser.add_argument("--no-signing", action="store_true",
                        help="skip the signing part (authmilter, OpenDKIM and dkimpy-milter signing the mix)")
    parser.add_argument("--dedicated-cpu", action="store_true",
                        help="through Postfix: the milters on the last CPU, Postfix and the SMTP clients on the others")
    parser.add_argument("--only", action="append", default=[], metavar="MILTER",
                        help="measure only this contender (authmilter, 'authmilter cpu=all', authmilter+metrics, "
                             "'authmilter reports=on', 'authmilter serial', null-pymilter, opendkim+opendmarc, dkimpy-milter)")
    parser.add_argument("--no-early-dns", action="store_true",
                        help="skip the early-lookups case (every DNS answer 25 ms away, bench/early_dns.py)")
    parser.add_argument("--early-dns-only", action="store_true", help="run only the early-lookups case")
    args = parser.parse_args(argv)
    if args.json is None:
        args.json = "bench-results/early_dns.json" if args.early_dns_only else "bench-results/bench.json"
    if os.geteuid() != 0:
        print("make bench needs root (network namespace, OpenDKIM, Postfix)", file=sys.stderr)
        return 77
    if NS_ENV not in os.environ:
        return _in_namespace(argv)

    from bench import corpus, direct, milters
    from testlab.dnsserver import DnsServer

    if args.early_dns_only:
        return _write(args.json, {"machine": _machine(), "early_dns": _early_dns(args.quick)})

    private_key, public_key = corpus.rsa_key()
    messages = [m.raw for m in corpus.make_mix(private_key)]
    concurrencies = (1, 4) if args.quick else (1, 4, 16)
    warm_passes = 1 if args.quick else 10
    report: dict = {"machine": _machine(),
                    "mix": [list(m) for m in corpus.MIX], "direct": [], "memory": [], "postfix": []}
    print(f"mix: {', '.join(f'{n} x {s // 1024} KB' for n, s in corpus.MIX)}, rsa-2048 relaxed/relaxed")
    print(direct.HEADER)
    with DnsServer(corpus.zone(public_key, [corpus.CLIENT_IP]), host="127.0.0.1", port=53, lifetime=3000), \
            tempfile.TemporaryDirectory(prefix="authmilter-bench-") as tmp:
        # "cpu=all" shows what [milter] cpu = auto (one CPU for all threads, the default) is for.
        contenders = [("authmilter", lambda wd: milters.start_authmilter(wd, "127.0.0.1:53")),
                      ("authmilter cpu=all", lambda wd: milters.start_authmilter(wd, "127.0.0.1:53", cpu="all")),
                      # [metrics] listen on, beside the default: what the counters cost per message.
                      ("authmilter+metrics", lambda wd: milters.start_authmilter(wd, "127.0.0.1:53", metrics=True)),
                      # issue 10: the same milter recording DMARC aggregate report rows (SQLite), side by side
                      ("authmilter reports=on", lambda wd: milters.start_authmilter(wd, "127.0.0.1:53",
                                                                                     reports=True)),
                      # issue 13: every lookup at end of message, one after another ([dns] early_lookups = no)
                      ("authmilter serial", lambda wd: milters.start_authmilter(wd, "127.0.0.1:53",
                                                                                 early_lookups=False)),
                      ("null-pymilter", milters.start_nullmilter)]
        if milters.opendkim_available():
            contenders.append(("opendkim+opendmarc", milters.start_opendkim_opendmarc))
        else:
            print("(OpenDKIM/OpenDMARC not installed: `make bench` installs them from Debian)")
        if milters.dkimpy_milter_available():
            contenders.append(("dkimpy-milter", milters.start_dkimpy_milter))
        else:
            print("(dkimpy-milter not installed: `make bench` installs it from Debian)")
        if args.only:
            contenders = [c for c in contenders if c[0] in args.only]
        rounds = args.rounds or (1 if args.quick else 3)
        serial = 0
        # A noisy shared VM swings a case's CPU by +-30 % from one minute to the next: each round runs every
        # contender back to back (in a rotated order), and the summary compares medians over the rounds.
        for concurrency in () if args.no_direct else concurrencies:
            for round_number in range(rounds):
                shift = round_number % len(contenders)
                for label, start in contenders[shift:] + contenders[:shift]:
                    workdir = Path(tmp, f"{label}-{concurrency}-{round_number}")
                    workdir.mkdir()
                    running = start(workdir)
                    try:
                        sent = 0
                        for cache, passes in (("cold", 1), ("warm", warm_passes)):
                            result = direct.run_case(running, messages, concurrency=concurrency, passes=passes,
                                                     cache=cache, serial_base=serial)
                            serial += result.messages
                            sent += result.messages
                            print(result.row(), flush=True)
                            report["direct"].append(direct.as_dict(result) | {"round": round_number})
                        if running.metrics_url:  # after the measured cases: the scrape's CPU is not counted
                            counted = milters.messages_counted(running.metrics_url)
                            if counted != sent:
                                print(f"  {label}: /metrics counted {counted} messages of {sent} sent")
                    finally:
                        running.stop()
        if report["direct"]:
            report["direct_summary"] = direct.summarize(report["direct"])
            print()
            print(direct.summary_table(report["direct_summary"]))
            overhead = direct.compare(report["direct_summary"], "authmilter", "authmilter+metrics")
            if overhead:
                print(overhead)
        if not args.no_signing:
            from bench import signing
            report["signing"] = signing.run(Path(tmp), messages, concurrencies=concurrencies, rounds=rounds,
                                            passes=warm_passes)
        if not args.no_memory:
            from bench import memory
            report["memory"] = memory.run(lambda wd: milters.start_authmilter(wd, "127.0.0.1:53"), Path(tmp),
                                          private_key)
        if not args.no_postfix:
            from bench import throughpostfix
            report["postfix"] = throughpostfix.run(Path(tmp), messages, public_key, quick=args.quick,
                                                   dedicated_cpu=args.dedicated_cpu)
    if not args.no_early_dns:  # after the loopback DNS server above has let go of port 53
        report["early_dns"] = _early_dns(args.quick)
    return _write(args.json, report)


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


def _early_dns(quick: bool) -> list[dict]:
    from bench import early_dns
    print()
    with tempfile.TemporaryDirectory(prefix="authmilter-early-") as tmp:
        return early_dns.run(Path(tmp), counts=((1, 50), (16, 160)) if quick else ((1, 200), (16, 800)))


def _write(path: str, report: dict) -> int:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.write_text(json.dumps(report, indent=2))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
