"""The milter shell: the only module that imports pymilter's Milter.

One AuthMilter object per SMTP connection. Until end-of-message it only records facts (client, HELO, envelope,
header bytes, where each incoming Authentication-Results header sits). The body is never kept: at its first chunk
the header is complete, the pipeline names the DKIM body hashes it will need, and every chunk goes into one
BodyHasher and is dropped (a message without DKIM signatures keeps nothing). At end-of-message it freezes a
MessageContext carrying those hashes, hands it to `judge.judge_message()` (which the `check` command calls too, and
which tells the observers: the log line first) and applies the verdict. Anything unexpected in our code is logged with the queue id and answered with
[milter] error_action; it never reaches libmilter.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import sys
import time
from typing import Callable

import Milter

from authmilter import renderer
from authmilter.bodystream import BodyStream
from authmilter.config import Config
from authmilter.context import Connection, Envelope, Header, Message, MessageContext, bare_address
from authmilter.errors import AuthmilterError
# The decision lives in judge.py, shared with `authmilter check`.
from authmilter.early import EarlyWork
from authmilter.judge import Judgement, judge_message, judge_recipient, reach_end_of_headers, start_lookups
from authmilter.results import Action, Verdict
from authmilter.runtime import Runtime, RuntimeRef
from authmilter.sessions import Sessions
from authmilter.signing.signer import SigningSession, start_session

log = logging.getLogger("authmilter")

MAX_RECIPIENTS = 1000          # Postfix's smtpd_recipient_limit default; more is hostile or broken

# What we may do at end-of-message. Nothing that touches the body or the envelope.
ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE | Milter.SETSYMLIST

# Protocol options we ask for: header values with their leading space and folding intact (so DKIM sees the signed
# bytes), no DATA/EOH/unknown-command events, and no replies for the events that only record facts.
PROTOCOL = (Milter.P_HDR_LEADSPC | Milter.P_NODATA | Milter.P_NOEOH | Milter.P_NOUNKNOWN
            | Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_HDR | Milter.P_NR_BODY)

# Macros we read, per stage (at most 5 each). Postfix sends {i} once the queue file exists (RCPT, EOM).
MACROS = (
    (Milter.M_CONNECT, "j {client_addr}"),
    (Milter.M_ENVFROM, "{i} {auth_authen}"),
    (Milter.M_ENVRCPT, "{i}"),
    (Milter.M_EOM, "{i}"),
)

def restore_folding(value: bytes, leading_space: bool) -> bytes:
    """Postfix hands folded values with bare LF; the signed bytes had CRLF before each continuation."""
    value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not leading_space:
        value = b" " + value  # without SMFIP_HDR_LEADSPC the MTA removed it; one space is the common case
    return value


# ---------------------------------------------------------------- per-transaction state

class _Transaction:
    """Facts of one transaction, renewed at MAIL FROM (aiosmtpd's Envelope). Mutable until end-of-message."""

    __slots__ = ("runtime", "mail_from", "rcpts", "headers", "header_bytes", "truncated", "ar_count",
                 "forged_ar", "body", "queue_id", "failed_stage", "after_stop", "signing", "early")

    def __init__(self, runtime: Runtime, mail_from: str, *, after_stop: bool = False) -> None:
        self.runtime = runtime
        self.after_stop = after_stop  # begun once the daemon was stopping: answered with error_action, not judged
        self.mail_from = mail_from
        self.rcpts: list[str] = []
        self.headers: list[Header] = []
        self.header_bytes = 0
        self.truncated = False
        self.ar_count = 0
        self.forged_ar: list[tuple[int, str]] = []  # (1-based index among A-R headers, name as received)
        self.body: BodyStream | None = None  # set at the first body chunk, when the header is complete
        self.queue_id = ""
        self.failed_stage = ""
        self.signing: SigningSession | None = None  # set at MAIL FROM for a client whose mail we sign
        self.early: EarlyWork | None = None  # lookups started before end of message (judge.start_lookups)

    def end(self) -> None:
        """The transaction is over (answered, aborted or replaced): what it started early is not waited for."""
        if self.early is not None:
            self.early.abandon()


# ---------------------------------------------------------------- the milter

class AuthMilter(Milter.Base):
    """One object per SMTP connection (Milter.factory makes one per libmilter connection)."""

    def __init__(self, ref: RuntimeRef, sessions: Sessions, *, clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time, events=None) -> None:
        self._ref = ref
        self._sessions = sessions
        self._events = events  # metrics.MetricsObserver (connections, errors by stage) or None
        if events is not None:  # made at negotiation, before any connect; libmilter calls close() once for each
            events.connection_opened()
        self._clock = clock
        self._wallclock = wallclock
        self._client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self._client_name = ""
        self._helo = ""
        self._auth_user: str | None = None
        self._tx: _Transaction | None = None
        self._connection_failed = ""
        sessions.opened(self)  # close() is libmilter's last call for every session, refused ones included

    # -- negotiation

    def negotiate(self, opts):
        if self._sessions.stopping:
            # A connection that reached us after the stop (inet sockets still accept, a unix socket's backlog is
            # still accepted): refused, so the MTA applies its milter_default_action, as to a milter that is gone.
            log.info("stopping: refusing a new milter connection")
            return Milter.REJECT
        try:
            offered_actions, offered_protocol = opts[0], opts[1]
            self._actions = offered_actions & ACTIONS
            if self._actions & Milter.SETSYMLIST:
                for stage, macros in MACROS:
                    # Milter.Base.setsymlist hands the C module bytes where it wants str (pymilter 1.0.5).
                    self._ctx.setsymlist(stage, macros)
            opts[0] = self._actions
            opts[1] = self._protocol = offered_protocol & PROTOCOL
            opts[2] = opts[3] = 0
            return Milter.CONTINUE
        except Exception:
            log.exception("negotiation failed; using libmilter defaults")
            return Milter.ALL_OPTS

    # -- events that only record facts (no reply is sent for these when the MTA agreed to P_NR_*)

    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        self._guarded("connect", self._on_connect, hostname, hostaddr)
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, heloname):
        self._guarded("helo", self._on_helo, heloname)
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mailfrom, *params):
        # A new transaction starts here whatever happened before: nothing of the last message leaks into this one.
        self._end_transaction()
        self._tx = _Transaction(self._ref.current, "", after_stop=self._sessions.stopping)
        self._guarded("mail", self._on_mail, mailfrom)
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name, value):
        self._guarded("header", self._on_header, name, value)
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk):
        self._guarded("body", self._on_body, chunk)
        return Milter.CONTINUE

    # -- events that answer

    def envrcpt(self, rcpt, *params):
        try:
            tx = self._transaction()
            if self._turned_away(tx):
                return self._stop_reply(tx, at_eom=False)
            return self._on_rcpt(rcpt)
        except Exception:
            self._log_error("rcpt")
            return self._error_reply(self._transaction().runtime.cfg, at_eom=False)

    def eom(self):
        tx = self._transaction()
        try:
            if self._turned_away(tx):
                return self._stop_reply(tx, at_eom=True)
            if tx.failed_stage or self._connection_failed:
                log.error("queue_id=%s earlier failure in %s stage; answering with error_action=%s",
                          self._queue_id(tx), tx.failed_stage or self._connection_failed,
                          tx.runtime.cfg.milter.error_action.value)
                return self._error_reply(tx.runtime.cfg, at_eom=True)
            return self._on_eom(tx)
        except Exception:
            self._log_error("eom")
            return self._error_reply(tx.runtime.cfg, at_eom=True)
        finally:
            self._end_transaction()

    def abort(self):
        if self._tx is not None:
            log.debug("queue_id=%s transaction aborted by the MTA", self._tx.queue_id)
        self._end_transaction()
        return Milter.CONTINUE

    def close(self):
        self._end_transaction()
        self._sessions.closed(self)
        if self._events is not None:
            self._events.connection_closed()
        return Milter.CONTINUE

    def _end_transaction(self) -> None:
        tx, self._tx = self._tx, None
        if tx is not None:
            tx.end()

    def in_flight(self) -> bool:
        """What a stop waits for: a transaction begun before the stop, not yet answered at end of message."""
        tx = self._tx
        return tx is not None and not tx.after_stop

    # -- fact recording

    def _on_connect(self, hostname, hostaddr) -> None:
        self._client_name = str(hostname or "")
        address = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else None
        if address is None:
            address = self.getsymval("{client_addr}")
        try:
            self._client_ip = ipaddress.ip_address(str(address).removeprefix("IPv6:")) if address else None
        except ValueError:
            self._client_ip = None  # a unix-socket or unknown client: the checks report what they can

    def _on_helo(self, heloname) -> None:
        self._helo = str(heloname or "")

    def _on_mail(self, mailfrom) -> None:
        tx = self._transaction()
        tx.mail_from = bare_address(str(mailfrom))
        tx.queue_id = self._symbol("{i}") or tx.queue_id
        self._auth_user = self._symbol("{auth_authen}") or None
        # Signing and verification never both apply: a signing transaction is not verified (signing/decide.py).
        tx.signing = start_session(tx.runtime.keyring, tx.runtime.cfg.signing, self._client_ip, self._auth_user,
                                   tx.mail_from)
        if tx.signing is None and not tx.after_stop:
            ctx = MessageContext(self._connection(), Envelope(tx.mail_from, (), tx.queue_id))
            tx.early = start_lookups(ctx, tx.runtime, now=self._wallclock())

    def _on_header(self, name, value) -> None:
        tx = self._transaction()
        name_bytes = name if isinstance(name, bytes) else str(name).encode("utf-8", "surrogateescape")
        value_bytes = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        header = Header(name_bytes, restore_folding(value_bytes, bool(self._protocol & Milter.P_HDR_LEADSPC)))
        if header.is_named(renderer.HEADER_NAME):
            # RFC 8601 §5: remove A-R headers claiming our authserv-id, wherever they sit. Counted even past the
            # header byte cap, so the index we delete is the one the MTA has.
            tx.ar_count += 1
            cfg = tx.runtime.cfg
            ids = (tx.runtime.authserv_id, *cfg.milter.remove_authserv_ids)
            if renderer.is_ours(header.value.decode("utf-8", "replace"), ids):
                tx.forged_ar.append((tx.ar_count, header.name_text))
        if tx.truncated:
            return
        size = len(header.name) + len(header.value) + 3
        if tx.header_bytes + size > tx.runtime.cfg.milter.max_header_bytes:
            tx.truncated = True
            return
        tx.header_bytes += size
        tx.headers.append(header)

    def _on_body(self, chunk) -> None:
        tx = self._transaction()
        if tx.signing is not None:
            tx.signing.begin_body(tx.headers, tx.truncated)
            tx.signing.update(chunk)
            return
        self._body_stream(tx).update(chunk)

    def _body_stream(self, tx: _Transaction) -> BodyStream:
        """Made once the header is complete (the first body chunk, or end-of-message for an empty body)."""
        if tx.body is None:
            message = Message(tuple(tx.headers), headers_truncated=tx.truncated)
            if tx.early is not None:
                ctx = MessageContext(self._connection(), Envelope(tx.mail_from, tuple(tx.rcpts), tx.queue_id), message)
                reach_end_of_headers(tx.early, ctx, tx.runtime, now=self._wallclock())
            tx.body = BodyStream(self._connection(), message, tx.runtime.cfg)
        return tx.body

    def _connection(self) -> Connection:
        return Connection(self._client_ip, self._client_name, self._helo, self._auth_user)

    def _on_rcpt(self, rcpt) -> int:
        tx = self._transaction()
        tx.queue_id = self._symbol("{i}") or tx.queue_id
        address = bare_address(str(rcpt))
        ctx = MessageContext(self._connection(), Envelope(tx.mail_from, tuple(tx.rcpts), tx.queue_id))
        verdict = judge_recipient(ctx, address, tx.runtime, now=self._wallclock(), early=tx.early)
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            return self._answer(verdict)
        if len(tx.rcpts) < MAX_RECIPIENTS:
            tx.rcpts.append(address)
        return Milter.CONTINUE

    # -- end of message

    def _on_eom(self, tx: _Transaction) -> int:
        started = self._clock()
        tx.queue_id = self._queue_id(tx)
        if tx.signing is not None:
            return self._sign(tx, started)
        runtime = tx.runtime
        ctx = MessageContext(
            self._connection(),
            Envelope(tx.mail_from, tuple(tx.rcpts), tx.queue_id),
            self._body_stream(tx).message(),
        )
        judgement = judge_message(ctx, runtime, now=self._wallclock(), clock=self._clock, started=started,
                                  early=tx.early)
        if self._sessions.cut_off:  # stop_timeout ran out while this message was judged (its late lookups failed)
            return self._stop_reply(tx, at_eom=True)
        return self._apply(judgement, tx)

    def _sign(self, tx: _Transaction, started: float) -> int:
        outcome = tx.signing.finish(self._wallclock(), tx.headers, tx.truncated)
        self._remove_forged(tx)
        for name, value in outcome.milter_headers(bool(self._protocol & Milter.P_HDR_LEADSPC)):
            self.addheader(name, value, 0)
        env = Envelope(tx.mail_from, tuple(tx.rcpts), tx.queue_id)
        log.info("%s", outcome.log_line(self._connection(), env, (self._clock() - started) * 1000.0))
        return Milter.ACCEPT

    def _apply(self, judgement: Judgement, tx: _Transaction) -> int:
        verdict = judgement.verdict
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            return self._answer(verdict)
        # Delete before inserting: our own A-R at the top would shift the indexes of the forged ones.
        self._remove_forged(tx)
        # All go on top, above the MTA's own Received:, in the renderer's order: inserted bottom first at index 0,
        # so A-R ends up first, where RFC 8601 §5 readers (and people) look for this hop's verdict, and
        # Received-SPF, also a trace field of this hop (RFC 7208 §9.1), sits right below it.
        for name, value in reversed(judgement.headers):
            self.addheader(name, value, 0)
        if verdict.action is Action.QUARANTINE:
            self.quarantine(verdict.text or verdict.reason or "authmilter")
        return Milter.ACCEPT

    def _remove_forged(self, tx: _Transaction) -> None:
        # Highest index first, so an MTA that renumbers after each deletion still deletes the right ones.
        for index, name in sorted(tx.forged_ar, reverse=True):
            self.chgheader(name, index, "")

    def _answer(self, verdict: Verdict) -> int:
        if verdict.action is Action.REJECT:
            self._set_reply(verdict.code or "550", verdict.status or "5.7.1", verdict.text)
            return Milter.REJECT
        self._set_reply(verdict.code or "451", verdict.status or "4.7.1", verdict.text)
        return Milter.TEMPFAIL

    def _set_reply(self, code: str, status: str, text: str) -> None:
        # Verdict texts are already safe for libmilter (policy.safe_reply_text: one line, every '%' doubled).
        self.setreply(code, status or None, text or None)

    # -- the daemon is stopping

    def _turned_away(self, tx: _Transaction) -> bool:
        return tx.after_stop or self._sessions.cut_off

    def _stop_reply(self, tx: _Transaction, *, at_eom: bool) -> int:
        """A transaction the stopping daemon does not judge (begun after the stop, or still running when
        [milter] stop_timeout ran out) gets error_action, as when our own code fails."""
        log.info("queue_id=%s stopping: answering %s with error_action=%s", self._queue_id(tx) or "-",
                 "end of message" if at_eom else "RCPT", tx.runtime.cfg.milter.error_action.value)
        return self._error_reply(tx.runtime.cfg, at_eom=at_eom)

    # -- failures of our own code

    def _guarded(self, stage: str, func, *args) -> None:
        """For no-reply events: remember the failure and answer it at RCPT/EOM with error_action."""
        try:
            func(*args)
        except Exception:
            self._log_error(stage)
            if self._tx is not None and stage not in ("connect", "helo"):
                self._tx.failed_stage = self._tx.failed_stage or stage
            else:
                self._connection_failed = self._connection_failed or stage

    def _error_reply(self, cfg: Config, *, at_eom: bool) -> int:
        if cfg.milter.error_action is Action.TEMPFAIL:
            try:
                self.setreply("451", "4.3.0", "authmilter: temporary failure, please try again later")
            except Exception:
                log.exception("setreply failed")
            return Milter.TEMPFAIL
        if at_eom and self._tx is not None:
            try:  # accepting anyway: a forged A-R header must still not pass through under our name
                self._remove_forged(self._tx)
            except Exception:
                log.exception("queue_id=%s removing forged Authentication-Results failed", self._tx.queue_id)
        return Milter.ACCEPT if at_eom else Milter.CONTINUE

    def _log_error(self, stage: str) -> None:
        queue_id = self._tx.queue_id if self._tx is not None else ""
        if self._tx is not None and not queue_id:
            try:
                queue_id = self._symbol("{i}")
            except Exception:
                queue_id = ""
        log.exception("queue_id=%s internal error in %s stage", queue_id or "-", stage)
        if self._events is not None:
            self._events.milter_error(stage)

    # -- helpers

    def _transaction(self) -> _Transaction:
        if self._tx is None:  # an MTA that skipped MAIL: still one clean transaction
            self._tx = _Transaction(self._ref.current, "", after_stop=self._sessions.stopping)
        return self._tx

    def _queue_id(self, tx: _Transaction) -> str:
        return self._symbol("{i}") or tx.queue_id

    def _symbol(self, name: str) -> str:
        value = self.getsymval(name) if getattr(self, "_ctx", None) is not None else None
        return str(value) if value else ""


# ---------------------------------------------------------------- libmilter plumbing, called by daemon.py

def _log_undecodable_input(exc_type, exc, traceback) -> None:
    if issubclass(exc_type, UnicodeDecodeError):
        log.warning("client sent a HELO name or header name that is not UTF-8 (%s); it is treated as absent",
                    exc)
    else:
        log.error("exception in a libmilter callback before authmilter's code ran",
                  exc_info=(exc_type, exc, traceback))


def setup(name: str, socket_spec: str, timeout: int, ref: RuntimeRef, sessions: Sessions, events=None) -> None:
    """Register our callbacks with libmilter (pymilter's runmilter, split so the daemon can act between the steps)."""
    Milter.factory = functools.partial(AuthMilter, ref, sessions, events=events)
    Milter.set_flags(ACTIONS)
    # pymilter's C layer decodes a header NAME and the HELO argument as strict UTF-8 before any of our code runs;
    # on failure it answers with its exception policy. TEMPFAIL (its default) at a no-reply stage leaves the MTA
    # waiting for an end-of-message answer that never comes. CONTINUE only loses that one header or HELO name
    # (our own code catches its exceptions and never relies on this policy).
    Milter.set_exception_policy(Milter.CONTINUE)
    # pymilter reports that decoding failure through sys.excepthook (our own callbacks never let an exception
    # out): make it a log line with a level and say what it means, instead of a bare traceback on stderr.
    sys.excepthook = _log_undecodable_input
    lib = Milter.milter
    lib.set_connect_callback(Milter.connect_callback)
    lib.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    lib.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    lib.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    lib.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    lib.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    lib.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    lib.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    lib.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    lib.set_close_callback(Milter.close_callback)
    lib.setconn(socket_spec)
    lib.settimeout(timeout)
    lib.register(name, data=lambda ctx: ctx.getpriv().data(),
                 unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
                 negotiate=Milter.negotiate_callback)


class SocketError(AuthmilterError):
    """libmilter could not open or serve its socket."""


def open_socket() -> None:
    try:
        Milter.milter.opensocket(True)
    except Milter.milter.error as exc:
        raise SocketError(str(exc)) from None


def serve() -> None:
    """Blocks in libmilter's accept loop. The daemon never ends it (see sessions.py): only a failure, or a signal
    that libmilter's own signal thread took, does."""
    try:
        Milter.milter.main()
    except Milter.milter.error as exc:
        raise SocketError(str(exc)) from None
