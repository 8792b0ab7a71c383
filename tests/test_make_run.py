"""`make run` on a machine whose host name is not a domain name: it starts, warns about the authserv-id, creates
the socket directory as systemd/authmilter.tmpfiles would (mode 0750, the socket's group), and answers.

Runs the real `make run` in testlab.sandbox (host name "lab", no network, the host's /etc/authmilter out of
sight), stopped by its process group's ID.
"""

from __future__ import annotations

import grp
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from testlab import sandbox
from testlab.milterclient import MilterClient

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS = 60


def wait_for(path: Path, text: str, process: subprocess.Popen, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        log = path.read_text(errors="replace") if path.exists() else ""
        if text in log:
            return log
        if process.poll() is not None:
            raise AssertionError(f"make run exited with {process.returncode} before {text!r}:\n{log}")
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged within {seconds}s:\n{path.read_text(errors='replace')}")


@pytest.mark.skipif(bool(sandbox.available()), reason=sandbox.available() or "ok")
def test_make_run_on_a_host_named_lab(tmp_path):
    try:
        group = grp.getgrnam("postfix")
    except KeyError:
        pytest.skip("no postfix group (the Makefile installs Postfix)")
    # Inside the sandbox there is no network: bring the virtualenv up to date out here first (quick when it is).
    subprocess.run(["make", "-C", str(ROOT), "deps"], check=True, capture_output=True, timeout=900)
    socket_dir = tmp_path / "spool" / "authmilter"
    config = tmp_path / "authmilter.ini"
    config.write_text(f"[milter]\nsocket = unix:{socket_dir}/authmilter.sock\n"
                      "[trust]\nnetworks = 192.0.2.0/24\n")   # no check runs, so no DNS is needed
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log:
        process = sandbox.spawn(["make", "-C", str(ROOT), "run", f"CONFIG={config}"], tmp_path / "sandbox",
                                hostname="lab", timeout=120, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        text = wait_for(log_path, "authmilter listening on", process, START_SECONDS)
        assert (f"WARNING authserv_id 'lab' comes from this machine's host name, which is not a fully qualified "
                f"domain name; set [milter] authserv_id in {config} to this host's name as other mail systems "
                f"know it (e.g. authserv_id = mx.example.org)") in text
        info = socket_dir.stat()
        assert stat.S_IMODE(info.st_mode) == 0o750 and info.st_gid == group.gr_gid
        assert (socket_dir / "authmilter.sock").is_socket()
        with MilterClient(str(socket_dir / "authmilter.sock"), timeout=30) as conn:
            conn.negotiate()
            outcome = conn.transaction(client_ip="192.0.2.1", helo="mail.example.org",
                                       mail_from="alice@example.org", rcpts=["bob@example.net"],
                                       headers=[(b"From", b" alice@example.org")], body=b"Hi.\r\n",
                                       queue_id="QMAKE1")
        assert outcome.added_values("Authentication-Results") == [" lab; none"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    assert "authmilter stopped" in log_path.read_text(errors="replace")
