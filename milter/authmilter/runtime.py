"""What a message is judged with, and the one reference a reload swaps.

A Runtime is one config with everything built from it: the authserv-id, the shared resolver and the observers
told about each verdict. A transaction reads `RuntimeRef.current` once, at MAIL FROM, and keeps what it got, so a
reload never changes the rules in the middle of a message.
"""

from __future__ import annotations

from dataclasses import dataclass

from authmilter.config import Config
from authmilter.observers import Observer, ObserverFailures


@dataclass(frozen=True, slots=True)
class Runtime:
    cfg: Config
    authserv_id: str
    resolver: object  # authmilter.resolver.Resolver (has for_message() and close())
    observers: tuple[Observer, ...] = ()
    observer_failures: ObserverFailures | None = None
    keyring: object = None  # authmilter.signing.keys.Keyring: set by the daemon when [signing] has keys


class RuntimeRef:
    """The one reference a reload swaps. A transaction reads it once, at MAIL FROM, and keeps what it got."""

    __slots__ = ("current",)

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime


def build_observers(cfg: Config, previous: Runtime | None = None) -> tuple[Observer, ...]:
    """Every observer, in the order they are told: the log line first. An observer that owns a thread or a
    store is kept across a reload when its own section did not change (`previous`)."""
    from authmilter.logline import LogLineObserver

    return (LogLineObserver(),)


def build_runtime(cfg: Config, previous: Runtime | None = None) -> Runtime:
    from authmilter.resolver import Resolver  # the DNS layer is only needed once we serve or check

    # getfqdn() may ask DNS: resolve the authserv-id once per config, not once per message.
    authserv_id = cfg.authserv_id
    if previous is not None and previous.cfg.dns == cfg.dns:
        resolver = previous.resolver  # keep the warm cache when DNS settings did not change
    else:
        resolver = Resolver(cfg.dns)
    failures = previous.observer_failures if previous is not None else None
    return Runtime(cfg, authserv_id, resolver, build_observers(cfg, previous), failures or ObserverFailures())
