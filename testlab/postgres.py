"""A private PostgreSQL cluster for tests and benches: its own data directory and unix socket in a temporary
directory, no TCP listener, run as an unprivileged user (`nobody` when we are root: PostgreSQL refuses root).

    with PostgresCluster() as pg:                 # initdb + start (a few seconds)
        url = pg.create_database("reports")       # postgresql://authmilter@/reports?host=/tmp/...
        pg.stop()                                 # the store "goes away" (fast shutdown, data kept)
        pg.start()                                # and comes back on the same socket
    # leaving the block stops the server and deletes the directory

Bounds: the postmaster runs under coreutils `timeout` (SIGINT after `lifetime` seconds, SIGKILL 10 s later,
whatever happens to the test process) and that wrapper gets SIGKILL when the test process dies
(PR_SET_PDEATHSIG). Stopping signals the wrapper's PID, which passes the signal to the postmaster it started.
Debian's `postgresql` package provides the binaries under /usr/lib/postgresql/VERSION/bin (the Makefile installs
it with postgresql-common/create_main_cluster preseeded to false, so no system cluster ever runs).
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "authmilter"
START_SECONDS = 30.0
STOP_SECONDS = 30.0


def bindir() -> Path:
    """The newest Debian PostgreSQL server binaries."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: "
                           "install Debian's postgresql package (make deps does)")
    return Path(found[-1]).parent


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class PostgresCluster:
    def __init__(self, *, lifetime: float = 900.0, durable: bool = False, user: str = "nobody") -> None:
        """durable=False turns fsync off (tests: speed); a bench measuring real writes passes durable=True."""
        self.lifetime = lifetime
        self.durable = durable
        self.bin = bindir()
        self.base = Path(tempfile.mkdtemp(prefix="authmilter-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "run"
        self.log_path = self.base / "postgres.log"
        self._process: subprocess.Popen | None = None
        self._as: dict = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam(user)
            self._as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        self.socket_dir.mkdir()
        if self._as:
            os.chown(self.socket_dir, self._as["user"], self._as["group"])
        self._initdb()

    # -- life cycle

    def _initdb(self) -> None:
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                        "-E", "UTF8", "--locale=C", "--no-sync"], check=True, capture_output=True,
                       timeout=120, cwd=self.base, **self._as)

    def start(self) -> None:
        if self._process is not None:
            return
        settings = ["listen_addresses=", f"unix_socket_directories={self.socket_dir}", "max_connections=50",
                    "log_min_messages=warning"]
        if not self.durable:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        command = ["timeout", "-s", "INT", "-k", "10", str(int(self.lifetime)), str(self.bin / "postgres"),
                   "-D", str(self.data)]
        for setting in settings:
            command += ["-c", setting]
        log = open(self.log_path, "ab")
        try:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             cwd=self.base, preexec_fn=_die_with_parent, **self._as)
        finally:
            log.close()
        deadline = time.monotonic() + START_SECONDS
        while not self.ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def ready(self) -> bool:
        result = subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", str(self.socket_dir), "-U", SUPERUSER,
                                 "-d", "postgres", "-t", "1"], capture_output=True, timeout=10)
        return result.returncode == 0

    def stop(self) -> None:
        """Fast shutdown (SIGINT: running transactions are rolled back), by PID; SIGKILL if it hangs."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        # the postmaster's own pid file goes when it exits; wait for it so a restart finds the socket free
        deadline = time.monotonic() + STOP_SECONDS
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- using it

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run([str(self.bin / "psql"),
                                 "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
                                 "-U", SUPERUSER, "-d", database, "-c", sql],
                                capture_output=True, text=True, timeout=60, check=True)
        return result.stdout

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
