"""Is each signing key published, and is what DNS publishes the public half of our private key?

The first thing that breaks in a rotation is the DNS side: a new selector never published, a typo in a pasted
record, an old record left in place. `authmilter keys check` asks DNS for every configured selector (through
authmilter.resolver, like every other lookup) and says, per key, whether the record matches; the daemon does the
same at start-up and then daily (`KeyWatch`), and logs a warning for each key that is not published or does not
match, naming the key line and when it signs.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from dkim.crypto import UnparsableKeyError, parse_public_key
from dkim.util import InvalidTagValueList, parse_tag_value

from authmilter.resolver import DnsClient
from authmilter.results import Dnssec
from authmilter.signing.keys import Keyring, SigningKey

log = logging.getLogger("authmilter")

DAY_SECONDS = 86400.0


class Published(StrEnum):
    MATCHES = "matches"                # the record's key is our key
    MISMATCH = "mismatch"              # a record, but another key (or another key type)
    NOT_PUBLISHED = "not published"    # NXDOMAIN or no TXT record
    REVOKED = "revoked"                # p= is empty (RFC 6376 §3.6.1)
    UNUSABLE = "unusable"              # a record verifiers would refuse (syntax, v=, h=, s=, several records)
    LOOKUP_FAILED = "lookup failed"    # SERVFAIL, timeout: try again

    @property
    def temporary(self) -> bool:
        return self is Published.LOOKUP_FAILED


@dataclass(frozen=True, slots=True)
class KeyCheck:
    key: SigningKey
    published: Published
    detail: str = ""
    dnssec: Dnssec = Dnssec.INDETERMINATE

    @property
    def ok(self) -> bool:
        return self.published is Published.MATCHES

    @property
    def name(self) -> str:
        return record_name(self.key)

    def describe(self) -> str:
        """One line for the command and the log."""
        line = self.key.line
        since = f", signs from {line.not_before}" if line.not_before else ""
        what = {Published.MATCHES: "published key matches",
                Published.MISMATCH: "published key does NOT match",
                Published.NOT_PUBLISHED: "NOT published",
                Published.REVOKED: "published as REVOKED",
                Published.UNUSABLE: "published record is UNUSABLE",
                Published.LOOKUP_FAILED: "lookup FAILED"}[self.published]
        detail = f": {self.detail}" if self.detail else ""
        return (f"{self.name} ({self.key.description}, {line.path}{since}): {what}{detail} "
                f"(dnssec={self.dnssec})")


def record_name(key: SigningKey) -> str:
    return f"{key.selector}._domainkey.{key.domain}"


def check_key(key: SigningKey, dns: DnsClient) -> KeyCheck:
    answer = dns.query(record_name(key), "TXT")
    dnssec = answer.dnssec

    def result(published: Published, detail: str = "") -> KeyCheck:
        return KeyCheck(key, published, detail, dnssec)

    if answer.outcome.is_temporary:
        return result(Published.LOOKUP_FAILED, answer.problem)
    if not answer.ok or not answer.records:
        return result(Published.NOT_PUBLISHED, answer.problem if not answer.ok else "no TXT record")
    records = list(dict.fromkeys(answer.records))
    if len(records) > 1:
        # RFC 6376 §3.6.2.2: "TXT RRs MUST be unique for a particular selector name".
        return result(Published.UNUSABLE, f"{len(records)} TXT records")
    try:
        tags = parse_tag_value(records[0])
    except InvalidTagValueList:
        return result(Published.UNUSABLE, "tag syntax error")
    problem = _record_problem(tags)
    if problem:
        return result(Published.UNUSABLE, problem)
    p_value = b"".join(tags.get(b"p", b"").split())
    if not p_value:
        return result(Published.REVOKED, "p= is empty")
    published_type = tags.get(b"k", b"rsa").strip().lower().decode("ascii", "replace")
    if published_type != key.key_type:
        return result(Published.MISMATCH, f"k={published_type}, the key file holds an {key.key_type} key")
    try:
        matches = _same_key(key, base64.b64decode(p_value, validate=True))
    except (binascii.Error, ValueError, UnparsableKeyError, IndexError) as exc:
        return result(Published.UNUSABLE, f"p= cannot be read ({type(exc).__name__})")
    if not matches:
        return result(Published.MISMATCH, "p= is another key")
    flags = {flag.strip() for flag in tags.get(b"t", b"").lower().split(b":")}
    return result(Published.MATCHES, "testing (t=y): receivers may ignore failures" if b"y" in flags else "")


def _record_problem(tags: dict) -> str:
    version = tags.get(b"v")
    if version is not None and version != b"DKIM1":
        return f"v={version.decode('ascii', 'replace')}"  # §3.6.1: the record MUST be ignored
    if b"p" not in tags:
        return "no p= tag"
    if b"h" in tags and b"sha256" not in {h.strip().lower() for h in tags[b"h"].split(b":")}:
        return "h= does not allow sha256"
    if b"s" in tags and not {s.strip().lower() for s in tags[b"s"].split(b":")} & {b"*", b"email"}:
        return "s= excludes email"
    return ""


def _same_key(key: SigningKey, der: bytes) -> bool:
    if key.key_type == "ed25519":
        return der == base64.b64decode(key.public_b64)  # RFC 8463 §4: the bare 32-octet public key
    # SubjectPublicKeyInfo or a bare RSAPublicKey: dkimpy's reader takes both, as verifiers do.
    published = parse_public_key(der)
    numbers = key.private.public_key().public_numbers()
    return published["modulus"] == numbers.n and published["publicExponent"] == numbers.e


def check_keyring(keyring: Keyring, resolver) -> list[KeyCheck]:
    """Every configured key, including those whose from= date is still ahead (they must be published first).
    Each lookup gets a fresh per-message budget from the shared resolver."""
    return [check_key(key, resolver.for_message()) for key in keyring.keys]


def log_checks(checks: Sequence[KeyCheck]) -> None:
    for check in checks:
        if check.ok:
            log.info("signing key %s", check.describe())
        else:
            log.warning("signing key %s", check.describe())


class KeyWatch:
    """Checks the running configuration's keys at start-up and then every `interval` seconds, in a thread of its
    own (a DNS lookup never delays start-up or a message). `recheck()` after a reload that changed the keys."""

    def __init__(self, runtime_of: Callable[[], object], interval: float = DAY_SECONDS) -> None:
        self._runtime_of = runtime_of
        self._interval = interval
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="signing-key-watch", daemon=True)

    def start(self) -> KeyWatch:
        self._thread.start()
        return self

    def recheck(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before the check: a recheck() asked during it runs another one
            runtime = self._runtime_of()
            keyring = getattr(runtime, "keyring", None)
            if keyring is not None:
                try:
                    log_checks(check_keyring(keyring, runtime.resolver))
                except Exception:
                    log.exception("checking the signing keys in DNS failed")
            self._wake.wait(self._interval)
