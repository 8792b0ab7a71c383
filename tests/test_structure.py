"""The seams of issue 9, as behaviour: what the table declares, what the observers see, what the renderer leaves
out, and which modules stay free of the checks."""

from __future__ import annotations

import ipaddress
import itertools
import logging
import subprocess
import sys
import time

import authres
import pytest

from authmilter import judge, pipeline
from authmilter.checks.dkim.check import DkimResult, DkimSignatureResult
from authmilter.config import Config, SrsSection, TrustSection
from authmilter.context import Connection, Envelope, Header, Message, MessageContext
from authmilter.observers import Judged, ObserverFailures, notify
from authmilter.pipeline import ORDERED_CHECKS, Stage, body_plan, results_of
from authmilter.renderer import render
from authmilter.results import Action, Status
from authmilter.runtime import Runtime
from testlab.fakedns import FakeDns

NOW = time.time()


class Recorder:
    def __init__(self, name="recorder", fail=False):
        self.name, self.fail, self.seen = name, fail, []

    def observe(self, judged: Judged) -> None:
        self.seen.append(judged)
        if self.fail:
            raise RuntimeError("observer bug")

    def close(self) -> None:
        pass


class _FixedResolver:
    def __init__(self, dns):
        self.dns = dns

    def for_message(self):
        return self.dns


def runtime(cfg: Config, *observers) -> Runtime:
    return Runtime(cfg, "mx.example.net", _FixedResolver(FakeDns({})), tuple(observers), ObserverFailures())


def context(ip="192.0.2.1", message=Message((Header(b"From", b" a@example.org"),))) -> MessageContext:
    return MessageContext(Connection(ipaddress.ip_address(ip), helo="mail.example.org"),
                          Envelope("a@example.org", ("bob@example.net",), "Q1"), message)


# ---------------------------------------------------------------- the table

def test_every_step_can_start_its_lookups_no_later_than_its_result_is_due():
    cfg = Config()
    conn = context().connection
    for spec in ORDERED_CHECKS:
        assert spec.stage_for(conn, cfg) <= spec.due_stage, spec.name
    stages = {spec.name: spec.stage_for(conn, cfg) for spec in ORDERED_CHECKS}
    assert (stages["iprev"], stages["spf"], stages["dkim"], stages["dmarc"]) == \
        (Stage.CONNECT, Stage.MAIL, Stage.EOH, Stage.EOH)


def test_a_stage_may_depend_on_the_client():
    relay = ipaddress.ip_network("192.0.2.0/24")
    spec = pipeline.CheckSpec("spf", (), lambda i: None, lookup_stage=lambda conn, cfg: (
        Stage.EOH if conn.client_ip in relay else Stage.MAIL))
    assert spec.stage_for(context("192.0.2.9").connection, Config()) is Stage.EOH
    assert spec.stage_for(context("198.51.100.9").connection, Config()) is Stage.MAIL


def test_body_plan_comes_from_the_table():
    signed = Message((Header(b"From", b" a@example.org"),
                      Header(b"DKIM-Signature", b" v=1; a=rsa-sha256; c=relaxed/simple; d=example.org; s=s; "
                                                b"h=from; bh=AAAA; b=AAAA")))
    assert {str(key) for key in body_plan(context().connection, signed, Config())}
    # Nothing reads the body of mail that is not checked, nor of a message without signatures.
    assert body_plan(context("127.0.0.1").connection, signed, Config()) == frozenset()
    assert body_plan(context().connection, context().message, Config()) == frozenset()


# ---------------------------------------------------------------- observers

def test_observers_hear_each_verdict_once_and_a_failing_one_changes_nothing(caplog):
    cfg = Config(trust=TrustSection(networks=()))
    first, broken, last = Recorder("first"), Recorder("broken", fail=True), Recorder("last")
    rt = runtime(cfg, first, broken, last)
    with caplog.at_level(logging.ERROR, logger="authmilter"):
        judgement = judge.judge_message(context(), rt, now=NOW)
    assert [len(first.seen), len(broken.seen), len(last.seen)] == [1, 1, 1]
    assert last.seen[0].verdict == judgement.verdict and last.seen[0].refused_rcpt is None
    assert rt.observer_failures.counts == {"broken": 1}
    assert "observer broken failed; the reply is unchanged" in caplog.text
    alone = judge.judge_message(context(), runtime(cfg), now=NOW)
    assert (alone.verdict, alone.headers) == (judgement.verdict, judgement.headers)


def test_observers_hear_a_refused_recipient_and_not_an_accepted_one():
    cfg = Config(srs=SrsSection(secrets=("secret",)))
    seen = Recorder()
    rt = runtime(cfg, seen)
    assert judge.judge_recipient(context(), "bob@example.net", rt, now=NOW).action is Action.ACCEPT
    verdict = judge.judge_recipient(context(), "SRS0=AAAA=ZZ=example.org=a@example.net", rt, now=NOW)
    assert verdict.action is Action.REJECT
    assert [j.refused_rcpt for j in seen.seen] == ["SRS0=AAAA=ZZ=example.org=a@example.net"]


def test_notify_without_a_failure_counter_still_runs_every_observer():
    first, broken, last = Recorder(), Recorder(fail=True), Recorder()
    notify((first, broken, last), Judged(context(), results_of(), judge.policy.ACCEPT, 0.0))
    assert len(last.seen) == 1


# ---------------------------------------------------------------- empty property values

@pytest.mark.parametrize("domain,selector,identity", list(itertools.product(
    ["", "\x01\x02", "example.org", "ex ample.org"], ["", "\r\n", "sel", "s e l"], ["", "@", "\x00", "@example.org",
                                                                                    "a b@example.org"])))
def test_every_mix_of_empty_quoted_and_plain_values_parses(domain, selector, identity):
    signature = DkimSignatureResult(Status.PASS, domain=domain, selector=selector, identity=identity,
                                    algorithm="rsa-sha256", b_prefix="AbCdEfGh")
    value = render("mx.example.net", results_of(dkim=DkimResult((signature,))))
    # As a consumer reads it: authres's own parser, which stopped at a second `""` and lost the whole header.
    header = authres.AuthenticationResultsHeader.parse("Authentication-Results:" + value.replace("\n\t", " "))
    (result,) = header.results
    names = {prop.type + "." + prop.name: prop.value for prop in result.properties}
    assert all(value not in ("", "@") for value in names.values()), names
    unfolded = value.replace("\n\t", " ")
    for name, raw in {"header.d": domain, "header.s": selector, "header.i": identity}.items():
        if raw.strip("\x00\x01\x02\r\n") not in ("", "@"):
            # Nothing meaningful is lost: a value authres could not read as a property is in the comment.
            assert name in names or f"{name} {raw.strip()}" in unfolded, (name, names, value)


# ---------------------------------------------------------------- what imports what

def test_policy_renderer_log_and_context_import_no_check():
    code = ("import sys\n"
            "import authmilter.context, authmilter.checkresults, authmilter.policy, authmilter.renderer, "
            "authmilter.logline, authmilter.observers\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('authmilter.checks'))\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
