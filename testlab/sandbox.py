"""Run a command as on another host: its own /etc/authmilter, its own host name, and no network.

    reason = sandbox.available()                       # "" when usable (root, unshare, overlayfs)
    done = sandbox.run(["authmilter", "check", ...], tmp_path, etc_authmilter=conf_dir, hostname="mx")

Some behaviour depends on fixed places of the host: `authmilter check` reads /etc/authmilter/authmilter.ini when
it exists, and an authserv-id defaults to the machine's host name. Rather than give the product a switch for
tests, the test runs the real command in new Linux namespaces (unshare(1)):

- mount: /etc is overlaid (the host's /etc below, a scratch directory on top, so nothing of the host's changes)
  and `etc_authmilter` is bind-mounted on /etc/authmilter; without it, /etc/authmilter is an empty directory.
  Either way the host's own /etc/authmilter (a package under test elsewhere may install one) is out of sight.
- uts: `hostname` is this namespace's host name.
- net: a network namespace with only a loopback that is down, so resolving the host name (socket.getfqdn())
  sends nothing anywhere: the network rule holds whatever /etc/resolv.conf says.

Every command runs under coreutils `timeout`; spawn() returns a Popen in its own process group, which the caller
stops by that group's ID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

_SETUP = r"""
set -e
upper="$1"; work="$2"; etc_authmilter="$3"; host="$4"; shift 4
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$upper,workdir=$work" /etc
mkdir -p /etc/authmilter
mount -t tmpfs -o mode=0755 tmpfs /etc/authmilter
if [ -n "$etc_authmilter" ]; then mount --bind "$etc_authmilter" /etc/authmilter; fi
if [ -n "$host" ]; then hostname "$host"; fi
exec "$@"
"""


def available() -> str:
    """Why the sandbox cannot be used here, or ""."""
    if os.geteuid() != 0:
        return "needs root (mount, UTS and network namespaces)"
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    try:
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "the kernel has no overlayfs"
    except OSError as exc:
        return f"cannot read /proc/filesystems: {exc}"
    return ""


def _command(argv: list[str], scratch: Path, etc_authmilter: Path | None, hostname: str | None,
             timeout: float) -> list[str]:
    upper, work = scratch / "etc-upper", scratch / "etc-work"
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    return ["timeout", "--kill-after=5", str(int(timeout)),
            "unshare", "--mount", "--uts", "--net", "--propagation", "private",
            "sh", "-c", _SETUP, "sandbox", str(upper), str(work), str(etc_authmilter or ""), hostname or "",
            *argv]


def run(argv: list[str], scratch: Path | None = None, *, etc_authmilter: Path | None = None,
        hostname: str | None = None, timeout: float = 120, env: dict | None = None,
        input: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run argv in the sandbox and wait; stdout and stderr as text. scratch: a directory for the overlay's
    upper layer (a temporary one by default)."""
    with tempfile.TemporaryDirectory(prefix="authmilter-sandbox-") as own:
        command = _command(argv, Path(scratch or own), etc_authmilter, hostname, timeout)
        done = subprocess.run(command, input=input, capture_output=True, timeout=timeout + 10, env=env, cwd=cwd)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode("utf-8", "replace"),
                                       done.stderr.decode("utf-8", "replace"))


def spawn(argv: list[str], scratch: Path, *, etc_authmilter: Path | None = None, hostname: str | None = None,
          timeout: float = 120, env: dict | None = None, cwd: Path | None = None, stdout=None,
          stderr=None) -> subprocess.Popen:
    """Start argv in the sandbox without waiting, in a new process group (stop it with os.killpg(p.pid, ...))."""
    command = _command(argv, scratch, etc_authmilter, hostname, timeout)
    return subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            start_new_session=True)
