"""contrib/grafana/authmilter.json asks only for what we export: every PromQL expression in it names authmilter_*
series that a scrape of the MetricsObserver shows (with their _total, _bucket, _count, _sum suffixes), and every
label it matches or groups by is one those series carry (or one Prometheus adds: instance, job)."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from authmilter.checks.dkim.check import DkimResult
from authmilter.checks.dmarc.check import DmarcResult
from authmilter.checks.iprev import IprevResult
from authmilter.checks.spf import SpfIdentityResult, SpfResult
from authmilter.context import Connection, Envelope, MessageContext
from authmilter.metrics import MetricsObserver
from authmilter.observers import Judged
from authmilter.pipeline import results_of
from authmilter.resolver import Outcome
from authmilter.renderer import collect_entries
from authmilter.results import Action, Status, Verdict

DASHBOARD = Path(__file__).resolve().parent.parent / "contrib" / "grafana" / "authmilter.json"
TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped series
PROMQL_WORDS = {"sum", "rate", "increase", "histogram_quantile", "by", "without", "label_values", "avg", "max",
                "min", "count", "irate", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"(authmilter_\w+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def exported() -> dict[str, set[str]]:
    """Sample name -> its label names, from a scrape of an observer fed once through every path."""
    observer = MetricsObserver()
    ctx = MessageContext(Connection(ipaddress.ip_address("192.0.2.1")), Envelope("a@example.org", ("b@example.net",)))
    spf = SpfIdentityResult("mailfrom", "a@example.org", "example.org", Status.PASS)
    results = results_of(iprev=IprevResult(Status.PASS), spf=SpfResult(spf, spf), dkim=DkimResult(),
                      dmarc=DmarcResult(Status.PASS), dns_deadline_expired=True)
    observer.observe(Judged(ctx, results, Verdict(Action.ACCEPT, reason="monitor:dmarc_reject"), 2.0,
                            ar_entries=collect_entries(results)))
    observer.observe(Judged(ctx, results_of(), Verdict(Action.REJECT, reason="srs_expired"), 0.1, "x@example.net"))
    observer.dns_query("TXT", Outcome.ANSWER, 0.002)
    observer.dns_query("TXT", Outcome.ANSWER, None)
    observer.connection_opened()
    observer.milter_error("eom")
    observer.reloaded(True)
    observer.watch_observer_failures(lambda: {"reports": 1})
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(observer.registry).decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def expressions(node) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and the template variables' queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                found.append(value)
            elif key == "query" and isinstance(value, str) and node.get("type") == "query":
                found.append(value)
            else:
                found.extend(expressions(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(expressions(item))
    return found


def test_the_scrape_has_every_family_the_dashboard_could_need():
    names = exported()
    for expected in ("authmilter_messages_total", "authmilter_results_total", "authmilter_dns_queries_total",
                     "authmilter_dns_query_duration_seconds_bucket", "authmilter_eom_duration_seconds_bucket",
                     "authmilter_errors_total", "authmilter_connections_open", "authmilter_config_reloads_total",
                     "authmilter_build_info", "authmilter_observer_failures_total",
                     "authmilter_report_queue_depth", "authmilter_report_rows_written_total",
                     "authmilter_report_rows_dropped_total"):
        assert expected in names
    assert names["authmilter_messages_total"] == {"action", "reason"}


def test_every_dashboard_expression_names_only_metrics_and_labels_we_export():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    names = exported()
    queries = expressions(dashboard)
    assert len(queries) >= 20
    used: set[str] = set()
    for query in queries:
        bare = _VARIABLE.sub("1m", _STRING.sub('""', query))
        assert bare.count("(") == bare.count(")") and bare.count("{") == bare.count("}"), query
        metrics = {word for word in _IDENTIFIER.findall(bare) if word.startswith("authmilter_")}
        assert metrics, f"names no authmilter metric: {query}"
        unknown = metrics - names.keys()
        assert not unknown, f"{query}: not exported: {sorted(unknown)}"
        used |= metrics
        labels = set().union(*(names[m] for m in metrics)) | TARGET_LABELS
        for metric, matchers in _SELECTOR.findall(bare):
            for label in _MATCHER.findall(matchers):
                assert label in names[metric] | TARGET_LABELS, f"{query}: {metric} has no label {label}"
        for grouping in _GROUPING.findall(bare):
            for label in filter(None, (item.strip() for item in grouping.split(","))):
                assert label in labels, f"{query}: no label {label} to group by"
        others = {word for word in _IDENTIFIER.findall(bare) if not word.startswith("authmilter_")}
        assert others <= PROMQL_WORDS | labels | {"m"}, f"{query}: {sorted(others - PROMQL_WORDS - labels)}"
    # Nothing we export is left off the dashboard (created timestamps and buckets aside).
    wanted = {name for name in names if not name.endswith(("_created", "_bucket", "_count", "_sum"))}
    histograms = {name[:-len("_bucket")] for name in names if name.endswith("_bucket")}
    missing = {name for name in wanted if name not in used} - histograms
    missing -= {h for h in histograms if f"{h}_bucket" in used}
    assert not missing, f"exported but not on the dashboard: {sorted(missing)}"
