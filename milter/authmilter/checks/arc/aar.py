"""What one hop's ARC-Authentication-Results recorded, read with authres (for the trusted-sealer override).

Only what the override needs: did the sealer see DMARC pass, which SPF and DKIM domains passed, and the client IP
it received the message from (smtp.remote-ip, or iprev's policy.iprev). The text is the sealer's: anything authres
cannot parse, or parses into nonsense, gives an empty record, and so no override.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import authres

MAX_AAR_CHARS = 8192   # a real AAR is a few hundred characters; authres's parser is not linear on junk
MAX_RESULTS = 50


@dataclass(frozen=True, slots=True)
class HopAuth:
    authserv_id: str = ""
    dmarc_pass: bool = False
    dmarc_from: str = ""                  # header.from of a dmarc=pass
    spf_pass_domains: tuple[str, ...] = ()
    dkim_pass_domains: tuple[str, ...] = ()
    remote_ip: str = ""                   # a valid IP address, or ""


def read_aar(payload: str) -> HopAuth:
    """The AAR after its "i=N;", i.e. an Authentication-Results value."""
    if not payload or len(payload) > MAX_AAR_CHARS:
        return HopAuth()
    try:
        header = authres.AuthenticationResultsHeader.parse_value(payload)
    except (authres.AuthResError, ValueError, IndexError, TypeError, AttributeError):
        return HopAuth()
    dmarc_pass, dmarc_from, remote_ip = False, "", ""
    spf, dkim = [], []
    for result in list(header.results)[:MAX_RESULTS]:
        method, status = str(result.method).lower(), str(result.result).lower()
        props = {(str(p.type).lower(), str(p.name).lower()): str(p.value) for p in result.properties}
        if method == "dmarc" and status == "pass":
            dmarc_pass, dmarc_from = True, _domain(props.get(("header", "from"), ""))
        elif method == "spf" and status == "pass":
            mailfrom = props.get(("smtp", "mailfrom"), "")
            spf.append(_domain(mailfrom.rpartition("@")[2]))
        elif method == "dkim" and status == "pass":
            signer = props.get(("header", "d"), "") or props.get(("header", "i"), "").rpartition("@")[2]
            dkim.append(_domain(signer))
        for prop in (("smtp", "remote-ip"), ("policy", "iprev")):
            if not remote_ip and prop in props:
                remote_ip = _ip(props[prop])
    return HopAuth(_domain(str(header.authserv_id or "")), dmarc_pass, dmarc_from,
                   tuple(d for d in spf if d), tuple(d for d in dkim if d), remote_ip)


def _domain(text: str) -> str:
    return text.strip().strip(".").lower()


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return ""
