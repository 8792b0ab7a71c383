"""INI file -> one frozen Config. Parsed once; a reload builds a new object and swaps one reference.

Each section is a frozen dataclass below; each field is one key, with its default and a one-line doc in the field
metadata. The parser is generic over the field types, so adding a key is adding a field (and documenting it in
config/authmilter.ini, which a test checks). Any problem is a ConfigError "FILE: [section] key: reason"; a file
with several mistakes gives one such line each, all at once (inifile.py reads the grammar without stopping).

The main file is followed by its drop-ins, conf.d/*.ini beside it in name order; a later file overrides a key
of an earlier one, and Config.origin() says which file set a key, for errors found after parsing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from authmilter.cpu import parse_cpu
from authmilter.errors import ConfigError
from authmilter.inifile import Entry, IniFile, inline_comment, read_ini
from authmilter.results import Action
from authmilter.signing.keylines import KeyLine, LoginDomains, parse_key_lines, parse_login_domains

DEFAULT_CONFIG_PATH = "/etc/authmilter/authmilter.ini"
DROPIN_DIRECTORY = "conf.d"
DEFAULTS_SOURCE = "<defaults>"   # Config.source when no file was read

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustAd(StrEnum):
    AUTO = "auto"
    YES = "yes"
    NO = "no"


class LogTarget(StrEnum):
    STDERR = "stderr"
    SYSLOG = "syslog"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class OrgDomainMethod(StrEnum):
    TREEWALK = "treewalk"  # RFC 9989 DNS tree walk
    PSL = "psl"            # RFC 7489 style, publicsuffixlist's bundled data


@dataclass(frozen=True, slots=True)
class Nameserver:
    host: str   # IP address text
    port: int = 53

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# ---------------------------------------------------------------- value parsers (raise ValueError with a reason)

def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"expected yes or no, got {text!r}")


def split_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.replace("\n", ",").split(",") if item.strip())


def parse_nameserver(text: str) -> Nameserver:
    """IP, IP:port or [IPv6]:port."""
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"unbalanced [ in {text!r}")
        host, rest = text[1:close], text[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected [IPv6]:port, got {text!r}")
            port = _parse_port(rest[1:], text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _parse_port(port_text, text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address: {host!r} (names are not allowed: they would need DNS)") from None
    return Nameserver(str(address), port)


def _parse_port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in {whole!r}")
    return int(text)


def parse_nameservers(text: str) -> tuple[Nameserver, ...]:
    return tuple(parse_nameserver(item) for item in split_list(text))


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in split_list(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not a network: {item!r}") from None
    return tuple(networks)


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    # An IPv4 network may also be written as ::ffff:a.b.c.d/n; compare both in IPv4 form.
    a, b = _as_v4(a), _as_v4(b)
    return a.version == b.version and a.overlaps(b)


def _as_v4(network: IPNetwork) -> IPNetwork:
    mapped = ipaddress.ip_network("::ffff:0:0/96")
    if network.version == 6 and network.subnet_of(mapped):
        return ipaddress.ip_network(f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}")
    return network


def parse_socket(text: str) -> str:
    text = text.strip()
    if text.startswith("unix:") or text.startswith("local:"):
        if not text.split(":", 1)[1].startswith("/"):
            raise ValueError(f"a unix socket needs an absolute path, got {text!r}")
        return text
    if text.startswith(("inet:", "inet6:")):
        rest = text.split(":", 1)[1]
        port, _, host = rest.partition("@")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected inet:PORT@HOST, got {text!r}")
        return text
    raise ValueError(f"expected unix:/path, inet:PORT@HOST or inet6:PORT@HOST, got {text!r}")


# RFC 8601 §2.2: an authserv-id is a token or quoted-string, and in practice a host name. We accept host-name
# characters only: anything else (an address, spaces, ';', comments, quotes) would give every message a header
# that other readers, authres included, cannot parse, or one that smuggles structure into it.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_AUTHSERV_ID = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def parse_authserv_id(text: str) -> str:
    """A host-name-like authserv-id; a trailing dot is dropped, empty means this machine's FQDN."""
    value = text.strip().rstrip(".") if text.strip() not in ("", ".") else ""
    if value and (len(value) > 253 or not _AUTHSERV_ID.fullmatch(value)):
        raise ValueError(f"not a host name: {text.strip()!r} (letters, digits, '-', '_' and dots only)")
    return value


def unqualified_host_name(name: str) -> bool:
    """localhost, a name under .localhost (RFC 6761 §6.3) or localhost.localdomain, or a name without a dot: what
    an unconfigured machine calls itself. As an authserv-id it names no one: other hosts use it too, so our
    header could not be told from theirs (RFC 8601 §2.5: the authserv-id identifies the ADMD)."""
    lowered = name.lower().rstrip(".")
    return ("." not in lowered or lowered == "localhost.localdomain" or lowered.endswith(".localhost"))


def parse_own_authserv_id(text: str) -> str:
    """[milter] authserv_id: a host name, and a fully qualified one when written (empty: the machine's FQDN)."""
    value = parse_authserv_id(text)
    if value and unqualified_host_name(value):
        raise ValueError(f"{value!r} is not a fully qualified host name: write the name other mail systems know "
                         f"this host by, e.g. mx.example.org (RFC 8601 §2.5)")
    return value


def authserv_id_warning(cfg: "Config", authserv_id: str) -> str | None:
    """Why an authserv-id taken from the host name will not do, or None. Start-up and `check` warn with it."""
    if cfg.milter.authserv_id or not unqualified_host_name(authserv_id):
        return None
    where = f"in {cfg.source}" if cfg.source != DEFAULTS_SOURCE else "in the configuration file"
    return (f"authserv_id {authserv_id!r} comes from this machine's host name, which is not a fully qualified "
            f"domain name; set [milter] authserv_id {where} to this host's name as other mail systems know it "
            f"(e.g. authserv_id = mx.example.org)")


def parse_authserv_ids(text: str) -> tuple[str, ...]:
    return tuple(parse_authserv_id(item) for item in split_list(text))


def parse_octal_mode(text: str) -> int:
    try:
        mode = int(text.strip(), 8)
    except ValueError:
        raise ValueError(f"expected an octal mode such as 0660, got {text!r}") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"mode out of range: {text!r}")
    return mode


def key(default: Any, doc: str, *, parse: Callable[[str], Any] | None = None,
        choices: tuple[str, ...] | None = None, minimum: float | None = None,
        maximum: float | None = None) -> Any:
    """Declare one config key: its default, a one-line doc, and optionally how to parse or bound it."""
    metadata = {"doc": doc, "parse": parse, "choices": choices, "minimum": minimum, "maximum": maximum}
    if isinstance(default, (list, dict, set)):
        raise TypeError("defaults must be immutable")
    return field(default=default, metadata=metadata)


# ---------------------------------------------------------------- sections

@dataclass(frozen=True, slots=True)
class MilterSection:
    socket: str = key("unix:/var/spool/postfix/authmilter/authmilter.sock",
                      "libmilter socket: unix:/path, inet:PORT@HOST or inet6:PORT@HOST", parse=parse_socket)
    socket_mode: int = key(0o660, "permissions of a unix socket", parse=parse_octal_mode)
    socket_group: str = key("postfix", "group owning a unix socket (empty: leave as created)")
    authserv_id: str = key("", "our authserv-id in Authentication-Results (empty: this machine's FQDN)",
                           parse=parse_own_authserv_id)
    remove_authserv_ids: tuple[str, ...] = key((), "other authserv-ids (e.g. the rest of an MX fleet) whose "
                                                   "incoming A-R headers are removed as forged",
                                               parse=parse_authserv_ids)
    error_action: Action = key(Action.TEMPFAIL, "what to do when authmilter itself fails on a message",
                               choices=("accept", "tempfail"))
    max_header_bytes: int = key(1048576, "header bytes kept per message; past this, header_limit_action applies",
                                minimum=1024)
    header_limit_action: Action = key(Action.REJECT, "a message whose header exceeds max_header_bytes: reject "
                                      "(552 5.3.4), quarantine, or accept and record dkim/dmarc=permerror",
                                      choices=("reject", "quarantine", "accept"))
    connection_timeout: int = key(600, "seconds libmilter waits on an idle Postfix connection", minimum=1)
    cpu: str = key("auto", "the one CPU the milter's threads run on: auto (the CPU it starts on), a CPU number, "
                           "or all (no pinning)", parse=parse_cpu)
    stop_timeout: float = key(20.0, "seconds a stop (SIGTERM) waits for the messages in flight; those still "
                                    "running then get error_action", minimum=0, maximum=300)


@dataclass(frozen=True, slots=True)
class DnsSection:
    nameservers: tuple[Nameserver, ...] = key((), "comma-separated IP, IP:port or [IPv6]:port "
                                                  "(empty: the system resolver)", parse=parse_nameservers)
    timeout: float = key(5.0, "seconds per query", minimum=0.1, maximum=60)
    message_deadline: float = key(20.0, "seconds of DNS per message, all checks together", minimum=0.5,
                                  maximum=250)
    max_queries: int = key(100, "DNS queries per message, all checks together", minimum=10)
    trust_ad: TrustAd = key(TrustAd.AUTO, "does the resolver's AD bit mean DNSSEC-secure: auto (only when every "
                                          "resolver is on loopback), yes or no")
    cache_size: int = key(10000, "answers kept in the cache (0: no cache)", minimum=0)
    cache_max_ttl: int = key(3600, "longest time an answer is cached, in seconds", minimum=0)
    early_lookups: bool = key(True, "start each check's lookups as soon as its inputs are known (iprev and SPF at "
                                    "MAIL FROM, DKIM keys and DMARC discovery at end of headers), side by side; "
                                    "no = all at end of message, one after another")
    workers: int = key(32, "threads for early lookups, shared by all connections", minimum=1, maximum=512)


@dataclass(frozen=True, slots=True)
class TrustSection:
    networks: tuple[IPNetwork, ...] = key(
        (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        "comma-separated CIDRs whose mail is not checked (may be empty)", parse=parse_networks)
    authenticated: bool = key(True, "skip the checks for SASL-authenticated senders")
    relays: tuple[IPNetwork, ...] = key(
        (), "comma-separated CIDRs of our own relays (gateway, backup MX) that hand us mail without XFORWARD",
        parse=parse_networks)

    def problems(self) -> tuple[tuple[str, str], ...]:
        """A client in both lists would be both unchecked and checked on its Received header: refused."""
        clashes = [f"{relay} overlaps {network}" for relay in self.relays for network in self.networks
                   if _overlap(relay, network)]
        if not clashes:
            return ()
        return (("relays", f"{'; '.join(clashes)} of [trust] networks: a client in both would be trusted and "
                           f"judged on its Received header at once; take it out of one of the two"),)


@dataclass(frozen=True, slots=True)
class PolicySection:
    enforce: bool = key(True, "no = monitor mode: record and log every verdict, never reject or tempfail")
    dmarc_pass_overrides_spf: bool = key(True, "an SPF fail or softfail action is not applied when DMARC "
                                               "passes (forwarded mail whose DKIM signature survived)")
    duplicate_headers_action: Action = key(Action.REJECT, "a header RFC 5322 allows once (Subject, Date, To...), "
                                                          "found twice: reject 550 5.7.1, quarantine, or accept "
                                                          "and record it", choices=("reject", "quarantine", "accept"))


@dataclass(frozen=True, slots=True)
class LogSection:
    target: LogTarget = key(LogTarget.STDERR, "stderr (journald under systemd) or syslog")
    level: LogLevel = key(LogLevel.INFO, "debug, info, warning or error")
    syslog_facility: str = key("mail", "syslog facility when target = syslog",
                               choices=("mail", "daemon", "local0", "local1", "local2", "local3", "local4",
                                        "local5", "local6", "local7", "user"))


@dataclass(frozen=True, slots=True)
class SpfSection:
    enabled: bool = key(True, "check SPF")
    check_helo: bool = key(True, "also check the HELO identity (RFC 7208 §2.3)")
    fail_action: Action = key(Action.ACCEPT, "on SPF fail: accept (let DMARC decide) or reject 550 5.7.23",
                              choices=("accept", "reject", "quarantine"))
    softfail_action: Action = key(Action.ACCEPT, "on SPF softfail", choices=("accept", "quarantine"))
    temperror_action: Action = key(Action.ACCEPT, "on SPF temperror: accept or tempfail 451 4.7.24",
                                   choices=("accept", "tempfail"))
    permerror_action: Action = key(Action.ACCEPT, "on SPF permerror: accept or reject 550 5.7.24",
                                   choices=("accept", "reject"))
    received_spf_header: bool = key(True, "add a Received-SPF header (RFC 7208 §9.1)")
    show_explanation: bool = key(True, "put the domain's exp= text in an SPF reject reply")
    reject_at: str = key("eom", "when fail_action = reject refuses an SPF fail: eom (after the message, when DMARC "
                                "can still rescue forwarded mail) or rcpt (at RCPT TO, without taking the body; "
                                "needs [policy] dmarc_pass_overrides_spf = no)", choices=("eom", "rcpt"))


@dataclass(frozen=True, slots=True)
class DkimSection:
    enabled: bool = key(True, "verify DKIM signatures")
    max_signatures: int = key(5, "signatures verified per message; the rest get one dkim=policy entry",
                              minimum=1, maximum=50)
    min_key_bits: int = key(1024, "RSA keys shorter than this are refused (dkim=policy)", minimum=512)
    allow_sha1: bool = key(False, "accept rsa-sha1 signatures (RFC 8301 says not to)")
    time_tolerance: int = key(300, "seconds of clock skew allowed on t= and x=", minimum=0)
    accept_partial_body: bool = key(False, "accept a signature whose l= leaves body content unsigned (no: "
                                           "dkim=policy, so it cannot make DMARC pass)")


@dataclass(frozen=True, slots=True)
class DmarcSection:
    enabled: bool = key(True, "evaluate DMARC")
    org_domain: OrgDomainMethod = key(OrgDomainMethod.TREEWALK, "organizational domain: treewalk (RFC 9989) "
                                                                "or psl (public suffix list)")
    reject_action: Action = key(Action.REJECT, "on a DMARC fail under p=reject",
                                choices=("reject", "quarantine", "accept"))
    quarantine_action: Action = key(Action.QUARANTINE, "on a DMARC fail under p=quarantine: quarantine "
                                                       "(Postfix hold) or accept (with the header only)",
                                    choices=("quarantine", "accept"))
    temperror_action: Action = key(Action.ACCEPT, "on DMARC temperror", choices=("accept", "tempfail"))
    from_error_action: Action = key(Action.REJECT, "no From, several From headers or an unparseable From: "
                                                   "reject 550 5.7.1 or accept", choices=("reject", "accept"))


@dataclass(frozen=True, slots=True)
class IprevSection:
    enabled: bool = key(True, "check forward-confirmed reverse DNS (RFC 8601 §3)")
    fail_action: Action = key(Action.ACCEPT, "on iprev fail or permerror (no PTR): accept or reject 550 5.7.25",
                              choices=("accept", "reject"))
    temperror_action: Action = key(Action.ACCEPT, "on iprev temperror", choices=("accept", "tempfail"))
    max_names: int = key(10, "PTR names followed per client IP", minimum=1, maximum=50)


@dataclass(frozen=True, slots=True)
class SrsSection:
    secrets: tuple[str, ...] = key((), "our SRS secrets, newest first (postsrsd/pysrs compatible); empty: "
                                       "bounces to SRS addresses are not checked")
    max_age_days: int = key(21, "SRS timestamps older than this are refused", minimum=1)
    domains: tuple[str, ...] = key((), "our SRS domains (empty: any recipient domain)")


@dataclass(frozen=True, slots=True)
class ForwardersSection:
    networks: tuple[IPNetwork, ...] = key((), "networks of trusted forwarders", parse=parse_networks)
    hostnames: tuple[str, ...] = key((), "FCrDNS-confirmed host names (or .suffixes) of trusted forwarders")
    dmarc_fail_action: Action = key(Action.ACCEPT, "DMARC fail on a trusted forwarder's mail",
                                    choices=("accept", "quarantine"))


@dataclass(frozen=True, slots=True)
class SenderSection:
    null_mx_action: Action = key(Action.REJECT, "MAIL FROM domain publishing null MX (RFC 7505): reject 550 "
                                                "5.7.27 or accept", choices=("reject", "accept"))
    no_address_action: Action = key(Action.ACCEPT, "MAIL FROM domain with no MX, A or AAAA",
                                    choices=("accept", "reject", "tempfail"))


def parse_listen(text: str) -> str:
    """IP:PORT or [IPv6]:PORT, normalized ("" = off). Names are refused: binding one would need DNS at start-up,
    and a name with several addresses leaves unclear where the metrics are served."""
    text = text.strip()
    if not text:
        return ""
    if text.startswith("["):
        host, close, port = text[1:].partition("]")
        if not close or not port.startswith(":"):
            raise ValueError(f"expected IP:PORT or [IPv6]:PORT, got {text!r}")
        port = port[1:]
    else:
        host, colon, port = text.rpartition(":")
        if not colon or ":" in host:
            raise ValueError(f"expected IP:PORT or [IPv6]:PORT (an IPv6 address goes in brackets), got {text!r}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address: {host!r} (names are not allowed)") from None
    number = _parse_port(port, text)
    return f"[{address}]:{number}" if address.version == 6 else f"{address}:{number}"


@dataclass(frozen=True, slots=True)
class MetricsSection:
    listen: str = key("", "IP:PORT (or [IPv6]:PORT) where Prometheus metrics are served over HTTP at /metrics "
                          "(empty: off); anyone who can reach it can read them", parse=parse_listen)


# ---------------------------------------------------------------- [reports]: recording (reports-store's keys)

_REPORTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ADDRESS = re.compile(r"[^@\s\x00-\x1f\x7f\"<>(),;:\\\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def parse_database(text: str) -> str:
    """An absolute SQLite file path, or a postgresql:// URL (libpq's connection URI)."""
    value = text.strip()
    if value.startswith(("postgresql://", "postgres://")):
        return value
    if "://" in value:
        raise ValueError(f"expected a file path or a postgresql:// URL, got {value.split('://')[0]}://...")
    if not value.startswith("/"):
        raise ValueError(f"a SQLite database needs an absolute path, got {value!r}")
    return value


def parse_absolute_path(text: str) -> str:
    value = text.strip()
    if not value.startswith("/") or value.endswith("/"):
        raise ValueError(f"expected an absolute file path, got {value!r}")
    return value


def parse_reporter_id(text: str) -> str:
    value = text.strip()
    if value and not _REPORTER_ID.fullmatch(value):
        raise ValueError(f"expected letters, digits, '.', '-' or '_' (at most 64), got {value!r}")
    return value


def parse_address(text: str) -> str:
    value = text.strip()
    if value and not _ADDRESS.fullmatch(value):
        raise ValueError(f"expected an address such as dmarc-reports@example.org, got {value!r}")
    return value


def parse_mailboxes(text: str) -> tuple[str, ...]:
    """Addresses (local@domain) and whole domains (@domain), compared case-insensitively."""
    items = []
    for item in split_list(text):
        if not _ADDRESS.fullmatch(item if not item.startswith("@") else "x" + item):
            raise ValueError(f"expected local@domain or @domain, got {item!r}")
        items.append(item.lower())
    return tuple(items)


# [reports]: sending (reports-send's keys)
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def parse_smtp_host(text: str) -> str:
    """A host name or an IP address (the MTA that takes the reports; loopback unless you relay elsewhere)."""
    value = text.strip()
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(value) or len(value) > 253:
        raise ValueError(f"expected a host name or an IP address, got {value!r}")
    return value


def parse_suppress(text: str) -> tuple[str, ...]:
    """Addresses (local@domain) and domains (example.org: it and its subdomains), compared case-insensitively."""
    items = []
    for item in split_list(text):
        lowered = item.lower().removeprefix("mailto:")
        if "@" in lowered:
            if not _ADDRESS.fullmatch(lowered):
                raise ValueError(f"expected local@domain or a domain, got {item!r}")
        elif not _HOST_NAME.fullmatch(lowered.strip(".")):
            raise ValueError(f"expected local@domain or a domain, got {item!r}")
        items.append(lowered)
    return tuple(items)


def parse_port(text: str) -> int:
    return _parse_port(text.strip(), text.strip())


@dataclass(frozen=True, slots=True)
class ReportsSection:
    enabled: bool = key(False, "record every DMARC-evaluated message for aggregate reports (RFC 9990)")
    database: str = key("/var/lib/authmilter/reports.sqlite", "SQLite file (created on first use), or a "
                        "postgresql:// URL shared by a fleet of MX hosts", parse=parse_database)
    org_name: str = key("", "the reporting organization named in every report (RFC 9990 org_name); "
                            "required when enabled")
    from_address: str = key("", "From address of report mail; its domain must pass DMARC aligned where the "
                                "reports arrive (RFC 9990 §3.5); required when enabled", parse=parse_address)
    reporter_id: str = key("", "this host's name in the store: unique per host of a fleet "
                               "(empty: the host name)", parse=parse_reporter_id)
    envelope_to: bool = key(False, "record the envelope recipient domain in each row (it reveals who gets mail)")
    flush_seconds: float = key(5.0, "seconds between the writer's transactions (the most a kill -9 can lose)",
                               minimum=0.5, maximum=300)
    queue_size: int = key(10000, "messages waiting for the writer thread; past this they are dropped, "
                                 "counted and logged (the reply is never delayed)", minimum=100)
    max_rows_per_domain_day: int = key(10000, "distinct rows per policy domain and day; the excess is counted "
                                              "in one overflow row", minimum=10)
    journal: str = key("/var/lib/authmilter/reports.journal", "where counts wait while the store cannot be "
                                                              "reached (replayed when it is back)",
                       parse=parse_absolute_path)
    grace_hours: float = key(1.0, "hours after the end of a UTC day before its reports are built",
                             minimum=0, maximum=72)
    silent_reporter_hours: float = key(12.0, "a fleet host that has not written for this long is not waited "
                                             "for", minimum=1)
    keep_days: int = key(14, "days rows are kept once their report is sent (or needed none)", minimum=1)
    report_mailboxes: tuple[str, ...] = key((), "our own report mailboxes (local@domain or @domain): mail to "
                                                "them never triggers a report (report loops)",
                                            parse=parse_mailboxes)
    report_rejects_only: bool = key(False, "yes: a domain whose only mail we rejected also gets a report "
                                           "(no: spammers publish rua= to learn which receivers exist)")
    # sending (`authmilter reports send`)
    contact: str = key("", "extra contact information in every report (RFC 9990 extra_contact_info), e.g. a "
                           "web page or a phone number")
    smtp_host: str = key("127.0.0.1", "the MTA that takes report mail by SMTP (the sendmail command fails "
                                      "under NoNewPrivileges=)", parse=parse_smtp_host)
    smtp_port: int = key(25, "its port", parse=parse_port)
    smtp_timeout: float = key(60.0, "seconds to wait on each SMTP step", minimum=1, maximum=600)
    max_rua: int = key(3, "rua= addresses a report goes to, in the order published; the rest are ignored",
                       minimum=1, maximum=20)
    suppress: tuple[str, ...] = key((), "addresses (local@domain) and domains (with their subdomains) that "
                                        "never get a report", parse=parse_suppress)
    retry_minutes: int = key(60, "after a failed send (the MTA refused, a DNS error), wait this long before "
                                 "the next try; the resend is byte for byte the same message", minimum=1)
    give_up_days: int = key(3, "a report still not sent this many days after its day ended is given up "
                               "(logged; its rows are then pruned like those of a sent report)", minimum=1)

    def problems(self) -> tuple[tuple[str, str], ...]:
        """(key, reason) for combinations no single key can refuse."""
        if not self.enabled:
            return ()
        return tuple((name, "required when enabled = yes") for name in ("org_name", "from_address")
                     if not getattr(self, name))

    @property
    def reporter(self) -> str:
        return self.reporter_id or socket.gethostname()


@dataclass(frozen=True, slots=True)
class SigningSection:
    keys: tuple[KeyLine, ...] = key((), "private keys to sign with, one per line: DOMAIN SELECTOR KEYFILE "
                                        "[from=YYYY-MM-DD] (empty: no signing)", parse=parse_key_lines)
    networks: tuple[IPNetwork, ...] = key(
        (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        "comma-separated CIDRs whose mail is signed (not [trust] networks: relays there are never signed)",
        parse=parse_networks)
    authenticated: bool = key(True, "sign mail from SASL-authenticated clients (Postfix's {auth_authen})")
    login_domains: tuple[LoginDomains, ...] = key((), "one LOGIN DOMAIN [DOMAIN...] per line: that login may have "
                                                      "mail signed for these From domains whatever its MAIL FROM",
                                                  parse=parse_login_domains)
    canonicalization: str = key("relaxed/relaxed", "header/body canonicalization of our signatures (RFC 6376 §3.4)",
                                choices=("relaxed/relaxed", "relaxed/simple", "simple/simple", "simple/relaxed"))
    expire_days: int = key(0, "days after signing when our signatures expire (x=); 0: no x= tag", minimum=0,
                           maximum=3650)


def parse_domains(text: str) -> tuple[str, ...]:
    """Comma-separated domain names, lower-case, without a trailing dot."""
    domains = []
    for item in split_list(text):
        domain = item.strip().rstrip(".").lower()
        labels = domain.split(".")
        if not domain or len(domain) > 253 or any(
                not label or len(label) > 63 or not all(ch.isalnum() or ch in "-_" for ch in label)
                for label in labels):
            raise ValueError(f"not a domain name: {item!r}")
        domains.append(domain)
    return tuple(dict.fromkeys(domains))


@dataclass(frozen=True, slots=True)
class ArcSection:
    enabled: bool = key(False, "verify ARC chains (RFC 8617): every checked message gets an arc= entry")
    trusted_sealers: tuple[str, ...] = key((), "sealing domains (ARC-Seal d=) whose recorded DMARC pass may "
                                               "override our DMARC fail (empty: no override)",
                                           parse=parse_domains)
    trusted_sealer_action: Action = key(Action.ACCEPT, "DMARC fail of mail a trusted sealer saw pass",
                                        choices=("accept", "quarantine"))


@dataclass(frozen=True, slots=True)
class Config:
    milter: MilterSection = field(default_factory=MilterSection)
    dns: DnsSection = field(default_factory=DnsSection)
    trust: TrustSection = field(default_factory=TrustSection)
    policy: PolicySection = field(default_factory=PolicySection)
    log: LogSection = field(default_factory=LogSection)
    spf: SpfSection = field(default_factory=SpfSection)
    dkim: DkimSection = field(default_factory=DkimSection)
    dmarc: DmarcSection = field(default_factory=DmarcSection)
    iprev: IprevSection = field(default_factory=IprevSection)
    srs: SrsSection = field(default_factory=SrsSection)
    forwarders: ForwardersSection = field(default_factory=ForwardersSection)
    sender: SenderSection = field(default_factory=SenderSection)
    signing: SigningSection = field(default_factory=SigningSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    reports: ReportsSection = field(default_factory=ReportsSection)
    arc: ArcSection = field(default_factory=ArcSection)
    source: str = DEFAULTS_SOURCE
    # Where the values came from; not part of what a config means, so two configs with the same values are equal.
    dropins: tuple[str, ...] = field(default=(), compare=False)   # conf.d files read after `source`, in order
    origins: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    @property
    def authserv_id(self) -> str:
        return self.milter.authserv_id or socket.getfqdn()

    def origin(self, section: str, key: str) -> str:
        """The file that set [section] key (the main file when none did): the FILE of an error about it."""
        return self.origins.get(f"{section}.{key}", self.source)


_NOT_SECTIONS = ("source", "dropins", "origins")
SECTIONS: dict[str, type] = {name: hint for name, hint in typing.get_type_hints(Config).items()
                             if name not in _NOT_SECTIONS}


# ---------------------------------------------------------------- parsing

def _section_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _parse_value(section_cls: type, fld: dataclasses.Field, text: str) -> Any:
    meta = fld.metadata
    hint = _section_types(section_cls)[fld.name]
    if meta.get("parse"):
        value = meta["parse"](text)
    elif hint is bool:
        value = parse_bool(text)
    elif hint is int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
    elif hint is float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    elif isinstance(hint, type) and issubclass(hint, StrEnum):
        allowed = meta.get("choices") or tuple(member.value for member in hint)
        lowered = text.strip().lower()
        if lowered not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        value = hint(lowered)
    elif typing.get_origin(hint) is tuple:
        value = split_list(text)
    elif hint is str:
        value = text.strip()
    else:  # pragma: no cover - a schema bug, not an operator's
        raise TypeError(f"no parser for {hint!r}")
    if meta.get("choices") and not isinstance(value, StrEnum) and value not in meta["choices"]:
        raise ValueError(f"expected one of {', '.join(meta['choices'])}, got {text!r}")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise ValueError(f"must be at least {meta['minimum']}, got {text.strip()}")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise ValueError(f"must be at most {meta['maximum']}, got {text.strip()}")
    return value


def parse_config_text(text: str, source: str) -> Config:
    """One file's text -> Config; every mistake in it is reported at once (one "FILE: ..." line each)."""
    return _build_config(source, [read_ini(text, source)], [])


def _build_config(source: str, files: list[IniFile], problems: list[str]) -> Config:
    """Files in reading order, the later overriding the earlier key by key. Every value written in any file is
    checked, overridden or not: a mistake is reported where it was made, each file's in line order."""
    merged: dict[str, dict[str, Any]] = {}
    origins: dict[str, str] = {}
    for ini in files:
        found = list(ini.problems)
        unknown = set()
        for section_name, line in ini.sections:
            if section_name not in SECTIONS and section_name not in unknown:
                unknown.add(section_name)
                found.append((line, f"{ini.source}: [{section_name}]: unknown section "
                                    f"(known: {', '.join(SECTIONS)})"))
        for entry in ini.entries:
            if entry.section not in SECTIONS:
                continue  # reported once, at its header
            problem, value = _check_entry(entry)
            if problem:
                found.append((entry.line, f"{ini.source}: [{entry.section}] {entry.key}: {problem}"))
                continue
            merged.setdefault(entry.section, {})[entry.key] = value
            origins[f"{entry.section}.{entry.key}"] = ini.source
        problems.extend(message for _line, message in sorted(found, key=lambda item: item[0]))
    if problems:
        raise ConfigError("\n".join(problems))
    sections = {name: SECTIONS[name](**values) for name, values in merged.items()}
    # Combinations no single key can refuse (a section's problems()), named by the file that set the section.
    for name, section in sections.items():
        for key_name, reason in getattr(section, "problems", tuple)():
            where = origins.get(f"{name}.{key_name}") or origins.get(f"{name}.enabled") or source
            problems.append(f"{where}: [{name}] {key_name}: {reason}")
    for name, key_name, reason in _combination_problems(sections):
        where = origins.get(f"{name}.{key_name}") or source
        problems.append(f"{where}: [{name}] {key_name}: {reason}")
    if problems:
        raise ConfigError("\n".join(problems))
    return Config(**sections, source=source, dropins=tuple(ini.source for ini in files[1:]),
                  origins=MappingProxyType(origins))


def _combination_problems(sections: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(section, key, reason) for combinations across sections."""
    spf = sections.get("spf", SpfSection())
    policy = sections.get("policy", PolicySection())
    found = []
    if spf.reject_at == "rcpt":
        if policy.dmarc_pass_overrides_spf:
            found.append(("spf", "reject_at", "rcpt cannot work with [policy] dmarc_pass_overrides_spf = yes (the "
                                              "default): a DMARC pass is only known after the headers, long after "
                                              "RCPT; set that key to no, or reject_at to eom"))
        if spf.fail_action is not Action.REJECT:
            found.append(("spf", "reject_at", "rcpt refuses an SPF fail at RCPT TO, which needs [spf] fail_action "
                                              "= reject"))
    return found


def _check_entry(entry: Entry) -> tuple[str, Any]:
    """(problem, None) or ("", the parsed value)."""
    section_cls = SECTIONS[entry.section]
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    if entry.key not in fields:
        return f"unknown key (known: {', '.join(fields)})", None
    comment = inline_comment(entry.value)
    if comment is not None:
        return (f"{comment!r} looks like a comment after the value; comments go on a line of their own "
                f"(starting with # or ;), otherwise they are part of the value"), None
    try:
        return "", _parse_value(section_cls, fields[entry.key], entry.value)
    except ValueError as exc:
        return str(exc), None


def dropin_directory(path: str | Path) -> Path:
    """conf.d beside the main file: its *.ini files are read after the main file, in name order."""
    return Path(path).parent / DROPIN_DIRECTORY


def dropin_files(path: str | Path) -> list[Path]:
    """The drop-in files of a main config file, in reading order (OSError if the directory cannot be listed).
    Hidden files are skipped: editors and package managers leave their copies under such names."""
    directory = dropin_directory(path)
    if not directory.is_dir():
        return []
    return sorted((entry for entry in directory.iterdir()
                   if entry.suffix == ".ini" and not entry.name.startswith(".")), key=lambda p: p.name)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read: {reason}") from None


def load_config(path: str | Path | None) -> Config:
    """Read and validate a config file and its conf.d/*.ini drop-ins; None means built-in defaults."""
    if path is None:
        return Config()
    path = Path(path)
    files = [read_ini(_read_text(path), str(path))]
    problems: list[str] = []
    try:
        dropins = dropin_files(path)
    except OSError as exc:
        problems.append(f"{dropin_directory(path)}: cannot read: {exc.strerror or exc}")
        dropins = []
    for dropin in dropins:
        try:
            files.append(read_ini(_read_text(dropin), str(dropin)))
        except ConfigError as exc:
            problems.append(str(exc))
    return _build_config(str(path), files, problems)


def describe_sources(cfg: Config) -> str:
    """The files a config was read from, for log lines and `authmilter check`."""
    if not cfg.dropins:
        return cfg.source
    return f"{cfg.source} + {', '.join(cfg.dropins)}"


def documented_keys() -> dict[str, dict[str, str]]:
    """section -> key -> doc, for the sample-config test and `authmilter check-config --list`."""
    return {name: {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()}
