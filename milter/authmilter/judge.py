"""The one end-of-message decision, shared by the milter (adapter.py) and the `authmilter check` command.

Neutral ground: nothing here imports pymilter, so `authmilter check` judges a message exactly as the milter does
without loading libmilter.
"""

from __future__ import annotations

from dataclasses import dataclass

from authmilter import arheader, pipeline, policy
from authmilter.checks import spf as spf_check
from authmilter.config import Config
from authmilter.context import MessageContext
from authmilter.pipeline import Results
from authmilter.resolver import DnsClient
from authmilter.results import Verdict

AR_NAME = "Authentication-Results"
RECEIVED_SPF_NAME = "Received-SPF"


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a message is judged with: one config, its authserv-id, and the shared resolver."""

    cfg: Config
    authserv_id: str
    resolver: object  # authmilter.resolver.Resolver (has for_message() and close())
    keyring: object = None  # authmilter.signing.keys.Keyring: set by the daemon when [signing] has keys


class RuntimeRef:
    """The one reference a reload swaps. A transaction reads it once, at MAIL FROM, and keeps what it got."""

    __slots__ = ("current",)

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime


def build_runtime(cfg: Config, previous: Runtime | None = None) -> Runtime:
    from authmilter.resolver import Resolver  # the DNS layer is only needed once we serve or check

    # getfqdn() may ask DNS: resolve the authserv-id once per config, not once per message.
    authserv_id = cfg.authserv_id
    if previous is not None and previous.cfg.dns == cfg.dns:
        resolver = previous.resolver  # keep the warm cache when DNS settings did not change
    else:
        resolver = Resolver(cfg.dns)
    return Runtime(cfg, authserv_id, resolver)


@dataclass(frozen=True, slots=True)
class Judgement:
    results: Results
    verdict: Verdict
    ar_value: str       # Authentication-Results value: leading space, folded with "\n\t"; "" = add none
    received_spf: str   # Received-SPF value with a leading space, or "" when SPF did not run / is turned off


def judge(ctx: MessageContext, dns: DnsClient, cfg: Config, authserv_id: str, *, now: float) -> Judgement:
    """Run every check, decide, and render: the whole end-of-message path without any milter I/O."""
    results = pipeline.evaluate(ctx, dns, cfg, now=now)
    verdict = policy.decide(results, ctx, cfg)
    ar_value = arheader.render(authserv_id, results)
    received = ""
    if cfg.spf.received_spf_header and results.spf is not None:
        received = as_header_value(
            spf_check.received_spf_header(results.spf, ctx.connection, ctx.envelope, authserv_id))
    return Judgement(results, verdict, as_header_value(ar_value) if ar_value.strip() else "", received)


def as_header_value(value: str) -> str:
    """libmilter wants LF folding, and with SMFIP_HDR_LEADSPC the value's leading space is ours to supply."""
    value = value.replace("\r\n", "\n").replace("\r", "")
    return value if value[:1] in (" ", "\t") else " " + value


def strip_brackets(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return "" if address == "<>" else address
