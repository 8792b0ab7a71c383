"""The `authmilter` command: run the milter, validate a config, or judge one message offline.

Exit statuses (sysexits.h where one fits): 0 accept / OK, 1 reject, 2 tempfail, 3 quarantine, 64 usage error,
70 internal error, 71 cannot listen, 78 bad configuration. `keygen`: 73 the file exists or cannot be created, 77
not allowed to give it to the service's group. `keys check`: 1 a key is not published or does not match, 75 only
DNS lookups failed.
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
from authmilter.config import DEFAULT_CONFIG_PATH, Config, load_config, parse_nameserver
from authmilter.errors import ConfigError
from authmilter.results import Action

log = logging.getLogger("authmilter")

EX_OK = 0
EX_USAGE = 64
EX_SOFTWARE = 70
EX_CONFIG = 78
ACTION_STATUS = {Action.ACCEPT: 0, Action.REJECT: 1, Action.TEMPFAIL: 2, Action.QUARANTINE: 3}


class UsageError(Exception):
    pass


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

    run = commands.add_parser("run", help="run the milter in the foreground")
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
    check.add_argument("--resolver", metavar="HOST[:PORT]",
                       help="send every DNS query of this run to this server (IP, IP:port or [IPv6]:port)")
    check.add_argument("--config", "-c", metavar="FILE", help="configuration file (default: built-in defaults)")
    check.add_argument("--authenticated", metavar="USER", help="treat the client as SASL-authenticated as USER")
    check.add_argument("message", nargs="?", metavar="MESSAGE-FILE|-",
                       help="the message (headers and body); '-' reads standard input; none: a message "
                            "whose only header is From: <MAIL FROM address>")

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
    print(f"{path}: OK")
    return EX_OK


def cmd_run(path: str) -> int:
    from authmilter import daemon

    cfg = load_config(path)
    daemon.validate_runtime(cfg)
    return daemon.run(path, cfg)


def cmd_check(args: argparse.Namespace) -> int:
    # judge.py, not the adapter: checking a file must not need libmilter.
    from authmilter import judge, logsetup
    from authmilter.context import Connection, Envelope, MessageContext

    try:
        client_ip = ipaddress.ip_address(args.ip)
    except ValueError:
        raise UsageError(f"--ip: not an IP address: {args.ip!r}") from None
    cfg: Config = load_config(args.config) if args.config else Config()
    if args.resolver:
        try:
            cfg = dataclasses.replace(cfg, dns=dataclasses.replace(
                cfg.dns, nameservers=(parse_nameserver(args.resolver),)))
        except ValueError as exc:
            raise UsageError(f"--resolver: {exc}") from None
    logsetup.configure(cfg.log)
    mail_from = judge.strip_brackets(args.mail_from)
    message = read_message(args.message, mail_from, args.helo)
    ctx = MessageContext(Connection(client_ip, "", args.helo, args.authenticated or None),
                         Envelope(mail_from, tuple(judge.strip_brackets(r) for r in args.rcpt), "check"),
                         message)
    runtime = judge.build_runtime(cfg)
    try:
        verdict_status = _judge_and_print(ctx, runtime)
    finally:
        runtime.resolver.close()
    return verdict_status


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


EX_TEMPFAIL = 75


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
    from authmilter import judge, logline, policy
    from authmilter.results import Verdict

    started = time.monotonic()
    # Recipient-stage decisions (e.g. a bounce to a forged SRS address) come first, as in the milter.
    for rcpt in ctx.envelope.rcpts:
        verdict: Verdict = policy.decide_recipient(rcpt, runtime.cfg, now=time.time())
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            print(f"action: {describe(verdict)} (recipient {rcpt})")
            return ACTION_STATUS[verdict.action]
    judgement = judge.judge(ctx, runtime.resolver.for_message(), runtime.cfg, runtime.authserv_id,
                            now=time.time())
    elapsed_ms = (time.monotonic() - started) * 1000.0
    log.info("%s", logline.format_line(ctx, judgement.results, judgement.verdict, elapsed_ms))
    if judgement.ar_value:
        print(f"{judge.AR_NAME}:{judgement.ar_value}")
    if judgement.received_spf:
        print(f"{judge.RECEIVED_SPF_NAME}:{judgement.received_spf}")
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
    headers, body = parse_message(raw)
    return Message(tuple(Header(name, value) for name, value in headers), body)


def parse_message(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Split raw bytes into (name, value) headers as the milter receives them, and a CRLF body.

    Values keep their leading space and CRLF+WSP folding, as with SMFIP_HDR_LEADSPC. An mbox "From " line is
    skipped. A line that is neither a header nor a continuation ends the header, as Postfix treats it.
    """
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = text.split(b"\n")
    if lines and lines[0].startswith(b"From "):
        lines = lines[1:]
    headers: list[tuple[bytes, bytes]] = []
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
