"""`authmilter keygen`: the key file's owner, group and mode, never an overwrite, and the zone-file line it prints
(255-octet strings whose concatenation is the key record of the file's public key)."""

from __future__ import annotations

import base64
import os
import pwd
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from authmilter.signing.keygen import zone_line
from authmilter.signing.keys import SERVICE_USER, parse_private_key

AUTHMILTER = [sys.executable, "-m", "authmilter"]
ZONE_LINE = re.compile(r'^(\S+)\. IN TXT ((?:"[^"]*" ?)+)$')


def keygen(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    return subprocess.run([*prefix, *AUTHMILTER, "keygen", *args], capture_output=True, text=True, timeout=120)


def expected_group() -> int:
    try:
        return pwd.getpwnam(SERVICE_USER).pw_gid
    except KeyError:
        return os.getgid()


def record_of(stdout: str) -> tuple[str, list[str]]:
    """(owner name, the character-strings) of the one line keygen printed."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    match = ZONE_LINE.match(lines[0])
    assert match, lines[0]
    return match.group(1), re.findall(r'"([^"]*)"', match.group(2))


def public_p(path: Path) -> tuple[str, str]:
    private = parse_private_key(path.read_bytes())
    public = private.public_key()
    if hasattr(public, "key_size"):
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return "rsa", base64.b64encode(der).decode()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519", base64.b64encode(raw).decode()


@pytest.mark.parametrize("key_type, bits, strings", [("rsa", None, 2), ("ed25519", None, 1), ("rsa", "4096", 3)])
def test_keygen_writes_a_private_key_0640_root_service_group_and_prints_its_record(tmp_path, key_type, bits,
                                                                                   strings):
    out = tmp_path / "key.pem"
    done = keygen("example.org", "--selector", "2026a", "--type", key_type, *(["--bits", bits] if bits else []),
                  "--out", str(out))
    assert done.returncode == 0, done.stderr
    info = out.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_uid == (0 if os.geteuid() == 0 else os.getuid())
    assert info.st_gid == expected_group()
    owner, pieces = record_of(done.stdout)
    assert owner == "2026a._domainkey.example.org"
    assert len(pieces) == strings
    assert all(len(piece.encode()) <= 255 for piece in pieces)
    assert all(len(piece.encode()) == 255 for piece in pieces[:-1])  # split only where a string is full
    kind, p_value = public_p(out)
    assert kind == key_type
    assert "".join(pieces) == f"v=DKIM1; k={key_type}; p={p_value}"
    if key_type == "rsa":
        assert out.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1: OpenDKIM, dkimpy
        assert parse_private_key(out.read_bytes()).key_size == int(bits or 2048)
    assert f"example.org 2026a {out}" in done.stderr  # the line for [signing] keys


def test_keygen_never_overwrites_a_file_or_writes_through_a_link(tmp_path):
    existing = tmp_path / "key.pem"
    existing.write_bytes(b"precious")
    done = keygen("example.org", "--selector", "s", "--type", "ed25519", "--out", str(existing))
    assert done.returncode == 73
    assert "already exists; keygen never overwrites a key file" in done.stderr
    assert existing.read_bytes() == b"precious" and done.stdout == ""

    target = tmp_path / "elsewhere.pem"
    link = tmp_path / "link.pem"
    link.symlink_to(target)  # dangling: O_EXCL must not follow it and create the target
    done = keygen("example.org", "--selector", "s", "--type", "ed25519", "--out", str(link))
    assert done.returncode == 73
    assert not target.exists()

    done = keygen("example.org", "--selector", "s", "--type", "rsa", "--out", str(tmp_path / "no" / "dir.pem"))
    assert done.returncode == 73 and "cannot create: No such file or directory" in done.stderr


@pytest.mark.parametrize("args, message", [
    (["--type", "ed25519", "--bits", "2048"], "--bits is for rsa keys only"),
    (["--type", "rsa", "--bits", "512"], "--bits must be 1024 to 4096 (RFC 8301 §3.2), got 512"),
    (["--type", "dsa"], "invalid choice: 'dsa'"),
])
def test_keygen_usage_errors_exit_64_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "key.pem"
    done = keygen("example.org", "--selector", "s", *args, "--out", str(out))
    assert done.returncode == 64
    assert message in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("domain, selector, message", [
    ("localhost", "s", "not a domain name: 'localhost'"),
    ("example.org", "a_b", "not a selector: 'a_b'"),
])
def test_keygen_refuses_names_that_cannot_be_published(tmp_path, domain, selector, message):
    done = keygen(domain, "--selector", selector, "--type", "ed25519", "--out", str(tmp_path / "k.pem"))
    assert done.returncode == 64 and message in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")
def test_keygen_as_an_ordinary_user_without_service_user_keeps_its_own_group():
    if SERVICE_USER in {entry.pw_name for entry in pwd.getpwall()}:
        pytest.skip("the service user exists here: an ordinary user cannot give a file to its group")
    directory = Path(tempfile.mkdtemp(prefix="authmilter-keygen-"))
    try:
        os.chown(directory, 65534, 65534)
        out = directory / "key.pem"
        done = keygen("example.org", "--selector", "dev", "--type", "ed25519", "--out", str(out), user="65534")
        assert done.returncode == 0, done.stderr
        info = out.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, 65534, 0o640)
    finally:
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()


def test_keygen_output_is_accepted_by_check_config(tmp_path):
    out = tmp_path / "key.pem"
    assert keygen("example.org", "--selector", "s", "--type", "rsa", "--out", str(out)).returncode == 0
    config = tmp_path / "a.ini"
    config.write_text(f"[signing]\nkeys = example.org s {out}\n")
    done = subprocess.run([*AUTHMILTER, "check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_zone_line_uses_a_labels_and_a_final_dot():
    line = zone_line("Bücher.example", "s1", "v=DKIM1; k=ed25519; p=" + "A" * 300)
    assert line.startswith('s1._domainkey.xn--bcher-kva.example. IN TXT "v=DKIM1; k=ed25519; p=AAA')
    pieces = re.findall(r'"([^"]*)"', line)
    assert [len(piece) for piece in pieces] == [255, len("v=DKIM1; k=ed25519; p=") + 300 - 255]
