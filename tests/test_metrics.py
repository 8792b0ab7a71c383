"""[metrics] listen: the real daemon, real DNS on loopback, messages over the milter protocol, /metrics over HTTP.

What an operator's Prometheus would see: counters that move with the verdicts, DNS lookups and reloads; no label
that holds a domain, an address or anything else the mail chose; a metrics failure that never changes a reply;
and a listen address that cannot be bound stopping the start-up.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import socket
import urllib.error
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from authmilter import __version__
from testlab.daemonrunner import DaemonRunner
from testlab.dnsserver import DnsServer
from testlab.milterclient import MilterClient, split_message

GOOD_IP = "192.0.2.1"
SPOOF_IP = "203.0.113.5"
AUTHSERV_ID = "mx.metrics.example"
ZONE = {
    "example.org": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "_dmarc.example.org": [{"TXT": "v=DMARC1; p=reject"}],
    "mail.example.org": [{"A": GOOD_IP}],
    "1.2.0.192.in-addr.arpa": [{"PTR": "mail.example.org"}],
}
# Every value the mail or the DNS chose in these tests: none may show up in a label.
CHOSEN = ("example.org", "example.net", "mail.example.org", "alice", "bob", GOOD_IP, SPOOF_IP, "127.0.0.7",
          AUTHSERV_ID, "Q-METRICS")
MESSAGE = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: metrics\r\n\r\nHello.\r\n"

FAULTY_METRICS = '''\
"""The real daemon whose metrics fail: every verdict and every DNS lookup makes the metrics code raise."""
import sys
from authmilter import metrics
from authmilter.cli import main

def broken(self, *args):
    raise RuntimeError("injected metrics fault")

metrics.MetricsObserver.observe = broken
metrics.MetricsObserver.dns_query = broken
sys.exit(main(sys.argv[1:]))
'''

FAULTY_EOM = '''\
"""The real daemon with a bug at end of message: the pipeline raises."""
import sys
import authmilter.pipeline as pipeline
from authmilter.cli import main

def evaluate(ctx, dns, cfg, *, now, **options):
    raise RuntimeError("injected fault")

pipeline.evaluate = evaluate
sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture(scope="module")
def dns():
    with DnsServer(ZONE, lifetime=600) as server:
        yield server


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def metrics_daemon(tmp_path, dns, *, listen: str, launcher=None, extra: dict | None = None) -> DaemonRunner:
    sections = {"milter": {"error_action": "tempfail"}, "metrics": {"listen": listen},
                "trust": {"networks": "127.0.0.0/8"}}
    for name, values in (extra or {}).items():
        sections.setdefault(name, {}).update(values)
    return DaemonRunner(tmp_path, dns_server=dns, authserv_id=AUTHSERV_ID, extra=sections, lifetime=100,
                        launcher=launcher)


def send(daemon: DaemonRunner, ip: str, queue_id: str = "Q-METRICS"):
    headers, body = split_message(MESSAGE)
    with MilterClient(str(daemon.socket_path), timeout=30) as client:
        client.negotiate()
        return client.transaction(client_ip=ip, helo="mail.example.org", mail_from="alice@example.org",
                                  rcpts=["bob@example.net"], headers=headers, body=body, queue_id=queue_id)


def scrape(listen: str, path: str = "/metrics") -> dict[tuple[str, frozenset], float]:
    """sample name and labels -> value, as Prometheus would store them."""
    with urllib.request.urlopen(f"http://{listen}{path}", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape_when(listen: str, ready, timeout: float = 10.0) -> dict:
    """The first scrape for which ready(samples) holds (a QUIT reaches the milter after the client moved on)."""
    deadline = time.monotonic() + timeout
    samples = scrape(listen)
    while not ready(samples) and time.monotonic() < deadline:
        time.sleep(0.05)
        samples = scrape(listen)
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str) -> float:
    return sum(v for (sample, _), v in samples.items() if sample == name)


def assert_no_chosen_label(samples: dict) -> None:
    """No label value is an address, or holds a name, an address or a local part from the mail or the DNS."""
    for (name, labels), _ in samples.items():
        for label, text in labels:
            if (name, label) == ("authmilter_build_info", "version") or label == "le":
                continue  # our version, and the histogram bucket bounds: numbers from our code
            if name == "authmilter_build_info" and label == "python":
                continue
            assert re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_]*", text), f"{name}{{{label}={text!r}}}"
            with pytest.raises(ValueError):
                ipaddress.ip_address(text)
            assert not any(chosen.lower() in text.lower() for chosen in CHOSEN), f"{name}{{{label}={text!r}}}"


def test_counters_follow_the_verdicts_and_the_dns(tmp_path, dns):
    listen = f"127.0.0.1:{free_port()}"
    with metrics_daemon(tmp_path, dns, listen=listen) as daemon:
        before = scrape(listen)
        [(build, one)] = [(dict(labels), v) for (n, labels), v in before.items() if n == "authmilter_build_info"]
        assert (build["version"], one) == (__version__, 1)
        assert total(before, "authmilter_messages_total") == 0
        good = send(daemon, GOOD_IP)
        spoof = send(daemon, SPOOF_IP)
        again = send(daemon, GOOD_IP)      # the same lookups again: answered from the cache
        local = send(daemon, "127.0.0.7")  # a trusted network: nothing checked
        assert [o.reply for o in (good, spoof, again, local)] == ["accept", "replycode", "accept", "accept"]
        samples = scrape_when(listen, lambda s: value(s, "authmilter_connections_open") == 0)
        assert value(samples, "authmilter_messages_total", action="accept", reason="accept") == 2
        assert value(samples, "authmilter_messages_total", action="reject", reason="dmarc_reject") == 1
        assert value(samples, "authmilter_messages_total", action="accept", reason="trusted_network") == 1
        assert total(samples, "authmilter_messages_total") == 4
        # Results as the A-R headers show them; the trusted-network message has none.
        assert value(samples, "authmilter_results_total", method="dmarc", result="pass") == 2
        assert value(samples, "authmilter_results_total", method="dmarc", result="fail") == 1
        assert value(samples, "authmilter_results_total", method="spf", result="pass") == 2
        assert value(samples, "authmilter_results_total", method="spf", result="fail") == 1
        assert value(samples, "authmilter_results_total", method="iprev", result="pass") == 2
        assert value(samples, "authmilter_results_total", method="iprev", result="permerror") == 1
        assert value(samples, "authmilter_results_total", method="dkim", result="none") == 3
        assert value(samples, "authmilter_eom_duration_seconds_count") == 4
        # DNS: the lookups of the first message went to the server, the third's came from the cache; together
        # they are what the log lines counted (dns_queries=, sent or answered from the cache, and dns_extra=, the
        # lookups asked early that no check then needed).
        assert value(samples, "authmilter_dns_queries_total", type="TXT", outcome="answer") >= 2
        assert value(samples, "authmilter_dns_queries_total", type="PTR", outcome="answer") == 1
        assert value(samples, "authmilter_dns_queries_total", type="PTR", outcome="nxdomain") == 1
        assert value(samples, "authmilter_dns_cache_hits_total", type="PTR") == 1
        logged = sum(int(n) for n in re.findall(r" dns_(?:queries|extra)=(\d+)(?= )", daemon.log_text()))
        network = total(samples, "authmilter_dns_queries_total")
        assert network + total(samples, "authmilter_dns_cache_hits_total") == logged
        assert total(samples, "authmilter_dns_query_duration_seconds_count") == network
        assert network <= dns.total_queries
        # Every connection was closed again; nothing failed.
        assert value(samples, "authmilter_connections_total") == 4
        assert value(samples, "authmilter_connections_open") == 0
        assert total(samples, "authmilter_errors_total") == 0
        assert total(samples, "authmilter_observer_failures_total") == 0
        assert_no_chosen_label(samples)
        with pytest.raises(urllib.error.HTTPError) as elsewhere:
            scrape(listen, "/")
        assert elsewhere.value.code == 404
        assert daemon.stop() == 0
    assert daemon.tracebacks() == []


def test_connections_open_counts_live_connections_and_drops(tmp_path, dns):
    listen = f"127.0.0.1:{free_port()}"
    with metrics_daemon(tmp_path, dns, listen=listen) as daemon:
        held = MilterClient(str(daemon.socket_path), timeout=30)
        held.negotiate()
        assert value(scrape(listen), "authmilter_connections_open") == 1
        dropped = MilterClient(str(daemon.socket_path), timeout=30)
        dropped.negotiate()
        dropped.sock.close()  # gone without a QUIT, as a crashing MTA would
        held.quit()
        samples = scrape_when(listen, lambda s: value(s, "authmilter_connections_open") == 0)
        assert value(samples, "authmilter_connections_open") == 0
        assert value(samples, "authmilter_connections_total") == 2
        assert daemon.stop() == 0


def test_reloads_are_counted_by_outcome_and_monitor_mode_shows_what_it_let_through(tmp_path, dns):
    listen = f"127.0.0.1:{free_port()}"
    with metrics_daemon(tmp_path, dns, listen=listen) as daemon:
        daemon.write_config(authserv_id=AUTHSERV_ID, extra={"metrics": {"listen": listen},
                                                             "policy": {"enforce": "no"}})
        daemon.reload()
        monitored = send(daemon, SPOOF_IP, "Q-MONITOR")
        assert monitored.reply == "accept"
        daemon.config_path.write_text("[spf]\nfail_action = maybe\n")
        daemon.signal(signal.SIGUSR1)
        daemon.wait_for_log("reload refused")
        # A new listen address takes a restart: the reload says so, and the metrics stay where they were.
        daemon.write_config(authserv_id=AUTHSERV_ID, extra={"metrics": {"listen": "127.0.0.1:1"},
                                                             "policy": {"enforce": "no"}})
        daemon.reload()
        assert (f"reload: [metrics] listen changed to 127.0.0.1:1; this takes a restart (still {listen})"
                in daemon.log_text())
        samples = scrape(listen)
        assert value(samples, "authmilter_config_reloads_total", outcome="success") == 2
        assert value(samples, "authmilter_config_reloads_total", outcome="failure") == 1
        # Counters survive a reload: the same registry goes on.
        assert value(samples, "authmilter_messages_total", action="accept", reason="monitor") == 1
        assert value(samples, "authmilter_overrides_total", override="monitor", reason="dmarc_reject") == 1
        assert_no_chosen_label(samples)
        assert daemon.stop() == 0


def test_failing_metrics_never_change_a_reply(tmp_path, dns):
    replies = {}
    for name, launcher_text in (("healthy", None), ("faulty", FAULTY_METRICS)):
        workdir = tmp_path / name
        workdir.mkdir()
        launcher = None
        if launcher_text:
            launcher = workdir / "faulty_metrics.py"
            launcher.write_text(launcher_text)
        listen = f"127.0.0.1:{free_port()}"
        with metrics_daemon(workdir, dns, listen=listen, launcher=launcher) as daemon:
            outcomes = [send(daemon, ip, f"Q{n}") for n, ip in enumerate((GOOD_IP, SPOOF_IP))]
            replies[name] = [(o.reply, o.reply_text, o.inserted(), o.changed()) for o in outcomes]
            samples = scrape(listen)
            assert daemon.stop() == 0
        if launcher_text:
            log = daemon.log_text()
            assert log.count("observer metrics failed; the reply is unchanged") == 2
            assert "DNS query hook failed" in log
            assert value(samples, "authmilter_observer_failures_total", observer="metrics") == 2
            assert total(samples, "authmilter_messages_total") == 0
        else:
            assert total(samples, "authmilter_observer_failures_total") == 0
    assert replies["faulty"] == replies["healthy"]
    assert replies["healthy"][0][0] == "accept" and "spf=pass" in replies["healthy"][0][2][-1][2]


def test_errors_are_counted_by_milter_stage(tmp_path, dns):
    launcher = tmp_path / "faulty_eom.py"
    launcher.write_text(FAULTY_EOM)
    listen = f"127.0.0.1:{free_port()}"
    with metrics_daemon(tmp_path, dns, listen=listen, launcher=launcher) as daemon:
        outcome = send(daemon, GOOD_IP)
        assert outcome.reply_text.startswith("451 4.3.0 ")
        samples = scrape(listen)
        assert value(samples, "authmilter_errors_total", stage="eom") == 1
        assert total(samples, "authmilter_errors_total") == 1
        assert daemon.stop() == 0


def test_ipv6_listen(tmp_path, dns):
    try:
        port = free_port("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    listen = f"[::1]:{port}"
    with metrics_daemon(tmp_path, dns, listen=listen) as daemon:
        send(daemon, GOOD_IP)
        daemon.wait_for_log("queue_id=Q-METRICS ")
        assert value(scrape(listen), "authmilter_messages_total", action="accept", reason="accept") == 1
        assert daemon.stop() == 0


def test_a_busy_listen_address_stops_the_start_with_exit_71(tmp_path, dns):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        daemon = metrics_daemon(tmp_path, dns, listen=listen)
        with pytest.raises(RuntimeError, match="exited with 71"):
            daemon.start()
    assert f"ERROR cannot listen on [metrics] listen {listen}: Address already in use" in daemon.log_text()
    assert not daemon.socket_path.exists()
