"""Hostile input: a corpus of malformed messages through the real daemon, and property tests of the judge.

Through the daemon (tests/hostile/corpus.py over the milter protocol, testlab.milterclient): every message gets a
final reply (never the internal-error 451 4.3.0), the log gains no traceback and one line per message, and the
Authentication-Results header we insert parses back with authres, carries our authserv-id, has exactly the
methods the input calls for and no result the sender smuggled in (no injected dmarc=pass). The corpus runs against
a monitor-mode daemon (every message accepted, so every header can be read) and an enforcing one.

Offline (hypothesis): random header names and values, bodies and envelopes through `judge.judge`, the function
the milter and `authmilter check` share, with FakeDns: the rendered header always parses, has no CR or LF except
our LF+TAB folding, is ASCII, and names exactly the method results our checks produced.
"""

from __future__ import annotations

import collections
import ipaddress
import signal
import time

import authres
import pytest
from hypothesis import HealthCheck, given, settings

from authmilter import judge
from authmilter.config import Config, DnsSection, TrustSection
from authmilter.context import Connection, Envelope, Header, Message, MessageContext
from authmilter.results import Action
from testlab.milterclient import MilterClient, ProtocolError
from testlab.daemonrunner import LEVELS, DaemonRunner
from testlab.dnsserver import DnsServer
from testlab.fakedns import FakeDns
from tests.hostile import corpus, signing, strategies

AUTHSERV_ID = "mx.hostile.example"
METHODS = {"iprev", "spf", "dkim", "dmarc"}
INTERNAL_ERROR = "4.3.0"


# ================================================================ through the daemon

@pytest.fixture(scope="module")
def dns_server():
    with DnsServer(corpus.ZONE, lifetime=280) as server:
        yield server


@pytest.fixture(scope="module", params=["monitor", "enforce"])
def daemon(request, dns_server, tmp_path_factory):
    enforce = "no" if request.param == "monitor" else "yes"
    extra = {"policy": {"enforce": enforce}}
    runner = DaemonRunner(tmp_path_factory.mktemp(f"hostile-{request.param}"), dns_server=dns_server,
                          authserv_id=AUTHSERV_ID, extra=extra, lifetime=270)
    runner.mode = request.param
    runner.extra_enforce = enforce
    with runner:
        yield runner
        assert runner.running, f"the daemon died:\n{runner.log_text()[-3000:]}"
        status = runner.stop()
    assert status == 0, runner.log_text()[-3000:]


def send(daemon: DaemonRunner, case: corpus.Case, queue_id: str, timeout: float = 20.0):
    with MilterClient(str(daemon.socket_path), timeout=timeout) as client:
        client.negotiate()
        return client.transaction(client_ip=case.client_ip, helo=case.helo, mail_from=case.mail_from,
                                  rcpts=list(case.rcpts), headers=list(case.headers), body=case.body,
                                  queue_id=queue_id)


def parse_ar(value: str) -> authres.AuthenticationResultsHeader:
    return authres.AuthenticationResultsHeader.parse("Authentication-Results:" + value)


def assert_header_clean(value: str) -> None:
    assert value.startswith(" "), repr(value[:40])
    unfolded = value.replace("\n\t", " ")
    assert "\r" not in unfolded and "\n" not in unfolded, repr(value)
    assert unfolded.isascii() and unfolded.isprintable(), repr(value)


def queue_id_for(case: corpus.Case, mode: str) -> str:
    return f"H{mode[0].upper()}{corpus.CASES.index(case):03d}"


def corpus_params():
    for case in corpus.CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.known_bug)] if case.known_bug else []
        yield pytest.param(case, id=case.name, marks=marks)


def assert_log_lines_are_ours(log: str) -> None:
    """Every line is one of our log records: no traceback, no bare line a library printed past our logger."""
    stray = [line for line in log.splitlines() if line and not line.startswith(LEVELS)]
    assert not stray, "\n".join(stray[:20])


def outside_comments_and_quotes(value: str) -> str:
    """The header text with its comments and quoted strings removed: what a reader takes as results."""
    out, depth, quoted, escaped = [], 0, False, False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth == 0 and ch == '"':
            quoted = True
        elif depth == 0:
            out.append(ch)
    return "".join(out)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(corpus_params()))
def test_corpus_through_the_daemon(daemon, case):
    queue_id = queue_id_for(case, daemon.mode)
    log_before = len(daemon.log_text())
    if case.dropped_by_libmilter:
        # libmilter ends the connection before our code sees anything (Postfix would then apply
        # milter_default_action). The daemon must log nothing odd and live on.
        with pytest.raises((ProtocolError, OSError)):
            send(daemon, case, queue_id)
        control = send(daemon, corpus.CASES[1], queue_id + "c")
        assert control.reply == "accept"
        assert daemon.running
        assert_log_lines_are_ours(daemon.log_text()[log_before:])
        return

    # No milter reply here takes seconds: a known bug needs no long wait to show itself.
    outcome = send(daemon, case, queue_id, timeout=5.0 if case.known_bug else 20.0)
    log = daemon.log_text()[log_before:]
    assert_log_lines_are_ours(log)
    assert f"queue_id={queue_id} " in log
    assert INTERNAL_ERROR not in outcome.reply_text, outcome
    if daemon.mode == "monitor":
        assert outcome.reply == "accept", outcome
    else:
        assert outcome.reply in ("accept", "replycode", "reject", "tempfail"), outcome
    if outcome.reply != "accept":
        assert outcome.reply_text[:1] in ("4", "5") and not outcome.modifications
        return

    [value] = outcome.added_values("Authentication-Results")
    assert_header_clean(value)
    header = parse_ar(value)
    assert header.authserv_id == AUTHSERV_ID
    counts = collections.Counter(result.method for result in header.results)
    expected = {"iprev": case.expect.iprev, "spf": case.expect.spf, "dkim": case.expect.dkim, "dmarc": 1}
    assert dict(counts) == expected, value
    [dmarc] = [result for result in header.results if result.method == "dmarc"]
    if case.expect.dmarc is not None:
        assert dmarc.result == case.expect.dmarc, value
    if case.expect.injected:
        assert dmarc.result != "pass", value
        assert "dmarc=pass" not in outside_comments_and_quotes(value), value
    for received_spf in outcome.added_values("Received-SPF"):
        assert_header_clean(received_spf)

    # Incoming A-R headers claiming our id are deleted (RFC 8601 §5), highest index first; others are kept.
    forged = [i for i, (name, v) in enumerate(
        [(n, v) for n, v in case.headers if n.strip().lower() == b"authentication-results"], start=1)
        if v.strip().startswith(AUTHSERV_ID.encode())]
    deleted = [c.index for c in outcome.header_changes() if c.kind == "change" and c.value == ""]
    assert deleted == sorted(forged, reverse=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("helo, header_name", [(b"h\xffelo.example", b"X-Fine"), (b"mail.example.org", b"X-\xff\xfe")],
                         ids=["HELO", "header name"])
def test_bytes_pymilter_cannot_decode_still_get_a_final_reply(daemon, helo, header_name):
    """pymilter decodes the HELO and header names as strict UTF-8 before our code runs. Whatever it then does
    with the failure, the message must still get its end-of-message answer promptly (a regression test for a
    hang until the MTA's timeout) and a header that parses."""
    case = corpus.Case("undecodable", corpus.BASE + ((header_name, b" v"),), helo=helo)
    outcome = send(daemon, case, "HUNDEC", timeout=10.0)
    assert outcome.reply in ("accept", "replycode")
    if outcome.reply == "accept":
        [value] = outcome.added_values("Authentication-Results")
        assert parse_ar(value).authserv_id == AUTHSERV_ID


@pytest.mark.timeout(60)
def test_hostile_connection_steps(daemon):
    """Protocol-level oddities a broken or hostile MTA might send: no MAIL before headers, an abort in the middle,
    several transactions on one connection, EOM with nothing at all. Every EOM still gets a final reply."""
    log_before = len(daemon.log_text())
    headers = list(corpus.BASE)
    with MilterClient(str(daemon.socket_path), timeout=30) as client:
        client.negotiate()
        first = client.transaction(client_ip=corpus.CLIENT_IP, helo=corpus.HELO, mail_from="alice@example.org",
                                   rcpts=["bob@example.net"], headers=headers, body=b"x\r\n", queue_id="HSTEP1")
        assert first.reply == "accept"
        # An aborted transaction, then a new one on the same connection: nothing of the first leaks in.
        client.mail("m@evil.example", macros={"{mail_addr}": "m@evil.example"})
        client.header(b"From", b" m@evil.example")
        client.abort()
        second = client.transaction(client_ip=corpus.CLIENT_IP, helo=corpus.HELO, mail_from="",
                                    rcpts=["bob@example.net"], headers=headers, body=b"", queue_id="HSTEP2",
                                    connect=False)
        assert second.reply in ("accept", "replycode")
    log = daemon.log_text()[log_before:]
    assert_log_lines_are_ours(log)
    assert "queue_id=HSTEP1 " in log and "queue_id=HSTEP2 " in log


@pytest.mark.timeout(60)
def test_sighup_reload_during_hostile_traffic_keeps_serving(daemon):
    """SIGHUP is a reload (not libmilter's "stop"): the daemon keeps answering."""
    daemon.write_config(authserv_id=AUTHSERV_ID, extra={"policy": {"enforce": daemon.extra_enforce}})
    before = daemon.log_text().count("reloaded configuration")
    daemon.signal(signal.SIGHUP)
    assert daemon.wait_for_log(lambda text: text.count("reloaded configuration") > before, 15)
    outcome = send(daemon, corpus.CASES[0], "HSIGHUP")
    assert outcome.reply == "accept"
    assert daemon.running


# ================================================================ offline, property-based

FAKE_ZONE = {
    "example.org": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"], "MX": [(10, "mail.example.org")]},
    "mail.example.org": {"A": ["192.0.2.1"]},
    "1.2.0.192.in-addr.arpa": {"PTR": ["mail.example.org"]},
    "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject"]},
    signing.key_name("example.org"): {"TXT": [signing.key_record()]},
    "evil.example": {"TXT": ["v=spf1 exp=x.evil.example -all"]},
    "x.evil.example": {"TXT": ["bad\r\n\tdmarc=pass; %{l} \x00"]},
    "_dmarc.evil.example": {"TXT": ["v=DMARC1; p=none;\r\ndmarc=pass"]},
}
CONFIG = Config(dns=DnsSection(), trust=TrustSection(networks=()))


def produced(judgement) -> collections.Counter:
    """(method, result) pairs our checks produced, from the Results themselves."""
    results = judgement.results
    entries = []
    for result in (results.iprev, results.spf, results.dkim, results.dmarc):
        if result is not None:
            entries.extend(result.ar_entries())
    return collections.Counter((e.method, e.result) for e in entries)


@pytest.mark.timeout(120)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ctx=strategies.context)
def test_rendered_header_always_parses_and_names_only_what_we_produced(ctx):
    judgement = judge.judge(ctx, FakeDns(FAKE_ZONE), CONFIG, AUTHSERV_ID, now=time.time())
    assert judgement.verdict.action in tuple(Action)
    value = judgement.ar_value
    assert_header_clean(value)
    header = parse_ar(value)
    assert header.authserv_id == AUTHSERV_ID
    parsed = collections.Counter((r.method, r.result) for r in header.results)
    assert not judgement.results.skipped  # no trusted network, no authenticated user: every check runs
    assert {method for method, _ in parsed} <= METHODS
    assert parsed == produced(judgement), value
    if judgement.received_spf:
        assert "\n" not in judgement.received_spf and "\r" not in judgement.received_spf
        assert judgement.received_spf.isascii()


@pytest.mark.parametrize("authserv_id", [
    "mx.example.org",
    "MX.Example.Org.",
    "mx-1.example.org",
    "alice@example.org",
    "Alice <alice@example.org>",
    "mx example.org",
    "mx;dmarc=pass",
    "mx(comment)",
    '"mx"',
])
def test_authserv_id_from_config_is_refused_or_renders_a_parseable_header(tmp_path, authserv_id):
    """An operator's typo in authserv_id must be refused at start-up (file, section, key, reason), or give a
    header that parses back with the same id: never a header no reader understands."""
    from authmilter.config import load_config
    from authmilter.errors import ConfigError

    path = tmp_path / "authmilter.ini"
    path.write_text(f"[milter]\nauthserv_id = {authserv_id}\n")
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert "[milter] authserv_id" in str(exc)
        return
    ctx = MessageContext(Connection(ipaddress.ip_address("192.0.2.1"), "", "mail.example.org"),
                         Envelope("alice@example.org", ("bob@example.net",), "Q"),
                         Message((Header(b"From", b" alice@example.org"),)))
    judgement = judge.judge(ctx, FakeDns(FAKE_ZONE), cfg, cfg.authserv_id, now=time.time())
    assert_header_clean(judgement.ar_value)
    assert parse_ar(judgement.ar_value).authserv_id.lower().rstrip(".") == authserv_id.lower().rstrip(".")
