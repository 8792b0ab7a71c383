"""Zone data for the DKIM, DMARC, iprev, SRS, trusted-forwarder and null-MX scenarios (issues 3 and 4).

`auth_records()` is one of zonedata.AREAS. Keys are made once per test run (RSA with openssl, Ed25519 with PyNaCl)
and kept in this process, so the zones NSD serves and the signatures tests make (signing.py) always match.

Domains, each with one job (none of them exists outside the lab; NSD answers NXDOMAIN for anything else):
  signer.example       every kind of DKIM key, no DMARC record: DKIM results are delivered and readable
  example.com          DMARC p=reject sp=none np=reject, relaxed alignment; SPF designates GOOD_V4
  strict.example       DMARC p=reject with adkim=s aspf=s
  psdtld.example       a public-suffix-like parent publishing psd=y; brand./other. are separate organizations
  none.example, quarantine.example, testing.example (p=reject t=y), pct.example (pct=0), multi.example (two
                       records), badorder.example (v= not first), xn--bcher-kva.example (an IDN, p=reject)
  fwd.example          a forwarder: SRS0 rewrites, trusted-forwarder network and host name
  fwd2.example         the second hop of an SRS1 chain
  nullmx.example       MX 0 . (RFC 7505)
  secure.test / bogus.test / unreachable.test   DKIM keys in a signed, a bogus and an unreachable zone
"""

from __future__ import annotations

import base64
import ipaddress
import subprocess
from dataclasses import dataclass
from functools import cache

import nacl.signing

from testlab.dnslab import DEAD_ADDRESS
from testlab.zonedata import GOOD_V4, txt

# ---------------------------------------------------------------- clients (all on the namespace's lo)
SRS_FORWARDER_V4 = "127.0.0.30"      # fwd.example's outbound server: writes SRS0 addresses
SRS1_FORWARDER_V4 = "127.0.0.31"     # fwd2.example: forwards again, SRS1
TRUSTED_FORWARDER_V4 = "127.0.0.40"  # listed in [forwarders] networks
TRUSTED_HOST_V4 = "127.0.0.41"       # FCrDNS lists.fwd.example, listed in [forwarders] hostnames
UNTRUSTED_V4 = "127.0.0.42"          # designated by nobody, no PTR, in no forwarder list
PTR_ZONE_DEAD_V4 = "127.0.0.14"      # its reverse zone is delegated to a server that does not answer
OTHER_A = "127.0.0.50"               # an address that makes a name exist
TWO_PTR_V4 = "127.0.0.15"            # two PTR names: one has no address, the other confirms

TRUSTED_HOST = "lists.fwd.example"
SELECTOR = "lab"

DKIM_DOMAIN = "signer.example"
IDN_U_LABEL = "bücher.example"
IDN_A_LABEL = IDN_U_LABEL.encode("idna").decode()
SPF_GOOD = f'"v=spf1 ip4:{GOOD_V4} -all"'


@dataclass(frozen=True, slots=True)
class LabKey:
    algorithm: str      # "rsa" or "ed25519"
    private: bytes      # RSA: PKCS#1 PEM; Ed25519: base64 of the 32-octet seed (what dkimpy's signer takes)
    public_b64: str     # the p= value
    bits: int

    @property
    def signature_algorithm(self) -> str:
        return "ed25519-sha256" if self.algorithm == "ed25519" else "rsa-sha256"

    def record(self, *flags: str) -> str:
        """The key record's text (RFC 6376 §3.6.1)."""
        return f"v=DKIM1; k={self.algorithm}; {'; '.join(flags) + '; ' if flags else ''}p={self.public_b64}"


def _rsa_key(bits: int) -> LabKey:
    # -traditional: dkimpy reads PKCS#1 ("BEGIN RSA PRIVATE KEY"), not OpenSSL 3's default PKCS#8.
    pem = subprocess.run(["openssl", "genrsa", "-traditional", str(bits)], capture_output=True, check=True,
                         timeout=60).stdout
    der = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=pem, capture_output=True,
                         check=True, timeout=60).stdout
    return LabKey("rsa", pem, base64.b64encode(der).decode(), bits)


def _ed25519_key() -> LabKey:
    seed = nacl.signing.SigningKey.generate()
    return LabKey("ed25519", base64.b64encode(bytes(seed)),
                  base64.b64encode(bytes(seed.verify_key)).decode(), 256)


@dataclass(frozen=True, slots=True)
class LabKeys:
    rsa: LabKey        # 2048 bits, published under SELECTOR in every domain that signs
    ed25519: LabKey
    short: LabKey      # 512 bits: RFC 8301 §3.2 says never valid


@cache
def keys() -> LabKeys:
    return LabKeys(_rsa_key(2048), _ed25519_key(), _rsa_key(512))


def _dkim(owner: str, key: LabKey, *flags: str) -> str:
    return f"{owner} TXT {txt(key.record(*flags))}"


def _dmarc(record: str) -> str:
    return f"_dmarc TXT {txt(record)}"


def auth_records() -> dict[str, list[str]]:
    k = keys()
    mx = "@ MX 10 mail.example.org."
    return {
        DKIM_DOMAIN: [
            f"@ TXT {SPF_GOOD}", mx,
            _dkim(f"{SELECTOR}._domainkey", k.rsa),
            _dkim("ed._domainkey", k.ed25519),
            _dkim("short._domainkey", k.short),
            _dkim("testing._domainkey", k.rsa, "t=y"),
            'revoked._domainkey TXT "v=DKIM1; k=rsa; p="',  # RFC 6376 §3.6.1: an empty p= is a revoked key
            # "gone" is not published: its key lookup is NXDOMAIN.
        ],
        "secure.test": [_dkim(f"{SELECTOR}._domainkey", k.rsa)],
        "bogus.test": [_dkim(f"{SELECTOR}._domainkey", k.rsa)],
        "unreachable.test": [_dkim(f"{SELECTOR}._domainkey", k.rsa)],  # served by nobody: temperror
        "example.com": [
            f"@ TXT {SPF_GOOD}", mx,
            _dmarc("v=DMARC1; p=reject; sp=none; np=reject; adkim=r; aspf=r; rua=mailto:dmarc@example.com"),
            _dkim(f"{SELECTOR}._domainkey", k.rsa),
            _dkim(f"{SELECTOR}._domainkey.news", k.rsa),
            f"bounces TXT {SPF_GOOD}", "bounces MX 10 mail.example.org.",
            f"shop A {OTHER_A}",              # exists: sp= applies; ghost.example.com does not: np= applies
        ],
        "strict.example": [
            f"@ TXT {SPF_GOOD}", mx,
            _dmarc("v=DMARC1; p=reject; adkim=s; aspf=s"),
            _dkim(f"{SELECTOR}._domainkey", k.rsa),
            _dkim(f"{SELECTOR}._domainkey.mail", k.rsa),
            f"bounces TXT {SPF_GOOD}", "bounces MX 10 mail.example.org.",
        ],
        "psdtld.example": [
            # RFC 9989 §3.2.10: a Public Suffix Domain's policy; its children are separate organizations.
            _dmarc("v=DMARC1; p=reject; psd=y"),
            f"brand A {OTHER_A}", f"news.brand A {OTHER_A}", f"other A {OTHER_A}",
            _dkim(f"{SELECTOR}._domainkey.brand", k.rsa),
            _dkim(f"{SELECTOR}._domainkey.other", k.rsa),
        ],
        "none.example": [f"@ TXT {SPF_GOOD}", mx, _dmarc("v=DMARC1; p=none")],
        "quarantine.example": [f"@ TXT {SPF_GOOD}", mx, _dmarc("v=DMARC1; p=quarantine")],
        "testing.example": [f"@ TXT {SPF_GOOD}", mx, _dmarc("v=DMARC1; p=reject; t=y")],
        # Legacy pct=0 without t= is read as t=y (issue 3); two records, or one not starting with v=DMARC1,
        # mean no policy (RFC 9989 §4.10).
        "pct.example": [f"@ TXT {SPF_GOOD}", mx, _dmarc("v=DMARC1; p=reject; pct=0")],
        "multi.example": [f"@ TXT {SPF_GOOD}", mx, _dmarc("v=DMARC1; p=reject"), _dmarc("v=DMARC1; p=none")],
        "badorder.example": [f"@ TXT {SPF_GOOD}", mx, _dmarc("p=reject; v=DMARC1")],
        # bücher.example: an IDN author domain must be looked up by its A-label.
        IDN_A_LABEL: [f"@ TXT {SPF_GOOD}", mx, _dmarc("v=DMARC1; p=reject")],
        "fwd.example": [
            f'@ TXT "v=spf1 ip4:{SRS_FORWARDER_V4} ip4:{TRUSTED_FORWARDER_V4} ip4:{TRUSTED_HOST_V4} -all"', mx,
            f"lists A {TRUSTED_HOST_V4}",
            # ARC (issue 14): lists.fwd.example seals with the lab RSA key under selector "arc".
            _dkim("arc._domainkey.lists", k.rsa),
            f"confirmed A {TWO_PTR_V4}",     # unconfirmed.fwd.example has no address at all
        ],
        "fwd2.example": [f'@ TXT "v=spf1 ip4:{SRS1_FORWARDER_V4} -all"', mx],
        "nullmx.example": ["@ MX 0 .", f'@ TXT "v=spf1 ip4:{GOOD_V4} -all"'],
        "127.in-addr.arpa": [
            f"{_rev(TRUSTED_HOST_V4)} PTR {TRUSTED_HOST}.",
            f"{_rev(TWO_PTR_V4)} PTR unconfirmed.fwd.example.",
            f"{_rev(TWO_PTR_V4)} PTR confirmed.fwd.example.",
            # A delegation to a dead server, glue included: the PTR lookup itself fails (SERVFAIL).
            f"{_rev(PTR_ZONE_DEAD_V4)} NS ns.{_rev(PTR_ZONE_DEAD_V4)}",
            f"ns.{_rev(PTR_ZONE_DEAD_V4)} A {DEAD_ADDRESS}",
        ],
    }


def _rev(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer + "."
