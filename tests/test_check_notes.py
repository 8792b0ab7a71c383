"""What `authmilter check` says beside the judgement: the configuration it used (the host's own file when it
exists), a host-name authserv-id, why nothing was checked, an mbox From line, DNS that looks unusable.

Tests that depend on /etc/authmilter or the host name run the real command in testlab.sandbox (its own
/etc/authmilter, host name and no network); the others give --config with an authserv_id, so the host name is
never looked up, and --zone or a loopback DNS server, so nothing leaves the machine.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from authmilter import exitcodes
from testlab import sandbox
from testlab.dnsserver import DnsServer

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'milter'}"}
AUTHMILTER = [sys.executable, "-m", "authmilter"]

ZONE = """\
$TTL 300
example.org.                TXT  "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.example.org.         TXT  "v=DMARC1; p=reject"
mail.example.org.           A    192.0.2.1
mail.example.org.           TXT  "v=spf1 a -all"
1.2.0.192.in-addr.arpa.     PTR  mail.example.org.
"""
MESSAGE = b"From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: hi\n\nHello.\n"
ENVELOPE = ("--ip", "192.0.2.1", "--helo", "mail.example.org", "--mail-from", "alice@example.org")


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([*AUTHMILTER, *args], input=stdin, capture_output=True, timeout=120, env=ENV)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def notes(stderr: str) -> list[str]:
    """check's own notes, without the log line."""
    return [line for line in stderr.splitlines() if line.startswith("authmilter check: ")]


def authserv_id(stdout: str) -> str:
    found = re.match(r"Authentication-Results: ([^;]+);", stdout)
    assert found, stdout
    return found.group(1)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("checknotes")
    return {
        "zone": write(base / "records.zone", ZONE),
        "message": write(base / "message.eml", MESSAGE),
        "config": write(base / "authmilter.ini", "[milter]\nauthserv_id = mx.example.net\n[trust]\nnetworks =\n"),
    }


needs_sandbox = pytest.mark.skipif(bool(sandbox.available()), reason=sandbox.available() or "ok")


# ---------------------------------------------------------------- which configuration

@needs_sandbox
def test_check_uses_the_hosts_config_file_and_its_dropins_and_says_so(tmp_path, files):
    etc = tmp_path / "etc-authmilter"
    write(etc / "authmilter.ini", "[milter]\nauthserv_id = mx.example.net\n")
    write(etc / "conf.d" / "10-dmarc.ini", "[dmarc]\nreject_action = quarantine\n")
    done = sandbox.run([*AUTHMILTER, "check", "--zone", str(files["zone"]), "--ip", "198.51.100.7",
                        "--mail-from", "alice@example.org", str(files["message"])], tmp_path,
                       etc_authmilter=etc, hostname="mx.sandbox.example", env=ENV)
    assert notes(done.stderr)[0] == ("authmilter check: configuration: /etc/authmilter/authmilter.ini + "
                                     "/etc/authmilter/conf.d/10-dmarc.ini")
    assert authserv_id(done.stdout) == "mx.example.net"                      # the file's, not the host name
    assert done.stdout.splitlines()[-1].startswith("action: quarantine ")   # the drop-in's downgrade of p=reject
    assert done.returncode == 3


@needs_sandbox
def test_check_without_a_config_file_uses_the_defaults_and_says_why(tmp_path, files):
    done = sandbox.run([*AUTHMILTER, "check", "--zone", str(files["zone"]), *ENVELOPE], tmp_path,
                       hostname="mx.sandbox.example", env=ENV)
    assert done.returncode == 0, done.stderr
    assert notes(done.stderr) == [
        "authmilter check: configuration: built-in defaults (/etc/authmilter/authmilter.ini does not exist)"]
    assert authserv_id(done.stdout) == "mx.sandbox.example"


@needs_sandbox
def test_no_config_ignores_the_hosts_file(tmp_path, files):
    etc = tmp_path / "etc-authmilter"
    write(etc / "authmilter.ini", "[milter]\nauthserv_id = mx.example.net\n")
    done = sandbox.run([*AUTHMILTER, "check", "--no-config", "--zone", str(files["zone"]), *ENVELOPE], tmp_path,
                       etc_authmilter=etc, hostname="mx.sandbox.example", env=ENV)
    assert done.returncode == 0, done.stderr
    assert notes(done.stderr) == ["authmilter check: configuration: built-in defaults (--no-config)"]
    assert authserv_id(done.stdout) == "mx.sandbox.example"


@needs_sandbox
def test_a_broken_host_config_is_refused_not_skipped(tmp_path, files):
    etc = tmp_path / "etc-authmilter"
    write(etc / "authmilter.ini", "[dkim]\nmin_key_bits = 2048 # stronger\n")
    done = sandbox.run([*AUTHMILTER, "check", "--zone", str(files["zone"]), *ENVELOPE], tmp_path,
                       etc_authmilter=etc, hostname="mx.sandbox.example", env=ENV)
    assert done.returncode == 78
    assert done.stderr.startswith("/etc/authmilter/authmilter.ini: [dkim] min_key_bits: '# stronger' looks like a "
                                  "comment after the value")
    assert done.stdout == ""


def test_config_and_no_config_together_is_a_usage_error(files):
    done = run("check", "--config", str(files["config"]), "--no-config", *ENVELOPE)
    assert done.returncode == 64
    assert "not allowed with argument" in done.stderr


# ---------------------------------------------------------------- an authserv-id from the host name

WARNING = ("authmilter check: warning: authserv_id {name!r} comes from this machine's host name, which is not a "
           "fully qualified domain name; set [milter] authserv_id in {where} to this host's name as other mail "
           "systems know it (e.g. authserv_id = mx.example.org)")


@needs_sandbox
@pytest.mark.parametrize("hostname", ["lab", "localhost"])
def test_unqualified_host_name_is_warned_about(tmp_path, files, hostname):
    done = sandbox.run([*AUTHMILTER, "check", "--zone", str(files["zone"]), *ENVELOPE], tmp_path,
                       hostname=hostname, env=ENV)
    assert done.returncode == 0, done.stderr
    assert notes(done.stderr)[1] == WARNING.format(name=hostname, where="the configuration file")
    assert authserv_id(done.stdout) == hostname   # still judged: a warning, not a refusal


@needs_sandbox
def test_the_warning_names_the_file_to_edit(tmp_path, files):
    etc = tmp_path / "etc-authmilter"
    write(etc / "authmilter.ini", "[dkim]\nmin_key_bits = 2048\n")
    done = sandbox.run([*AUTHMILTER, "check", "--zone", str(files["zone"]), *ENVELOPE], tmp_path,
                       etc_authmilter=etc, hostname="lab", env=ENV)
    assert WARNING.format(name="lab", where="/etc/authmilter/authmilter.ini") in notes(done.stderr)


@pytest.mark.parametrize("written", ["localhost", "mx", "localhost.localdomain", "mx.localhost", "LOCALHOST."])
def test_unqualified_authserv_id_in_the_file_is_refused_exit_78(tmp_path, files, written):
    config = write(tmp_path / "authmilter.ini", f"[milter]\nauthserv_id = {written}\n")
    value = written.rstrip(".")
    message = (f"{config}: [milter] authserv_id: {value!r} is not a fully qualified host name: write the name "
               f"other mail systems know this host by, e.g. mx.example.org (RFC 8601 §2.5)\n")
    for command in (["check", "--config", str(config), "--zone", str(files["zone"]), *ENVELOPE],
                    ["check-config", str(config)], ["run", "--config", str(config)]):
        done = run(*command)
        assert (done.returncode, done.stderr) == (78, message), command


# ---------------------------------------------------------------- why nothing was checked

def test_trusted_network_is_shown_in_the_output(tmp_path, files):
    config = write(tmp_path / "trust.ini", "[milter]\nauthserv_id = mx.example.net\n[trust]\n"
                                           "networks = 10.0.0.0/8, 192.0.2.0/24\n")
    done = run("check", "--config", str(config), "--zone", str(files["zone"]), *ENVELOPE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Authentication-Results: mx.example.net; none",
        "skipped: trusted_network (client 192.0.2.1 is in 192.0.2.0/24 of [trust] networks): nothing was checked",
        "action: accept",
    ]


def test_authenticated_sender_is_shown_in_the_output(files):
    done = run("check", "--config", str(files["config"]), "--zone", str(files["zone"]), *ENVELOPE,
               "--authenticated", "alice")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        "skipped: authenticated (client authenticated as 'alice' and [trust] authenticated = yes): "
        "nothing was checked",
        "action: accept",
    ]


def test_checked_mail_has_no_skipped_line(files):
    done = run("check", "--config", str(files["config"]), "--zone", str(files["zone"]), *ENVELOPE)
    assert done.returncode == 0, done.stderr
    assert not any(line.startswith("skipped:") for line in done.stdout.splitlines())


# ---------------------------------------------------------------- an mbox "From " line

MBOX_FROM = b"From : <a@victim.example>\n"


def test_mbox_from_line_is_not_a_from_header_and_is_named(files):
    plain = run("check", "--config", str(files["config"]), "--zone", str(files["zone"]), *ENVELOPE, "-",
                stdin=MESSAGE)
    mbox = run("check", "--config", str(files["config"]), "--zone", str(files["zone"]), *ENVELOPE, "-",
               stdin=MBOX_FROM + MESSAGE)
    assert mbox.returncode == plain.returncode == 0, mbox.stderr
    assert mbox.stdout == plain.stdout   # the same judgement: one From, example.org's, DMARC pass
    assert "dmarc=pass" in mbox.stdout and "header.from=example.org" in mbox.stdout
    assert notes(mbox.stderr)[-1] == ("authmilter check: the first line 'From : <a@victim.example>' was treated as "
                                      "an mbox 'From ' line, not as a header, as Postfix does (it renames it to "
                                      "X-Mailbox-Line:)")
    assert not any("mbox" in note for note in notes(plain.stderr))


def test_a_from_header_written_with_a_space_is_a_from_header_below_the_first_line(files):
    """Only the first line is an mbox line: lower down, "From : x" is a second From header (RFC 5322 obsolete
    syntax), which DMARC refuses, as the milter does behind Postfix."""
    done = run("check", "--config", str(files["config"]), "--zone", str(files["zone"]), *ENVELOPE, "-",
               stdin=MESSAGE.replace(b"To: ", b"From : <a@victim.example>\nTo: ", 1))
    assert done.returncode == 1
    assert "dmarc=permerror" in done.stdout
    assert not any("mbox" in note for note in notes(done.stderr))


# ---------------------------------------------------------------- DNS that looks unusable

def test_dns_answering_nothing_is_called_unusable(tmp_path, files):
    elsewhere = write(tmp_path / "elsewhere.zone", "$TTL 300\nexample.com. TXT \"v=spf1 -all\"\n")
    done = run("check", "--config", str(files["config"]), "--zone", str(elsewhere), *ENVELOPE)
    assert done.returncode == 0, done.stderr
    [warning] = [note for note in notes(done.stderr) if "DNS looks unusable" in note]
    assert warning.startswith("authmilter check: warning: DNS looks unusable: all 6 lookups failed or found no "
                              "such name (1.2.0.192.in-addr.arpa/PTR: NXDOMAIN, mail.example.org/TXT: NXDOMAIN, ")
    assert warning.endswith(f"does {elsewhere} hold these names, written absolute (with the final dot), e.g. "
                            f"'example.org. TXT \"v=spf1 -all\"'?")


def test_a_resolver_that_fails_everything_is_called_unusable(files):
    with DnsServer({}, lifetime=60) as server:
        done = run("check", "--config", str(files["config"]), "--resolver", server.address, *ENVELOPE)
    assert done.returncode == 0, done.stderr
    [warning] = [note for note in notes(done.stderr) if "DNS looks unusable" in note]
    assert warning.endswith("check --resolver, [dns] nameservers or /etc/resolv.conf, or answer from a file of "
                            "records with --zone FILE")


def test_one_answer_is_enough_to_say_nothing(tmp_path, files):
    """A client without PTR and a sender domain that does not exist happen; one record found means DNS works."""
    only_ptr = write(tmp_path / "ptr.zone", "$TTL 300\n1.2.0.192.in-addr.arpa. PTR mail.example.org.\n")
    done = run("check", "--config", str(files["config"]), "--zone", str(only_ptr), *ENVELOPE)
    assert not any("DNS looks unusable" in note for note in notes(done.stderr))
    assert "spf=none" in done.stdout


# ---------------------------------------------------------------- run --help, the unit file

def test_run_help_says_where_the_socket_is_what_signals_do_and_the_exit_statuses():
    done = run("run", "--help")
    assert done.returncode == 0
    text = done.stdout
    assert "default unix:/var/spool/postfix/authmilter/authmilter.sock" in text
    assert "smtpd_milters = unix:authmilter/authmilter.sock" in text
    assert re.search(r"SIGHUP, SIGUSR1 +reload the configuration", text)
    assert re.search(r"SIGTERM, SIGINT +stop cleanly", text)
    statuses = {int(code): meaning for code, meaning in re.findall(r"^  (\d+) +(.+)$", text, re.M)}
    assert statuses[exitcodes.EX_OK].startswith("stopped")
    assert statuses[exitcodes.EX_OSERR].startswith("cannot listen")
    assert statuses[exitcodes.EX_CONFIG].startswith("bad configuration")
    assert statuses[exitcodes.EX_SOFTWARE].startswith("internal error")
    assert statuses[exitcodes.EX_USAGE].startswith("usage error")


def test_the_unit_file_says_what_sighup_does():
    unit = (ROOT / "systemd" / "authmilter.service").read_text()
    mentions = [line for line in unit.splitlines() if "SIGHUP" in line]
    assert mentions and all("reload" in line for line in mentions), mentions


# ---------------------------------------------------------------- --zone mistakes

@pytest.mark.parametrize("text, message", [
    (None, ": cannot read: No such file or directory"),
    ("$TTL 300\nexample.org. TXXT \"x\"\n", ":2: unknown rdatatype 'TXXT'"),
    ("example.org. TXT \"x\"\n", ": Missing default TTL value (give each record a TTL, or begin the file "
                                 "with a line such as '$TTL 3600')"),
    ("$TTL 300\nexample.org. SOA ns.example.org. host.example.org. 1 2 3 4 5\nexample.com. TXT \"x\"\n",
     ":3: example.com. is outside the zone of the SOA (example.org.): remove the SOA to mix names of several "
     "zones in one file"),
])
def test_zone_file_mistakes_are_usage_errors(tmp_path, files, text, message):
    zone = tmp_path / "bad.zone"
    if text is not None:
        zone.write_text(text)
    done = run("check", "--config", str(files["config"]), "--zone", str(zone), *ENVELOPE)
    assert done.returncode == 64
    assert done.stderr.startswith(f"authmilter check: --zone: {zone}:")
    assert done.stderr.endswith(f"{message}\n") and len(done.stderr.splitlines()) == 1
    assert done.stdout == ""


def test_zone_and_resolver_together_is_a_usage_error(files):
    done = run("check", "--config", str(files["config"]), "--zone", str(files["zone"]), "--resolver", "127.0.0.1",
               *ENVELOPE)
    assert done.returncode == 64
    assert "not allowed with argument" in done.stderr


@needs_sandbox
def test_readme_try_it_example_works_without_dns(tmp_path):
    """The README's "Try the checks without Postfix" example, as written there: its zone file and message, its
    command run on a host named mx.example.net without a configuration file and without any network."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("Try the checks without Postfix", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.S)
    command = next(body for kind, body in blocks if kind == "sh" and "--zone" in body)
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[0] == ".venv/bin/authmilter"
    write(tmp_path / "work" / argv[argv.index("--zone") + 1], next(body for kind, body in blocks if kind == "zone"))
    write(tmp_path / "work" / argv[-1], next(body for kind, body in blocks if kind == "email"))
    done = sandbox.run([*AUTHMILTER, *argv[1:]], tmp_path, hostname="mx.example.net", env=ENV,
                       cwd=tmp_path / "work")
    assert done.returncode == 0, done.stderr
    expected = next(body for kind, body in blocks if kind == "" and body.startswith("Authentication-Results:"))
    assert done.stdout == expected
    assert not any("warning" in note for note in notes(done.stderr))
