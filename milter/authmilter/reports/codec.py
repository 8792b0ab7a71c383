"""One text form of a row key and a published policy, shared by the journal and both stores.

The form is compact JSON (ASCII, fields in declaration order), so equal keys give equal text and the text's hash
identifies a row in the store. Changing it changes every row hash: the store's schema version must change with it.
"""

from __future__ import annotations

import hashlib
import json

from authmilter.reports.model import DkimAuth, Observation, Override, PublishedPolicy, RowKey, SpfAuth

_COMPACT = (",", ":")


def row_to_text(row: RowKey) -> str:
    return json.dumps([
        row.source_ip, row.disposition, row.dkim, row.spf,
        [[reason.type, reason.comment] for reason in row.reasons],
        row.header_from, row.envelope_from, row.envelope_to,
        [[auth.domain, auth.selector, auth.result] for auth in row.dkim_results],
        [[auth.domain, auth.result, auth.scope] for auth in row.spf_results],
        row.overflow,
    ], separators=_COMPACT)


def row_from_text(text: str) -> RowKey:
    (source_ip, disposition, dkim, spf, reasons, header_from, envelope_from, envelope_to, dkim_results,
     spf_results, overflow) = json.loads(text)
    return RowKey(source_ip, disposition, dkim, spf, tuple(Override(*reason) for reason in reasons),
                  header_from, envelope_from, envelope_to, tuple(DkimAuth(*auth) for auth in dkim_results),
                  tuple(SpfAuth(*auth) for auth in spf_results), bool(overflow))


def row_hash(text: str) -> str:
    """128 bits of BLAKE2b over the row text: the row's identity in the store."""
    return hashlib.blake2b(text.encode("ascii"), digest_size=16).hexdigest()


def policy_to_text(policy: PublishedPolicy) -> str:
    return json.dumps([policy.domain, policy.p, policy.sp, policy.np, policy.adkim, policy.aspf, policy.testing,
                       policy.discovery_method], separators=_COMPACT)


def policy_from_text(text: str) -> PublishedPolicy:
    return PublishedPolicy(*json.loads(text))


def rua_to_text(rua: tuple[str, ...]) -> str:
    return json.dumps(list(rua), separators=_COMPACT)


def rua_from_text(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def observation_to_obj(obs: Observation) -> list:
    """For the journal: everything an Observation holds, as plain JSON values."""
    return [obs.day, obs.policy_domain, policy_to_text(obs.policy), rua_to_text(obs.rua), row_to_text(obs.row),
            obs.triggers_report, obs.to_report_mailbox]


def observation_from_obj(obj: list) -> Observation:
    day, policy_domain, policy, rua, row, triggers, to_mailbox = obj
    return Observation(str(day), str(policy_domain), policy_from_text(policy), rua_from_text(rua),
                       row_from_text(row), bool(triggers), bool(to_mailbox))
