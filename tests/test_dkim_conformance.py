"""DKIM conformance as data: the RFC 8463 example and the Mail::DKIM verifier corpus (../shared/corpora/mail-dkim).

The corpus is run twice:
- with our defaults, as a receiving MTA runs: every message is processed, nothing expected to fail or be invalid
  passes, and each expected pass we do not give is listed in DISAGREEMENTS with its RFC reason (most are rsa-sha1,
  512-bit keys, or the pre-RFC 6376 drafts' missing v=);
- in a legacy mode (rsa-sha1 allowed, 512-bit keys accepted) so that the signatures behind those refusals are
  still verified to the last byte: there every expected pass must pass except the pre-standard ones, and the
  expected failures still fail except where RFC 6376 dropped the rule the test was written for (g=).

The clock: CORPUS_NOW is 2024-11-14, the date of the upstream commit the corpus was copied from, so the signatures
(2006-2023) are judged as upstream's test run judges them; only ignore_7.txt carries x= (2007), and it is
expired under any date after 2007.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from dkim.canonicalization import Relaxed, Simple

from authmilter.checks.dkim.check import DkimResult, check_dkim
from authmilter.checks.dkim.body import BodyCanon, canonicalize
from authmilter.config import DkimSection
from authmilter.results import Dnssec, Status
from testlab.fakedns import FakeDns
from tests.test_dkim import header_text, message_from_bytes

DATA = Path(__file__).parent / "data" / "dkim"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "mail-dkim"
CORPUS_NOW = 1731542400  # 2024-11-14T00:00:00Z
LEGACY = DkimSection(allow_sha1=True, min_key_bits=512)

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="Mail::DKIM corpus not present")


# ---------------------------------------------------------------- RFC 8463 appendix A

def rfc8463_dns() -> FakeDns:
    zone = {}
    for name in ("brisbane._domainkey.football.example.com", "test._domainkey.football.example.com"):
        zone[name] = {"TXT": [(DATA / "rfc8463" / f"{name}.txt").read_text().strip()]}
    return FakeDns(zone, secure={"brisbane._domainkey.football.example.com"})


def test_rfc8463_example_both_signatures_verify():
    msg = message_from_bytes((DATA / "rfc8463" / "rfc8463.msg").read_bytes())
    result = check_dkim(msg, rfc8463_dns(), DkimSection(), now=1527915362 + 60, from_domain="football.example.com")
    assert [(s.algorithm, s.status, s.key_bits) for s in result.signatures] == [
        ("ed25519-sha256", Status.PASS, 256), ("rsa-sha256", Status.PASS, 1024)]
    header = header_text(result).replace("\n\t", " ")
    assert ("dkim=pass (256-bit ed25519 key; dnssec=secure) header.d=football.example.com "
            "header.i=@football.example.com header.s=brisbane header.a=ed25519-sha256 header.b=\"9/dsDChY\"") in header
    assert ("dkim=pass (1024-bit rsa key; dnssec=insecure) header.d=football.example.com "
            "header.i=@football.example.com header.s=test header.a=rsa-sha256 header.b=icKcLSEZ") in header
    assert result.passing_domains() == ("football.example.com", "football.example.com")


def test_rfc8463_example_broken_by_a_body_change():
    raw = (DATA / "rfc8463" / "rfc8463.msg").read_bytes().replace(b"We lost the game.", b"We won the game.")
    result = check_dkim(message_from_bytes(raw), rfc8463_dns(), DkimSection(), now=1527915362,
                        from_domain="football.example.com")
    assert [(s.status, s.reason) for s in result.signatures] == [(Status.FAIL, "body hash mismatch")] * 2


# ---------------------------------------------------------------- Mail::DKIM corpus

def corpus_dns() -> FakeDns:
    zone: dict = {}
    timeout, servfail = set(), set()
    for line in (CORPUS / "FAKE_DNS.dat").read_bytes().splitlines():
        line = line.strip()
        if not line or line[:1] in (b"#", b";"):
            continue
        name_bytes, _, value = line.partition(b" ")
        name, value = name_bytes.decode(), value.strip()
        if value == b"NXDOMAIN":
            continue  # absent from the zone: FakeDns answers NXDOMAIN
        if value == b"~~Query timed out~~":
            timeout.add(name)
        elif value == b"~~SERVFAIL~~":
            servfail.add(name)
        else:
            zone.setdefault(name, {}).setdefault("TXT", []).append(b"" if value == b'""' else value)
    return FakeDns(zone, timeout=timeout, servfail=servfail)


def expected() -> dict[str, dict[str, str]]:
    with open(CORPUS / "expected.tsv", newline="") as f:
        rows = [line for line in f if line.strip()]
    header = rows[0].lstrip("# ").rstrip("\n").split("\t")
    return {row[header[0]]: row for row in csv.DictReader(rows[1:], fieldnames=header, delimiter="\t")}


EXPECTED = expected()
FILES = sorted(EXPECTED)


def run(name: str, cfg: DkimSection) -> DkimResult:
    msg = message_from_bytes((CORPUS / "corpus" / name).read_bytes())
    return check_dkim(msg, corpus_dns(), cfg, now=CORPUS_NOW, from_domain=None)


def outcome(result: DkimResult) -> list[tuple[str, str]]:
    return [(str(s.status), s.reason) for s in result.signatures]


SHA1 = ("policy", "rsa-sha1 not accepted")
NO_V = ("neutral", "missing v= tag")
V05 = ("neutral", "unsupported version v=0.5")
WHY_SHA1 = "RFC 8301 §3.1: verifiers MUST NOT consider rsa-sha1 signatures valid"
WHY_NO_V = "RFC 6376 §3.5/§6.1.1: v= is REQUIRED; these follow the pre-RFC 4871 ietf drafts"
WHY_V05 = "RFC 6376 §6.1.1: v= other than 1 MUST be ignored (PERMFAIL incompatible version); v=0.5 is a draft"
WHY_DK = "DomainKeys (RFC 4870, Historic) is not DKIM; such messages carry no DKIM-Signature: dkim=none"

# Expected `pass` upstream, not pass with our defaults: file -> (our per-signature outcome, RFC reason).
DISAGREEMENTS: dict[str, tuple[list[tuple[str, str]], str]] = {
    **{name: ([], WHY_DK) for name in FILES if EXPECTED[name]["kind"] == "domainkeys"
       and EXPECTED[name]["mail_dkim_expected"] == "pass"},
    **{f"good_ietf00_{i}.txt": ([NO_V], WHY_NO_V) for i in range(1, 6)},
    "good_ietf01_1.txt": ([NO_V], WHY_NO_V),
    "good_ietf01_2.txt": ([NO_V], WHY_NO_V),
    **{f"mine_ietf01_{i}.txt": ([NO_V], WHY_NO_V) for i in range(1, 5)},
    "multiple_1.txt": ([NO_V] * 4, WHY_NO_V),
    "mine_ietf05_1.txt": ([V05], WHY_V05),
    **{f"no_body_{i}.txt": ([V05], WHY_V05) for i in range(1, 4)},
    **{name: ([SHA1], WHY_SHA1) for name in (
        "good_1878523.txt", "good_83176.txt", "good_qp_1.txt", "good_qp_2.txt", "good_qp_3.txt",
        "good_rfc4871_3.txt", "good_rfc4871_4.txt", "goodkey_1.txt", "goodkey_2.txt", "goodkey_3.txt",
        "goodkey_4.txt")},
    "multiple_2.txt": ([("neutral", "unknown canonicalization c=foobar"), SHA1, SHA1,
                        ("neutral", "signature syntax error")], WHY_SHA1),
}

WHY_G = ("RFC 6376 removed RFC 4871's key g= (granularity) tag; §3.6.1: unrecognized key tags MUST be ignored, "
         "so the key applies to any i=")
# In legacy mode (rsa-sha1 and 512-bit keys accepted): expectation upstream -> what we give, and why.
LEGACY_DISAGREEMENTS: dict[str, tuple[list[tuple[str, str]], str]] = {
    **{name: DISAGREEMENTS[name] for name in DISAGREEMENTS if DISAGREEMENTS[name][1] in (WHY_DK, WHY_NO_V, WHY_V05)},
    "badkey_8.txt": ([("pass", "")], WHY_G + " (key g=*poe)"),
    "badkey_9.txt": ([("pass", "")], WHY_G + " (key g= empty)"),
    "badkey_12.txt": ([("pass", "")], WHY_G + " (key g=jl*g, i=JLONG@)"),
    "badkey_13.txt": ([("pass", "")], WHY_G + " (key g=jl*g, i=foo@)"),
}


@pytest.mark.parametrize("name", FILES)
def test_corpus_with_defaults(name):
    result = run(name, DkimSection())  # no exception may escape, whatever the message
    expectation = EXPECTED[name]["mail_dkim_expected"]
    passed = bool(result.passing_domains())
    assert result.ar_entries()
    if expectation in ("fail", "invalid"):
        assert not passed, outcome(result)
    if name in DISAGREEMENTS:
        assert expectation == "pass" and not passed
        assert outcome(result) == DISAGREEMENTS[name][0]
    elif expectation == "pass":
        assert passed, outcome(result)


@pytest.mark.parametrize("name", FILES)
def test_corpus_in_legacy_mode(name):
    result = run(name, LEGACY)
    expectation = EXPECTED[name]["mail_dkim_expected"]
    passed = bool(result.passing_domains())
    if name in LEGACY_DISAGREEMENTS:
        assert outcome(result) == LEGACY_DISAGREEMENTS[name][0]
        assert passed != (expectation == "pass")
    else:
        assert passed == (expectation == "pass"), outcome(result)


# Per-signature results in legacy mode, where the corpus and RFCs pin them down.
LEGACY_EXACT = {
    # upstream: the first is invalid, the second passes, the third fails (README)
    "multiple_2.txt": [("neutral", "unknown canonicalization c=foobar"), ("pass", ""),
                       ("fail", "signature mismatch"), ("neutral", "signature syntax error")],
    "bad_1878954.txt": [("fail", "body hash mismatch")],
    "badkey1_ed25519.txt": [("permerror", "ed25519 key is not 32 octets")],  # RFC 8463 §4: bare 32-octet key
    "badkey2_ed25519.txt": [("fail", "signature mismatch")],
    "badkey3_ed25519.txt": [("fail", "body hash mismatch")],
    "badkey4_ed25519.txt": [("permerror", "no key")],
    "badkey5_ed25519.txt": [("permerror", "key record without p=")],  # the key record is ""
    "badkey_10.txt": [("permerror", "key t=s forbids a subdomain i=")],
    "badkey_11.txt": [("permerror", "key h= excludes sha256")],
    "badkey_14.txt": [("temperror", "key lookup timeout")],
    "badkey_15.txt": [("temperror", "key lookup SERVFAIL")],
    "ignore_5.txt": [("neutral", "no supported query method q=http")],
    "ignore_7.txt": [("policy", "signature expired")],
    "ignore_8.txt": [("neutral", "i= is not within d=")],
    "good_83176.txt": [("pass", "")],   # q=foo/bar:dns/txt:exam/ple: unknown methods ignored (RFC 6376 §3.5)
    "good_qp_2.txt": [("pass", "")],    # i= in dkim-quoted-printable (RFC 6376 §2.11)
    "good_qp_3.txt": [("pass", "")],
    "goodkey_ed25519.txt": [("pass", "")],
}


@pytest.mark.parametrize("name", sorted(LEGACY_EXACT))
def test_corpus_exact_results(name):
    assert outcome(run(name, LEGACY)) == LEGACY_EXACT[name]


def test_corpus_key_size_and_dnssec_reported():
    result = run("goodkey_ed25519.txt", DkimSection())
    assert [(s.key_bits, s.key_type, s.dnssec) for s in result.signatures] == [(256, "ed25519", Dnssec.INSECURE)]
    assert "dkim=pass (256-bit ed25519 key; dnssec=insecure)" in header_text(result)


def test_every_disagreement_is_a_listed_corpus_file():
    assert set(DISAGREEMENTS) <= set(FILES) and set(LEGACY_DISAGREEMENTS) <= set(FILES)
    assert len(FILES) == len(list((CORPUS / "corpus").glob("*.txt")))


# ---------------------------------------------------------------- body canonicalization on the corpus

def _awkward_splits(body: bytes) -> list[int]:
    """Offsets between CR and LF, inside and around whitespace runs, and throughout the trailing blank lines."""
    splits = {i for i in range(1, len(body)) if body[i - 1:i + 1] == b"\r\n"}
    splits |= {i for i in range(1, len(body)) if body[i - 1:i] in (b" ", b"\t") or body[i:i + 1] in (b" ", b"\t")}
    tail = len(body.rstrip(b" \t\r\n"))
    splits |= set(range(max(tail - 2, 0), len(body) + 1))
    return sorted(splits)


@pytest.mark.parametrize("name", FILES)
def test_body_canonicalizer_equals_dkimpy_on_corpus(name):
    body = message_from_bytes((CORPUS / "corpus" / name).read_bytes()).body
    for canon, reference in ((BodyCanon.SIMPLE, Simple), (BodyCanon.RELAXED, Relaxed)):
        want = reference.canonicalize_body(body)
        assert canonicalize(body, canon) == want
        splits = _awkward_splits(body)
        assert canonicalize(body, canon, splits) == want  # every awkward place at once
        for split in splits:
            assert canonicalize(body, canon, [split]) == want, split
