"""The fake resolver behaves like the real one's contract, so unit tests built on it mean something."""

from authmilter.resolver import Outcome
from authmilter.results import Dnssec
from testlab.fakedns import FakeDns

DNS = FakeDns(
    {
        "example.org": {"TXT": [("v=spf1 ", "-all")], "MX": [(0, ".")]},
        "alias.example.org": {"CNAME": "example.org"},
        "loop1.example": {"CNAME": "loop2.example"},
        "loop2.example": {"CNAME": "loop1.example"},
    },
    timeout={"slow.example"},
    servfail={("example.org", "A")},
    secure={"example.org"},
)


def test_txt_strings_are_concatenated_and_secure_names_say_so():
    answer = DNS.query("Example.ORG.", "txt")
    assert answer.outcome is Outcome.ANSWER
    assert answer.records == (b"v=spf1 -all",)
    assert answer.dnssec is Dnssec.SECURE


def test_outcomes_cover_nodata_nxdomain_timeout_servfail_loop():
    assert DNS.query("example.org", "AAAA").outcome is Outcome.NODATA
    assert DNS.query("nope.example", "A").outcome is Outcome.NXDOMAIN
    assert DNS.query("slow.example", "A").outcome is Outcome.TIMEOUT
    assert DNS.query("example.org", "A").outcome is Outcome.SERVFAIL
    assert DNS.query("loop1.example", "A").outcome is Outcome.ERROR
    assert DNS.query("a..b", "A").outcome is Outcome.INVALID_NAME


def test_cname_is_followed_and_null_mx_is_empty_exchange():
    assert DNS.query("alias.example.org", "MX").records == ((0, ""),)
