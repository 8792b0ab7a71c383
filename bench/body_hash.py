"""CPU cost of DKIM body hashing on a 2 MB message: dkimpy's whole-message path against ours (a measurement, not a
test; run `.venv/bin/python -m bench.body_hash`).

Prints the best of several runs, in milliseconds of process CPU time, for:
- sha256 of the raw body (the floor),
- dkimpy 1.1.8 `dkim.verify()` on the whole message (parse, canonicalize, hash, verify one rsa-2048 signature),
- dkimpy's relaxed body canonicalization + sha256 alone,
- our BodyHasher fed in 64 KB chunks (as the milter receives the body), relaxed and simple,
- our `check_dkim()` on the same message (parse, key from FakeDns, body pass, dkimpy header verify).
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dkim  # noqa: E402
from dkim.canonicalization import Relaxed  # noqa: E402

from authmilter.checks.dkim.check import check_dkim  # noqa: E402
from authmilter.checks.dkim.body import BodyCanon, BodyHasher, BodyHashKey, HashAlg  # noqa: E402
from authmilter.config import DkimSection  # noqa: E402
from testlab.fakedns import FakeDns  # noqa: E402
from authmilter.cli import parse_message  # noqa: E402
from authmilter.context import Header, Message  # noqa: E402

# The throw-away test keys (data, not code: the bench imports no test module).
KEYS = ROOT / "tests" / "data" / "dkim" / "keys"
RSA2048 = (KEYS / "rsa2048.key").read_bytes().strip()
RSA2048_PUBLIC = (KEYS / "rsa2048.pub.b64").read_text().strip()


def message_from_bytes(raw: bytes) -> Message:
    headers, body = parse_message(raw)
    return Message(tuple(Header(name, value) for name, value in headers), body)

WORDS = "the quick brown fox jumps over lazy dog lorem ipsum dolor sit amet mail body text".split()


def make_body(size: int, wsp_runs: bool = False) -> bytes:
    """Text lines; with wsp_runs, words are also separated by double spaces and tabs (relaxed's worst case)."""
    rnd = random.Random(7)
    separators = [" ", " ", "  ", "\t", " \t "] if wsp_runs else [" "]
    lines, total = [], 0
    while total < size:
        line = "".join(rnd.choice(WORDS) + rnd.choice(separators) for _ in range(rnd.randint(3, 14))).rstrip()
        if rnd.random() < 0.1:
            line += "   "                      # trailing whitespace for relaxed to strip
        if rnd.random() < 0.05:
            line = ""                          # paragraph breaks
        lines.append(line.encode() + b"\r\n")
        total += len(lines[-1])
    return b"".join(lines)


def best(fn, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times) * 1000


def main() -> None:
    for wsp_runs in (False, True):
        measure(make_body(2 * 1024 * 1024, wsp_runs), wsp_runs)


def measure(body: bytes, wsp_runs: bool) -> None:
    head = (b"From: news@example.org\r\nTo: user@example.net\r\nSubject: bench\r\n"
            b"Date: Fri, 11 Jul 2003 21:00:37 -0700\r\nMessage-ID: <1@example.org>\r\n\r\n")
    unsigned = head + body
    signature = dkim.sign(unsigned, b"sel", b"example.org", RSA2048, canonicalize=(b"relaxed", b"relaxed"))
    message = signature + unsigned
    record = f"v=DKIM1; k=rsa; p={RSA2048_PUBLIC}"
    msg = message_from_bytes(message)
    dns_zone = {"sel._domainkey.example.org": {"TXT": [record]}}

    def dkimpy_verify():
        assert dkim.verify(message, dnsfunc=lambda name, timeout=5: record.encode())

    def ours(canon: BodyCanon):
        def run():
            hasher = BodyHasher([BodyHashKey(canon, HashAlg.SHA256)])
            for i in range(0, len(body), 65536):
                hasher.update(body[i:i + 65536])
            hasher.finish()
        return run

    def ours_check():
        result = check_dkim(msg, FakeDns(dns_zone), DkimSection(), now=time.time(), from_domain="example.org")
        assert result.passing_domains() == ("example.org",)

    rows = [
        ("sha256 of the raw body", best(lambda: hashlib.sha256(body).digest())),
        ("dkimpy dkim.verify() whole message", best(dkimpy_verify)),
        ("dkimpy relaxed canonicalize_body + sha256", best(lambda: hashlib.sha256(Relaxed.canonicalize_body(body)))),
        ("ours BodyHasher relaxed, 64 KB chunks", best(ours(BodyCanon.RELAXED))),
        ("ours BodyHasher simple, 64 KB chunks", best(ours(BodyCanon.SIMPLE))),
        ("ours check_dkim() whole message", best(ours_check)),
    ]
    kind = "with tab/double-space runs" if wsp_runs else "single spaces"
    print(f"body {len(body)} octets ({kind}), Python {sys.version.split()[0]}, best of 5, CPU ms")
    for label, ms in rows:
        print(f"  {label:45s} {ms:8.1f}")


if __name__ == "__main__":
    main()
