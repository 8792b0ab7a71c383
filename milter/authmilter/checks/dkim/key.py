"""Fetching and judging one DKIM key record (RFC 6376 §3.6.1, §6.1.2; RFC 8301 §3.2; RFC 8463 §4).

dkimpy's `evaluate_pk` swallows its own s= error (a bare `except:`), never checks h=, and reports a revoked key as
a parse failure; the tags are judged here, and dkimpy's ASN.1 parser reads the RSA key.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass

import nacl.signing
from dkim.crypto import parse_public_key
from dkim.util import parse_tag_value

from authmilter.checks.dkim.signature import ParsedSignature, SignatureProblem
from authmilter.resolver import Answer, DnsClient, Outcome
from authmilter.results import Dnssec, Status

MAX_RSA_BITS = 16384        # larger moduli only make us burn CPU; no DKIM signer uses them
MAX_RSA_EXPONENT_BITS = 64  # real keys use 65537; a huge exponent is a CPU attack on pow()


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_type: str            # "rsa" or "ed25519"
    material: object         # dkimpy's RSA dict {"modulus", "publicExponent"} or a nacl VerifyKey
    bits: int
    testing: bool            # t=y
    dnssec: Dnssec


class KeyProblem(SignatureProblem):
    """A key that cannot be used; carries the DNSSEC status of the lookup for the comment."""

    def __init__(self, status: Status, reason: str, dnssec: Dnssec = Dnssec.INDETERMINATE) -> None:
        super().__init__(status, reason)
        self.dnssec = dnssec


def key_name(sig: ParsedSignature) -> str:
    return f"{sig.identity.selector}._domainkey.{sig.identity.domain}".rstrip(".")


def fetch_key_record(sig: ParsedSignature, dns: DnsClient) -> tuple[bytes, Dnssec]:
    answer: Answer = dns.query(key_name(sig), "TXT")
    if answer.outcome.is_temporary:
        # §6.1.2: "If the query for the public key fails to respond, the Verifier MAY seek a later verification
        # attempt by returning TEMPFAIL (key unavailable)."
        raise KeyProblem(Status.TEMPERROR, f"key lookup {answer.problem}", answer.dnssec)
    if answer.outcome is Outcome.INVALID_NAME:
        raise KeyProblem(Status.PERMERROR, "invalid key name", answer.dnssec)
    if not answer.ok or not answer.records:
        # §6.1.2: "If the query for the public key fails because the corresponding key record does not exist,
        # the Verifier MUST immediately return PERMFAIL (no key for signature)."
        raise KeyProblem(Status.PERMERROR, "no key", answer.dnssec)
    records = list(dict.fromkeys(answer.records))
    if len(records) > 1:
        # §3.6.2.2: "TXT RRs MUST be unique for a particular selector name ... the results are undefined."
        raise KeyProblem(Status.PERMERROR, "several key records", answer.dnssec)
    return records[0], answer.dnssec


def parse_key_record(sig: ParsedSignature, record: bytes, dnssec: Dnssec) -> PublicKey:
    """Judge one key record for this signature; library errors propagate to the single mapping in dkim.py."""
    tags = parse_tag_value(record)

    def problem(reason: str) -> KeyProblem:
        return KeyProblem(Status.PERMERROR, reason, dnssec)

    version = tags.get(b"v")
    if version is not None and version != b"DKIM1":
        # §3.6.1 v=: "If [present and] not "DKIM1", the record MUST be ignored".
        raise problem("bad key version")
    if b"p" not in tags:
        raise problem("key record without p=")
    p_value = re.sub(rb"\s+", b"", tags[b"p"])
    if not p_value:
        # §3.6.1 p=: "An empty value means that this public key has been revoked."
        raise problem("key revoked")
    key_type = tags.get(b"k", b"rsa").strip().lower()
    if key_type not in (b"rsa", b"ed25519"):
        # §3.6.1 k=: "Unrecognized key types MUST be ignored."
        raise problem("unknown key type k=" + key_type.decode("ascii", "replace")[:16])
    if key_type.decode() != sig.key_type:
        # §6.1.2: key "not suitable for use with the algorithm and key types defined by the a= and k= tags"
        raise problem(f"{key_type.decode()} key for a={sig.identity.algorithm}")
    if b"h" in tags:
        allowed = {h.strip().lower() for h in tags[b"h"].split(b":")}
        if sig.hash_alg.value.encode() not in allowed:
            # §6.1.2: a= hash not in the key's h= list -> PERMFAIL (inappropriate hash algorithm).
            raise problem(f"key h= excludes {sig.hash_alg.value}")
    if b"s" in tags:
        services = {s.strip().lower() for s in tags[b"s"].split(b":")}
        if not services & {b"*", b"email"}:
            # §3.6.1 s=: the key is for other services only.
            raise problem("key not for email")
    flags = {f.strip().lower() for f in tags.get(b"t", b"").split(b":")}
    if b"s" in flags and sig.auid_domain.rstrip(".") != sig.identity.domain.lower().rstrip("."):
        # §3.6.1 t=s: the i= domain MUST NOT be a subdomain of d=.
        raise problem("key t=s forbids a subdomain i=")

    try:
        der = base64.b64decode(p_value, validate=True)
    except (binascii.Error, ValueError):
        raise problem("key p= is not base64") from None
    if key_type == b"ed25519":
        if len(der) != 32:
            # RFC 8463 §4: p= is the bare 32-octet public key, not a SubjectPublicKeyInfo.
            raise problem("ed25519 key is not 32 octets")
        return PublicKey("ed25519", nacl.signing.VerifyKey(der), 256, b"y" in flags, dnssec)
    rsa = _parse_rsa_key(der)
    bits = rsa["modulus"].bit_length()
    if bits > MAX_RSA_BITS or rsa["publicExponent"].bit_length() > MAX_RSA_EXPONENT_BITS \
            or rsa["publicExponent"] < 3:
        raise problem("unusable rsa key")
    return PublicKey("rsa", rsa, bits, b"y" in flags, dnssec)


# A selector's key is the same DER for every message it signs: parse it once (dkimpy's ASN.1 reader is pure Python,
# ~70 us per message on the bench). The dict is only read (dkimpy's RSA verify), never changed, so sharing it across
# messages and threads is safe. A parse error is an exception and is not cached. Bounded: DER from one TXT answer.
@functools.lru_cache(maxsize=128)
def _parse_rsa_key(der: bytes) -> dict:
    return parse_public_key(der)
