"""SIGTERM on the real daemon while 50 connections send mail, again and again: it exits 0, never aborts, and
every message it took on gets its answer.

What a stop promises (daemon.finish_sessions): a transaction begun before the signal is judged and answered as
usual; one begun after it gets [milter] error_action (tempfail: "451 4.3.0" at RCPT); a connection made after it
finds the milter gone. So, seen from the MTA, a transaction is only ever "cut" before the milter took it on, never
after it answered CONTINUE to the recipient. Once [milter] stop_timeout runs out, what is still running gets
error_action too (the second test). Nothing here measures time.
"""

from __future__ import annotations

import signal
import socket
import threading
from dataclasses import dataclass

import pytest

from testlab.daemonrunner import DaemonRunner
from testlab.dnsserver import DnsServer
from testlab.milterclient import MilterClient, ProtocolError, split_message
from tests.hostile import signing

DOMAIN = "stop.example"
SLOW = "slow.stop.example"   # its SPF record never comes: a message from it is held in DNS
ROUNDS = 20
CONNECTIONS = 50
CLIENT_IPS = 5               # few client addresses: each round's fresh daemon starts with a cold DNS cache
ABORT_MARKS = ("free()", "corrupted", "double free", "Aborted", "Fatal Python error", "Segmentation fault",
               "Traceback")


def zone() -> dict:
    data = {
        DOMAIN: [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
        f"_dmarc.{DOMAIN}": [{"TXT": "v=DMARC1; p=reject"}],
        signing.key_name(DOMAIN): [{"TXT": signing.key_record()}],
        SLOW: ["TIMEOUT"],
    }
    for host in range(1, CLIENT_IPS + 1):
        data[f"{host}.2.0.192.in-addr.arpa"] = [{"PTR": f"h{host}.{DOMAIN}"}]
        data[f"h{host}.{DOMAIN}"] = [{"A": f"192.0.2.{host}"}]
    return data


@dataclass
class Transaction:
    """One transaction as the MTA saw it."""

    kind: str                 # "accepted", "turned away" (error_action at RCPT), "not taken on", "lost"
    after_signal: bool        # the client had already sent SIGTERM when this transaction ended
    reply_text: str = ""
    ar_count: int = 0
    detail: str = ""


class Load:
    """CONNECTIONS threads, each opening short sessions (one to three messages, then QUIT) until the milter is
    gone, the way Postfix's smtpd processes come and go."""

    def __init__(self, socket_address: str):
        self.address = socket_address
        self.lock = threading.Lock()
        self.done: list[Transaction] = []
        self.answered = threading.Semaphore(0)
        self.signal_sent = threading.Event()
        self.give_up = threading.Event()
        self.threads = [threading.Thread(target=self.worker, args=(n,), daemon=True) for n in range(CONNECTIONS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> list[str]:
        for thread in self.threads:
            thread.join(60)
        self.give_up.set()
        return [t.name for t in self.threads if t.is_alive()]

    def note(self, transaction: Transaction) -> None:
        with self.lock:
            self.done.append(transaction)
        self.answered.release()

    def worker(self, number: int) -> None:
        host = number % CLIENT_IPS + 1
        raw = signing.simple_message(f"user{number}@{DOMAIN}", subject=f"stop {number}",
                                     body=b"a line of a stop test body\r\n" * (1 + number % 20))
        headers, body = split_message(signing.sign(raw, DOMAIN) if number % 2 == 0 else raw)
        sequence = 0
        while not self.give_up.is_set():
            try:
                client = MilterClient(self.address, timeout=60)
            except OSError:
                return  # the milter is gone: the MTA would apply its milter_default_action
            with client:
                try:
                    client.negotiate()
                    client.connect(f"h{host}.{DOMAIN}", f"192.0.2.{host}", macros={"j": "mx.test"})
                    client.helo(f"h{host}.{DOMAIN}")
                except (OSError, ProtocolError) as exc:
                    self.note(Transaction("not taken on", self.signal_sent.is_set(), detail=repr(exc)))
                    continue
                for _ in range(1 + number % 3):
                    sequence += 1
                    if not self.transaction(client, f"S{number:02d}x{sequence:04d}", number, headers, body):
                        break

    def transaction(self, client: MilterClient, queue_id: str, number: int, headers, body) -> bool:
        """One message, step by step, so that we know whether the milter had taken it on when something failed.
        Returns whether the session can go on."""
        try:
            client.mail(f"user{number}@{DOMAIN}", macros={"{mail_addr}": f"user{number}@{DOMAIN}"})
            reply = client.rcpt(f"rcpt{number}@example.net", macros={"i": queue_id})
        except (OSError, ProtocolError) as exc:
            self.note(Transaction("not taken on", self.signal_sent.is_set(), detail=repr(exc)))
            return False
        if reply is None or reply.code != "c":
            self.note(Transaction("turned away", self.signal_sent.is_set(), reply.text if reply else "",
                                  detail=f"{queue_id}: {reply}"))
            return True
        try:
            client.data(macros={"i": queue_id})
            client.headers(headers)
            client.eoh(macros={"i": queue_id})
            client.body(body)
            outcome = client.eom(macros={"i": queue_id})
        except (OSError, ProtocolError) as exc:
            self.note(Transaction("lost", self.signal_sent.is_set(), detail=f"{queue_id}: {exc!r}"))
            return False
        kind = "accepted" if outcome.reply == "accept" else outcome.reply
        self.note(Transaction(kind, self.signal_sent.is_set(), outcome.reply_text,
                              len(outcome.added_values("Authentication-Results")), queue_id))
        return True

    def wait_for(self, count: int) -> None:
        for _ in range(count):
            assert self.answered.acquire(timeout=60), "the load stopped moving"


@pytest.fixture(scope="module")
def dns_server():
    with DnsServer(zone(), lifetime=280) as server:
        yield server


@pytest.mark.timeout(240)
def test_sigterm_under_load_with_reloads_exits_cleanly_every_time(tmp_path, dns_server):
    answered_during_stop = 0
    for round_number in range(ROUNDS):
        directory = tmp_path / f"round{round_number}"
        directory.mkdir()
        daemon = DaemonRunner(directory, dns_server=dns_server, authserv_id="mx1.stop.example", lifetime=90)
        with daemon:
            load = Load(str(daemon.socket_path))
            load.start()
            load.wait_for(60)
            daemon.write_config(authserv_id="mx2.stop.example", extra={"dkim": {"time_tolerance": "600"}})
            daemon.reload()
            load.wait_for(40 + 7 * round_number)  # the signal lands at a different point of the traffic each round
            load.signal_sent.set()
            status = daemon.stop()
            stuck = load.join()
            log = daemon.log_text()

        context = f"round {round_number}:\n{log[-3000:]}"
        assert status == 0, context
        assert not [mark for mark in ABORT_MARKS if mark in log], context
        assert log.rstrip().endswith("authmilter stopped"), context
        assert not stuck, f"round {round_number}: connections still waiting for the milter: {stuck[:5]}"
        done = load.done
        lost = [t for t in done if t.kind == "lost"]
        assert not lost, f"round {round_number}: messages taken on and never answered: {lost[:5]}\n{context}"
        assert not [t for t in done if not t.after_signal and t.kind != "accepted"], context
        for transaction in done:
            if transaction.kind == "accepted":
                assert transaction.ar_count == 1, transaction
            elif transaction.kind == "turned away":  # begun after the signal: [milter] error_action = tempfail
                assert transaction.reply_text.startswith("451 4.3.0 "), transaction
            else:
                assert transaction.kind == "not taken on", transaction
        answered_during_stop += sum(1 for t in done if t.after_signal and t.kind == "accepted")
    # The scenario really happened: messages in flight at the signal were still judged and answered.
    assert answered_during_stop > 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("kind", "error_action"), [("unix", "tempfail"), ("inet", "tempfail"),
                                                    ("unix", "accept")])
def test_a_message_still_running_at_stop_timeout_gets_error_action(tmp_path, dns_server, kind, error_action):
    """One message is held in DNS past stop_timeout: it gets error_action when its lookups end. Meanwhile a new
    transaction on an open connection gets error_action at RCPT, and a new connection finds the milter gone."""
    milter = {"stop_timeout": "2", "error_action": error_action}
    if kind == "inet":
        port = free_port()
        milter["socket"] = f"inet:{port}@127.0.0.1"
        address = f"127.0.0.1:{port}"
    daemon = DaemonRunner(tmp_path, dns_server=dns_server, authserv_id="mx.stop.example", lifetime=80,
                          extra={"milter": milter, "dns": {"timeout": "6", "message_deadline": "10"}})
    if kind == "unix":
        address = str(daemon.socket_path)
    headers, body = split_message(signing.simple_message(f"user@{SLOW}"))
    with daemon:
        held = MilterClient(address, timeout=60)
        idle = MilterClient(address, timeout=60)
        try:
            for client in (held, idle):
                client.negotiate()
            outcome = []
            sender = threading.Thread(target=lambda: outcome.append(held.transaction(
                client_ip="192.0.2.1", helo=f"h1.{DOMAIN}", mail_from=f"user@{SLOW}", rcpts=["r@example.net"],
                headers=headers, body=body, queue_id="HELD")), daemon=True)
            count_before = dns_server.count(SLOW, "TXT")
            sender.start()
            daemon.wait_for_log(lambda _: dns_server.count(SLOW, "TXT") > count_before, 20)
            idle.connect(f"h2.{DOMAIN}", "192.0.2.2")
            idle.helo(f"h2.{DOMAIN}")

            daemon.signal(signal.SIGTERM)
            daemon.wait_for_log("SIGTERM received: stopping")
            # A transaction begun after the signal, on a connection that was already open.
            idle.mail(f"late@{DOMAIN}")
            late = idle.rcpt("r@example.net", macros={"i": "LATE"})
            # A connection made after the signal.
            if kind == "unix":
                with pytest.raises(OSError):
                    MilterClient(address, timeout=10)
            else:
                with pytest.raises((OSError, ProtocolError)):
                    with MilterClient(address, timeout=10) as newcomer:
                        newcomer.negotiate()
            sender.join(60)
            status = daemon.stop()
        finally:
            held.sock.close()
            idle.sock.close()
        log = daemon.log_text()

    assert status == 0, log[-3000:]
    assert not [mark for mark in ABORT_MARKS if mark in log], log[-3000:]
    assert "stop_timeout (2s) ran out with 1 message(s) in flight" in log
    assert f"queue_id=HELD stopping: answering end of message with error_action={error_action}" in log
    assert log.rstrip().endswith("authmilter stopped")
    [held_outcome] = outcome
    if error_action == "tempfail":
        assert held_outcome.reply_text.startswith("451 4.3.0 "), held_outcome
        assert late.text.startswith("451 4.3.0 "), late
    else:
        assert held_outcome.reply == "accept"
        assert held_outcome.added_values("Authentication-Results") == []  # not judged: no verdict to show
        assert late.code == "c"
    if kind == "inet":
        assert "stopping: refusing a new milter connection" in log
