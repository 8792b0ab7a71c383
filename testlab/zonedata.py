"""What the lab's DNS serves, as Python data. One function per area; `all_zones()` merges them.

To add scenarios (DKIM keys, DMARC records, more PTRs), write another `*_records()` function returning
{origin: [zone-file lines]} and list it in AREAS; declare a new zone's DNSSEC state in SIGNING. Keep every address
in 127.0.0.0/8 or 2001:db8::/32: the lab's namespace only has loopback. Long TXT values (DKIM keys) go through
txt(), which splits them into 255-byte character-strings. Keys a test signs with can be made when this module is
imported (once per session) and kept in a module-level constant that both the zone data and the tests read.
"""

from __future__ import annotations

import ipaddress

from testlab.dnslab import Signing, Zone

# ---------------------------------------------------------------- who sends from where
# Every client address below lives on the namespace's lo (IPv6 ones are added by the lab, see CLIENT_V6).
GOOD_V4 = "127.0.0.10"       # example.org's designated mail server, FCrDNS mail.example.org
STRANGER_V4 = "127.0.0.20"   # nobody's designated server, no PTR
MISMATCH_V4 = "127.0.0.11"   # PTR mismatch.example.org, whose A is elsewhere (iprev fail)
PTR_TEMPERROR_V4 = "127.0.0.13"  # PTR to a host in a zone nobody answers for (iprev temperror)
GOOD_V6 = "2001:db8::25"     # example.org's designated IPv6 server, FCrDNS mail6.example.org
STRANGER_V6 = "2001:db8::66"
CLIENT_V6 = (GOOD_V6, STRANGER_V6)

GOOD_HELO = "mail.example.org"
MX_NAME = "mx.example.net"          # the receiving host and our authserv-id
RECIPIENT_DOMAIN = "example.net"

# DNSSEC state of every zone; zones not listed are UNSIGNED.
SIGNING: dict[str, Signing] = {
    "test": Signing.SIGNED,
    "secure.test": Signing.SIGNED,
    "insecure.test": Signing.UNSIGNED,   # insecure delegation from a signed parent
    "bogus.test": Signing.BOGUS_DS,
    "expired.test": Signing.EXPIRED,
    "unreachable.test": Signing.UNREACHABLE,
}

SPF_DESIGNATED = f"ip4:{GOOD_V4} ip6:{GOOD_V6}"


def txt(value: str) -> str:
    """A TXT rdata in zone-file syntax: quoted character-strings of at most 255 bytes (RFC 1035 §3.3.14);
    quotes, backslashes and non-printable bytes escaped as \\DDD."""
    data = value.encode("utf-8")
    chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    return " ".join('"' + "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\{b:03d}"
                                  for b in chunk) + '"' for chunk in chunks)


def spf_records() -> dict[str, list[str]]:
    too_many = " ".join(f"a:l{n}.example.org" for n in range(1, 12))  # 11 DNS mechanisms: RFC 7208 §4.6.4
    return {
        "example.org": [
            f'@ TXT "v=spf1 {SPF_DESIGNATED} -all exp=exp.example.org"',
            f"@ MX 10 {GOOD_HELO}.",
            'exp TXT "%{i} is not allowed to send mail for %{d}"',
            f"mail A {GOOD_V4}",
            f"mail AAAA {GOOD_V6}",
            'mail TXT "v=spf1 a -all"',
            f"mail6 AAAA {GOOD_V6}",
            'mail6 TXT "v=spf1 a -all"',
            # Mail that reaches us through a relay of ours ([trust] relays, test_e2e_relays): DMARC p=reject, and
            # only the lab's IPv6 source designated (its IPv4 sources are loopback: hops of ours to the walk).
            f'relayed TXT "v=spf1 ip6:{GOOD_V6} -all"',
            '_dmarc.relayed TXT "v=DMARC1; p=reject"',
            'badhelo TXT "v=spf1 -all"',
            f"badhelo A {STRANGER_V4}",
            f'softfail TXT "v=spf1 {SPF_DESIGNATED} ~all"',
            f'neutral TXT "v=spf1 {SPF_DESIGNATED} ?all"',
            f"nospf A {GOOD_V4}",
            *(f"{sub} MX 10 {GOOD_HELO}." for sub in ("nospf", "softfail", "neutral", "syntax", "toomany")),
            f'syntax TXT "v=spf1 {SPF_DESIGNATED} frobnicate -all"',
            f"toomany TXT {txt(f'v=spf1 {too_many} {SPF_DESIGNATED} -all')}",
            *(f"l{n} A 127.0.0.{200 + n}" for n in range(1, 12)),
            "mismatch A 127.0.0.111",
        ],
        # The same record in zones of every DNSSEC state: the result must follow the DNS, not the record.
        **{zone: [f'@ TXT "v=spf1 {SPF_DESIGNATED} -all"', "@ MX 10 mail", f"mail A {GOOD_V4}",
                  'mail TXT "v=spf1 a -all"']
           for zone in ("secure.test", "insecure.test", "bogus.test", "expired.test")},
        "example.net": [f"@ MX 10 {MX_NAME}.", "mx A 127.0.0.1", "mx AAAA ::1"],
    }


def ptr_records() -> dict[str, list[str]]:
    """Reverse zones for 127.0.0.0/8 and 2001:db8::/32, so iprev has something to confirm (or not)."""
    v4 = {GOOD_V4: "mail.example.org", MISMATCH_V4: "mismatch.example.org",
          PTR_TEMPERROR_V4: "host.unreachable.test", "127.0.0.1": "mx.example.net"}
    v6 = {GOOD_V6: "mail6.example.org"}
    return {
        "127.in-addr.arpa": [f"{ipaddress.ip_address(ip).reverse_pointer}. PTR {name}." for ip, name in v4.items()],
        "8.b.d.0.1.0.0.2.ip6.arpa": [f"{ipaddress.ip_address(ip).reverse_pointer}. PTR {name}."
                                     for ip, name in v6.items()],
    }


LONG_TXT = "v=lab1; " + "x" * 600   # longer than one character-string: served as several, read back as one


def lab_records() -> dict[str, list[str]]:
    """Records the lab's own tests use."""
    return {"example.org": [f"longtxt TXT {txt(LONG_TXT)}"]}


def auth_records() -> dict[str, list[str]]:
    """DKIM keys, DMARC records, more PTRs, SRS/forwarder/null-MX domains: testlab/authzones.py (imported here,
    not at the top, because it imports this module's addresses)."""
    from testlab import authzones
    return authzones.auth_records()


def report_records() -> dict[str, list[str]]:
    """DMARC aggregate report scenarios: testlab/reportzones.py (imported here for the same reason)."""
    from testlab import reportzones
    return reportzones.report_records()


AREAS = (spf_records, ptr_records, lab_records, auth_records, report_records)


def all_zones() -> list[Zone]:
    merged: dict[str, list[str]] = {origin: [] for origin in SIGNING}
    for area in AREAS:
        for origin, records in area().items():
            merged.setdefault(origin, []).extend(records)
    return [Zone(origin, tuple(records), SIGNING.get(origin, Signing.UNSIGNED))
            for origin, records in merged.items()]

