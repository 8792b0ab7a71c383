"""The real `authmilter run --config FILE` daemon as a subprocess, for tests that talk to it over the milter protocol.

    with DaemonRunner(tmp_path, dns_server=server, authserv_id="mx.test.example") as daemon:
        daemon.socket_path          # the unix socket it listens on (inside tmp_path)
        daemon.log_text()           # everything it wrote to stderr so far (its log)
        daemon.write_config(authserv_id="mx2.test.example")
        daemon.reload()             # SIGUSR1, then waits for the "reloaded configuration" log line
        status = daemon.stop()      # SIGTERM, then the exit status

Bounds: the daemon runs under coreutils `timeout` (killed after `lifetime` seconds whatever happens to the test
process), and additionally dies with the test process (PR_SET_PDEATHSIG on the `timeout` process). Signals go to
the daemon's own PID (a child of `timeout`), never by name.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

AUTHMILTER = Path(sys.executable).with_name("authmilter")
START_SECONDS = 20.0     # how long start() waits for the socket
STOP_SECONDS = 20.0      # how long stop() waits for a clean exit after SIGTERM
TRACEBACK = "Traceback (most recent call last)"
LEVELS = ("DEBUG ", "INFO ", "WARNING ", "ERROR ", "CRITICAL ")  # logsetup.STDERR_FORMAT


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
                 extra: dict | None = None, lifetime: float = 120.0):
        self.directory = Path(directory)
        self.socket_path = self.directory / "authmilter.sock"
        self.config_path = self.directory / "authmilter.ini"
        self.log_path = self.directory / "authmilter.log"
        self.nameservers = dns_server.address if dns_server is not None else ""
        self.lifetime = lifetime
        self.write_config(authserv_id=authserv_id, extra=extra)
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
        self._log_file = open(self.log_path, "ab")
        self._wrapper = subprocess.Popen(
            ["timeout", "--kill-after=5", str(int(self.lifetime)), str(AUTHMILTER), "run",
             "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=self._log_file, preexec_fn=_die_with_parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"})
        self.pid = self._find_child()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self._wrapper.poll() is not None:
                raise RuntimeError(f"authmilter exited with {self._wrapper.returncode} at start-up:\n"
                                   f"{self.log_text()}")
            if self._listening():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"authmilter did not listen on {self.socket_path} in {START_SECONDS}s:\n"
                           f"{self.log_text()}")

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

    def _listening(self) -> bool:
        if not self.socket_path.exists():
            return False
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.socket_path))
            return True
        except OSError:
            return False
        finally:
            probe.close()

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
        if not self.wait_for_log(lambda text: text.count("reloaded configuration") > before, timeout):
            raise AssertionError(f"no reload logged in {timeout}s:\n{self.log_text()[-4000:]}")

    def wait_for_log(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.log_text()):
                return True
            time.sleep(0.05)
        return predicate(self.log_text())

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


# ---------------------------------------------------------------- what the daemon asked the MTA to change

@dataclass(frozen=True, slots=True)
class HeaderChange:
    kind: str      # "insert" (SMFIR_INSHEADER), "add" (SMFIR_ADDHEADER) or "change" (SMFIR_CHGHEADER; "" deletes)
    index: int     # insert position / 1-based occurrence to change; 0 for "add"
    name: str
    value: str


def header_changes(modifications: list[tuple[str, bytes]]) -> list[HeaderChange]:
    """Decode bench.milterclient's Outcome.modifications (raw milter replies) into header changes.

    Raises AssertionError on a header modification whose framing is wrong (a protocol error)."""
    changes = []
    for code, data in modifications:
        if code in ("i", "m"):
            assert len(data) >= 4, f"short {code!r} reply: {data!r}"
            index = struct.unpack("!I", data[:4])[0]
            rest = data[4:]
        elif code == "h":
            index, rest = 0, data
        else:
            continue
        parts = rest.split(b"\0")
        assert len(parts) == 3 and parts[2] == b"", f"bad {code!r} reply framing: {data!r}"
        kind = {"i": "insert", "h": "add", "m": "change"}[code]
        changes.append(HeaderChange(kind, index, parts[0].decode("utf-8", "replace"),
                                    parts[1].decode("utf-8", "replace")))
    return changes


def inserted(modifications: list[tuple[str, bytes]], name: str) -> list[str]:
    """Values of every header named `name` the daemon inserted or added."""
    return [c.value for c in header_changes(modifications)
            if c.kind in ("insert", "add") and c.name.lower() == name.lower()]


# ---------------------------------------------------------------- a DNS server that survives port races
