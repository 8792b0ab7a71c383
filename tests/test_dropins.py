"""Drop-in files: conf.d/*.ini beside the main file, read after it in name order, a later file winning per key;
check-config and the daemon (start-up and reload) read them, and every mistake in any of them is reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from authmilter.config import load_config
from authmilter.errors import ConfigError
from testlab.daemonrunner import DaemonRunner
from testlab.dnsserver import DnsServer
from testlab.milterclient import MilterClient

ROOT = Path(__file__).resolve().parent.parent


def authmilter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "authmilter", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "milter")})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def main_file(tmp_path):
    return write(tmp_path / "authmilter.ini", "[milter]\nauthserv_id = mx.example.net\n[dkim]\nmin_key_bits = 1024\n")


def test_dropins_override_per_key_in_name_order(main_file):
    dropins = main_file.parent / "conf.d"
    write(dropins / "20-later.ini", "[dkim]\nmin_key_bits = 4096\n")
    write(dropins / "10-first.ini", "[dkim]\nmin_key_bits = 2048\nallow_sha1 = yes\n[spf]\nenabled = no\n")
    write(dropins / "README", "not an .ini file: not read\n")
    write(dropins / ".30-hidden.ini", "[dkim]\nmin_key_bits = 8192\n")  # editors' and dpkg's leftovers
    cfg = load_config(main_file)
    assert cfg.dkim.min_key_bits == 4096                   # 20-later.ini beats 10-first.ini beats the main file
    assert cfg.dkim.allow_sha1 is True and cfg.spf.enabled is False   # keys no later file set stay
    assert cfg.milter.authserv_id == "mx.example.net"      # the main file's, untouched
    assert cfg.source == str(main_file)
    assert cfg.dropins == (str(dropins / "10-first.ini"), str(dropins / "20-later.ini"))
    assert cfg.origin("dkim", "min_key_bits") == str(dropins / "20-later.ini")
    assert cfg.origin("milter", "authserv_id") == str(main_file)


def test_check_config_names_every_file_it_read(main_file):
    write(main_file.parent / "conf.d" / "local.ini", "[dkim]\nmin_key_bits = 2048\n")
    done = authmilter("check-config", str(main_file))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"{main_file}: OK\n{main_file.parent / 'conf.d' / 'local.ini'}: OK\n"


def test_every_mistake_in_every_file_at_once_exit_78(tmp_path):
    main_file = write(tmp_path / "authmilter.ini", "[dns]\ntimeout = soon\n[milter]\nsocket_group = nosuchgroup9\n")
    first = write(tmp_path / "conf.d" / "10-dkim.ini", "[dkim]\nmin_key_bits = 2048  # stronger\n")
    second = write(tmp_path / "conf.d" / "20-spf.ini", "[spf]\nfail_action = maybe\nbogus = 1\n")
    done = authmilter("check-config", str(main_file))
    assert done.returncode == 78
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{main_file}: [dns] timeout: expected a number, got 'soon'",
        f"{first}: [dkim] min_key_bits: '# stronger' looks like a comment after the value; comments go on a line "
        f"of their own (starting with # or ;), otherwise they are part of the value",
        f"{second}: [spf] fail_action: expected one of accept, reject, quarantine, got 'maybe'",
        f"{second}: [spf] bogus: unknown key (known: enabled, check_helo, fail_action, softfail_action, "
        f"temperror_action, permerror_action, received_spf_header, show_explanation, reject_at)",
    ]
    # `run` refuses the same way, before listening
    done = authmilter("run", "--config", str(main_file))
    assert done.returncode == 78 and len(done.stderr.splitlines()) == 4


def test_machine_checks_name_the_file_that_set_the_key(main_file):
    dropin = write(main_file.parent / "conf.d" / "group.ini", "[milter]\nsocket_group = nosuchgroup9\ncpu = 4095\n")
    done = authmilter("check-config", str(main_file))
    assert done.returncode == 78
    lines = done.stderr.splitlines()
    assert lines[0] == f"{dropin}: [milter] socket_group: no such group 'nosuchgroup9'"
    assert lines[1].startswith(f"{dropin}: [milter] cpu: CPU 4095 is not one this process may use")


def test_an_unreadable_dropin_is_a_config_error(main_file):
    dropin = write(main_file.parent / "conf.d" / "broken.ini", "")
    dropin.write_bytes(b"[dkim]\nmin_key_bits = \xff\n")
    with pytest.raises(ConfigError) as raised:
        load_config(main_file)
    assert str(raised.value).startswith(f"{dropin}: cannot read: ")


def authserv_id_of_next_message(daemon: DaemonRunner, queue_id: str) -> str:
    with MilterClient(str(daemon.socket_path), timeout=30) as conn:
        conn.negotiate()
        outcome = conn.transaction(client_ip="192.0.2.1", helo="mail.example.org", mail_from="alice@example.org",
                                   rcpts=["bob@example.net"], headers=[(b"From", b" alice@example.org")],
                                   body=b"Hi.\r\n", queue_id=queue_id)
    [ar] = [value for _, name, value in outcome.inserted() if name == "Authentication-Results"]
    return ar.split(";", 1)[0].strip()


def test_reload_reads_the_dropins(tmp_path):
    zone = {"example.org": [{"TXT": "v=spf1 ip4:192.0.2.1 -all"}]}
    with DnsServer(zone, lifetime=120) as dns, \
            DaemonRunner(tmp_path, dns_server=dns, authserv_id="mx.example.net", lifetime=90) as daemon:
        assert daemon.config_path.parent == tmp_path
        dropin = write(tmp_path / "conf.d" / "50-name.ini", "[milter]\nauthserv_id = mx2.example.net\n")
        daemon.reload()
        assert f"reloaded configuration from {daemon.config_path} + {dropin}" in daemon.log_text()
        assert authserv_id_of_next_message(daemon, "QDROP1") == "mx2.example.net"

        # A mistake in a drop-in is refused on reload, naming the drop-in, and the running configuration stays.
        write(dropin, "[milter]\nauthserv_id = mx3\n")
        daemon.signal(signal.SIGUSR1)
        log = daemon.wait_for_log("reload refused")
        assert (f"ERROR reload refused, keeping the running configuration: {dropin}: [milter] authserv_id: 'mx3' "
                f"is not a fully qualified host name") in log
        assert authserv_id_of_next_message(daemon, "QDROP2") == "mx2.example.net"
        assert daemon.stop() == 0
