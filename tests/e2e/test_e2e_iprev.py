"""iprev (FCrDNS, RFC 8601 §3) end to end, with the lab's reverse zones for 127.in-addr.arpa and ip6.arpa.

The lab's first iprev cases (issue 4 names more: actions, trusted forwarders); PTR data in zonedata.ptr_records().
"""

from __future__ import annotations

import pytest

from tests.e2e.headers import parse_ar
from tests.e2e.zonedata import (GOOD_V4, GOOD_V6, MISMATCH_V4, MX_NAME, PTR_TEMPERROR_V4, STRANGER_V4,
                                STRANGER_V6)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("source, expected, host", [
    (GOOD_V4, "pass", "mail.example.org"),         # PTR mail.example.org, whose A is the client
    (GOOD_V6, "pass", "mail6.example.org"),        # the same through ip6.arpa and AAAA
    (MISMATCH_V4, "fail", None),                   # PTR name resolves elsewhere
    (STRANGER_V4, "permerror", None),              # no PTR at all
    (STRANGER_V6, "permerror", None),
    (PTR_TEMPERROR_V4, "temperror", None),         # the PTR name's zone does not answer
])
def test_iprev_result_reaches_header_and_log(lab, source, expected, host):
    sent = lab.send(mail_from="user@example.org", source=source)
    message = lab.delivered(sent)
    [ours] = [parse_ar(v) for v in message.get_all("Authentication-Results") if parse_ar(v).authserv_id == MX_NAME]
    entry = ours.only("iprev")
    assert (entry.result, entry.properties["policy.iprev"]) == (expected, source)
    if host:  # the comment names the confirmed host
        assert f"policy.iprev={source} ({host})" in ours.raw.replace('"', "")
    log = lab.milter_log(sent)
    assert (log["iprev"], log["client_ip"], log["action"]) == (expected, source, "accept")
    if host:
        assert log["iprev_host"] == host
