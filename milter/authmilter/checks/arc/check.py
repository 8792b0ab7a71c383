"""ARC chain validation (RFC 8617 §5.2) through our DNS client, with the newest AMS's body hash from the streamed
body (pipeline body plan), never the whole message.

The order is the RFC's: the chain's structure (chain.py), the newest ARC-Message-Signature (step 4), then every
ARC-Seal from the newest to i=1 (step 7); the first definite failure ends it. `oldest-pass` (steps 5-6) is optional
and not computed: it would need a body hash per older AMS. A key lookup that fails temporarily gives `temperror`
(RFC 8601 §2.7.1 semantics, as for DKIM); every other defect of the chain is `fail`, as RFC 8617 §5.2 says.
"""

from __future__ import annotations

import binascii
import logging

import dkim as dkimpy
import nacl.exceptions
from dkim.asn1 import ASN1FormatError
from dkim.crypto import UnparsableKeyError
from dkim.util import InvalidTagValueList

from authmilter.checks.arc.aar import read_aar
from authmilter.checks.arc.chain import ArcSet, ChainProblem, arc_fields, collect_sets
from authmilter.checks.arc.result import ArcHop, ArcResult
from authmilter.checks.arc.signature import DNS_NAME, ArcSignature, ArcSignatureProblem, read_ams, read_seal
from authmilter.checks.arc.verify import ams_verifies, seal_verifies
from authmilter.checks.dkim.body import BodyHash, BodyHashKey, hash_body
from authmilter.checks.dkim.key import KeyProblem, PublicKey, fetch_key_record, key_name, parse_key_record
from authmilter.config import DkimSection
from authmilter.context import HEADER_LIMIT, Message
from authmilter.resolver import DnsClient
from authmilter.results import Dnssec, Status

log = logging.getLogger(__name__)

# Raised by dkimpy's parsers and verifier, base64 and PyNaCl on hostile keys or signatures (as in checks/dkim).
_LIBRARY_ERRORS = (dkimpy.DKIMException, InvalidTagValueList, UnparsableKeyError, ASN1FormatError,
                   binascii.Error, nacl.exceptions.CryptoError, IndexError, ValueError, OverflowError)


def body_hash_keys(msg: Message) -> frozenset[BodyHashKey]:
    """The one body hash `check_arc` will ask for (the newest AMS's), known at end of headers; none for a chain
    that fails on its structure or its AMS tags."""
    if msg.headers_truncated:
        return frozenset()
    try:
        sets = collect_sets(msg)
        if not sets:
            return frozenset()
        ams = read_ams(sets[-1].instance, sets[-1].ams_tags)
    except (ChainProblem, ArcSignatureProblem):
        return frozenset()
    assert ams.body_key is not None
    return frozenset({ams.body_key})


def key_lookups(msg: Message) -> list[tuple[str, str]]:
    """The key records check_arc will look up if the chain holds (the newest AMS's, every seal's), known at end
    of headers so they can be asked side by side; none for a chain that fails on its structure."""
    if msg.headers_truncated:
        return []
    try:
        sets = collect_sets(msg)
        if not sets:
            return []
        signatures = [read_ams(sets[-1].instance, sets[-1].ams_tags)]
        signatures += [read_seal(arc_set.instance, arc_set.seal_tags) for arc_set in reversed(sets)]
    except (ChainProblem, ArcSignatureProblem):
        return []
    return [(name, "TXT") for name in dict.fromkeys(key_name(sig) for sig in signatures)]


class _Keys:
    """The keys of one message's chain: a hop's seal and AMS usually share a selector, so it is asked once."""

    def __init__(self, dns: DnsClient, dkim_cfg: DkimSection) -> None:
        self.dns = dns
        self.min_bits = dkim_cfg.min_key_bits
        self.dnssec: list[Dnssec] = []
        self._records: dict[str, tuple[bytes, Dnssec] | KeyProblem] = {}

    def key_for(self, sig: ArcSignature) -> PublicKey:
        name = key_name(sig)
        if name not in self._records:
            try:
                self._records[name] = fetch_key_record(sig, self.dns)
            except KeyProblem as problem:
                self._records[name] = problem
            found = self._records[name]
            self.dnssec.append(found[1] if isinstance(found, tuple) else found.dnssec)
        found = self._records[name]
        if isinstance(found, KeyProblem):
            raise found
        key = parse_key_record(sig, *found)
        if key.key_type == "rsa" and key.bits < self.min_bits:
            # RFC 8301 §3.2 applies to the keys of ARC signatures as to DKIM's ([dkim] min_key_bits).
            raise KeyProblem(Status.FAIL, f"key shorter than {self.min_bits} bits", key.dnssec)
        return key


def check_arc(msg: Message, dns: DnsClient, dkim_cfg: DkimSection, *, remote_ip: str = "") -> ArcResult:
    if not arc_fields(msg):
        return ArcResult(Status.NONE, remote_ip=remote_ip)
    if msg.headers_truncated:
        return ArcResult(Status.FAIL, HEADER_LIMIT, remote_ip=remote_ip)
    try:
        sets = collect_sets(msg)
    except ChainProblem as problem:
        return ArcResult(Status.FAIL, str(problem), remote_ip=remote_ip)
    keys = _Keys(dns, dkim_cfg)
    hops = tuple(_hop(arc_set) for arc_set in sets)
    stage = "ams"
    try:
        newest = sets[-1]
        ams = read_ams(newest.instance, newest.ams_tags)
        _verify_ams(ams, newest, keys, msg)       # §5.2 step 4
        stage = "seal"
        for arc_set in reversed(sets):            # §5.2 step 7
            seal = read_seal(arc_set.instance, arc_set.seal_tags)
            seal_verifies(seal, sets, keys.key_for(seal))
    except ArcSignatureProblem as problem:
        return ArcResult(Status.FAIL, str(problem), hops, remote_ip, tuple(keys.dnssec))
    except KeyProblem as problem:
        status = Status.TEMPERROR if problem.status is Status.TEMPERROR else Status.FAIL
        return ArcResult(status, problem.reason, hops, remote_ip, tuple(keys.dnssec))
    except _LIBRARY_ERRORS as exc:
        log.debug("arc %s: %s: %s", stage, type(exc).__name__, exc)
        return ArcResult(Status.FAIL, f"unusable {stage} key or signature", hops, remote_ip, tuple(keys.dnssec))
    return ArcResult(Status.PASS, "", hops, remote_ip, tuple(keys.dnssec), read_aar(newest.aar_payload))


def _verify_ams(ams: ArcSignature, arc_set: ArcSet, keys: _Keys, msg: Message) -> None:
    key = keys.key_for(ams)
    assert ams.body_key is not None
    body = _body_hash(ams.body_key, msg)
    ams_verifies(ams, arc_set, key, body, msg)


def _body_hash(body_key: BodyHashKey, msg: Message) -> BodyHash:
    if msg.body_hashes is not None:
        hashes = dict(msg.body_hashes)
        if body_key not in hashes:
            raise RuntimeError(f"streamed body has no hash for {body_key}")  # our body plan's bug
        return hashes[body_key]
    return hash_body(msg.body, {body_key})[body_key]


def _hop(arc_set: ArcSet) -> ArcHop:
    def name(tags: dict, tag: bytes) -> str:
        value = tags.get(tag, b"").strip()
        # Only a DNS-name-shaped value is shown (signature.py's rule); the renderer cleans whatever is left.
        return value.decode("utf-8", "replace") if _looks_like_name(value) else ""
    return ArcHop(arc_set.instance, name(arc_set.seal_tags, b"d"), name(arc_set.seal_tags, b"s"),
                  name(arc_set.ams_tags, b"d"))


def _looks_like_name(value: bytes) -> bool:
    return bool(value) and len(value) <= 253 and bool(DNS_NAME.fullmatch(value))
