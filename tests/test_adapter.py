"""The milter as Postfix sees it: a real `authmilter run` process, driven over the milter protocol.

Each daemon is a subprocess on a unix socket in a temporary directory (one test uses inet on loopback), with
[trust] networks empty and its DNS pointed at testlab/dnsserver.py. What is asserted is what Postfix and the
operator see: the header modifications and their order, the SMTP replies, quarantine, and the log lines.
"""

from __future__ import annotations

import grp
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import dkim
import pytest
from miltertest import constants as c

from authmilter.cli import parse_message
from authmilter.daemon import set_nodelay_on_listener
from testlab.milterclient import MilterClient
from testlab.daemonrunner import DaemonRunner
from testlab.dnsserver import DnsServer, Fault

ROOT = Path(__file__).resolve().parent.parent

ZONE = {
    "example.org": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}, {"MX": [10, "mail.example.org"]}],
    "_dmarc.example.org": [{"TXT": "v=DMARC1; p=none"}],
    "mail.example.org": [{"A": "192.0.2.1"}, {"TXT": "v=spf1 a -all"}],
    "1.2.0.192.in-addr.arpa": [{"PTR": "mail.example.org"}],
    "spf-fail.example": [{"TXT": "v=spf1 -all"}, {"A": "198.51.100.7"}],
    "q.example": [{"TXT": "v=spf1 ~all"}, {"A": "198.51.100.8"}],
    "_dmarc.q.example": [{"TXT": "v=DMARC1; p=quarantine"}],
    "broken.example": [{"TXT": "v=spf1 -all"}, {"A": "198.51.100.9"}],
    "v6.example": [{"TXT": "v=spf1 ip6:2001:db8::/32 -all"}, {"AAAA": "2001:db8::25"}],
}


# ---------------------------------------------------------------- a running daemon

def adapter_daemon(workdir: Path, config: str, *, launcher: Path | None = None,
                   lifetime: float = 120.0) -> DaemonRunner:
    """`authmilter run` (or `launcher`) with this module's INI; its stderr log is what the tests read."""
    return DaemonRunner(workdir, config=config, launcher=launcher, lifetime=lifetime)




def config_text(socket_spec: str, dns: DnsServer, extra: str = "") -> str:
    group = grp.getgrgid(os.getgid()).gr_name
    return textwrap.dedent(f"""\
        [milter]
        socket = {socket_spec}
        socket_group = {group}
        authserv_id = mx.example.net
        remove_authserv_ids = old-mx.example.net
        [dns]
        nameservers = {dns.address}
        timeout = 2
        [trust]
        networks =
        [srs]
        secrets = s3cret
        """) + textwrap.dedent(extra)


ENFORCING = """\
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
def milter(tmp_path_factory, dns):
    """One daemon for the read-only tests, on a unix socket whose directory does not exist yet."""
    workdir = tmp_path_factory.mktemp("milter")
    sock = workdir / "run" / "sub" / "authmilter.sock"
    daemon = adapter_daemon(workdir, config_text(f"unix:{sock}", dns, ENFORCING), lifetime=600).start()
    daemon.socket = str(sock)
    yield daemon
    daemon.stop()


def client(address) -> MilterClient:
    conn = MilterClient(address, timeout=20.0)
    conn.negotiate()
    return conn


def send(address, *, ip: str, rcpts=("user@example.net",), **message):
    """One whole transaction; the end-of-message Outcome, or the one of the step that ended it (final)."""
    conn = client(address)
    try:
        return conn.transaction(client_ip=ip, rcpts=rcpts, **message)
    finally:
        conn.quit()


def headers_of(raw: bytes) -> list[tuple[bytes, bytes]]:
    """Headers as Postfix hands them with SMFIP_HDR_LEADSPC: leading space kept, folding as bare LF."""
    headers, _ = parse_message(raw)
    return [(name, value.replace(b"\r\n", b"\n")) for name, value in headers]


def send_short(milter, sender: str, queue_id: str):
    """A two-header message from `sender` (also its MAIL FROM), from 192.0.2.1 (mail.example.org)."""
    raw = f"From: {sender}\r\nSubject: hi\r\n\r\nbody\r\n".encode()
    return send(milter.socket, ip="192.0.2.1", helo="mail.example.org", mail_from=sender,
                headers=headers_of(raw), body=b"body\r\n", queue_id=queue_id)


PLAIN = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hello\r\n\r\nHi Bob.\r\n"


# ---------------------------------------------------------------- negotiation and socket

def test_negotiation_asks_for_leading_space_bytes_and_macros(milter):
    conn = client(milter.socket)
    try:
        assert conn.protocol & c.SMFIP_HDR_LEADSPC
        assert conn.protocol & c.SMFIP_NR_HDR and conn.protocol & c.SMFIP_NR_BODY
        assert conn.protocol & c.SMFIP_NODATA and conn.protocol & c.SMFIP_NOUNKNOWN
        assert conn.actions == c.SMFIF_ADDHDRS | c.SMFIF_CHGHDRS | c.SMFIF_QUARANTINE | c.SMFIF_SETSYMLIST
        assert "{i}" in conn.symlists[c.SMFIM_EOM].split()
        assert "{auth_authen}" in conn.symlists[c.SMFIM_ENVFROM].split()
    finally:
        conn.quit()


def thread_cpus(pid: int) -> dict[int, set[int]]:
    """The CPUs each thread of a process may run on (Cpus_allowed_list, e.g. "0-2,5")."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # a thread that ended meanwhile
        listed = next(line.split(":", 1)[1].strip() for line in status.splitlines()
                      if line.startswith("Cpus_allowed_list:"))
        cpus: set[int] = set()
        for part in listed.split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
        found[int(task.name)] = cpus
    return found


def listening_line(daemon) -> str:
    return [line for line in daemon.log_text().splitlines() if "authmilter listening on" in line][-1]


def test_every_thread_runs_on_the_one_cpu_the_log_names(milter):
    conn = client(milter.socket)  # so that libmilter's thread for this connection exists too
    try:
        line = listening_line(milter)
        named = int(line.rsplit("on CPU ", 1)[1].rstrip(")"))
        threads = thread_cpus(milter.pid)
        assert len(threads) >= 3  # ours, libmilter's listener, the connection's
        assert set(map(frozenset, threads.values())) == {frozenset({named})}
        assert named in os.sched_getaffinity(0)
    finally:
        conn.quit()


def test_cpu_all_leaves_every_allowed_cpu_to_every_thread_and_a_reload_does_not_move_them(tmp_path, dns):
    text = config_text(f"unix:{tmp_path / 'm.sock'}", dns, ENFORCING)
    daemon = adapter_daemon(tmp_path, text.replace("[milter]\n", "[milter]\ncpu = all\n", 1)).start()
    try:
        assert listening_line(daemon).endswith(", on every CPU)")
        allowed = os.sched_getaffinity(0)
        assert all(cpus == allowed for cpus in thread_cpus(daemon.pid).values())
        daemon.config_path.write_text(text)  # back to the default, auto
        daemon.signal(signal.SIGUSR1)
        log = daemon.wait_for_log("reloaded configuration")
        assert "WARNING reload: [milter] cpu changed to auto; this takes a restart (still all)" in log
        assert all(cpus == allowed for cpus in thread_cpus(daemon.pid).values())
    finally:
        daemon.stop()


def test_unix_socket_has_configured_mode_and_group(milter):
    st = os.stat(milter.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == os.getgid()


# ---------------------------------------------------------------- what a delivered message gets

def test_pass_adds_ar_on_top_then_received_spf_and_logs_one_line(milter):
    result = send(milter.socket, ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                  headers=headers_of(PLAIN), body=b"Hi Bob.\r\n", queue_id="QPASS1")
    assert result.final.code == c.SMFIR_ACCEPT
    inserted = result.inserted()
    # Received-SPF first at index 0, then A-R at index 0: A-R ends up on top.
    assert [(index, name) for index, name, _ in inserted] == [(0, "Received-SPF"), (0, "Authentication-Results")]
    ar = inserted[1][2]
    assert ar.startswith(" mx.example.net;")
    assert "spf=pass" in ar and "smtp.mailfrom=alice@example.org" in ar
    assert "\r" not in ar  # libmilter wants LF folding
    assert inserted[0][2].startswith(" pass ")
    line = milter.wait_for_log("queue_id=QPASS1")
    [entry] = [ln for ln in line.splitlines() if "queue_id=QPASS1" in ln]
    assert entry.startswith("INFO ")
    assert "client_ip=192.0.2.1" in entry and "spf=pass" in entry and "action=accept" in entry


def test_ipv6_client(milter):
    raw = b"From: carol@v6.example\r\nSubject: hi\r\n\r\nbody\r\n"
    result = send(milter.socket, ip="2001:db8::25", helo="v6.example", mail_from="carol@v6.example",
                  headers=headers_of(raw), body=b"body\r\n", queue_id="QV6")
    assert result.final.code == c.SMFIR_ACCEPT
    [ar] = [v for _, n, v in result.inserted() if n == "Authentication-Results"]
    assert "spf=pass" in ar and "smtp.mailfrom=carol@v6.example" in ar
    log = milter.wait_for_log("queue_id=QV6")
    assert "client_ip=2001:db8::25" in [ln for ln in log.splitlines() if "queue_id=QV6" in ln][0]


def test_forged_ar_headers_claiming_us_are_removed_foreign_kept(milter):
    headers = [
        (b"Authentication-Results", b" mx.example.net; spf=pass smtp.mailfrom=ceo@example.org"),
        (b"Authentication-Results", b" other.example; dkim=pass header.d=example.org"),
        (b"Received", b" from somewhere"),
        (b"Authentication-Results", b" MX.Example.NET (forged\n\tcomment) ;\n\tdmarc=pass"),
        (b"Authentication-Results", b" old-mx.example.net; dkim=pass"),
        *headers_of(PLAIN),
    ]
    result = send(milter.socket, ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                  headers=headers, body=b"Hi Bob.\r\n", queue_id="QFORGE1")
    assert result.final.code == c.SMFIR_ACCEPT
    # Deleted highest index first; the foreign one (index 2) stays.
    assert result.changed() == [(4, "Authentication-Results", ""), (3, "Authentication-Results", ""),
                                (1, "Authentication-Results", "")]
    kinds = [change.kind for change in result.header_changes()]
    assert kinds.index("insert") > max(i for i, k in enumerate(kinds) if k == "change")


def test_authenticated_sender_skips_checks_but_forged_ar_still_removed(milter):
    headers = [(b"Authentication-Results", b" mx.example.net; dmarc=pass"), *headers_of(PLAIN)]
    result = send(milter.socket, ip="203.0.113.50", helo="laptop", mail_from="alice@example.org",
                  headers=headers, body=b"Hi Bob.\r\n", queue_id="QAUTH1", auth="alice")
    assert result.final.code == c.SMFIR_ACCEPT
    assert result.changed() == [(1, "Authentication-Results", "")]
    log = milter.wait_for_log("queue_id=QAUTH1")
    [entry] = [ln for ln in log.splitlines() if "queue_id=QAUTH1" in ln]
    assert "spf=pass" not in entry and "spf=fail" not in entry


def test_spf_fail_rejected_with_smtp_reply(milter):
    result = send_short(milter, "x@spf-fail.example", "QREJ1")
    assert result.final.code == c.SMFIR_REPLYCODE
    assert result.final.text.startswith("550 5.7.23 ")
    assert result.modifications == []  # nothing is added to a rejected message
    milter.wait_for_log("queue_id=QREJ1")
    assert "action=reject" in [ln for ln in milter.log_text().splitlines() if "queue_id=QREJ1" in ln][0]


def test_dns_failure_tempfails_when_configured(milter):
    result = send_short(milter, "x@broken.example", "QTEMP1")
    assert result.final.code == c.SMFIR_REPLYCODE
    assert result.final.text.startswith("451 4.7.")


def test_dmarc_quarantine_holds_the_message_with_headers(milter):
    result = send_short(milter, "x@q.example", "QQUAR1")
    assert result.final.code == c.SMFIR_ACCEPT
    assert result.quarantine_reason()
    [ar] = [value for _, name, value in result.inserted() if name == "Authentication-Results"]
    assert "dmarc=fail" in ar


def test_recipient_reject_for_forged_srs_bounce(milter):
    conn = client(milter.socket)
    try:
        conn.connect("unknown", "192.0.2.1")
        conn.helo("mail.example.org")
        conn.mail("")
        reply = conn.rcpt("SRS0=AAAA=AB=example.org=bob@mx.example.net", macros={"{i}": "QSRS1"})
        assert reply.code == c.SMFIR_REPLYCODE
        assert reply.text.startswith("550 5.7.1 ")
        assert conn.rcpt("postmaster@mx.example.net").code == c.SMFIR_CONTINUE
    finally:
        conn.quit()


def test_utf8_and_folded_headers_reach_dkim_as_signed(milter, dns, tmp_path):
    """simple/simple DKIM over raw UTF-8 and folded headers passes only if we rebuild the exact bytes."""
    key = subprocess.run(["openssl", "genrsa", "2048"], capture_output=True, check=True, timeout=60).stdout
    public = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=key, capture_output=True,
                            check=True, timeout=60).stdout
    import base64
    dns.add("sel._domainkey.example.org", [{"TXT": "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()}])
    raw = ("From: Alice Grüße <alice@example.org>\r\nTo: bob@example.net\r\n"
           "Subject: Grüße aus Köln,\r\n\tfolded  with\ttabs\r\n and spaces \r\n\r\n"
           "Hallo Bob.\r\n\r\n").encode("utf-8")
    signature = dkim.sign(raw, b"sel", b"example.org", key, canonicalize=(b"simple", b"simple"),
                          include_headers=[b"from", b"to", b"subject"])
    signed = signature + raw
    headers = headers_of(signed)
    body = signed.split(b"\r\n\r\n", 1)[1]
    result = send(milter.socket, ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                  headers=headers, body=body, queue_id="QDKIM1")
    [ar] = [value for _, name, value in result.inserted() if name == "Authentication-Results"]
    assert "dkim=pass" in ar, ar
    assert "dmarc=pass" in ar, ar


def test_set_nodelay_on_listener_sets_the_option_on_the_listening_socket():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert set_nodelay_on_listener(port) == 1
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listener.close()


# ---------------------------------------------------------------- daemons of their own

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_inet_socket_serves_with_nodelay(tmp_path, dns):
    port = _free_port()
    daemon = adapter_daemon(tmp_path, config_text(f"inet:{port}@127.0.0.1", dns)).start()
    try:
        assert "TCP_NODELAY set on 1 listening socket(s)" in daemon.log_text()
        result = send(("127.0.0.1", port), ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                      headers=headers_of(PLAIN), body=b"Hi Bob.\r\n", queue_id="QINET1")
        assert result.final.code == c.SMFIR_ACCEPT
        assert any(name == "Authentication-Results" for _, name, _ in result.inserted())
    finally:
        assert daemon.stop() == 0


def test_stale_socket_is_replaced_and_sigterm_stops_cleanly(tmp_path, dns):
    sock = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()  # the file stays, nobody listens: what a killed process leaves behind
    daemon = adapter_daemon(tmp_path, config_text(f"unix:{sock}", dns)).start()
    result = send(str(sock), ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                  headers=headers_of(PLAIN), body=b"Hi Bob.\r\n", queue_id="QSTALE1")
    assert result.final.code == c.SMFIR_ACCEPT
    assert daemon.stop() == 0
    log = daemon.log_text()
    assert "SIGTERM received: stopping" in log and "authmilter stopped" in log
    assert "Traceback" not in log
    assert not sock.exists()


def test_second_instance_refuses_to_steal_a_live_socket(milter, tmp_path, dns):
    daemon = adapter_daemon(tmp_path, config_text(f"unix:{milter.socket}", dns))
    done = subprocess.run([sys.executable, "-m", "authmilter", "run", "--config", str(daemon.config_path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'milter'}"})
    assert done.returncode == 71
    assert "another process is already listening" in done.stderr
    assert os.path.exists(milter.socket)


def test_sigusr1_reload_applies_to_new_messages_only(tmp_path, dns):
    sock = tmp_path / "reload.sock"
    daemon = adapter_daemon(tmp_path, config_text(f"unix:{sock}", dns)).start()
    try:
        before = client(str(sock))
        before.connect("unknown", "192.0.2.1")
        before.helo("mail.example.org")
        before.mail("alice@example.org")  # this transaction started under the old config
        daemon.config_path.write_text(config_text(f"unix:{sock}", dns).replace(
            "authserv_id = mx.example.net", "authserv_id = mx2.example.net"))
        daemon.signal(signal.SIGUSR1)
        daemon.wait_for_log("reloaded configuration")
        before.rcpt("bob@example.net")
        before.headers(headers_of(PLAIN))
        before.body(b"Hi Bob.\r\n")
        old = before.eom(macros={"{i}": "QREL1"})
        before.quit()
        [old_ar] = [v for _, n, v in old.inserted() if n == "Authentication-Results"]
        assert old_ar.startswith(" mx.example.net;")
        new = send(str(sock), ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                   headers=headers_of(PLAIN), body=b"Hi Bob.\r\n", queue_id="QREL2")
        [new_ar] = [v for _, n, v in new.inserted() if n == "Authentication-Results"]
        assert new_ar.startswith(" mx2.example.net;")

        # A broken file on reload is reported precisely, and the running configuration stays.
        daemon.config_path.write_text(config_text(f"unix:{sock}", dns).replace("timeout = 2", "timeout = soon"))
        daemon.signal(signal.SIGUSR1)
        log = daemon.wait_for_log("reload refused")
        assert (f"ERROR reload refused, keeping the running configuration: {daemon.config_path}: [dns] timeout: "
                f"expected a number, got 'soon'") in log
        kept = send(str(sock), ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                    headers=headers_of(PLAIN), body=b"Hi Bob.\r\n", queue_id="QREL3")
        [kept_ar] = [v for _, n, v in kept.inserted() if n == "Authentication-Results"]
        assert kept_ar.startswith(" mx2.example.net;")

        # SIGHUP reloads too (libmilter would stop on it; Python's main thread gets it first).
        daemon.config_path.write_text(config_text(f"unix:{sock}", dns).replace(
            "authserv_id = mx.example.net", "authserv_id = mx3.example.net"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("reloaded configuration from", count=2)
        hup = send(str(sock), ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                   headers=headers_of(PLAIN), body=b"Hi Bob.\r\n", queue_id="QREL4")
        [hup_ar] = [v for _, n, v in hup.inserted() if n == "Authentication-Results"]
        assert hup_ar.startswith(" mx3.example.net;")
    finally:
        assert daemon.stop() == 0


FAULTY_LAUNCHER = '''\
"""Runs the real daemon with one injected fault: the pipeline raises for Subject: explode."""
import sys
import authmilter.pipeline as pipeline
from authmilter.cli import main

real_evaluate = pipeline.evaluate

def evaluate(ctx, dns, cfg, *, now, **options):
    if any(h.value_text == "explode" for h in ctx.message.get_all("Subject")):
        raise RuntimeError("injected fault")
    return real_evaluate(ctx, dns, cfg, now=now, **options)

pipeline.evaluate = evaluate
sys.exit(main(sys.argv[1:]))
'''

EXPLODING = (b"Authentication-Results", b" mx.example.net; dmarc=pass"), (b"From", b" alice@example.org"), \
    (b"Subject", b" explode")


@pytest.mark.parametrize("error_action", ["tempfail", "accept"])
def test_internal_error_answers_error_action_and_logs_queue_id(tmp_path, dns, error_action):
    launcher = tmp_path / "faulty.py"
    launcher.write_text(FAULTY_LAUNCHER)
    sock = tmp_path / "faulty.sock"
    config = config_text(f"unix:{sock}", dns).replace("[dns]", f"error_action = {error_action}\n[dns]")
    daemon = adapter_daemon(tmp_path, config, launcher=launcher).start()
    try:
        result = send(str(sock), ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                      headers=list(EXPLODING), body=b"x\r\n", queue_id="QERR1")
        if error_action == "tempfail":
            assert result.final.code == c.SMFIR_REPLYCODE
            assert result.final.text.startswith("451 4.3.0 ")
        else:
            assert result.final.code == c.SMFIR_ACCEPT
            assert result.changed() == [(1, "Authentication-Results", "")]  # still never passed on under our name
        log = daemon.wait_for_log("RuntimeError: injected fault")
        assert "ERROR queue_id=QERR1 internal error in eom stage" in log
        assert "Traceback" in log
        # The process keeps serving: the next message is judged normally.
        after = send(str(sock), ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                     headers=headers_of(PLAIN), body=b"Hi Bob.\r\n", queue_id="QERR2")
        assert after.final.code == c.SMFIR_ACCEPT
    finally:
        assert daemon.stop() == 0


def _capped_message():
    filler = [(b"X-Filler", b" " + b"x" * 400) for _ in range(5)]  # 2 KB of headers: past the 1 KB cap
    # The From lies past the cap: without the header-limit result DMARC would claim "no From".
    plain = headers_of(PLAIN)
    return [plain[1], *filler, plain[0], (b"Authentication-Results", b" mx.example.net; dkim=pass")]


def test_header_cap_rejects_by_default_with_552_and_logs_the_reason(tmp_path, dns):
    sock = tmp_path / "cap.sock"
    config = config_text(f"unix:{sock}", dns).replace("[dns]", "max_header_bytes = 1024\n[dns]")
    daemon = adapter_daemon(tmp_path, config).start()
    try:
        result = send(str(sock), ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                      headers=_capped_message(), body=b"Hi Bob.\r\n", queue_id="QCAP0")
        assert result.final.code == c.SMFIR_REPLYCODE
        assert result.final.text.startswith("552 5.3.4 Message header size exceeds limit")
        log = daemon.wait_for_log("queue_id=QCAP0")
        line = next(line for line in log.splitlines() if "queue_id=QCAP0" in line)
        assert "action=reject" in line and "reason=header_limit" in line
        assert "Traceback" not in log
    finally:
        assert daemon.stop() == 0


def test_header_cap_accept_records_why_and_still_removes_forged_ar_past_the_cap(tmp_path, dns):
    sock = tmp_path / "cap.sock"
    config = config_text(f"unix:{sock}", dns).replace(
        "[dns]", "max_header_bytes = 1024\nheader_limit_action = accept\n[dns]")
    daemon = adapter_daemon(tmp_path, config).start()
    try:
        result = send(str(sock), ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                      headers=_capped_message(), body=b"Hi Bob.\r\n", queue_id="QCAP1")
        assert result.final.code == c.SMFIR_ACCEPT
        assert result.changed() == [(1, "Authentication-Results", "")]
        [ar] = [v for _, n, v in result.inserted() if n == "Authentication-Results"]
        assert "spf=pass" in ar
        assert "dkim=permerror (header limit)" in ar
        assert "dmarc=permerror (header limit" in ar
        assert "no From" not in ar and "From header" not in ar
        log = daemon.wait_for_log("queue_id=QCAP1")
        assert "Traceback" not in log
    finally:
        assert daemon.stop() == 0


def test_undecodable_header_name_and_helo_do_not_stall_the_mta(milter):
    """pymilter decodes these in C before our code runs; the message must still get its answer."""
    conn = client(milter.socket)
    try:
        conn.connect("unknown", "192.0.2.1")
        conn.helo(b"bad\xff.example")
        conn.mail("alice@example.org")
        conn.rcpt("bob@example.net", macros={"{i}": "QBADNAME"})
        conn.headers([(b"X-\xff\xfe", b" v"), (b"X-Value", b" \xc3\x28\xa0\xa1"), *headers_of(PLAIN)])
        conn.body(b"Hi Bob.\r\n")
        result = conn.eom(macros={"{i}": "QBADNAME"})
    finally:
        conn.quit()
    assert result.final.code == c.SMFIR_ACCEPT
    [ar] = [v for _, n, v in result.inserted() if n == "Authentication-Results"]
    assert "spf=pass" in ar and "smtp.mailfrom=alice@example.org" in ar
    milter.wait_for_log("queue_id=QBADNAME")
