"""[metrics] listen as an operator writes it: good forms accepted, bad ones refused with exit 78 and a precise line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from authmilter.config import load_config

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "milter")}


def authmilter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "authmilter", *args], capture_output=True, text=True, timeout=60,
                          env=ENV)


@pytest.mark.parametrize("text, listen", [
    ("", ""),
    ("127.0.0.1:9101", "127.0.0.1:9101"),
    (" 0.0.0.0:9101 ", "0.0.0.0:9101"),
    ("[::1]:9101", "[::1]:9101"),
    ("[0:0:0:0:0:0:0:1]:65535", "[::1]:65535"),
])
def test_listen_forms_accepted(tmp_path, text, listen):
    path = tmp_path / "ok.ini"
    path.write_text(f"[metrics]\nlisten = {text}\n")
    assert load_config(path).metrics.listen == listen


def test_metrics_are_off_by_default():
    assert load_config(None).metrics.listen == ""


@pytest.mark.parametrize("text, reason", [
    ("localhost:9101", "not an IP address: 'localhost' (names are not allowed)"),
    ("127.0.0.1", "expected IP:PORT or [IPv6]:PORT (an IPv6 address goes in brackets), got '127.0.0.1'"),
    ("::1:9101", "expected IP:PORT or [IPv6]:PORT (an IPv6 address goes in brackets), got '::1:9101'"),
    ("[::1]", "expected IP:PORT or [IPv6]:PORT, got '[::1]'"),
    ("[::1:9101", "expected IP:PORT or [IPv6]:PORT, got '[::1:9101'"),
    ("127.0.0.1:0", "bad port in '127.0.0.1:0'"),
    ("127.0.0.1:65536", "bad port in '127.0.0.1:65536'"),
    ("127.0.0.1:http", "bad port in '127.0.0.1:http'"),
    ("256.0.0.1:9101", "not an IP address: '256.0.0.1' (names are not allowed)"),
    ("http://127.0.0.1:9101/metrics",
     "expected IP:PORT or [IPv6]:PORT (an IPv6 address goes in brackets), got 'http://127.0.0.1:9101/metrics'"),
])
def test_bad_listen_refused_with_exit_78(tmp_path, text, reason):
    path = tmp_path / "bad.ini"
    path.write_text(f"[metrics]\nlisten = {text}\n")
    for command in ("check-config", "run --config"):
        done = authmilter(*command.split(), str(path))
        assert (done.returncode, done.stdout) == (78, "")
        assert done.stderr == f"{path}: [metrics] listen: {reason}\n"


def test_unknown_key_in_the_section_is_refused(tmp_path):
    path = tmp_path / "bad.ini"
    path.write_text("[metrics]\nport = 9101\n")
    done = authmilter("check-config", str(path))
    assert done.returncode == 78
    assert done.stderr == f"{path}: [metrics] port: unknown key (known: listen)\n"
