"""The memoized and shortcut paths added for speed (issue 5) answer exactly as the plain paths do."""

from __future__ import annotations

import pytest

from authmilter import logline, renderer
from authmilter.checks.dkim import signature as dkim_sig
from authmilter.checks.dmarc.fromheader import MAX_FROM_BYTES, parse_from_value
from tests.test_resolver import FakeClock, make, server  # noqa: F401 - `server` is a pytest fixture


def test_cache_hit_ignores_case_and_keeps_the_asked_spelling(server):  # noqa: F811
    shared = make(server, FakeClock())
    before = server.count("short.example.org", "A")
    first = shared.for_message().query("short.example.org", "A")
    again = shared.for_message().query("SHORT.Example.ORG.", "A")
    # RFC 4343: DNS names compare ASCII case-insensitively, so the second lookup is the cached answer...
    assert server.count("short.example.org", "A") == before + 1
    assert again.records == first.records == ("192.0.2.7",)
    # ...reported under the name the check asked for, as a fresh lookup would be.
    assert again.name == "SHORT.Example.ORG"
    assert again.outcome is first.outcome and again.dnssec is first.dnssec


def test_invalid_names_are_still_refused_without_a_lookup(server):  # noqa: F811
    dns = make(server, FakeClock()).for_message()
    for _ in range(2):  # the second time through the memo
        answer = dns.query("a..example.org", "A")
        assert answer.outcome.value == "invalid_name" and answer.detail == "empty label"


def test_identity_of_hands_each_caller_its_own_tag_dict():
    value = b" v=1; a=rsa-sha256; d=example.org; s=sel; h=from; bh=AAAA; b=QUJD"
    ident, tags = dkim_sig.identity_of(value)
    tags[b"d"] = b"evil.example"
    ident_again, tags_again = dkim_sig.identity_of(value)
    assert tags_again[b"d"] == b"example.org" and ident_again == ident and ident.domain == "example.org"


@pytest.mark.parametrize("raw, domain, error", [
    (b" Alice <alice@Example.ORG>", "example.org", ""),
    (b" Alice <alice@Example.ORG>", "example.org", ""),  # again: from the memo, same answer
    (b" " + b"x" * MAX_FROM_BYTES + b"@example.org", "", "From header too long"),
])
def test_from_parse_memo(raw, domain, error):
    parsed = parse_from_value(raw)
    assert (parsed.domain, parsed.error) == (domain, error)


def test_keyword_and_log_key_cleaning_unchanged_for_long_input():
    long_keyword = "a-" * 100 + "b"
    assert renderer.clean_keyword(long_keyword) == ("a-" * 100 + "b")[:renderer.MAX_KEYWORD]
    assert renderer.clean_keyword("dkim") == "dkim" and renderer.clean_keyword("d k(i)m") == "dkim"
    assert logline.format_key("DKIM Domain") == "dkim_domain"
    assert logline.format_key("K" * 100) == "k" * 64
