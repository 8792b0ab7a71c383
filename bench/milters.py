"""Start and stop the milters under comparison: authmilter, the do-nothing pymilter floor, OpenDKIM + OpenDMARC."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import corpus


@dataclass
class RunningMilter:
    name: str
    sockets: list[str]                 # client addresses, in the order a message visits them (a chain)
    processes: list[subprocess.Popen] = field(default_factory=list)
    metrics_url: str = ""              # authmilter with [metrics] listen: where its /metrics is served

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_socket(path: Path, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists():
            return
        if process.poll() is not None:
            raise RuntimeError(f"milter exited with {process.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"milter socket {path} did not appear: {log.read_text()[-2000:]}")


def _spawn(argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
    # `timeout` bounds every process we start, whatever happens to the benchmark.
    return subprocess.Popen(["timeout", "3600", *argv], stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            **kwargs)


def authmilter_config(workdir: Path, socket_spec: str, nameserver: str, *, cpu: str = "auto",
                      metrics_listen: str = "", reports: bool = False, early_lookups: bool = True,
                      dns_options: str = "") -> Path:
    config = workdir / "authmilter.ini"
    metrics = f"\n[metrics]\nlisten = {metrics_listen}\n" if metrics_listen else ""
    config.write_text(f"""[milter]
socket = {socket_spec}
socket_mode = 0666
socket_group =
authserv_id = mx.bench.example
cpu = {cpu}

[dns]
nameservers = {nameserver}
trust_ad = no
{"" if early_lookups else "early_lookups = no"}
{dns_options}
[trust]
networks =

[log]
level = info
{metrics}""")
    if reports:  # DMARC aggregate reports recorded into a SQLite store in the workdir
        with config.open("a") as handle:
            handle.write(f"""
[reports]
enabled = yes
org_name = bench
from_address = dmarc@bench.example
database = {workdir / 'reports.sqlite'}
journal = {workdir / 'reports.journal'}
""")
    return config


def start_authmilter(workdir: Path, nameserver: str, *, inet_port: int | None = None,
                     cpu: str = "auto", metrics: bool = False, reports: bool = False,
                     early_lookups: bool = True, dns_options: str = "") -> RunningMilter:
    """dns_options: more `key = value` lines for the [dns] section (bench/early_dns.py)."""
    sock = workdir / "authmilter.sock"
    spec = f"inet:{inet_port}@127.0.0.1" if inet_port else f"unix:{sock}"
    listen = f"127.0.0.1:{free_port()}" if metrics else ""
    config = authmilter_config(workdir, spec, nameserver, cpu=cpu, metrics_listen=listen, reports=reports,
                               early_lookups=early_lookups, dns_options=dns_options)
    log = workdir / "authmilter.log"
    # `timeout` must not stand between us and the milter's PID: we measure the milter's own counters.
    process = subprocess.Popen([sys.executable, "-m", "authmilter", "run", "--config", str(config)],
                               stdout=log.open("ab"), stderr=subprocess.STDOUT)
    if inet_port:
        wait_for_port(inet_port, process, log)
        return RunningMilter("authmilter-inet", [f"127.0.0.1:{inet_port}"], [process])
    _wait_for_socket(sock, process, log)
    name = "authmilter" if cpu == "auto" else f"authmilter cpu={cpu}"
    if reports:
        name += " reports=on"
    if not early_lookups:
        name += " serial"
    if metrics:
        return RunningMilter(f"{name}+metrics", [str(sock)], [process], f"http://{listen}/metrics")
    return RunningMilter(name, [str(sock)], [process])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def messages_counted(metrics_url: str) -> int:
    """The sum of authmilter_messages_total over its labels, as a scrape shows it."""
    from urllib.request import urlopen

    with urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("authmilter_messages_total{")))


def wait_for_port(port: int, process: subprocess.Popen | None = None, log: Path | None = None,
                  timeout: float = 30) -> None:
    """Until something accepts connections on 127.0.0.1:port; fails early if `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process is not None and process.poll() is not None:
                detail = log.read_text()[-2000:] if log else ""
                raise RuntimeError(f"exited before listening on {port}: {detail}") from None
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def start_nullmilter(workdir: Path) -> RunningMilter:
    sock = workdir / "null.sock"
    log = workdir / "null.log"
    process = subprocess.Popen([sys.executable, "-m", "bench.nullmilter", f"unix:{sock}"],
                               stdout=log.open("ab"), stderr=subprocess.STDOUT)
    _wait_for_socket(sock, process, log)
    os.chmod(sock, 0o666)
    return RunningMilter("null-pymilter", [str(sock)], [process])


def opendkim_available() -> bool:
    return bool(shutil.which("opendkim") and shutil.which("opendmarc"))


def start_opendkim_opendmarc(workdir: Path) -> RunningMilter:
    """Both in verify mode, chained as Postfix would chain them: OpenDKIM writes A-R, OpenDMARC reads it."""
    dkim_sock, dmarc_sock = workdir / "opendkim.sock", workdir / "opendmarc.sock"
    # Neither may treat the benchmark's loopback client as internal (OpenDKIM would sign instead of verify).
    (workdir / "opendmarc.ignore").write_text("192.0.2.255\n")
    (workdir / "opendkim.conf").write_text(f"""Mode v
Socket local:{dkim_sock}
UMask 000
AuthservID mx.bench.example
Background no
Syslog no
PidFile {workdir}/opendkim.pid
MinimumKeyBits 1024
InternalHosts {workdir}/opendmarc.ignore
Nameservers 127.0.0.1
""")
    (workdir / "opendmarc.conf").write_text(f"""Socket local:{dmarc_sock}
UMask 000
AuthservID mx.bench.example
TrustedAuthservIDs mx.bench.example
Background false
Syslog false
PidFile {workdir}/opendmarc.pid
SPFSelfValidate true
SPFIgnoreResults true
IgnoreHosts {workdir}/opendmarc.ignore
RejectFailures false
""")
    log = workdir / "opendkim.log"
    dkim = subprocess.Popen(["opendkim", "-f", "-x", str(workdir / "opendkim.conf")],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    dmarc = subprocess.Popen(["opendmarc", "-f", "-c", str(workdir / "opendmarc.conf")],
                             stdout=log.open("ab"), stderr=subprocess.STDOUT)
    _wait_for_socket(dkim_sock, dkim, log)
    _wait_for_socket(dmarc_sock, dmarc, log)
    return RunningMilter("opendkim+opendmarc", [str(dkim_sock), str(dmarc_sock)], [dkim, dmarc])


def dkimpy_milter_available() -> bool:
    return bool(shutil.which("dkimpy-milter"))


def start_dkimpy_milter(workdir: Path) -> RunningMilter:
    """Debian's dkimpy-milter in verify mode: the Python milter the brief compares us with (DKIM only)."""
    sock = workdir / "dkimpy.sock"
    conf = workdir / "dkimpy-milter.conf"
    conf.write_text(f"""Mode v
Socket local:{sock}
UMask 000
UserID root
AuthservID mx.bench.example
Syslog no
PidFile {workdir}/dkimpy-milter.pid
InternalHosts {workdir}/internal
MinimumKeyBits 1024
""")
    # The benchmark's loopback client must not be "internal" (dkimpy-milter would skip verifying).
    (workdir / "internal").write_text("192.0.2.255\n")
    log = workdir / "dkimpy.log"
    process = subprocess.Popen(["dkimpy-milter", str(conf)], stdout=log.open("ab"), stderr=subprocess.STDOUT)
    _wait_for_socket(sock, process, log)
    return RunningMilter("dkimpy-milter", [str(sock)], [process])


__all__ = ["RunningMilter", "start_authmilter", "start_nullmilter", "start_opendkim_opendmarc",
           "opendkim_available", "corpus"]
