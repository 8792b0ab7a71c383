"""Load on the real daemon: 200 concurrent milter connections, a reload in the middle, a clean stop at the end.

Every connection is a thread speaking the milter protocol byte for byte (testlab.milterclient), as Postfix would.
What a user would see is asserted: every transaction gets a final reply, every accepted message carries exactly one
Authentication-Results insertion whose authserv-id says which configuration judged it, the daemon logs one line
per message, and SIGTERM ends it with status 0 and no traceback. Nothing here measures time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import authres
import pytest

from testlab.milterclient import MilterClient, split_message
from testlab.daemonrunner import DaemonRunner
from testlab.dnsserver import DnsServer
from tests.hostile import signing

pytestmark = pytest.mark.timeout(150)

CONNECTIONS = 200
OLD_ID = "mx-before.load.example"
NEW_ID = "mx-after.load.example"
THIRD_ID = "mx-third.load.example"
DOMAIN = "load.example"
RUN_LIMIT = 90.0          # the whole run is bounded; a thread still busy then is a lost reply


def zone() -> dict:
    data = {
        DOMAIN: [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}, {"MX": [10, f"mx.{DOMAIN}"]}],
        f"mx.{DOMAIN}": [{"A": "192.0.2.1"}],
        f"_dmarc.{DOMAIN}": [{"TXT": "v=DMARC1; p=reject"}],
        signing.key_name(DOMAIN): [{"TXT": signing.key_record()}],
    }
    for host in range(1, 51):
        reverse = ".".join(reversed(f"192.0.2.{host}".split("."))) + ".in-addr.arpa"
        data[reverse] = [{"PTR": f"h{host}.{DOMAIN}"}]
        data[f"h{host}.{DOMAIN}"] = [{"A": f"192.0.2.{host}"}]
    return data


@dataclass
class Record:
    """One transaction as the client saw it."""

    queue_id: str
    answered_before_signal: bool  # answered before SIGUSR1 was even sent: must be judged by the old configuration
    after_reload: bool            # started after the daemon logged the reload: must be judged by the new one
    signed: bool = False     # carries a valid DKIM signature
    answered_after_reload: bool = False
    reply: str = ""
    reply_text: str = ""
    ar_values: tuple[str, ...] = ()
    error: str = ""


class Load:
    def __init__(self, socket_path: str):
        self.socket_path = socket_path
        self.lock = threading.Lock()
        self.records: list[Record] = []
        self.signal_sent = threading.Event()
        self.reloaded = threading.Event()
        self.stop = threading.Event()
        self.connected = threading.Barrier(CONNECTIONS + 1, timeout=60)
        self.first_round = threading.Semaphore(0)

    def worker(self, number: int) -> None:
        client_ip = f"192.0.2.{number % 50 + 1}"
        signed = number % 2 == 0
        raw = signing.simple_message(f"user{number}@{DOMAIN}", subject=f"load {number}",
                                     body=(b"line of a load test body\r\n" * (1 + number % 40)))
        headers, body = split_message(signing.sign(raw, DOMAIN) if signed else raw)
        sequence = 0
        try:
            client = MilterClient(self.socket_path, timeout=60)
        except OSError as exc:
            self._note(Record(f"C{number}", True, False, error=f"connect: {exc}"))
            self.connected.abort()
            return
        with client:
            try:
                client.negotiate()
                self.connected.wait()  # all 200 connections are open at once before any message flows
                deadline = time.monotonic() + RUN_LIMIT
                done_after_reload = 0
                # Loop until this connection has sent at least one whole message after the reload was logged.
                while done_after_reload < 1 and time.monotonic() < deadline and not self.stop.is_set():
                    sequence += 1
                    queue_id = f"L{number:03d}x{sequence:03d}"
                    record = Record(queue_id, False, self.reloaded.is_set(), signed)
                    outcome = client.transaction(
                        client_ip=client_ip, helo=f"h{number % 50 + 1}.{DOMAIN}",
                        mail_from=f"user{number}@{DOMAIN}", rcpts=[f"rcpt{number}@example.net"],
                        headers=headers, body=body, queue_id=queue_id, connect=sequence == 1)
                    record.reply = outcome.reply
                    record.answered_before_signal = not self.signal_sent.is_set()
                    record.reply_text = outcome.reply_text
                    record.answered_after_reload = self.reloaded.is_set()
                    record.ar_values = tuple(outcome.added_values("Authentication-Results"))
                    self._note(record)
                    if sequence == 1:
                        self.first_round.release()
                    if record.after_reload:
                        done_after_reload += 1
            except Exception as exc:  # noqa: BLE001 - every failure is a finding, reported by the test
                self._note(Record(f"L{number:03d}x{sequence:03d}", False, False, error=repr(exc)))
                if sequence <= 1:
                    self.first_round.release()

    def _note(self, record: Record) -> None:
        with self.lock:
            self.records.append(record)


def warm_the_cache(socket_path: str) -> None:
    """One message per client address, one after the other, before the burst.

    The burst's first round would otherwise send ~1,000 queries at once to the test DNS server's UDP socket; its
    receive buffer overflows (the kernel counts RcvbufErrors), and our resolver does not retransmit a lost UDP
    query within its timeout, so such a message would honestly end in temperror rather than pass."""
    headers, body = split_message(signing.sign(signing.simple_message(f"warm@{DOMAIN}"), DOMAIN))
    for host in range(1, 51):
        with MilterClient(socket_path, timeout=60) as client:
            client.negotiate()
            outcome = client.transaction(client_ip=f"192.0.2.{host}", helo=f"h{host}.{DOMAIN}",
                                         mail_from=f"warm@{DOMAIN}", rcpts=["rcpt@example.net"], headers=headers,
                                         body=body, queue_id=f"W{host:03d}")
        assert outcome.reply == "accept"


def send_one(socket_path: str, queue_id: str):
    headers, body = split_message(signing.sign(signing.simple_message(f"one@{DOMAIN}"), DOMAIN))
    with MilterClient(socket_path, timeout=60) as client:
        client.negotiate()
        return client.transaction(client_ip="192.0.2.3", helo=f"h3.{DOMAIN}", mail_from=f"one@{DOMAIN}",
                                  rcpts=["rcpt@example.net"], headers=headers, body=body, queue_id=queue_id)


def authserv_id(value: str) -> str:
    return authres.AuthenticationResultsHeader.parse("Authentication-Results:" + value).authserv_id


def test_200_connections_reload_in_the_middle_and_clean_stop(tmp_path):
    with DnsServer(zone(), lifetime=150) as dns_server:
        # The test DNS server shares this process (and its GIL) with 200 client threads: give it the production
        # default budgets, so a slow answer from it is not mistaken for a milter fault.
        budgets = {"dns": {"timeout": "5", "message_deadline": "20"}}
        daemon = DaemonRunner(tmp_path, dns_server=dns_server, authserv_id=OLD_ID, extra=budgets, lifetime=140)
        with daemon:
            warm_the_cache(str(daemon.socket_path))
            load = Load(str(daemon.socket_path))
            threads = [threading.Thread(target=load.worker, args=(n,), name=f"load-{n}", daemon=True)
                       for n in range(CONNECTIONS)]
            for thread in threads:
                thread.start()
            load.connected.wait()
            # Every connection has finished its first message: the reload lands while the rest are in flight.
            for _ in range(CONNECTIONS):
                assert load.first_round.acquire(timeout=RUN_LIMIT), "a first transaction never finished"
            # New config: another authserv-id and another DKIM setting. The [dns] section stays the same, so the
            # warm resolver is kept (a new one would send the whole burst to the test DNS server again).
            daemon.write_config(authserv_id=NEW_ID, extra={**budgets, "dkim": {"time_tolerance": "600"}})
            load.signal_sent.set()
            daemon.reload()
            load.reloaded.set()
            for thread in threads:
                thread.join(RUN_LIMIT)
            load.stop.set()
            stuck = [t.name for t in threads if t.is_alive()]
            # A second reload that changes [dns]: the resolver is replaced (the old one closed after a grace
            # period), and the next message is judged through the new one.
            daemon.write_config(authserv_id=THIRD_ID, extra={"dns": {"timeout": "4", "message_deadline": "20"}})
            daemon.reload()
            after_dns_change = send_one(str(daemon.socket_path), "AFTERDNS")
            status = daemon.stop()
            log = daemon.log_text()

    assert not stuck, f"connections that never got their replies: {stuck[:10]}"
    errors = [r for r in load.records if r.error]
    assert not errors, f"{len(errors)} protocol errors, e.g. {errors[:5]}"
    records = load.records
    # Every connection did at least one message before and one after the reload.
    assert len(records) >= 2 * CONNECTIONS
    assert len({r.queue_id for r in records}) == len(records)

    # No lost reply: each transaction got a final accept and exactly one A-R header.
    refused = [r for r in records if r.reply != "accept"]
    assert not refused, (f"{len(refused)} not accepted, e.g. {refused[:3]}\n"
                         + "\n".join(line for line in log.splitlines()
                                     if any(f"queue_id={r.queue_id} " in line for r in refused[:3])))
    wrong_count = [r for r in records if len(r.ar_values) != 1]
    assert not wrong_count, f"messages without exactly one A-R insertion: {wrong_count[:5]}"

    # The configuration that judged each message, by its authserv-id.
    for record in records:
        ident = authserv_id(record.ar_values[0])
        if record.answered_before_signal:
            assert ident == OLD_ID, record
        elif record.after_reload:
            assert ident == NEW_ID, record
        else:
            assert ident in (OLD_ID, NEW_ID), record
    assert sum(r.after_reload for r in records) >= CONNECTIONS
    # The reload happened in the middle of the traffic: messages started before it was in place were still being
    # answered once it was.
    assert any(not r.after_reload and r.answered_after_reload for r in records)
    # And the checks really ran under load: signed messages pass DKIM, unsigned have none, all pass DMARC.
    for record in records:
        parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results:" + record.ar_values[0])
        results = {(res.method, tuple(p.name for p in res.properties)): res.result for res in parsed.results}
        assert results[("spf", ("mailfrom",))] == "pass", record
        assert results[("dmarc", ("from", "dmarc"))] == "pass", record
        assert [r for (m, _), r in results.items() if m == "dkim"] == ["pass" if record.signed else "none"], record

    assert after_dns_change.reply == "accept"
    [third] = after_dns_change.added_values("Authentication-Results")
    assert authserv_id(third) == THIRD_ID
    assert "dkim=pass" in third and "spf=pass" in third

    # One log line per message, then a clean stop.
    for record in records:
        assert f"queue_id={record.queue_id} " in log, record.queue_id
    assert log.count("reloaded configuration") == 2
    assert status == 0, log[-3000:]
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:3000]
    assert log.rstrip().endswith("authmilter stopped")


def test_sigterm_while_connections_are_open_stops_cleanly(tmp_path):
    """A stop while idle connections are open (Postfix keeps them between messages) still exits 0."""
    with DnsServer(zone(), lifetime=60) as dns_server:
        with DaemonRunner(tmp_path, dns_server=dns_server, authserv_id=OLD_ID, lifetime=60) as daemon:
            clients = [MilterClient(str(daemon.socket_path), timeout=30) for _ in range(20)]
            try:
                for client in clients:
                    client.negotiate()
                headers, body = split_message(signing.simple_message(f"a@{DOMAIN}"))
                outcome = clients[0].transaction(client_ip="192.0.2.7", helo=f"h7.{DOMAIN}",
                                                 mail_from=f"a@{DOMAIN}", rcpts=["b@example.net"],
                                                 headers=headers, body=body, queue_id="IDLE1")
                assert outcome.reply == "accept"
                assert [authserv_id(v) for v in outcome.added_values("Authentication-Results")] \
                    == [OLD_ID]
                status = daemon.stop()
            finally:
                for client in clients:
                    client.sock.close()
            log = daemon.log_text()
    assert status == 0, log[-3000:]
    assert "Traceback" not in log
    assert "SIGTERM received: stopping" in log
