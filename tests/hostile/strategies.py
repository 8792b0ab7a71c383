"""Hypothesis strategies for hostile messages and envelopes.

Values lean towards what breaks parsers and headers: the RFC 8601 / RFC 5322 delimiters (; ( ) " \\ = @ < >),
CR, LF, NUL, other controls, bidi overrides, 8-bit bytes that are not UTF-8, and the header names our checks read.
"""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from authmilter.context import Connection, Envelope, Header, Message, MessageContext

DELIMITERS = ";()\"\\=@<>,:[] \t\r\n\x00\x0b\x7f\u202e\u2028"
NAMES_WE_READ = [b"From", b"from", b"FROM ", b"DKIM-Signature", b"dkim-signature", b"Authentication-Results",
                 b"Received-SPF", b"Sender", b"Reply-To", b"Subject", b"Content-Type"]
TAG_WORDS = ["v=1", "v=DKIM1", "a=rsa-sha256", "a=ed25519-sha256", "d=example.org", "d=evil.example", "s=h8",
             "h=from", "bh=", "b=", "l=5", "t=1", "x=2", "i=@example.org", "c=relaxed/relaxed", "q=dns/txt",
             "dmarc=pass", "spf=pass", "dkim=pass", "header.from=example.org", "mx.hostile.example"]


def _mixed_text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=st.one_of(st.sampled_from(DELIMITERS), st.characters(codec="utf-8")),
                   max_size=max_size)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


raw_bytes = st.binary(max_size=120)
texty_bytes = _mixed_text(120).map(_encode)

# A DKIM-Signature-like value: real tag words mixed with junk, in random order and separators.
tag_soup = st.lists(st.one_of(st.sampled_from(TAG_WORDS), _mixed_text(20)), max_size=12).flatmap(
    lambda words: st.sampled_from(["; ", ";", " ; ", ";\r\n\t", "\n "]).map(lambda sep: _encode(sep.join(words))))

address_text = st.one_of(
    st.sampled_from(["alice@example.org", "Alice <alice@example.org>", "a@evil.example", "", "<>", "@",
                     "undisclosed:;", "a@example.org, b@evil.example", "\"x;dmarc=pass\" <m@evil.example>",
                     "jörg@exämple.org", "a@[192.0.2.1]", "a@example.org (b@evil.example)"]),
    st.builds(lambda a, b: f"{a}@{b}", _mixed_text(20), _mixed_text(20)),
    _mixed_text(60),
)

header_name = st.one_of(st.sampled_from(NAMES_WE_READ), st.binary(max_size=20),
                        _mixed_text(20).map(_encode))
header_value = st.one_of(
    texty_bytes, raw_bytes, tag_soup,
    address_text.map(lambda a: b" " + _encode(a)),
)
header = st.tuples(header_name, header_value).map(lambda nv: Header(nv[0], nv[1]))

client_ip = st.one_of(
    st.sampled_from(["192.0.2.1", "192.0.2.99", "2001:db8::1", "::ffff:192.0.2.1", "127.0.0.1"]),
    st.ip_addresses().map(str),
).map(ipaddress.ip_address)

connection = st.builds(
    Connection, client_ip=st.one_of(st.none(), client_ip),
    client_name=_mixed_text(30), helo=st.one_of(st.sampled_from(["mail.example.org", "", "[192.0.2.1]"]),
                                               _mixed_text(40)),
    authenticated_user=st.none())

envelope = st.builds(
    Envelope, mail_from=address_text,
    rcpts=st.lists(st.one_of(st.just("bob@example.net"), _mixed_text(30)), max_size=3).map(tuple),
    queue_id=st.text(alphabet="ABCDEF0123456789", min_size=1, max_size=10))

message = st.builds(
    Message,
    headers=st.lists(header, max_size=12).map(tuple),
    body=st.one_of(st.binary(max_size=300), texty_bytes),
    headers_truncated=st.booleans())

context = st.builds(MessageContext, connection, envelope, message)
