"""The report timer and service: hardened like authmilter.service, running the fixed command on the default
config, with the store's directory writable."""

from __future__ import annotations

from pathlib import Path

from authmilter.config import DEFAULT_CONFIG_PATH, ReportsSection

ROOT = Path(__file__).resolve().parents[1]
# What the milter's unit has that a one-shot sender does not need (restarts, reload, the Postfix socket).
MILTER_ONLY = {"Type", "ExecStart", "ExecReload", "Restart", "RestartSec", "RestartPreventExitStatus",
               "TimeoutStopSec", "SupplementaryGroups", "ReadWritePaths", "UMask"}


def settings(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (ROOT / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_the_report_service_is_hardened_like_the_milter():
    milter = settings("authmilter.service")
    reports = settings("authmilter-reports.service")
    service_keys = {key for key in milter if key[0].isupper()} - MILTER_ONLY - {"Description", "Documentation",
                                                                                "After", "Wants", "Before",
                                                                                "WantedBy"}
    for key in sorted(service_keys):
        assert reports.get(key) == milter[key], key
    assert reports["NoNewPrivileges"] == ["yes"] and reports["ProtectSystem"] == ["strict"]


def test_the_report_service_runs_reports_send_and_may_write_the_store():
    reports = settings("authmilter-reports.service")
    assert reports["Type"] == ["oneshot"]
    assert reports["ExecStart"] == [f"/usr/local/bin/authmilter reports send --config {DEFAULT_CONFIG_PATH}"]
    assert reports["SuccessExitStatus"] == ["75"]  # "retried at the next run" is not a failed unit
    state = Path("/var/lib") / reports["StateDirectory"][0]
    assert Path(ReportsSection().database).parent == state
    assert Path(ReportsSection().journal).parent == state


def test_the_timer_runs_the_service_hourly_and_catches_up():
    timer = settings("authmilter-reports.timer")
    assert timer["OnCalendar"] == ["*-*-* *:17:00"]
    assert timer["Persistent"] == ["true"]
    assert timer["WantedBy"] == ["timers.target"]
    assert "Unit" not in timer  # the service of the same name
    assert (ROOT / "systemd" / "authmilter-reports.service").exists()
