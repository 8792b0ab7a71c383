"""The private keys behind `[signing] keys`: read and judged once at start-up (and on reload), chosen per message.

A key file is refused, with the file and the reason (ConfigError, exit 78), when it is not a regular file, cannot be
read, is readable by others, is readable by a group other than the service's, or does not hold what its PEM label
declares: an unencrypted RSA (1024 to 4096 bits, RFC 8301 §3.2) or Ed25519 (RFC 8463) private key. dkimpy-milter's
Ed25519 format (the base64 of the 32-octet seed, no label) is read too, so its key files can be reused as they are.

Rotation without a flag day: of the keys of one type for one domain, the one with the newest `from=` date that has
passed signs (a line without a date counts as the oldest), so a new key can be listed and published days before it
takes over, and the old one stays listed until its signatures no longer need to verify.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import grp
import os
import pwd
import re
import stat
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from authmilter.errors import ConfigError
from authmilter.signing.keylines import KeyLine

SERVICE_USER = "authmilter"   # systemd/authmilter.service: User=authmilter, Group=authmilter
MIN_RSA_BITS = 1024           # RFC 8301 §3.2: "Signers MUST use RSA keys of at least 1024 bits"
MAX_RSA_BITS = 4096           # RFC 8301 §3.2: verifiers need only handle keys up to 4096 bits
MAX_KEY_FILE_BYTES = 65536    # a 4096-bit PEM is about 3.3 KB
KEY_TYPES = ("rsa", "ed25519")  # the order signatures are added in: rsa first, the one every verifier knows
_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_SHA256 = Prehashed(hashes.SHA256())


class KeyFileError(ValueError):
    """A key file that cannot be used; str() is the reason (the caller names the file)."""


@dataclass(frozen=True, eq=False)
class SigningKey:
    """One loaded private key with the line that named it."""

    line: KeyLine
    key_type: str        # "rsa" or "ed25519"
    bits: int
    private: object = field(repr=False)  # cryptography's RSAPrivateKey or Ed25519PrivateKey
    public_b64: str = ""  # the p= value the key record must carry (RFC 6376 §3.6.1, RFC 8463 §4)

    @property
    def domain(self) -> str:
        return self.line.domain

    @property
    def selector(self) -> str:
        return self.line.selector

    @property
    def algorithm(self) -> str:
        """The a= value (RFC 6376 §3.3, RFC 8463 §3)."""
        return "ed25519-sha256" if self.key_type == "ed25519" else "rsa-sha256"

    @property
    def description(self) -> str:
        return f"{self.key_type}-{self.bits}" if self.key_type == "rsa" else "ed25519"

    def sign_digest(self, digest: bytes) -> bytes:
        """The b= octets for the SHA-256 digest of the signed header data.

        RSA: RSASSA-PKCS1-v1_5 over the digest (RFC 6376 §3.3.1). Ed25519: PureEdDSA over the 32-octet digest itself
        (RFC 8463 §3: the hash, not the data, is what Ed25519 signs). OpenSSL does both, through `cryptography`.
        """
        if self.key_type == "rsa":
            return self.private.sign(digest, padding.PKCS1v15(), _SHA256)
        return self.private.sign(digest)

    def record(self) -> str:
        """The TXT record to publish at SELECTOR._domainkey.DOMAIN."""
        return key_record(self.key_type, self.public_b64)


def key_record(key_type: str, public_b64: str) -> str:
    return f"v=DKIM1; k={key_type}; p={public_b64}"


@dataclass(frozen=True, eq=False)
class Keyring:
    """Every configured key, loaded. Shared by all messages (read-only)."""

    keys: tuple[SigningKey, ...]
    _by_domain: dict[str, dict[str, tuple[SigningKey, ...]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for key in self.keys:
            by_type = self._by_domain.setdefault(key.domain, {})
            by_type[key.key_type] = (*by_type.get(key.key_type, ()), key)
        for by_type in self._by_domain.values():
            for key_type, keys in by_type.items():
                # Newest first: the first one whose date has passed is the one that signs.
                by_type[key_type] = tuple(sorted(keys, key=_since, reverse=True))

    def has_domain(self, domain: str) -> bool:
        return domain in self._by_domain

    def active(self, domain: str, today: datetime.date) -> tuple[SigningKey, ...]:
        """The keys that sign for `domain` on `today` (UTC): at most one per type, rsa first."""
        by_type = self._by_domain.get(domain, {})
        chosen = []
        for key_type in KEY_TYPES:
            for key in by_type.get(key_type, ()):
                if key.line.not_before is None or key.line.not_before <= today:
                    chosen.append(key)
                    break
        return tuple(chosen)


def _since(key: SigningKey) -> datetime.date:
    return key.line.not_before or datetime.date.min


def utc_today(now: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date()


# ---------------------------------------------------------------- loading

def load_keyring(cfg) -> Keyring | None:
    """The keys of `cfg.signing` (a Config), or None when none are configured. ConfigError names the file."""
    lines = cfg.signing.keys
    if not lines:
        return None
    where = f"{cfg.source}: [signing] keys"
    _refuse_ambiguous(lines, where)
    allowed = service_gids()
    keys = []
    for line in lines:
        try:
            keys.append(load_key(line, allowed))
        except KeyFileError as exc:
            raise ConfigError(f"{where}: {line.path}: {exc}") from None
    _refuse_same_start(keys, where)
    return Keyring(tuple(keys))


def _refuse_ambiguous(lines: tuple[KeyLine, ...], where: str) -> None:
    seen: dict[tuple[str, str], KeyLine] = {}
    for line in lines:
        earlier = seen.get((line.domain, line.selector))
        if earlier is not None:
            # One selector publishes one key record (RFC 6376 §3.6.2.2): two files cannot both match it.
            raise ConfigError(f"{where}: selector {line.selector} of {line.domain} is listed twice")
        seen[(line.domain, line.selector)] = line


def _refuse_same_start(keys: list[SigningKey], where: str) -> None:
    starts: dict[tuple[str, str, datetime.date | None], SigningKey] = {}
    for key in keys:
        slot = (key.domain, key.key_type, key.line.not_before)
        other = starts.get(slot)
        if other is not None:
            when = f"from {key.line.not_before}" if key.line.not_before else "without a from= date"
            raise ConfigError(f"{where}: {other.selector} and {key.selector} are both {key.key_type} keys of "
                              f"{key.domain} {when}: which one signs would be a guess; give the newer one "
                              f"from=YYYY-MM-DD")
        starts[slot] = key


def service_gids() -> frozenset[int]:
    """Groups that may read key files: the service user's group (when that user exists) and our own."""
    gids = {os.getegid()}
    try:
        gids.add(pwd.getpwnam(SERVICE_USER).pw_gid)
    except KeyError:
        pass  # a development machine: the invoking user's group, as keygen writes it
    return frozenset(gids)


def load_key(line: KeyLine, allowed_gids: frozenset[int]) -> SigningKey:
    data = read_key_file(line.path, allowed_gids)
    private = parse_private_key(data)
    if isinstance(private, rsa.RSAPrivateKey):
        bits = private.key_size
        der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        return SigningKey(line, "rsa", bits, private, base64.b64encode(der).decode("ascii"))
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return SigningKey(line, "ed25519", 256, private, base64.b64encode(raw).decode("ascii"))


def read_key_file(path: str, allowed_gids: frozenset[int]) -> bytes:
    """The file's bytes, once its type and permissions are acceptable (checked on the open descriptor)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # NONBLOCK: a FIFO must not hang us
    except OSError as exc:
        raise KeyFileError(f"cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError("not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o007:
            raise KeyFileError(f"readable by others (mode {mode:04o}): chmod 0640 (or 0600)")
        if mode & 0o070 and info.st_gid not in allowed_gids:
            raise KeyFileError(f"readable by group {_group_name(info.st_gid)} (mode {mode:04o}), which is not the "
                               f"service's group {service_group_name()}: chgrp it or chmod 0600")
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{info.st_size} bytes: too large for a key file")
        chunks = []
        while chunk := os.read(fd, MAX_KEY_FILE_BYTES + 1):
            chunks.append(chunk)
            if sum(map(len, chunks)) > MAX_KEY_FILE_BYTES:
                raise KeyFileError("too large for a key file")
        return b"".join(chunks)
    except OSError as exc:
        raise KeyFileError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def service_group_name() -> str:
    """The group key files should belong to: the service user's, else our own (a development machine)."""
    try:
        return _group_name(pwd.getpwnam(SERVICE_USER).pw_gid)
    except KeyError:
        return _group_name(os.getegid())


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def parse_private_key(data: bytes):
    """An RSA or Ed25519 private key from PEM (PKCS#1 or PKCS#8) or dkimpy's base64 Ed25519 seed."""
    labels = [label.decode() for label in _PEM_BEGIN.findall(data)]
    if not labels:
        return _dkimpy_ed25519_seed(data)
    if len(labels) > 1:
        raise KeyFileError(f"{len(labels)} PEM blocks ({', '.join(labels)}): one key per file")
    label = labels[0]
    if label == "ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in data:
        raise KeyFileError("encrypted: the milter cannot ask for a passphrase")
    if label not in ("RSA PRIVATE KEY", "PRIVATE KEY"):
        raise KeyFileError(f"holds a {label}: DKIM signs with an RSA or Ed25519 private key")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"declared {label} but does not hold one ({_first_line(exc)})") from None
    if label == "RSA PRIVATE KEY" and not isinstance(private, rsa.RSAPrivateKey):
        raise KeyFileError("declared RSA PRIVATE KEY but holds another type of key")
    if isinstance(private, rsa.RSAPrivateKey):
        if not MIN_RSA_BITS <= private.key_size <= MAX_RSA_BITS:
            raise KeyFileError(f"a {private.key_size}-bit RSA key: DKIM needs {MIN_RSA_BITS} to {MAX_RSA_BITS} bits "
                               f"(RFC 8301 §3.2; 2048 recommended)")
        return private
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private
    kind = "an EC" if isinstance(private, ec.EllipticCurvePrivateKey) else "another type of"
    raise KeyFileError(f"holds {kind} private key: DKIM signs with RSA or Ed25519 only")


def _dkimpy_ed25519_seed(data: bytes):
    text = data.strip()
    try:
        seed = base64.b64decode(text, validate=True) if text else b""
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise KeyFileError("not a PEM private key, nor a base64 Ed25519 seed as dkimpy writes it")
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__
