"""[signing] keys: the line syntax, the key files refused at start-up with file and reason (exit 78), and which key
signs on which day (rotation by from= date)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authmilter.config import parse_config_text
from authmilter.errors import ConfigError
from authmilter.signing.keys import load_keyring
from tests.signing_support import KEYS, install_keys, signing_config

AUTHMILTER = [sys.executable, "-m", "authmilter"]


# ---------------------------------------------------------------- line syntax

@pytest.mark.parametrize("text, message", [
    ("keys = example.org sel relative.pem", "F.ini: [signing] keys: the key file must be an absolute path, got "
                                            "'relative.pem'"),
    ("keys = example.org sel", "F.ini: [signing] keys: expected DOMAIN SELECTOR KEYFILE [from=YYYY-MM-DD], got "
                               "'example.org sel'"),
    ("keys = example.org sel /k.pem from=2026-13-01", "F.ini: [signing] keys: not a date: 'from=2026-13-01'"),
    ("keys = example.org sel /k.pem until=2026-01-01", "F.ini: [signing] keys: expected from=YYYY-MM-DD after the "
                                                       "key file, got 'until=2026-01-01'"),
    ("keys = localhost sel /k.pem", "F.ini: [signing] keys: not a domain name: 'localhost'"),
    ("keys = user@example.org sel /k.pem", "F.ini: [signing] keys: not a domain name: 'user@example.org'"),
    ("keys = example.org bad_sel /k.pem", "F.ini: [signing] keys: not a selector: 'bad_sel' (letters, digits, "
                                                  "'-' and dots)"),
    ("login_domains = alice", "F.ini: [signing] login_domains: expected LOGIN DOMAIN [DOMAIN...], got 'alice'"),
    ("login_domains = alice example.org\n  alice example.com", "F.ini: [signing] login_domains: login 'alice' "
                                                               "listed twice"),
    ("canonicalization = relaxed", "F.ini: [signing] canonicalization: expected one of relaxed/relaxed, "
                                   "relaxed/simple, simple/simple, simple/relaxed, got 'relaxed'"),
    ("networks = 10.0.0.0/33", "F.ini: [signing] networks: not a network: '10.0.0.0/33'"),
    ("authenticated = maybe", "F.ini: [signing] authenticated: expected yes or no, got 'maybe'"),
    ("expire_days = -1", "F.ini: [signing] expire_days: must be at least 0, got -1"),
])
def test_bad_signing_lines_are_refused_with_section_key_and_reason(text, message):
    with pytest.raises(ConfigError) as refused:
        parse_config_text(f"[signing]\n{text}\n", "F.ini")
    assert str(refused.value) == message


def test_key_lines_are_read_with_a_labels_lowercase_and_dates():
    cfg = parse_config_text("[signing]\nkeys =\n  Bücher.Example. Sel-1 /k1.pem\n\n"
                            "  example.org s2 /k2.pem from=2026-09-01\n"
                            "login_domains = web example.org, Example.COM\n", "F.ini")
    first, second = cfg.signing.keys
    assert (first.domain, first.selector, first.path, first.not_before) == \
        ("xn--bcher-kva.example", "sel-1", "/k1.pem", None)
    assert second.not_before == datetime.date(2026, 9, 1)
    assert cfg.signing.login_domains[0].domains == ("example.org", "example.com")


# ---------------------------------------------------------------- key files refused at start-up (exit 78)

def _pem_rsa(bits: int) -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


def _pem_ec() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _encrypted() -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))


def _public() -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


RSA_TEXT = (KEYS / "rsa2048.key").read_bytes()

# (id, file contents or None for a directory, mode, group, the reason shown)
REFUSED = [
    ("world-readable", RSA_TEXT, 0o644, None, "readable by others (mode 0644): chmod 0640 (or 0600)"),
    ("other-writable", RSA_TEXT, 0o602, None, "readable by others (mode 0602)"),
    ("foreign-group", RSA_TEXT, 0o640, "daemon", "readable by group daemon (mode 0640), which is not the service's "
                                                 "group"),
    ("directory", None, 0o700, None, "not a regular file"),
    ("ec-key", _pem_ec(), 0o600, None, "holds an EC private key: DKIM signs with RSA or Ed25519 only"),
    ("public-key", _public(), 0o600, None, "holds a PUBLIC KEY: DKIM signs with an RSA or Ed25519 private key"),
    ("garbage-in-rsa-pem", b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", 0o600, None,
     "declared RSA PRIVATE KEY but does not hold one"),
    ("encrypted", _encrypted(), 0o600, None, "encrypted: the milter cannot ask for a passphrase"),
    ("512-bit", (KEYS / "rsa512.key").read_bytes(), 0o600, None, "a 512-bit RSA key: DKIM needs 1024 to 4096 bits"),
    ("two-keys", RSA_TEXT + _pem_rsa(1024), 0o600, None, "2 PEM blocks"),
    ("not-a-key", b"hello\n", 0o600, None, "not a PEM private key, nor a base64 Ed25519 seed"),
    ("empty", b"", 0o600, None, "not a PEM private key"),
]


def _check_config(config: Path, *, user: str | None = None) -> subprocess.CompletedProcess:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    return subprocess.run([*prefix, *AUTHMILTER, "check-config", str(config)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.parametrize("content, mode, group, reason", [case[1:] for case in REFUSED],
                         ids=[case[0] for case in REFUSED])
def test_key_file_refused_at_startup_names_the_file_and_reason(tmp_path, content, mode, group, reason):
    key = tmp_path / "key.pem"
    if content is None:
        key.mkdir()
    else:
        key.write_bytes(content)
    os.chmod(key, mode)
    if group:
        os.chown(key, -1, int(subprocess.run(["getent", "group", group], capture_output=True, text=True)
                               .stdout.split(":")[2]))
    config = tmp_path / "a.ini"
    config.write_text(f"[signing]\nkeys = example.org sel {key}\n")
    done = _check_config(config)
    assert done.returncode == 78, done.stderr
    assert f"{config}: [signing] keys: {key}: {reason}" in done.stderr


def test_missing_key_file_refused(tmp_path):
    config = tmp_path / "a.ini"
    config.write_text(f"[signing]\nkeys = example.org sel {tmp_path}/nothing.pem\n")
    done = _check_config(config)
    assert done.returncode == 78
    assert f"{tmp_path}/nothing.pem: cannot read: No such file or directory" in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")
def test_key_file_the_service_user_cannot_read_is_refused():
    directory = Path(tempfile.mkdtemp(prefix="authmilter-keys-"))
    try:
        directory.chmod(0o755)
        key = directory / "key.pem"
        key.write_bytes(RSA_TEXT)
        key.chmod(0o600)  # root's: the unprivileged service cannot read it
        config = directory / "a.ini"
        config.write_text(f"[signing]\nkeys = example.org sel {key}\n")
        config.chmod(0o644)
        done = _check_config(config, user="65534")  # nobody
        assert done.returncode == 78, done.stderr
        assert f"{config}: [signing] keys: {key}: cannot read: Permission denied" in done.stderr
    finally:
        for path in sorted(directory.iterdir()):
            path.unlink()
        directory.rmdir()


def test_run_refuses_a_bad_key_file_with_exit_78_before_listening(tmp_path):
    key = tmp_path / "key.pem"
    key.write_bytes(RSA_TEXT)
    key.chmod(0o644)
    config = tmp_path / "a.ini"
    config.write_text(f"[milter]\nsocket = unix:{tmp_path}/s.sock\nsocket_group =\n"
                      f"[signing]\nkeys = example.org sel {key}\n")
    done = subprocess.run(["timeout", "60", *AUTHMILTER, "run", "--config", str(config)], capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 78
    assert f"{key}: readable by others (mode 0644)" in done.stderr
    assert not (tmp_path / "s.sock").exists()


def test_good_keys_pass_check_config(tmp_path):
    keys = install_keys(tmp_path / "keys")
    keys["rsa"].chmod(0o640)  # our own group may read
    config = tmp_path / "a.ini"
    config.write_text(f"[signing]\nkeys =\n    example.org r {keys['rsa']}\n    example.org e {keys['ed25519']}\n")
    done = _check_config(config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{config}: OK"


def test_one_selector_twice_and_two_undated_keys_of_one_type_are_refused(tmp_path):
    keys = install_keys(tmp_path)
    with pytest.raises(ConfigError, match=r"test.ini: \[signing\] keys: selector a of example.org is listed twice"):
        load_keyring(signing_config(f"example.org a {keys['rsa']}\nexample.org a {keys['ed25519']}"))
    with pytest.raises(ConfigError, match=r"a and b are both rsa keys of example.org without a from= date: which "
                                          r"one signs would be a guess"):
        load_keyring(signing_config(f"example.org a {keys['rsa']}\nexample.org b {keys['rsa1024']}"))
    with pytest.raises(ConfigError, match="both rsa keys of example.org from 2026-09-01"):
        load_keyring(signing_config(f"example.org a {keys['rsa']} from=2026-09-01\n"
                                    f"example.org b {keys['rsa1024']} from=2026-09-01"))


def test_no_keys_means_no_keyring():
    assert load_keyring(parse_config_text("[signing]\nnetworks = 10.0.0.0/8\n", "F.ini")) is None


# ---------------------------------------------------------------- rotation

def test_the_newest_key_whose_date_has_passed_signs_one_per_type(tmp_path):
    keys = install_keys(tmp_path)
    keyring = load_keyring(signing_config(
        f"example.org old {keys['rsa1024']}\n"
        f"example.org new {keys['rsa']} from=2026-06-01\n"
        f"example.org ed {keys['ed25519']} from=2026-07-01\n"
        f"other.example only {keys['rsa']} from=2030-01-01\n"))

    def active(domain: str, day: str) -> list[str]:
        return [key.selector for key in keyring.active(domain, datetime.date.fromisoformat(day))]

    assert active("example.org", "2026-05-31") == ["old"]
    assert active("example.org", "2026-06-01") == ["new"]          # from 00:00 UTC of its day
    assert active("example.org", "2026-07-01") == ["new", "ed"]    # rsa first, then the Ed25519 key (dual)
    assert active("other.example", "2029-12-31") == []             # listed (and checked) ahead, signs nothing yet
    assert active("other.example", "2030-01-01") == ["only"]
    assert active("nobody.example", "2030-01-01") == []
    assert keyring.has_domain("other.example") and not keyring.has_domain("nobody.example")
