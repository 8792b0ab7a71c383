"""Judged -> Observation: the one RFC 9990 §3.1 record tuple a message adds to its author domain's report.

Called on the milter thread right after the verdict, so it only reads the results already computed: no DNS, no
I/O, no clock of its own (the caller passes the time). Everything in a row came from the sender or from DNS the
sender controls: each text goes through `clean()`, which drops what XML 1.0 cannot carry and caps the length.

What is recorded: one row per judged message (not per recipient) whose author domain has a usable DMARC policy
record, whatever the DMARC result. Not recorded: mail from trusted networks and authenticated senders (nothing was
evaluated), recipients refused at RCPT, messages without a policy record, and tempfailed messages (they are not
delivered; the sender's retry is judged, and counted, again).

`source_ip` is the address SPF judged: behind one of [trust] relays, the client the relay's Received header
recorded, never the relay's own address. A message whose relay record could not be read is not recorded: its
source is unknown, and the relay's address would tell the domain owner that our gateway sends as them.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass

from authmilter.config import Config
from authmilter.context import unmapped
from authmilter.observers import Judged
from authmilter.policy import ARC_OVERRIDE
from authmilter.reports.model import DkimAuth, Observation, Override, PublishedPolicy, RowKey, SpfAuth
from authmilter.results import Action, Status

FIELD_MAX = 255         # a domain is at most 253 octets; selectors and local parts are shorter in real mail
COMMENT_MAX = 200
MAX_DKIM_RESULTS = 50   # [dkim] max_signatures is at most 50: every evaluated signature fits
MAX_RUA = 20            # URIs kept per policy (the sender caps what it uses with its own max_rua)

# XML 1.0 §2.2 Char, minus the C0 and C1 controls and DEL (allowed by XML but meaningless, or worse, in a name).
_NOT_XML_TEXT = re.compile("[^\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]+")

_FINAL = {Action.ACCEPT: "none", Action.QUARANTINE: "quarantine", Action.REJECT: "reject"}
_SEVERITY = {"none": 0, "quarantine": 1, "reject": 2}
_ENFORCING = ("quarantine", "reject")


def clean(text: str, limit: int = FIELD_MAX) -> str:
    """`text` with every character XML 1.0 cannot carry (or a control character) removed, cut to `limit`."""
    if not (text.isascii() and text.isprintable()):  # the common case costs two C-level scans, no regex
        text = _NOT_XML_TEXT.sub("", text)
    return text[:limit]


def _domain(text: str) -> str:
    return clean(text.strip().rstrip(".").lower())


# Pure functions of their argument, cached because they cost microseconds on every message: one day string per UTC
# day, and ipaddress's str() (slow) for the few thousand client addresses seen at any one time.
@functools.lru_cache(maxsize=4)
def _utc_day(day_number: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day_number * 86400))


@functools.lru_cache(maxsize=4096)
def _ip_text(ip) -> str:
    return str(unmapped(ip))


@dataclass(frozen=True, slots=True)
class RecordRules:
    """What recording reads from the config, taken once per config."""

    envelope_to: bool = False
    report_mailboxes: frozenset[str] = frozenset()
    report_rejects_only: bool = False
    discovery_method: str = "treewalk"

    @classmethod
    def from_config(cls, cfg: Config) -> RecordRules:
        return cls(cfg.reports.envelope_to, frozenset(cfg.reports.report_mailboxes), cfg.reports.report_rejects_only,
                   cfg.dmarc.org_domain.value)


def observe(judged: Judged, rules: RecordRules, now: float) -> Observation | None:
    """The observation `judged` adds to the reports, or None when it adds nothing (see the module doc)."""
    results, verdict = judged.results, judged.verdict
    dmarc = results.dmarc
    if judged.refused_rcpt is not None or results.skipped or dmarc is None or not dmarc.policy:
        return None
    final = _FINAL.get(verdict.action)
    if final is None:  # tempfail: not delivered, and the retry will be counted
        return None
    ctx = judged.ctx
    passed = dmarc.status is Status.PASS
    asked = dmarc.disposition if dmarc.status is Status.FAIL else "none"
    disposition = final
    if final == "none" and passed and dmarc.policy in _ENFORCING:
        disposition = "pass"  # RFC 9990 ActionDispositionType: no action, passing DMARC under an enforcing policy
    envelope = ctx.envelope
    mail_from_domain = envelope.mail_from.rpartition("@")[2] if "@" in envelope.mail_from else ""
    envelope_to = ""
    if rules.envelope_to and envelope.rcpts:
        envelope_to = _domain(envelope.rcpts[0].rpartition("@")[2])  # one row per message: its first recipient
    judged_client = results.judged_connection(ctx.connection)
    if judged_client is None:
        return None   # a relay of ours whose Received header could not be read: the source is unknown
    ip = judged_client.client_ip   # behind a relay of ours, the client it recorded: the one SPF judged
    header_from = clean(dmarc.from_domain)  # already lower-case A-labels (checks/dmarc), but from the sender
    row = RowKey(
        source_ip=_ip_text(ip) if ip is not None else "",
        disposition=disposition,
        dkim="pass" if dmarc.dkim_aligned else "fail",
        spf="pass" if dmarc.spf_aligned else "fail",
        reasons=_reasons(judged, asked, final),
        header_from=header_from,
        envelope_from=_domain(mail_from_domain),
        envelope_to=envelope_to,
        dkim_results=_dkim_results(results.dkim),
        spf_results=_spf_results(results.spf),
    )
    policy = PublishedPolicy(
        domain=clean(dmarc.record_domain),
        p=dmarc.p or dmarc.policy,
        sp=dmarc.sp,
        np=dmarc.np,
        adkim=dmarc.adkim or "r",
        aspf=dmarc.aspf or "r",
        testing="y" if dmarc.testing else "n",
        discovery_method=rules.discovery_method,
    )
    triggers = passed or final != "reject" or rules.report_rejects_only
    return Observation(
        day=_utc_day(int(now // 86400)),
        policy_domain=header_from,
        policy=policy,
        rua=tuple(clean(uri) for uri in dmarc.rua[:MAX_RUA]),
        row=row,
        triggers_report=triggers,
        to_report_mailbox=_to_report_mailbox(envelope.rcpts, rules.report_mailboxes),
    )


def _reasons(judged: Judged, asked: str, final: str) -> tuple[Override, ...]:
    """RFC 9990 PolicyOverrideReason: why the disposition is not what the published policy asked for."""
    verdict, dmarc = judged.verdict, judged.results.dmarc
    assert dmarc is not None
    reason = verdict.reason
    exemption = ""
    for prefix in ("monitor", "postmaster"):  # policy.EXEMPTIONS keep the would-be reason after "prefix:"
        if reason.startswith(prefix + ":"):
            exemption, reason = prefix, reason[len(prefix) + 1:]
    forwarded = verdict.overridden == "trusted_forwarder" or reason.startswith("trusted_forwarder:")
    arc = judged.results.get("arc")
    # policy.trusted_arc_sealer: RFC 8617 §7.2.2's local_policy reason with the arc=pass as[N].d= comment.
    sealed = reason.startswith(f"{ARC_OVERRIDE}:") and arc is not None
    reasons = []
    if forwarded:
        reasons.append(Override("trusted_forwarder", clean(judged.results.forwarder, COMMENT_MAX)))
    if sealed:
        reasons.append(Override("local_policy", clean(arc.override_comment(), COMMENT_MAX)))
    if dmarc.testing and dmarc.status is Status.FAIL and dmarc.policy in _ENFORCING:
        # t=y (or pct=0): the requested disposition was lowered one step before anything local applied.
        reasons.append(Override("policy_test_mode", f"t=y: {dmarc.policy} applied as {dmarc.disposition}"))
    if final != asked:
        comment = ""
        if exemption == "monitor":
            comment = f"monitor mode (would have been {reason})"
        elif exemption == "postmaster":
            comment = f"postmaster or abuse recipients only (would have been {reason})"
        elif forwarded or sealed:
            pass  # the override above says why
        elif _SEVERITY[final] > _SEVERITY[asked]:
            comment = f"{final} by local rule {reason}"  # SPF, iprev, null MX, header limit...
        else:
            comment = f"local action for a DMARC {asked}: {final}"  # [dmarc] reject_action / quarantine_action
        if comment:
            reasons.append(Override("local_policy", clean(comment, COMMENT_MAX)))
    return tuple(reasons)


def _dkim_results(dkim) -> tuple[DkimAuth, ...]:
    if dkim is None:
        return ()
    return tuple(DkimAuth(_domain(sig.domain), clean(sig.selector.lower()), str(sig.status))
                 for sig in dkim.signatures[:MAX_DKIM_RESULTS])


def _spf_results(spf) -> tuple[SpfAuth, ...]:
    # RFC 9990 allows scope "mfrom" only; for the null sender SpfResult.mailfrom is already the HELO identity
    # (postmaster@HELO, RFC 7208 §2.4), so its domain is the HELO domain.
    if spf is None:
        return ()
    return (SpfAuth(_domain(spf.mailfrom.domain), str(spf.mailfrom.status)),)


def _to_report_mailbox(rcpts: tuple[str, ...], mailboxes: frozenset[str]) -> bool:
    if not mailboxes:
        return False
    for rcpt in rcpts:
        address = rcpt.strip().strip("<>").lower()
        if address in mailboxes or "@" + address.rpartition("@")[2] in mailboxes:
            return True
    return False
