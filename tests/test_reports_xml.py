"""RFC 9990 report XML: every report validates against the schema, whatever the senders put in their mail, and
says exactly what the store counted."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authmilter.reports import xmlreport
from authmilter.reports.model import DkimAuth, DomainDay, Override, PublishedPolicy, RowKey, SpfAuth, StoredRow

NS = {"d": xmlreport.NAMESPACE}
# ../shared beside the checkout (CI, /work/main) or beside the worktree directory (a helper's worktree).
CORPUS = next((base / "shared" / "corpora" / "dmarc-rfc9990" for base in Path(__file__).resolve().parents[2:4]
               if (base / "shared" / "corpora" / "dmarc-rfc9990").is_dir()), None)
REPORTER = xmlreport.Reporter("Example Receiver", "dmarc-reports@mx.example.net", "mx.example.net",
                              "https://mx.example.net/dmarc")


def row(source_ip="192.0.2.1", disposition="none", dkim="pass", spf="pass", reasons=(), header_from="example.com",
        envelope_from="example.com", envelope_to="", dkim_results=(DkimAuth("example.com", "sel", "pass"),),
        spf_results=(SpfAuth("example.com", "pass"),), overflow=False) -> RowKey:
    return RowKey(source_ip, disposition, dkim, spf, tuple(reasons), header_from, envelope_from, envelope_to,
                  tuple(dkim_results), tuple(spf_results), overflow)


def report(rows, policy=None, day="2026-03-01", report_id="r1a2b3") -> DomainDay:
    policy = policy or PublishedPolicy("example.com", "reject", "quarantine", "reject", "s", "r", "n", "treewalk")
    return DomainDay("example.com", day, policy, ("mailto:rua@example.com",), tuple(rows), report_id, "pending")


def parse(document: bytes) -> ET.Element:
    return ET.fromstring(document)


VARIED = [
    StoredRow(row(), 120),
    StoredRow(row(source_ip="2001:db8::25", disposition="pass"), 7),
    StoredRow(row(disposition="reject", dkim="fail", spf="fail", dkim_results=(), envelope_from="spam.example",
                  spf_results=(SpfAuth("spam.example", "softfail"),)), 3),
    StoredRow(row(disposition="none", dkim="fail", spf="fail", envelope_from="",
                  reasons=(Override("local_policy", "monitor mode ([policy] enforce = no)"),),
                  spf_results=(SpfAuth("helo.example.org", "none"),), dkim_results=()), 2),
    StoredRow(row(disposition="quarantine", reasons=(Override("policy_test_mode", "t=y: reject applied as "
                                                              "quarantine"),), dkim="fail"), 4),
    StoredRow(row(disposition="none", dkim="fail", spf="fail", reasons=(Override("trusted_forwarder"),),
                  envelope_to="example.net"), 5),
    StoredRow(row(dkim_results=(DkimAuth("example.com", "a", "pass"), DkimAuth("esp.example", "b", "fail"),
                                DkimAuth("x.example", "c", "temperror"), DkimAuth("y.example", "d", "policy"),
                                DkimAuth("z.example", "e", "permerror"), DkimAuth("n.example", "f", "neutral"),
                                DkimAuth("o.example", "g", "none"))), 1),
    StoredRow(row(spf_results=()), 9),
    StoredRow(row(source_ip="0.0.0.0", disposition="none", dkim="fail", spf="fail", dkim_results=(),
                  spf_results=(), envelope_from="",
                  reasons=(Override("other", "messages beyond the cap of 10 distinct rows"),), overflow=True), 11),
]


def test_varied_rows_validate_and_count_exactly():
    document = xmlreport.build(report(VARIED), REPORTER)
    assert xmlreport.SchemaCheck.problems(document) == []
    root = parse(document)
    assert root.tag == f"{{{xmlreport.NAMESPACE}}}feedback"
    records = root.findall("d:record", NS)
    assert len(records) == len(VARIED)
    counts = sorted(int(r.find("d:row/d:count", NS).text) for r in records)
    assert counts == sorted(stored.count for stored in VARIED)
    assert sum(counts) == xmlreport.messages(report(VARIED)) == 162
    # Largest count first: the reader sees the bulk of the mail at the top.
    assert [int(r.find("d:row/d:count", NS).text) for r in records][:2] == [120, 11]
    ipv6 = next(r for r in records if r.find("d:row/d:source_ip", NS).text == "2001:db8::25")
    assert ipv6.find("d:row/d:policy_evaluated/d:disposition", NS).text == "pass"
    null_sender = next(r for r in records if r.find("d:row/d:count", NS).text == "2")
    assert null_sender.find("d:identifiers/d:envelope_from", NS).text in (None, "")
    assert null_sender.find("d:auth_results/d:spf/d:domain", NS).text == "helo.example.org"
    assert null_sender.find("d:auth_results/d:spf/d:scope", NS).text == "mfrom"
    assert null_sender.find("d:row/d:policy_evaluated/d:reason/d:type", NS).text == "local_policy"
    to = next(r for r in records if r.find("d:row/d:count", NS).text == "5")
    assert to.find("d:identifiers/d:envelope_to", NS).text == "example.net"
    assert to.find("d:row/d:policy_evaluated/d:reason/d:comment", NS) is None
    assert all(r.find("d:identifiers/d:envelope_to", NS) is None for r in records if r is not to)
    seven = next(r for r in records if r.find("d:row/d:count", NS).text == "1")
    assert [(d.find("d:domain", NS).text, d.find("d:selector", NS).text, d.find("d:result", NS).text)
            for d in seven.findall("d:auth_results/d:dkim", NS)][:2] == [("example.com", "a", "pass"),
                                                                          ("esp.example", "b", "fail")]
    # The summary record of the row cap is explained in report_metadata/error.
    assert "11 message(s)" in root.find("d:report_metadata/d:error", NS).text


def test_metadata_policy_and_period():
    document = xmlreport.build(report([StoredRow(row(), 1)], day="2026-03-01"), REPORTER)
    root = parse(document)
    meta = root.find("d:report_metadata", NS)
    assert root.find("d:version", NS).text == "1.0"
    assert meta.find("d:org_name", NS).text == "Example Receiver"
    assert meta.find("d:email", NS).text == "dmarc-reports@mx.example.net"
    assert meta.find("d:extra_contact_info", NS).text == "https://mx.example.net/dmarc"
    assert meta.find("d:report_id", NS).text == "r1a2b3"
    assert meta.find("d:generator", NS).text.startswith("authmilter ")
    assert meta.find("d:error", NS) is None
    # 2026-03-01T00:00:00Z .. 23:59:59Z
    assert (int(meta.find("d:date_range/d:begin", NS).text), int(meta.find("d:date_range/d:end", NS).text)) == \
        (1772323200, 1772323200 + 86399)
    published = root.find("d:policy_published", NS)
    assert [child.tag.split("}")[1] for child in published] == \
        ["domain", "discovery_method", "p", "sp", "np", "adkim", "aspf", "testing"]
    assert published.find("d:adkim", NS).text == "s"
    # No RFC 7489 leftovers anywhere.
    for gone in ("pct", "psd", "t", "fo"):
        assert root.find(f".//d:{gone}", NS) is None


def test_no_sp_np_when_not_published():
    policy = PublishedPolicy("example.com", "none", testing="y", discovery_method="psl")
    root = parse(xmlreport.build(report([StoredRow(row(), 1)], policy=policy), REPORTER))
    published = root.find("d:policy_published", NS)
    assert published.find("d:sp", NS) is None and published.find("d:np", NS) is None
    assert published.find("d:testing", NS).text == "y"
    assert published.find("d:discovery_method", NS).text == "psl"


HOSTILE = "sel\x00\x01\x08\x0b\x0c\x1b\x7f]]>\ud800\ufffe<!--&amp;--><![CDATA[x]]>\u200b"


def test_hostile_selector_and_domain_still_validate():
    hostile = row(dkim_results=(DkimAuth(f"ex{HOSTILE}ample.com", HOSTILE, "fail"),),
                  reasons=(Override("other", HOSTILE),), header_from=f"a]]>{HOSTILE}", envelope_from=HOSTILE,
                  spf_results=(SpfAuth(HOSTILE, "permerror"),))
    document = xmlreport.build(report([StoredRow(hostile, 2), StoredRow(row(), 1)]), REPORTER)
    assert xmlreport.SchemaCheck.problems(document) == []
    root = parse(document)
    selector = root.find(".//d:auth_results/d:dkim/d:selector", NS).text
    # Markup characters survive as text; characters XML 1.0 cannot carry are gone.
    assert selector == "sel\x7f]]><!--&amp;--><![CDATA[x]]>\u200b"
    assert b"]]>" not in document  # escaped as ]]&gt;
    assert root.find(".//d:auth_results/d:dkim/d:domain", NS).text.startswith("exsel")


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=80), ip=st.text(max_size=45), count=st.integers(min_value=1, max_value=10**9))
def test_any_text_in_any_field_validates(text, ip, count):
    wild = row(source_ip=ip, header_from=text, envelope_from=text, envelope_to=text,
               dkim_results=(DkimAuth(text, text, "pass"),), spf_results=(SpfAuth(text, "fail"),),
               reasons=(Override("mailing_list", text),))
    policy = PublishedPolicy(text, "quarantine")
    document = xmlreport.build(report([StoredRow(wild, count)], policy=policy), REPORTER)
    assert xmlreport.SchemaCheck.problems(document) == []
    assert int(parse(document).find(".//d:row/d:count", NS).text) == count


@pytest.mark.parametrize("field, value", [
    ("disposition", "discard"), ("dkim", "softfail"), ("spf", "neutral"),
])
def test_the_schema_check_refuses_what_rfc9990_does_not_allow(field, value):
    bad = row(**{field: value})
    problems = xmlreport.SchemaCheck.problems(xmlreport.build(report([StoredRow(bad, 1)]), REPORTER))
    assert problems and field in problems[0]


def test_the_schema_check_refuses_an_empty_report_and_broken_xml():
    assert xmlreport.SchemaCheck.problems(xmlreport.build(report([]), REPORTER))
    assert xmlreport.SchemaCheck.problems(b"<feedback>")[0].startswith("not well-formed XML")


@pytest.mark.skipif(CORPUS is None, reason="../shared/corpora/dmarc-rfc9990 not present")
def test_the_shipped_schema_is_the_rfc_schema_and_takes_the_rfc_sample():
    from importlib import resources

    shipped = resources.files("authmilter.reports").joinpath(xmlreport.SCHEMA_RESOURCE).read_text()
    without_note = shipped[:shipped.index("<!--")] + shipped[shipped.index("-->") + 4:]
    assert without_note == (CORPUS / "rfc9990-aggregate.xsd").read_text()
    assert xmlreport.SchemaCheck.problems((CORPUS / "rfc9990-sample.xml").read_bytes()) == []


def test_same_rows_in_any_order_give_the_same_document():
    forward = xmlreport.build(report(VARIED), REPORTER)
    backward = xmlreport.build(report(list(reversed(VARIED))), REPORTER)
    assert forward == backward
