"""The sample config documents every key with its true default, and bad files are refused with a precise line."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from authmilter.config import Config, documented_keys, load_config, parse_config_text
from authmilter.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "config" / "authmilter.ini"
AUTHMILTER = [sys.executable, "-m", "authmilter"]

_SECTION = re.compile(r"^\[([a-z_]+)\]\s*$")
_DEFAULT_LINE = re.compile(r"^#([a-z][a-z0-9_]*) =(.*)$")


def sample_defaults() -> dict[str, dict[str, str]]:
    """section -> key -> the first "#key = value" line of that section in the sample."""
    found: dict[str, dict[str, str]] = {}
    section = None
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        if match := _SECTION.match(line):
            section = match.group(1)
            found.setdefault(section, {})
        elif section and (match := _DEFAULT_LINE.match(line)):
            found[section].setdefault(match.group(1), match.group(2).strip())
    return found


def test_sample_documents_every_key_in_its_section():
    documented = sample_defaults()
    missing = [f"[{section}] {key}" for section, keys in documented_keys().items() for key in keys
               if key not in documented.get(section, {})]
    assert missing == [], f"keys missing from {SAMPLE}: {missing}"


def test_sample_names_no_key_that_does_not_exist():
    known = documented_keys()
    extra = [f"[{section}] {key}" for section, keys in sample_defaults().items() for key in keys
             if key not in known.get(section, {})]
    assert extra == []


def test_sample_parses_as_is():
    cfg = load_config(SAMPLE)
    assert cfg.source == str(SAMPLE)
    assert dataclasses.replace(cfg, source="x") == dataclasses.replace(Config(), source="x")


def test_sample_defaults_are_the_real_defaults():
    """Uncomment every documented default: the result must equal the built-in defaults."""
    text = "\n".join(f"[{section}]\n" + "\n".join(f"{key} = {value}" for key, value in keys.items())
                     for section, keys in sample_defaults().items())
    cfg = parse_config_text(text, "uncommented")
    assert dataclasses.replace(cfg, source="x") == dataclasses.replace(Config(), source="x")


def test_sample_socket_is_the_postfix_chroot_unix_socket():
    assert Config().milter.socket == "unix:/var/spool/postfix/authmilter/authmilter.sock"
    assert "#socket = inet:8894@127.0.0.1" in SAMPLE.read_text()


@pytest.mark.parametrize("text, message", [
    ("[nosuch]\n", "F.ini: [nosuch]: unknown section (known: milter, dns"),
    ("[dns]\ntimeot = 3\n", "F.ini: [dns] timeot: unknown key (known: nameservers, timeout"),
    ("[dns]\ntimeout = soon\n", "F.ini: [dns] timeout: expected a number, got 'soon'"),
    ("[dns]\ntimeout = 0\n", "F.ini: [dns] timeout: must be at least 0.1, got 0"),
    ("[dns]\nnameservers = resolver.example\n", "F.ini: [dns] nameservers: not an IP address: 'resolver.example'"),
    ("[dns]\nnameservers = 127.0.0.1:99999\n", "F.ini: [dns] nameservers: bad port in '127.0.0.1:99999'"),
    ("[dns]\ntrust_ad = maybe\n", "F.ini: [dns] trust_ad: expected one of auto, yes, no, got 'maybe'"),
    ("[trust]\nnetworks = 10.0.0.0/33\n", "F.ini: [trust] networks: not a network: '10.0.0.0/33'"),
    ("[trust]\nauthenticated = perhaps\n", "F.ini: [trust] authenticated: expected yes or no, got 'perhaps'"),
    ("[milter]\nsocket = tcp:8894\n", "F.ini: [milter] socket: expected unix:/path, inet:PORT@HOST"),
    ("[milter]\nsocket = unix:relative.sock\n", "F.ini: [milter] socket: a unix socket needs an absolute path"),
    ("[milter]\nsocket_mode = rw\n", "F.ini: [milter] socket_mode: expected an octal mode such as 0660"),
    ("[milter]\nerror_action = reject\n", "F.ini: [milter] error_action: expected one of accept, tempfail"),
    ("[milter]\ncpu = first\n", "F.ini: [milter] cpu: expected auto, all or a CPU number, got 'first'"),
    ("[milter]\ncpu = -1\n", "F.ini: [milter] cpu: expected auto, all or a CPU number, got '-1'"),
    ("[spf]\nfail_action = tempfail\n", "F.ini: [spf] fail_action: expected one of accept, reject, quarantine"),
    ("[dns]\ntimeout = 1\ntimeout = 2\n", "F.ini: [dns] timeout: duplicate key (line 3)"),
    ("timeout = 1\n", "F.ini: line 1: expected a [section] header, got 'timeout = 1'"),
    ("[dns]\nthis is not a key\n", "F.ini: line 2: cannot parse 'this is not a key' (expected key = value)"),
    ("[DNS]\n", "F.ini: [DNS]: unknown section"),
])
def test_bad_config_text_names_file_section_key_and_reason(text, message):
    with pytest.raises(ConfigError) as raised:
        parse_config_text(text, "F.ini")
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_unreadable_file(tmp_path):
    missing = tmp_path / "absent.ini"
    with pytest.raises(ConfigError) as raised:
        load_config(missing)
    assert str(raised.value) == f"{missing}: cannot read: No such file or directory"


def test_values_are_parsed_into_types(tmp_path):
    cfg = parse_config_text(
        "[milter]\nsocket = inet6:8894@::1\nsocket_mode = 0640\nremove_authserv_ids = a.example, b.example\n"
        "[dns]\nnameservers = 127.0.0.1, [::1]:5353\ntrust_ad = YES\n"
        "[trust]\nnetworks =\nauthenticated = off\n", "F.ini")
    assert cfg.milter.socket == "inet6:8894@::1"
    assert cfg.milter.socket_mode == 0o640
    assert cfg.milter.remove_authserv_ids == ("a.example", "b.example")
    assert [str(ns) for ns in cfg.dns.nameservers] == ["127.0.0.1:53", "[::1]:5353"]
    assert cfg.dns.trust_ad == "yes"
    assert cfg.trust.networks == ()
    assert cfg.trust.authenticated is False


# ---------------------------------------------------------------- the check-config command

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*AUTHMILTER, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "milter")})


def test_check_config_accepts_the_sample():
    done = run_cli("check-config", str(SAMPLE))
    assert (done.returncode, done.stdout) == (0, f"{SAMPLE}: OK\n")


@pytest.mark.parametrize("text, message", [
    ("[dns]\ntimeout = soon\n", "[dns] timeout: expected a number, got 'soon'"),
    ("[dns]\ntimeout = 1\ntimeout = 2\n", "[dns] timeout: duplicate key (line 3), already set on line 2 of this "
                                           "file; to override a value of this file, set it in a conf.d/*.ini file "
                                           "beside it"),
    ("[milter]\nsocket_group = no-such-group-here\n", "[milter] socket_group: no such group 'no-such-group-here'"),
])
def test_check_config_refuses_with_exit_78(tmp_path, text, message):
    path = tmp_path / "bad.ini"
    path.write_text(text)
    done = run_cli("check-config", str(path))
    assert done.returncode == 78
    assert done.stderr == f"{path}: {message}\n"
    assert done.stdout == ""


def test_check_config_refuses_a_cpu_this_machine_does_not_let_us_use(tmp_path):
    path = tmp_path / "bad.ini"
    path.write_text("[milter]\ncpu = 4095\n")
    done = run_cli("check-config", str(path))
    allowed = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
    assert (done.returncode, done.stdout) == (78, "")
    assert done.stderr == f"{path}: [milter] cpu: CPU 4095 is not one this process may use (CPUs {allowed})\n"


def test_check_config_unreadable_file_exit_78(tmp_path):
    done = run_cli("check-config", str(tmp_path / "nope.ini"))
    assert done.returncode == 78
    assert done.stderr == f"{tmp_path / 'nope.ini'}: cannot read: No such file or directory\n"


# ---------------------------------------------------------------- the systemd unit agrees with the sample

def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (ROOT / "systemd" / "authmilter.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, value = line.split("=", 1)
            settings.setdefault(name, []).append(value)
    return settings


def test_systemd_unit_is_hardened_and_reloads_with_sigusr1():
    unit = unit_settings()
    assert unit["User"] == ["authmilter"] and unit["SupplementaryGroups"] == ["postfix"]
    for setting in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes",
                    "Restart=on-failure", "RestartPreventExitStatus=78"):
        name, value = setting.split("=")
        assert unit[name] == [value], setting
    assert "AF_UNIX" in unit["RestrictAddressFamilies"][0]
    # Both SIGUSR1 and SIGHUP reload; the unit sends SIGUSR1.
    assert unit["ExecReload"][-1] == "/bin/kill -USR1 $MAINPID"


def test_systemd_unit_can_write_the_sample_socket_directory():
    socket_dir = str(Path(Config().milter.socket.split(":", 1)[1]).parent)
    assert unit_settings()["ReadWritePaths"] == [socket_dir]
    tmpfiles = (ROOT / "systemd" / "authmilter.tmpfiles").read_text()
    assert f"d {socket_dir} 0750 authmilter postfix -" in tmpfiles
    sysusers = (ROOT / "systemd" / "authmilter.sysusers").read_text()
    assert "m authmilter postfix" in sysusers
