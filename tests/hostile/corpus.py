"""A corpus of malformed messages and envelopes, as an MTA would hand them over the milter protocol.

Each `Case` is one SMTP transaction: the envelope (client IP, HELO, MAIL FROM, RCPT TO, any of them hostile), the
header fields as (name, value) byte pairs exactly as Postfix sends them with SMFIP_HDR_LEADSPC (the value keeps
its leading space; folding is LF + WSP), and the body. `expect` says what a correct milter puts in its
Authentication-Results header for it: how many entries of each method, and the DMARC result where it is
determined by the input alone. DNS data for the cases is `ZONE` (served by testlab/dnsserver.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from testlab.milterclient import split_message
from tests.hostile import signing

CLIENT_IP = "192.0.2.1"
HELO = "mail.example.org"
GOOD_DOMAIN = "example.org"
LIBMILTER_MAX_DATA = 65535   # libmilter's MILTER_MAX_DATA_SIZE: a bigger command ends the connection

ZONE: dict = {
    GOOD_DOMAIN: [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}, {"MX": [10, "mail.example.org"]}],
    "mail.example.org": [{"A": CLIENT_IP}],
    "1.2.0.192.in-addr.arpa": [{"PTR": "mail.example.org"}],
    f"_dmarc.{GOOD_DOMAIN}": [{"TXT": "v=DMARC1; p=reject"}],
    signing.key_name(GOOD_DOMAIN): [{"TXT": signing.key_record()}],
    # DMARC records with garbage tags (RFC 9989 §4.7: unknown tags are ignored; bad values of known tags...)
    "garbage.example": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "_dmarc.garbage.example": [{"TXT": "v=DMARC1; p=reject; pct=abc; rua=;;;; foo=bar; sp=bogus; adkim=x; "
                                       "aspf=\x01; ri=-5; fo=9:z; np=dmarc=pass"}],
    "garbage2.example": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "_dmarc.garbage2.example": [{"TXT": "v=DMARC1 p=reject"}],
    "garbage3.example": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "_dmarc.garbage3.example": [{"TXT": "v=DMARC1; p=reject"}, {"TXT": "v=DMARC1; p=none"}],
    "garbage4.example": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "_dmarc.garbage4.example": [{"TXT": b"v=DMARC1; p=reject; rua=mailto:\xff\xfe@garbage4.example\x00"}],
    "garbage5.example": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "_dmarc.garbage5.example": [{"TXT": "v=DMARC1; p=reject; " + "x=" + "y" * 3000}],
    # a sender domain whose SPF and DMARC records are themselves hostile text
    "evil.example": [{"TXT": "v=spf1 -all"}],
    "_dmarc.evil.example": [{"TXT": "v=DMARC1; p=none"}],
    "evil2.example": [{"TXT": "v=spf1 exp=explain.evil2.example -all"}],
    "explain.evil2.example": [{"TXT": "bad\r\n\tdmarc=pass; %{l} \x00 done"}],
    "_dmarc.evil2.example": [{"TXT": "v=DMARC1; p=none; rua=mailto:x@evil2.example;\r\ndmarc=pass"}],
}


@dataclass(frozen=True)
class Expect:
    dkim: int = 1                 # dkim entries ("none" counts as one)
    dmarc: str | None = "pass"    # the DMARC result the input calls for (None: several answers are defensible)
    injected: bool = False        # the input tries to smuggle a pass in: whatever DMARC says, it is not "pass"
    spf: int = 2                  # MAIL FROM and HELO identities
    iprev: int = 1


@dataclass(frozen=True)
class Case:
    name: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b"Hello.\r\n"
    mail_from: str = f"alice@{GOOD_DOMAIN}"
    helo: str | bytes = HELO  # bytes: sent as is, not UTF-8 encoded
    client_ip: str = CLIENT_IP
    rcpts: tuple[str, ...] = ("bob@example.net",)
    expect: Expect = field(default_factory=Expect)
    # why libmilter itself ends the connection before our code sees the input ("" when it does not): Postfix
    # never sends such a command, and answers a dropped milter connection with milter_default_action
    dropped_by_libmilter: str = ""
    # a known bug, for pytest.mark.xfail(strict=True) until it is fixed ("" when none)
    known_bug: str = ""


BASE = (
    (b"From", b" Alice <alice@example.org>"),
    (b"To", b" bob@example.net"),
    (b"Subject", b" hostile"),
    (b"Date", b" Sun, 22 Nov 2026 23:00:00 +0000"),
    (b"Message-ID", b" <hostile@example.org>"),
)


def with_headers(*extra: tuple[bytes, bytes], base=BASE, first: bool = False) -> tuple[tuple[bytes, bytes], ...]:
    return (tuple(extra) + tuple(base)) if first else (tuple(base) + tuple(extra))


def without(name: bytes, base=BASE) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(h for h in base if h[0].lower() != name.lower())


def replace_from(value: bytes) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((n, value) if n == b"From" else (n, v) for n, v in BASE)


def dkim(value: bytes) -> tuple[bytes, bytes]:
    return (b"DKIM-Signature", value)


_SIGNED_HEADERS, _SIGNED_BODY = split_message(
    signing.sign(signing.simple_message("alice@example.org", subject="signed"), GOOD_DOMAIN))
_SIGNED_ED = b" v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.org; s=h8; h=from:to:subject; bh=" \
             b"47DEQpj8HBSa+/TrmP7QmSZ2XIdOtUUXyCwMdE9QKgk=; b="

CASES: tuple[Case, ...] = (
    # ---------------------------------------------------------------- controls
    Case("signed control", tuple(_SIGNED_HEADERS), _SIGNED_BODY, expect=Expect(dkim=1, dmarc="pass")),
    Case("unsigned control", BASE, expect=Expect(dmarc="pass")),

    # ---------------------------------------------------------------- broken MIME
    Case("multipart without boundary", with_headers((b"MIME-Version", b" 1.0"),
                                                     (b"Content-Type", b" multipart/mixed")),
         b"--\r\n--\r\nContent-Type: text/plain\r\n\r\nno boundary at all\r\n--\r\n", expect=Expect(dmarc="pass")),
    Case("unterminated nested multipart", with_headers(
        (b"MIME-Version", b" 1.0"), (b"Content-Type", b' multipart/mixed; boundary="a"; boundary="b"')),
         b"--a\r\nContent-Type: multipart/alternative; boundary=\"c\r\n\r\n--c\r\nContent-Transfer-Encoding: "
         b"base64\r\n\r\n!!!not base64!!!\r\n=?utf-8?b?====?=\r\n--a", expect=Expect(dmarc="pass")),
    Case("content-type parameter bomb", with_headers(
        (b"Content-Type", b" text/plain;" + b"".join(b" p%d=%d;" % (i, i) for i in range(3000)))),
         expect=Expect(dmarc="pass")),

    # ---------------------------------------------------------------- NUL bytes
    Case("NUL in body", BASE, b"a\x00b\r\n\x00\x00\x00\r\n\x00", expect=Expect(dmarc="pass")),
    Case("NUL in header value", with_headers((b"Subject", b" before\x00after"), (b"X-Nul", b"\x00"))),
    Case("NUL in header name", with_headers((b"X-\x00Nul", b" value"))),

    # ---------------------------------------------------------------- 8-bit and UTF-8
    Case("latin-1 subject", with_headers((b"Subject", b" caf\xe9 \xff\xfe"), base=without(b"Subject")),
         expect=Expect(dmarc="pass")),
    Case("latin-1 From display name", replace_from(b" J\xf6rg <alice@example.org>"),
         expect=Expect(dmarc="permerror")),
    Case("UTF-8 headers (RFC 6532)", replace_from(" \"Jörg Ünïcødé\" <jörg@example.org>".encode()) +
         ((b"Subject", " Grüße, 世界 \u202e".encode()),), expect=Expect(dmarc="pass")),
    Case("UTF-8 From domain (IDN without DMARC record)", replace_from(" <alice@exämple.org>".encode()),
         expect=Expect(dmarc="none")),
    # pymilter decodes the HELO and header names as strict UTF-8 before our code runs: such a HELO or header
    # is treated as absent, with a WARNING log line (adapter._log_undecodable_input), and the message judged.
    Case("HELO that is not UTF-8", BASE, helo=b"h\xffelo.example"),
    Case("8-bit MAIL FROM and HELO", BASE, mail_from="j\xf6rg@ex\xe4mple.org", helo="h\xe9lo.example",
         expect=Expect(dmarc="fail")),
    Case("invalid UTF-8 in header values", with_headers((b"X-Bad", b" \xc3\x28\xa0\xa1"),
                                                         (b"Subject", b" \xed\xa0\x80 surrogate"))),
    Case("invalid UTF-8 in a header name", with_headers((b"X-\xff\xfe", b" v"))),

    # ---------------------------------------------------------------- sizes and counts
    Case("60 KB header line", with_headers((b"X-Long", b" " + b"a" * 60_000)), expect=Expect(dmarc="pass")),
    Case("60 KB folded header", with_headers((b"X-Folded", b"".join(b" word%05d\n\t" % i for i in range(4500))
                                               + b"end")), expect=Expect(dmarc="pass")),
    Case("1 MB header line", with_headers((b"X-Huge", b" " + b"b" * 1_000_000)),
         dropped_by_libmilter=f"a command over MILTER_MAX_DATA_SIZE ({LIBMILTER_MAX_DATA} octets)"),
    Case("1 MB of headers (past max_header_bytes)",
         with_headers(*[(b"X-Big-%d" % i, b" " + b"c" * 50_000) for i in range(22)]), expect=Expect(dmarc=None)),
    Case("5000 headers", with_headers(*[(b"X-N-%d" % i, b" v%d" % i) for i in range(5000)]),
         expect=Expect(dmarc="pass")),
    Case("2 MB body without line ends", BASE, b"x" * 2_000_000, expect=Expect(dmarc="pass")),
    Case("bare CR and LF in body", BASE, b"one\rtwo\nthree\r\n\r\r\n\n.\r\n", expect=Expect(dmarc="pass")),

    # ---------------------------------------------------------------- header syntax
    Case("headers without value", with_headers((b"X-Empty", b""), (b"Subject", b""), (b"Cc", b" "))),
    Case("header without name", with_headers((b"", b" value")),
         dropped_by_libmilter="a header command with an empty name"),
    Case("header name of one space", with_headers((b" ", b" v"))),
    Case("header names with space and colon", with_headers((b"Bad Header", b" v"), (b"X:Y", b" v"),
                                                           (b"From ", b" x@evil.example")),
         expect=Expect(dmarc="permerror")),
    Case("header value with bare CR and LF", with_headers((b"X-Crlf", b" a\r\nb\rc\nd"),
                                                          (b"Subject", b" x\r\nAuthentication-Results: x"))),

    # ---------------------------------------------------------------- malformed DKIM-Signature fields
    Case("DKIM-Signature without tags", with_headers(dkim(b" garbage no tags at all"))),
    Case("DKIM-Signature empty", with_headers(dkim(b""))),
    Case("DKIM-Signature duplicate tags", with_headers(dkim(
        b" v=1; v=1; a=rsa-sha256; d=example.org; d=evil.example; s=h8; h=from; bh=AAAA; b=AAAA"))),
    Case("DKIM-Signature bad base64", with_headers(dkim(
        b" v=1; a=ed25519-sha256; d=example.org; s=h8; h=from; bh=@@@@!!; b=%%%%"))),
    Case("DKIM-Signature empty d= and s=", with_headers(dkim(b" v=1; a=rsa-sha256; d=; s=; h=from; bh=; b="))),
    Case("DKIM-Signature huge l= and x= before t=", with_headers(dkim(
        _SIGNED_ED + b"AAAA; l=999999999999999999999999999999; t=9999999999; x=1"))),
    Case("DKIM-Signature unknown algorithm and version", with_headers(dkim(
        b" v=2; a=rsa-sha512; d=example.org; s=h8; h=from; bh=AAAA; b=AAAA"))),
    Case("DKIM-Signature whose h= omits From", with_headers(dkim(
        b" v=1; a=ed25519-sha256; d=example.org; s=h8; h=subject; bh=AAAA; b=AAAA"))),
    Case("DKIM-Signature with injection in d= and s=", with_headers(dkim(
        b" v=1; a=ed25519-sha256; d=evil.example;\n\tdmarc=pass; s=x)(y; h=from;\n bh=AAAA; b=AAAA; "
        b"i=\"@evil.example; dmarc=pass\""), base=replace_from(b" m@evil.example")), mail_from="m@evil.example",
         expect=Expect(dmarc=None, injected=True)),
    Case("DKIM-Signature selector that is not a DNS name", with_headers(dkim(
        b" v=1; a=ed25519-sha256; d=example.org; s=" + b"x" * 300 + b"..; h=from; bh=AAAA; b=AAAA"))),
    Case("50 junk DKIM signatures", with_headers(*[dkim(b" v=1; a=rsa-sha256; d=d%d.example; s=s; h=from; "
                                                        b"bh=AAAA; b=AAAA" % i) for i in range(50)]),
         expect=Expect(dkim=6, dmarc="pass")),  # 5 evaluated + one "policy" entry for the rest

    # ---------------------------------------------------------------- From variants (DMARC's input)
    Case("no From", without(b"From"), expect=Expect(dmarc="permerror")),
    Case("two From headers", with_headers((b"From", b" mallory@evil.example")), expect=Expect(dmarc="permerror")),
    Case("From with two addresses", replace_from(b" alice@example.org, mallory@evil.example"),
         expect=Expect(dmarc="permerror")),
    Case("From group syntax", replace_from(b" undisclosed-recipients:;"), expect=Expect(dmarc="permerror")),
    Case("From address in a comment", replace_from(b" mallory@evil.example (alice@example.org)"),
         expect=Expect(dmarc="permerror")),
    Case("From empty", replace_from(b""), expect=Expect(dmarc="permerror")),
    Case("From display name with injection", replace_from(b' "x; dmarc=pass (" <mallory@evil.example>'),
         expect=Expect(dmarc="fail", injected=True)),
    Case("From with CRLF injection", replace_from(b" mallory@evil.example\r\nAuthentication-Results: "
                                                  b"mx.hostile.example; dmarc=pass"),
         expect=Expect(dmarc=None, injected=True)),
    Case("From encoded word hiding an address", replace_from(b" =?utf-8?q?alice=40example=2Eorg?= "
                                                             b"<mallory@evil.example>"),
         expect=Expect(dmarc="permerror")),

    # ---------------------------------------------------------------- hostile DMARC records (served by DNS)
    Case("DMARC record with garbage tags", replace_from(b" a@garbage.example"), mail_from="a@garbage.example",
         expect=Expect(dmarc=None)),
    Case("DMARC record without separator", replace_from(b" a@garbage2.example"), mail_from="a@garbage2.example",
         expect=Expect(dmarc="none")),
    Case("two DMARC records", replace_from(b" a@garbage3.example"), mail_from="a@garbage3.example",
         expect=Expect(dmarc=None)),
    Case("DMARC record with 8-bit and NUL", replace_from(b" a@garbage4.example"), mail_from="a@garbage4.example",
         expect=Expect(dmarc=None)),
    Case("DMARC record of 3 KB", replace_from(b" a@garbage5.example"), mail_from="a@garbage5.example",
         expect=Expect(dmarc=None)),
    Case("SPF exp= and DMARC text with CRLF", replace_from(b" m@evil2.example"), mail_from="m@evil2.example",
         expect=Expect(dmarc=None, injected=True)),

    # ---------------------------------------------------------------- hostile envelope
    Case("CR/LF and ; in HELO", BASE, helo="evil.example;\r\n\tdmarc=pass (x"),
    Case("CR/LF and ; in MAIL FROM", BASE, mail_from="a@example.org;\r\n dmarc=pass",
         expect=Expect(dmarc="fail", injected=True)),
    Case("; and comment in MAIL FROM", BASE, mail_from="a@evil.example; dmarc=pass (x)",
         expect=Expect(dmarc="fail", injected=True)),
    Case("MAIL FROM with quotes and brackets", BASE, mail_from='"a\\"b>c"@[192.0.2.1]', expect=Expect(dmarc="fail")),
    Case("MAIL FROM of 2000 octets", BASE, mail_from="a" * 2000 + "@example.org", expect=Expect(dmarc=None)),
    Case("null sender with odd HELO", BASE, mail_from="", helo="[192.0.2.1]", expect=Expect(dmarc="fail")),
    Case("null sender with empty HELO", BASE, mail_from="", helo="", expect=Expect(dmarc="fail")),
    Case("recipients with CR/LF", BASE, rcpts=("bob@example.net\r\nX: y", "<>", "@", "a" * 1000)),
    Case("IPv6 client", BASE, client_ip="2001:db8::1", expect=Expect(dmarc="fail")),
    Case("IPv4-mapped IPv6 client", BASE, client_ip="::ffff:192.0.2.1", expect=Expect(dmarc="pass")),

    # ---------------------------------------------------------------- forged results
    Case("forged A-R header with our id", with_headers(
        (b"Authentication-Results", b" mx.hostile.example; dmarc=pass header.from=example.org"),
        (b"authentication-results", b"mx.hostile.example;\n\tdkim=pass"),
        base=replace_from(b" mallory@evil.example"), first=True), b"forged\r\n", expect=Expect(dmarc="fail")),
)
