"""The milter keeps no body: it streams it into the DKIM body hashes (bodystream.BodyStream), and the verdict must
be exactly the one `authmilter check` gives on the whole message (judge.judge over Message.body).

Offline: every message of the Mail::DKIM corpus and RFC 8463's example, through both paths, chunked at awkward
sizes; the selection of signatures (at most [dkim] max_signatures body hashes, aligned first) seen in the header.
Through the real daemon: a multi-signature message with l= and both canonicalizations, several MB long, gives the
same Authentication-Results as `authmilter check` on the same file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
import sys

import pytest

from authmilter.bodystream import BodyStream
from authmilter.checks.dkim.body import BodyCanon, BodyHashKey, HashAlg
from authmilter.config import Config, DkimSection, TrustSection
from authmilter.context import Connection, Envelope, Header, Message, MessageContext
from authmilter.judge import Judgement, judge
from authmilter.pipeline import body_plan as body_hash_keys
from testlab.fakedns import FakeDns
from tests.test_dkim import ED25519, NOW, P, message_from_bytes, sign
from tests.test_dkim_conformance import CORPUS, CORPUS_NOW, DATA, FILES, corpus_dns, rfc8463_dns

CLIENT = Connection(ipaddress.ip_address("192.0.2.1"), "", "mail.example.org")
ENVELOPE = Envelope("alice@example.org", ("bob@example.net",), "QSTREAM")
CFG = Config(trust=TrustSection(networks=(), authenticated=False))
LEGACY = dataclasses.replace(CFG, dkim=DkimSection(allow_sha1=True, min_key_bits=512))
AUTHSERV = "mx.example.net"


def whole(msg: Message, dns: FakeDns, cfg: Config, now: float) -> Judgement:
    return judge(MessageContext(CLIENT, ENVELOPE, msg), dns, cfg, AUTHSERV, now=now)


def streamed(msg: Message, dns: FakeDns, cfg: Config, now: float, chunk: int) -> Judgement:
    """What the adapter does: the stream is made from the header alone, then fed the body in chunks."""
    stream = BodyStream(CLIENT, dataclasses.replace(msg, body=b""), cfg)
    for start in range(0, len(msg.body), chunk):
        stream.update(msg.body[start:start + chunk])
    kept = stream.message()
    assert kept.body == b""
    return judge(MessageContext(CLIENT, ENVELOPE, kept), dns, cfg, AUTHSERV, now=now)


# ---------------------------------------------------------------- the same verdict on both paths

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="Mail::DKIM corpus not present")


@needs_corpus
@pytest.mark.parametrize("cfg", [CFG, LEGACY], ids=["defaults", "legacy"])
@pytest.mark.parametrize("name", FILES)
def test_corpus_message_streamed_gives_the_same_judgement_as_the_whole_message(name, cfg):
    msg = message_from_bytes((CORPUS / "corpus" / name).read_bytes())
    expected = whole(msg, corpus_dns(), cfg, CORPUS_NOW)
    for chunk in (1, 7, 65535):
        assert streamed(msg, corpus_dns(), cfg, CORPUS_NOW, chunk) == expected


def test_rfc8463_streamed_passes_both_signatures_like_the_whole_message():
    msg = message_from_bytes((DATA / "rfc8463" / "rfc8463.msg").read_bytes())
    now = 1527915362 + 60
    expected = whole(msg, rfc8463_dns(), CFG, now)
    assert expected.ar_value.count("dkim=pass") == 2
    for chunk in (1, 3, 4096):
        assert streamed(msg, rfc8463_dns(), CFG, now, chunk) == expected


ZONE = {
    "sel._domainkey.example.org": {"TXT": [f"v=DKIM1; k=rsa; p={P['rsa2048']}"]},
    "ed._domainkey.example.org": {"TXT": [f"v=DKIM1; k=ed25519; p={P['ed25519']}"]},
    "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject"]},
}

BASE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: streamed\r\n"
        b"Date: Mon, 01 Jan 2027 00:00:00 +0000\r\nMessage-ID: <s1@example.org>\r\n\r\n")


def multi_signed(body: bytes) -> bytes:
    raw = BASE + body
    return (sign(raw, canon="simple/simple") + sign(raw, canon="relaxed/relaxed", limit=100)
            + sign(raw, selector="ed", key=ED25519, algorithm="ed25519-sha256", canon="relaxed/simple") + raw)


BODIES = {
    "empty": b"",
    "trailing blank lines": b"line one \t \r\n\r\n\r\n",
    "whitespace runs": b"a  \t b\r\n \r\n\tc   \r\n" * 500,
    "large": (b"x" * 998 + b"  \r\n") * 3000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_three_signatures_with_l_and_both_canonicalizations_pass_on_both_paths(body):
    msg = message_from_bytes(multi_signed(body))
    expected = whole(msg, FakeDns(ZONE), CFG, NOW)
    ar = expected.ar_value.replace("\n\t", " ")
    # l=100 either exceeds the body (neutral, RFC 6376 §3.5) or leaves content unsigned (policy, issue 14): the
    # rest must pass.
    assert ar.count("dkim=pass") >= 2 and "dmarc=pass" in ar, ar
    for chunk in (1, 2, 1000, 65535):
        if chunk == 1 and len(body) > 20000:
            continue  # byte-by-byte over the whole large body proves nothing the other splits do not
        assert streamed(msg, FakeDns(ZONE), CFG, NOW, chunk) == expected


# ---------------------------------------------------------------- what is hashed at all

def many_signatures(count: int, aligned_last: bool) -> Message:
    """`count` junk signatures with distinct l= (each would be its own body hash), and one aligned, valid one."""
    raw = BASE + b"Hello.\r\n"
    junk = [Header(b"DKIM-Signature", f" v=1; a=rsa-sha256; c=relaxed/relaxed; d=junk{n}.example; s=s; "
                                      f"h=from; l={n}; bh=AAAA; b=AAAA".encode()) for n in range(count)]
    good = message_from_bytes(sign(raw) + raw)
    headers = (*junk, *good.headers) if aligned_last else (*good.headers, *junk)
    return Message(headers, good.body)


def test_a_thousand_signatures_with_distinct_l_cost_at_most_max_signatures_hashes():
    msg = many_signatures(1000, aligned_last=True)
    keys = body_hash_keys(CLIENT, msg, CFG)
    assert len(keys) <= CFG.dkim.max_signatures
    expected = whole(msg, FakeDns(ZONE), CFG, NOW)
    assert expected == streamed(msg, FakeDns(ZONE), CFG, NOW, 4096)
    ar = expected.ar_value.replace("\n\t", " ")
    # The aligned signature sits past MAX_RANKED (100): counted as skipped, never read.
    assert "dkim=policy (996 signatures not evaluated)" in ar and "dmarc=pass" not in ar


def test_aligned_signature_among_the_first_hundred_is_hashed_and_passes_when_streamed():
    msg = many_signatures(50, aligned_last=True)
    keys = body_hash_keys(CLIENT, msg, CFG)
    assert len(keys) <= CFG.dkim.max_signatures
    assert BodyHashKey(BodyCanon.RELAXED, HashAlg.SHA256, None) in keys  # the aligned one is chosen first
    result = streamed(msg, FakeDns(ZONE), CFG, NOW, 4096)
    assert result == whole(msg, FakeDns(ZONE), CFG, NOW)
    ar = result.ar_value.replace("\n\t", " ")
    assert "dkim=pass" in ar and "header.d=example.org" in ar and "dmarc=pass" in ar
    assert "dkim=policy (46 signatures not evaluated)" in ar


def test_nothing_is_hashed_without_signatures_or_for_a_trusted_client():
    plain = message_from_bytes(BASE + b"Hello.\r\n")
    assert body_hash_keys(CLIENT, plain, CFG) == frozenset()
    result = streamed(plain, FakeDns(ZONE), CFG, NOW, 10)
    assert "dkim=none (no signatures)" in result.ar_value
    signed = message_from_bytes(multi_signed(b"Hello.\r\n"))
    trusted = dataclasses.replace(CFG, trust=TrustSection(networks=(ipaddress.ip_network("192.0.2.0/24"),)))
    assert body_hash_keys(CLIENT, signed, trusted) == frozenset()
    assert body_hash_keys(CLIENT, signed, dataclasses.replace(CFG, dkim=DkimSection(enabled=False))) == frozenset()


# ---------------------------------------------------------------- through the daemon, against `authmilter check`

@pytest.fixture()
def keyed_dns():
    from testlab.dnsserver import DnsServer
    from tests.test_adapter import ZONE as ADAPTER_ZONE

    zone = {**ADAPTER_ZONE,
            "sel._domainkey.example.org": [{"TXT": f"v=DKIM1; k=rsa; p={P['rsa2048']}"}],
            "ed._domainkey.example.org": [{"TXT": f"v=DKIM1; k=ed25519; p={P['ed25519']}"}],
            "_dmarc.example.org": [{"TXT": "v=DMARC1; p=reject"}]}
    with DnsServer(zone, lifetime=120) as server:
        yield server


def _dkim_part(ar: str) -> list[str]:
    """The dkim= and dmarc= results of an A-R value, without the authserv-id line."""
    words = ar.replace("\n\t", " ").replace("\n", " ")
    return sorted(part.strip() for part in words.split(";") if part.strip().startswith(("dkim=", "dmarc=")))


def test_daemon_streams_a_multi_megabyte_signed_message_and_agrees_with_check(tmp_path, keyed_dns):
    from tests.test_adapter import adapter_daemon, config_text, headers_of, send

    raw = multi_signed((b"Line with  spaces \t\r\n" * 50 + b"\r\n") * 2500)  # ~2.6 MB
    sock = tmp_path / "stream.sock"
    daemon = adapter_daemon(tmp_path, config_text(f"unix:{sock}", keyed_dns)).start()
    try:
        body = raw.split(b"\r\n\r\n", 1)[1]
        result = send(str(sock), ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                      headers=headers_of(raw), body=body, queue_id="QSTREAM1")
        [milter_ar] = [v for _, n, v in result.inserted() if n == "Authentication-Results"]
    finally:
        assert daemon.stop() == 0
    message_file = tmp_path / "message.eml"
    message_file.write_bytes(raw)
    check = subprocess.run([sys.executable, "-m", "authmilter", "check", "--config", str(daemon.config_path),
                            "--ip", "192.0.2.1", "--helo", "mail.example.org", "--mail-from", "alice@example.org",
                            "--rcpt", "bob@example.net", str(message_file)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    check_ar = check.stdout.split("Authentication-Results:", 1)[1].split("\naction:")[0]
    assert _dkim_part(milter_ar) == _dkim_part(check_ar)
    # The l=100 signature leaves most of the body unsigned: dkim=policy since issue 14, on both paths alike.
    assert [p.split(" ")[0] for p in _dkim_part(milter_ar)] == ["dkim=pass"] * 2 + ["dkim=policy", "dmarc=pass"]
    assert "unsigned content after l=" in milter_ar
