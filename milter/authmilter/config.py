"""INI file -> one frozen Config. Parsed once; a reload builds a new object and swaps one reference.

Each section is a frozen dataclass below; each field is one key, with its default and a one-line doc in the field
metadata. The parser is generic over the field types, so adding a key is adding a field (and documenting it in
config/authmilter.ini, which a test checks). Any problem is a ConfigError "FILE: [section] key: reason".
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import ipaddress
import re
import socket
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable

from authmilter.cpu import parse_cpu
from authmilter.errors import ConfigError
from authmilter.results import Action
from authmilter.signing.keylines import KeyLine, LoginDomains, parse_key_lines, parse_login_domains

DEFAULT_CONFIG_PATH = "/etc/authmilter/authmilter.ini"

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
                           parse=parse_authserv_id)
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


@dataclass(frozen=True, slots=True)
class TrustSection:
    networks: tuple[IPNetwork, ...] = key(
        (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        "comma-separated CIDRs whose mail is not checked (may be empty)", parse=parse_networks)
    authenticated: bool = key(True, "skip the checks for SASL-authenticated senders")


@dataclass(frozen=True, slots=True)
class PolicySection:
    enforce: bool = key(True, "no = monitor mode: record and log every verdict, never reject or tempfail")
    dmarc_pass_overrides_spf: bool = key(True, "an SPF fail or softfail action is not applied when DMARC "
                                               "passes (forwarded mail whose DKIM signature survived)")


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


@dataclass(frozen=True, slots=True)
class DkimSection:
    enabled: bool = key(True, "verify DKIM signatures")
    max_signatures: int = key(5, "signatures verified per message; the rest get one dkim=policy entry",
                              minimum=1, maximum=50)
    min_key_bits: int = key(1024, "RSA keys shorter than this are refused (dkim=policy)", minimum=512)
    allow_sha1: bool = key(False, "accept rsa-sha1 signatures (RFC 8301 says not to)")
    time_tolerance: int = key(300, "seconds of clock skew allowed on t= and x=", minimum=0)


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
    source: str = "<defaults>"

    @property
    def authserv_id(self) -> str:
        return self.milter.authserv_id or socket.getfqdn()


SECTIONS: dict[str, type] = {name: hint for name, hint in typing.get_type_hints(Config).items() if name != "source"}


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
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00no-default-section")
    parser.optionxform = str  # keys are case-sensitive, so a typo in case is reported, not silently accepted
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError(_syntax_error(source, exc)) from None
    sections: dict[str, Any] = {}
    for section_name in parser.sections():
        if section_name not in SECTIONS:
            raise ConfigError(f"{source}: [{section_name}]: unknown section "
                              f"(known: {', '.join(SECTIONS)})")
        section_cls = SECTIONS[section_name]
        fields = {f.name: f for f in dataclasses.fields(section_cls)}
        values = {}
        for key_name, raw in parser.items(section_name):
            if key_name not in fields:
                raise ConfigError(f"{source}: [{section_name}] {key_name}: unknown key "
                                  f"(known: {', '.join(fields)})")
            try:
                values[key_name] = _parse_value(section_cls, fields[key_name], raw)
            except ValueError as exc:
                raise ConfigError(f"{source}: [{section_name}] {key_name}: {exc}") from None
        sections[section_name] = section_cls(**values)
    return Config(**sections, source=source)


def _syntax_error(source: str, exc: configparser.Error) -> str:
    """configparser's messages repeat the file name and span lines; ours follow "FILE: [section] key: reason"."""
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"{source}: [{exc.section}] {exc.option}: duplicate key (line {exc.lineno})"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"{source}: [{exc.section}]: duplicate section (line {exc.lineno})"
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"{source}: line {exc.lineno}: expected a [section] header, got {exc.line.strip()!r}"
    if isinstance(exc, configparser.ParsingError):
        lineno, line = exc.errors[0]
        if line[:1] in ("'", '"'):  # configparser stores the repr of the offending line
            line = ast.literal_eval(line)
        return f"{source}: line {lineno}: cannot parse {line.strip()!r} (expected key = value)"
    return f"{source}: {' '.join(str(exc).split())}"


def load_config(path: str | Path | None) -> Config:
    """Read and validate a config file; None means built-in defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read: {reason}") from None
    return parse_config_text(text, str(path))


def documented_keys() -> dict[str, dict[str, str]]:
    """section -> key -> doc, for the sample-config test and `authmilter check-config --list`."""
    return {name: {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()}
