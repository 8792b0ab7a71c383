"""Zone data for the DMARC aggregate report scenarios (issue 10): `report_records()` is one of zonedata.AREAS.

  rua.example          p=none, rua=mailto:dmarc@example.net (a lab mailbox); SPF designates GOOD_V4
  rejectonly.example   p=reject, same rua; SPF designates GOOD_V4 (its mail from anywhere else is rejected)
  reporter.example     the reports' From domain: SPF designates the namespace's 127.0.0.1 (where `reports send`
                       hands mail to Postfix), DMARC p=reject, so a delivered report can be checked for an
                       aligned pass
  example.net          (the lab's receiving domain) authorizes reports for both policy domains, RFC 9990 §4
"""

from __future__ import annotations

from testlab.zonedata import GOOD_HELO, SPF_DESIGNATED, txt

RUA_DOMAIN = "rua.example"
REJECT_ONLY_DOMAIN = "rejectonly.example"
REPORTER_DOMAIN = "reporter.example"
RUA_MAILBOX = "dmarc@example.net"
REPORTER_ADDRESS = f"dmarc-reports@{REPORTER_DOMAIN}"
REPORTS_SOURCE_V4 = "127.0.0.1"  # `reports send` connects to Postfix from here inside the namespace


def report_records() -> dict[str, list[str]]:
    mx = f"@ MX 10 {GOOD_HELO}."
    return {
        RUA_DOMAIN: [f'@ TXT "v=spf1 {SPF_DESIGNATED} -all"', mx,
                     f"_dmarc TXT {txt(f'v=DMARC1; p=none; rua=mailto:{RUA_MAILBOX}')}"],
        REJECT_ONLY_DOMAIN: [f'@ TXT "v=spf1 {SPF_DESIGNATED} -all"', mx,
                             f"_dmarc TXT {txt(f'v=DMARC1; p=reject; rua=mailto:{RUA_MAILBOX}')}"],
        REPORTER_DOMAIN: [f'@ TXT "v=spf1 ip4:{REPORTS_SOURCE_V4} -all"', mx,
                          f"_dmarc TXT {txt('v=DMARC1; p=reject')}"],
        "example.net": [f'{domain}._report._dmarc TXT "v=DMARC1"' for domain in (RUA_DOMAIN, REJECT_ONLY_DOMAIN)],
    }
