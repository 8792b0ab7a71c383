"""What the signing tests share: throw-away keys installed as the milter wants them, their DNS records, a config
with a [signing] section, and dkimpy as the independent verifier of what we sign."""

from __future__ import annotations

import os
import re
import shutil
import textwrap
from pathlib import Path

import dkim as dkimpy

from authmilter.config import Config, parse_config_text

KEYS = Path(__file__).parent / "data" / "dkim" / "keys"
RSA_P = (KEYS / "rsa2048.pub.b64").read_text().strip()
ED_P = (KEYS / "ed25519.pub.b64").read_text().strip()
RSA_RECORD = f"v=DKIM1; k=rsa; p={RSA_P}"
ED_RECORD = f"v=DKIM1; k=ed25519; p={ED_P}"


def install_keys(directory: Path) -> dict[str, Path]:
    """rsa2048.key (PKCS#1 PEM) and ed25519.key (dkimpy's base64 seed) copied with mode 0600, as a key should be."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, name in (("rsa", "rsa2048.key"), ("ed25519", "ed25519.key"), ("rsa1024", "rsa1024.key")):
        path = directory / name
        shutil.copyfile(KEYS / name, path)
        os.chmod(path, 0o600)
        paths[kind] = path
    return paths


def signing_config(keys: str, extra: str = "", source: str = "test.ini") -> Config:
    """A Config whose [signing] keys is `keys` (one line per key), plus `extra` lines in [signing]."""
    indented = "\n".join("    " + line for line in keys.strip().splitlines())
    return parse_config_text(f"[signing]\nkeys =\n{indented}\n" + textwrap.dedent(extra), source)


def txt_records(message: bytes, zone: dict[str, str]):
    """A dkimpy dnsfunc serving `zone` (owner name -> TXT value)."""
    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        record = zone.get(name.rstrip(".").lower())
        return record.encode() if record is not None else None
    return dnsfunc


def dkimpy_results(message: bytes, zone: dict[str, str]) -> list[bool]:
    """dkimpy's verdict on every DKIM-Signature of `message` (CRLF), top first."""
    head = message.split(b"\r\n\r\n", 1)[0]
    count = len(re.findall(rb"(?im)^dkim-signature:", head))
    dnsfunc = txt_records(message, zone)
    return [_verify(message, index, dnsfunc) for index in range(count)]


def _verify(message: bytes, index: int, dnsfunc) -> bool:
    try:
        return dkimpy.DKIM(message).verify(idx=index, dnsfunc=dnsfunc)
    except dkimpy.DKIMException:  # dkimpy 1.1.8 raises a body hash mismatch instead of returning False
        return False


def signature_tags(message: bytes, index: int = 0) -> dict[str, str]:
    """The tags of the index-th DKIM-Signature, whitespace removed from each value."""
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    unfolded = re.sub(r"\r\n(?=[ \t])", "", head)
    values = [line.split(":", 1)[1] for line in unfolded.split("\r\n") if line.lower().startswith("dkim-signature:")]
    tags = {}
    for part in values[index].split(";"):
        if "=" in part:
            name, value = part.split("=", 1)
            tags[name.strip()] = re.sub(r"\s+", "", value)
    return tags
