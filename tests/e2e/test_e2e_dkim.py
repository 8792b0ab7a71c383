"""DKIM end to end (issue 3): messages signed here with dkimpy cross a real Postfix into the real milter, whose
key lookups go to NSD through the validating Unbound. Each test reads the delivered message's
Authentication-Results back with authres and the milter's log line for its queue id.

Keys and zones: authzones.py (signer.example has no DMARC record, so every DKIM result is delivered and readable).
"""

from __future__ import annotations

import re
import time

import pytest

from testlab.authzones import DKIM_DOMAIN, SELECTOR, keys
from tests.e2e.signing import (FOLDED_SUBJECT, SIGNED_HEADERS, comments, message, our_ar, replace_header,
                               sign)
from testlab.zonedata import GOOD_V4

pytestmark = pytest.mark.e2e

AUTHOR = f"author@{DKIM_DOMAIN}"


def deliver(lab, data: bytes, *, mail_from: str = AUTHOR, mail_params: str = ""):
    sent = lab.send(mail_from=mail_from, source=GOOD_V4, data=data, mail_params=mail_params)
    assert sent.accepted, "; ".join(map(str, sent.stages))
    return sent, lab.delivered(sent)


def b_prefix(signed: bytes, index: int = 0) -> str:
    """The first 8 characters of b= of the index-th DKIM-Signature we sent (RFC 6008 header.b)."""
    values = re.findall(rb"(?ims)^DKIM-Signature:(.*?)(?=^\S)", signed.partition(b"\r\n\r\n")[0] + b"\r\nX:")
    tags = re.sub(rb"\s+", b"", values[index])
    return re.search(rb"(?:^|;)b=([^;]*)", tags).group(1)[:8].decode()


def single_dkim(ar, domain: str):
    entries = [entry for entry in ar.entries if entry.method == "dkim"]
    assert len(entries) == 1, ar.raw
    assert entries[0].properties.get("header.d") == domain, ar.raw
    return entries[0]


def _now() -> int:
    return int(time.time())


# (id, key name, selector, d=, canonicalization, a= override, signature time shift, x= offset, change after
#  signing, expected result, words the header comment must contain)
CASES = [
    ("simple-simple", "rsa", SELECTOR, DKIM_DOMAIN, ("simple", "simple"), None, 0, None, None,
     "pass", ["2048-bit rsa key", "dnssec=insecure"]),
    ("relaxed-relaxed", "rsa", SELECTOR, DKIM_DOMAIN, ("relaxed", "relaxed"), None, 0, None, None,
     "pass", ["2048-bit rsa key"]),
    ("relaxed-simple", "rsa", SELECTOR, DKIM_DOMAIN, ("relaxed", "simple"), None, 0, None, None, "pass", []),
    ("simple-relaxed", "rsa", SELECTOR, DKIM_DOMAIN, ("simple", "relaxed"), None, 0, None, None, "pass", []),
    ("ed25519", "ed25519", "ed", DKIM_DOMAIN, ("simple", "simple"), None, 0, None, None,
     "pass", ["ed25519 key"]),
    # RFC 8301 §3.1: rsa-sha1 MUST NOT be considered valid; §3.2: nor keys under 1024 bits.
    ("rsa-sha1", "rsa", SELECTOR, DKIM_DOMAIN, ("relaxed", "relaxed"), "rsa-sha1", 0, None, None,
     "policy", ["rsa-sha1"]),
    ("512-bit-key", "short", "short", DKIM_DOMAIN, ("relaxed", "relaxed"), None, 0, None, None,
     "policy", ["1024 bits"]),
    ("expired-x", "rsa", SELECTOR, DKIM_DOMAIN, ("relaxed", "relaxed"), None, -7200, -3600, None,
     "policy", ["expired"]),
    ("body-changed", "rsa", SELECTOR, DKIM_DOMAIN, ("simple", "simple"), None, 0, None, "body",
     "fail", ["body hash"]),
    ("header-changed", "rsa", SELECTOR, DKIM_DOMAIN, ("relaxed", "relaxed"), None, 0, None, "subject",
     "fail", ["signature"]),
    ("key-nxdomain", "rsa", "gone", DKIM_DOMAIN, ("relaxed", "relaxed"), None, 0, None, None,
     "permerror", ["no key"]),
    ("key-revoked", "rsa", "revoked", DKIM_DOMAIN, ("relaxed", "relaxed"), None, 0, None, None,
     "permerror", ["revoked"]),
    ("testing-key", "rsa", "testing", DKIM_DOMAIN, ("relaxed", "relaxed"), None, 0, None, None,
     "pass", ["testing"]),
    ("key-unreachable", "rsa", SELECTOR, "unreachable.test", ("relaxed", "relaxed"), None, 0, None, None,
     "temperror", ["key lookup"]),
    # A key whose DNSSEC validation fails is unavailable (SERVFAIL from the validator), never a bad signature.
    ("key-bogus-dnssec", "rsa", SELECTOR, "bogus.test", ("relaxed", "relaxed"), None, 0, None, None,
     "temperror", ["key lookup"]),
    ("key-dnssec-secure", "rsa", SELECTOR, "secure.test", ("simple", "simple"), None, 0, None, None,
     "pass", ["dnssec=secure"]),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_signature_result_in_header_and_log(lab, case):
    (_, key_name, selector, domain, canon, algorithm, shift, x_offset, change, expected, words) = case
    key = getattr(keys(), key_name)
    now = _now()
    body = b"Dear reader,\r\n\r\nthe  body   keeps   its blanks.\r\n\r\n\r\n"
    signed = sign(message(author=AUTHOR, subject=FOLDED_SUBJECT, body=body), key, domain=domain,
                  selector=selector, canon=canon, algorithm=algorithm, timestamp=now + shift,
                  expiration=None if x_offset is None else now + x_offset)
    if change == "body":
        signed = signed.replace(b"keeps   its blanks", b"keeps   its blankz")
    elif change == "subject":
        signed = replace_header(signed, "Subject", b"Subject: A quarterly report on something else")

    sent, delivered = deliver(lab, signed)
    ar = our_ar(delivered)
    entry = single_dkim(ar, domain)
    assert entry.result == expected, ar.raw
    assert entry.properties["header.s"] == selector
    assert entry.properties["header.a"] == (algorithm or key.signature_algorithm)
    assert entry.properties["header.b"] == b_prefix(signed)
    assert entry.properties["header.i"] == f"@{domain}"
    (comment,) = comments(ar, "dkim")
    for word in words:
        assert word in comment, f"{word!r} not in the dkim comment {comment!r}"

    log = lab.milter_log(sent)
    assert (log["dkim"], log["dkim_d"], log["action"]) == (expected, domain, "accept"), log["_line"]


def test_simple_signature_survives_postfix_byte_for_byte(lab):
    """The headers as delivered are the headers as signed (Postfix only adds its own on top), so a simple/simple
    pass proves the milter rebuilt each folded header exactly (SMFIP_HDR_LEADSPC)."""
    signed = sign(message(author=AUTHOR, subject=FOLDED_SUBJECT), keys().rsa, domain=DKIM_DOMAIN,
                  canon=("simple", "simple"))
    sent, delivered = deliver(lab, signed)
    assert FOLDED_SUBJECT.replace(b"\r\n", b"\n") in delivered.raw
    assert our_ar(delivered).only("dkim", header_d=DKIM_DOMAIN).result == "pass"


@pytest.mark.parametrize("canon", [("simple", "simple"), ("relaxed", "relaxed")], ids=["simple", "relaxed"])
@pytest.mark.parametrize("local_part", ["author", "jörg"], ids=["ascii-address", "utf8-address"])
def test_raw_utf8_headers_verify(lab, canon, local_part):
    """SMTPUTF8 mail: raw UTF-8 in a folded Subject, the From display name (and the address itself) must reach
    the verifier as the signer hashed them (RFC 6532 headers). A Python milter that decodes and re-encodes
    headers breaks this."""
    address = f"{local_part}@{DKIM_DOMAIN}"
    subject = "Subject: Grüße aus Zürich —\r\n\tüber 日本語 und  Ελληνικά".encode("utf-8")
    data = message(author=address, subject=subject, from_line=f"From: Jörg Müller <{address}>".encode("utf-8"),
                   extra=["X-Note: naïve café".encode("utf-8")])
    signed = sign(data, keys().rsa, domain=DKIM_DOMAIN, canon=canon,
                  headers=("from", "to", "subject", "date", "message-id", "x-note"))
    # The envelope stays ASCII: the lab's SMTP client (smtplib) encodes commands as ASCII. The From header
    # carries the UTF-8 address, which is what DKIM and DMARC read.
    sent, delivered = deliver(lab, signed, mail_params=" SMTPUTF8")
    assert subject.replace(b"\r\n", b"\n") in delivered.raw  # Postfix delivered the raw bytes
    ar = our_ar(delivered)
    assert single_dkim(ar, DKIM_DOMAIN).result == "pass", ar.raw
    log = lab.milter_log(sent)
    assert log["dkim"] == "pass", log["_line"]


def test_several_signatures_are_told_apart_by_header_b(lab):
    """One entry per signature, in order, each with its own header.b (RFC 6008)."""
    k = keys()
    data = message(author=AUTHOR, subject=FOLDED_SUBJECT)
    once = sign(data, k.rsa, domain=DKIM_DOMAIN, canon=("simple", "simple"))
    twice = sign(once, k.ed25519, domain=DKIM_DOMAIN, selector="ed", canon=("relaxed", "relaxed"))
    thrice = sign(twice, k.rsa, domain=DKIM_DOMAIN, selector="gone")
    sent, delivered = deliver(lab, thrice)
    ar = our_ar(delivered)
    entries = [entry for entry in ar.entries if entry.method == "dkim"]
    assert [(e.result, e.properties["header.s"], e.properties["header.b"]) for e in entries] == [
        ("permerror", "gone", b_prefix(thrice, 0)),
        ("pass", "ed", b_prefix(thrice, 1)),
        ("pass", SELECTOR, b_prefix(thrice, 2)),
    ]
    log = lab.milter_log(sent)
    assert log["dkim"] == "permerror,pass,pass", log["_line"]


def test_junk_signatures_on_top_cannot_push_out_the_aligned_one(lab):
    """Issue 3: at most [dkim] max_signatures (5) are verified, those aligned with the From domain first; the rest
    share one dkim=policy entry saying how many were skipped."""
    k = keys()
    signed = sign(message(author=AUTHOR), k.rsa, domain=DKIM_DOMAIN)
    for n in range(6):
        signed = sign(signed, k.rsa, domain=f"junk{n}.example")
    sent, delivered = deliver(lab, signed)
    ar = our_ar(delivered)
    entries = [entry for entry in ar.entries if entry.method == "dkim"]
    assert [e.properties.get("header.d") for e in entries if e.result == "pass"] == [DKIM_DOMAIN], ar.raw
    assert sorted(e.result for e in entries) == ["pass", "permerror", "permerror", "permerror", "permerror",
                                                 "policy"], ar.raw
    assert "2 signatures not evaluated" in comments(ar, "dkim")[-1]
    log = lab.milter_log(sent)
    assert log["dkim_skipped"] == "2", log["_line"]


ODD_HEADERS = [
    b"X-No-Space:value right after the colon",
    b"X-Two-Spaces:  two leading blanks",
    b"X-Tab:\ttab after the colon",
    b"X-Empty:",
    b"X-Fold-First:\r\n\tvalue only on the continuation line",
    b"X-Trailing: trailing blanks   ",
    b"X-Deep-Fold: a\r\n \r\n\tb",
]


@pytest.mark.parametrize("line", ODD_HEADERS, ids=[line.split(b":")[0].decode() for line in ODD_HEADERS])
def test_simple_header_canonicalization_survives_odd_header_shapes(lab, line):
    """simple header canonicalization covers every byte after the name: blanks after the colon (or none), empty
    values, folds on the first line. Postfix hands each header over separately; what reaches dkimpy must be the
    bytes that were signed. A dot-stuffed body line rides along for the body hash."""
    name = line.split(b":")[0].decode().lower()
    data = message(author=AUTHOR, extra=[line], body=b".a line starting with a dot\r\n..and two\r\n")
    signed = sign(data, keys().rsa, domain=DKIM_DOMAIN, canon=("simple", "simple"),
                  headers=SIGNED_HEADERS + (name,))
    sent, delivered = deliver(lab, signed)
    ar = our_ar(delivered)
    assert single_dkim(ar, DKIM_DOMAIN).result == "pass", ar.raw
