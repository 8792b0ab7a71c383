"""Observations and configs for the `reports send` tests (the recording side has its own tests)."""

from __future__ import annotations

import calendar
import dataclasses
import time

from authmilter.config import Config, DnsSection, ReportsSection
from authmilter.reports.model import DkimAuth, Observation, Override, PublishedPolicy, RowKey, SpfAuth

DAY = "2026-03-01"
DAY_BEGIN = calendar.timegm(time.strptime(DAY, "%Y-%m-%d"))
DAY_END = DAY_BEGIN + 86400
AFTER_GRACE = DAY_END + 2 * 3600  # 02:00 UTC the next day: past the default hour of grace


def row(ip="192.0.2.1", disposition="none", dkim="pass", spf="pass", domain="example.com", selector="sel",
        dkim_result="pass", reasons=(), envelope_from=None) -> RowKey:
    return RowKey(ip, disposition, dkim, spf, tuple(reasons), domain,
                  domain if envelope_from is None else envelope_from, "",
                  (DkimAuth(domain, selector, dkim_result),), (SpfAuth(domain, "pass" if spf == "pass" else "fail"),))


def observation(domain="example.com", rua=None, day=DAY, triggers=True, to_report_mailbox=False,
                p="reject", **row_args) -> Observation:
    policy = PublishedPolicy(domain, p)
    rua = (f"mailto:rua@{domain}",) if rua is None else tuple(rua)
    return Observation(day, domain, policy, rua, row(domain=domain, **row_args), triggers, to_report_mailbox)


def passing(domain="example.com", **kwargs) -> Observation:
    return observation(domain, **kwargs)


def rejected(domain="example.com", **kwargs) -> Observation:
    return observation(domain, triggers=False, disposition="reject", dkim="fail", spf="fail", dkim_result="fail",
                       **kwargs)


def accepted_fail(domain="example.com", **kwargs) -> Observation:
    return observation(domain, disposition="none", dkim="fail", spf="fail", dkim_result="fail",
                       reasons=(Override("local_policy", "monitor mode"),), **kwargs)


def config(database: str, *, nameserver, smtp_port: int = 25, **reports) -> Config:
    """A config whose DNS goes to `nameserver` only (a testlab DnsServer on loopback: never the system's)."""
    section = ReportsSection(enabled=True, database=database, org_name="Example Receiver",
                             from_address="dmarc-reports@mx.example.net", smtp_host="127.0.0.1",
                             smtp_port=smtp_port, smtp_timeout=10.0, **reports)
    dns = DnsSection(nameservers=(nameserver,), timeout=1.0)
    return dataclasses.replace(Config(), reports=section, dns=dns)
