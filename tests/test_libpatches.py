"""Every library replacement in authmilter.libpatches gives the library's own answers: RSA verification through
OpenSSL (valid or corrupted signatures) and the integer conversions RSA verification uses."""

from __future__ import annotations

import hashlib
import random

import dkim.crypto as dkimpy_crypto
import pytest

from authmilter import libpatches

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
            expected = libpatches._dkimpy_rsa_verify(_Hash(alg, message), sig, public)
            assert libpatches.rsa_verify(_Hash(alg, message), sig, public) is expected
        assert libpatches.rsa_verify(_Hash(alg, data), signature, public) is True


def test_small_key_keeps_dkimpy_path():
    # Under 1024 bits OpenSSL is not asked (it may refuse such keys): dkimpy's own pow() answers.
    public = {"modulus": (1 << 511) + 1, "publicExponent": 65537}
    assert libpatches._openssl_key(public["modulus"], public["publicExponent"]) is None
    assert libpatches.rsa_verify(_Hash("sha256", b"x"), b"\0" * 64, public) is False


def test_installed_once_a_runtime_is_built_and_not_before():
    import subprocess
    import sys

    # A fresh interpreter: importing every module of ours replaces nothing; building a runtime does.
    code = ("import dkim, dkim.crypto, authmilter.checks.dkim.check, authmilter.pipeline, authmilter.judge\n"
            "from authmilter import libpatches\n"
            "assert dkim.RSASSA_PKCS1_v1_5_verify is not libpatches.rsa_verify\n"
            "assert dkim.crypto.int2str is not libpatches._int2str\n"
            "from authmilter.config import Config\n"
            "from authmilter.runtime import build_runtime\n"
            "build_runtime(Config()).resolver.close()\n"
            "assert dkim.RSASSA_PKCS1_v1_5_verify is libpatches.rsa_verify\n"
            "assert dkim.crypto.int2str is libpatches._int2str and dkim.crypto.str2int is libpatches._str2int\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- the integer conversions stay exact

def _dkimpy_str2int(s):  # dkimpy 1.1.8's own code (dkim/crypto.py), kept here as the reference
    r = 0
    for c in bytearray(s):
        r = (r << 8) | c
    return r


def _dkimpy_int2str(n, length=-1):
    r = bytearray()
    while length < 0 or len(r) < length:
        r.append(n & 0xff)
        n >>= 8
        if length < 0 and n == 0:
            break
    r.reverse()
    return r


def test_integer_conversions_match_dkimpys():
    rng = random.Random(8)
    values = [0, 1, 255, 256, (1 << 2048) - 1] + [rng.getrandbits(rng.randint(1, 4100)) for _ in range(300)]
    for n in values:
        assert libpatches._int2str(n) == _dkimpy_int2str(n)
        for length in (1, 32, 256, 512):
            assert libpatches._int2str(n, length) == _dkimpy_int2str(n, length)
        raw = bytes(_dkimpy_int2str(n))
        assert libpatches._str2int(raw) == _dkimpy_str2int(raw)
        assert libpatches._str2int(b"\0\0" + raw) == _dkimpy_str2int(b"\0\0" + raw)
