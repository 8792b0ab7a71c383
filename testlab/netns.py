"""A private network namespace and the bounded processes that run inside it.

Everything the lab starts lives in the namespace, under `timeout`, so nothing can outlive the test run even if
pytest is killed; teardown stops exactly the PIDs recorded here, then removes the namespace and its resolv.conf.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# The longest any lab process may live. A full e2e session takes far less; this only bounds a crashed run.
LIFETIME_SECONDS = 1800


def available() -> str:
    """'' when namespaces can be used here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "the end-to-end lab needs root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"authmilter-probe-{os.getpid()}"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if created.returncode != 0:
        return f"`ip netns add` fails here: {created.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return ""


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path | None


@dataclass
class Namespace:
    name: str
    processes: list[Process] = field(default_factory=list)

    @property
    def etc_dir(self) -> Path:
        return Path("/etc/netns") / self.name

    def create(self, addresses: tuple[str, ...]) -> None:
        _run(["ip", "netns", "add", self.name])
        # `ip netns exec` bind-mounts this over /etc/resolv.conf inside the namespace only.
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        (self.etc_dir / "resolv.conf").write_text("nameserver 127.0.0.1\noptions edns0\n")
        _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        for address in addresses:
            # nodad: on lo there is nobody to collide with, and DAD would delay binding by a second or more.
            _run(["ip", "-n", self.name, "addr", "add", address, "dev", "lo", "nodad"])

    def argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def run(self, *command: str, timeout: float = 60, check: bool = True,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        """Run a short command inside the namespace and wait for it."""
        result = subprocess.run(self.argv("timeout", "--kill-after=5", str(int(timeout)), *command),
                                capture_output=True, input=input, timeout=timeout + 10)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): "
                               f"{result.stderr.decode(errors='replace').strip()}")
        return result

    def spawn(self, name: str, *command: str, log: Path | None = None,
              env: dict[str, str] | None = None) -> Process:
        """Start a long-running server inside the namespace, bounded by LIFETIME_SECONDS."""
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                self.argv("timeout", "--kill-after=10", str(LIFETIME_SECONDS), *command),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        finally:
            if log:
                out.close()
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def stop(self, process: Process, grace: float = 5.0) -> None:
        """Stop one process we started: `timeout` forwards SIGTERM to its child, then we wait, then SIGKILL."""
        if process.popen.poll() is None:
            try:
                process.popen.send_signal(signal.SIGTERM)
                process.popen.wait(grace)
            except subprocess.TimeoutExpired:
                # Only our own process group: `timeout` and the server it runs (start_new_session above).
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait(5)
            except ProcessLookupError:
                pass
        if process in self.processes:
            self.processes.remove(process)

    def destroy(self) -> None:
        # SIGTERM to all first, then wait: servers that take seconds to stop do so in parallel.
        for process in self.processes:
            if process.popen.poll() is None:
                try:
                    process.popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in reversed(list(self.processes)):
            try:
                self.stop(process, grace=10.0)
            except Exception:  # keep tearing down: a namespace left behind is worse than a lost exception
                pass
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
        shutil.rmtree(self.etc_dir, ignore_errors=True)
        try:
            self.etc_dir.parent.rmdir()  # only if no other namespace uses /etc/netns
        except OSError:
            pass


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll predicate() until it returns something truthy; raise TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.25)


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
