"""DMARC aggregate reports end to end (issue 10): `authmilter reports send` inside the lab hands the report to the
real Postfix, which delivers it to the rua mailbox; the test reads it back from the Maildir, un-gzips it, validates
it against the RFC 9990 schema, checks its counts, and has `authmilter check` confirm that the report mail itself
passes DMARC aligned (RFC 9990 asks that of report mail). Zones: testlab/reportzones.py.

The second test starts from messages sent through Postfix and the milter (recorded by the reports observer), then
runs the sender under faketime one day later, so the day it recorded is over: the milter's DMARC verdicts, the
recorder, the store, the sender and Postfix, all real.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from authmilter.config import load_config
from authmilter.reports import xmlreport
from authmilter.reports.model import DkimAuth, Observation, PublishedPolicy, RowKey, SpfAuth
from authmilter.reports.store import open_store
from testlab import milterlab, postfixlab
from testlab.lab import Sent
from testlab.reportzones import (REJECT_ONLY_DOMAIN, REPORTER_ADDRESS, REPORTER_DOMAIN, REPORTS_SOURCE_V4,
                                 RUA_DOMAIN, RUA_MAILBOX)
from testlab.zonedata import GOOD_V4, MX_NAME, STRANGER_V4

pytestmark = pytest.mark.e2e

NS = {"d": xmlreport.NAMESPACE}


def reports_overrides(database: str, **extra: str) -> milterlab.Overrides:
    return {"reports": {"enabled": "yes", "database": database, "org_name": "Lab Receiver",
                        "from_address": REPORTER_ADDRESS, "smtp_host": "127.0.0.1",
                        "smtp_port": str(postfixlab.NO_MILTER_PORT), "grace_hours": "0",
                        "journal": database + ".journal", **extra}}


def sender_config(lab, name: str, database: str):
    directory = lab.directory / "reports"
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.ini"
    path.write_text(milterlab.config_text(directory / f"{name}.sock", reports_overrides(database)))
    return path


def run_sender(lab, config, *args: str, faketime: str = ""):
    command = [sys.executable, "-m", "authmilter", "reports", "send", "--config", str(config), *args]
    if faketime:
        command = [shutil.which("faketime") or "faketime", "-f", faketime, *command]
    return lab.namespace.run(*command, timeout=120, check=False)


def delivered_report(lab, report_id: str):
    """The report mail in the rua mailbox, found by its Message-ID (<report-id@receiver>)."""
    stand_in = Sent((), True, None, f"{report_id}@{REPORTER_DOMAIN}", "default")
    return lab.delivered(stand_in)


def read_report(delivered) -> tuple[email.message.EmailMessage, ET.Element, bytes]:
    message = email.message_from_bytes(delivered.raw, policy=email.policy.default)
    attachment = next(message.iter_attachments())
    document = gzip.decompress(attachment.get_content())
    return message, ET.fromstring(document), document


def record_counts(root) -> Counter:
    counts = Counter()
    for record in root.findall("d:record", NS):
        counts[(record.find("d:row/d:source_ip", NS).text,
                record.find("d:row/d:policy_evaluated/d:dkim", NS).text,
                record.find("d:row/d:policy_evaluated/d:spf", NS).text)] += int(record.find("d:row/d:count", NS).text)
    return counts


def check_aligned_pass(lab, config, delivered) -> str:
    """`authmilter check` on the delivered report, as a receiver judging mail from `reports send` would."""
    path = lab.directory / "reports" / f"{delivered.path.name}.eml"
    path.write_bytes(delivered.raw)
    done = lab.namespace.run(sys.executable, "-m", "authmilter", "check", "--config", str(config),
                             "--ip", REPORTS_SOURCE_V4, "--helo", MX_NAME, "--mail-from", REPORTER_ADDRESS,
                             "--rcpt", RUA_MAILBOX, str(path), timeout=60, check=False)
    return done.stdout.decode(errors="replace")


def yesterday() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))


def test_report_mail_delivered_to_the_rua_mailbox(lab):
    database = str(lab.directory / "reports" / "send.sqlite")
    config = sender_config(lab, "send", database)
    cfg = load_config(config)
    day = yesterday()
    policy = PublishedPolicy(RUA_DOMAIN, "none")
    passing = RowKey(GOOD_V4, "none", "fail", "pass", (), RUA_DOMAIN, RUA_DOMAIN, "",
                     (DkimAuth(RUA_DOMAIN, "s1", "fail"),), (SpfAuth(RUA_DOMAIN, "pass"),))
    failing = RowKey(STRANGER_V4, "none", "fail", "fail", (), RUA_DOMAIN, RUA_DOMAIN, "", (),
                     (SpfAuth(RUA_DOMAIN, "fail"),))
    store = open_store(cfg.reports)
    try:
        store.add_counts("mx1", {Observation(day, RUA_DOMAIN, policy, (f"mailto:{RUA_MAILBOX}!10m",), passing, True,
                                             False): 7,
                                 Observation(day, RUA_DOMAIN, policy, (f"mailto:{RUA_MAILBOX}",), failing, True,
                                             False): 2}, time.time())
    finally:
        store.close()

    done = run_sender(lab, config)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout == b"reports send: 1 sent\n"
    # The From domain's SPF lets this host pass: no warning.
    assert b"SPF" not in done.stderr

    store = open_store(cfg.reports)
    try:
        (summary,) = store.summary(day)
    finally:
        store.close()
    assert summary.status == "sent"
    delivered = delivered_report(lab, summary.report_id)
    message, root, document = read_report(delivered)
    assert xmlreport.SchemaCheck.problems(document) == []
    assert [address.addr_spec for address in message["To"].addresses] == [RUA_MAILBOX]
    assert root.find("d:report_metadata/d:report_id", NS).text == summary.report_id
    assert root.find("d:policy_published/d:domain", NS).text == RUA_DOMAIN
    assert record_counts(root) == Counter({(GOOD_V4, "fail", "pass"): 7, (STRANGER_V4, "fail", "fail"): 2})
    # RFC 9990: report mail must pass DMARC aligned where it arrives.
    verdict = check_aligned_pass(lab, config, delivered)
    assert "dmarc=pass" in verdict and f"header.from={REPORTER_DOMAIN}" in verdict, verdict


def test_messages_in_report_out(lab):
    database = str(lab.directory / "reports" / "milter.sqlite")
    (lab.directory / "reports").mkdir(exist_ok=True)
    overrides = reports_overrides(database, flush_seconds="0.5")
    variant = lab.variant("reports", overrides)
    for _ in range(3):  # SPF pass, aligned: DMARC pass
        sent = lab.send(mail_from=f"user@{RUA_DOMAIN}", source=GOOD_V4, variant=variant)
        assert sent.accepted, sent.stages
    for _ in range(2):  # SPF fail: DMARC fail under p=none, accepted
        sent = lab.send(mail_from=f"user@{RUA_DOMAIN}", source=STRANGER_V4, variant=variant)
        assert sent.accepted, sent.stages
    for _ in range(2):  # DMARC fail under p=reject: rejected, and rejects alone never trigger a report
        sent = lab.send(mail_from=f"user@{REJECT_ONLY_DOMAIN}", source=STRANGER_V4, variant=variant)
        assert sent.reply("eom").code == 550, sent.stages

    cfg = load_config(lab.milters[variant].config)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    _wait_for_counts(cfg, today, {RUA_DOMAIN: 5, REJECT_ONLY_DOMAIN: 2})

    # One day later (for the sender only) today's reports are due.
    config = lab.milters[variant].config
    done = run_sender(lab, config, "--day", today, faketime="+1d")
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout == b"reports send: 1 sent\n"
    store = open_store(cfg.reports)
    try:
        summaries = {s.policy_domain: s for s in store.summary(today)}
    finally:
        store.close()
    assert {domain: s.status for domain, s in summaries.items()} == {RUA_DOMAIN: "sent",
                                                                      REJECT_ONLY_DOMAIN: "pending"}
    message, root, document = read_report(delivered_report(lab, summaries[RUA_DOMAIN].report_id))
    assert xmlreport.SchemaCheck.problems(document) == []
    assert record_counts(root) == Counter({(GOOD_V4, "fail", "pass"): 3, (STRANGER_V4, "fail", "fail"): 2})
    assert root.find("d:policy_published/d:p", NS).text == "none"


def _wait_for_counts(cfg, day: str, expected: dict[str, int], timeout: float = 20.0):
    end = time.monotonic() + timeout
    while True:
        store = open_store(cfg.reports)
        try:
            summaries = store.summary(day)
        finally:
            store.close()
        found = {s.policy_domain: s.messages for s in summaries}
        if found == expected or time.monotonic() > end:
            assert found == expected
            return summaries
        time.sleep(0.2)
