"""`authmilter reports send|show` as an operator runs them: exit statuses, the table, the SPF warning, and two
senders at once against one store sending each report exactly once."""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from authmilter.config import load_config
from authmilter.reports import fromspf
from authmilter.reports.store import open_store
from authmilter.resolver import Resolver
from testlab.dnsserver import DnsServer
from testlab.smtpsink import SmtpSink
from tests.reportsdata import DAY, DAY_END, accepted_fail, passing, rejected

ROOT = Path(__file__).resolve().parents[1]
AUTHMILTER = [sys.executable, "-m", "authmilter"]

ZONE = {
    "mx.example.net": [{"TXT": "v=spf1 ip4:127.0.0.1 -all"}],
    "nospf.example": [{"A": "127.0.0.1"}],
    "dead.example": [{"TXT": "v=spf1 -all"}],
    "neutral.example": [{"TXT": "v=spf1 ?all"}],
    "two.example": [{"TXT": "v=spf1 a -all"}, {"TXT": "v=spf1 mx -all"}],
    "redirect.example": [{"TXT": "v=spf1 redirect=mx.example.net"}],
    "include.example": [{"TXT": "v=spf1 include:mx.example.net ~all"}],
}


@pytest.fixture(scope="module")
def dns_server():
    with DnsServer(ZONE) as server:
        yield server


def write_config(path: Path, *, database: str, dns_server, smtp_port: int = 25, enabled: bool = True,
                 extra: str = "") -> Path:
    path.write_text(f"""[dns]
nameservers = {dns_server.address}
timeout = 1

[log]
level = info

[reports]
enabled = {"yes" if enabled else "no"}
database = {database}
org_name = Example Receiver
from_address = dmarc-reports@mx.example.net
grace_hours = 0
smtp_host = 127.0.0.1
smtp_port = {smtp_port}
smtp_timeout = 10
{extra}
""")
    return path


def authmilter(*args, timeout=120):
    return subprocess.run([*AUTHMILTER, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def yesterday() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))


def fill(cfg, observations, flushed_until):
    store = open_store(cfg.reports)
    try:
        counts = Counter(observations)
        store.add_counts("mx1", counts, flushed_until)
    finally:
        store.close()


@pytest.mark.parametrize("domain, warning", [
    ("mx.example.net", ""),
    ("redirect.example", ""),
    ("include.example", ""),
    ("nospf.example", "has no SPF record"),
    ("dead.example", "designates no host"),
    ("neutral.example", "designates no host"),
    ("two.example", "2 SPF records"),
])
def test_from_domain_spf_check(dns_server, tmp_path, domain, warning):
    cfg = load_config(write_config(tmp_path / "a.ini", database=str(tmp_path / "r.sqlite"), dns_server=dns_server,
                                   extra=""))
    import dataclasses

    cfg = dataclasses.replace(cfg, reports=dataclasses.replace(cfg.reports, from_address=f"dmarc@{domain}"))
    resolver = Resolver(cfg.dns)
    try:
        found = fromspf.check_from_spf(cfg, resolver.for_message())
    finally:
        resolver.close()
    assert (warning in found) if warning else found == ""


def test_send_warns_about_spf_and_reports_what_it_did(dns_server, tmp_path):
    with SmtpSink() as sink:
        ini = write_config(tmp_path / "a.ini", database=str(tmp_path / "r.sqlite"), dns_server=dns_server,
                           smtp_port=sink.port)
        ini.write_text(ini.read_text().replace("dmarc-reports@mx.example.net", "dmarc@dead.example"))
        cfg = load_config(ini)
        day = yesterday()
        fill(cfg, [passing(day=day)] * 3, flushed_until=time.time())
        done = authmilter("reports", "send", "--config", str(ini))
        assert done.returncode == 0, done.stderr
        assert done.stdout == "reports send: 1 sent\n"
        assert "the SPF record of dead.example designates no host" in done.stderr
        assert "report for example.com" in done.stderr and "sent (id" in done.stderr
        (received,) = sink.wait_for(1)
        assert received.mail_from == "dmarc@dead.example"
        # The hourly runs with nothing to send stay quiet.
        again = authmilter("reports", "send", "--config", str(ini))
        assert again.returncode == 0 and again.stdout == "reports send: nothing to send\n"
        assert "SPF" not in again.stderr


def test_show_prints_a_table(dns_server, tmp_path):
    ini = write_config(tmp_path / "a.ini", database=str(tmp_path / "r.sqlite"), dns_server=dns_server,
                       extra="suppress = other@example.com")
    cfg = load_config(ini)
    fill(cfg, [passing(rua=("mailto:rua@example.com", "mailto:other@example.com"))] * 3
         + [accepted_fail()] * 2 + [rejected("spammer.example")] * 4, flushed_until=DAY_END + 60)
    done = authmilter("reports", "show", "--config", str(ini), "--day", DAY)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["domain", "day", "rows", "messages", "pass", "fail", "destinations", "status"]
    assert lines[1].split() == ["example.com", DAY, "2", "5", "3", "2", "rua@example.com", "pending"]
    assert lines[2].split() == ["spammer.example", DAY, "1", "4", "0", "4", "rua@spammer.example", "not",
                                "triggered"]
    nothing = authmilter("reports", "show", "--config", str(ini), "--day", "2026-02-01")
    assert nothing.returncode == 0 and nothing.stdout == "no report rows for 2026-02-01\n"


@pytest.mark.parametrize("args, status, message", [
    (["--day", "2026-02-30"], 64, "no such day"),
    (["--day", "01/02/2026"], 64, "expected YYYY-MM-DD"),
    (["--day", "2999-01-01"], 64, "is not over yet"),
])
def test_usage_errors(dns_server, tmp_path, args, status, message):
    ini = write_config(tmp_path / "a.ini", database=str(tmp_path / "r.sqlite"), dns_server=dns_server)
    done = authmilter("reports", "send", "--config", str(ini), *args)
    assert done.returncode == status and message in done.stderr


def test_send_refuses_when_reports_are_off(dns_server, tmp_path):
    ini = write_config(tmp_path / "a.ini", database=str(tmp_path / "r.sqlite"), dns_server=dns_server,
                       enabled=False)
    done = authmilter("reports", "send", "--config", str(ini))
    assert done.returncode == 78 and "[reports] enabled" in done.stderr


def test_an_unreachable_store_is_try_again_later(dns_server, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    ini = write_config(tmp_path / "a.ini", database=str(blocker / "sub" / "r.sqlite"), dns_server=dns_server)
    done = authmilter("reports", "send", "--config", str(ini))
    assert done.returncode == 75 and "store is unavailable" in done.stderr


@pytest.fixture(scope="module")
def postgres():
    cluster_module = pytest.importorskip("testlab.postgres")
    pytest.importorskip("psycopg")
    try:
        cluster = cluster_module.PostgresCluster(lifetime=600)
    except RuntimeError as exc:  # no server binaries: `make deps` installs them
        pytest.skip(str(exc))
    with cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "r.sqlite")
    cluster = request.getfixturevalue("postgres")
    name = f"send_{os.getpid()}_{len(os.listdir(tmp_path))}"
    cluster.drop_database(name)
    return cluster.create_database(name)


def test_two_senders_at_once_send_each_report_exactly_once(dns_server, tmp_path, database):
    domains = [f"d{index:03d}.example" for index in range(120)]
    with SmtpSink() as sink:
        ini = write_config(tmp_path / "a.ini", database=database, dns_server=dns_server, smtp_port=sink.port)
        cfg = load_config(ini)
        day = yesterday()
        fill(cfg, [passing(domain, day=day) for domain in domains for _ in range(2)], flushed_until=time.time())
        senders = [subprocess.Popen([*AUTHMILTER, "reports", "send", "--config", str(ini)], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [process.communicate(timeout=240) for process in senders]
        assert [process.returncode for process in senders] == [0, 0], outputs
        received = sink.wait_for(len(domains), timeout=30)
        time.sleep(0.5)  # nothing more may arrive
        per_domain = Counter(_policy_domain(message.data) for message in sink.messages)
        assert per_domain == Counter({domain: 1 for domain in domains})
        assert len(received) == len(domains)
        sent = sum(int(out.split(" sent")[0].rsplit(" ", 1)[-1]) for out, _ in outputs if " sent" in out)
        assert sent == len(domains)


def _policy_domain(data: bytes) -> str:
    message = email.message_from_bytes(data, policy=email.policy.default)
    return " ".join(str(message["Subject"]).split()).split()[2]
