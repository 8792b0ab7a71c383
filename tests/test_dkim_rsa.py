"""RSA verification through OpenSSL (checks/dkim.rsa_verify) gives dkimpy's answers, valid or not."""

from __future__ import annotations

import hashlib
import random

import dkim as dkimpy
import dkim.crypto as dkimpy_crypto
import pytest

from authmilter.checks.dkim import check as dkim_check

pytest.importorskip("cryptography")


def _key(bits: int) -> dict:
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.generate_private_key(public_exponent=65537, key_size=bits).private_numbers()
    return {"modulus": numbers.public_numbers.n, "publicExponent": numbers.public_numbers.e,
            "privateExponent": numbers.d, "prime1": numbers.p, "prime2": numbers.q, "exponent1": numbers.dmp1,
            "exponent2": numbers.dmq1, "coefficient": numbers.iqmp}


class _Hash:
    """What dkimpy hands the verifier: a hash object with .name and .digest()."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self._hash = hashlib.new(name, data)

    def digest(self) -> bytes:
        return self._hash.digest()


@pytest.mark.parametrize("bits", [1024, 2048])
@pytest.mark.parametrize("alg", ["sha256", "sha1"])
def test_same_answers_as_dkimpy(bits, alg):
    key = _key(bits)
    public = {"modulus": key["modulus"], "publicExponent": key["publicExponent"]}
    rng = random.Random(bits)
    for n in range(20):
        data = rng.randbytes(40 + n)
        signature = dkimpy_crypto.RSASSA_PKCS1_v1_5_sign(_Hash(alg, data), key)
        cases = [(data, signature), (data + b"x", signature)]
        corrupt = bytearray(signature)
        corrupt[rng.randrange(len(corrupt))] ^= 1 << rng.randrange(8)
        cases.append((data, bytes(corrupt)))
        cases.append((data, (key["modulus"] + 1).to_bytes(len(signature), "big")[-len(signature):]))
        for message, sig in cases:
            expected = dkim_check._dkimpy_rsa_verify(_Hash(alg, message), sig, public)
            assert dkim_check.rsa_verify(_Hash(alg, message), sig, public) is expected
        assert dkim_check.rsa_verify(_Hash(alg, data), signature, public) is True


def test_small_key_keeps_dkimpy_path():
    # Under 1024 bits OpenSSL is not asked (it may refuse such keys): dkimpy's own pow() answers.
    public = {"modulus": (1 << 511) + 1, "publicExponent": 65537}
    assert dkim_check._openssl_key(public["modulus"], public["publicExponent"]) is None
    assert dkim_check.rsa_verify(_Hash("sha256", b"x"), b"\0" * 64, public) is False


def test_dkimpy_calls_ours():
    assert dkimpy.RSASSA_PKCS1_v1_5_verify is dkim_check.rsa_verify
