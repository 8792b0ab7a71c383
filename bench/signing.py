"""The signing part: CPU per message to sign the bench mix, authmilter beside OpenDKIM and dkimpy-milter in signing
mode, each with rsa-2048, ed25519 and both (dual signing, RFC 8463), on the same messages in the same run.

Each contender first signs one message, and its signatures are checked with dkimpy against the published keys: a
milter that does not really sign (a wrong option, an unsupported key) is reported as such, never measured as fast.
The client connects as 127.0.0.10, which each contender treats as internal (a signing client); the messages are
From news@bench.example with MAIL FROM news@bench.example, so authmilter's From/MAIL FROM rule allows them.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization

from bench import corpus, direct
from bench.milters import RunningMilter, _wait_for_socket
from testlab.milterclient import MilterClient, split_message

KEYSETS = ("rsa", "ed25519", "dual")
RSA_SELECTOR, ED_SELECTOR = "sign2048", "signed"


class Keys:
    """One RSA-2048 and one Ed25519 key made by `authmilter keygen`, in the forms each contender reads."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.rsa = directory / "rsa.pem"
        self.ed = directory / "ed25519.pem"
        self.records: dict[str, str] = {}
        for path, selector, kind in ((self.rsa, RSA_SELECTOR, "rsa"), (self.ed, ED_SELECTOR, "ed25519")):
            made = subprocess.run([sys.executable, "-m", "authmilter", "keygen", corpus.DOMAIN, "--selector",
                                   selector, "--type", kind, "--out", str(path)], capture_output=True, text=True,
                                  check=True, timeout=120)
            owner, _, rest = made.stdout.strip().partition(" IN TXT ")
            self.records[owner.rstrip(".")] = "".join(part.strip('"') for part in rest.split('" "'))
        # dkimpy-milter reads an Ed25519 key as the base64 of its 32-octet seed.
        private = serialization.load_pem_private_key(self.ed.read_bytes(), password=None)
        self.ed_seed = directory / "ed25519.seed"
        self.ed_seed.write_text(base64.b64encode(private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())).decode())
        self.ed_seed.chmod(0o600)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def start_authmilter(workdir: Path, keys: Keys, keyset: str) -> RunningMilter:
    sock = workdir / "authmilter.sock"
    lines = []
    if keyset in ("rsa", "dual"):
        lines.append(f"{corpus.DOMAIN} {RSA_SELECTOR} {keys.rsa}")
    if keyset in ("ed25519", "dual"):
        lines.append(f"{corpus.DOMAIN} {ED_SELECTOR} {keys.ed}")
    config = workdir / "authmilter.ini"
    config.write_text(f"[milter]\nsocket = unix:{sock}\nsocket_mode = 0666\nsocket_group =\n"
                      f"authserv_id = mx.bench.example\n[dns]\nnameservers = 127.0.0.1:53\ntrust_ad = no\n"
                      f"[signing]\nnetworks = 127.0.0.0/8\nkeys =\n" + "".join(f"    {line}\n" for line in lines))
    log = workdir / "authmilter.log"
    # Not under `timeout`: the bench reads the milter's own CPU counters by its PID.
    process = _spawn([sys.executable, "-m", "authmilter", "run", "--config", str(config)], log)
    _wait_for_socket(sock, process, log)
    return RunningMilter(f"authmilter {keyset}", [str(sock)], [process])


def start_opendkim(workdir: Path, keys: Keys, keyset: str) -> RunningMilter:
    """OpenDKIM 2.11 signs with one algorithm per instance (SignatureAlgorithm): dual signing is two instances
    chained, as Postfix would chain two milters, and their CPU is added up."""
    if keyset != "dual":
        return _opendkim_instance(workdir, keys, keyset)
    rsa_part = _opendkim_instance(workdir / "rsa", keys, "rsa")
    ed_part = _opendkim_instance(workdir / "ed25519", keys, "ed25519")
    return RunningMilter("opendkim dual", rsa_part.sockets + ed_part.sockets, rsa_part.processes + ed_part.processes)


def _opendkim_instance(workdir: Path, keys: Keys, keyset: str) -> RunningMilter:
    workdir.mkdir(exist_ok=True)
    sock = workdir / "opendkim.sock"
    (workdir / "internal").write_text("127.0.0.0/8\n")
    selector, path, algorithm = ((RSA_SELECTOR, keys.rsa, "rsa-sha256") if keyset == "rsa"
                                 else (ED_SELECTOR, keys.ed, "ed25519-sha256"))
    (workdir / "opendkim.conf").write_text(f"""Mode s
Socket local:{sock}
UMask 000
Background no
Syslog no
PidFile {workdir}/opendkim.pid
Canonicalization relaxed/relaxed
OversignHeaders From,Subject
Domain {corpus.DOMAIN}
Selector {selector}
KeyFile {path}
SignatureAlgorithm {algorithm}
InternalHosts {workdir}/internal
RequireSafeKeys no
""")
    log = workdir / "opendkim.log"
    process = _spawn(["opendkim", "-f", "-x", str(workdir / "opendkim.conf")], log)
    _wait_for_socket(sock, process, log)
    return RunningMilter(f"opendkim {keyset}", [str(sock)], [process])


def start_dkimpy_milter(workdir: Path, keys: Keys, keyset: str) -> RunningMilter:
    sock = workdir / "dkimpy.sock"
    (workdir / "internal").write_text("127.0.0.0/8\n")
    lines = ["Mode s", f"Socket local:{sock}", "UMask 000", "UserID root", "Syslog no",
             f"PidFile {workdir}/dkimpy-milter.pid", f"Domain {corpus.DOMAIN}", "Canonicalization relaxed/relaxed",
             f"InternalHosts {workdir}/internal"]
    if keyset in ("rsa", "dual"):
        lines += [f"Selector {RSA_SELECTOR}", f"KeyFile {keys.rsa}"]
    if keyset in ("ed25519", "dual"):
        lines += [f"SelectorEd25519 {ED_SELECTOR}", f"KeyFileEd25519 {keys.ed_seed}"]
    conf = workdir / "dkimpy-milter.conf"
    conf.write_text("\n".join(lines) + "\n")
    log = workdir / "dkimpy.log"
    process = _spawn(["dkimpy-milter", str(conf)], log)
    _wait_for_socket(sock, process, log)
    return RunningMilter(f"dkimpy-milter {keyset}", [str(sock)], [process])


def signatures_made(running: RunningMilter, raw: bytes, keys: Keys) -> list[str]:
    """Sign one message (through every milter of the chain); the a= of each signature added that dkimpy verifies
    (an empty list: nothing was signed)."""
    headers, body = split_message(raw)
    signatures = []
    for address in running.sockets:
        with MilterClient(address) as client:
            client.negotiate()
            outcome = client.transaction(client_ip=corpus.CLIENT_IP, helo=corpus.HELO, mail_from=corpus.SENDER,
                                         rcpts=[corpus.RCPT], headers=headers, body=body, queue_id="SIGNCHECK")
        added = [(c.name, c.value) for c in outcome.header_changes() if c.kind in ("insert", "add")]
        headers = [(name.encode(), value.encode()) for name, value in added] + headers
        signatures += [value for name, value in added if name.lower() == "dkim-signature"]
    good = []
    for value in signatures:
        text = value if value[:1] in (" ", "\t") else " " + value
        message = b"DKIM-Signature:" + text.replace("\r\n", "\n").replace("\n", "\r\n").encode() + b"\r\n" + raw

        def dnsfunc(name, timeout=5):
            return keys.records.get(name.decode().rstrip("."), "").encode() or None

        try:
            if dkimpy.DKIM(message).verify(idx=0, dnsfunc=dnsfunc):
                good.append(dkimpy.util.parse_tag_value(text.encode())[b"a"].decode())
        except dkimpy.DKIMException:
            pass
    return sorted(good)


EXPECTED = {"rsa": ["rsa-sha256"], "ed25519": ["ed25519-sha256"], "dual": ["ed25519-sha256", "rsa-sha256"]}


def run(tmp: Path, messages: list[bytes], *, concurrencies: tuple[int, ...], rounds: int, passes: int) -> dict:
    keys = Keys(tmp / "signing-keys")
    contenders = [("authmilter", start_authmilter)]
    if _installed("opendkim"):
        contenders.append(("opendkim", start_opendkim))
    if _installed("dkimpy-milter"):
        contenders.append(("dkimpy-milter", start_dkimpy_milter))
    cases = [(name, start, keyset) for keyset in KEYSETS for name, start in contenders]
    rows, refused, serial = [], {}, 0
    print(f"\nsigning the mix (relaxed/relaxed): CPU ms per message, warm, {rounds} round(s)")
    print(direct.HEADER)
    for concurrency in concurrencies:
        for round_number in range(rounds):
            shift = round_number % len(cases)
            for name, start, keyset in cases[shift:] + cases[:shift]:
                label = f"{name} {keyset}"
                if label in refused:
                    continue
                workdir = tmp / f"sign-{name}-{keyset}-{concurrency}-{round_number}"
                workdir.mkdir()
                try:
                    running = start(workdir, keys, keyset)
                except RuntimeError as exc:  # a contender that cannot start is reported, not measured
                    refused[label] = f"did not start: {str(exc)[-300:]}"
                    print(f"{label:<22} not measured: {refused[label]}", flush=True)
                    continue
                try:
                    made = signatures_made(running, messages[0], keys)
                    if made != EXPECTED[keyset]:
                        refused[label] = f"signed {made or 'nothing'} instead of {EXPECTED[keyset]}"
                        print(f"{label:<22} not measured: {refused[label]}", flush=True)
                        continue
                    result = direct.run_case(running, messages, concurrency=concurrency, passes=max(passes, 5),
                                             cache="warm", serial_base=serial)
                    serial += result.messages
                    print(result.row(), flush=True)
                    rows.append(direct.as_dict(result) | {"round": round_number, "keyset": keyset})
                finally:
                    running.stop()
    summary = direct.summarize(rows)
    print()
    print(direct.summary_table(summary).replace("warm cache, CPU ms per message", "signing, CPU ms per message"))
    return {"rows": rows, "summary": summary, "not_measured": refused}


def _installed(program: str) -> bool:
    return shutil.which(program) is not None

