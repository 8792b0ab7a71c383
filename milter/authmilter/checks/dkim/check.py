"""DKIM (RFC 6376, RFC 8301, RFC 8463) verification with dkimpy, through our DnsClient.

One pass per signature: parse and judge the tags (dkim_sig), apply local policy that needs no DNS (rsa-sha1, x=,
t=), fetch and judge the key (dkim_key), then the body hash, computed once for all signatures in a single pass over
the body (dkim_body), and finally dkimpy checks the header signature. Every exception a library raises on hostile
input is turned into a result in one place, `_library_problem()`.

The seam into dkimpy: `DomainSigner.verify_sig_process()` skips its own body pass when the tag dict has no `bh=`,
so we hand it the signature tags without bh= (already checked here), our key, and the headers as received. dkimpy
therefore never reads its clock (`validate_signature_fields` is not called) and never queries DNS.
"""

from __future__ import annotations

import binascii
import functools
import hmac
import logging
from collections.abc import Generator
from dataclasses import dataclass

import dkim as dkimpy
import nacl.exceptions
from dkim.asn1 import ASN1FormatError
from dkim.crypto import UnparsableKeyError
from dkim.util import InvalidTagValueList, get_default_logger

from authmilter.checks.dkim.body import BodyHash, BodyHashKey, hash_body
from authmilter.checks.dkim.key import KeyProblem, PublicKey, fetch_key_record, key_name, parse_key_record
from authmilter.checks.dkim.signature import (Identity, ParsedSignature, SignatureProblem, identity_of, lenient_identity,
                                        read_signature)
from authmilter.config import DkimSection
from authmilter.context import HEADER_LIMIT, Header, Message
from authmilter.resolver import DnsClient
from authmilter.results import AREntry, Dnssec, Property, Status, weakest

log = logging.getLogger(__name__)
# Fetched once: dkimpy.DKIM() would call logging.getLogger, which takes logging's module lock, for every message.
_DKIMPY_LOG = get_default_logger()

# CONTRACT (other modules rely on these names; add fields freely, do not rename or remove):


@dataclass(frozen=True, slots=True)
class DkimSignatureResult:
    status: Status
    domain: str = ""          # d=
    selector: str = ""        # s=
    identity: str = ""        # i= (or "@" + d= when absent)
    algorithm: str = ""       # a=
    b_prefix: str = ""        # first 8 characters of b= (RFC 6008)
    key_bits: int = 0
    testing: bool = False     # key record has t=y
    reason: str = ""          # short text for the header comment when not pass
    dnssec: Dnssec = Dnssec.INDETERMINATE
    key_type: str = ""        # "rsa" or "ed25519" once the key was parsed
    key_queried: bool = False  # a key lookup was made (so `dnssec` describes a real answer)

    def comment(self) -> str:
        parts = []
        if self.status is not Status.PASS and self.reason:
            parts.append(self.reason)
        if self.key_bits:
            parts.append(f"{self.key_bits}-bit {self.key_type} key")
        if self.testing:
            parts.append("testing key")
        if self.key_queried:
            parts.append(f"dnssec={self.dnssec}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class DkimResult:
    signatures: tuple[DkimSignatureResult, ...] = ()
    skipped: int = 0          # signatures not evaluated because of [dkim] max_signatures

    def passing_domains(self) -> tuple[str, ...]:
        return tuple(s.domain for s in self.signatures if s.status is Status.PASS)

    def dnssec_statuses(self) -> tuple[Dnssec, ...]:
        return tuple(signature.dnssec for signature in self.signatures if signature.key_queried)

    def ar_entries(self) -> tuple[AREntry, ...]:
        if not self.signatures and not self.skipped:
            return (AREntry("dkim", str(Status.NONE), "no signatures"),)
        entries = []
        for sig in self.signatures:
            # RFC 8601 §2.7.1 header.d/header.i, RFC 6008 header.a/header.b (to tell signatures apart).
            props = tuple(Property("header", name, value) for name, value in (
                ("d", sig.domain), ("i", sig.identity), ("s", sig.selector), ("a", sig.algorithm),
                ("b", sig.b_prefix)) if value)
            entries.append(AREntry("dkim", str(sig.status), sig.comment() or None, props))
        if self.skipped:
            noun = "signature" if self.skipped == 1 else "signatures"
            entries.append(AREntry("dkim", str(Status.POLICY), f"{self.skipped} {noun} not evaluated"))
        return tuple(entries)

    def log_fields(self) -> dict[str, str]:
        fields = {"dkim": ",".join(str(s.status) for s in self.signatures) or str(Status.NONE)}
        if self.signatures:
            fields["dkim_d"] = ",".join(s.domain or "-" for s in self.signatures)
            queried = [s.dnssec for s in self.signatures if s.key_queried]
            fields["dkim_dnssec"] = str(weakest(*queried))
        if self.skipped:
            fields["dkim_skipped"] = str(self.skipped)
        return fields


# ---------------------------------------------------------------- the check

MAX_RANKED = 100  # DKIM-Signature fields read to find the aligned ones; legitimate mail carries a handful

Chosen = tuple[tuple[int, Header], ...]


def select_signatures(msg: Message, cfg: DkimSection, from_domain: str | None) -> tuple[Chosen, int]:
    """The DKIM-Signature fields that will be evaluated (with their index among all of them), and how many are
    skipped. The one place that decides: `check_dkim` and the streaming body hasher (`body_hash_keys`) both ask
    here, so a message cannot make us hash bodies for signatures we would not evaluate."""
    all_headers = msg.get_all("DKIM-Signature")
    # Even ranking costs a parse per signature: beyond MAX_RANKED, signatures are counted as skipped unread.
    headers = list(enumerate(all_headers[:MAX_RANKED]))
    domains = {index: _domain_for_ordering(h) for index, h in headers}
    # Aligned signatures first, so junk signatures on top cannot push out the one DMARC needs; then header order.
    order = sorted(headers, key=lambda item: (not _aligned(domains[item[0]], from_domain), item[0]))
    chosen = tuple(order[:cfg.max_signatures])
    return chosen, len(all_headers) - len(chosen)


def body_hash_keys(msg: Message, cfg: DkimSection, from_domain: str | None) -> frozenset[BodyHashKey]:
    """The body hashes `check_dkim` will ask for, known once the header is complete: what a streamed body must
    feed. A signature whose tags do not parse needs none (it is judged without its body)."""
    if msg.headers_truncated:
        return frozenset()
    chosen, _ = select_signatures(msg, cfg, from_domain)
    keys = set()
    for _, header in chosen:
        try:
            keys.add(read_signature(header.name, header.value).body_key)
        except (SignatureProblem, *_LIBRARY_ERRORS):
            continue
    return frozenset(keys)


def key_lookups(msg: Message, cfg: DkimSection, from_domain: str | None, *, now: float) -> list[tuple[str, str]]:
    """The key records check_dkim will look up: one per chosen signature that parses and that local policy does
    not refuse before any lookup (the same steps as `_evaluate`, up to its query)."""
    if msg.headers_truncated:
        return []
    names = []
    for _, header in select_signatures(msg, cfg, from_domain)[0]:
        try:
            sig = read_signature(header.name, header.value)
            _local_policy_before_dns(sig, cfg, now)
        except (SignatureProblem, *_LIBRARY_ERRORS):
            continue
        names.append((key_name(sig), "TXT"))
    return names


def signing_domains(msg: Message, cfg: DkimSection, from_domain: str | None) -> list[str]:
    """The d= of every chosen signature (lenient: a hint for what DMARC's alignment may have to look up)."""
    if msg.headers_truncated:
        return []
    return [domain for domain in (_domain_for_ordering(header) for _, header in
                                  select_signatures(msg, cfg, from_domain)[0]) if domain]


def check_dkim(msg: Message, dns: DnsClient, cfg: DkimSection, *, now: float, from_domain: str | None) -> DkimResult:
    """Verify up to cfg.max_signatures DKIM-Signature fields, those aligned with from_domain first.

    When the body was streamed (`msg.body_hashes` is not None, computed by body.BodyHasher from the table's body
    plan) nothing of it is left to hash, and a missing key is a bug of ours; otherwise the hashes are computed here
    from `msg.body`, in one pass for all signatures.
    """
    if not msg.get_all("DKIM-Signature") and not msg.headers_truncated:
        return DkimResult()
    chosen, skipped = select_signatures(msg, cfg, from_domain)
    if msg.headers_truncated:
        return _header_limit_result(chosen, skipped)

    results: dict[int, DkimSignatureResult] = {}
    waiting: dict[int, tuple[Generator, BodyHashKey]] = {}
    for index, header in chosen:
        evaluation = _evaluate(header, msg, dns, cfg, now)
        try:
            waiting[index] = (evaluation, next(evaluation))
        except StopIteration as done:
            results[index] = done.value
    if waiting:
        hashes = dict(msg.body_hashes or ())
        missing = {key for _, key in waiting.values() if key not in hashes}
        if missing:
            if msg.body_hashes is not None:
                raise RuntimeError(f"streamed body has no hash for {sorted(map(str, missing))}")
            hashes.update(hash_body(msg.body, missing))
        for index, (evaluation, key) in waiting.items():
            try:
                evaluation.send(hashes[key])
            except StopIteration as done:
                results[index] = done.value
    return DkimResult(tuple(results[index] for index in sorted(results)), skipped)


def _header_limit_result(chosen: Chosen, skipped: int) -> DkimResult:
    """Past the header byte cap, signed fields (even later signatures) may be missing: no signature can be judged
    on what was kept, and saying "no signatures" would be false. Each kept one is named, with the reason."""
    if not chosen:
        return DkimResult((DkimSignatureResult(Status.PERMERROR, reason=HEADER_LIMIT),), skipped)
    return DkimResult(tuple(_result(lenient_identity(header.value), Status.PERMERROR, HEADER_LIMIT, None, False)
                            for _, header in sorted(chosen, key=lambda item: item[0])), skipped)


def _domain_for_ordering(header: Header) -> str:
    # Only an ordering hint, asked at end of headers and again at end of message: the lenient split gives the
    # same d= as dkimpy's full tag parse for every signature that parses (and is the fallback for those that do
    # not), for a fraction of its cost.
    return lenient_identity(header.value).domain


def _aligned(domain: str, from_domain: str | None) -> bool:
    """Relaxed alignment, approximated without the organizational domain: equal, parent or child."""
    if not domain or not from_domain:
        return False
    d, f = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    return d == f or d.endswith("." + f) or f.endswith("." + d)


def _evaluate(header: Header, msg: Message, dns: DnsClient, cfg: DkimSection,
              now: float) -> Generator[BodyHashKey, BodyHash, DkimSignatureResult]:
    """One signature, from tags to verdict; yields once to receive its body hash."""
    ident = Identity()
    key: PublicKey | None = None
    queried = False
    dnssec: Dnssec | None = None  # of the key lookup, once answered
    stage = "signature"
    try:
        ident, _ = identity_of(header.value)  # named in the result even when the tags are unusable
        sig = read_signature(header.name, header.value)
        _local_policy_before_dns(sig, cfg, now)
        stage = "key"
        queried = True
        record, dnssec = fetch_key_record(sig, dns)
        key = parse_key_record(sig, record, dnssec)
        if key.key_type == "rsa" and key.bits < cfg.min_key_bits:
            # RFC 8301 §3.2: "Verifiers MUST NOT consider signatures using RSA keys of less than 1024 bits as
            # valid signatures"; operators may ask for more.
            raise SignatureProblem(Status.POLICY, f"key shorter than {cfg.min_key_bits} bits")
        body = yield sig.body_key
        stage = "verify"
        if sig.body_key.limit is not None and sig.body_key.limit > body.canonical_length:
            # RFC 6376 §3.5 l=: "This value MUST NOT be larger than the actual number of octets in the
            # canonicalized message body."
            raise SignatureProblem(Status.NEUTRAL, "l= exceeds body length")
        if not hmac.compare_digest(body.digest, sig.body_hash):
            # RFC 6376 §6.1.3 step 4: "PERMFAIL (body hash did not verify)".
            raise SignatureProblem(Status.FAIL, "body hash mismatch")
        if not _header_signature_verifies(sig, key, msg):
            raise SignatureProblem(Status.FAIL, "signature mismatch")
        if sig.body_key.limit is not None and sig.body_key.limit < body.canonical_length \
                and not cfg.accept_partial_body:
            # RFC 6376 §8.2: with l=, "an attacker [can] add content to the end of the message"; the signature
            # is genuine, so this is local policy, not fail (Zone.eu advisory 2024; "Composition Kills" A16).
            # Checked last, so a forged signature still says fail, not policy.
            raise SignatureProblem(Status.POLICY, "unsigned content after l=")
        return _result(ident, Status.PASS, "", key, queried)
    except KeyProblem as problem:
        return _result(ident, problem.status, problem.reason, key, queried, problem.dnssec)
    except SignatureProblem as problem:
        return _result(ident, problem.status, problem.reason, key, queried)
    except _LIBRARY_ERRORS as exc:
        status, reason = _library_problem(stage, exc)
        if stage == "signature":
            ident = lenient_identity(header.value)  # still name the signature in the header, if we can
        log.debug("dkim %s stage: %s: %s", stage, type(exc).__name__, exc)
        return _result(ident, status, reason, key, queried, dnssec)


def _local_policy_before_dns(sig: ParsedSignature, cfg: DkimSection, now: float) -> None:
    """Refusals that need no key: no DNS query is spent on a signature we would not accept anyway."""
    if sig.hash_alg.value == "sha1" and not cfg.allow_sha1:
        # RFC 8301 §3.1: "Verifiers MUST NOT consider signatures using rsa-sha1 as valid signatures".
        raise SignatureProblem(Status.POLICY, "rsa-sha1 not accepted")
    if sig.expiration is not None and sig.expiration + cfg.time_tolerance < now:
        # RFC 6376 §3.5 x=: "Signatures MAY be considered invalid if the verification time at the Verifier is
        # past the expiration date."
        raise SignatureProblem(Status.POLICY, "signature expired")
    if sig.timestamp is not None and sig.timestamp > now + cfg.time_tolerance:
        # RFC 6376 §3.5 t=: "Verifiers MAY ignore signatures with a timestamp in the future."
        raise SignatureProblem(Status.POLICY, "signature timestamp in the future")


def _header_signature_verifies(sig: ParsedSignature, key: PublicKey, msg: Message) -> bool:
    """dkimpy hashes the signed header fields and checks b= with our key; see the module docstring."""
    if key.key_type == "rsa":
        if len(sig.signature) != (key.bits + 7) // 8:
            return False  # RFC 8017 §8.2.2 step 1: a signature of the wrong length is invalid
    elif len(sig.signature) != 64:
        return False      # RFC 8032 §5.1.7: an Ed25519 signature is 64 octets
    verifier = dkimpy.DKIM(minkey=0, logger=_DKIMPY_LOG)  # key size is judged in _evaluate against our own min_key_bits
    verifier.headers = [(h.name, h.value + b"\r\n") for h in msg.headers]
    verifier.pk, verifier.keysize, verifier.ktag = key.material, key.bits, key.key_type.encode()
    tags = {name: value for name, value in sig.tags.items() if name != b"bh"}
    # Normalized, because dkimpy looks these up case-sensitively while RFC 6376 §3.2 makes tag values
    # case-insensitive for these tags.
    tags[b"a"] = sig.identity.algorithm.encode()
    tags[b"c"] = f"{sig.header_canon}/{sig.body_key.canon}".encode()
    return bool(verifier.verify_sig_process(tags, list(sig.signed_headers),
                                            (sig.header_name, sig.header_value + b"\r\n"), None))


# Raised by dkimpy's tag parser, ASN.1 parser and verifier, base64 and PyNaCl on hostile bytes. IndexError,
# ValueError and OverflowError come from dkimpy's hand-written ASN.1/RSA code on truncated or absurd numbers.
_LIBRARY_ERRORS = (dkimpy.DKIMException, InvalidTagValueList, UnparsableKeyError, ASN1FormatError,
                   binascii.Error, nacl.exceptions.CryptoError, IndexError, ValueError, OverflowError)


def _library_problem(stage: str, exc: BaseException) -> tuple[Status, str]:
    """The one mapping from a library exception to a result, by the stage it interrupted."""
    if stage == "signature":
        if isinstance(exc, InvalidTagValueList):
            return Status.NEUTRAL, "signature syntax error"  # RFC 6376 §6.1.1, RFC 8601 §2.7.1 neutral
        return Status.NEUTRAL, "unusable signature"
    if stage == "key":
        if isinstance(exc, InvalidTagValueList):
            return Status.PERMERROR, "key record syntax error"  # RFC 6376 §6.1.2 PERMFAIL (key syntax error)
        return Status.PERMERROR, "unusable key"
    if isinstance(exc, dkimpy.MessageFormatError):
        return Status.NEUTRAL, "message format error"
    # A key that parsed but cannot verify (dkimpy's "digest too large for modulus", a NaCl error) is unusable.
    return Status.PERMERROR, "unusable key"


def _result(ident: Identity, status: Status, reason: str, key: PublicKey | None, queried: bool,
            dnssec: Dnssec | None = None) -> DkimSignatureResult:
    return DkimSignatureResult(
        status=status, domain=ident.domain, selector=ident.selector, identity=ident.identity,
        algorithm=ident.algorithm, b_prefix=ident.b_prefix, key_bits=key.bits if key else 0,
        testing=key.testing if key else False, reason=reason,
        dnssec=key.dnssec if key else (dnssec if dnssec is not None else Dnssec.INDETERMINATE),
        key_type=key.key_type if key else "", key_queried=queried)
