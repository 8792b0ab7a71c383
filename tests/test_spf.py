"""SPF check (RFC 7208): tables over FakeDns, from the results a reader of the header and the log sees."""

from __future__ import annotations

import ipaddress
import re
import threading

import pytest
import spf as pyspf

from authmilter.checks.spf import SpfResult, check_spf
from authmilter.renderer import received_spf_value as received_spf_header
from authmilter.config import SpfSection
from authmilter.context import Connection, Envelope
from authmilter.results import Dnssec, Status
from testlab.fakedns import FakeDns

ZONE = {
    "example.org": {"TXT": ["v=spf1 ip4:192.0.2.0/24 ip6:2001:db8:1::/48 -all exp=exp.example.org",
                            "google-site-verification=abc"]},
    "exp.example.org": {"TXT": ["%{i} may not send for %{s}"]},
    "soft.example.org": {"TXT": ["v=spf1 ip4:192.0.2.1 ~all"]},
    "neutral.example.org": {"TXT": ["v=spf1 ?all"]},
    "empty.example.org": {"TXT": ["v=spf1"]},
    "norecord.example.org": {"TXT": ["just some text"], "A": ["192.0.2.1"]},
    "syntax.example.org": {"TXT": ["v=spf1 ip4:192.0.2.300 -all"]},
    "two.example.org": {"TXT": ["v=spf1 -all", "v=spf1 +all"]},
    "include.example.org": {"TXT": ["v=spf1 include:slow.example.org -all"]},
    "broken.example.org": {"TXT": ["v=spf1 a:servfail.example.org -all"]},
    "mx.example.org": {"TXT": ["v=spf1 mx -all"], "MX": [(10, "mail.example.org")]},
    "mail.example.org": {"TXT": ["v=spf1 a -all"], "A": ["192.0.2.1"], "AAAA": ["2001:db8:2::25"]},
    "v6.example.org": {"TXT": ["v=spf1 a:mail.example.org -all"]},
    "void2.example.org": {"TXT": ["v=spf1 a:nx1.example.org a:nx2.example.org ip4:192.0.2.1 -all"]},
    "void3.example.org": {"TXT": ["v=spf1 a:nx1.example.org a:nx2.example.org a:nx3.example.org "
                                  "ip4:192.0.2.1 -all"]},
    "ten.example.org": {"TXT": ["v=spf1 " + " ".join(f"a:h{i}.example.org" for i in range(9))
                                + " include:inc.example.org -all"]},
    "eleven.example.org": {"TXT": ["v=spf1 " + " ".join(f"a:h{i}.example.org" for i in range(10))
                                   + " include:inc.example.org -all"]},
    "inc.example.org": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    **{f"h{i}.example.org": {"A": ["198.51.100.99"]} for i in range(10)},
    "ptr.example.org": {"TXT": ["v=spf1 ptr ?all"]},
    "1.2.0.192.in-addr.arpa": {"PTR": ["loop.ptr.example.org", "good.ptr.example.org"]},
    "loop.ptr.example.org": {"CNAME": "loop2.ptr.example.org"},
    "loop2.ptr.example.org": {"CNAME": "loop.ptr.example.org"},
    "good.ptr.example.org": {"A": ["192.0.2.1"]},
    "ptronly.example.org": {"TXT": ["v=spf1 ptr:loop.ptr.example.org ?all"]},
    "secure.example": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
    "mixed.example": {"TXT": ["v=spf1 include:example.org -all"]},
    "helo.example.net": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "crlf.example.org": {"TXT": ["v=spf1 -all exp=crlfexp.example.org"]},
    "crlfexp.example.org": {"TXT": ["100%% wrong\r\nX-Injected: yes; (evil) \"quoted\""]},
    "evilmech.example.org": {"TXT": ['v=spf1 -include:x.example.org;(evil)"q" ?all']},
}
TIMEOUT = {"slow.example.org"}
SERVFAIL = {("servfail.example.org", "A")}
SECURE = {"secure.example", "mixed.example"}

IP_OK = "192.0.2.1"
IP_BAD = "198.51.100.7"
NO_HELO = SpfSection(check_helo=False)


def run(mail_from: str, ip: str | None = IP_OK, helo: str = "helo.example.net", cfg: SpfSection = NO_HELO,
        dns: FakeDns | None = None) -> SpfResult:
    conn = Connection(ipaddress.ip_address(ip) if ip else None, helo=helo)
    dns = dns or FakeDns(ZONE, timeout=TIMEOUT, servfail=SERVFAIL, secure=SECURE)
    return check_spf(conn, Envelope(mail_from), dns, cfg)


# ---------------------------------------------------------------- every result


@pytest.mark.parametrize("mail_from, ip, status, reason", [
    ("user@example.org", IP_OK, Status.PASS, ""),
    ("user@example.org", "2001:db8:1::5", Status.PASS, ""),
    ("user@example.org", IP_BAD, Status.FAIL, "matched -all"),
    ("user@soft.example.org", IP_BAD, Status.SOFTFAIL, "matched ~all"),
    ("user@neutral.example.org", IP_BAD, Status.NEUTRAL, "matched ?all"),
    ("user@empty.example.org", IP_BAD, Status.NEUTRAL, "no mechanism matched"),
    ("user@norecord.example.org", IP_OK, Status.NONE, "no SPF record"),
    ("user@nxdomain.example.org", IP_OK, Status.NONE, "no SPF record"),
    ("user@syntax.example.org", IP_OK, Status.PERMERROR, "Invalid IP4 address: ip4:192.0.2.300"),
    ("user@two.example.org", IP_OK, Status.PERMERROR, "Two or more type TXT spf records found."),
    ("user@include.example.org", IP_OK, Status.TEMPERROR, "DNS timeout for slow.example.org/TXT"),
    ("user@broken.example.org", IP_BAD, Status.TEMPERROR, "DNS SERVFAIL for servfail.example.org/A"),
    ("user@slow.example.org", IP_OK, Status.TEMPERROR, "DNS timeout for slow.example.org/TXT"),
    ("user@mx.example.org", IP_OK, Status.PASS, ""),
    ("user@mx.example.org", IP_BAD, Status.FAIL, "matched -all"),
    ("user@v6.example.org", "2001:db8:2::25", Status.PASS, ""),
    ("user@v6.example.org", "2001:db8:2::26", Status.FAIL, "matched -all"),
    ("user@[192.0.2.1]", IP_OK, Status.NONE, "address literal"),
    ("user@localhost", IP_OK, Status.NONE, "not a fully qualified domain name"),
    ("user@a..example.org", IP_OK, Status.NONE, "malformed domain"),
    ("user@" + "a" * 64 + ".example.org", IP_OK, Status.NONE, "malformed domain"),
    ("user@example.org", None, Status.NONE, "client address unknown"),
])
def test_mailfrom_results(mail_from, ip, status, reason):
    result = run(mail_from, ip)
    assert result.mailfrom.status is status
    assert result.mailfrom.reason == reason
    assert result.mailfrom.identity == "mailfrom"
    assert result.mailfrom.sender == mail_from
    entry, = result.ar_entries()
    assert (entry.method, entry.result) == ("spf", status.value)
    assert [(p.ptype, p.name, p.value) for p in entry.properties] == [("smtp", "mailfrom", mail_from)]
    assert entry.comment == f"dnssec={result.mailfrom.dnssec}" + (f"; {reason}" if reason else "")
    assert result.log_fields()["spf"] == status.value


@pytest.mark.parametrize("mail_from, sender, domain", [
    ("@example.org", "postmaster@example.org", "example.org"),      # RFC 7208 §4.3: no local-part
    ("example.org", "postmaster@example.org", "example.org"),
    ("a@b@example.org", "a@b@example.org", "example.org"),          # the domain follows the last "@"
    ("user@Example.ORG.", "user@Example.ORG", "Example.ORG"),
])
def test_sender_normalisation(mail_from, sender, domain):
    result = run(mail_from, IP_BAD)
    assert (result.mailfrom.sender, result.mailfrom.domain) == (sender, domain)
    assert result.mailfrom.status is Status.FAIL


def test_ipv4_mapped_client_is_checked_as_ipv4():
    conn = Connection(ipaddress.ip_address("::ffff:192.0.2.1"), helo="helo.example.net")
    env = Envelope("user@example.org")
    result = check_spf(conn, env, FakeDns(ZONE), NO_HELO)
    assert result.mailfrom.status is Status.PASS
    assert "client-ip=192.0.2.1;" in received_spf_header(result, conn, env, "mx.example.net")


# ---------------------------------------------------------------- limits (RFC 7208 §4.6.4)


@pytest.mark.parametrize("mail_from, status, reason", [
    ("user@void2.example.org", Status.PASS, ""),
    ("user@void3.example.org", Status.PERMERROR, "Void lookup limit of 2 exceeded"),
    ("user@ten.example.org", Status.PASS, ""),
    ("user@eleven.example.org", Status.PERMERROR, "Too many DNS lookups"),
])
def test_lookup_limits(mail_from, status, reason):
    result = run(mail_from, IP_OK)
    assert result.mailfrom.status is status
    assert result.mailfrom.reason == reason


def test_more_than_ten_mx_names_is_permerror():
    zone = {"many.example": {"TXT": ["v=spf1 mx -all"],
                             "MX": [(i, f"mx{i}.many.example") for i in range(11)]}}
    result = run("user@many.example", dns=FakeDns(zone))
    assert result.mailfrom.status is Status.PERMERROR
    assert result.mailfrom.reason == "More than 10 MX records returned"


def test_spent_dns_budget_is_temperror():
    dns = FakeDns(ZONE, max_queries=3)
    result = run("user@ten.example.org", dns=dns)
    assert result.mailfrom.status is Status.TEMPERROR
    assert "DNS budget for this message spent" in result.mailfrom.reason
    assert dns.deadline_expired


# ---------------------------------------------------------------- PTR names that fail (RFC 7208 §5.5)


def test_ptr_name_with_dns_error_is_skipped_not_temperror():
    # loop.ptr.example.org is a CNAME loop: skipped; good.ptr.example.org validates, so "ptr" matches.
    assert run("user@ptr.example.org", IP_OK).mailfrom.status is Status.PASS
    result = run("user@ptronly.example.org", IP_OK)
    assert result.mailfrom.status is Status.NEUTRAL
    assert result.mailfrom.reason == "matched ?all"


def test_pyspf_alone_returns_temperror_for_the_failing_ptr_name():
    """Why checks/spf.py overrides validated_ptrs: remove the override when this starts to fail."""
    from authmilter.checks import spf as ours

    token = ours._current.set(ours._Lookups(FakeDns(ZONE)))
    try:
        word, _code, _text = pyspf.query(i=IP_OK, s="user@ptronly.example.org", h="h.example").check()
    finally:
        ours._current.reset(token)
    assert word == "temperror"


def test_pyspf_never_uses_its_own_resolver():
    # Outside check_spf no DnsClient is bound: pyspf must not fall back to the system resolver.
    word, _code, text = pyspf.query(i=IP_OK, s="user@example.org", h="h.example").check()
    assert word == "temperror"
    assert "outside an SPF check" in text


def test_each_thread_uses_its_own_dns_client():
    zone_a = {"example.org": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]}}
    zone_b = {"example.org": {"TXT": ["v=spf1 -all"]}}
    results: dict[str, list[Status]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def worker(label, zone):
        barrier.wait()
        for _ in range(50):
            results[label].append(run("user@example.org", dns=FakeDns(zone)).mailfrom.status)

    threads = [threading.Thread(target=worker, args=("a", zone_a)),
               threading.Thread(target=worker, args=("b", zone_b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"a": [Status.PASS] * 50, "b": [Status.FAIL] * 50}


# ---------------------------------------------------------------- HELO and the null sender


@pytest.mark.parametrize("helo, status, reason", [
    ("helo.example.net", Status.PASS, ""),
    ("helo.example.net.", Status.PASS, ""),
    ("mail.example.org", Status.PASS, ""),
    ("nxdomain.example.net", Status.NONE, "no SPF record"),
    ("[192.0.2.1]", Status.NONE, "HELO is an address, not a domain"),
    ("[IPv6:2001:db8::1]", Status.NONE, "HELO address literal"),
    ("192.0.2.1", Status.NONE, "HELO is an address, not a domain"),
    ("OEMCOMPUTER", Status.NONE, "HELO not a fully qualified domain name"),
    ("", Status.NONE, "HELO no domain"),
    ("bad;helo.example.net", Status.NONE, "HELO malformed domain"),
])
def test_helo_identity(helo, status, reason):
    result = run("user@example.org", IP_OK, helo=helo, cfg=SpfSection(check_helo=True))
    assert result.mailfrom.status is Status.PASS
    assert result.helo is not None
    assert (result.helo.identity, result.helo.status, result.helo.reason) == ("helo", status, reason)
    assert result.helo.sender == f"postmaster@{helo.rstrip('.')}"
    _, helo_entry = result.ar_entries()
    assert helo_entry.result == status.value
    assert [(p.ptype, p.name, p.value) for p in helo_entry.properties] == [("smtp", "helo", helo.rstrip("."))]
    assert result.log_fields() == {"spf": "pass", "spf_helo": status.value, "spf_dnssec": "insecure"}


def test_helo_not_checked_when_disabled():
    result = run("user@example.org", IP_OK)
    assert result.helo is None
    assert len(result.ar_entries()) == 1
    assert "spf_helo" not in result.log_fields()


@pytest.mark.parametrize("helo, ip, status", [
    ("helo.example.net", IP_OK, Status.PASS),
    ("helo.example.net", IP_BAD, Status.FAIL),
    ("[1.2.3.5]", IP_OK, Status.NONE),
    ("A2345678", IP_OK, Status.NONE),
])
@pytest.mark.parametrize("check_helo", [True, False])
def test_null_sender_uses_postmaster_at_helo(helo, ip, status, check_helo):
    # RFC 7208 §2.4: for the null reverse-path the MAIL FROM identity is postmaster@HELO.
    result = run("", ip, helo=helo, cfg=SpfSection(check_helo=check_helo))
    assert (result.mailfrom.identity, result.mailfrom.sender, result.mailfrom.status) == (
        "helo", f"postmaster@{helo}", status)
    entries = result.ar_entries()
    assert [(p.name, p.value) for p in entries[0].properties] == [("mailfrom", f"postmaster@{helo}")]
    if check_helo:
        assert [(p.name, p.value) for p in entries[1].properties] == [("helo", helo)]
        assert entries[1].result == status.value
    else:
        assert len(entries) == 1


def test_null_sender_header_names_the_helo_identity():
    conn = Connection(ipaddress.ip_address(IP_OK), helo="helo.example.net")
    env = Envelope("")
    result = check_spf(conn, env, FakeDns(ZONE), SpfSection())
    assert received_spf_header(result, conn, env, "mx.example.net") == (
        "pass (mx.example.net: domain of postmaster@helo.example.net designates 192.0.2.1 as permitted sender) "
        "client-ip=192.0.2.1; helo=helo.example.net; receiver=mx.example.net; mechanism=\"ip4:192.0.2.1\"; "
        "identity=helo;")


# ---------------------------------------------------------------- DNSSEC status of each identity


@pytest.mark.parametrize("mail_from, secure, dnssec", [
    ("user@secure.example", SECURE, Dnssec.SECURE),
    ("user@mixed.example", SECURE, Dnssec.INSECURE),                   # include: of an insecure domain
    ("user@example.org", (), Dnssec.INSECURE),
    ("user@[192.0.2.1]", SECURE, Dnssec.INDETERMINATE),                # no lookup ran
    ("user@include.example.org", {"include.example.org"}, Dnssec.INDETERMINATE),  # a lookup timed out
])
def test_dnssec_is_the_weakest_answer_used(mail_from, secure, dnssec):
    result = run(mail_from, IP_BAD, dns=FakeDns(ZONE, timeout=TIMEOUT, secure=secure))
    assert result.mailfrom.dnssec is dnssec
    assert result.ar_entries()[0].comment.startswith(f"dnssec={dnssec}")
    assert result.log_fields()["spf_dnssec"] == dnssec.value


def test_helo_and_mailfrom_have_separate_dnssec():
    dns = FakeDns(ZONE, secure={"secure.example"})
    conn = Connection(ipaddress.ip_address(IP_OK), helo="helo.example.net")
    result = check_spf(conn, Envelope("user@secure.example"), dns, SpfSection())
    assert (result.mailfrom.dnssec, result.helo.dnssec) == (Dnssec.SECURE, Dnssec.INSECURE)


# ---------------------------------------------------------------- explanations (RFC 7208 §6.2)


def test_explanation_is_expanded_on_fail_only():
    assert run("user@example.org", IP_BAD).mailfrom.explanation == "198.51.100.7 may not send for user@example.org"
    assert run("user@soft.example.org", IP_BAD).mailfrom.explanation == ""
    assert run("user@mx.example.org", IP_BAD).mailfrom.explanation == ""   # no exp=: nothing to show


def test_explanation_with_percent_and_crlf_stays_raw_and_out_of_headers():
    conn = Connection(ipaddress.ip_address(IP_BAD), helo="helo.example.net")
    env = Envelope("user@crlf.example.org")
    result = check_spf(conn, env, FakeDns(ZONE), NO_HELO)
    assert result.mailfrom.status is Status.FAIL
    # Raw, as the contract says: policy.py makes it safe for an SMTP reply.
    assert result.mailfrom.explanation == '100% wrong\r\nX-Injected: yes; (evil) "quoted"'
    header = received_spf_header(result, conn, env, "mx.example.net")
    assert "Injected" not in header and "wrong" not in header
    assert all("Injected" not in (entry.comment or "") for entry in result.ar_entries())


# ---------------------------------------------------------------- Received-SPF (RFC 7208 §9.1)

_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_QUOTED = r'"(?:[^"\\\r\n]|\\[\x20-\x7e])*"'
_PAIR = re.compile(rf"([A-Za-z][A-Za-z0-9-]*)=({_DOT_ATOM}|{_QUOTED});(?: |$)")


def parse_received_spf(value: str) -> tuple[str, str, dict[str, str]]:
    """Parse a Received-SPF value strictly by the §9.1 grammar; fail the test on anything else."""
    assert value.isascii() and value.isprintable(), repr(value)
    match = re.match(r"(pass|fail|softfail|neutral|none|temperror|permerror) \(", value)
    assert match, value
    depth, pos = 1, match.end()
    while depth:
        char = value[pos]
        if char == "\\":
            pos += 1
        depth += {"(": 1, ")": -1}.get(char, 0)
        pos += 1
    comment = value[match.end():pos - 1]
    rest = value[pos:]
    assert rest.startswith(" "), value
    rest = rest[1:]
    pairs = {}
    while rest:
        pair = _PAIR.match(rest)
        assert pair, f"bad key-value at {rest!r}"
        key, raw = pair.groups()
        assert key not in pairs, f"{key} repeated: {value!r}"
        pairs[key] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        rest = rest[pair.end():]
    return match.group(1), comment, pairs


def test_received_spf_pass_matches_rfc_example():
    conn = Connection(ipaddress.ip_address(IP_OK), helo="mail.example.org")
    env = Envelope("user@example.org")
    result = check_spf(conn, env, FakeDns(ZONE), NO_HELO)
    assert received_spf_header(result, conn, env, "mx.example.net") == (
        "pass (mx.example.net: domain of user@example.org designates 192.0.2.1 as permitted sender) "
        'client-ip=192.0.2.1; envelope-from="user@example.org"; helo=mail.example.org; receiver=mx.example.net; '
        'mechanism="ip4:192.0.2.0/24"; identity=mailfrom;')


@pytest.mark.parametrize("mail_from, ip, word, comment_part, extra", [
    ("user@example.org", IP_BAD, "fail", "does not designate 198.51.100.7 as permitted sender",
     {"mechanism": "-all"}),
    ("user@soft.example.org", IP_BAD, "softfail", "domain of transitioning user@soft.example.org",
     {"mechanism": "~all"}),
    ("user@neutral.example.org", IP_BAD, "neutral", "198.51.100.7 is neither permitted nor denied", 
     {"mechanism": "?all"}),
    ("user@norecord.example.org", IP_OK, "none", "does not designate permitted sender hosts", {}),
    ("user@syntax.example.org", IP_OK, "permerror", "permanent error in processing",
     {"problem": "Invalid IP4 address: ip4:192.0.2.300"}),
    ("user@include.example.org", IP_OK, "temperror", "temporary error in processing",
     {"problem": "DNS timeout for slow.example.org/TXT"}),
    ("user@2001:db8::1", "2001:db8:1::5", "none", "domain of user@2001:db8::1", {}),
])
def test_received_spf_each_result(mail_from, ip, word, comment_part, extra):
    conn = Connection(ipaddress.ip_address(ip), helo="mail.example.org")
    env = Envelope(mail_from)
    result = check_spf(conn, env, FakeDns(ZONE, timeout=TIMEOUT), NO_HELO)
    parsed_word, comment, pairs = parse_received_spf(received_spf_header(result, conn, env, "mx.example.net"))
    assert parsed_word == word
    assert comment.startswith("mx.example.net: ") and comment_part in comment
    assert pairs == {"client-ip": ip, "envelope-from": mail_from, "helo": "mail.example.org",
                     "receiver": "mx.example.net", **extra, "identity": "mailfrom"}


HOSTILE = [
    'evil\r\nX-Injected: yes@example.org',
    'a;b=c@example.org',
    'x(y@example.org',
    'x)y@example.org',
    '"quoted;\\"local"@example.org',
    'back\\slash@example.org',
    'nul\x00tab\t@example.org',
    'ütf8@example.org',
]


@pytest.mark.parametrize("mail_from", HOSTILE)
def test_injection_in_mail_from(mail_from):
    conn = Connection(ipaddress.ip_address(IP_BAD), helo="mail.example.org")
    env = Envelope(mail_from)
    result = check_spf(conn, env, FakeDns(ZONE), NO_HELO)
    assert result.mailfrom.status is Status.FAIL          # the domain is still example.org
    header = received_spf_header(result, conn, env, "mx.example.net")
    word, comment, pairs = parse_received_spf(header)
    assert word == "fail"
    assert set(pairs) == {"client-ip", "envelope-from", "helo", "receiver", "mechanism", "identity"}
    # Controls are blanked and non-ASCII replaced; everything else survives inside the quoted-string.
    assert pairs["envelope-from"] == re.sub(r"[^\x00-\x7f]", "?", re.sub(r"[\x00-\x1f]", " ", mail_from))
    assert "(" not in comment and ")" not in comment
    # A-R values stay raw for renderer.py, which quotes them in one place.
    assert result.ar_entries()[0].properties[0].value == mail_from


HOSTILE_HELO = [
    "evil.example\r\nX-Injected: yes",
    "a;b=c.example.net",
    "x(y).example.net",
    '"quoted".example.net',
    "back\\slash.example.net",
    "[1.2.3.5]",
]


@pytest.mark.parametrize("helo", HOSTILE_HELO)
def test_injection_in_helo(helo):
    conn = Connection(ipaddress.ip_address(IP_OK), helo=helo)
    for env in (Envelope("user@example.org"), Envelope("")):
        result = check_spf(conn, env, FakeDns(ZONE), SpfSection())
        assert result.helo.status is Status.NONE           # none of these is a valid FQDN (RFC 7208 §2.3)
        header = received_spf_header(result, conn, env, "mx.example.net")
        word, _comment, pairs = parse_received_spf(header)
        assert pairs["helo"] == re.sub(r"[\x00-\x1f]", " ", helo)   # controls blanked, the rest quoted
        assert pairs["identity"] == ("helo" if not env.mail_from else "mailfrom")
        assert set(pairs) <= {"client-ip", "envelope-from", "helo", "receiver", "mechanism", "identity"}
        assert [p.value for p in result.ar_entries()[-1].properties] == [helo]


def test_mechanism_text_from_dns_cannot_break_the_header():
    conn = Connection(ipaddress.ip_address(IP_BAD), helo="mail.example.org")
    env = Envelope("user@evilmech.example.org")
    result = check_spf(conn, env, FakeDns(ZONE), NO_HELO)
    assert result.mailfrom.status is Status.PERMERROR
    word, _comment, pairs = parse_received_spf(received_spf_header(result, conn, env, "mx.example.net"))
    assert word == "permerror"
    assert pairs["problem"] == 'Invalid domain found (use FQDN): x.example.org;(evil)"q"'
    assert pairs["identity"] == "mailfrom"


def test_internationalized_names_appear_as_a_labels():
    zone = {"xn--bcher-kva.example": {"TXT": ["v=spf1 -all"]}}
    conn = Connection(ipaddress.ip_address(IP_BAD), helo="mx.bücher.example")
    env = Envelope("jörg@bücher.example")
    result = check_spf(conn, env, FakeDns(zone), NO_HELO)
    word, comment, pairs = parse_received_spf(received_spf_header(result, conn, env, "mx.example.net"))
    assert pairs["envelope-from"] == "j?rg@xn--bcher-kva.example"
    assert pairs["helo"] == "mx.xn--bcher-kva.example"
    assert "domain of j?rg@xn--bcher-kva.example does not designate" in comment


def test_received_spf_names_the_domain_that_was_looked_up():
    """IDNA 2008, as the resolver asks: "straße" is its own domain, not "strasse" (Python's IDNA 2003 codec)."""
    zone = {"xn--strae-oqa.example": {"TXT": ["v=spf1 -all"]}}
    conn = Connection(ipaddress.ip_address(IP_BAD), helo="mx.straße.example")
    env = Envelope("a@straße.example")
    result = check_spf(conn, env, FakeDns(zone), NO_HELO)
    assert result.mailfrom.status is Status.FAIL
    word, comment, pairs = parse_received_spf(received_spf_header(result, conn, env, "mx.example.net"))
    assert (pairs["envelope-from"], pairs["helo"]) == ("a@xn--strae-oqa.example", "mx.xn--strae-oqa.example")


@pytest.mark.parametrize("mail_from, helo, mailfrom_value, helo_value", [
    ("user@example.org", "helo.example.net", "user@example.org", "helo.example.net"),
    ("a;b(c)@example.org", "x;y(z).example.net", "a;b(c)@example.org", "x;y(z).example.net"),
    ("", "[1.2.3.5]", "postmaster@[1.2.3.5]", "[1.2.3.5]"),
])
def test_entries_render_into_a_header_that_parses_back(mail_from, helo, mailfrom_value, helo_value):
    import authres

    from authmilter import renderer
    from authmilter.pipeline import results_of

    conn = Connection(ipaddress.ip_address(IP_OK), helo=helo)
    result = check_spf(conn, Envelope(mail_from), FakeDns(ZONE), SpfSection())
    value = renderer.render("mx.example.net", results_of(spf=result))
    parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results:" + value.replace("\n\t", " "))
    assert parsed.authserv_id == "mx.example.net"
    assert [(r.method, r.result, [(p.type, p.name, p.value) for p in r.properties]) for r in parsed.results] == [
        ("spf", result.mailfrom.status.value, [("smtp", "mailfrom", mailfrom_value)]),
        ("spf", result.helo.status.value, [("smtp", "helo", helo_value)]),
    ]
