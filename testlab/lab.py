"""The lab: DNS (NSD + validating Unbound), Postfix and authmilter instances in one private network namespace.

    with Lab.start() as lab:
        sent = lab.send(mail_from="user@example.org", source=GOOD_V4)
        message = lab.delivered(sent)            # waits (bounded) for the Maildir file
        message.get_all("Authentication-Results")
        lab.milter_log(sent)                     # the milter's key=value line for that queue id, as a dict

Everything runs as subprocesses inside the namespace under `timeout`; see netns.py. Start-up takes well under
a few seconds: keys are ECDSA, every server is polled for readiness rather than waited for.
"""

from __future__ import annotations

import base64
import email.policy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from pathlib import Path

from testlab import dnslab, milterlab, postfixlab
from testlab.netns import LIFETIME_SECONDS, Namespace, Process, wait_until
from testlab.zonedata import CLIENT_V6, GOOD_HELO, GOOD_V4, RECIPIENT_DOMAIN, all_zones

NAMESPACE_PREFIX = "authmilter-e2e-"
SENDER_SCRIPT = Path(__file__).with_name("smtpsend.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
DELIVERY_TIMEOUT = 30.0
LOG_TIMEOUT = 15.0
KEEP_ENV = "AUTHMILTER_E2E_KEEP"  # set to 1 to keep the lab directory (configs, logs, mail) after the run


def missing_tools() -> str:
    for tool in ("nsd", "unbound", "ldns-keygen", "ldns-signzone", "ldns-key2ds", "dig", "timeout", "openssl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return postfixlab.available()


@dataclass(frozen=True, slots=True)
class Stage:
    stage: str   # connect, helo, mail, rcpt, data, eom, error
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.code} {self.text}"


@dataclass(frozen=True, slots=True)
class Sent:
    """What the SMTP client saw."""

    stages: tuple[Stage, ...]
    accepted: bool
    queue_id: str | None     # from "250 … queued as ID"; None when the message was refused
    message_id: str          # without angle brackets; how the lab finds the message again
    variant: str

    def reply(self, stage: str) -> Stage:
        """The last reply for that stage (e.g. "eom" for end of DATA); AssertionError if there was none."""
        for item in reversed(self.stages):
            if item.stage == stage:
                return item
        raise AssertionError(f"no {stage} reply; the client saw: {'; '.join(map(str, self.stages))}")

    @property
    def last(self) -> Stage:
        return self.stages[-1]


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message as it landed in the Maildir."""

    raw: bytes
    path: Path

    @property
    def headers(self) -> list[tuple[str, str]]:
        """(name, value) in order, values unfolded."""
        parsed = BytesParser(policy=email.policy.compat32).parsebytes(self.raw, headersonly=True)
        # compat32 hands 8-bit (SMTPUTF8) values back as Header objects: str() gives their text either way.
        return [(name, re.sub(r"\r?\n[ \t]", " ", str(value))) for name, value in parsed.items()]

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def body(self) -> bytes:
        return self.raw.split(b"\n\n", 1)[1] if b"\n\n" in self.raw else b""


@dataclass
class MilterInstance:
    variant: str
    port: int
    socket: Path
    config: Path
    log: Path
    process: Process | None = None
    error: str = ""   # why it is not running


@dataclass
class Lab:
    directory: Path
    namespace: Namespace
    milters: dict[str, MilterInstance] = field(default_factory=dict)
    postfix_config: Path | None = None
    _postfix: Process | None = None
    _mail_index: dict[Path, str] = field(default_factory=dict)  # Maildir file -> its Message-ID

    # ------------------------------------------------------------------ life cycle

    @classmethod
    def start(cls, variants: dict[str, milterlab.Overrides] | None = None) -> "Lab":
        _remove_stale_namespaces()
        # The PID in the name lets a later run recognise (and remove) what a killed run left behind.
        directory = Path(tempfile.mkdtemp(prefix=f"{NAMESPACE_PREFIX}{os.getpid()}-"))
        # Postfix's smtpd runs as the postfix user and must reach the milter sockets in here.
        directory.chmod(0o755)
        lab = cls(directory, Namespace(f"{NAMESPACE_PREFIX}{os.getpid()}"))
        try:
            lab.namespace.create(tuple(f"{address}/128" for address in CLIENT_V6))
            lab._start_dns()
            lab._prepare_milters(variants if variants is not None else milterlab.VARIANTS)
            lab._start_postfix()
            lab._start_milters()
        except BaseException:
            lab.stop()
            raise
        return lab

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self.namespace.destroy()
        if os.environ.get(KEEP_ENV):
            print(f"\nauthmilter e2e lab kept in {self.directory}", file=sys.stderr)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    # ------------------------------------------------------------------ DNS

    def _start_dns(self) -> None:
        dns_dir = self.directory / "dns"
        zones = all_zones()
        files, anchor = dnslab.ZoneBuilder(dns_dir).build(zones)
        (dns_dir / "nsd.conf").write_text(dnslab.nsd_conf(dns_dir, files))
        (dns_dir / "unbound.conf").write_text(dnslab.unbound_conf(dns_dir, anchor, zones))
        nsd = self.namespace.spawn("nsd", "nsd", "-d", "-c", str(dns_dir / "nsd.conf"), log=dns_dir / "nsd.out")
        self._wait_dns(dnslab.NSD_ADDRESS, nsd)
        # Unbound only after NSD answers: otherwise it would remember NSD as down and SERVFAIL for a while.
        unbound = self.namespace.spawn("unbound", "unbound", "-d", "-c", str(dns_dir / "unbound.conf"),
                                       log=dns_dir / "unbound.out")
        self._wait_dns(dnslab.UNBOUND_ADDRESS, unbound)

    def _wait_dns(self, server: str, process: Process) -> None:
        def answers() -> bool:
            _check_alive(process)
            reply = self.dig("test.", "SOA", server=server)
            return "status: NOERROR" in reply

        wait_until(answers, 15, f"{process.name} on {server}")

    def dig(self, name: str, rdtype: str, *, server: str = dnslab.UNBOUND_ADDRESS, dnssec: bool = True) -> str:
        """dig's full output for one query, asked from inside the namespace."""
        options = ["+dnssec"] if dnssec else []
        result = self.namespace.run("dig", *options, "+time=5", "+tries=1", f"@{server}", name, rdtype,
                                    check=False, timeout=15)
        return result.stdout.decode("utf-8", "replace")

    # ------------------------------------------------------------------ Postfix

    def _start_postfix(self) -> None:
        listeners = {postfixlab.NO_MILTER_PORT: ""}
        for milter in self.milters.values():
            listeners[milter.port] = f"unix:{milter.socket}"
        listeners[postfixlab.SMTP_PORT] = f"unix:{self.milters['default'].socket}" if "default" in self.milters \
            else ""
        self.postfix_config = postfixlab.prepare(self.directory / "postfix", listeners)
        # `postfix check` creates the queue directories with the owners and modes Postfix insists on.
        self.namespace.run("postfix", "-c", str(self.postfix_config), "check")
        # The master in the foreground (-d) under our own PID, so `timeout` bounds it and teardown can stop it;
        # -e makes it exit on its own as well.
        self._postfix = self.namespace.spawn(
            "postfix", str(postfixlab.DAEMON_DIRECTORY / "master"), "-c", str(self.postfix_config), "-d",
            "-e", str(LIFETIME_SECONDS), log=self.directory / "postfix" / "master.out")
        wait_until(lambda: _check_alive(self._postfix) or _listening(self._postfix, postfixlab.SMTP_PORT), 20,
                   "Postfix to listen on port 25")

    @property
    def maillog_path(self) -> Path:
        return self.directory / "postfix" / "log" / "maillog"

    def maillog(self, queue_id: str | None = None) -> list[str]:
        try:
            lines = self.maillog_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return [line for line in lines if queue_id is None or f" {queue_id}: " in line]

    # ------------------------------------------------------------------ milters

    def _prepare_milters(self, variants: dict[str, milterlab.Overrides]) -> None:
        milter_dir = self.directory / "milter"
        milter_dir.mkdir(mode=0o755)
        for index, (name, overrides) in enumerate(variants.items()):
            self._add_milter(name, overrides, milterlab.FIRST_VARIANT_PORT + index)

    def _add_milter(self, name: str, overrides: milterlab.Overrides, port: int) -> MilterInstance:
        if not re.fullmatch(r"[a-z0-9_]+", name):
            raise ValueError(f"variant names are [a-z0-9_]+: {name!r}")
        milter_dir = self.directory / "milter"
        instance = MilterInstance(name, port, milter_dir / f"{name}.sock", milter_dir / f"{name}.ini",
                                  milter_dir / f"{name}.log")
        instance.config.write_text(milterlab.config_text(instance.socket, overrides))
        self.milters[name] = instance
        return instance

    def _start_milters(self) -> None:
        for instance in self.milters.values():
            self._spawn_milter(instance)
        for instance in self.milters.values():
            self._wait_milter(instance)

    def _spawn_milter(self, instance: MilterInstance) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        instance.process = self.namespace.spawn(
            f"authmilter-{instance.variant}", sys.executable, "-m", "authmilter", "run", "--config",
            str(instance.config), log=instance.log, env=env)

    def _wait_milter(self, instance: MilterInstance) -> None:
        assert instance.process is not None
        try:
            wait_until(lambda: _check_alive(instance.process) or instance.socket.exists(), 20,
                       f"authmilter ({instance.variant}) to create {instance.socket}")
        except (RuntimeError, TimeoutError) as exc:
            instance.error = f"{exc}\n{_tail(instance.log)}"

    def variant(self, name: str, overrides: milterlab.Overrides) -> str:
        """Start one more milter variant with its own Postfix port (for a module that needs its own policy);
        returns the variant name to pass to send()."""
        if name in self.milters:
            return name
        port = milterlab.FIRST_VARIANT_PORT + len(self.milters)
        instance = self._add_milter(name, overrides, port)
        self._spawn_milter(instance)
        self._wait_milter(instance)
        assert self.postfix_config is not None
        with open(self.postfix_config / "master.cf", "a") as master_cf:
            master_cf.write(f"{port} inet n - n - - smtpd -o smtpd_milters=unix:{instance.socket}\n")
        self.namespace.run("postfix", "-c", str(self.postfix_config), "reload")
        wait_until(lambda: _listening(self._postfix, port), 20, f"Postfix to listen on port {port}")
        return name

    def milter_port(self, variant: str) -> int:
        instance = self.milters[variant]
        if instance.error or instance.process is None:
            raise AssertionError(f"authmilter variant {variant!r} is not running: {instance.error}")
        _check_alive(instance.process)
        return instance.port

    def milter_log_lines(self, variant: str = "default") -> list[str]:
        try:
            return self.milters[variant].log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def milter_log(self, sent: Sent, *, timeout: float = LOG_TIMEOUT) -> dict[str, str]:
        """The milter's per-message line for this message, parsed into key -> value (waits, bounded).
        The whole line is under the key "_line"."""
        return self.milter_log_by_queue_id(self.queue_id(sent), sent.variant, timeout=timeout)

    def milter_log_by_queue_id(self, queue_id: str, variant: str = "default", *,
                               timeout: float = LOG_TIMEOUT) -> dict[str, str]:
        def find() -> dict[str, str] | None:
            for line in self.milter_log_lines(variant):
                fields = parse_log_fields(line)
                if fields.get("queue_id") == queue_id:
                    return fields | {"_line": line}
            return None

        try:
            return wait_until(find, timeout, f"the milter's log line for queue id {queue_id}")
        except TimeoutError:
            raise AssertionError(f"no log line with queue_id={queue_id} from authmilter ({variant}):\n"
                                 f"{_tail(self.milters[variant].log)}") from None

    # ------------------------------------------------------------------ sending and reading mail

    def send(self, *, mail_from: str, rcpts: tuple[str, ...] | list[str] = (f"user@{RECIPIENT_DOMAIN}",),
             source: str = GOOD_V4, helo: str = GOOD_HELO, variant: str = "default",
             headers: list[tuple[str, str]] | None = None, body: str = "Hello from the lab.\n",
             data: bytes | None = None, ehlo: bool = True, mail_params: str = "",
             author: str | None = None) -> Sent:
        """Send one message over SMTP from `source` (an address on the namespace's lo).

        The message is `data` as given (a Message-ID is prepended when it has none), or built from `headers`
        (prepended, in order, to From/To/Subject/Date/Message-ID) and `body`; the From address is `author`, by
        default the envelope sender (postmaster@HELO for the null sender).
        """
        port = self.milter_port(variant) if variant else postfixlab.NO_MILTER_PORT
        message_id = f"{uuid.uuid4().hex}@lab.test"
        if data is None:
            if author is None:
                author = mail_from if "@" in mail_from else f"postmaster@{helo}"
            lines = [f"{name}: {value}" for name, value in headers or []]
            lines += [f"From: <{author}>", f"To: <{rcpts[0]}>", "Subject: authmilter e2e",
                      "Date: Sun, 22 Nov 2026 12:00:00 +0000", f"Message-ID: <{message_id}>", "", body]
            data = "\r\n".join(lines).encode("utf-8")
        else:
            found = re.search(rb"(?im)^message-id:\s*<([^>\r\n]+)>", data.split(b"\r\n\r\n", 1)[0])
            if found:
                message_id = found.group(1).decode("utf-8", "replace")
            else:
                data = f"Message-ID: <{message_id}>\r\n".encode() + data
        host = "::1" if ":" in source else "127.0.0.1"
        request = {"host": host, "port": port, "source": source, "helo": helo, "mail_from": mail_from,
                   "rcpts": list(rcpts), "data_b64": base64.b64encode(data).decode(), "ehlo": ehlo,
                   "mail_params": mail_params}
        run = self.namespace.run(sys.executable, str(SENDER_SCRIPT), input=json.dumps(request).encode(),
                                 timeout=180, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"the SMTP client failed: {run.stderr.decode(errors='replace')}")
        result = json.loads(run.stdout)
        return Sent(tuple(Stage(**stage) for stage in result["stages"]), result["accepted"], result["queue_id"],
                    message_id, variant)

    def queue_id(self, sent: Sent, *, timeout: float = LOG_TIMEOUT) -> str:
        """The Postfix queue id, from the 250 reply or, for a refused message, from cleanup's log line."""
        if sent.queue_id:
            return sent.queue_id
        pattern = re.compile(r" ([0-9A-Za-z]+): message-id=<" + re.escape(sent.message_id) + ">")

        def find() -> str | None:
            for line in self.maillog():
                found = pattern.search(line)
                if found:
                    return found.group(1)
            return None

        return wait_until(find, timeout, f"Postfix to log message-id {sent.message_id}")

    def delivered(self, sent: Sent, *, timeout: float = DELIVERY_TIMEOUT) -> Delivered:
        """Wait (bounded) for the message in the Maildir and return it."""
        if not sent.accepted:
            raise AssertionError(f"the message was not accepted: {'; '.join(map(str, sent.stages))}")
        try:
            return wait_until(lambda: self._find_mail(sent.message_id), timeout,
                              f"delivery of {sent.queue_id}")
        except TimeoutError:
            raise AssertionError(f"{sent.queue_id} was not delivered within {timeout:g}s:\n"
                                 + "\n".join(self.maillog(sent.queue_id))) from None

    def is_delivered(self, sent: Sent) -> bool:
        """Whether the message is in the Maildir now. For refused messages nothing is queued, so no wait."""
        return self._find_mail(sent.message_id) is not None

    def _find_mail(self, message_id: str) -> Delivered | None:
        new = self.directory / "postfix" / "mail" / "inbox" / "new"
        if not new.is_dir():
            return None
        wanted = f"<{message_id}>"
        for path in new.iterdir():
            if path not in self._mail_index:
                raw = path.read_bytes()
                found = re.search(rb"(?im)^message-id:\s*(<[^>\r\n]*>)", raw.split(b"\n\n", 1)[0])
                self._mail_index[path] = found.group(1).decode("utf-8", "replace") if found else ""
            if self._mail_index[path] == wanted:
                return Delivered(path.read_bytes(), path)
        return None

    def debug_report(self) -> str:
        """Tails of every log, for a failing test's report."""
        parts = [f"lab directory: {self.directory}", "--- Postfix maillog", *self.maillog()[-40:]]
        for instance in self.milters.values():
            parts += [f"--- authmilter ({instance.variant})", _tail(instance.log, 30)]
        parts += ["--- unbound", _tail(self.directory / "dns" / "unbound.log", 15)]
        return "\n".join(parts)


# ---------------------------------------------------------------------- helpers

_FIELD = re.compile(r'([a-z0-9_]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_log_fields(line: str) -> dict[str, str]:
    """key=value pairs of one log line (quoted values unquoted; escapes kept as written)."""
    fields = {}
    for key, value in _FIELD.findall(line):
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r'\\(["\\])', r"\1", value[1:-1])
        fields.setdefault(key, value)
    return fields


def _check_alive(process: Process | None) -> bool:
    """False while the process runs; raises RuntimeError with its log when it has exited."""
    if process is not None and process.popen.poll() is not None:
        raise RuntimeError(f"{process.name} exited with status {process.popen.returncode}:\n"
                           f"{_tail(process.log) if process.log else ''}")
    return False


def _listening(process: Process | None, port: int) -> bool:
    """Whether something in the process's namespace listens on TCP `port` (read from /proc, no spawn)."""
    if process is None:
        return False
    wanted = f":{port:04X} "
    for table in ("tcp", "tcp6"):
        try:
            text = Path(f"/proc/{process.popen.pid}/net/{table}").read_text()
        except OSError:
            return False
        for row in text.splitlines()[1:]:
            columns = row.split()
            if len(columns) > 3 and (columns[1] + " ").endswith(wanted) and columns[3] == "0A":
                return True
    return False


def _tail(path: Path | None, lines: int = 20) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def _remove_stale_namespaces() -> None:
    """Namespaces and directories of earlier lab runs whose pytest process is gone (killed): ours by name and PID.

    Their servers are gone too: each lived at most LIFETIME_SECONDS, under `timeout`.
    """
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(re.escape(NAMESPACE_PREFIX) + r"(\d+)", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            Namespace(name).destroy()
    for directory in Path(tempfile.gettempdir()).glob(f"{NAMESPACE_PREFIX}*-*"):
        match = re.fullmatch(re.escape(NAMESPACE_PREFIX) + r"(\d+)-\w+", directory.name)
        if match and directory.is_dir() and not Path(f"/proc/{match.group(1)}").exists() \
                and not os.environ.get(KEEP_ENV):
            shutil.rmtree(directory, ignore_errors=True)


__all__ = ["Delivered", "Lab", "Sent", "Stage", "missing_tools", "parse_log_fields"]
