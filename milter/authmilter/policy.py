"""Results + config -> one Verdict with a named reason. All precedence between checks is in RULES, below.

Per message (`decide`, at end of message): the rules are tried in order and the first that returns a Verdict
wins; a rule whose configured action is "accept" returns None, so later rules still apply. The order says:

  1. skipped mail (trusted network, authenticated sender) is accepted: nothing was checked;
  1b. a header past [milter] max_header_bytes ([milter] header_limit_action): every later result would rest on a
     header we did not keep;
  2. a missing, repeated or unparseable From (the classic ways around DMARC) is refused first, then a repeated
     Subject, Date, To... ([policy] duplicate_headers_action: a second one on top of a signed message is what the
     reader sees, while the signature covers the other);
  3. a trusted forwarder's DMARC fail is handled by [forwarders] dmarc_fail_action, and never more strictly than
     DMARC itself would have been handled;
  3b. so is a DMARC fail of mail whose valid ARC chain was last sealed by one of [arc] trusted_sealers that
     recorded a DMARC (or aligned SPF/DKIM) pass ([arc] trusted_sealer_action; RFC 8617 §7.2.2 local_policy);
  4. DMARC reject, then the other permanent refusals (null MX, SPF fail, SPF permerror, iprev fail, a sender
     domain without addresses): a DMARC verdict is the domain owner's own word and names the best reason;
  5. temporary failures (DMARC, SPF, iprev temperror): a retry may give a definite answer, so they come before
  6. the quarantines (DMARC quarantine, SPF softfail).

Then two exemptions soften the verdict (EXEMPTIONS), keeping the would-be reason in the log:
  - mail whose every recipient is postmaster@ or abuse@ is never rejected or tempfailed (RFC 5321 §4.5.1);
  - monitor mode ([policy] enforce = no) never rejects, tempfails or quarantines.

Per recipient (`decide_recipient`, at RCPT): a bounce to a forged or expired SRS address of ours is refused for
that recipient only. The same two exemptions apply.

Overrides are decided here, once, and only shown by the renderer: a verdict carries the notes that go beside the
results they explain (a trusted forwarder's SPF fail, the DMARC fail it overrides), so the header, the log and the
reports all show the same decision.

Every reply text goes through `safe_reply_text`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from authmilter.checkresults import Results
from authmilter.config import Config
from authmilter.context import MessageContext
from authmilter.results import ACCEPT, Action, Note, Status, Verdict

Rule = Callable[[Results, MessageContext, Config], "Verdict | None"]
Exemption = Callable[[Verdict, Sequence[str], Config], Verdict]

MAX_REPLY_TEXT = 300   # an SMTP reply line is at most 512 octets with its code (RFC 5321 §4.5.3.1.5)
_SEVERITY = {Action.ACCEPT: 0, Action.QUARANTINE: 1, Action.TEMPFAIL: 2, Action.REJECT: 3}
_EXEMPT_LOCAL_PARTS = frozenset({"postmaster", "abuse"})


# ---------------------------------------------------------------- reply text

def safe_reply_text(text: str, limit: int = MAX_REPLY_TEXT) -> str:
    """Text libmilter will send as-is: printable ASCII on one line, bounded, with every `%` doubled (libmilter
    formats the reply text and drops it when it holds a lone `%`)."""
    printable = "".join(ch if " " <= ch <= "~" else " " for ch in text)
    one_line = " ".join(printable.split())
    if len(one_line.replace("%", "%%")) > limit:
        one_line = one_line[:limit - 3]
        while len(one_line.replace("%", "%%")) > limit - 3:
            one_line = one_line[:-1]
        one_line = one_line.rstrip() + "..."
    return one_line.replace("%", "%%")


def _verdict(action: Action, reason: str, text: str, *, reject: tuple[str, str] = ("550", "5.7.1"),
             tempfail: tuple[str, str] = ("451", "4.7.1")) -> Verdict | None:
    """The verdict for a configured action; None for accept, so that later rules still get their say."""
    if action is Action.ACCEPT:
        return None
    code, status = {Action.REJECT: reject, Action.TEMPFAIL: tempfail}.get(action, ("", ""))
    return Verdict(action, code, status, safe_reply_text(text), reason)


# ---------------------------------------------------------------- per-message rules

def skipped(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    return Verdict(Action.ACCEPT, reason=results.skipped) if results.skipped else None


def header_limit(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    if not ctx.message.headers_truncated:
        return None
    # Past [milter] max_header_bytes the header was not kept whole, so DKIM and DMARC are permerror (header
    # limit) rather than a guess. RFC 3463 X.3.4 "message too big for system"; 552 is RFC 5321's "exceeded
    # storage allocation".
    return _verdict(cfg.milter.header_limit_action, "header_limit", "Message header size exceeds limit",
                    reject=("552", "5.3.4"))


def dmarc_from_error(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    if results.dmarc is None or not results.dmarc.from_error:
        return None
    # RFC 5322 §3.6 requires exactly one From; RFC 9989 cannot name an author domain without it.
    return _verdict(cfg.dmarc.from_error_action, "dmarc_from_error",
                    "Message must have exactly one From header with one valid address")


def duplicate_headers(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    duplicates = results.get("singletons")
    if not duplicates:
        return None
    # RFC 5322 §3.6 allows these fields once; a second one on top of a signed message is shown to the reader while
    # the signature vouches for the other (RFC 6376 §8.15). Gmail refuses such mail with 5.7.1
    # too. Like a repeated From: the signature cannot say which one the sender meant.
    return _verdict(cfg.policy.duplicate_headers_action, "duplicate_headers",
                    f"Message is not RFC 5322 compliant: {duplicates.describe()}")


def _dmarc_disposition(results: Results, cfg: Config) -> Verdict | None:
    dmarc = results.dmarc
    if dmarc is None or dmarc.status != Status.FAIL:
        return None
    domain = dmarc.from_domain or "the From domain"
    if dmarc.disposition == "reject":
        return _verdict(cfg.dmarc.reject_action, "dmarc_reject",
                        f"Message rejected: the DMARC policy of {domain} rejects unauthenticated mail")
    if dmarc.disposition == "quarantine":
        return _verdict(cfg.dmarc.quarantine_action, "dmarc_quarantine",
                        f"DMARC policy of {domain} asks to quarantine unauthenticated mail")
    return None


def trusted_forwarder_dmarc(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    if not results.forwarder:
        return None
    # Issue 4: forwarded mail fails SPF for the original domain and list footers break DKIM.
    return _operator_instead_of_dmarc(results, cfg, cfg.forwarders.dmarc_fail_action, "trusted_forwarder",
                                      "trusted_forwarder",
                                      f"DMARC fail via trusted forwarder ({results.forwarder})")


def _operator_instead_of_dmarc(results: Results, cfg: Config, operator_action: Action, reason: str,
                               overridden: str, text: str) -> Verdict | None:
    """The action the operator chose for a DMARC fail that someone they trust vouches for, in place of DMARC's
    own; trust must never make us stricter than DMARC alone. None when DMARC asks for nothing."""
    would = _dmarc_disposition(results, cfg)
    if would is None:
        return None
    action = min(would.action, operator_action, key=_SEVERITY.__getitem__)
    reason = f"{reason}:{would.reason}"
    if action is would.action:
        return Verdict(action, would.code, would.status, would.text, reason, overridden=overridden)
    text = "" if action is Action.ACCEPT else text
    return Verdict(action, text=safe_reply_text(text), reason=reason, overridden=overridden)


ARC_OVERRIDE = "trusted_arc_sealer"


def trusted_arc_chain(results: Results, cfg: Config):
    """The ArcResult whose newest hop a listed sealer vouches for (issue 14), or None: the chain validated, its
    newest ARC-Seal's d= is in [arc] trusted_sealers, and that hop's ARC-Authentication-Results recorded a DMARC
    pass for our From domain, or an SPF or DKIM pass aligned with it (under the published adkim/aspf)."""
    arc, dmarc = results.get("arc"), results.dmarc
    if arc is None or arc.status != Status.PASS or not cfg.arc.trusted_sealers:
        return None
    hop, auth = arc.newest, arc.newest_auth
    if hop is None or auth is None or hop.seal_domain.lower().rstrip(".") not in cfg.arc.trusted_sealers:
        return None
    if dmarc is None or not dmarc.from_domain:
        return None
    from_domain = dmarc.from_domain.lower().rstrip(".")
    if auth.dmarc_pass and auth.dmarc_from == from_domain:
        return arc
    org = (dmarc.org_domain or from_domain).lower().rstrip(".")

    def aligned(domain: str, strict: bool) -> bool:
        return domain == from_domain or (not strict and (domain == org or domain.endswith("." + org)))
    if any(aligned(d, dmarc.adkim == "s") for d in auth.dkim_pass_domains) \
            or any(aligned(d, dmarc.aspf == "s") for d in auth.spf_pass_domains):
        return arc
    return None


def trusted_arc_sealer(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    arc = trusted_arc_chain(results, cfg)
    if arc is None:
        return None
    return _operator_instead_of_dmarc(results, cfg, cfg.arc.trusted_sealer_action, ARC_OVERRIDE, "local_policy",
                                      f"DMARC fail, sealed by trusted ARC sealer {arc.newest.seal_domain}")


def dmarc_reject(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    verdict = _dmarc_disposition(results, cfg)
    return verdict if verdict is not None and verdict.reason == "dmarc_reject" else None


def dmarc_quarantine(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    verdict = _dmarc_disposition(results, cfg)
    return verdict if verdict is not None and verdict.reason == "dmarc_quarantine" else None


def dmarc_temperror(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    if results.dmarc is None or results.dmarc.status != Status.TEMPERROR:
        return None
    # RFC 7372 has no DMARC code; RFC 3463 X.7.1 (delivery not authorized) as a transient condition.
    return _verdict(cfg.dmarc.temperror_action, "dmarc_temperror",
                    "DMARC could not be evaluated (temporary DNS failure), try again later",
                    tempfail=("451", "4.7.1"))


def null_mx(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    if results.sender is None or not results.sender.null_mx:
        return None
    # RFC 7505 §4.2: mail from a null-MX domain SHOULD be rejected with 550 5.7.27.
    return _verdict(cfg.sender.null_mx_action, "null_mx",
                    f"Sender address has null MX: {results.sender.domain} accepts no mail",
                    reject=("550", "5.7.27"))


def sender_no_address(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    if results.sender is None or not results.sender.no_address:
        return None
    # RFC 3463 X.1.8: bad sender's system address (Postfix's reject_unknown_sender_domain uses the same code).
    return _verdict(cfg.sender.no_address_action, "sender_no_address",
                    f"Sender address rejected: {results.sender.domain} has no MX, A or AAAA record",
                    reject=("550", "5.1.8"), tempfail=("451", "4.1.8"))


def _spf_exempt(results: Results, cfg: Config) -> bool:
    """Forwarded mail: a trusted forwarder (issue 4), or DMARC passing through DKIM despite SPF (issue 3)."""
    if results.forwarder:
        return True
    return (cfg.policy.dmarc_pass_overrides_spf and results.dmarc is not None
            and results.dmarc.status == Status.PASS)


def spf_fail(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    if results.spf is None or results.spf.mailfrom.status != Status.FAIL or _spf_exempt(results, cfg):
        return None
    mailfrom = results.spf.mailfrom
    text = f"SPF validation failed: {mailfrom.domain} does not authorize this sender"
    if cfg.spf.show_explanation and mailfrom.explanation:
        # RFC 7208 §8.4: the domain's explanation is meant for the SMTP reply; safe_reply_text defuses it.
        text = f"SPF validation failed: {mailfrom.explanation}"
    return _verdict(cfg.spf.fail_action, "spf_fail", text, reject=("550", "5.7.23"))


def spf_softfail(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    if results.spf is None or results.spf.mailfrom.status != Status.SOFTFAIL or _spf_exempt(results, cfg):
        return None
    return _verdict(cfg.spf.softfail_action, "spf_softfail",
                    f"SPF softfail for {results.spf.mailfrom.domain}")


def spf_permerror(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    if results.spf is None or results.spf.mailfrom.status != Status.PERMERROR:
        return None
    return _verdict(cfg.spf.permerror_action, "spf_permerror",
                    f"SPF validation error: the SPF record of {results.spf.mailfrom.domain} is invalid",
                    reject=("550", "5.7.24"))


def spf_temperror(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    if results.spf is None or results.spf.mailfrom.status != Status.TEMPERROR:
        return None
    # RFC 7372 §3.2: X.7.24 SPF validation error, here as a transient condition.
    return _verdict(cfg.spf.temperror_action, "spf_temperror",
                    "SPF could not be evaluated (temporary DNS failure), try again later",
                    tempfail=("451", "4.7.24"))


def iprev_fail(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    # No PTR at all (permerror, RFC 8601 §2.7.3) is as unconfirmed as a mismatch: an operator who rejects on
    # failed FCrDNS means both.
    if results.iprev is None or results.iprev.status not in (Status.FAIL, Status.PERMERROR):
        return None
    return _verdict(cfg.iprev.fail_action, "iprev_fail",
                    f"Reverse DNS validation failed for {results.iprev.client_ip or 'the relayed client'}",
                    reject=("550", "5.7.25"))


def iprev_temperror(results: Results, ctx: MessageContext, cfg: Config) -> Verdict | None:
    if results.iprev is None or results.iprev.status != Status.TEMPERROR:
        return None
    # RFC 7372 §3.3: X.7.25 reverse DNS validation failed, here as a transient condition.
    return _verdict(cfg.iprev.temperror_action, "iprev_temperror",
                    "Reverse DNS could not be validated (temporary DNS failure), try again later",
                    tempfail=("451", "4.7.25"))


RULES: tuple[Rule, ...] = (
    skipped,
    header_limit,
    dmarc_from_error,
    duplicate_headers,
    trusted_forwarder_dmarc,
    trusted_arc_sealer,
    dmarc_reject,
    null_mx,
    spf_fail,
    spf_permerror,
    iprev_fail,
    sender_no_address,
    dmarc_temperror,
    spf_temperror,
    iprev_temperror,
    dmarc_quarantine,
    spf_softfail,
)


# ---------------------------------------------------------------- exemptions

def is_exempt_recipient(rcpt: str) -> bool:
    """postmaster@ or abuse@ any domain, or a bare "postmaster" (RFC 5321 §4.5.1), case-insensitively."""
    address = rcpt.strip().strip("<>").strip()
    local = address.rpartition("@")[0] if "@" in address else address
    return local.strip('"').lower() in _EXEMPT_LOCAL_PARTS


def postmaster_exemption(verdict: Verdict, rcpts: Sequence[str], cfg: Config) -> Verdict:
    # RFC 5321 §4.5.1: postmaster must always be reachable, and abuse reports must get through (RFC 2142).
    # Only when EVERY recipient is exempt: a mixed list is decided as usual (one verdict covers the whole
    # message), or any spoof could add postmaster@ to slip past policy. A legitimate sender whose mixed message
    # is refused gets a DSN and can write to postmaster alone. Quarantine still applies: the held message
    # reaches the postmaster through the operator, and nothing is refused.
    if verdict.action not in (Action.REJECT, Action.TEMPFAIL):
        return verdict
    if not rcpts or not all(is_exempt_recipient(rcpt) for rcpt in rcpts):
        return verdict
    return Verdict(Action.ACCEPT, reason=f"postmaster:{verdict.reason}", overridden=verdict.overridden
                   or "local_policy")


def monitor_mode(verdict: Verdict, rcpts: Sequence[str], cfg: Config) -> Verdict:
    # "Record and log every verdict, never reject or tempfail": a hold would also change delivery, so
    # quarantine is lifted too. The would-be reason stays in the log.
    if cfg.policy.enforce or verdict.action is Action.ACCEPT:
        return verdict
    return Verdict(Action.ACCEPT, reason=f"monitor:{verdict.reason}", overridden=verdict.overridden
                   or "local_policy")


EXEMPTIONS: tuple[Exemption, ...] = (postmaster_exemption, monitor_mode)


def _exempted(verdict: Verdict, rcpts: Sequence[str], cfg: Config) -> Verdict:
    for exemption in EXEMPTIONS:
        verdict = exemption(verdict, rcpts, cfg)
    return verdict


# ---------------------------------------------------------------- entry points

def decide(results: Results, ctx: MessageContext, cfg: Config, *,
           rules: Sequence[Rule] = RULES) -> Verdict:
    """The one verdict for a message at end of message."""
    verdict = next((v for v in (rule(results, ctx, cfg) for rule in rules) if v is not None), ACCEPT)
    verdict = _exempted(verdict, ctx.envelope.rcpts, cfg)
    notes = header_notes(results) + duplicate_header_notes(results) + arc_notes(results, verdict)
    return dataclasses.replace(verdict, notes=notes) if notes else verdict


def decide_spf_at_rcpt(results: Results, ctx: MessageContext, rcpt: str, cfg: Config) -> Verdict:
    """[spf] reject_at = rcpt: the SPF fail rule alone, at RCPT TO, before the body is taken. Only a reject can
    be given there (the config refuses any other fail_action, and a DMARC pass override, which needs the
    header); a trusted forwarder, postmaster and monitor mode exempt it as at end of message."""
    verdict = spf_fail(results, ctx, cfg)
    if verdict is None or verdict.action is not Action.REJECT:
        return ACCEPT
    return _exempted(verdict, (rcpt,), cfg)


def header_notes(results: Results) -> tuple[Note, ...]:
    """What the header says beside the results about the trusted-forwarder decision (issue 4: the override must
    be auditable in the header, named as DMARC reports name it)."""
    if not results.forwarder:
        return ()
    notes = []
    if results.spf is not None and results.spf.mailfrom.status in (Status.FAIL, Status.SOFTFAIL):
        notes.append(Note("spf", f"trusted forwarder {results.forwarder}", ("smtp", "mailfrom")))
    if results.dmarc is not None and results.dmarc.status == Status.FAIL:
        notes.append(Note("dmarc", f"override=trusted_forwarder {results.forwarder}"))
    return tuple(notes)


def duplicate_header_notes(results: Results) -> tuple[Note, ...]:
    """Repeated singleton headers that were accepted ([policy] duplicate_headers_action = accept or quarantine) are
    recorded beside DMARC's result, the one a reader trusts and the one the spoof undermines; beside DKIM's when
    DMARC did not run."""
    duplicates = results.get("singletons")
    if not duplicates:
        return ()
    method = "dmarc" if results.dmarc is not None else "dkim"
    return (Note(method, duplicates.describe()),)


def arc_notes(results: Results, verdict: Verdict) -> tuple[Note, ...]:
    """The trusted-sealer override beside the DMARC result it overrode, worded as the report's local_policy
    comment (RFC 8617 §7.2.2), so header, log and report name the same hop."""
    if f"{ARC_OVERRIDE}:" not in verdict.reason:
        return ()
    arc = results.get("arc")
    return (Note("dmarc", f"override=local_policy {arc.override_comment()}"),) if arc is not None else ()


def decide_recipient(rcpt: str, checks: Mapping[str, Any], cfg: Config) -> Verdict:
    """The verdict for one RCPT TO from the recipient checks (pipeline.evaluate_recipient): only bounces to our own
    SRS addresses are judged here (issue 4)."""
    bounce = checks.get("srs_bounce")
    if bounce is None or bounce.status in ("not_srs", "valid"):
        return ACCEPT
    texts = {"bad_hash": "hash does not match", "expired": "timestamp expired", "malformed": "malformed address"}
    verdict = Verdict(Action.REJECT, "550", "5.7.1",
                      safe_reply_text(f"Invalid SRS address: {texts.get(bounce.status, bounce.status)}"),
                      f"srs_{bounce.status}")
    return _exempted(verdict, (rcpt,), cfg)


