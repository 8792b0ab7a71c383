"""Outbound signing end to end (issue 11): a client in [signing] networks submits through a real Postfix whose
smtpd runs a signing authmilter; the message Postfix delivers is then checked by OpenDKIM (`opendkim-testmsg`,
one signature at a time, its key lookups through the lab's Unbound) and by our own verifier (the delivered message
sent again, from the outside, through the verifying milter). Both key types (dual signing), simple and relaxed,
UTF-8 headers, a 10 MB body; a message altered after delivery fails both verifiers.

Keys: the lab's own (testlab/authzones.py), published as lab._domainkey (RSA-2048) and ed._domainkey (Ed25519) of
signer.example, and lab._domainkey of example.com (DMARC p=reject), installed as key files the way the milter
insists on (root, mode 0600; the Ed25519 one in dkimpy's base64-seed format).
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from testlab.authzones import DKIM_DOMAIN, SELECTOR, keys
from testlab.zonedata import GOOD_V4, STRANGER_V4
from tests.e2e.signing import FOLDED_SUBJECT, message, our_ar

pytestmark = pytest.mark.e2e

SUBMIT_V4 = "127.0.0.60"   # the submission host: the one address in [signing] networks
AUTHOR = f"author@{DKIM_DOMAIN}"
CANONS = ("relaxed/relaxed", "simple/simple")


def _needs(program: str, package: str) -> None:
    if shutil.which(program) is None:
        reason = f"{program} is not installed (Debian {package}; `make test` installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def key_lines(lab) -> str:
    """The [signing] keys value: the lab's keys written as files the way the milter insists on."""
    directory = lab.directory / "signing-keys"
    directory.mkdir(mode=0o700)
    rsa_file, ed_file = directory / "lab-rsa.pem", directory / "lab-ed25519.key"
    rsa_file.write_bytes(keys().rsa.private)
    ed_file.write_bytes(keys().ed25519.private)
    for path in (rsa_file, ed_file):
        path.chmod(0o600)
    return (f"\n    {DKIM_DOMAIN} {SELECTOR} {rsa_file}\n    {DKIM_DOMAIN} ed {ed_file}"
            f"\n    example.com {SELECTOR} {rsa_file}")


@pytest.fixture(scope="module")
def signing(lab, key_lines):
    """canonicalization -> the name of a signing milter variant (its own Postfix port)."""
    _needs("opendkim-testmsg", "opendkim-tools")
    return {canon: lab.variant(f"signing_{canon.split('/')[0]}", {"signing": {
        "keys": key_lines, "networks": f"{SUBMIT_V4}/32", "canonicalization": canon}}) for canon in CANONS}


def submit(lab, variant: str, data: bytes, *, mail_from: str = AUTHOR, source: str = SUBMIT_V4,
           mail_params: str = ""):
    sent = lab.send(mail_from=mail_from, source=source, data=data, variant=variant, mail_params=mail_params)
    assert sent.accepted, "; ".join(map(str, sent.stages))
    return sent, lab.delivered(sent)


def as_smtp(raw: bytes) -> bytes:
    """A delivered Maildir file as it would travel on: CRLF, without the delivery agent's own trace fields (a
    Delivered-To for our own recipient would make Postfix refuse the second delivery as a loop)."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    head_end = lines.index(b"")
    kept = [line for line in lines[:head_end] if not re.match(rb"(?i)(delivered-to|return-path):", line)]
    return b"\r\n".join(kept + lines[head_end:])


def one_signature(message_bytes: bytes, index: int) -> bytes:
    """The message with only its index-th DKIM-Signature field (OpenDKIM reports on the message as a whole)."""
    head, _, body = message_bytes.partition(b"\r\n\r\n")
    fields = re.findall(rb"[^\r\n]+(?:\r\n[ \t][^\r\n]*)*", head)
    signatures = [f for f in fields if f.lower().startswith(b"dkim-signature:")]
    kept = [f for f in fields if not f.lower().startswith(b"dkim-signature:") or f is signatures[index]]
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


def signature_count(message_bytes: bytes) -> int:
    return len(re.findall(rb"(?im)^dkim-signature:", message_bytes.partition(b"\r\n\r\n")[0]))


def opendkim_verifies(lab, message_bytes: bytes) -> tuple[bool, str]:
    done = lab.namespace.run("opendkim-testmsg", input=message_bytes, check=False, timeout=120)
    output = (done.stdout + done.stderr).decode("utf-8", "replace").strip()
    return done.returncode == 0 and not output, output


def verified_by_us(lab, smtp_message: bytes, *, mail_from: str = AUTHOR, source: str = GOOD_V4):
    """Send the delivered message again, from outside, through the verifying milter: our A-R for it."""
    for path in (lab.directory / "postfix" / "mail" / "inbox" / "new").iterdir():
        path.unlink()  # the first delivery carries the same Message-ID: the lab must find the second one
    sent = lab.send(mail_from=mail_from, source=source, data=smtp_message)
    assert sent.accepted, "; ".join(map(str, sent.stages))
    return our_ar(lab.delivered(sent)), lab.milter_log(sent)


UTF8_MESSAGE = dict(from_line="From: Jürgen Groß <author@signer.example>".encode(),
                    subject="Subject: Grüße aus Köln,\r\n\tgefaltet  mit\ttabs".encode(),
                    body="Hallo,  \r\n\r\nschöne Grüße\t\r\n\r\n\r\n".encode())
CONTENTS = {
    "folded-ascii": dict(subject=FOLDED_SUBJECT, extra=(b"MIME-Version: 1.0",
                                                       b"Content-Type: text/plain; charset=us-ascii",
                                                       b"List-Id: <team.signer.example>")),
    "utf8-headers": UTF8_MESSAGE,
    "10MB-body": dict(body=b"".join(b"line %07d with   blanks \t and text\r\n" % n for n in range(256_000))),  # 10.0 MB: Postfix takes 10240000
}


@pytest.mark.parametrize("content", CONTENTS)
@pytest.mark.parametrize("canon", CANONS)
def test_our_signatures_verify_with_opendkim_and_our_verifier_after_postfix_delivery(lab, signing, canon,
                                                                                     content):
    data = message(author=AUTHOR, **CONTENTS[content])
    params = " BODY=8BITMIME SMTPUTF8" if content == "utf8-headers" else ""
    sent, first = submit(lab, signing[canon], data, mail_params=params)
    fields = lab.milter_log(sent)
    assert fields["signed"] == f"d={DKIM_DOMAIN} s={SELECTOR}, d={DKIM_DOMAIN} s=ed", fields["_line"]
    assert fields["signing_client"] == "network"
    assert not first.get_all("Authentication-Results")  # signed, so not verified
    delivered = as_smtp(first.raw)
    assert signature_count(delivered) == 2
    for index in range(2):
        ok, output = opendkim_verifies(lab, one_signature(delivered, index))
        assert ok, f"OpenDKIM refused signature {index}: {output}"
    ar, log = verified_by_us(lab, delivered)
    dkim = sorted((e.result, e.properties.get("header.s"), e.properties.get("header.a"))
                  for e in ar.entries if e.method == "dkim")
    assert dkim == [("pass", "ed", "ed25519-sha256"), ("pass", SELECTOR, "rsa-sha256")], ar.raw
    assert log["dkim"] == "pass,pass"


@pytest.mark.parametrize("change", ["subject", "body"])
def test_a_message_altered_after_signing_fails_opendkim_and_our_verifier(lab, signing, change):
    sent, first = submit(lab, signing["simple/simple"], message(author=AUTHOR, body=b"Pay 100 EUR.\r\n"))
    delivered = as_smtp(first.raw)
    if change == "subject":
        altered = delivered.replace(b"Subject: authmilter e2e", b"Subject: authmilter e2e (urgent)", 1)
    else:
        altered = delivered.replace(b"Pay 100 EUR.", b"Pay 900 EUR.", 1)
    assert altered != delivered
    for index in range(2):
        ok, output = opendkim_verifies(lab, one_signature(altered, index))
        assert not ok, "OpenDKIM accepted an altered message"
    ar, _ = verified_by_us(lab, altered)
    assert sorted(e.result for e in ar.entries if e.method == "dkim") == ["fail", "fail"], ar.raw


def test_signed_mail_passes_dmarc_p_reject_from_a_server_spf_does_not_know(lab, signing):
    """What signing is for: example.com publishes p=reject and designates GOOD_V4 only; our signature carries the
    message through a stranger's IP (a forwarder) with dmarc=pass."""
    sent, first = submit(lab, signing["relaxed/relaxed"], message(author="news@example.com"),
                         mail_from="news@example.com")
    ar, log = verified_by_us(lab, as_smtp(first.raw), mail_from="news@example.com", source=STRANGER_V4)
    assert ar.only("spf", smtp_mailfrom="news@example.com").result == "fail"
    assert ar.only("dkim").result == "pass" and ar.only("dkim").properties["header.d"] == "example.com"
    assert ar.only("dmarc").result == "pass", ar.raw


def test_the_oracle_stays_closed_through_postfix(lab, signing):
    variant = signing["relaxed/relaxed"]
    # A signing client writing From: a domain other than its MAIL FROM domain: delivered unsigned.
    sent, first = submit(lab, variant, message(author="ceo@example.com"))
    assert not first.get_all("DKIM-Signature")
    fields = lab.milter_log(sent)
    assert fields["signed"] == "no" and "is not the MAIL FROM domain" in fields["signing_reason"]
    # A relay (any client outside [signing] networks) with a matching From: verified, never signed.
    sent, first = submit(lab, variant, message(author=AUTHOR), source=GOOD_V4)
    assert not first.get_all("DKIM-Signature")
    assert our_ar(first).only("spf", smtp_mailfrom=AUTHOR).result == "pass"
    assert "signed" not in lab.milter_log(sent)
