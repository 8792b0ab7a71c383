"""judge.py is the one decision shared by the milter and `authmilter check`; the check command must not need
libmilter (pymilter's Milter module) to give it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHECK_WITHOUT_MILTER = """
import sys
from authmilter.cli import main
status = main(["check", "--ip", "192.0.2.1", "--mail-from", "alice@example.org", "--resolver", "127.0.0.1:9",
               "--config", sys.argv[1]])
print("exit", status, "Milter loaded:", "Milter" in sys.modules)
"""


def test_check_command_judges_without_loading_the_milter_module(tmp_path):
    config = tmp_path / "check.ini"
    # A dead resolver port: every lookup fails fast, and the verdict is still printed.
    config.write_text("[milter]\nauthserv_id = mx.example.net\n[dns]\ntimeout = 0.2\nmessage_deadline = 1\n")
    done = subprocess.run([sys.executable, "-c", CHECK_WITHOUT_MILTER, str(config)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert "Authentication-Results: mx.example.net;" in done.stdout, done.stderr
    assert "action: " in done.stdout
    assert done.stdout.rstrip().endswith("Milter loaded: False"), done.stdout


def test_the_milter_uses_the_same_judge():
    from authmilter import adapter, judge

    assert adapter.judge_message is judge.judge_message
    assert adapter.judge_recipient is judge.judge_recipient
