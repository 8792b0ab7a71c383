"""The one place where a library's code is replaced, each with the measurement behind it and a test that the
replacement gives the library's own answers. Nothing is replaced at import: `install()` does it, once, when a
runtime is built (runtime.build_runtime), so importing any module of ours leaves every library as it shipped.

- dkimpy's str2int/int2str loop in Python over every octet: ~60 us per RSA-2048 verification on the bench mix (a
  third of the modular exponentiation itself). tests/test_libpatches.py compares them with dkimpy's own on random
  values.
- dkimpy verifies RSA with Python's pow(): ~0.2 ms per RSA-2048 signature, a tenth of a message's CPU on the bench
  mix; OpenSSL (through `cryptography`) does the same check in microseconds. tests/test_libpatches.py compares both
  on valid and corrupted signatures.
"""

from __future__ import annotations

import functools
import threading

import dkim as dkimpy
import dkim.crypto as dkimpy_crypto


# ---------------------------------------------------------------- dkimpy's integer conversions

def _str2int(data) -> int:
    return int.from_bytes(data, "big")


def _int2str(n: int, length: int = -1) -> bytearray:
    # dkimpy's version loops in Python over every octet; with length given it keeps the low `length` octets.
    assert n >= 0
    if length < 0:
        return bytearray(n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big"))
    return bytearray((n & ((1 << (8 * length)) - 1)).to_bytes(length, "big"))


# ---------------------------------------------------------------- RSA verification through OpenSSL

# OpenSSL does the RFC 8017 §8.2.2 check (modular power, then an exact comparison with the EMSA-PKCS1-v1_5 encoding
# of the digest). Anything it does not cover (another hash, a key under 1024 bits or one OpenSSL refuses to load)
# keeps dkimpy's own code, so the answers stay dkimpy's.
try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes as _hashes
    from cryptography.hazmat.primitives.asymmetric import padding as _padding
    from cryptography.hazmat.primitives.asymmetric import rsa as _rsa
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
except ImportError:  # pragma: no cover - optional: dkimpy's pure-Python path is used
    _PREHASHED: dict = {}
else:
    _PREHASHED = {"sha256": Prehashed(_hashes.SHA256()), "sha1": Prehashed(_hashes.SHA1())}

_dkimpy_rsa_verify = dkimpy_crypto.RSASSA_PKCS1_v1_5_verify
_OPENSSL_MIN_BITS = 1024


def rsa_verify(digest, signature, public_key) -> bool:
    """dkimpy's RSASSA_PKCS1_v1_5_verify(hash object, signature, {"modulus", "publicExponent"}), same answers."""
    prehashed = _PREHASHED.get(str(getattr(digest, "name", "")).lower())
    key = _openssl_key(public_key["modulus"], public_key["publicExponent"]) if prehashed is not None else None
    if key is None:
        return _dkimpy_rsa_verify(digest, signature, public_key)
    try:
        key.verify(bytes(signature), digest.digest(), _padding.PKCS1v15(), prehashed)
    except InvalidSignature:
        return False
    except (ValueError, TypeError):  # input OpenSSL will not take: dkimpy gives (or raises) its own answer
        return _dkimpy_rsa_verify(digest, signature, public_key)
    return True


@functools.lru_cache(maxsize=128)
def _openssl_key(modulus: int, exponent: int):
    """The OpenSSL key for one DKIM key, made once per key (keys repeat across messages); None: use dkimpy."""
    if modulus.bit_length() < _OPENSSL_MIN_BITS:
        return None
    try:
        return _rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except (ValueError, TypeError):  # an even modulus, an exponent OpenSSL rejects...: dkimpy answers instead
        return None


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Replace the library functions above; idempotent. dkimpy looks each name up in its module at call time."""
    global _installed
    with _install_lock:
        if _installed:
            return
        dkimpy_crypto.str2int = _str2int
        dkimpy_crypto.int2str = _int2str
        if _PREHASHED:
            dkimpy.RSASSA_PKCS1_v1_5_verify = rsa_verify
        _installed = True
