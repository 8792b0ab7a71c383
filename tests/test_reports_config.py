"""[reports] recording keys: defaults, and bad values refused as "FILE: [reports] key: reason"."""

from __future__ import annotations

import socket

import pytest

from authmilter.config import Config, parse_config_text
from authmilter.errors import ConfigError

REQUIRED = "org_name = Example\nfrom_address = dmarc@example.net\n"


def test_defaults():
    section = Config().reports
    assert not section.enabled
    assert section.database == "/var/lib/authmilter/reports.sqlite"
    assert section.journal == "/var/lib/authmilter/reports.journal"
    assert section.reporter == socket.gethostname() and not section.envelope_to


def test_a_postgresql_url_and_a_fleet_reporter():
    cfg = parse_config_text("[reports]\nenabled = yes\n" + REQUIRED + "database = postgresql://dmarc@db.example/r\n"
                            "reporter_id = mx2.example.net\nreport_mailboxes = DMARC@example.net, @reports.example\n",
                            "F.ini")
    assert cfg.reports.database == "postgresql://dmarc@db.example/r" and cfg.reports.reporter == "mx2.example.net"
    assert cfg.reports.report_mailboxes == ("dmarc@example.net", "@reports.example")


@pytest.mark.parametrize("text, message", [
    ("database = reports.sqlite", "[reports] database: a SQLite database needs an absolute path"),
    ("database = mysql://x/y", "[reports] database: expected a file path or a postgresql:// URL, got mysql://"),
    ("journal = relative/journal", "[reports] journal: expected an absolute file path"),
    ("reporter_id = mx 1", "[reports] reporter_id: expected letters, digits"),
    ("from_address = not an address", "[reports] from_address: expected an address"),
    ("flush_seconds = 0.1", "[reports] flush_seconds: must be at least 0.5"),
    ("queue_size = 10", "[reports] queue_size: must be at least 100"),
    ("max_rows_per_domain_day = 1", "[reports] max_rows_per_domain_day: must be at least 10"),
    ("report_mailboxes = dmarc", "[reports] report_mailboxes: expected local@domain or @domain"),
    ("envelope_to = sometimes", "[reports] envelope_to: expected yes or no"),
])
def test_bad_values(text, message):
    with pytest.raises(ConfigError) as raised:
        parse_config_text(f"[reports]\n{text}\n", "F.ini")
    assert str(raised.value).startswith("F.ini: " + message)


@pytest.mark.parametrize("missing", ["org_name", "from_address"])
def test_enabled_needs_who_we_are(missing):
    text = "[reports]\nenabled = yes\n" + "".join(line + "\n" for line in REQUIRED.splitlines()
                                                  if not line.startswith(missing))
    with pytest.raises(ConfigError, match=rf"^F.ini: \[reports\] {missing}: required when enabled = yes$"):
        parse_config_text(text, "F.ini")


def test_the_systemd_unit_gives_the_default_store_and_journal_a_writable_state_directory():
    from tests.test_config import unit_settings

    unit = unit_settings()
    assert unit["StateDirectory"] == ["authmilter"]  # /var/lib/authmilter, writable under ProtectSystem=strict
    section = Config().reports
    assert section.database.startswith("/var/lib/authmilter/") and section.journal.startswith("/var/lib/authmilter/")
    # close() must finish within the unit's stop timeout, or systemd kills the writer mid-flush.
    from authmilter.reports.writer import CLOSE_SECONDS
    assert CLOSE_SECONDS < int(unit["TimeoutStopSec"][0].rstrip("s"))
