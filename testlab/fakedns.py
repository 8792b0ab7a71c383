"""An in-process DnsClient built from zone-like data, for unit tests (mox's MockResolver, in Python).

    dns = FakeDns({
        "example.org": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"], "MX": [(10, "mx.example.org")]},
        "mx.example.org": {"A": ["192.0.2.1"]},
        "alias.example.org": {"CNAME": "example.org"},
    }, timeout={"slow.example"}, servfail={("broken.example", "TXT")}, secure={"example.org"})

A name present with no records of the asked type answers NODATA; a name absent answers NXDOMAIN. TXT values
may be str or bytes, or a tuple of strings (several character-strings of one record, concatenated).
`timeout`/`servfail` hold names or (name, type) pairs. `secure` names answer Dnssec.SECURE, others INSECURE.
"""

from __future__ import annotations

from authmilter.resolver import Answer, Outcome, to_a_labels
from authmilter.results import Dnssec


class FakeDns:
    def __init__(self, zone: dict, *, timeout=(), servfail=(), secure=(), max_queries: int = 1000):
        self.zone = {name.lower().rstrip("."): records for name, records in zone.items()}
        self.timeout = {_key(k) for k in timeout}
        self.servfail = {_key(k) for k in servfail}
        self.secure = {name.lower().rstrip(".") for name in secure}
        self.max_queries = max_queries
        self.asked: list[tuple[str, str]] = []
        self._expired = False

    @property
    def query_count(self) -> int:
        return len(self.asked)

    @property
    def deadline_expired(self) -> bool:
        return self._expired

    def query(self, name: str, rdtype: str) -> Answer:
        # As the real resolver does (the DnsClient contract): internationalized names are asked as A-labels.
        name = ((to_a_labels(name) or "") if not name.isascii() else name).lower().rstrip(".")
        rdtype = rdtype.upper()
        if not name or len(name) > 253 or any(not label or len(label) > 63 for label in name.split(".")):
            return Answer(name, rdtype, Outcome.INVALID_NAME, detail="invalid name")
        if len(self.asked) >= self.max_queries:
            self._expired = True
            return Answer(name, rdtype, Outcome.TIMEOUT, detail="DNS budget for this message spent")
        self.asked.append((name, rdtype))
        dnssec = Dnssec.SECURE if name in self.secure else Dnssec.INSECURE
        if name in self.timeout or (name, rdtype) in self.timeout:
            return Answer(name, rdtype, Outcome.TIMEOUT, detail="timeout")
        if name in self.servfail or (name, rdtype) in self.servfail:
            return Answer(name, rdtype, Outcome.SERVFAIL, detail="SERVFAIL")
        seen = set()
        current = name
        while True:
            node = self.zone.get(current)
            if node is None:
                return Answer(name, rdtype, Outcome.NXDOMAIN, dnssec=dnssec, detail="NXDOMAIN")
            if "CNAME" in node and rdtype != "CNAME":
                if current in seen:
                    return Answer(name, rdtype, Outcome.ERROR, detail="CNAME loop")
                seen.add(current)
                current = node["CNAME"].lower().rstrip(".")
                continue
            break
        values = node.get(rdtype)
        if values is None:
            return Answer(name, rdtype, Outcome.NODATA, dnssec=dnssec, detail="no data")
        if isinstance(values, (str, bytes, tuple)) and rdtype != "MX":
            values = [values]
        return Answer(name, rdtype, Outcome.ANSWER, tuple(_record(rdtype, v) for v in values), dnssec, ttl=300)


def _key(item):
    if isinstance(item, tuple):
        return (item[0].lower().rstrip("."), item[1].upper())
    return item.lower().rstrip(".")


def _record(rdtype: str, value):
    if rdtype in ("TXT", "SPF"):
        if isinstance(value, tuple):
            return b"".join(v.encode() if isinstance(v, str) else v for v in value)
        return value.encode() if isinstance(value, str) else value
    if rdtype == "MX":
        preference, exchange = value
        return (int(preference), exchange.rstrip("."))
    return value.rstrip(".") if isinstance(value, str) else value
