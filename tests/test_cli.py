"""`authmilter check` and friends as an operator runs them: printed headers, the action line, exit statuses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from testlab.dnsserver import DnsServer, Fault

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'milter'}"}

ZONE = {
    "example.org": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "_dmarc.example.org": [{"TXT": "v=DMARC1; p=none"}],
    "mail.example.org": [{"A": "192.0.2.1"}, {"TXT": "v=spf1 a -all"}],
    "1.2.0.192.in-addr.arpa": [{"PTR": "mail.example.org"}],
    "spf-fail.example": [{"TXT": "v=spf1 -all exp=explain.spf-fail.example"}, {"A": "198.51.100.7"}],
    "explain.spf-fail.example": [{"TXT": "Not authorized to send as %{s}"}],
    "q.example": [{"TXT": "v=spf1 ~all"}, {"A": "198.51.100.8"}],
    "_dmarc.q.example": [{"TXT": "v=DMARC1; p=quarantine"}],
    "broken.example": [{"TXT": "v=spf1 -all"}],
}

CONFIG = """\
    [milter]
    authserv_id = mx.example.net
    [trust]
    networks =
    [spf]
    fail_action = reject
    temperror_action = tempfail
    """


@pytest.fixture(scope="module")
def dns():
    with DnsServer(ZONE, lifetime=600) as server:
        server.set_fault(Fault.SERVFAIL, "broken.example")
        yield server


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "authmilter.ini"
    path.write_text(textwrap.dedent(CONFIG))
    return path


def authmilter(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "authmilter", *args], input=stdin, capture_output=True,
                          timeout=120, env=ENV)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def check(dns, config, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return authmilter("check", "--resolver", dns.address, "--config", str(config), *args, stdin=stdin)


def header(stdout: str, name: str) -> str:
    """One printed header, unfolded."""
    lines = stdout.splitlines()
    for index, line in enumerate(lines):
        if line.startswith(name + ":"):
            value = line
            for cont in lines[index + 1:]:
                if not cont[:1] in (" ", "\t"):
                    break
                value += " " + cont.strip()
            return value
    raise AssertionError(f"no {name} header in:\n{stdout}")


MESSAGE = b"From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: hi\n\nHello.\n"


def test_pass_prints_headers_and_accept(dns, config, tmp_path):
    message = tmp_path / "msg.eml"
    message.write_bytes(MESSAGE)
    done = check(dns, config, "--ip", "192.0.2.1", "--helo", "mail.example.org", "--mail-from",
                 "alice@example.org", str(message))
    assert done.returncode == 0, done.stderr
    ar = header(done.stdout, "Authentication-Results")
    assert ar.startswith("Authentication-Results: mx.example.net;")
    assert "spf=pass" in ar and "smtp.mailfrom=alice@example.org" in ar
    assert "smtp.helo=mail.example.org" in ar
    assert "dmarc=pass" in ar
    assert header(done.stdout, "Received-SPF").startswith("Received-SPF: pass ")
    assert done.stdout.splitlines()[-1] == "action: accept"
    assert "queue_id=check" in done.stderr and "action=accept" in done.stderr  # the same log line as the milter


def test_message_from_stdin(dns, config):
    done = check(dns, config, "--ip", "192.0.2.1", "--helo", "mail.example.org", "--mail-from",
                 "alice@example.org", "-", stdin=MESSAGE)
    assert done.returncode == 0, done.stderr
    assert "header.from=example.org" in header(done.stdout, "Authentication-Results")


def test_without_message_the_author_is_the_envelope_sender(dns, config):
    done = check(dns, config, "--ip", "192.0.2.1", "--helo", "mail.example.org", "--mail-from",
                 "alice@example.org")
    assert done.returncode == 0, done.stderr
    ar = header(done.stdout, "Authentication-Results")
    assert "dmarc=pass" in ar and "header.from=example.org" in ar


@pytest.mark.parametrize("null", ["", "<>"])
def test_null_sender_is_checked_as_postmaster_at_helo(dns, config, null):
    done = check(dns, config, "--ip", "192.0.2.1", "--helo", "mail.example.org", "--mail-from", null)
    assert done.returncode == 0, done.stderr
    ar = header(done.stdout, "Authentication-Results")
    assert "spf=pass" in ar
    assert "postmaster@mail.example.org" in ar


def test_spf_fail_reject_exit_1_with_reply(dns, config):
    done = check(dns, config, "--ip", "192.0.2.1", "--helo", "mail.example.org", "--mail-from",
                 "x@spf-fail.example")
    assert done.returncode == 1, done.stderr
    action = done.stdout.splitlines()[-1]
    assert action.startswith("action: reject 550 5.7.23 ")
    assert "spf=fail" in header(done.stdout, "Authentication-Results")


def test_dns_failure_tempfail_exit_2(dns, config):
    done = check(dns, config, "--ip", "192.0.2.1", "--helo", "mail.example.org", "--mail-from",
                 "x@broken.example")
    assert done.returncode == 2, done.stderr
    assert done.stdout.splitlines()[-1].startswith("action: tempfail 451 4.7.")
    assert "spf=temperror" in header(done.stdout, "Authentication-Results")


def test_dmarc_quarantine_exit_3(dns, config):
    done = check(dns, config, "--ip", "192.0.2.1", "--helo", "mail.example.org", "--mail-from", "x@q.example")
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines()[-1].startswith("action: quarantine ")
    assert "dmarc=fail" in header(done.stdout, "Authentication-Results")


def test_authenticated_sender_is_not_checked(dns, config):
    done = check(dns, config, "--ip", "192.0.2.1", "--helo", "laptop", "--mail-from", "x@spf-fail.example",
                 "--authenticated", "alice")
    assert done.returncode == 0, done.stderr
    assert "spf=fail" not in done.stdout
    assert done.stdout.splitlines()[-1] == "action: accept"


def test_resolver_over_ipv6_loopback(config):
    try:
        server = DnsServer(ZONE, host="::1", lifetime=120)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        assert server.address.startswith("[::1]:")
        done = authmilter("check", "--resolver", server.address, "--config", str(config), "--ip", "192.0.2.1",
                          "--helo", "mail.example.org", "--mail-from", "alice@example.org")
        assert done.returncode == 0, done.stderr
        assert "spf=pass" in header(done.stdout, "Authentication-Results")
        assert server.total_queries > 0


@pytest.mark.parametrize("args, message", [
    ((), "the following arguments are required: --ip, --mail-from"),
    (("--ip", "not-an-ip", "--mail-from", "a@example.org"), "--ip: not an IP address: 'not-an-ip'"),
    (("--ip", "192.0.2.1", "--mail-from", "a@example.org", "--resolver", "dns.example"),
     "--resolver: not an IP address"),
    (("--ip", "192.0.2.1", "--mail-from", "a@example.org", "/nonexistent/message.eml"),
     "cannot read /nonexistent/message.eml: No such file or directory"),
    (("--ip", "192.0.2.1", "--mail-from", "a@example.org", "--frobnicate"),
     "unrecognized arguments: --frobnicate"),
])
def test_usage_errors_exit_64(args, message):
    done = authmilter("check", *args)
    assert done.returncode == 64
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_command_and_no_command_exit_64():
    assert authmilter("frobnicate").returncode == 64
    assert authmilter().returncode == 64


def test_help_exits_0():
    done = authmilter("check", "--help")
    assert done.returncode == 0
    assert "--mail-from" in done.stdout


def test_bad_config_exit_78(tmp_path):
    bad = tmp_path / "bad.ini"
    bad.write_text("[spf]\nfail_action = maybe\n")
    done = authmilter("check", "--config", str(bad), "--ip", "192.0.2.1", "--mail-from", "a@example.org")
    assert done.returncode == 78
    assert done.stderr == f"{bad}: [spf] fail_action: expected one of accept, reject, quarantine, got 'maybe'\n"
    done = authmilter("run", "--config", str(bad))
    assert done.returncode == 78
    assert done.stderr == f"{bad}: [spf] fail_action: expected one of accept, reject, quarantine, got 'maybe'\n"


def test_internal_error_exit_70_with_logged_traceback(dns, config):
    """A bug in our code (injected here by the test, not by the product) is logged, never a bare traceback."""
    script = textwrap.dedent(f"""\
        import sys
        import authmilter.pipeline as pipeline
        from authmilter.cli import main

        def evaluate(ctx, dns, cfg, *, now, **options):
            raise RuntimeError("injected fault")

        pipeline.evaluate = evaluate
        sys.exit(main(["check", "--resolver", {dns.address!r}, "--config", {str(config)!r}, "--ip", "192.0.2.1",
                       "--mail-from", "alice@example.org"]))
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 70
    assert done.stderr.startswith(f"authmilter check: configuration: {config}\nERROR internal error\nTraceback")
    assert "RuntimeError: injected fault" in done.stderr
    assert done.stdout == ""


# ---------------------------------------------------------------- where log lines go

def test_syslog_target_sends_mail_facility_datagrams(tmp_path, monkeypatch):
    import io
    import socket

    from authmilter import logsetup
    from authmilter.config import LogSection, LogTarget

    path = tmp_path / "log.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(10)
    monkeypatch.setattr(logsetup, "SYSLOG_SOCKET", str(path))
    try:
        logger = logsetup.configure(LogSection(target=LogTarget.SYSLOG))
        logger.info("queue_id=Q1 action=accept")
        datagram = receiver.recv(4096).decode()
        # <22> = facility mail (2) * 8 + severity info (6)
        assert datagram.rstrip("\x00") == f"<22>authmilter[{os.getpid()}]: INFO queue_id=Q1 action=accept"
    finally:
        logsetup.configure(LogSection(), stream=io.StringIO())
        receiver.close()


def test_syslog_unavailable_falls_back_to_stderr_and_says_so(tmp_path, monkeypatch):
    import io

    from authmilter import logsetup
    from authmilter.config import LogSection, LogTarget

    monkeypatch.setattr(logsetup, "SYSLOG_SOCKET", str(tmp_path / "absent.sock"))
    stream = io.StringIO()
    try:
        logger = logsetup.configure(LogSection(target=LogTarget.SYSLOG), stream=stream)
        logger.info("queue_id=Q2 action=accept")
        lines = stream.getvalue().splitlines()
        assert lines[0].startswith(f"WARNING cannot open syslog socket {tmp_path / 'absent.sock'}: ")
        assert lines[0].endswith("; logging to stderr instead")
        assert lines[1] == "INFO queue_id=Q2 action=accept"
    finally:
        logsetup.configure(LogSection(), stream=io.StringIO())
