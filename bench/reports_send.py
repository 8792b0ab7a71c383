"""`reports send` for many policy domains, with the MTA replaced by a local SMTP sink (issue 10: under 60 s for
10,000 domains).

    .venv/bin/python -m bench.reports_send [--domains 10000] [--external 0.1]

Everything is on loopback: a SQLite store filled with one day of rows (three distinct rows per domain), an
authoritative DNS server (testlab.dnsserver) for the From domain's SPF and the RFC 9990 §4 checks of the share of
domains whose rua points to a third party, and an SMTP sink (testlab.smtpsink.CountingSink: it speaks just enough
SMTP to take every report and only counts them, so its own cost stays out of the figure). The
timed part is the real command, `authmilter reports send --config FILE`, in a process of its own: claims, DNS,
XML, the schema check, gzip, the message, storing it, SMTP, marking sent.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from authmilter.config import load_config
from authmilter.reports.model import DkimAuth, Observation, PublishedPolicy, RowKey, SpfAuth
from authmilter.reports.store import open_store
from testlab.dnsserver import DnsServer
from testlab.smtpsink import CountingSink

FROM_DOMAIN = "mx.example.net"
THIRD_PARTY = "reports.example"
LIMIT_SECONDS = 60.0


def observations(domains: int, external_share: float, day: str) -> Counter:
    counts: Counter = Counter()
    external_every = int(1 / external_share) if external_share > 0 else 0
    for index in range(domains):
        domain = f"d{index:05d}.example"
        external = external_every and index % external_every == 0
        rua = (f"mailto:dmarc@{THIRD_PARTY}",) if external else (f"mailto:rua@{domain}",)
        policy = PublishedPolicy(domain, "reject", "none")
        for ip, dkim, spf, count in (("192.0.2.1", "pass", "pass", 40), ("192.0.2.2", "pass", "fail", 3),
                                     ("203.0.113.7", "fail", "fail", 1)):
            row = RowKey(ip, "pass" if "pass" in (dkim, spf) else "reject", dkim, spf, (), domain, domain, "",
                         (DkimAuth(domain, "s1", dkim),), (SpfAuth(domain, spf),))
            counts[Observation(day, domain, policy, rua, row, True, False)] = count
    return counts


def zone(domains: int, external_share: float) -> dict:
    data = {FROM_DOMAIN: [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}]}
    external_every = int(1 / external_share) if external_share > 0 else 0
    for index in range(0, domains, external_every or domains + 1):
        data[f"d{index:05d}.example._report._dmarc.{THIRD_PARTY}"] = [{"TXT": "v=DMARC1"}]
    return data


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reports_send")
    parser.add_argument("--domains", type=int, default=10000)
    parser.add_argument("--store-dir", default=None,
                        help="where the SQLite store goes (default: a temporary directory on disk; /dev/shm "
                             "takes the disk's fsync latency out of the figure)")
    parser.add_argument("--external", type=float, default=0.1,
                        help="share of domains whose rua is a verified third party (RFC 9990 §4 lookups)")
    args = parser.parse_args(argv)
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    with tempfile.TemporaryDirectory(prefix="authmilter-bench-reports-", dir=args.store_dir) as tmp, \
            DnsServer(zone(args.domains, args.external), lifetime=900) as dns, CountingSink(lifetime=900) as sink:
        config = Path(tmp) / "authmilter.ini"
        config.write_text(f"""[dns]
nameservers = {dns.address}

[log]
level = warning

[reports]
enabled = yes
database = {tmp}/reports.sqlite
org_name = Bench Receiver
from_address = dmarc-reports@{FROM_DOMAIN}
grace_hours = 0
smtp_host = 127.0.0.1
smtp_port = {sink.port}
""")
        cfg = load_config(config)
        started = time.perf_counter()
        store = open_store(cfg.reports)
        try:
            # In batches, as the milter's writer flushes them (a few seconds of mail each).
            counts = list(observations(args.domains, args.external, day).items())
            for start in range(0, len(counts), 3000):
                store.add_counts("bench", dict(counts[start:start + 3000]), time.time())
        finally:
            store.close()
        print(f"store filled: {args.domains} domains, {3 * args.domains} rows in {time.perf_counter() - started:.1f} s")
        command = [sys.executable, "-m", "authmilter", "reports", "send", "--config", str(config)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - started
        received = sink.messages
        print(done.stdout.strip())
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
        print(f"authmilter reports send (store in {tmp}): {args.domains} domains ({args.external:.0%} with a "
              f"verified third-party rua), {received} reports taken by the sink, {dns.total_queries} DNS queries: "
              f"{seconds:.1f} s ({1000 * seconds / max(args.domains, 1):.2f} ms per report); "
              f"target under {LIMIT_SECONDS:.0f} s: {'met' if seconds < LIMIT_SECONDS else 'MISSED'}")
        return 0 if done.returncode == 0 and received == args.domains else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
