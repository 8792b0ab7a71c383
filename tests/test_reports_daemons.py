"""Real daemons recording into one real PostgreSQL: two MX hosts at once with exact counts, and a SIGTERM while
the database is down (the journal keeps the counts; the next start stores them).

Each daemon is `authmilter run` (testlab.daemonrunner) fed over the milter protocol (testlab.milterclient), with
real DNS on loopback (testlab.dnsserver) and a private PostgreSQL cluster (testlab.postgres).
"""

from __future__ import annotations

import threading
from pathlib import Path

from testlab.daemonrunner import DaemonRunner
from testlab.dnsserver import DnsServer
from testlab.milterclient import MilterClient, split_message
from tests.hostile import signing
from tests.pgfixture import pg_cluster, pg_url  # noqa: F401

STRANGER_IP = "203.0.113.9"
ZONE: dict = {
    "example.org": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "_dmarc.example.org": [{"TXT": "v=DMARC1; p=reject; rua=mailto:dmarc@example.org"}],
    signing.key_name("example.org"): [{"TXT": signing.key_record()}],
    "quarantine.example": [{"TXT": "v=spf1 -all"}],
    "_dmarc.quarantine.example": [{"TXT": "v=DMARC1; p=quarantine; rua=mailto:d@quarantine.example"}],
    "relay.example": [{"TXT": "v=spf1 ip4:203.0.113.0/24 -all"}],
}

SIGNED = signing.sign(signing.simple_message("alice@example.org", subject="ok"), "example.org")
KINDS = {
    "pass": SIGNED,
    "reject": SIGNED.replace(b"Hello.", b"Hellp."),
    "quarantine": signing.simple_message("x@quarantine.example", subject="q"),
}


def reports_extra(directory: Path, url: str, reporter: str) -> dict:
    return {"reports": {"enabled": "yes", "database": url, "reporter_id": reporter, "org_name": "Test Receiver",
                        "from_address": "dmarc-noreply@example.net", "journal": str(directory / "journal"),
                        "flush_seconds": "0.5"}}


def send(socket_path: Path, rounds: int, prefix: str) -> dict[str, int]:
    replies: dict[str, int] = {}
    with MilterClient(str(socket_path), timeout=30) as client:
        client.negotiate()
        for n in range(rounds):
            for kind, raw in KINDS.items():
                headers, body = split_message(raw)
                outcome = client.transaction(client_ip=STRANGER_IP, helo="relay.example",
                                             mail_from="bounce@relay.example", rcpts=["bob@example.net"],
                                             headers=headers, body=body, queue_id=f"{prefix}{n}{kind}")
                replies[outcome.reply] = replies.get(outcome.reply, 0) + 1
    return replies


def per_reporter(pg_cluster, url: str) -> dict[tuple[str, str], int]:
    dbname = url.partition("@/")[2].partition("?")[0]
    out = pg_cluster.psql("SELECT reporter, policy_domain, SUM(count) FROM report_rows "
                          "GROUP BY reporter, policy_domain ORDER BY 1, 2", dbname)
    return {(reporter, domain): int(total) for reporter, domain, total in
            (line.split("|") for line in out.split())}


def test_two_daemons_write_one_postgresql_with_exact_counts(tmp_path, pg_cluster, pg_url):
    rounds, clients = 25, 2
    with DnsServer(ZONE, lifetime=300) as dns:
        (tmp_path / "mx1").mkdir()
        (tmp_path / "mx2").mkdir()
        with DaemonRunner(tmp_path / "mx1", dns_server=dns, extra=reports_extra(tmp_path / "mx1", pg_url, "mx1"),
                          lifetime=280) as mx1, \
                DaemonRunner(tmp_path / "mx2", dns_server=dns, extra=reports_extra(tmp_path / "mx2", pg_url, "mx2"),
                             lifetime=280) as mx2:
            errors: list[BaseException] = []

            def client(daemon, prefix):
                try:
                    send(daemon.socket_path, rounds, prefix)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=client, args=(daemon, f"{name}C{i}"))
                       for daemon, name in ((mx1, "A"), (mx2, "B")) for i in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(240)
            assert errors == []
            assert mx1.stop() == 0 and mx2.stop() == 0  # SIGTERM: each writes its last counts
        for daemon in (mx1, mx2):
            assert "Traceback" not in daemon.log_text()
    each = rounds * clients
    assert per_reporter(pg_cluster, pg_url) == {
        ("mx1", "example.org"): 2 * each, ("mx1", "quarantine.example"): each,
        ("mx2", "example.org"): 2 * each, ("mx2", "quarantine.example"): each,
    }
    from authmilter.reports.postgres import PostgresStore
    store = PostgresStore(pg_url, max_rows=100)
    try:
        (summary,) = [s for s in store.summary() if s.policy_domain == "example.org"]
        assert (summary.messages, summary.dmarc_pass, summary.dmarc_fail) == (4 * each, 2 * each, 2 * each)
        day = store.peek("example.org", summary.day)
        dispositions = {stored.row.disposition: stored.count for stored in day.rows}
        assert dispositions == {"pass": 2 * each, "reject": 2 * each}  # one row per kind, the fleet merged
    finally:
        store.close()


def test_sigterm_with_postgresql_down_then_the_next_start_stores_the_journal(tmp_path, pg_cluster, pg_url):
    with DnsServer(ZONE, lifetime=200) as dns:
        extra = reports_extra(tmp_path, pg_url, "mx1")
        extra["reports"]["flush_seconds"] = "300"  # nothing reaches the store before the stop
        with DaemonRunner(tmp_path, dns_server=dns, extra=extra, lifetime=180) as daemon:
            replies = send(daemon.socket_path, 10, "T")
            assert replies == {"accept": 20, "replycode": 10}  # the DMARC rejects get a 550
            pg_cluster.stop()
            try:
                assert daemon.stop() == 0
            finally:
                pg_cluster.start()
            log = daemon.log_text()
            assert "store unavailable" in log and "counts go to the journal" in log
            assert (tmp_path / "journal").stat().st_size > 0
        with DaemonRunner(tmp_path, dns_server=dns, extra=extra, lifetime=180) as again:
            again.wait_for_log("message(s) from the journal", timeout=30)
            assert again.stop() == 0
    assert "30 message(s) from the journal" in again.log_text()
    assert per_reporter(pg_cluster, pg_url) == {("mx1", "example.org"): 20, ("mx1", "quarantine.example"): 10}
    assert (tmp_path / "journal").stat().st_size == 0
