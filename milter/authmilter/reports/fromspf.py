"""Can report mail pass SPF for its From domain? RFC 9990 asks that report mail pass DMARC aligned where it arrives;
until reports are DKIM-signed (issue 11) that rests on the SPF record of `[reports] from_address`'s domain.
"""

from __future__ import annotations

from authmilter.config import Config
from authmilter.resolver import DnsClient, Outcome, to_a_labels

# Mechanisms that can designate some host. A record with none of them (only "all" with -, ~ or ?) passes nobody.
_DESIGNATING = ("a", "mx", "ip4", "ip6", "include", "exists", "ptr")


def check_from_spf(cfg: Config, dns: DnsClient) -> str:
    """A warning when the From domain's SPF cannot let report mail pass aligned, else "".

    What is checked, through our DNS layer: the TXT records at from_address's domain hold exactly one v=spf1
    record, and that record has a mechanism that can designate some host (a, mx, ip4, ip6, include, exists,
    ptr), a redirect=, or +all. Whether it designates this very host is not checked: that depends on the
    address the MTA sends from, which the sender cannot see.
    """
    raw = cfg.reports.from_address.rpartition("@")[2].rstrip(".")
    domain = (to_a_labels(raw) or raw).lower()
    answer = dns.query(domain, "TXT")
    if answer.outcome.is_temporary:
        return f"could not check the SPF record of {domain} ({answer.problem})"
    records = []
    if answer.outcome is Outcome.ANSWER:
        for raw in answer.records:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            terms = text.split()
            if terms and terms[0].lower() == "v=spf1":
                records.append(terms[1:])
    if not records:
        return (f"{domain} (the domain of [reports] from_address) has no SPF record: report mail can only pass "
                f"DMARC there through a DKIM signature")
    if len(records) > 1:
        return f"{domain} has {len(records)} SPF records (RFC 7208 §4.5: permerror): report mail cannot pass SPF"
    for term in records[0]:
        lowered = term.lower()
        name = lowered.lstrip("+-~?").split(":", 1)[0].split("/", 1)[0].split("=", 1)[0]
        qualifier = lowered[0] if lowered[:1] in "+-~?" else "+"
        if lowered.startswith("redirect="):
            return ""
        if name in _DESIGNATING and qualifier == "+":
            return ""
        if name == "all" and qualifier == "+":
            return ""
    return (f"the SPF record of {domain} designates no host (only {' '.join(records[0]) or 'nothing'}): "
            f"report mail cannot pass SPF")
