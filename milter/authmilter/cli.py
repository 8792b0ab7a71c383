"""The `authmilter` command: run the milter, validate a config, or judge one message offline.

Exit statuses (sysexits.h where one fits): 0 accept / OK, 1 reject, 2 tempfail, 3 quarantine, 64 usage error,
70 internal error, 71 cannot listen, 75 try again later (`reports send`: a report not sent now), 78 bad
configuration. `keygen`: 73 the file exists or cannot be created, 77 not allowed to give it to the service's group.
`keys check`: 1 a key is not published or does not match, 75 only DNS lookups failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import sys
import time
from typing import Sequence

from authmilter import __version__
from authmilter.config import DEFAULT_CONFIG_PATH, Config, MilterSection, load_config, parse_nameserver
from authmilter.errors import AuthmilterError, ConfigError
from authmilter.exitcodes import EX_CONFIG, EX_OK, EX_OSERR, EX_SOFTWARE, EX_TEMPFAIL, EX_USAGE
from authmilter.results import Action

log = logging.getLogger("authmilter")

ACTION_STATUS = {Action.ACCEPT: 0, Action.REJECT: 1, Action.TEMPFAIL: 2, Action.QUARANTINE: 3}


class UsageError(AuthmilterError):
    """A bad command line: exit 64."""


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; 2 is our "tempfail", so usage errors become 64 (EX_USAGE)."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="authmilter", description="Inbound mail authentication (SPF, DKIM, DMARC, iprev) "
                                                    "as a Postfix milter.")
    parser.add_argument("--version", action="version", version=f"authmilter {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser("run", help="run the milter in the foreground", epilog=run_epilog(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", "-c", default=DEFAULT_CONFIG_PATH, metavar="FILE",
                     help=f"configuration file (default {DEFAULT_CONFIG_PATH})")

    check_config = commands.add_parser("check-config", help="validate a configuration file and exit")
    check_config.add_argument("file", nargs="?", default=DEFAULT_CONFIG_PATH, metavar="FILE",
                              help=f"configuration file (default {DEFAULT_CONFIG_PATH})")

    check = commands.add_parser("check", help="judge one message offline, as the milter would")
    check.add_argument("--ip", required=True, help="the SMTP client's IP address")
    check.add_argument("--helo", default="", help="the HELO/EHLO name the client gave")
    check.add_argument("--mail-from", required=True, metavar="ADDRESS",
                       help="the MAIL FROM address ('' or '<>' for the null sender)")
    check.add_argument("--rcpt", action="append", default=[], metavar="ADDRESS",
                       help="a recipient (repeat for several)")
    dns_source = check.add_mutually_exclusive_group()
    dns_source.add_argument("--resolver", metavar="HOST[:PORT]",
                            help="send every DNS query of this run to this server (IP, IP:port or [IPv6]:port)")
    dns_source.add_argument("--zone", metavar="FILE",
                            help="answer every DNS query from this zone file (master-file format, absolute "
                                 "names) instead of a resolver: try records before publishing them")
    config_source = check.add_mutually_exclusive_group()
    config_source.add_argument("--config", "-c", metavar="FILE",
                               help=f"configuration file (default: {DEFAULT_CONFIG_PATH} when it exists, with "
                                    f"its conf.d/*.ini, else the built-in defaults)")
    config_source.add_argument("--no-config", action="store_true",
                               help="use the built-in defaults, even when a configuration file exists")
    check.add_argument("--authenticated", metavar="USER", help="treat the client as SASL-authenticated as USER")
    check.add_argument("message", nargs="?", metavar="MESSAGE-FILE|-",
                       help="the message (headers and body); '-' reads standard input; none: a message "
                            "whose only header is From: <MAIL FROM address>")

    reports = commands.add_parser("reports", help="DMARC aggregate reports (RFC 9990): send them, or show "
                                                  "what would be sent")
    actions = reports.add_subparsers(dest="reports_command", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    send = actions.add_parser("send", help="build and mail the reports of every finished day (the daily timer)")
    show = actions.add_parser("show", help="a table of the stored days: rows, messages, pass/fail, "
                                           "destinations, status")
    for action in (send, show):
        action.add_argument("--config", "-c", default=DEFAULT_CONFIG_PATH, metavar="FILE",
                            help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
        action.add_argument("--day", metavar="YYYY-MM-DD", help="only this UTC day")
    send.add_argument("--dry-run", metavar="DIR", help="write the .xml.gz files into DIR instead of mailing "
                                                       "them; nothing in the store changes (--day may be today)")

    keygen = commands.add_parser("keygen", help="write a new DKIM signing key and print its DNS record")
    keygen.add_argument("domain", metavar="DOMAIN", help="the domain the key signs for (d=)")
    keygen.add_argument("--selector", required=True, metavar="SEL", help="the selector (s=), e.g. 2026a")
    keygen.add_argument("--type", required=True, choices=("rsa", "ed25519"), help="key type")
    keygen.add_argument("--bits", type=int, metavar="N", help="RSA key size (default 2048)")
    keygen.add_argument("--out", required=True, metavar="FILE", help="the private key file to create "
                        "(never overwritten; owner root, the service user's group, mode 0640)")

    keys = commands.add_parser("keys", help="signing keys: keys check")
    keys_commands = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", parser_class=_Parser)
    keys_commands.required = True
    keys_check = keys_commands.add_parser("check", help="is each [signing] key published in DNS, and does it "
                                                        "match the private key?")
    keys_check.add_argument("--config", "-c", default=DEFAULT_CONFIG_PATH, metavar="FILE",
                            help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    return parser


def run_epilog() -> str:
    """What an administrator needs beside the options: where Postfix finds us, signals, exit statuses."""
    default_socket = MilterSection().socket
    return f"""\
socket:
  [milter] socket in the configuration file; default {default_socket}
  (Debian's chrooted Postfix: smtpd_milters = unix:authmilter/authmilter.sock). A missing socket
  directory is created with mode 0750 and [milter] socket_group, as systemd/authmilter.tmpfiles does.

configuration:
  FILE, then FILE's directory's conf.d/*.ini in name order (a later file overrides a key).

signals:
  SIGHUP, SIGUSR1  reload the configuration: new transactions use it, a bad file is logged and the
                   running configuration kept (systemctl reload authmilter sends SIGUSR1)
  SIGTERM, SIGINT  stop cleanly

exit status:
  {EX_OK}   stopped by SIGTERM or SIGINT
  {EX_USAGE}  usage error
  {EX_SOFTWARE}  internal error (logged with a traceback)
  {EX_OSERR}  cannot listen on the socket (in use, no permission), or libmilter failed
  {EX_CONFIG}  bad configuration: FILE: [section] key: reason, one line per mistake
"""


def main(argv: Sequence[str] | None = None) -> int:
    _bootstrap_logging()
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EX_USAGE
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    try:
        if args.command == "check-config":
            return cmd_check_config(args.file)
        if args.command == "run":
            return cmd_run(args.config)
        if args.command == "reports":
            return cmd_reports(args)
        if args.command == "keygen":
            return cmd_keygen(args)
        if args.command == "keys":
            return cmd_keys_check(args.config)
        return cmd_check(args)
    except UsageError as exc:
        print(f"authmilter {args.command}: {exc}", file=sys.stderr)
        return EX_USAGE
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception:
        log.exception("internal error")
        return EX_SOFTWARE


def _bootstrap_logging() -> None:
    """Until a config says otherwise, errors go to stderr."""
    from authmilter import logsetup
    from authmilter.config import LogSection

    logsetup.configure(LogSection())


# ---------------------------------------------------------------- commands

def cmd_check_config(path: str) -> int:
    cfg = load_config(path)
    from authmilter.daemon import validate_runtime

    validate_runtime(cfg)
    for source in (cfg.source, *cfg.dropins):
        print(f"{source}: OK")
    return EX_OK


def cmd_run(path: str) -> int:
    from authmilter import daemon

    cfg = load_config(path)
    daemon.validate_runtime(cfg)
    return daemon.run(path, cfg)


def cmd_reports(args: argparse.Namespace) -> int:
    from authmilter import logsetup
    from authmilter.reports import commands as reports

    cfg = load_config(args.config)
    logsetup.configure(cfg.log)
    try:
        if args.reports_command == "send":
            return reports.send_command(cfg, day=args.day, dry_run=args.dry_run)
        return reports.show_command(cfg, day=args.day)
    except reports.DayError as exc:
        raise UsageError(str(exc)) from None


def cmd_check(args: argparse.Namespace) -> int:
    # judge.py, not the adapter: checking a file must not need libmilter.
    from authmilter import checknotes, logsetup
    from authmilter.context import Connection, Envelope, MessageContext, bare_address
    from authmilter.runtime import build_runtime

    try:
        client_ip = ipaddress.ip_address(args.ip)
    except ValueError:
        raise UsageError(f"--ip: not an IP address: {args.ip!r}") from None
    cfg, config_note = checknotes.choose_config(args.config, args.no_config)
    if args.resolver:
        try:
            cfg = dataclasses.replace(cfg, dns=dataclasses.replace(
                cfg.dns, nameservers=(parse_nameserver(args.resolver),)))
        except ValueError as exc:
            raise UsageError(f"--resolver: {exc}") from None
    logsetup.configure(cfg.log)
    zone = load_zone(args.zone, cfg) if args.zone else None
    checknotes.tell(config_note)
    mail_from = bare_address(args.mail_from)
    message = read_message(args.message, mail_from, args.helo)
    ctx = MessageContext(Connection(client_ip, "", args.helo, args.authenticated or None),
                         Envelope(mail_from, tuple(bare_address(r) for r in args.rcpt), "check"),
                         message)
    runtime = build_runtime(cfg, serving=False)
    checknotes.tell(checknotes.authserv_id_note(cfg, runtime.authserv_id))
    if zone is not None:
        runtime.resolver.close()
    lookups = checknotes.RecordingResolver(zone or runtime.resolver)  # to tell when DNS looks unusable
    runtime = dataclasses.replace(runtime, resolver=lookups)
    try:
        verdict_status = _judge_and_print(ctx, runtime)
    finally:
        from authmilter.observers import close_all

        close_all(runtime.observers)
        runtime.resolver.close()
    checknotes.tell(checknotes.dns_unusable_note(lookups.log, args.zone))
    return verdict_status


def load_zone(path: str, cfg: Config):
    from authmilter.zonefile import ZoneData, ZoneFileError, ZoneResolver

    try:
        return ZoneResolver(ZoneData.load(path), cfg.dns)
    except ZoneFileError as exc:
        raise UsageError(f"--zone: {exc}") from None


def cmd_keygen(args: argparse.Namespace) -> int:
    from authmilter.signing.keygen import KeygenError, generate

    try:
        made = generate(args.domain, args.selector, args.type, args.bits, args.out)
    except KeygenError as exc:
        print(f"authmilter keygen: {exc}", file=sys.stderr)
        return exc.status
    # Standard output carries only the record, so it can go straight into a zone file.
    print(made.zone_line)
    print(f"wrote {made.line.path} ({made.description}, owner {made.owner}, group {made.group}, mode 0640)\n"
          f"publish the record above, then add to [signing] keys:\n    {made.line}", file=sys.stderr)
    return EX_OK



def cmd_keys_check(path: str) -> int:
    """0: every key published and matching; 1: a key is not; 75: only lookups failed (try again)."""
    from authmilter import logsetup
    from authmilter.resolver import Resolver
    from authmilter.signing.check import check_keyring
    from authmilter.signing.keys import load_keyring

    cfg = load_config(path)
    logsetup.configure(cfg.log)
    keyring = load_keyring(cfg)
    if keyring is None:
        print(f"{path}: [signing] keys is empty: nothing signs")
        return EX_OK
    resolver = Resolver(cfg.dns)
    try:
        checks = check_keyring(keyring, resolver)
    finally:
        resolver.close()
    for check in checks:
        print(("ok       " if check.ok else "PROBLEM  ") + check.describe())
    if all(check.ok for check in checks):
        return EX_OK
    return EX_TEMPFAIL if all(check.ok or check.published.temporary for check in checks) else 1


def _judge_and_print(ctx, runtime) -> int:
    from authmilter import checknotes
    from authmilter.judge import judge_message, judge_recipient

    started = time.monotonic()
    # Recipient-stage decisions (e.g. a bounce to a forged SRS address) come first, as in the milter.
    for rcpt in ctx.envelope.rcpts:
        verdict = judge_recipient(ctx, rcpt, runtime, now=time.time())
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            print(f"action: {describe(verdict)} (recipient {rcpt})")
            return ACTION_STATUS[verdict.action]
    judgement = judge_message(ctx, runtime, now=time.time(), started=started)
    for name, value in judgement.headers:
        print(f"{name}:{value}")
    if judgement.results.skipped:
        print(checknotes.skipped_line(judgement.results.skipped, ctx.connection, runtime.cfg))
    print(f"action: {describe(judgement.verdict)}")
    return ACTION_STATUS[judgement.verdict.action]


def describe(verdict) -> str:
    """'accept', 'reject 550 5.7.1 text', 'tempfail 451 4.7.24 text', 'quarantine reason'."""
    if verdict.action is Action.ACCEPT:
        return "accept"
    if verdict.action is Action.QUARANTINE:
        return f"quarantine {verdict.text or verdict.reason}".rstrip()
    default_code, default_status = ("550", "5.7.1") if verdict.action is Action.REJECT else ("451", "4.7.1")
    parts = [verdict.action.value, verdict.code or default_code, verdict.status or default_status, verdict.text]
    return " ".join(p for p in parts if p)


# ---------------------------------------------------------------- reading a message file

MBOX_PREFIX = b"From "
MBOX_HEADER = b"X-Mailbox-Line"

def read_message(source: str | None, mail_from: str, helo: str):
    from authmilter.context import Header, Message

    if source is None:
        # No message: judge the envelope with the smallest honest message, whose author is the envelope sender
        # (postmaster@HELO for the null sender), so DMARC shows what SPF alignment alone would give.
        author = mail_from or (f"postmaster@{helo}" if helo else "postmaster")
        return Message((Header(b"From", b" " + author.encode("utf-8", "surrogateescape")),))
    if source == "-":
        raw = sys.stdin.buffer.read()
    else:
        try:
            with open(source, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    if raw.startswith(MBOX_PREFIX):
        from authmilter import checknotes

        checknotes.tell(checknotes.mbox_line_note(raw.split(b"\n", 1)[0].rstrip(b"\r")))
    headers, body = parse_message(raw)
    return Message(tuple(Header(name, value) for name, value in headers), body)


def parse_message(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Split raw bytes into (name, value) headers as the milter receives them, and a CRLF body.

    Values keep their leading space and CRLF+WSP folding, as with SMFIP_HDR_LEADSPC. A first line starting with
    "From " becomes an X-Mailbox-Line header, as Postfix's cleanup makes it before the milter sees the message
    (even "From : <a@example>", which would otherwise read as a From header). A line that is neither a header
    nor a continuation ends the header, as Postfix treats it.
    """
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = text.split(b"\n")
    headers: list[tuple[bytes, bytes]] = []
    if lines and lines[0].startswith(MBOX_PREFIX):
        headers.append((MBOX_HEADER, b" " + lines[0]))
        lines = lines[1:]
    index = 0
    while index < len(lines):
        line = lines[index]
        if line == b"":
            index += 1
            break
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\r\n" + line)
        elif b":" in line and line.split(b":", 1)[0].strip() and b" " not in line.split(b":", 1)[0].strip():
            name, value = line.split(b":", 1)
            headers.append((name, value))
        else:
            break  # body starts without a blank line
        index += 1
    body_lines = lines[index:]
    if body_lines and body_lines[-1] == b"":
        body_lines = body_lines[:-1]  # the final line end
    body = b"".join(line + b"\r\n" for line in body_lines)
    return headers, body
