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
    keyring: object = None  # authmilter.signing.keys.Keyring when [signing] has keys and the daemon serves
    keyring: object = None  # authmilter.signing.keys.Keyring: set by the daemon when [signing] has keys


class RuntimeRef:
    """The one reference a reload swaps. A transaction reads it once, at MAIL FROM, and keeps what it got."""

    __slots__ = ("current",)

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime


def build_observers(cfg: Config, previous: Runtime | None = None, *, serving: bool = True) -> tuple[Observer, ...]:
    """Every observer, in the order they are told: the log line first. An observer that owns a thread or a
    store is kept across a reload when its own section did not change (`previous`). Only the daemon (`serving`)
    counts: `authmilter check` judges a test message, which must reach no metric and no report."""
    from authmilter import metrics
    from authmilter.logline import LogLineObserver
    from authmilter.reports.writer import ReportRecorder, report_observers

    observers: list[Observer] = [LogLineObserver()]
    if serving:
        kept = previous.observers if previous is not None else None
        counted = metrics.observer_for(cfg, kept)
        reports = report_observers(cfg, kept or ())
        if counted is not None:
            observers.append(counted)
            recorder = next((o for o in reports if isinstance(o, ReportRecorder)), None)
            # The last registration wins: a reload that drops [reports] unregisters the old writer.
            counted.watch_report_writer(recorder.gauges if recorder is not None else None)
        observers.extend(reports)
    return tuple(observers)


def build_runtime(cfg: Config, previous: Runtime | None = None, *, serving: bool = True) -> Runtime:
    from authmilter import libpatches, metrics
    from authmilter.resolver import Resolver  # the DNS layer is only needed once we serve or check

    libpatches.install()
    # getfqdn() may ask DNS: resolve the authserv-id once per config, not once per message.
    authserv_id = cfg.authserv_id
    observers = build_observers(cfg, previous, serving=serving)
    if previous is not None and previous.cfg.dns == cfg.dns:
        resolver = previous.resolver  # keep the warm cache when DNS settings did not change
    else:
        resolver = Resolver(cfg.dns, on_query=metrics.dns_hook(observers))
    failures = previous.observer_failures if previous is not None else None
    keyring = None
    if serving:
        from authmilter.signing.keys import load_keyring

        keyring = load_keyring(cfg)  # a bad key file is a ConfigError: refused at start, a reload keeps the old
    return Runtime(cfg, authserv_id, resolver, observers, failures or ObserverFailures(), keyring)
