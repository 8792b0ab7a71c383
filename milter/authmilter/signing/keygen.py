"""`authmilter keygen`: a new private key file for signing, and the DNS record that publishes its public half.

The file is created exclusively (an existing file, or a symbolic link in its place, is never overwritten: losing a
published key is a signing outage), owned by root, in the service user's group (the invoking user's group where no
service user exists, as on a development machine), mode 0640: exactly what keys.py accepts at start-up. RSA keys are
written as PKCS#1 PEM ("RSA PRIVATE KEY", which OpenDKIM and dkimpy read too), Ed25519 keys as PKCS#8 PEM.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from authmilter.signing.keylines import KeyLine, domain_a_labels, parse_key_line
from authmilter.signing.keys import MAX_RSA_BITS, MIN_RSA_BITS, SERVICE_USER, load_key, service_gids

DEFAULT_RSA_BITS = 2048   # RFC 8301 §3.2: "Signers SHOULD use RSA keys of at least 2048 bits"
FILE_MODE = 0o640
TXT_STRING_OCTETS = 255   # RFC 1035 §3.3: one character-string holds at most 255 octets


class KeygenError(Exception):
    """Why no key was written; `status` is the sysexits.h code for the command to exit with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


EX_USAGE = 64
EX_CANTCREAT = 73
EX_NOPERM = 77


@dataclass(frozen=True, slots=True)
class Generated:
    line: KeyLine         # what to add to [signing] keys
    description: str      # "rsa-2048" or "ed25519"
    owner: str
    group: str
    zone_line: str        # SEL._domainkey.DOMAIN. IN TXT "..." ...


def generate(domain: str, selector: str, key_type: str, bits: int | None, out: str) -> Generated:
    try:
        line = parse_key_line(f"{domain} {selector} {os.path.abspath(out)}")
    except ValueError as exc:
        raise KeygenError(str(exc), EX_USAGE) from None
    pem = _new_key_pem(key_type, bits)
    uid, gid = _owner()
    _write_exclusively(line.path, pem, uid, gid)
    # Read back through the start-up checks: what keygen writes is what the milter accepts.
    key = load_key(line, service_gids() | {gid})
    return Generated(line, key.description, _user_name(uid), _group_name(gid),
                     zone_line(line.domain, line.selector, key.record()))


def _new_key_pem(key_type: str, bits: int | None) -> bytes:
    if key_type == "ed25519":
        if bits is not None:
            raise KeygenError("--bits is for rsa keys only (an Ed25519 key is always 256 bits)", EX_USAGE)
        return ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    if key_type != "rsa":
        raise KeygenError(f"--type must be rsa or ed25519, got {key_type!r}", EX_USAGE)
    bits = DEFAULT_RSA_BITS if bits is None else bits
    if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise KeygenError(f"--bits must be {MIN_RSA_BITS} to {MAX_RSA_BITS} (RFC 8301 §3.2), got {bits}", EX_USAGE)
    return rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def _owner() -> tuple[int, int]:
    """root (when we are root, else ourselves) and the service user's group (else the invoking user's)."""
    try:
        gid = pwd.getpwnam(SERVICE_USER).pw_gid
    except KeyError:
        gid = os.getgid()
    uid = 0 if os.geteuid() == 0 else os.getuid()
    return uid, gid


def _write_exclusively(path: str, data: bytes, uid: int, gid: int) -> None:
    try:
        # O_EXCL|O_CREAT also fails on a symbolic link, dangling or not: nothing is written through one.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise KeygenError(f"{path}: already exists; keygen never overwrites a key file", EX_CANTCREAT) from None
    except OSError as exc:
        raise KeygenError(f"{path}: cannot create: {exc.strerror or exc}", EX_CANTCREAT) from None
    try:
        try:
            os.fchown(fd, uid, gid)
        except PermissionError:
            raise KeygenError(f"{path}: cannot give the file to group {_group_name(gid)}: run keygen as root",
                              EX_NOPERM) from None
        os.fchmod(fd, FILE_MODE)  # after fchown, which may clear mode bits
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)  # no half-written key left behind to be mistaken for a good one
        raise
    os.close(fd)


def zone_line(domain: str, selector: str, record: str) -> str:
    """The zone-file line publishing `record`: owner name with its final dot, the value in 255-octet strings."""
    owner = f"{selector}._domainkey.{domain_a_labels(domain)}."
    data = record.encode("ascii")
    strings = [data[i:i + TXT_STRING_OCTETS].decode("ascii") for i in range(0, len(data), TXT_STRING_OCTETS)]
    return f"{owner} IN TXT " + " ".join(f'"{text}"' for text in strings)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
