"""The long-running process: libmilter in a worker thread, signals and reload on the main thread.

Python runs signal handlers only on the main thread, and libmilter's own signal thread treats SIGHUP and SIGTERM
as "stop". So libmilter's loop (`adapter.serve`) runs in a worker thread, and the main thread waits for it while
handling SIGUSR1 (reload) and SIGTERM/SIGINT (clean stop through smfi_stop). Linux delivers a signal sent to the
process to its main thread when that thread does not block it, so these reach Python, not libmilter.
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
import threading
from pathlib import Path

from authmilter import adapter, cpu, logsetup
from authmilter.config import Config, load_config
from authmilter.errors import ConfigError
from authmilter.judge import build_runtime
from authmilter.signing.check import KeyWatch
from authmilter.signing.keys import load_keyring

log = logging.getLogger("authmilter")

MILTER_NAME = "authmilter"
EX_OK = 0
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CONFIG = 78

# How often the main thread wakes to notice the worker ending; signals interrupt the wait anyway.
_POLL_SECONDS = 0.5


def validate_runtime(cfg: Config) -> None:
    """Checks that need the machine, not just the file (a missing group is a config error at start-up)."""
    section = cfg.milter
    if socket_kind(section.socket) == "unix" and section.socket_group:
        try:
            grp.getgrnam(section.socket_group)
        except KeyError:
            raise ConfigError(f"{cfg.source}: [milter] socket_group: no such group {section.socket_group!r}") \
                from None
    problem = cpu.check_cpu(section.cpu)
    if problem:
        raise ConfigError(f"{cfg.source}: [milter] cpu: {problem}")
    load_keyring(cfg)  # [signing] key files: type, permissions and contents, refused with the file and reason


def socket_kind(spec: str) -> str:
    return "unix" if spec.startswith(("unix:", "local:")) else "inet"


def unix_path(spec: str) -> Path:
    return Path(spec.split(":", 1)[1])


def inet_port(spec: str) -> int:
    return int(spec.split(":", 1)[1].partition("@")[0])


# ---------------------------------------------------------------- sockets

def prepare_unix_socket(path: Path) -> None:
    """Create the directory if missing and remove a stale socket; refuse to steal a live one."""
    path.parent.mkdir(parents=True, exist_ok=True)
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


def set_nodelay_on_listener(port: int) -> int:
    """Set TCP_NODELAY on our listening socket(s) bound to `port`; returns how many were found.

    pymilter gives no handle on libmilter's socket, so find it among our own descriptors. Linux copies the option
    to every accepted connection, which removes the Nagle half of the milter protocol's small-write stalls.
    """
    count = 0
    for entry in os.scandir("/proc/self/fd"):
        try:
            if not os.readlink(entry.path).startswith("socket:"):
                continue
            fd = int(entry.name)
            sock = socket.socket(fileno=os.dup(fd))
        except (OSError, ValueError):
            continue
        try:
            if (sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
                    and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    and sock.getsockname()[1] == port):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                count += 1
        except OSError:
            pass
        finally:
            sock.close()
    return count


def stop_libmilter(spec: str) -> None:
    """smfi_stop waits for a lock that libmilter's accept loop holds while it polls (5 s at a time); a connection
    to our own socket ends that poll, so the stop takes milliseconds instead of seconds."""
    stopper = threading.Thread(target=adapter.stop, name="smfi_stop", daemon=True)
    stopper.start()
    for _ in range(50):
        wake_listener(spec)
        stopper.join(0.1)
        if not stopper.is_alive():
            return


def wake_listener(spec: str) -> None:
    try:
        if socket_kind(spec) == "unix":
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: object = str(unix_path(spec))
        else:
            family = socket.AF_INET6 if spec.startswith("inet6:") else socket.AF_INET
            host = spec.split(":", 1)[1].partition("@")[2]
            if host in ("", "0.0.0.0", "::", "*"):
                host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
            probe = socket.socket(family, socket.SOCK_STREAM)
            address = (host, inet_port(spec))
        with probe:
            probe.settimeout(1.0)
            probe.connect(address)
    except OSError:
        pass  # not fatal: libmilter still stops at its next poll timeout


# ---------------------------------------------------------------- reload

class Reloader:
    """Re-reads the config file; a bad new file is logged and the running config kept."""

    def __init__(self, path: str, ref: adapter.RuntimeRef, key_watch: KeyWatch | None = None) -> None:
        self.path = path
        self.ref = ref
        self.key_watch = key_watch

    def reload(self) -> bool:
        old = self.ref.current
        try:
            cfg = load_config(self.path)
            validate_runtime(cfg)
            runtime = dataclasses.replace(build_runtime(cfg, old), keyring=load_keyring(cfg))
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
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
        logsetup.configure(cfg.log)
        self.ref.current = runtime  # new transactions see it from their MAIL FROM on
        if cfg.signing.keys != old.cfg.signing.keys and self.key_watch is not None:
            self.key_watch.recheck()
        if runtime.resolver is not old.resolver:
            # Messages in flight may still use the old resolver: close it once they are surely done.
            grace = old.cfg.dns.message_deadline + 5
            timer = threading.Timer(grace, _close_quietly, (old.resolver,))
            timer.daemon = True
            timer.start()
        log.info("reloaded configuration from %s (authserv_id=%s)", self.path, runtime.authserv_id)
        return True


def _close_quietly(resolver) -> None:
    try:
        resolver.close()
    except Exception:
        log.exception("closing the old resolver failed")


# ---------------------------------------------------------------- main loop

def run(config_path: str, cfg: Config) -> int:
    """Serve until stopped. cfg is already loaded and validated (cli.py reports ConfigError with exit 78)."""
    logsetup.configure(cfg.log)
    pinned = cpu.pin(cfg.milter.cpu)  # before libmilter starts any thread: they inherit it
    ref = adapter.RuntimeRef(dataclasses.replace(build_runtime(cfg), keyring=load_keyring(cfg)))
    spec = cfg.milter.socket
    try:
        if socket_kind(spec) == "unix":
            prepare_unix_socket(unix_path(spec))
        adapter.setup(MILTER_NAME, spec, cfg.milter.connection_timeout, ref)
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
        _close_quietly(ref.current.resolver)
        return EX_OSERR

    key_watch = KeyWatch(lambda: ref.current).start()  # logs unpublished or mismatched signing keys, daily
    reloader = Reloader(config_path, ref, key_watch)
    requests: list[str] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: requests.append(signal.Signals(signum).name))
                for sig in (signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    failure: list[BaseException] = []

    def worker() -> None:
        try:
            adapter.serve()
        except BaseException as exc:  # reported by the main thread, which owns the exit status
            failure.append(exc)

    thread = threading.Thread(target=worker, name="libmilter", daemon=True)
    thread.start()
    log.info("authmilter listening on %s (authserv_id=%s, config %s, %s)", spec, ref.current.authserv_id,
             config_path, f"on CPU {pinned}" if pinned is not None else "on every CPU")
    stopping = False
    try:
        while thread.is_alive():
            thread.join(_POLL_SECONDS)
            while requests:
                name = requests.pop(0)
                if name in ("SIGUSR1", "SIGHUP"):
                    reloader.reload()
                elif not stopping:
                    log.info("%s received: stopping", name)
                    stopping = True
                    stop_libmilter(spec)
    finally:
        key_watch.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if socket_kind(spec) == "unix":
            try:
                unix_path(spec).unlink()
            except OSError:
                pass
        _close_quietly(ref.current.resolver)
    if failure:
        log.error("libmilter stopped with an error: %s", failure[0])
        return EX_OSERR
    log.info("authmilter stopped")
    return EX_OK
