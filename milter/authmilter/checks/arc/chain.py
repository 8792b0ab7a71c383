"""Collecting the ARC sets of a message and checking the chain's structure (RFC 8617 §5.2 steps 1-3).

No DNS and no cryptography here: what a message's ARC header fields say, and whether they form a chain worth
verifying. Every structural defect is a `ChainProblem` whose result is `fail` (RFC 8617 §5.2: "the Chain Validation
Status is 'fail' and the algorithm stops here").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dkim.util import InvalidTagValueList, parse_tag_value

from authmilter.context import Header, Message
from authmilter.errors import AuthmilterError

MAX_INSTANCES = 50           # RFC 8617 §4.2.1: "The maximum number of ARC Sets that can be attached ... is 50"
MAX_ARC_FIELDS = 3 * MAX_INSTANCES  # beyond this no chain can be valid: stop reading (a cap on hostile input)

AAR = b"arc-authentication-results"
AMS = b"arc-message-signature"
AS = b"arc-seal"
ARC_FIELDS = (AAR, AMS, AS)

# RFC 8617 §4.1.1: "i=" instance ";" then the A-R payload. Leading CFWS only; the instance is 1..50 (§4.2.1).
_AAR_INSTANCE = re.compile(rb"\s*i\s*=\s*([0-9]{1,5})\s*;")
_INSTANCE = re.compile(rb"[0-9]{1,5}")


class ChainProblem(AuthmilterError):
    """A chain that fails before any signature is checked, with a short reason for the header comment."""


@dataclass(frozen=True, slots=True)
class ArcSet:
    """The three header fields of one instance, as received, with the tag lists of AMS and AS parsed."""

    instance: int
    aar: Header
    ams: Header
    seal: Header
    ams_tags: dict
    seal_tags: dict

    @property
    def aar_payload(self) -> str:
        """The AAR after its "i=N;": an Authentication-Results value (authserv-id; results)."""
        unfolded = self.aar.value.replace(b"\r\n", b"").replace(b"\n", b"")
        match = _AAR_INSTANCE.match(unfolded)
        rest = unfolded[match.end():] if match else b""
        return rest.decode("utf-8", "replace").strip()


def arc_fields(msg: Message) -> tuple[Header, ...]:
    return tuple(h for h in msg.headers if h.lookup_name in ARC_FIELDS)


def collect_sets(msg: Message) -> tuple[ArcSet, ...]:
    """The chain's sets in instance order 1..N; () when the message has no ARC field. Raises ChainProblem for
    every structural defect of RFC 8617 §5.2 steps 1-3."""
    fields = arc_fields(msg)
    if not fields:
        return ()
    if len(fields) > MAX_ARC_FIELDS:
        raise ChainProblem("more than 50 ARC sets")
    found: dict[int, dict[bytes, tuple[Header, dict | None]]] = {}
    for header in fields:
        instance, tags = _instance_of(header)
        if not 1 <= instance <= MAX_INSTANCES:
            # §4.2.1: instance values are 1..50; i=0 and anything larger cannot be part of a valid chain.
            raise ChainProblem(f"ARC instance {instance} out of range" if instance <= 99999
                               else "ARC instance out of range")
        per_instance = found.setdefault(instance, {})
        if header.lookup_name in per_instance:
            # §5.2 step 3.1: "Each ARC Set MUST contain exactly one each of the three ARC header fields".
            raise ChainProblem(f"duplicate {_NAMES[header.lookup_name]} for i={instance}")
        per_instance[header.lookup_name] = (header, tags)
    newest = max(found)
    if sorted(found) != list(range(1, newest + 1)):
        # §5.2 step 3.2: "The instance values of the ARC Sets MUST form a continuous sequence from 1..N".
        missing = min(set(range(1, newest + 1)) - set(found))
        raise ChainProblem(f"ARC set i={missing} missing")
    sets = []
    for instance in range(1, newest + 1):
        fields_of = found[instance]
        absent = [_NAMES[name] for name in ARC_FIELDS if name not in fields_of]
        if absent:
            raise ChainProblem(f"no {absent[0]} for i={instance}")
        sets.append(ArcSet(instance, fields_of[AAR][0], fields_of[AMS][0], fields_of[AS][0],
                           fields_of[AMS][1] or {}, fields_of[AS][1] or {}))
    _check_cv(sets)
    return tuple(sets)


_NAMES = {AAR: "ARC-Authentication-Results", AMS: "ARC-Message-Signature", AS: "ARC-Seal"}


def _instance_of(header: Header) -> tuple[int, dict | None]:
    if header.lookup_name == AAR:
        unfolded = header.value.replace(b"\r\n", b"").replace(b"\n", b"")
        match = _AAR_INSTANCE.match(unfolded)
        if match is None:
            # §4.1.1: the AAR starts with its instance tag, then ";".
            raise ChainProblem("ARC-Authentication-Results without i=")
        return int(match.group(1)), None
    try:
        tags = parse_tag_value(header.value)
    except (InvalidTagValueList, ValueError, IndexError):
        raise ChainProblem(f"{_NAMES[header.lookup_name]} tag list does not parse") from None
    raw = tags.get(b"i")
    if raw is None or not _INSTANCE.fullmatch(raw.strip()):
        raise ChainProblem(f"{_NAMES[header.lookup_name]} without a valid i=")
    return int(raw.strip()), tags


def _check_cv(sets: list[ArcSet]) -> None:
    # §5.2 step 2: a newest seal saying cv=fail ends the chain; step 3.3: no cv=fail anywhere, i=1 says "none" and
    # every later one "pass". The values are compared as the signer wrote them (the suite's tag-value case rule).
    for arc_set in reversed(sets):
        cv = arc_set.seal_tags.get(b"cv")
        if cv is None:
            raise ChainProblem(f"ARC-Seal i={arc_set.instance} without cv=")
        if cv == b"fail":
            raise ChainProblem(f"ARC-Seal i={arc_set.instance} says cv=fail")
        wanted = b"none" if arc_set.instance == 1 else b"pass"
        if cv != wanted:
            raise ChainProblem(f"ARC-Seal i={arc_set.instance} has cv={cv.decode('ascii', 'replace')[:8]}, "
                               f"not {wanted.decode()}")
