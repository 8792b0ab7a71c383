"""The signer (signing/signer.py), fed as the adapter feeds it: header fields rebuilt as Postfix hands them, the body
in chunks. Every signature is checked by dkimpy (an independent verifier) and by our own verifier
(checks.dkim.check over FakeDns); a change after signing must make both fail."""

from __future__ import annotations

import ipaddress
import re
import time

import pytest

from authmilter.checks.dkim.check import check_dkim
from authmilter.config import DkimSection
from authmilter.context import Header, Message
from authmilter.results import Status
from authmilter.signing.decide import SigningClient
from authmilter.signing.keys import load_keyring
from authmilter.signing.signer import SigningSession, sign_message, start_session
from testlab.fakedns import FakeDns
from tests.signing_support import (ED_RECORD, RSA_RECORD, dkimpy_results, install_keys, signature_tags,
                                   signing_config)

# dkimpy checks t= and x= against the wall clock, so signatures are made "a minute ago".
NOW = int(time.time()) - 60
ZONE = {"r._domainkey.example.org": RSA_RECORD, "e._domainkey.example.org": ED_RECORD}
ALICE = SigningClient("authenticated", "alice")
KEYSETS = {"rsa": ["r"], "ed25519": ["e"], "dual": ["r", "e"]}
CANONS = ("relaxed/relaxed", "relaxed/simple", "simple/simple", "simple/relaxed")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return install_keys(tmp_path_factory.mktemp("keys"))


def config(keys, selectors=("r", "e"), extra: str = ""):
    files = {"r": keys["rsa"], "e": keys["ed25519"]}
    return signing_config("\n".join(f"example.org {s} {files[s]}" for s in selectors), extra)


def split(raw: bytes) -> tuple[list[Header], bytes]:
    """Header fields as the adapter keeps them (leading space, CRLF folding) and the body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    headers: list[Header] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            headers[-1] = Header(headers[-1].name, headers[-1].value + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            headers.append(Header(name, value))
    return headers, body


def sign_streamed(cfg, raw: bytes, *, chunk: int = 65535, mail_from: str = "alice@example.org",
                  now: float = NOW):
    """What the adapter does: a session, the header at the first chunk, the body chunk by chunk, then finish."""
    headers, body = split(raw)
    session = SigningSession(load_keyring(cfg), cfg.signing, ALICE, mail_from)
    for start in range(0, len(body), chunk):
        session.begin_body(headers, False)
        session.update(body[start:start + chunk])
    outcome = session.finish(now, headers, False)
    signed = b"".join(b"DKIM-Signature:" + s.value.encode() + b"\r\n" for s in outcome.signatures) + raw
    return outcome, signed


def ours(signed: bytes) -> list[Status]:
    """Our own verifier's status for each signature, as the milter would judge the delivered message."""
    headers, body = split(signed)
    result = check_dkim(Message(tuple(headers), body), FakeDns({name: {"TXT": [value]} for name, value in
                                                                 ZONE.items()}),
                        DkimSection(), now=NOW + 60, from_domain="example.org")
    return [sig.status for sig in result.signatures]


UTF8 = ("From: Jürgen Groß <alice@example.org>\r\nTo: Ünal <bob@example.net>\r\n"
        "Subject: Grüße aus Köln,\r\n\tgefaltet  mit\ttabs\r\n und   spaces \r\n"
        "Date: Sun, 22 Nov 2026 12:00:00 +0000\r\nMessage-ID: <u1@example.org>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        "List-Id: <team.example.org>\r\nX-Mailer: not signed\r\n\r\n"
        "Hallo Bob,  \r\n\r\nschöne Grüße\t \r\n\r\n\r\n").encode("utf-8")


@pytest.mark.parametrize("canon", CANONS)
@pytest.mark.parametrize("keyset", KEYSETS)
def test_signatures_verify_with_dkimpy_and_ours_for_every_key_type_and_canonicalization(keys, keyset, canon):
    cfg = config(keys, KEYSETS[keyset], f"canonicalization = {canon}\n")
    outcome, signed = sign_streamed(cfg, UTF8, chunk=7)  # tiny chunks: every split point in the body
    assert [s.key.selector for s in outcome.signatures] == KEYSETS[keyset]
    assert dkimpy_results(signed, ZONE) == [True] * len(KEYSETS[keyset])
    assert ours(signed) == [Status.PASS] * len(KEYSETS[keyset])
    tags = signature_tags(signed)
    assert tags["c"] == canon and tags["d"] == "example.org" and tags["t"] == str(NOW) and "x" not in tags


def test_dual_signing_gives_one_rsa_and_one_ed25519_signature(keys):
    outcome, signed = sign_streamed(config(keys), UTF8)
    algorithms = sorted(signature_tags(signed, index)["a"] for index in range(2))
    assert algorithms == ["ed25519-sha256", "rsa-sha256"]
    fields = dict(outcome.log_fields())
    assert fields["signed"] == "d=example.org s=r, d=example.org s=e"
    assert fields["signed_a"] == "rsa-sha256,ed25519-sha256"


def test_signed_header_list_oversigns_from_and_subject_and_takes_only_present_fields(keys):
    _, signed = sign_streamed(config(keys, ["r"]), UTF8)
    names = signature_tags(signed)["h"].split(":")
    assert names.count("from") == 2 and names.count("subject") == 2  # one more than present (RFC 6376 §5.4.2)
    for present in ("to", "date", "message-id", "mime-version", "content-type", "content-transfer-encoding",
                    "list-id"):
        assert names.count(present) == 1, present
    assert "cc" not in names and "reply-to" not in names and "x-mailer" not in names


def test_signature_lines_are_folded_under_78_characters(keys):
    _, signed = sign_streamed(config(keys), UTF8)
    head = signed.split(b"\r\n\r\n")[0].split(b"\r\n")
    ours_lines = head[:head.index(b"From: J\xc3\xbcrgen Gro\xc3\x9f <alice@example.org>")]
    assert ours_lines and all(len(line) <= 78 for line in ours_lines)
    assert all(line.startswith((b"DKIM-Signature: v=1;", b"\t")) for line in ours_lines)


def test_expire_days_sets_x(keys):
    _, signed = sign_streamed(config(keys, ["r"], "expire_days = 7\n"), UTF8)
    tags = signature_tags(signed)
    assert int(tags["x"]) - int(tags["t"]) == 7 * 86400
    assert dkimpy_results(signed, ZONE) == [True]


# (id, change made after signing, still passes)
ALTERATIONS = [
    ("subject-changed", lambda m: m.replace("Grüße aus Köln".encode(), "Grüsse aus Koeln".encode()), False),
    ("body-changed", lambda m: m.replace("schöne".encode(), "schoene".encode()), False),
    ("second-from-added", lambda m: b"From: ceo@example.org\r\n" + m, False),
    ("list-id-changed", lambda m: m.replace(b"<team.example.org>", b"<evil.example.org>"), False),
    ("unsigned-field-added", lambda m: b"X-Spam-Score: 0\r\n" + m, True),
    ("received-added", lambda m: b"Received: from somewhere\r\n" + m, True),
]


@pytest.mark.parametrize("alter, passes", [case[1:] for case in ALTERATIONS], ids=[case[0] for case in ALTERATIONS])
def test_a_message_altered_after_signing_fails(keys, alter, passes):
    _, signed = sign_streamed(config(keys), UTF8)
    rest = signed.split(b"\r\nFrom: ", 1)  # our signatures, then the message as it was signed
    changed = rest[0] + b"\r\n" + alter(b"From: " + rest[1])
    assert dkimpy_results(changed, ZONE) == [passes, passes]
    assert ours(changed) == [Status.PASS if passes else Status.FAIL] * 2


def test_adding_a_subject_to_a_message_without_one_breaks_the_signature(keys):
    raw = b"From: alice@example.org\r\nTo: bob@example.net\r\n\r\nno subject\r\n"
    _, signed = sign_streamed(config(keys, ["r"]), raw)
    assert "subject" in signature_tags(signed)["h"].split(":")
    assert dkimpy_results(signed, ZONE) == [True]
    added = signed.replace(b"\r\nFrom: ", b"\r\nSubject: urgent\r\nFrom: ", 1)
    assert dkimpy_results(added, ZONE) == [False]


def test_ten_megabyte_body_streamed_in_milter_chunks(keys):
    line = ("Zeile mit Umlauten äöü und   Leerzeichen \t\r\n" * 3 + "\r\n").encode()
    body = line * (10_000_000 // len(line))
    raw = UTF8.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
    outcome, signed = sign_streamed(config(keys), raw, chunk=65535)
    assert len(outcome.signatures) == 2
    assert dkimpy_results(signed, ZONE) == [True, True]


def test_empty_body_is_signed_at_end_of_message(keys):
    cfg = config(keys, ["r"])
    headers, _ = split(b"From: alice@example.org\r\nSubject: empty\r\n\r\n")
    session = SigningSession(load_keyring(cfg), cfg.signing, ALICE, "alice@example.org")
    outcome = session.finish(NOW, headers, False)  # no body chunk ever came
    signed = b"DKIM-Signature:" + outcome.signatures[0].value.encode() + b"\r\n" + \
        b"From: alice@example.org\r\nSubject: empty\r\n\r\n"
    assert dkimpy_results(signed, ZONE) == [True]


def test_refused_transaction_gets_no_signature_and_says_why(keys):
    outcome, signed = sign_streamed(config(keys), UTF8.replace(b"alice@example.org>", b"ceo@example.com>", 1))
    assert outcome.signatures == ()
    fields = dict(outcome.log_fields())
    assert fields["signed"] == "no"
    assert fields["signing_reason"] == "no key for example.com"
    assert fields["signing_client"] == "authenticated" and fields["login"] == "alice"
    assert outcome.milter_headers(True) == []


def test_key_listed_ahead_of_its_date_does_not_sign_yet(keys):
    cfg = signing_config(f"example.org r {keys['rsa']} from=2030-01-01")
    outcome, _ = sign_streamed(cfg, UTF8)
    assert outcome.signatures == () and "signs yet" in outcome.reason


def test_milter_headers_use_lf_folding_and_the_leading_space_only_with_leadspc(keys):
    outcome, _ = sign_streamed(config(keys, ["r"]), UTF8)
    [(name, with_space)] = outcome.milter_headers(True)
    [(_, without_space)] = outcome.milter_headers(False)
    assert name == "DKIM-Signature"
    assert with_space.startswith(" v=1;") and without_space.startswith("v=1;")
    assert "\r" not in with_space and "\n\t" in with_space


def test_start_session_only_for_signing_clients_and_only_with_keys(keys):
    cfg = config(keys)
    keyring = load_keyring(cfg)
    relay = start_session(keyring, cfg.signing, ipaddress.ip_address("192.0.2.1"), None, "a@example.org")
    local = start_session(keyring, cfg.signing, ipaddress.ip_address("127.0.0.1"), None, "a@example.org")
    keyless = start_session(None, cfg.signing, ipaddress.ip_address("127.0.0.1"), None, "a@example.org")
    assert relay is None and keyless is None
    assert local is not None and local.client.via == "network"


# ---------------------------------------------------------------- sign_message (reports)

def test_sign_message_signs_with_the_from_domain_keys_and_returns_crlf(keys):
    raw = UTF8.replace(b"\r\n", b"\n")  # a report built with LF line ends
    signed = sign_message(raw, config(keys), now=NOW)
    assert b"\n" not in signed.replace(b"\r\n", b"")
    assert signed.endswith(UTF8)
    assert dkimpy_results(signed, ZONE) == [True, True]


def test_sign_message_leaves_a_message_of_another_domain_unsigned(keys):
    raw = b"From: dmarc@example.net\r\nSubject: Report\r\n\r\nreport\r\n"
    assert sign_message(raw, config(keys), now=NOW) == raw
    no_keys = signing_config("example.org r " + str(keys["rsa"]))
    assert sign_message(raw.replace(b"\r\n", b"\n"), no_keys, now=NOW) == raw


def test_header_list_stays_bounded_whatever_the_header_holds(keys):
    lists = "".join(f"List-X{n}: x\r\n" for n in range(50))
    raw = ("From: alice@example.org\r\n" + "To: b@example.net\r\n" * 40 + lists + "\r\nbody\r\n").encode()
    _, signed = sign_streamed(config(keys, ["r"]), raw)
    names = signature_tags(signed)["h"].split(":")
    assert names.count("to") == 20 and len([n for n in names if n.startswith("list-")]) == 10
    assert dkimpy_results(signed, ZONE) == [True]


def test_reports_send_signs_report_mail_with_the_from_domain_key(keys):
    # RFC 9990 §3.5: the report must pass DMARC aligned where it arrives; `reports send` applies the signer in its
    # one hook, before the bytes are stored for byte-for-byte retries.
    from authmilter.reports import send

    report = (b"From: DMARC reports <dmarc@example.org>\r\nTo: rua@example.net\r\n"
              b"Subject: Report Domain: example.net Submitter: example.org Report-ID: abc123\r\n"
              b"Message-ID: <abc123@example.org>\r\nDate: Sat, 05 Dec 2026 00:00:00 +0000\r\n"
              b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nreport attached\r\n")
    signed = send.sign(report, config(keys))
    assert signed.endswith(report) and signed.startswith(b"DKIM-Signature:")
    assert dkimpy_results(signed, ZONE) == [True, True]
    assert send.sign(report, signing_config("")) == report  # no [signing] keys: unsigned, SPF must carry it
