"""A first line starting with "From " is an mbox line to Postfix, never a From header: Postfix renames it
X-Mailbox-Line:, so a forged `From : <a@victim>` above the real From leaves one From. `authmilter check` on the
same bytes must judge as the milter did behind Postfix, and say what it made of the line."""

from __future__ import annotations

import sys

import pytest

from testlab.zonedata import GOOD_HELO, GOOD_V4

from .headers import parse_ar

pytestmark = pytest.mark.e2e

MESSAGE = (b"From : <a@victim.example>\r\n"
           b"From: <user@example.org>\r\n"
           b"To: <user@example.net>\r\n"
           b"Subject: an mbox line on top\r\n"
           b"Date: Sun, 22 Nov 2026 12:00:00 +0000\r\n"
           b"Message-ID: <mbox-line-e2e@lab.test>\r\n"   # given, so the lab prepends nothing above the mbox line
           b"\r\n"
           b"Hello.\r\n")


def results(ar_value: str) -> list[tuple[str, str, dict[str, str]]]:
    return [(entry.method, entry.result, entry.properties) for entry in parse_ar(ar_value).entries]


def test_mbox_from_line_through_postfix_and_check_agree(lab):
    sent = lab.send(mail_from="user@example.org", source=GOOD_V4, helo=GOOD_HELO, data=MESSAGE)
    assert sent.reply("eom").code == 250, sent.stages
    delivered = lab.delivered(sent)
    assert delivered.get_all("From") == ["<user@example.org>"]
    assert delivered.get_all("X-Mailbox-Line") == ["From : <a@victim.example>"]
    [milter_ar] = delivered.get_all("Authentication-Results")

    check = lab.namespace.run(
        sys.executable, "-m", "authmilter", "check", "--config", str(lab.milters["default"].config),
        "--ip", GOOD_V4, "--helo", GOOD_HELO, "--mail-from", "user@example.org", "--rcpt", "user@example.net", "-",
        input=MESSAGE, check=False, timeout=60)
    stdout, stderr = check.stdout.decode(), check.stderr.decode()
    assert check.returncode == 0, stderr
    assert stdout.splitlines()[-1] == "action: accept"
    check_ar = stdout.split("Authentication-Results:", 1)[1].split("\nReceived-SPF:", 1)[0]
    assert results(check_ar) == results(milter_ar)
    assert ("authmilter check: the first line 'From : <a@victim.example>' was treated as an mbox 'From ' line, "
            "not as a header, as Postfix does (it renames it to X-Mailbox-Line:)") in stderr.splitlines()
    dmarc = parse_ar(milter_ar).only("dmarc")
    assert dmarc.properties["header.from"] == "example.org"   # the real From, the only one the milter saw
