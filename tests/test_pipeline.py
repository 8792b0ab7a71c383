"""pipeline.evaluate: declared order, skipping, enabled flags, DNS accounting; then the whole functional core
end to end (FakeDns -> evaluate -> decide -> render -> parse back -> log line)."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace
from pathlib import Path

import dkim as dkimpy
import pytest

from authmilter import logline, policy, renderer
from authmilter.config import Config
from authmilter.context import Connection, Envelope, Header, Message, MessageContext
from authmilter.pipeline import (ORDERED_CHECKS, CheckSpec, PipelineError, evaluate, results_of, order_checks,
                                 skip_reason)
from authmilter.results import Action, Dnssec, Status
from testlab.fakedns import FakeDns
from tests.test_renderer import parse_back

# dkimpy stamps t= from the real clock when it signs, so the core is evaluated at the same moment.
NOW = time.time()
KEYS = Path(__file__).parent / "data" / "dkim" / "keys"


def cfg(**sections) -> Config:
    base = Config()
    return replace(base, **{name: replace(getattr(base, name), **keys) for name, keys in sections.items()})


def context(ip="192.0.2.1", helo="mail.example.org", mail_from="user@example.org", rcpts=("bob@example.net",),
            user=None, message=Message()) -> MessageContext:
    return MessageContext(Connection(ipaddress.ip_address(ip) if ip else None, helo=helo, authenticated_user=user),
                          Envelope(mail_from, rcpts, queue_id="4AbCd"), message)


# ---------------------------------------------------------------- ordering

def spec(name, needs=(), enabled=True, log=None, value=None):
    def run(inputs):
        if log is not None:
            log.append((name, {need: inputs.done[need] for need in needs}))
        return value if value is not None else f"{name}-result"
    return CheckSpec(name, tuple(needs), run, lambda cfg: enabled)


def test_real_table_order_respects_every_dependency():
    names = [s.name for s in ORDERED_CHECKS]
    assert names == ["relay", "iprev", "srs", "spf", "sender", "forwarder", "author_domain", "dkim", "dmarc",
                     "singletons", "arc"]
    for position, check in enumerate(ORDERED_CHECKS):
        assert set(check.needs) <= set(names[:position])


def test_order_follows_dependencies_not_declaration():
    ordered = order_checks([spec("dmarc", ["spf", "dkim"]), spec("dkim"), spec("spf")])
    assert [s.name for s in ordered] == ["dkim", "spf", "dmarc"]


@pytest.mark.parametrize("table,message", [
    ([spec("a", ["b"]), spec("b", ["a"])], "cycle"),
    ([spec("a", ["a"])], "cycle"),
    ([spec("a", ["b"]), spec("b", ["c"]), spec("c", ["a"]), spec("d")], "cycle"),
    ([spec("a", ["nosuch"])], "unknown"),
    ([spec("a"), spec("a")], "duplicate"),
])
def test_bad_tables_are_refused(table, message):
    with pytest.raises(PipelineError, match=message):
        order_checks(table)


def test_steps_receive_earlier_outputs_and_disabled_steps_give_none():
    log = []
    table = [spec("one", log=log), spec("two", enabled=False, log=log), spec("three", ["one", "two"], log=log)]
    evaluate(context(), FakeDns({}), cfg(trust={"networks": ()}), now=NOW, checks=table)
    assert log == [("one", {}), ("three", {"one": "one-result", "two": None})]


def test_outputs_become_results_fields():
    forwarder = CheckSpec("forwarder", (), lambda inputs: "network 192.0.2.0/24")
    results = evaluate(context(), FakeDns({}), cfg(trust={"networks": ()}), now=NOW,
                       checks=[forwarder, spec("internal_value")])
    assert [step.name for step in results.steps] == ["forwarder", "internal_value"]
    assert results.forwarder == "network 192.0.2.0/24"
    assert results.get("internal_value") == "internal_value-result"
    assert list(results.methods()) == []  # neither step is shown: nothing in the header or the DNSSEC summary


def test_a_check_that_raises_is_a_bug_and_is_not_swallowed():
    def broken(inputs):
        raise ZeroDivisionError("bug")
    with pytest.raises(ZeroDivisionError):
        evaluate(context(), FakeDns({}), cfg(trust={"networks": ()}), now=NOW,
                 checks=[CheckSpec("spf", (), broken)])


# ---------------------------------------------------------------- skipping

SKIPS = [
    ("loopback is trusted by default", dict(ip="127.0.0.1"), {}, "trusted_network"),
    ("ipv6 loopback", dict(ip="::1"), {}, "trusted_network"),
    ("v4-mapped client in a v4 network", dict(ip="::ffff:192.0.2.7"),
     {"trust": {"networks": (ipaddress.ip_network("192.0.2.0/24"),)}}, "trusted_network"),
    ("outside every network", dict(ip="198.51.100.1"), {}, ""),
    ("empty network list", dict(ip="127.0.0.1"), {"trust": {"networks": ()}}, ""),
    ("authenticated sender", dict(ip="198.51.100.1", user="alice"), {}, "authenticated"),
    ("authenticated, but not trusted by config", dict(ip="198.51.100.1", user="alice"),
     {"trust": {"authenticated": False}}, ""),
    ("no client IP", dict(ip=None), {}, ""),
]


@pytest.mark.parametrize("name,ctx_args,sections,expected", SKIPS, ids=[s[0] for s in SKIPS])
def test_skip_reason(name, ctx_args, sections, expected):
    ctx = context(**ctx_args)
    config = cfg(**sections)
    assert skip_reason(ctx.connection, config.trust) == expected
    log = []
    results = evaluate(ctx, FakeDns({}), config, now=NOW, checks=[spec("probe", log=log)])
    assert results.skipped == expected
    assert (log == []) is bool(expected), "a skipped message runs no check"


# ---------------------------------------------------------------- the real checks, end to end of the core

ZONE = {
    "example.org": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"], "MX": [(10, "mx.example.org")],
                    "A": ["192.0.2.10"]},
    "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject"]},
    "mail.example.org": {"A": ["192.0.2.1"], "TXT": ["v=spf1 a -all"]},
    "1.2.0.192.in-addr.arpa": {"PTR": ["mail.example.org"]},
    "nullmx.example": {"MX": [(0, ".")], "TXT": ["v=spf1 -all"]},
    "fwd.example.net": {"A": ["203.0.113.5"], "TXT": ["v=spf1 ip4:203.0.113.5 -all"], "MX": [(10, "fwd.example.net")]},
    "5.113.0.203.in-addr.arpa": {"PTR": ["fwd.example.net"]},
    "sel._domainkey.example.org": {"TXT": ["v=DKIM1; k=rsa; p=" + (KEYS / "rsa2048.pub.b64").read_text().strip()]},
}
UNCHECKED = cfg(trust={"networks": ()})


def signed_message(from_header: bytes = b"User <user@example.org>", sign: bool = True, tamper: bool = False):
    raw = (b"From: " + from_header + b"\r\nTo: bob@example.net\r\nSubject: hello\r\n"
           b"Message-ID: <1@example.org>\r\n\r\nHello Bob.\r\n")
    if sign:
        signature = dkimpy.sign(raw, b"sel", b"example.org", (KEYS / "rsa2048.key").read_bytes(),
                                include_headers=[b"from", b"to", b"subject", b"message-id"])
        raw = signature + raw
    if tamper:
        raw = raw.replace(b"Hello Bob.", b"Hello Eve.")
    head, body = raw.split(b"\r\n\r\n", 1)
    headers = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            last = headers.pop()
            headers.append(Header(last.name, last.value + b"\r\n" + line))
        else:
            name, value = line.split(b":", 1)
            headers.append(Header(name, value))
    return Message(tuple(headers), body)


def run_core(ctx: MessageContext, config: Config = UNCHECKED, dns: FakeDns | None = None):
    dns = dns or FakeDns(ZONE)
    results = evaluate(ctx, dns, config, now=NOW)
    verdict = policy.decide(results, ctx, config)
    value = renderer.render("mx.example.net", results)
    line = logline.format_line(ctx, results, verdict, 12.5)
    return results, verdict, parse_back(value), line


def test_core_all_pass():
    results, verdict, header, line = run_core(context(message=signed_message()))
    assert verdict.action is Action.ACCEPT
    methods = [(r.method, r.result) for r in header.results]
    assert methods == [("iprev", "pass"), ("spf", "pass"), ("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass")]
    props = {(r.method, p.type, p.name): p.value for r in header.results for p in r.properties}
    assert props[("spf", "smtp", "mailfrom")] == "user@example.org"
    assert props[("dkim", "header", "d")] == "example.org"
    assert props[("dmarc", "header", "from")] == "example.org"
    assert results.dnssec is Dnssec.INSECURE and results.dns_queries > 0
    for field in ("queue_id=4AbCd", "client_ip=192.0.2.1", "spf=pass", "dkim=pass", "dmarc=pass", "iprev=pass",
                  "action=accept", "dnssec=insecure", "ms=12.5", f"dns_queries={results.dns_queries}"):
        assert field in line.split(" ")


def test_core_spoofed_from_is_rejected_by_dmarc():
    ctx = context(ip="198.51.100.9", helo="spoofer.example", message=signed_message(tamper=True))
    results, verdict, header, line = run_core(ctx)
    assert (verdict.action, verdict.code, verdict.status, verdict.reason) == (Action.REJECT, "550", "5.7.1",
                                                                              "dmarc_reject")
    assert "DMARC policy of example.org" in verdict.text
    assert [(r.method, r.result) for r in header.results if r.method != "iprev"][:1] == [("spf", "fail")]
    assert ("dkim", "fail") in [(r.method, r.result) for r in header.results]
    assert ("dmarc", "fail") in [(r.method, r.result) for r in header.results]
    assert "action=reject" in line and "reason=dmarc_reject" in line and 'reply="550 5.7.1"' in line


def test_core_trusted_forwarder_with_srs_is_accepted_and_the_override_recorded():
    ctx = context(ip="203.0.113.5", helo="fwd.example.net",
                  mail_from="SRS0=HHHH=TT=example.org=user@fwd.example.net", message=signed_message(tamper=True))
    config = cfg(trust={"networks": ()}, forwarders={"hostnames": ("fwd.example.net",)})
    results, verdict, header, line = run_core(ctx, config)
    assert results.forwarder == "host fwd.example.net"
    assert (verdict.action, verdict.overridden) == (Action.ACCEPT, "trusted_forwarder")
    assert ("dmarc", "fail") in [(r.method, r.result) for r in header.results]
    assert "forwarder=\"host fwd.example.net\"" in line and "overridden=trusted_forwarder" in line
    assert "srs_original=user@example.org" in line


def test_core_postmaster_still_gets_the_spoof_labelled():
    ctx = context(ip="198.51.100.9", rcpts=("postmaster@example.net",), message=signed_message(tamper=True))
    results, verdict, header, line = run_core(ctx)
    assert (verdict.action, verdict.reason) == (Action.ACCEPT, "postmaster:dmarc_reject")
    assert ("dmarc", "fail") in [(r.method, r.result) for r in header.results]


def test_core_null_mx_sender_is_rejected():
    results, verdict, header, line = run_core(context(mail_from="someone@nullmx.example", message=signed_message()))
    assert (verdict.action, verdict.code, verdict.status) == (Action.REJECT, "550", "5.7.27")


def test_core_injected_from_adds_no_method():
    ctx = context(message=signed_message(from_header=b"<a@evil.example;dmarc=pass>", sign=False))
    results, verdict, header, line = run_core(ctx)
    assert [r.method for r in header.results].count("dmarc") == 1
    assert [r for r in header.results if r.method == "dmarc"][0].result != "pass"


def test_core_trusted_network_writes_none_and_logs_the_skip():
    results, verdict, header, line = run_core(context(ip="127.0.0.1", message=signed_message()), Config())
    assert header.results == [] and results.dns_queries == 0
    assert "skipped=trusted_network" in line and "action=accept" in line and "spf=-" in line


def test_core_dns_failure_is_temperror_and_the_operator_decides():
    dns = FakeDns(ZONE, timeout={"example.org", "_dmarc.example.org"})
    config = cfg(trust={"networks": ()}, spf={"temperror_action": Action.TEMPFAIL})
    results, verdict, header, line = run_core(context(message=signed_message()), config, dns)
    assert results.spf.mailfrom.status is Status.TEMPERROR
    assert (verdict.action, verdict.code, verdict.status) == (Action.TEMPFAIL, "451", "4.7.24")
    assert ("spf", "temperror") in [(r.method, r.result) for r in header.results]


def test_core_disabled_checks_do_not_appear():
    config = cfg(trust={"networks": ()}, iprev={"enabled": False}, dkim={"enabled": False},
                 dmarc={"enabled": False})
    results, verdict, header, line = run_core(context(message=signed_message()), config)
    assert [r.method for r in header.results] == ["spf", "spf"]
    assert (results.iprev, results.dkim, results.dmarc) == (None, None, None)
    assert "dkim=- dmarc=-" in line


def test_results_dnssec_is_the_weakest_of_the_checks():
    dns = FakeDns(ZONE, secure={"example.org", "_dmarc.example.org", "mail.example.org", "1.2.0.192.in-addr.arpa",
                                "sel._domainkey.example.org"})
    results = evaluate(context(message=signed_message()), dns, UNCHECKED, now=NOW)
    assert results.dnssec is Dnssec.SECURE
    dns = FakeDns(ZONE, secure={"example.org", "_dmarc.example.org", "mail.example.org"})
    assert evaluate(context(message=signed_message()), dns, UNCHECKED, now=NOW).dnssec is Dnssec.INSECURE


def test_results_is_frozen():
    with pytest.raises(AttributeError):
        results_of().skipped = "x"  # type: ignore[misc]
