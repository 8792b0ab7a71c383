"""DKIM body canonicalization and hashing, fed chunk by chunk (RFC 6376 §3.4.3, §3.4.4, §3.7).

dkimpy canonicalizes the whole body in memory once per signature. Here a body is read once: one canonicalizer per
body canonicalization, one hash per distinct (canonicalization, l=, hash algorithm). A canonicalizer holds back only
what the next chunk could still change (a run of trailing empty lines, a pending whitespace run, a lone CR), so the
result does not depend on where the chunks were split. The output equals dkimpy 1.1.8's `canonicalize_body` byte for
byte (tests/test_dkim.py over random bodies and splits, tests/test_dkim_conformance.py over the Mail::DKIM corpus
split at every awkward place), including its reading of two corner cases SMTP cannot produce: a body whose last
line lacks CRLF keeps trailing whitespace on that line, and bare CR or LF are ordinary characters, not line ends.
The relaxed rewrite of each chunk is done in C (authmilter/_relaxed.c, whose header has the measurement).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

# relax(chunk): §3.4.4 a+b over a chunk that ends in neither whitespace nor a lone CR: each whitespace run becomes one
# SP, or nothing when CRLF follows it. In C; `relax_reference` below is its definition in Python.
from authmilter._relaxed import relax

CRLF = b"\r\n"

# Only runs that are not already a single SP: rewriting each lone SP would cost a match per word.
_WSP_RUN = re.compile(rb"\t[\t ]*| [\t ]+")
# Matched against the REVERSED tail of the data, so that the suffix a later chunk could still change is found in
# linear time: an optional lone CR (reversed: first), then CRLF pairs (reversed "\n\r") and, for relaxed, WSP.
_RELAXED_SUFFIX_REVERSED = re.compile(rb"\r?(?:[\t ]+|\n\r)*")
_SIMPLE_SUFFIX_REVERSED = re.compile(rb"\r?(?:\n\r)*")
_BLOCK = 65536


class BodyCanon(StrEnum):
    SIMPLE = "simple"    # RFC 6376 §3.4.3
    RELAXED = "relaxed"  # RFC 6376 §3.4.4


class HashAlg(StrEnum):
    SHA256 = "sha256"
    SHA1 = "sha1"


@dataclass(frozen=True, slots=True)
class BodyHashKey:
    """What a body hash depends on; signatures with equal keys share one hash."""

    canon: BodyCanon
    alg: HashAlg
    limit: int | None = None  # l=, in canonical octets; None: the whole body


@dataclass(frozen=True, slots=True)
class BodyHash:
    digest: bytes
    canonical_length: int  # octets of the WHOLE canonical body, so a caller can tell l= exceeds it


class BodyCanonicalizer:
    """Turns body chunks into canonical body chunks; `feed()` as data arrives, `close()` once at the end."""

    def __init__(self, canon: BodyCanon) -> None:
        self.canon = canon
        self._relaxed = canon is BodyCanon.RELAXED
        self._held_crlfs = 0         # line ends not yet emitted: they only count if content follows
        self._pending_wsp = False    # relaxed: a whitespace run after the last held line end
        self._held_cr = False        # a CR at the end of the last chunk may start a CRLF
        self._emitted_any = False
        self._closed = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Canonical output made final by this chunk (possibly empty)."""
        if self._closed:
            raise ValueError("canonicalizer already closed")
        if not chunk:
            return []
        data = self._small_state() + chunk
        suffix_len = self._suffix_length(data)
        out: list[bytes] = []
        if suffix_len < len(data):
            stable = data[:len(data) - suffix_len] if suffix_len else data
            self._flush_held(out)
            out.append(self._canonicalize_stable(stable))
            self._emitted_any = True
        self._absorb_suffix(data[len(data) - suffix_len:] if suffix_len else b"")
        return out

    def close(self) -> list[bytes]:
        """The rest of the canonical body: RFC 6376 §3.4.3/§3.4.4 trailing empty lines and final CRLF."""
        if self._closed:
            raise ValueError("canonicalizer already closed")
        self._closed = True
        out: list[bytes] = []
        rest = self._small_state()
        if rest:
            # Nothing follows any more: a lone CR is content, and dkimpy keeps a whitespace run that no CRLF ends.
            self._held_cr = self._pending_wsp = False
            self._flush_held(out)
            out.append(rest)
            self._emitted_any = True
        if self._relaxed:
            # §3.4.4: trailing empty lines are ignored; a body that canonicalizes to nothing stays empty rather
            # than becoming one CRLF, as dkimpy does.
            if self._emitted_any:
                out.append(CRLF)
        else:
            # §3.4.3: "If there is no body or no CRLF at the end of the body, a CRLF is added"; otherwise the
            # held run of empty lines collapses to the one CRLF ending the last line.
            out.append(CRLF)
        self._held_crlfs = 0
        return out

    # ---------------------------------------------------------------- internals

    def _small_state(self) -> bytes:
        """The held bytes that must be re-read with the next chunk (at most two octets)."""
        return (b" " if self._pending_wsp else b"") + (b"\r" if self._held_cr else b"")

    def _suffix_length(self, data: bytes) -> int:
        """Length of the longest suffix of data that the next chunk could still change."""
        tail_start = len(data.rstrip(b" \t\r\n" if self._relaxed else b"\r\n"))
        tail = data[tail_start:]
        if not tail:
            return 0
        pattern = _RELAXED_SUFFIX_REVERSED if self._relaxed else _SIMPLE_SUFFIX_REVERSED
        match = pattern.match(tail[::-1])
        return match.end() if match else 0

    def _absorb_suffix(self, suffix: bytes) -> None:
        self._pending_wsp = False
        self._held_cr = suffix.endswith(b"\r")
        core = suffix[:-1] if self._held_cr else suffix
        self._held_crlfs += core.count(CRLF)
        if self._relaxed:
            # Whitespace before a CRLF is dropped (§3.4.4 a); only a run after the last CRLF is still undecided.
            self._pending_wsp = core[-1:] in (b" ", b"\t")

    def _flush_held(self, out: list[bytes]) -> None:
        remaining = self._held_crlfs
        while remaining:
            count = min(remaining, _BLOCK)
            out.append(CRLF * count)
            remaining -= count
        self._held_crlfs = 0

    def _canonicalize_stable(self, stable: bytes) -> bytes:
        return relax(stable) if self._relaxed else stable


def relax_reference(stable: bytes) -> bytes:
    """`relax` in Python: reduce each whitespace run to one SP; then whitespace at a line end is exactly
    " \r\n", and dropping that SP drops it all."""
    if b"\t" in stable or b"  " in stable:
        stable = _WSP_RUN.sub(b" ", stable)
    return stable.replace(b" \r\n", CRLF)


class _Digest:
    def __init__(self, key: BodyHashKey) -> None:
        self.key = key
        self.hash = hashlib.new(key.alg.value)
        self.room = key.limit  # canonical octets still to hash; None = no limit

    def update(self, piece: bytes) -> None:
        if self.room is None:
            self.hash.update(piece)
        elif self.room > 0:
            # §3.4.5: l= counts canonical octets; only that many are hashed.
            taken = piece[:self.room]
            self.hash.update(taken)
            self.room -= len(taken)


class BodyHasher:
    """Computes every needed body hash in one pass over the body: `update(chunk)` ..., then `finish()`.

    Canonicalization runs once per distinct body canonicalization, whatever the number of signatures.
    """

    def __init__(self, keys: Iterable[BodyHashKey]) -> None:
        self._keys = tuple(dict.fromkeys(keys))
        self._canonicalizers = {canon: BodyCanonicalizer(canon) for canon in {k.canon for k in self._keys}}
        self._digests = {key: _Digest(key) for key in self._keys}
        self._lengths = dict.fromkeys(self._canonicalizers, 0)
        self._result: dict[BodyHashKey, BodyHash] | None = None

    def update(self, chunk: bytes) -> None:
        if self._result is not None:
            raise ValueError("body hasher already finished")
        for canon, canonicalizer in self._canonicalizers.items():
            self._dispatch(canon, canonicalizer.feed(chunk))

    def finish(self) -> dict[BodyHashKey, BodyHash]:
        if self._result is None:
            for canon, canonicalizer in self._canonicalizers.items():
                self._dispatch(canon, canonicalizer.close())
            self._result = {key: BodyHash(d.hash.digest(), self._lengths[key.canon])
                            for key, d in self._digests.items()}
        return dict(self._result)

    def _dispatch(self, canon: BodyCanon, pieces: list[bytes]) -> None:
        digests = [d for d in self._digests.values() if d.key.canon is canon]
        for piece in pieces:
            self._lengths[canon] += len(piece)
            for digest in digests:
                digest.update(piece)


def hash_body(body: bytes, keys: Iterable[BodyHashKey], chunk_size: int = 1 << 20) -> dict[BodyHashKey, BodyHash]:
    """The whole-body form: the same single pass, fed in large chunks."""
    hasher = BodyHasher(keys)
    for start in range(0, len(body), chunk_size):
        hasher.update(body[start:start + chunk_size])
    return hasher.finish()


def canonicalize(body: bytes, canon: BodyCanon, splits: Iterable[int] = ()) -> bytes:
    """The canonical body as one byte string, fed at the given split offsets (for tests and tools)."""
    canonicalizer = BodyCanonicalizer(canon)
    out: list[bytes] = []
    start = 0
    for split in sorted(set(splits)):
        out += canonicalizer.feed(body[start:split])
        start = split
    out += canonicalizer.feed(body[start:])
    out += canonicalizer.close()
    return b"".join(out)
