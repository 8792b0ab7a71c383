"""Test zones served by NSD (authoritative) behind a validating Unbound, both inside the lab's namespace.

Layout: a signed parent `test.` whose key is Unbound's only trust anchor. Every zone below it is delegated from
it: SIGNED children get a correct DS (answers carry AD), BOGUS_DS children a DS that matches none of their keys and
EXPIRED children RRSIGs that expired (both: Unbound answers SERVFAIL), UNREACHABLE children NS records pointing
at an address where nothing listens (SERVFAIL after Unbound gives up), and UNSIGNED children an insecure
delegation (NSEC proves there is no DS: answers come back without AD). Zones outside `test.` (example.org,
127.in-addr.arpa, ip6.arpa…) are unsigned and outside every trust anchor, so also insecure.

Keys are made at run time with ldns-keygen (ECDSA P-256: fast), zones signed with ldns-signzone.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

NSD_ADDRESS = "127.0.0.53"
UNBOUND_ADDRESS = "127.0.0.1"
# A loopback address inside the namespace where no server listens: queries to it are refused at once (ICMP).
DEAD_ADDRESS = "127.0.0.99"
PARENT = "test"
TTL = 60


class Signing(StrEnum):
    UNSIGNED = "unsigned"        # no DNSSEC: answers without AD (dnssec=insecure)
    SIGNED = "signed"            # valid chain from the `test.` anchor: answers with AD (dnssec=secure)
    BOGUS_DS = "bogus_ds"        # signed, but the parent's DS matches no key: SERVFAIL
    EXPIRED = "expired"          # signed with expired RRSIGs: SERVFAIL
    UNREACHABLE = "unreachable"  # delegated to DEAD_ADDRESS: SERVFAIL


@dataclass(frozen=True, slots=True)
class Zone:
    """One zone. `records` are zone-file lines; owners are relative to `origin` unless they end with a dot."""

    origin: str                    # without trailing dot, e.g. "example.org"
    records: tuple[str, ...] = ()
    signing: Signing = Signing.UNSIGNED

    @property
    def under_parent(self) -> bool:
        return self.origin.endswith("." + PARENT)


def zone_text(origin: str, records: tuple[str, ...] | list[str]) -> str:
    fqdn = f"{origin}." if origin else "."
    head = [
        f"$ORIGIN {fqdn}",
        f"$TTL {TTL}",
        f"@ IN SOA ns.{PARENT}. hostmaster.{PARENT}. 1 3600 600 86400 {TTL}",
        f"@ IN NS ns.{PARENT}.",
    ]
    return "\n".join(head + list(records)) + "\n"


class ZoneBuilder:
    """Writes, keys and signs the zones into `directory`; returns what NSD and Unbound need."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._keys: dict[str, str] = {}  # origin -> ldns key base name

    def build(self, zones: list[Zone]) -> tuple[dict[str, str], str]:
        """-> ({origin: zone file name}, trust anchor DS line for `test.`)."""
        origins = {zone.origin for zone in zones}
        for origin in origins:
            inner = [other for other in origins if other != PARENT and origin.endswith("." + other)]
            if inner:
                # Delegations are written into `test.` only; a zone inside another lab zone would be shadowed.
                raise ValueError(f"{origin}: nested inside the lab zone {inner[0]}; put its records there instead")
        files: dict[str, str] = {}
        parent = next((z for z in zones if z.origin == PARENT), Zone(PARENT, signing=Signing.SIGNED))
        delegations: list[str] = []
        for zone in zones:
            if zone.origin == PARENT:
                continue
            if zone.under_parent:
                delegations += self._delegation(zone)
            if zone.signing is Signing.UNREACHABLE:
                continue  # nobody serves it: that is the point
            if zone.signing is Signing.UNSIGNED:
                files[zone.origin] = self._write(zone.origin, zone.records)
            else:
                if not zone.under_parent:
                    raise ValueError(f"{zone.origin}: only zones under {PARENT}. can be signed in this lab")
                files[zone.origin] = self._sign(zone.origin, zone.records, expired=zone.signing is Signing.EXPIRED)
        records = list(parent.records) + [f"ns IN A {NSD_ADDRESS}"] + delegations
        files[PARENT] = self._sign(PARENT, records, expired=False)
        # An unsigned root with NSD as its only server: Unbound primes from it, and names we do not serve get
        # NXDOMAIN here instead of a query that could leave the lab.
        files[""] = self._write("", [f"{PARENT}. IN NS ns.{PARENT}.", f"ns.{PARENT}. IN A {NSD_ADDRESS}"])
        anchor = self._ds(self._keys[PARENT])
        return files, anchor

    def _delegation(self, zone: Zone) -> list[str]:
        owner = f"{zone.origin}."
        if zone.signing is Signing.UNREACHABLE:
            return [f"{owner} IN NS ns.{owner}", f"ns.{owner} IN A {DEAD_ADDRESS}"]
        lines = [f"{owner} IN NS ns.{PARENT}."]
        if zone.signing in (Signing.SIGNED, Signing.EXPIRED):
            lines.append(self._ds(self._key(zone.origin)))
        elif zone.signing is Signing.BOGUS_DS:
            self._key(zone.origin)  # the zone is signed with this key…
            decoy = self._keygen(zone.origin)  # …but the parent vouches for another one
            lines.append(self._ds(decoy))
        return lines

    def _write(self, origin: str, records) -> str:
        name = f"{origin or 'root'}.zone"
        (self.directory / name).write_text(zone_text(origin, records))
        return name

    def _key(self, origin: str) -> str:
        if origin not in self._keys:
            self._keys[origin] = self._keygen(origin)
        return self._keys[origin]

    def _keygen(self, origin: str) -> str:
        # -k: a key-signing key (flags 257); used alone it signs every RRset (a "combined signing key").
        out = self._tool("ldns-keygen", "-a", "ECDSAP256SHA256", "-k", "-r", "/dev/urandom", origin)
        return out.strip()

    def _ds(self, keybase: str) -> str:
        return self._tool("ldns-key2ds", "-n", "-2", f"{keybase}.key").strip()

    def _sign(self, origin: str, records, *, expired: bool) -> str:
        unsigned = self._write(origin, records)
        keybase = self._key(origin)
        window = ["-i", "20200101000000", "-e", "20200201000000"] if expired else []
        self._tool("ldns-signzone", *window, "-f", f"{unsigned}.signed", unsigned, keybase)
        return f"{unsigned}.signed"

    def _tool(self, *argv: str) -> str:
        result = subprocess.run(argv, cwd=self.directory, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
        return result.stdout


def nsd_conf(directory: Path, files: dict[str, str]) -> str:
    lines = [
        "server:",
        f"  ip-address: {NSD_ADDRESS}",
        "  port: 53",
        "  do-ip6: no",
        '  username: ""',
        '  chroot: ""',
        f'  zonesdir: "{directory}"',
        '  database: ""',
        f'  pidfile: "{directory}/nsd.pid"',
        f'  logfile: "{directory}/nsd.log"',
        f'  xfrdfile: "{directory}/xfrd.state"',
        f'  xfrdir: "{directory}"',
        f'  zonelistfile: "{directory}/zone.list"',
        "  server-count: 1",
        "  reuseport: no",
        "  verbosity: 1",
        "  hide-version: yes",
        "remote-control:",
        "  control-enable: no",
    ]
    for origin, name in sorted(files.items()):
        lines += ["zone:", f'  name: "{origin}."' if origin else '  name: "."', f'  zonefile: "{name}"']
    return "\n".join(lines) + "\n"


def unbound_conf(directory: Path, anchor: str, zones: list[Zone]) -> str:
    lines = [
        "server:",
        f"  interface: {UNBOUND_ADDRESS}",
        "  port: 53",
        "  do-daemonize: no",
        '  username: ""',
        '  chroot: ""',
        f'  directory: "{directory}"',
        f'  pidfile: "{directory}/unbound.pid"',
        f'  logfile: "{directory}/unbound.log"',
        "  use-syslog: no",
        "  verbosity: 1",
        "  log-servfail: yes",
        "  val-log-level: 2",
        "  num-threads: 1",
        "  so-reuseport: no",
        "  access-control: 127.0.0.0/8 allow",
        "  access-control: ::1/128 allow",
        # NSD and the dead delegation are on loopback: that is the whole lab.
        "  do-not-query-localhost: no",
        '  module-config: "validator iterator"',
        f'  trust-anchor: "{anchor}"',
        "  val-permissive-mode: no",
        "  harden-dnssec-stripped: yes",
        "  qname-minimisation: no",
        # Give up on the dead delegation within a second rather than after Unbound's two-minute back-off.
        "  infra-cache-max-rtt: 300",
        "  infra-keep-probing: yes",
        "  serve-expired: no",
    ]
    # Unbound answers test., 127.in-addr.arpa., 8.b.d.0.1.0.0.2.ip6.arpa. … itself by default (RFC 6761/6303).
    for origin in sorted({PARENT, *(z.origin for z in zones if not z.under_parent)}):
        lines.append(f'  local-zone: "{origin}." nodefault')
    lines += [
        "remote-control:",
        "  control-enable: no",
        # Unbound takes a stub for "." as its root hints: it primes from NSD's root zone, so no query can leave.
        "stub-zone:",
        '  name: "."',
        f"  stub-addr: {NSD_ADDRESS}",
    ]
    return "\n".join(lines) + "\n"
