"""The Authentication-Results header we write: golden values, parse-back with authres, injection per field,
folding, and recognising forged headers that claim our authserv-id."""

from __future__ import annotations

import ipaddress
import re

from dataclasses import replace

import authres
import authres.core
import pytest

from authmilter import policy
from authmilter.checks.dmarc.check import DmarcResult
from authmilter.checks.iprev import IprevResult
from authmilter.checks.spf import SpfIdentityResult, SpfResult
from authmilter.checks.srs import SrsInfo
from authmilter.pipeline import results_of
from authmilter.renderer import authserv_id_of, clean_comment, is_ours, render, render_entries, render_value
from authmilter.results import Action, AREntry, Dnssec, Property, Status, Verdict

FEATURES = authres.all_features()
ID = "mx.example.net"


def parse_back(value: str):
    """Parse a rendered value as a consumer would: unfold, then authres in strict mode (its default silently
    drops a property it cannot parse, which would hide exactly the bugs we look for)."""
    assert value.startswith(" "), "SMFIP_HDR_LEADSPC: our value must carry its own leading space"
    assert "\r" not in value, "libmilter wants LF folding"
    assert all(line.startswith("\t") for line in value.split("\n")[1:]), "every continuation line starts with TAB"
    assert all(len(line) <= 998 for line in value.split("\n")), "RFC 5322 §2.1.1 hard line limit"
    header = authres.core.AuthenticationResultsHeader(FEATURES, strict=True)
    header._parse_text = value.replace("\n", "").strip()
    header._parse()
    return header


def unquote(text: str) -> str:
    """authres keeps quoted-pairs as written."""
    return re.sub(r"\\(.)", r"\1", text)


def summary(header) -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    return [(r.method, r.result, [(p.type, p.name, unquote(p.value)) for p in r.properties]) for r in header.results]


def spf_entry(sender="user@example.org", comment="dnssec=insecure", result="pass"):
    return AREntry("spf", result, comment, (Property("smtp", "mailfrom", sender),))


DKIM_PASS = AREntry("dkim", "pass", "2048-bit rsa key; dnssec=secure",
                    (Property("header", "d", "example.org"), Property("header", "i", "@example.org"),
                     Property("header", "s", "sel1"), Property("header", "a", "rsa-sha256"),
                     Property("header", "b", "AbC+/dE=")))
IPREV_PASS = AREntry("iprev", "pass", "dnssec=insecure",
                     (Property("policy", "iprev", "192.0.2.1", "mail.example.org"),))
DMARC_FAIL = AREntry("dmarc", "fail", "p=reject sp=reject dis=reject; dnssec=insecure",
                     (Property("header", "from", "example.com"), Property("policy", "dmarc", "reject")))

GOLDEN = [
    ("no method ran", [], " mx.example.net; none", []),
    ("spf pass", [spf_entry()],
     " mx.example.net;\n\tspf=pass (dnssec=insecure) smtp.mailfrom=user@example.org",
     [("spf", "pass", [("smtp", "mailfrom", "user@example.org")])]),
    ("short fits on one line", [AREntry("spf", "none", None, (Property("smtp", "mailfrom", "a@b.example"),))],
     " mx.example.net; spf=none smtp.mailfrom=a@b.example",
     [("spf", "none", [("smtp", "mailfrom", "a@b.example")])]),
    ("address literal is quoted", [spf_entry("postmaster@[1.2.3.5]", result="neutral")],
     ' mx.example.net;\n\tspf=neutral (dnssec=insecure) smtp.mailfrom="postmaster@[1.2.3.5]"',
     [("spf", "neutral", [("smtp", "mailfrom", "postmaster@[1.2.3.5]")])]),
    ("iprev with property comment", [IPREV_PASS],
     " mx.example.net;\n\tiprev=pass (dnssec=insecure) policy.iprev=192.0.2.1 (mail.example.org)",
     [("iprev", "pass", [("policy", "iprev", "192.0.2.1")])]),
    ("dkim: quoted b= goes last", [DKIM_PASS],
     " mx.example.net;\n\tdkim=pass (2048-bit rsa key; dnssec=secure) header.d=example.org\n"
     "\theader.i=@example.org header.s=sel1 header.a=rsa-sha256\n\theader.b=\"AbC+/dE=\"",
     [("dkim", "pass", [("header", "d", "example.org"), ("header", "i", "@example.org"),
                        ("header", "s", "sel1"), ("header", "a", "rsa-sha256"), ("header", "b", "AbC+/dE=")])]),
    ("every method", [IPREV_PASS, spf_entry(result="fail"),
                      AREntry("spf", "pass", None, (Property("smtp", "helo", "mail.example.org"),)),
                      DKIM_PASS, DMARC_FAIL],
     " mx.example.net;\n"
     "\tiprev=pass (dnssec=insecure)\n"
     "\tpolicy.iprev=192.0.2.1 (mail.example.org);\n"
     "\tspf=fail (dnssec=insecure) smtp.mailfrom=user@example.org;\n"
     "\tspf=pass smtp.helo=mail.example.org;\n"
     "\tdkim=pass (2048-bit rsa key; dnssec=secure) header.d=example.org\n"
     "\theader.i=@example.org header.s=sel1 header.a=rsa-sha256\n"
     "\theader.b=\"AbC+/dE=\";\n"
     "\tdmarc=fail (p=reject sp=reject dis=reject; dnssec=insecure)\n"
     "\theader.from=example.com policy.dmarc=reject",
     [("iprev", "pass", [("policy", "iprev", "192.0.2.1")]),
      ("spf", "fail", [("smtp", "mailfrom", "user@example.org")]),
      ("spf", "pass", [("smtp", "helo", "mail.example.org")]),
      ("dkim", "pass", [("header", "d", "example.org"), ("header", "i", "@example.org"), ("header", "s", "sel1"),
                        ("header", "a", "rsa-sha256"), ("header", "b", "AbC+/dE=")]),
      ("dmarc", "fail", [("header", "from", "example.com"), ("policy", "dmarc", "reject")])]),
    ("quoted local part and escapes", [spf_entry('"john smith"@example.org')],
     ' mx.example.net;\n\tspf=pass (dnssec=insecure) smtp.mailfrom="\\"john smith\\"@example.org"',
     [("spf", "pass", [("smtp", "mailfrom", '"john smith"@example.org')])]),
    # IDNA 2008, as the resolver asks: "straße" is its own domain (IDNA 2003 would have made it "strasse").
    ("A-labels are the ones the lookup used", [spf_entry("user@straße.example")],
     " mx.example.net;\n\tspf=pass (dnssec=insecure) smtp.mailfrom=user@xn--strae-oqa.example",
     [("spf", "pass", [("smtp", "mailfrom", "user@xn--strae-oqa.example")])]),
    ("internationalized domain becomes A-labels", [spf_entry("user@bücher.example")],
     " mx.example.net;\n\tspf=pass (dnssec=insecure) smtp.mailfrom=user@xn--bcher-kva.example",
     [("spf", "pass", [("smtp", "mailfrom", "user@xn--bcher-kva.example")])]),
]


@pytest.mark.parametrize("name,entries,expected,parsed", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_headers(name, entries, expected, parsed):
    value = render_entries(ID, entries)
    assert value == expected
    header = parse_back(value)
    assert header.authserv_id == ID
    assert summary(header) == parsed


def test_comments_survive_in_the_text():
    value = render_entries(ID, [DKIM_PASS, IPREV_PASS])
    assert "(2048-bit rsa key; dnssec=secure)" in value
    assert "policy.iprev=192.0.2.1 (mail.example.org)" in value


EVIL = [
    "<a@evil.example;dmarc=pass>",
    "a@evil.example; dmarc=pass",
    'x"; dmarc=pass; x="',
    "x) ; dmarc=pass (",
    "x\\\"; dmarc=pass",
    "x\r\nAuthentication-Results: mx.example.net; dmarc=pass",
    "x\ndmarc=pass",
    "x\x00; dmarc=pass",
    "x\u202e; dmarc=pass",
    "x (comment; dmarc=pass) y",
    "evil.example\udcff; dmarc=pass",
]


def _entry_with(field: str, evil: str) -> AREntry:
    """One entry per rendered field, with the hostile text in that field only."""
    if field == "smtp.mailfrom":
        return AREntry("spf", "fail", "dnssec=none", (Property("smtp", "mailfrom", evil),))
    if field == "smtp.helo":
        return AREntry("spf", "fail", None, (Property("smtp", "helo", evil),))
    if field == "spf comment (exp= text from DNS)":
        return AREntry("spf", "fail", f"dnssec=insecure; {evil}", (Property("smtp", "mailfrom", "a@b.example"),))
    if field == "header.from":
        return AREntry("dmarc", "fail", "p=none", (Property("header", "from", evil),
                                                     Property("policy", "dmarc", "none")))
    if field.startswith("header."):
        name = field.split(".")[1]
        props = {"d": "example.org", "i": "@example.org", "s": "sel", "b": "AbCdEfGh"}
        props[name] = evil
        return AREntry("dkim", "fail", "1024-bit rsa key",
                       tuple(Property("header", key, value) for key, value in props.items()))
    if field == "policy.iprev comment (PTR name)":
        return AREntry("iprev", "pass", None, (Property("policy", "iprev", "192.0.2.1", evil),))
    if field == "dkim comment (key record)":
        return AREntry("dkim", "permerror", evil, (Property("header", "d", "example.org"),))
    raise AssertionError(field)


FIELDS = ["smtp.mailfrom", "smtp.helo", "spf comment (exp= text from DNS)", "header.from", "header.d", "header.s",
          "header.i", "header.b", "policy.iprev comment (PTR name)", "dkim comment (key record)"]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("evil", EVIL, ids=[repr(e)[:30] for e in EVIL])
def test_injection_never_adds_a_method(field, evil):
    entry = _entry_with(field, evil)
    value = render_entries(ID, [entry, spf_entry()])
    header = parse_back(value)
    assert [(r.method, r.result) for r in header.results] == [(entry.method, entry.result), ("spf", "pass")]
    assert "\x00" not in value and "\u202e" not in value and value.isascii()
    # Values come back as we cleaned them (CR, LF, NUL and invisible characters dropped), never cut short.
    parsed = {(p.type, p.name): unquote(p.value) for p in header.results[0].properties}
    for prop in entry.properties:
        expected = "".join(ch for ch in prop.value if ch.isprintable() and ch.isascii())
        assert parsed[(prop.ptype, prop.name)] == expected


@pytest.mark.parametrize("evil", EVIL, ids=[repr(e)[:30] for e in EVIL])
def test_authserv_id_is_sanitized(evil):
    value = render_entries(f"mx.example.net{evil}", [spf_entry()])
    claimed = authserv_id_of(value)
    assert claimed.startswith("mx.example.net")
    assert is_ours(value, [claimed])
    # What follows the id is exactly one spf result: strip the (quoted) id and parse the rest.
    head = " " + render_value(f"mx.example.net{evil}")
    assert value.startswith(head + ";")
    header = parse_back(" x" + value[len(head):])
    assert [(r.method, r.result) for r in header.results] == [("spf", "pass")]


def test_comment_cleaning_is_bounded_and_flat():
    cleaned = clean_comment("a(b)c\\d\r\n" + "x" * 500)
    assert "(" not in cleaned and ")" not in cleaned and "\\" not in cleaned and "\n" not in cleaned
    assert len(cleaned) <= 200 and cleaned.startswith("abcd")


def test_long_values_are_bounded_and_header_still_parses():
    entry = spf_entry("a" * 2000 + "@example.org")
    value = render_entries(ID, [entry])
    header = parse_back(value)
    assert len(header.results[0].properties[0].value) <= 322  # 320 characters and the quotes at most


def test_folding_keeps_lines_short_when_tokens_allow():
    entries = [AREntry("dkim", "pass", "rsa key", tuple(Property("header", "d", f"d{n}.example.org")
                                                         for n in range(12)))]
    value = render_entries(ID, entries)
    lines = value.split("\n")
    assert len(lines) > 2
    assert all(len(line.expandtabs(8)) <= 78 for line in lines)
    assert len(parse_back(value).results[0].properties) == 12


@pytest.mark.parametrize("value", [" 123", "AbCdEfGh", "example.org", "user@example.org", "@example.org",
                                   "a!#$%&'*+-/=?^_`{|}~.x@example.org"])
def test_plain_values_stay_bare(value):
    assert render_value(value) == value.strip()


@pytest.mark.parametrize("value,rendered", [
    ("", '""'), ("a b", '"a b"'), ("ab+/cd=e", '"ab+/cd=e"'), ("a;b", '"a;b"'), ('a"b', '"a\\"b"'),
    ("a\\b", '"a\\\\b"'), ("a@b@c.example", '"a@b@c.example"'), ("user@[192.0.2.1]", '"user@[192.0.2.1]"'),
    ("ünïcode", "xn--ncode-cta3g"), ("ü ï", '"? ?"'),
])
def test_values_needing_quotes(value, rendered):
    assert render_value(value) == rendered


# ---------------------------------------------------------------- render(results)

def _spf(status=Status.PASS, sender="user@example.org"):
    return SpfResult(SpfIdentityResult("mailfrom", sender, sender.rpartition("@")[2], status,
                                       dnssec=Dnssec.INSECURE))


def test_render_results_skipped_is_none():
    assert render(ID, results_of(skipped="trusted_network", spf=_spf())) == " mx.example.net; none"


def test_render_results_in_fixed_order_with_srs_and_forwarder_notes():
    srs = SrsInfo("SRS0", "fwd.example.net", "user@example.org")
    results = results_of(
        iprev=IprevResult(Status.PASS, "192.0.2.1", "fwd.example.net", dnssec=Dnssec.INSECURE),
        srs=srs,
        spf=replace(_spf(Status.FAIL, "SRS0=HHHH=TT=example.org=user@fwd.example.net"), srs=srs),
        dmarc=DmarcResult(Status.FAIL, "example.org", policy="reject", disposition="reject", p="reject"),
        forwarder="host fwd.example.net",
    )
    # The forwarder notes are policy's decision, carried by the verdict; the renderer only shows them.
    value = render(ID, results, Verdict(Action.ACCEPT, notes=policy.header_notes(results)))
    assert "trusted forwarder" not in render(ID, results)
    header = parse_back(value)
    assert [(r.method, r.result) for r in header.results] == [("iprev", "pass"), ("spf", "fail"),
                                                               ("dmarc", "fail")]
    unfolded = value.replace("\n\t", " ")
    assert "SRS0 from fwd.example.net for user@example.org" in unfolded
    assert "trusted forwarder host fwd.example.net" in unfolded
    assert "override=trusted_forwarder host fwd.example.net" in unfolded


def test_render_results_hostile_srs_original_sender_stays_in_the_comment():
    srs = SrsInfo("SRS0", "fwd.example", "a) ; dmarc=pass (@x")
    results = results_of(srs=srs, spf=replace(_spf(Status.PASS, "SRS0=x=y=x=a@fwd.example"), srs=srs))
    header = parse_back(render(ID, results))
    assert [r.method for r in header.results] == ["spf"]


# ---------------------------------------------------------------- is_ours

@pytest.mark.parametrize("incoming,ours", [
    ("mx.example.net; spf=pass smtp.mailfrom=a@b.example", True),
    (" MX.Example.NET; none", True),
    ("(forged) mx.example.net (comment); dmarc=pass", True),
    ("\r\n\t(a (nested) comment)\r\n mx.example.net 1; dkim=pass", True),
    ("mx.example.net(x)1 (y); none", True),
    ('"mx.example.net"; none', True),
    ("mx.example.net.; none", True),
    ("   mx.example.net   ;none", True),
    ("mx.example.net", True),
    ("other.example.net; spf=pass", False),
    ("mx.example.net.evil; spf=pass", False),
    ("evil-mx.example.net; spf=pass", False),
    ("mx.example.net1; none", False),
    ("(mx.example.net) other.example; none", False),
    ("(unclosed mx.example.net; none", False),
    ("", False),
    ("; spf=pass", False),
])
def test_is_ours(incoming, ours):
    assert is_ours(incoming, ["mx.example.net"]) is ours


def test_is_ours_matches_any_fleet_member_and_ignores_empty_ids():
    assert is_ours("mx2.example.net; none", ["mx1.example.net", "MX2.example.net"])
    assert not is_ours("mx3.example.net; none", ["", "mx1.example.net"])


def test_ipv6_policy_value_round_trips():
    ip6 = str(ipaddress.ip_address("2001:db8::1"))
    value = render_entries(ID, [AREntry("iprev", "fail", None, (Property("policy", "iprev", ip6),))])
    assert summary(parse_back(value)) == [("iprev", "fail", [("policy", "iprev", "2001:db8::1")])]
