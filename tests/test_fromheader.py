"""Strict From parsing: every known DMARC-bypass trick gives an error, honest Froms give their domain."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authmilter.checks.dmarc.check import author_domain
from authmilter.checks.dmarc.fromheader import parse_from_headers, parse_from_value
from authmilter.context import Header, Message


def from_msg(*values: bytes) -> Message:
    return Message(headers=tuple(Header(b"From", v) for v in values) + (Header(b"To", b" x@example.net"),))


GOOD = [
    (b" user@example.com", "example.com"),
    (b" <user@example.com>", "example.com"),
    (b" User Name <user@example.com>", "example.com"),
    (b' "Name, With Comma" <user@example.com>', "example.com"),
    (b" John Q. Public <jqp@example.com>", "example.com"),
    (b" User <User@EXAMPLE.Com>", "example.com"),
    (b" =?utf-8?q?J=C3=B6rg?= <joerg@example.com>", "example.com"),
    (b" =?UTF-8?B?w4Rnbm9z?= <a@example.com>", "example.com"),
    (" Jörg <joerg@bücher.example>".encode(), "xn--bcher-kva.example"),
    (" <a@Straße.example>".encode(), "xn--strae-oqa.example"),  # IDNA 2008, the name the lookup asks for
    (" jörg@example.com".encode(), "example.com"),
    (b' "john doe"@example.com', "example.com"),
    (b" user@example.com (John Doe)", "example.com"),
    (b" User\r\n <user@example.com>", "example.com"),           # folded
    (b"\r\n\tUser <user@sub.example.com>", "sub.example.com"),
    (b' "alice@example.org" <alice@example.org>', "example.org"),  # the name is the address itself
    (b" user@xn--bcher-kva.example", "xn--bcher-kva.example"),
    (b" a@localhost", "localhost"),
]


@pytest.mark.parametrize("value, domain", GOOD)
def test_honest_from_gives_its_domain(value, domain):
    assert parse_from_value(value).domain == domain
    assert author_domain(from_msg(value)) == domain


BAD = [
    (b"", "no address"),
    (b"   ", "no address"),
    (b" Undisclosed", "no domain"),
    (b" a@good.example, b@evil.example", "several addresses"),
    (b" <a@good.example>, <b@evil.example>", "several addresses"),
    (b" a@good.example (b@evil.example)", "comment with an address"),
    (b" (b@evil.example) a@good.example", "comment with an address"),
    (b" a@good.example (<b@evil.example>)", "comment with an address"),
    (b" a@good.example (unclosed", "unbalanced comment"),
    (b" <a@good.example", "unbalanced <>"),
    (b" a@good.example>", "unexpected '>'"),
    (b" <<a@good.example>>", "malformed local part"),
    (b" Name <a@good.example> <b@evil.example>", "unexpected '<'"),
    (b" Name <a@good.example> b@evil.example", "unexpected 'b'"),
    (b' "a@b"@evil.example', "quoted local part"),
    (b' "a<b"@evil.example', "quoted local part"),
    (b' "a,b"@evil.example', "quoted local part"),
    (b' "unterminated@evil.example', "unbalanced quotes"),
    (b" =?utf-8?q?a=40good.example?= <x@evil.example>", "display name with an address"),
    (b" =?utf-8?b?YUBnb29kLmV4YW1wbGU=?= <x@evil.example>", "display name with an address"),
    (b' "a@good.example" <x@evil.example>', "display name with an address"),
    (b" =?utf-7?q?a+AEA-good.example?= <x@evil.example>", "display name with an address"),
    (b" =?idna?q?a=40good.example?= <x@evil.example>", "display name with an address"),  # odd codec, no crash
    (b" Good =?utf-8?q?=3Ca=40good.example=3E?= <x@evil.example>", "display name with an address"),
    (b" group: a@x.example, b@y.example;", "group syntax"),
    (b" group:;", "group syntax"),
    (b' "group": a@x.example;', "group syntax"),
    (b" <@route.example:a@good.example>", "route address"),
    (b" a@[192.0.2.1]", "domain literal"),
    (b" a@good.example.", "malformed domain"),
    (b" a@good..example", "malformed domain"),
    (b" a@-bad.example", "not a valid host name"),
    (b" a@bad_name.example", "not a valid host name"),
    (b" a@192.0.2.1", "not a valid host name"),
    (b" a@" + b"x" * 64 + b".example", "not a valid host name"),
    (b" <a@evil.example;dmarc=pass>", "unexpected ';'"),
    (b" a@evil.example;dmarc=pass", "unexpected ';'"),
    (b" a@evil.example\rdmarc=pass", "control character"),
    (b" a@evil.example\r\nX-Injected: yes", "control character"),
    (b" a@evil.example\x00", "control character"),
    (b" a@evil example", "unexpected 'e'"),
    (b" user@\xe9vil.example", "not UTF-8"),
    (b" \xff <a@good.example>", "not UTF-8"),
    (b" a@good.example" + b" " * 5000, "too long"),
]


@pytest.mark.parametrize("value, reason", BAD)
def test_bypass_tricks_are_errors(value, reason):
    parsed = parse_from_value(value)
    assert not parsed.ok and parsed.domain == ""
    assert reason in parsed.error
    assert author_domain(from_msg(value)) is None


def test_injection_never_yields_a_domain_with_separators():
    # Whatever the parser makes of a hostile From, no domain it returns may carry header syntax.
    for value, _ in BAD + GOOD:
        domain = parse_from_value(value).domain
        assert not any(c in domain for c in ';()=" \r\n\t,<>@')


@pytest.mark.parametrize("headers, reason", [
    ((), "no From header"),
    ((b" a@example.com", b" a@example.com"), "2 From headers"),
    ((b" a@good.example", b" b@evil.example"), "2 From headers"),
])
def test_missing_or_repeated_from(headers, reason):
    msg = from_msg(*headers)
    assert parse_from_headers(msg.get_all("From")).error == reason
    assert author_domain(msg) is None


def test_header_name_case_and_space_count_as_from():
    msg = Message(headers=(Header(b"FROM", b" a@good.example"), Header(b"from ", b" b@evil.example")))
    assert author_domain(msg) is None


# ---------------------------------------------------------------- fuzz: never raises, never a bad domain


_PIECES = st.sampled_from(["a", "@", "<", ">", "(", ")", '"', "\\", ",", ";", ":", ".", " ", "\t", "\r\n ",
                           "\r", "\n", "=?utf-8?q?", "?=", "=40", "[", "]", "é", "xn--", "-", "example",
                           "evil", "com", "\xff", "\x00"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=25).map("".join))
def test_fuzzed_from_values(text):
    raw = text.encode("utf-8", "surrogateescape") if "\xff" not in text else text.encode("latin-1", "replace")
    parsed = parse_from_value(raw)
    if parsed.ok:
        assert parsed.domain and all(c.isalnum() or c in ".-" for c in parsed.domain)
        assert parsed.domain == parsed.domain.lower() and parsed.domain.isascii()
    else:
        assert parsed.domain == "" and parsed.error


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(raw):
    parsed = parse_from_value(raw)
    assert parsed.ok or parsed.error
