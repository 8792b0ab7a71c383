"""ValiMail's authheaders DMARC scenarios, restated as tests of ours.

Origin: the eleven DMARC cases of authheaders 0.16.3 (PyPI sdist, authheaders/test/test_authentication.py,
MPL-2.0): the same DNS data, From headers and DKIM outcomes, checked against our check_dmarc(). No code was
copied. DKIM verification itself is not re-run here (dkimpy's job, tested in test_dkim*); each case feeds the
DKIM outcome authheaders' test asserted or assumed.

Where we deliberately differ, the case says so:
- a From with two mailboxes is a permerror for us (issue 3: a classic bypass), where authheaders evaluates the
  first domain and reports fail;
- a permerror carries no policy.dmarc property (no policy was applied), and no header.from when the From
  yielded no domain (authheaders writes header.from=none).
"""

from __future__ import annotations

import pytest

from authmilter.checks.dkim.check import DkimResult, DkimSignatureResult
from authmilter.checks.dmarc.check import check_dmarc
from authmilter.config import DmarcSection
from authmilter.context import Header, Message
from authmilter.results import Property, Status
from testlab.fakedns import FakeDns

# authheaders' dnsfunc table, as zone data. Its empty strings mean "no record"; "sub2.example.biz" answered
# something (it exists), "sub.example.biz" and "example.gov" answered nothing (they do not exist).
ZONE = {
    "_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject; rua=mailto:dmarc.reports@valimail.com,"
                                   "mailto:dmarc_agg@vali.email; ruf=mailto:dmarc.reports@valimail.com,"
                                   "mailto:dmarc_c0cb7153_afrf@vali.email"]},
    "_dmarc.example.org": {"TXT": ["v=DMARC1; p=none"]},
    "_dmarc.example.net": {"TXT": ["v=DMARC1; p=none; sp=reject"]},
    "_dmarc.example.biz": {"TXT": ["v=DMARC1; p=none; sp=quarantine; np=reject"]},
    "_dmarc.nop.example.org": {"TXT": ["v=DMARC1; sp=quarantine; np=reject"]},
    "sub2.example.biz": {"CNAME": "host.example.biz"},
    "host.example.biz": {"A": ["192.0.2.10"]},
    "_dmarc.bad.example.com": {"TXT": ["v=DMARC1; p=none; reject"]},
    "_dmarc.gov": {"TXT": ["v=DMARC1; p=reject; sp=none; np=reject; rua=mailto:dotgov_dmarc@cisa.dhs.gov; "
                           "psd=y"]},
}


def dkim(*pairs: tuple[str, Status]) -> DkimResult:
    return DkimResult(tuple(DkimSignatureResult(status, domain=d, identity="@" + d) for d, status in pairs))


PASS_EXAMPLE_COM = dkim(("example.com", Status.PASS))

SCENARIOS = [
    # name, From value, DKIM outcome, status, properties, comment fragment
    ("dmarc", "Test User <test@example.com>", PASS_EXAMPLE_COM, Status.PASS,
     (Property("header", "from", "example.com"), Property("policy", "dmarc", "none")), "p=reject"),
    ("dmarc_bad", "Test User <test@bad.example.com>", None, Status.PERMERROR,
     (Property("header", "from", "bad.example.com"),), "malformed tag 'reject'"),
    ("dmarc_nofrom", '"Test User"', None, Status.PERMERROR, (), "no domain"),
    # Tree walk: example.gov publishes nothing and does not exist; the PSD gov (psd=y) applies with np=reject.
    ("dmarc_psdsub", "Test User <test@example.gov>", None, Status.FAIL,
     (Property("header", "from", "example.gov"), Property("policy", "dmarc", "reject")), "np=reject"),
    # Differs: authheaders evaluates the first domain (fail); two mailboxes are a permerror for us.
    ("dmarc_mult_from", "Bad User <spoof@example.org>,Test User <test@example.com>",
     dkim(("example.com", Status.FAIL), ("example.org", Status.PASS)), Status.PERMERROR, (), "several addresses"),
    ("dmarc_mult_from2", "Test User <test@example.com>,Bad User <spoof@example.org>",
     dkim(("example.com", Status.FAIL), ("example.org", Status.PASS)), Status.PERMERROR, (), "several addresses"),
    # sub.example.net has no record: the org domain's sp=reject applies.
    ("dmarc_sub", "Test User <test@sub.example.net>", dkim(("sub.example.net", Status.FAIL)), Status.FAIL,
     (Property("header", "from", "sub.example.net"), Property("policy", "dmarc", "reject")), "sp=reject"),
    # sub.example.biz does not exist: np=reject.
    ("dmarc_np1", "Test User <test@sub.example.biz>", dkim(("sub.example.biz", Status.FAIL)), Status.FAIL,
     (Property("header", "from", "sub.example.biz"), Property("policy", "dmarc", "reject")), "dis=reject"),
    # sub2.example.biz exists: sp=quarantine.
    ("dmarc_np2", "Test User <test@sub2.example.biz>", dkim(("sub2.example.biz", Status.FAIL)), Status.FAIL,
     (Property("header", "from", "sub2.example.biz"), Property("policy", "dmarc", "quarantine")),
     "dis=quarantine"),
    # A record without p= (and no rua=) asks for no DMARC processing; the From domain's case does not matter.
    ("dmarc_no_p", "Test User <test@nop.eXample.org>", dkim(("nop.example.org", Status.FAIL)), Status.NONE,
     (Property("header", "from", "nop.example.org"),), "no valid p="),
    ("dmarc_comma", '"Test, User" <test@example.com>', PASS_EXAMPLE_COM, Status.PASS,
     (Property("header", "from", "example.com"), Property("policy", "dmarc", "none")), "dis=none"),
]


@pytest.mark.parametrize("name, from_, dkim_result, status, properties, comment", SCENARIOS,
                         ids=[s[0] for s in SCENARIOS])
def test_authheaders_scenario(name, from_, dkim_result, status, properties, comment):
    msg = Message(headers=(Header(b"From", b" " + from_.encode()), Header(b"To", b" somebody@example.com")))
    result = check_dmarc(msg, None, dkim_result, FakeDns(ZONE), DmarcSection())
    (entry,) = result.ar_entries()
    assert (entry.method, entry.result, entry.properties) == ("dmarc", status.value, properties)
    assert comment in entry.comment
