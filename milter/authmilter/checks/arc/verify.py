"""The cryptographic checks of one ARC set: the newest ARC-Message-Signature and each ARC-Seal (RFC 8617 §5.1).

The AMS is checked like a DKIM signature (checks/dkim's seam into dkimpy: `verify_sig_process` with the tags
minus bh=, the body hash having been compared here from the streamed hash). The seal's header hash is built here
from the sets chosen BY INSTANCE, as RFC 8617 §5.1.1 says ("all ARC Sets ... in increasing instance order"),
not from the bottom-most fields of each name as dkimpy's `ARC.verify` does: an intermediary may reorder fields.
dkimpy canonicalizes (relaxed, §5.1.1) and, through libpatches, OpenSSL checks the RSA signature.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import dkim as dkimpy
import nacl.exceptions
from dkim.canonicalization import Relaxed
from dkim.util import get_default_logger

from authmilter.checks.arc.chain import ArcSet
from authmilter.checks.arc.signature import ArcSignature, ArcSignatureProblem, header_pair
from authmilter.checks.dkim.body import BodyHash
from authmilter.checks.dkim.key import PublicKey
from authmilter.context import Message

_DKIMPY_LOG = get_default_logger()


def ams_verifies(ams: ArcSignature, arc_set: ArcSet, key: PublicKey, body: BodyHash, msg: Message) -> None:
    """Raises ArcSignatureProblem unless the AMS of `arc_set` verifies over `msg` with `key`."""
    assert ams.body_key is not None
    if ams.body_key.limit is not None and ams.body_key.limit > body.canonical_length:
        raise ArcSignatureProblem(f"ARC-Message-Signature i={ams.instance}: l= exceeds body length")
    if not hmac.compare_digest(body.digest, ams.body_hash):
        raise ArcSignatureProblem(f"ARC-Message-Signature i={ams.instance}: body hash mismatch")
    if not _length_ok(ams, key):
        raise ArcSignatureProblem(f"ARC-Message-Signature i={ams.instance}: signature mismatch")
    verifier = dkimpy.DKIM(minkey=0, logger=_DKIMPY_LOG)  # key size was judged by the caller
    verifier.headers = [header_pair(h) for h in msg.headers]
    verifier.pk, verifier.keysize, verifier.ktag = key.material, key.bits, key.key_type.encode()
    tags = {name: value for name, value in arc_set.ams_tags.items() if name != b"bh"}
    tags[b"c"] = f"{ams.header_canon}/{ams.body_key.canon}".encode()
    if not verifier.verify_sig_process(tags, list(ams.signed_headers), header_pair(arc_set.ams), None):
        raise ArcSignatureProblem(f"ARC-Message-Signature i={ams.instance}: signature mismatch")


def seal_verifies(seal: ArcSignature, sets: Sequence[ArcSet], key: PublicKey) -> None:
    """Raises ArcSignatureProblem unless the ARC-Seal of instance `seal.instance` verifies over sets 1..i."""
    covered = sets[:seal.instance]
    fields = [header_pair(h) for arc_set in covered for h in (arc_set.aar, arc_set.ams, arc_set.seal)]
    name, value = fields.pop()
    # §5.1.1: the seal being verified is hashed with an empty b= and without its trailing CRLF, as in DKIM.
    own = Relaxed.canonicalize_headers([(name, dkimpy.RE_BTAG.sub(b"\\1", value))])[0]
    digest = hashlib.new(seal.hash_alg.value)
    for field_name, field_value in Relaxed.canonicalize_headers(fields) + [(own[0], own[1].rstrip())]:
        digest.update(field_name + b":" + field_value)
    if not (_length_ok(seal, key) and _signature_ok(digest, seal.signature, key)):
        raise ArcSignatureProblem(f"ARC-Seal i={seal.instance}: signature mismatch")


def _length_ok(sig: ArcSignature, key: PublicKey) -> bool:
    if key.key_type == "rsa":
        return len(sig.signature) == (key.bits + 7) // 8  # RFC 8017 §8.2.2 step 1
    return len(sig.signature) == 64                       # RFC 8032 §5.1.7


def _signature_ok(digest, signature: bytes, key: PublicKey) -> bool:
    if key.key_type == "rsa":
        # Looked up at call time: libpatches may have put OpenSSL's verify there.
        return bool(dkimpy.RSASSA_PKCS1_v1_5_verify(digest, signature, key.material))
    try:
        key.material.verify(digest.digest(), signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True
