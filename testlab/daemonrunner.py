"""The real `authmilter run --config FILE` daemon as a subprocess, for tests that talk to it over the milter protocol.

    with DaemonRunner(tmp_path, dns_server=server, authserv_id="mx.test.example") as daemon:
        daemon.socket_path          # the unix socket it listens on (inside tmp_path)
        daemon.log_text()           # everything it wrote to stderr so far (its log)
        daemon.write_config(authserv_id="mx2.test.example")
        daemon.reload()             # SIGUSR1, then waits for the "reloaded configuration" log line
        status = daemon.stop()      # SIGTERM, then the exit status

    DaemonRunner(tmp_path, config=INI_TEXT, launcher=script)   # a test's own INI, or a script instead of the CLI

What the daemon asked the MTA to change is decoded by testlab.milterclient's Outcome (inserted(), header_changes()).

Bounds: the daemon runs under coreutils `timeout` (killed after `lifetime` seconds whatever happens to the test
process), and additionally dies with the test process (PR_SET_PDEATHSIG on the `timeout` process). Signals go to
the daemon's own PID (a child of `timeout`), never by name.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

AUTHMILTER = Path(sys.executable).with_name("authmilter")
START_SECONDS = 20.0     # how long start() waits for the daemon to listen
STOP_SECONDS = 20.0      # how long stop() waits for a clean exit after SIGTERM
TRACEBACK = "Traceback (most recent call last)"
LEVELS = ("DEBUG ", "INFO ", "WARNING ", "ERROR ", "CRITICAL ")  # logsetup.STDERR_FORMAT
# daemon.run logs this once the socket is open AND its signal handlers are installed: a reload signal sent
# before that would kill it
LISTENING = "authmilter listening on "


def _die_with_parent() -> None:
    """preexec_fn: the `timeout` wrapper gets SIGKILL when the test process goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def config_text(socket_path: Path, *, authserv_id: str, nameservers: str = "", extra: dict | None = None) -> str:
    """An INI for tests: our socket, no socket group, stderr logging, short DNS budgets, no trusted networks
    (the test clients connect from documentation addresses, but a 127.0.0.1 client must be checked too)."""
    sections: dict[str, dict[str, str]] = {
        "milter": {"socket": f"unix:{socket_path}", "socket_group": "", "socket_mode": "0600",
                   "authserv_id": authserv_id},
        "dns": {"timeout": "1", "message_deadline": "4", "trust_ad": "no"},
        "trust": {"networks": ""},
        "log": {"target": "stderr", "level": "info"},
    }
    if nameservers:
        sections["dns"]["nameservers"] = nameservers
    for section, values in (extra or {}).items():
        sections.setdefault(section, {}).update(values)
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


class DaemonRunner:
    def __init__(self, directory: Path, *, dns_server=None, authserv_id: str = "mx.test.example",
                 extra: dict | None = None, lifetime: float = 120.0, config: str | None = None,
                 launcher: Path | None = None):
        """config: the INI text to run with, verbatim (then socket_path is only where config_text() would put the
        socket: the caller knows its own). launcher: a Python script taking the CLI's arguments, run instead of
        the `authmilter` command (e.g. one that injects a fault)."""
        self.directory = Path(directory)
        self.socket_path = self.directory / "authmilter.sock"
        self.config_path = self.directory / "authmilter.ini"
        self.log_path = self.directory / "authmilter.log"
        self.nameservers = dns_server.address if dns_server is not None else ""
        self.lifetime = lifetime
        self.launcher = launcher
        if config is None:
            self.write_config(authserv_id=authserv_id, extra=extra)
        else:
            self.config_path.write_text(config, encoding="utf-8")
        self._wrapper: subprocess.Popen | None = None
        self.pid: int | None = None
        self.returncode: int | None = None

    # ------------------------------------------------------------ config

    def write_config(self, *, authserv_id: str, extra: dict | None = None) -> None:
        text = config_text(self.socket_path, authserv_id=authserv_id, nameservers=self.nameservers, extra=extra)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.config_path)  # a reload never reads a half-written file

    # ------------------------------------------------------------ life cycle

    def start(self) -> DaemonRunner:
        program = [sys.executable, str(self.launcher)] if self.launcher else [str(AUTHMILTER)]
        started_before = self.log_text().count(LISTENING)
        self._log_file = open(self.log_path, "ab")
        self._wrapper = subprocess.Popen(
            ["timeout", "--kill-after=5", str(int(self.lifetime)), *program, "run",
             "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=self._log_file, preexec_fn=_die_with_parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"})
        self.pid = self._find_child()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self._wrapper.poll() is not None:
                raise RuntimeError(f"authmilter exited with {self._wrapper.returncode} at start-up:\n"
                                   f"{self.log_text()}")
            if self.log_text().count(LISTENING) > started_before:
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"authmilter did not log {LISTENING!r} in {START_SECONDS}s:\n{self.log_text()}")

    def _find_child(self) -> int:
        """The daemon's PID: the one child of the `timeout` wrapper."""
        assert self._wrapper is not None
        children = Path(f"/proc/{self._wrapper.pid}/task/{self._wrapper.pid}/children")
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            try:
                pids = children.read_text().split()
            except OSError:
                pids = []
            if pids:
                return int(pids[0])
            if self._wrapper.poll() is not None:
                raise RuntimeError(f"timeout wrapper exited with {self._wrapper.returncode}:\n{self.log_text()}")
            time.sleep(0.01)
        raise RuntimeError("authmilter did not start")

    @property
    def running(self) -> bool:
        return self._wrapper is not None and self._wrapper.poll() is None

    def signal(self, signum: int) -> None:
        assert self.pid is not None and self.running
        os.kill(self.pid, signum)

    def reload(self, timeout: float = 15.0) -> None:
        """SIGUSR1; returns once the daemon logged that it swapped to the new configuration."""
        before = self.log_text().count("reloaded configuration")
        self.signal(signal.SIGUSR1)
        self.wait_for_log("reloaded configuration", timeout, count=before + 1)

    def wait_for_log(self, what: str | Callable[[str], bool], timeout: float = 10.0, *, count: int = 1) -> str:
        """The log once it holds `what` (a text at least `count` times, or a predicate over the whole log is true).
        Raises AssertionError, with the log, when that does not happen within `timeout` or the daemon exits."""
        def done(text: str) -> bool:
            return what(text) if callable(what) else text.count(what) >= count

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if done(text):
                return text
            if not self.running:
                status = self._wrapper.returncode if self._wrapper is not None else "nothing (never started)"
                raise AssertionError(f"{what!r} not logged and the daemon exited with {status}:\n{text[-4000:]}")
            time.sleep(0.05)
        text = self.log_text()
        if done(text):
            return text
        raise AssertionError(f"{what!r} not logged within {timeout}s:\n{text[-4000:]}")

    def stop(self) -> int:
        """SIGTERM to the daemon and its exit status (the wrapper passes it through; 124/137 = it was killed)."""
        if self._wrapper is None:
            return self.returncode if self.returncode is not None else -1
        if self.running:
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.returncode = self._wrapper.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_log()
        return self.returncode

    def kill(self) -> None:
        if self._wrapper is None:
            return
        for pid in (self.pid, self._wrapper.pid):
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.returncode = self._wrapper.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        log = getattr(self, "_log_file", None)
        if log is not None and not log.closed:
            log.close()

    def __enter__(self) -> DaemonRunner:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        if self.running:
            self.stop()
        self._close_log()

    # ------------------------------------------------------------ log

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def tracebacks(self) -> list[str]:
        """Each traceback in the log, with the log line that introduced it (the one before "Traceback")."""
        lines = self.log_text().splitlines()
        found = []
        for index, line in enumerate(lines):
            if line.startswith(TRACEBACK):
                end = index + 1
                while end < len(lines) and not lines[end].startswith(LEVELS):
                    end += 1
                found.append("\n".join(lines[max(index - 1, 0):end]))
        return found
