"""What `authmilter check` tells its user beside the judgement: which configuration it used, why nothing was
checked, a host-name authserv-id, an mbox "From " line, and DNS that looks unusable.

The judgement itself (headers, action, exit status) is the milter's; these notes only explain it. Notes go to
stderr ("authmilter check: ..."), except why nothing was checked, which is part of the answer and goes to stdout.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field

from authmilter.config import DEFAULT_CONFIG_PATH, Config, authserv_id_warning, describe_sources, load_config
from authmilter.context import Connection, unmapped
from authmilter.resolver import Answer, Outcome

PREFIX = "authmilter check: "


def tell(*notes: str | None) -> None:
    for note in notes:
        if note:
            print(f"{PREFIX}{note}", file=sys.stderr)


# ---------------------------------------------------------------- configuration

def choose_config(path: str | None, no_config: bool) -> tuple[Config, str]:
    """The configuration `check` judges with, and the note naming it: --config FILE; else the daemon's own file
    when it exists (so `check` judges as the milter on this host does); else, or with --no-config, the defaults.
    A default file that exists but cannot be read is an error (exit 78), never a silent fall-back."""
    if no_config:
        return Config(), "configuration: built-in defaults (--no-config)"
    if path is None:
        try:
            os.stat(DEFAULT_CONFIG_PATH)
        except (FileNotFoundError, NotADirectoryError):
            return Config(), f"configuration: built-in defaults ({DEFAULT_CONFIG_PATH} does not exist)"
        except OSError:
            pass  # e.g. a directory we may not enter: load_config says so, with the reason
        path = DEFAULT_CONFIG_PATH
    cfg = load_config(path)
    return cfg, f"configuration: {describe_sources(cfg)}"


def authserv_id_note(cfg: Config, authserv_id: str) -> str | None:
    warning = authserv_id_warning(cfg, authserv_id)
    return f"warning: {warning}" if warning else None


# ---------------------------------------------------------------- why nothing was checked

def skipped_line(skipped: str, conn: Connection, cfg: Config) -> str:
    """One stdout line: the pipeline's skip reason, and what in the configuration made it."""
    if skipped == "trusted_network":
        ip = conn.client_ip
        matched = next((network for network in cfg.trust.networks
                        if ip in network or unmapped(ip) in network), None) if ip is not None else None
        return (f"skipped: trusted_network (client {ip} is in {matched} of [trust] networks): "
                f"nothing was checked")
    if skipped == "authenticated":
        return (f"skipped: authenticated (client authenticated as {conn.authenticated_user!r} and [trust] "
                f"authenticated = yes): nothing was checked")
    return f"skipped: {skipped}: nothing was checked"


# ---------------------------------------------------------------- DNS that looks unusable

_FAILED = (Outcome.NXDOMAIN, Outcome.SERVFAIL, Outcome.TIMEOUT, Outcome.ERROR)


@dataclass
class LookupLog:
    """Every answer of one `check` run (a run judges one message, so this stays small)."""

    answers: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RecordingDns:
    """A DnsClient that passes every lookup through and keeps its answer."""

    def __init__(self, client, log: LookupLog):
        self._client = client
        self._log = log

    def query(self, name: str, rdtype: str) -> Answer:
        answer = self._client.query(name, rdtype)
        with self._log.lock:
            self._log.answers.append(answer)
        return answer

    def __getattr__(self, name: str):  # query_count, deadline_expired and whatever else the client offers
        return getattr(self._client, name)


class RecordingResolver:
    """Stands where the resolver stands in a Runtime; its per-message clients record into one LookupLog."""

    def __init__(self, resolver):
        self.resolver = resolver
        self.log = LookupLog()

    def for_message(self) -> RecordingDns:
        return RecordingDns(self.resolver.for_message(), self.log)

    def close(self) -> None:
        self.resolver.close()


def dns_unusable_note(log: LookupLog, zone_file: str | None) -> str | None:
    """A warning when every lookup that was sent failed or found no such name (the client's PTR and every
    domain): then the judgement says more about this machine's DNS than about the message."""
    sent = [answer for answer in log.answers if answer.outcome is not Outcome.INVALID_NAME]
    if not sent or any(answer.outcome not in _FAILED for answer in sent):
        return None
    examples = ", ".join(f"{answer.name}/{answer.rdtype}: {answer.problem}" for answer in sent[:3])
    if zone_file:
        hint = (f"does {zone_file} hold these names, written absolute (with the final dot), e.g. "
                f"'example.org. TXT \"v=spf1 -all\"'?")
    else:
        hint = ("check --resolver, [dns] nameservers or /etc/resolv.conf, or answer from a file of records "
                "with --zone FILE")
    return (f"warning: DNS looks unusable: all {len(sent)} lookups failed or found no such name ({examples}); "
            f"{hint}")


# ---------------------------------------------------------------- the mbox "From " line

def mbox_line_note(line: bytes) -> str:
    text = line.decode("utf-8", "replace")
    if len(text) > 80:
        text = text[:77] + "..."
    return (f"the first line {text!r} was treated as an mbox 'From ' line, not as a header, as Postfix does "
            f"(it renames it to X-Mailbox-Line:)")
