"""The long-running process: libmilter in a worker thread, signals and reload on the main thread.

Python runs signal handlers only on the main thread, and libmilter's own signal thread treats SIGHUP and SIGTERM
as "stop". So libmilter's loop (`adapter.serve`) runs in a worker thread, and the main thread waits for it while
handling SIGUSR1 and SIGHUP (reload) and SIGTERM/SIGINT (stop). Linux delivers a signal sent to the process to its main thread
when that thread does not block it, so these reach Python, not libmilter.

A stop never goes through libmilter's own stop (see sessions.py for why): the daemon refuses new sessions, lets the
transactions in flight be answered ([milter] stop_timeout bounds the wait), ends the connections left, closes the
resolver and leaves the process with os._exit (see leave()).
"""

from __future__ import annotations

import dataclasses
import errno
import grp
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from authmilter import adapter, cpu, logsetup, metrics
from authmilter.config import Config, authserv_id_warning, describe_sources, load_config
from authmilter.errors import ConfigError
from authmilter.exitcodes import EX_OK, EX_OSERR, EX_SOFTWARE
from authmilter.metricsserver import MetricsServer
from authmilter.observers import close_all
from authmilter.runtime import Runtime, RuntimeRef, build_runtime
from authmilter.sessions import Sessions
from authmilter.signing.check import KeyWatch
from authmilter.signing.keys import load_keyring

log = logging.getLogger("authmilter")

MILTER_NAME = "authmilter"

SOCKET_DIRECTORY_MODE = 0o750  # as systemd/authmilter.tmpfiles creates it


# How often the main thread wakes to notice the worker ending; signals interrupt the wait anyway.
_POLL_SECONDS = 0.5
# How often a stop looks whether the transactions in flight are answered (nothing signals the end of one).
_DRAIN_POLL_SECONDS = 0.05


def validate_runtime(cfg: Config) -> None:
    """Checks that need the machine, not just the file (a missing group is a config error at start-up)."""
    section = cfg.milter
    problems = []
    if socket_kind(section.socket) == "unix" and section.socket_group:
        try:
            grp.getgrnam(section.socket_group)
        except KeyError:
            problems.append(f"{cfg.origin('milter', 'socket_group')}: [milter] socket_group: no such group "
                            f"{section.socket_group!r}")
    problem = cpu.check_cpu(section.cpu)
    if problem:
        problems.append(f"{cfg.origin('milter', 'cpu')}: [milter] cpu: {problem}")
    if problems:
        raise ConfigError("\n".join(problems))
    load_keyring(cfg)  # [signing] key files: type, permissions and contents, refused with the file and reason


def socket_kind(spec: str) -> str:
    return "unix" if spec.startswith(("unix:", "local:")) else "inet"


def unix_path(spec: str) -> Path:
    return Path(spec.split(":", 1)[1])


def inet_port(spec: str) -> int:
    return int(spec.split(":", 1)[1].partition("@")[0])


# ---------------------------------------------------------------- sockets

def prepare_unix_socket(path: Path, group: str = "") -> None:
    """Create the directory if missing and remove a stale socket; refuse to steal a live one.

    A directory we create gets what systemd/authmilter.tmpfiles gives the packaged one: mode 0750 and the
    socket's group, so Postfix may enter it and no one else may (`make run`, or a host without systemd). An
    existing directory is the administrator's and is left as it is."""
    directory = path.parent
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, SOCKET_DIRECTORY_MODE)  # mkdir's mode is cut by the umask
        if group:
            os.chown(directory, -1, grp.getgrnam(group).gr_gid)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: a leftover from a process that died
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path}: another process is already listening on this socket")


def finish_unix_socket(path: Path, mode: int, group: str) -> None:
    os.chmod(path, mode)
    if group:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)


def _own_sockets() -> Iterator[socket.socket]:
    """Each socket this process holds, as a duplicate descriptor closed after the caller's turn (an option set or a
    shutdown on it acts on the shared socket). pymilter gives no handle on libmilter's sockets: this finds them."""
    for name in os.listdir("/proc/self/fd"):  # a list taken first: the duplicates made below are not in it
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except (OSError, ValueError):
            continue
        try:
            yield sock
        finally:
            sock.close()


def _listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def set_nodelay_on_listener(port: int) -> int:
    """Set TCP_NODELAY on our listening socket(s) bound to `port`; returns how many were found.

    Linux copies the option to every accepted connection, which removes the Nagle half of the milter protocol's
    small-write stalls.
    """
    count = 0
    for sock in _own_sockets():
        try:
            if (sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
                    and _listening(sock) and sock.getsockname()[1] == port):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                count += 1
        except OSError:
            pass
    return count


def end_connections(spec: str) -> int:
    """Shut the reading side of every milter connection libmilter accepted on `spec`; returns how many.

    libmilter then reads end-of-file on each at its next read: after the answer it is computing, if any, has been
    written. It closes the session through its ordinary path (abort and close callbacks), and the MTA sees the
    milter gone for whatever it sends next, which it meets with its milter_default_action.
    """
    count = 0
    for sock in _own_sockets():
        try:
            if sock.type != socket.SOCK_STREAM or _listening(sock):
                continue
            if socket_kind(spec) == "unix":
                ours = sock.family == socket.AF_UNIX and sock.getsockname() == str(unix_path(spec))
            else:
                ours = (sock.family in (socket.AF_INET, socket.AF_INET6)
                        and sock.getsockname()[1] == inet_port(spec))
            if ours:
                sock.shutdown(socket.SHUT_RD)
                count += 1
        except OSError:
            pass
    return count


# ---------------------------------------------------------------- reload

class Reloader:
    """Re-reads the config file; a bad new file is logged and the running config kept."""

    def __init__(self, path: str, ref: RuntimeRef, on_reload: Callable[[bool], None] | None = None,
                 key_watch: KeyWatch | None = None) -> None:
        self.path = path
        self.ref = ref
        self.on_reload = on_reload  # told each outcome (the metrics' reload counter)
        self.key_watch = key_watch  # rechecks the published signing keys when they change

    def reload(self) -> bool:
        done = self._reload()
        if self.on_reload is not None:
            self.on_reload(done)
        return done

    def _reload(self) -> bool:
        old = self.ref.current
        try:
            cfg = load_config(self.path)
            validate_runtime(cfg)
            runtime = build_runtime(cfg, old)
        except ConfigError as exc:
            for problem in str(exc).splitlines():  # one line per mistake, as check-config prints them
                log.error("reload refused, keeping the running configuration: %s", problem)
            return False
        except Exception:
            log.exception("reload failed, keeping the running configuration")
            return False
        if cfg.milter.socket != old.cfg.milter.socket:
            log.warning("reload: [milter] socket changed to %s; this takes a restart (still on %s)",
                        cfg.milter.socket, old.cfg.milter.socket)
        if cfg.milter.cpu != old.cfg.milter.cpu:
            log.warning("reload: [milter] cpu changed to %s; this takes a restart (still %s)",
                        cfg.milter.cpu, old.cfg.milter.cpu)
        if cfg.metrics.listen != old.cfg.metrics.listen:
            log.warning("reload: [metrics] listen changed to %s; this takes a restart (still %s)",
                        cfg.metrics.listen or "(off)", old.cfg.metrics.listen or "(off)")
        logsetup.configure(cfg.log)
        self.ref.current = runtime  # new transactions see it from their MAIL FROM on
        if cfg.signing.keys != old.cfg.signing.keys and self.key_watch is not None:
            self.key_watch.recheck()
        retired = [observer for observer in old.observers if observer not in runtime.observers]
        if runtime.resolver is not old.resolver or retired:
            # Messages in flight may still use the old resolver and observers: close them once they are surely
            # done.
            resolver = old.resolver if runtime.resolver is not old.resolver else None
            grace = old.cfg.dns.message_deadline + 5
            timer = threading.Timer(grace, _retire, (resolver, retired))
            timer.daemon = True
            timer.start()
        log.info("reloaded configuration from %s (authserv_id=%s)", describe_sources(cfg), runtime.authserv_id)
        _warn_about_authserv_id(runtime)
        return True


def _warn_about_authserv_id(runtime) -> None:
    warning = authserv_id_warning(runtime.cfg, runtime.authserv_id)
    if warning:
        log.warning("%s", warning)


def _close_quietly(resolver) -> None:
    try:
        resolver.close()
    except Exception:
        log.exception("closing the old resolver failed")


def _retire(resolver, observers) -> None:
    close_all(observers)
    if resolver is not None:
        _close_quietly(resolver)


def _shut_down(runtime: Runtime) -> None:
    """After the last message: observers first (they may flush what they counted), then the resolver."""
    close_all(runtime.observers)
    _close_quietly(runtime.resolver)


# ---------------------------------------------------------------- main loop

def run(config_path: str, cfg: Config) -> int:
    """Serve until stopped. cfg is already loaded and validated (cli.py reports ConfigError with exit 78).

    Returns only when the milter could not start; once libmilter runs, the process ends in leave()."""
    logsetup.configure(cfg.log)
    pinned = cpu.pin(cfg.milter.cpu)  # before libmilter starts any thread: they inherit it
    ref = RuntimeRef(build_runtime(cfg))
    _warn_about_authserv_id(ref.current)
    sessions = Sessions()
    counted = metrics.find(ref.current.observers)
    metrics_server = None
    if counted is not None:
        counted.watch_observer_failures(lambda: ref.current.observer_failures.counts)
        try:  # binds now, so a busy port stops the start-up as a busy milter socket does
            metrics_server = MetricsServer(cfg.metrics.listen, counted.registry)
        except OSError as exc:
            log.error("cannot listen on [metrics] listen %s: %s", cfg.metrics.listen, exc.strerror or exc)
            _shut_down(ref.current)
            return EX_OSERR
    spec = cfg.milter.socket
    try:
        if socket_kind(spec) == "unix":
            prepare_unix_socket(unix_path(spec), cfg.milter.socket_group)
        adapter.setup(MILTER_NAME, spec, cfg.milter.connection_timeout, ref, sessions, events=counted)
        adapter.open_socket()
        if socket_kind(spec) == "unix":
            finish_unix_socket(unix_path(spec), cfg.milter.socket_mode, cfg.milter.socket_group)
        else:
            found = set_nodelay_on_listener(inet_port(spec))
            if found:
                log.info("TCP_NODELAY set on %d listening socket(s) for %s", found, spec)
            else:
                log.warning("no listening socket found for %s: TCP_NODELAY not set", spec)
    except (OSError, adapter.SocketError) as exc:
        log.error("cannot listen on %s: %s", spec, exc)
        _shut_down(ref.current)
        if metrics_server is not None:
            metrics_server.stop()
        return EX_OSERR

    key_watch = KeyWatch(lambda: ref.current).start()  # logs unpublished or mismatched signing keys, daily
    reloader = Reloader(config_path, ref, on_reload=counted.reloaded if counted is not None else None,
                        key_watch=key_watch)
    requests: list[str] = []
    for sig in (signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: requests.append(signal.Signals(signum).name))
    failure: list[BaseException] = []

    def worker() -> None:
        try:
            adapter.serve()
        except BaseException as exc:  # reported by the main thread, which owns the exit status
            failure.append(exc)

    thread = threading.Thread(target=worker, name="libmilter", daemon=True)
    thread.start()
    if metrics_server is not None:
        # Started after cpu.pin(), this thread stays on the milter's CPU: metricsserver.py says why.
        metrics_server.start()
        log.info("metrics served at http://%s/metrics", cfg.metrics.listen)
    log.info("authmilter listening on %s (authserv_id=%s, config %s, %s)", spec, ref.current.authserv_id,
             describe_sources(cfg), f"on CPU {pinned}" if pinned is not None else "on every CPU")
    status = EX_OK
    try:
        while thread.is_alive() and not sessions.stopping:
            thread.join(_POLL_SECONDS)
            handle_signals(requests, reloader, sessions, spec)
        if sessions.stopping:
            finish_sessions(sessions, ref, spec, lambda: handle_signals(requests, reloader, sessions, spec))
        else:
            # libmilter's loop ended by itself: it failed, or its own signal thread took a signal (one that came
            # while the main thread was still busy with another). Either way libmilter is closing every session
            # itself, without our close callbacks: nothing is left to wait for.
            sessions.stop()
            stop_taking_sessions(spec)
            if not failure:
                log.warning("libmilter stopped by itself (its signal thread took a stop signal); connections in "
                            "flight were cut")
            _close_quietly(ref.current.resolver)
        key_watch.stop()
        close_all(ref.current.observers)
        if metrics_server is not None:
            metrics_server.stop()
        if failure:
            log.error("libmilter stopped with an error: %s", failure[0])
            status = EX_OSERR
        else:
            log.info("authmilter stopped")
    except BaseException:
        log.exception("internal error while running")
        status = EX_SOFTWARE
    leave(status)


def handle_signals(requests: list[str], reloader: Reloader, sessions: Sessions, spec: str) -> None:
    while requests:
        name = requests.pop(0)
        if name in ("SIGUSR1", "SIGHUP"):
            reloader.reload()
        elif not sessions.stopping:
            log.info("%s received: stopping", name)
            sessions.stop()
            stop_taking_sessions(spec)


def stop_taking_sessions(spec: str) -> None:
    """With the socket's name gone, Postfix gets "no such file" at once and applies its milter_default_action;
    a connection that still gets through (the listen backlog, any inet socket) is refused at negotiation
    (AuthMilter.negotiate)."""
    if socket_kind(spec) == "unix":
        try:
            unix_path(spec).unlink()
        except OSError:
            pass


def finish_sessions(sessions: Sessions, ref: RuntimeRef, spec: str, between: Callable[[], None]) -> None:
    """Let the transactions begun before the stop be answered, for up to [milter] stop_timeout; answer the rest
    with error_action; end every connection and wait until libmilter has closed them all. `between` runs while
    waiting (reloads still apply to the transactions in flight)."""
    timeout = ref.current.cfg.milter.stop_timeout
    deadline = time.monotonic() + timeout
    waiting = sessions.in_flight()
    if waiting:
        log.info("waiting up to %gs for %d message(s) in flight", timeout, waiting)
    while waiting and time.monotonic() < deadline:
        time.sleep(_DRAIN_POLL_SECONDS)
        between()
        waiting = sessions.in_flight()
    # From here every answer is error_action, and the resolver is closed so that a message still being judged
    # fails its remaining lookups at once instead of waiting for them.
    sessions.cut()
    cfg = ref.current.cfg
    if waiting:
        log.warning("stop_timeout (%gs) ran out with %d message(s) in flight: answering them with error_action=%s",
                    timeout, waiting, cfg.milter.error_action.value)
    _close_quietly(ref.current.resolver)
    end_connections(spec)
    # A callback already under way can still be inside one DNS query that was sent before the resolver closed.
    grace = cfg.dns.timeout + 1.0
    if not sessions.wait_closed(grace):
        log.warning("%d milter connection(s) still open %gs after the stop's end; leaving anyway",
                    sessions.open_count(), grace)


def leave(status: int) -> NoReturn:
    """End the process without the interpreter's teardown, once the log is flushed.

    pymilter gives each milter session a Python thread state of its own and deletes it itself, in C, after our close
    callback has returned; libmilter's worker threads are detached and are never joined. Py_Finalize frees every
    thread state but its own (CPython's _PyThreadState_DeleteExcept), so a session closing while Python shuts down
    frees its thread state a second time: the "double free or corruption" / "free(): corrupted unsorted chunks"
    aborts seen at stop under load. Nothing in Python can tell when pymilter is done with its last thread state,
    and libmilter's own teardown (smfi_stop) is unsafe with its worker pool (sessions.py). finish_sessions() has
    already waited for every session's close callback, the resolver and the observers are closed, and the log is
    flushed here; nothing else of ours needs an exit handler. os._exit then ends every thread at once.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
