"""CPU cost of ARC verification on a 2 MB message, 1 and 3 hops: dkimpy's whole-message `arc_verify` against ours
(a measurement, not a test; run `.venv/bin/python -m bench.arc`).

Prints the best of several runs, in milliseconds of process CPU time, per message:
- dkimpy 1.1.8 `arc_verify()` on the whole message, as shipped (it canonicalizes and hashes the body once per
  hop and verifies with Python's pow()),
- ours as the milter runs it (libpatches installed): the one streamed body hash the ARC body plan asks for, fed in
  64 KB chunks, plus `check_arc()` on the headers (keys from FakeDns), and `check_arc()` alone.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dkim  # noqa: E402

from authmilter import libpatches  # noqa: E402
from authmilter.checks.arc.check import body_hash_keys, check_arc  # noqa: E402
from authmilter.checks.dkim.body import BodyHasher  # noqa: E402
from authmilter.cli import parse_message  # noqa: E402
from authmilter.config import DkimSection  # noqa: E402
from authmilter.context import Header, Message  # noqa: E402
from testlab.fakedns import FakeDns  # noqa: E402

# The throw-away test keys (data, not code: the bench imports no test module).
KEYS = ROOT / "tests" / "data" / "dkim" / "keys"
RSA2048 = (KEYS / "rsa2048.key").read_bytes().strip()
RECORD = "v=DKIM1; k=rsa; p=" + (KEYS / "rsa2048.pub.b64").read_text().strip()
SEALERS = ("hop1.example", "hop2.example", "hop3.example")
CHUNK = 65536
RUNS = 7


def body(size: int = 2 * 1024 * 1024) -> bytes:
    rng = random.Random(14)
    words = [b"lorem", b"ipsum", b"dolor", b"sit", b"amet,", b"consectetur", b"adipiscing", b"elit", b"\t", b"  "]
    lines, total = [], 0
    while total < size:
        line = b" ".join(rng.choice(words) for _ in range(12)) + b"\r\n"
        lines.append(line)
        total += len(line)
    return b"".join(lines)


def sealed(hops: int, body_bytes: bytes) -> bytes:
    raw = (b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: bench\r\n"
           b"Date: Sun, 22 Nov 2026 23:00:00 +0000\r\nMessage-ID: <arc.bench@example.org>\r\n\r\n") + body_bytes
    for hop in range(hops):
        sealer = SEALERS[hop]
        chain = "; arc=pass" if hop else ""
        raw = f"Authentication-Results: {sealer}; dmarc=pass header.from=example.org{chain}\r\n".encode() + raw
        arc_set = dkim.arc_sign(raw, b"arc", sealer.encode(), RSA2048, sealer.encode(),
                                include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        raw = b"".join(line.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for line in arc_set) + raw
    return raw


def best(fn) -> float:
    times = []
    for _ in range(RUNS):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times) * 1000.0


def main() -> None:
    zone = {f"arc._domainkey.{sealer}": {"TXT": [RECORD]} for sealer in SEALERS}
    txt = {f"arc._domainkey.{sealer}".encode(): RECORD.encode() for sealer in SEALERS}
    body_bytes = body()
    print(f"ARC verification, {len(body_bytes) / 1048576:.1f} MB body, best of {RUNS}, ms CPU per message")
    messages = {hops: sealed(hops, body_bytes) for hops in (1, 3)}
    dkimpy_ms = {}
    for hops, raw in messages.items():  # all before libpatches.install(): dkimpy as shipped
        def dkimpy_verify(raw=raw):
            status, _, reason = dkim.arc_verify(raw, dnsfunc=lambda name, timeout=5: txt.get(name.rstrip(b".")))
            assert status == b"pass", reason

        dkimpy_ms[hops] = best(dkimpy_verify)
    libpatches.install()
    for hops, raw in messages.items():
        headers, parsed_body = parse_message(raw)
        head = Message(tuple(Header(name, value) for name, value in headers))

        def streamed() -> Message:
            hasher = BodyHasher(body_hash_keys(head))
            for start in range(0, len(parsed_body), CHUNK):
                hasher.update(parsed_body[start:start + CHUNK])
            return Message(head.headers, b"", body_hashes=tuple(hasher.finish().items()))

        msg = streamed()

        def ours_all():
            result = check_arc(streamed(), FakeDns(zone), DkimSection())
            assert str(result.status) == "pass", result.reason

        def ours_check():
            result = check_arc(msg, FakeDns(zone), DkimSection())
            assert str(result.status) == "pass", result.reason

        print(f"  {hops} hop{'s' if hops > 1 else ' '}: dkimpy arc_verify {dkimpy_ms[hops]:7.1f}   "
              f"ours (streamed body hash + check) {best(ours_all):6.1f}   ours check_arc alone {best(ours_check):5.2f}")


if __name__ == "__main__":
    main()
