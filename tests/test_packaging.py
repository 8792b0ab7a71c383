"""Packaging as an administrator meets it: the sdist and wheel (`python -m build`, then `pip install` of the sdist
into a clean virtualenv), and the Debian package (`make deb`, lintian, `dpkg -i`, the installed command, purge).

The builds run in a copy of the checkout, so a test never leaves build products in the developer's tree; pip's
cache is the checkout's own .cache/pip (nothing cached outside the repository). Installing the Debian package
needs root, as CI has: the test holds dpkg's frontend lock from install to purge, so no other dpkg or apt run (nor
a second run of this test) interleaves with it, and purges whatever happened.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import authmilter

ROOT = Path(__file__).resolve().parent.parent
PIP_CACHE = ROOT / ".cache" / "pip"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
# Debian's own interpreter, as an administrator following the README would use (python3-venv, python3-dev).
SYSTEM_PYTHON = "/usr/bin/python3"
# What a root shell's PATH finds, without this test run's virtualenv or any other Python in front.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TEST_HELPERS = ("tests", "testlab", "bench")


def run(command: list[str], *, timeout: float, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {done.returncode}\n--- stdout\n{done.stdout[-4000:]}\n"
                    f"--- stderr\n{done.stderr[-4000:]}")
    return done


def copy_checkout(destination: Path) -> Path:
    """The files git would commit now (tracked or new, not ignored), as they are on disk."""
    listed = run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                 timeout=60).stdout
    for name in sorted(set(filter(None, listed.split("\0")))):
        source, target = ROOT / name, destination / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet in the index
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return destination


def build_env() -> dict[str, str]:
    return {**os.environ, "PIP_CACHE_DIR": str(PIP_CACHE), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


# ---------------------------------------------------------------- fast: what the builds rely on

def pinned_requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "debian" / "venv-requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_the_package_environment_pins_every_dependency_at_an_allowed_version():
    pins = pinned_requirements()
    wrong = []
    for text in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(text)
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None or not requirement.specifier.contains(pinned, prereleases=True):
            wrong.append(f"{text} (debian/venv-requirements.txt: {pinned or 'missing'})")
    assert wrong == []


def test_every_version_number_agrees():
    changelog = (ROOT / "debian" / "changelog").read_text(encoding="utf-8").splitlines()[0]
    assert re.match(r"authmilter \(([^)-]+)(?:-[^)]*)?\)", changelog).group(1) == VERSION
    assert authmilter.__version__ == VERSION


def test_every_lintian_override_gives_its_reason_on_the_line_above():
    lines = (ROOT / "debian" / "authmilter.lintian-overrides").read_text(encoding="utf-8").splitlines()
    overrides = [index for index, line in enumerate(lines) if line.strip() and not line.startswith("#")]
    assert overrides
    assert [lines[i] for i in overrides if i == 0 or not lines[i - 1].startswith("# ")] == []


# ---------------------------------------------------------------- sdist and wheel

@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel) as `python -m build` makes them: the wheel is built from the sdist."""
    work = tmp_path_factory.mktemp("dists")
    source = copy_checkout(work / "src")
    run([sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(source)], timeout=900, env=build_env())
    sdists = list((work / "dist").glob("authmilter-*.tar.gz"))
    wheels = list((work / "dist").glob("authmilter-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in (work / "dist").iterdir())
    return sdists[0], wheels[0]


def _helpers_in(names: list[str]) -> list[str]:
    return [name for name in names if set(Path(name).parts) & set(TEST_HELPERS)]


@pytest.mark.package
@pytest.mark.timeout(1200)
def test_sdist_and_wheel_hold_the_program_and_no_test_helpers(dists):
    sdist, wheel = dists
    with tarfile.open(sdist) as archive:
        sdist_names = [Path(name).relative_to(f"authmilter-{VERSION}").as_posix() for name in archive.getnames()
                       if name != f"authmilter-{VERSION}"]
    with zipfile.ZipFile(wheel) as archive:
        wheel_names = archive.namelist()
    assert _helpers_in(sdist_names) == [] and _helpers_in(wheel_names) == []
    for name in ("milter/authmilter/cli.py", "milter/authmilter/_relaxed.c", "setup.py", "pyproject.toml",
                 "LICENSE", "config/authmilter.ini", "systemd/authmilter.service", "man/authmilter.8",
                 "man/authmilter.ini.5"):
        assert name in sdist_names, name
    assert "authmilter/cli.py" in wheel_names
    assert any(re.fullmatch(r"authmilter/_relaxed\..*\.so", name) for name in wheel_names)
    assert not any(name.startswith(("milter/", "debian/")) for name in wheel_names)


@pytest.mark.package
@pytest.mark.timeout(1200)
def test_sdist_installs_into_a_clean_virtualenv_and_runs(dists, tmp_path):
    sdist, _ = dists
    venv = tmp_path / "venv"
    run([SYSTEM_PYTHON, "-m", "venv", str(venv)], timeout=300)
    # Compiles pymilter (libmilter-dev) and our C extension from source.
    run([str(venv / "bin" / "pip"), "install", "--quiet", str(sdist)], timeout=900, env=build_env())
    done = run([str(venv / "bin" / "authmilter"), "--version"], timeout=60, cwd=tmp_path)
    assert done.stdout == f"authmilter {VERSION}\n"
    # check-config imports the daemon, hence libmilter's binding: the whole program loads.
    sample = ROOT / "config" / "authmilter.ini"
    done = run([str(venv / "bin" / "authmilter"), "check-config", str(sample)], timeout=60, cwd=tmp_path)
    assert done.stdout == f"{sample}: OK\n"


# ---------------------------------------------------------------- the Debian package

@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    source = copy_checkout(tmp_path_factory.mktemp("deb") / "src")
    run(["make", "-C", str(source), "deb", f"PIP_CACHE={PIP_CACHE}"], timeout=1200, env=build_env())
    built = list(source.glob("authmilter_*.deb"))
    assert [p.name for p in built] == [f"authmilter_{VERSION}_{_arch()}.deb"]
    return built[0]


def _arch() -> str:
    return run(["dpkg", "--print-architecture"], timeout=30).stdout.strip()


@pytest.mark.package
@pytest.mark.timeout(1200)
def test_lintian_finds_no_error_and_no_stale_override(deb):
    done = run(["lintian", "--display-info", str(deb)], timeout=600, check=False)
    tags = [line for line in done.stdout.splitlines() if re.match(r"[EWIPXO]: ", line)]
    assert [line for line in tags if line.startswith("E: ")] == []
    assert [line for line in tags if re.search(r"\b(unused|mismatched)-override\b", line)] == []
    assert done.returncode == 0, done.stdout + done.stderr


# Where the package or its maintainer scripts write. After purge, no path with "authmilter" in it may be left
# that was not there before.
WATCHED = ("/etc", "/opt", "/var/lib", "/var/spool", "/var/log", "/var/cache", "/lib/systemd", "/usr/lib/systemd",
           "/usr/lib/sysusers.d", "/usr/lib/tmpfiles.d", "/usr/bin", "/usr/sbin", "/usr/share/man",
           "/usr/share/doc")
ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")
CONFIG = Path("/etc/authmilter/authmilter.ini")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


# The end-to-end lab's network namespaces (authmilter-e2e-PID), which a test run beside this one may be making.
NOT_WATCHED = ("/etc/netns",)


def traces() -> set[str]:
    found = set()
    for top in WATCHED:
        for directory, dirs, files in os.walk(top):
            dirs[:] = [name for name in dirs if os.path.join(directory, name) not in NOT_WATCHED]
            found.update(os.path.join(directory, name) for name in dirs + files if "authmilter" in name)
    for path in ACCOUNT_FILES:
        with open(path, encoding="utf-8") as handle:
            found.update(f"{path}: {line.split(':', 1)[0]}" for line in handle if "authmilter" in line)
    return found


@contextlib.contextmanager
def dpkg_frontend_lock(timeout: float = 600):
    """Hold dpkg's frontend lock as apt does; dpkg run with DPKG_FRONTEND_LOCKED then leaves it to us."""
    with open("/var/lib/dpkg/lock-frontend", "w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("dpkg's frontend lock stayed busy for 10 minutes")
                time.sleep(1)
        try:
            yield {**os.environ, "DPKG_FRONTEND_LOCKED": "1", "DEBIAN_FRONTEND": "noninteractive"}
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def services_never_start():
    """A policy-rc.d that refuses every start (exit 101), the previous one restored afterwards."""
    previous = POLICY_RC_D.read_bytes() if POLICY_RC_D.exists() else None
    previous_mode = POLICY_RC_D.stat().st_mode if previous is not None else None
    POLICY_RC_D.write_text("#!/bin/sh\n# authmilter's packaging test: no service starts.\nexit 101\n")
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        if previous is None:
            POLICY_RC_D.unlink()
        else:
            POLICY_RC_D.write_bytes(previous)
            POLICY_RC_D.chmod(stat.S_IMODE(previous_mode))


def installed(command: list[str], *, user: str | None = None) -> subprocess.CompletedProcess:
    """Run an installed command as a root shell (or USER) would: system PATH, from /."""
    prefix = ["runuser", "-u", user, "--"] if user else []
    return run(prefix + command, timeout=120, check=False, cwd="/",
               env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": "/root"})


@pytest.mark.package
@pytest.mark.timeout(1200)
def test_package_installs_works_and_purges_without_a_trace(deb):
    if os.geteuid() != 0:
        pytest.skip("installing a Debian package needs root")
    status = run(["dpkg-query", "-W", "-f=${db:Status-Status}", "authmilter"], timeout=60, check=False).stdout
    assert status in ("", "not-installed"), "an authmilter package is installed here; this test would purge it"
    assert not Path("/etc/authmilter").exists(), "/etc/authmilter exists here; this test's purge would remove it"
    with dpkg_frontend_lock() as dpkg_env, services_never_start():
        before = traces()
        assert not any(trace.startswith(ACCOUNT_FILES) for trace in before), "a user authmilter exists already"
        try:
            run(["dpkg", "-i", str(deb)], timeout=600, env=dpkg_env)
            check_installed_package()
        finally:
            purge = run(["dpkg", "--purge", "authmilter"], timeout=600, check=False, env=dpkg_env)
        assert purge.returncode == 0, purge.stdout + purge.stderr
        assert sorted(traces() - before) == []


def check_installed_package() -> None:
    # The command on PATH is the packaged one.
    assert shutil.which("authmilter", path=SYSTEM_PATH) == "/usr/bin/authmilter"
    assert os.path.realpath("/usr/bin/authmilter") == "/opt/authmilter/bin/authmilter"
    done = installed(["authmilter", "--version"])
    assert (done.returncode, done.stdout) == (0, f"authmilter {VERSION}\n")
    done = installed(["authmilter", "check-config"])
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{CONFIG}: OK\n", "")

    # The configuration: a conffile the service's user reads and Postfix's processes do not.
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "authmilter"], timeout=60).stdout
    assert str(CONFIG) in conffiles
    info = CONFIG.stat()
    assert (info.st_uid, grp.getgrgid(info.st_gid).gr_name, stat.S_IMODE(info.st_mode)) == (0, "authmilter", 0o640)
    done = installed(["authmilter", "check-config"], user="authmilter")
    assert (done.returncode, done.stdout) == (0, f"{CONFIG}: OK\n")
    done = installed(["authmilter", "check-config"], user="postfix")
    assert (done.returncode, done.stderr) == (78, f"{CONFIG}: cannot read: Permission denied\n")

    # sysusers: the service's user, in group postfix, without a login; tmpfiles: the socket directory.
    user = pwd.getpwnam("authmilter")
    assert user.pw_shell == "/usr/sbin/nologin"
    assert "authmilter" in grp.getgrnam("postfix").gr_mem
    socket_dir = os.stat("/var/spool/postfix/authmilter")
    assert (pwd.getpwuid(socket_dir.st_uid).pw_name, grp.getgrgid(socket_dir.st_gid).gr_name,
            stat.S_IMODE(socket_dir.st_mode)) == ("authmilter", "postfix", 0o750)

    # Every unit of systemd/, running the packaged command; the milter's own unit enabled, not started.
    units = sorted(p.name for p in (ROOT / "systemd").iterdir()
                   if p.suffix in (".service", ".timer", ".socket", ".path"))
    assert "authmilter.service" in units
    for unit in units:
        assert "/usr/local/bin/authmilter" not in Path("/lib/systemd/system", unit).read_text(encoding="utf-8"), unit
    exec_start = [line for line in Path("/lib/systemd/system/authmilter.service").read_text().splitlines()
                  if line.startswith("ExecStart=")]
    assert exec_start == ["ExecStart=/usr/bin/authmilter run --config /etc/authmilter/authmilter.ini"]
    assert Path("/etc/systemd/system/multi-user.target.wants/authmilter.service").is_symlink()
    assert not Path("/var/spool/postfix/authmilter/authmilter.sock").exists()
    # --man=no: verify would format the Documentation= pages into man-db's cache (the man pages are checked below).
    done = installed(["systemd-analyze", "verify", "--man=no", *[f"/lib/systemd/system/{unit}" for unit in units]])
    assert done.returncode == 0, done.stdout + done.stderr

    # The man pages.
    for section, page, path in (("8", "authmilter", "/usr/share/man/man8/authmilter.8.gz"),
                                ("5", "authmilter.ini", "/usr/share/man/man5/authmilter.ini.5.gz")):
        done = installed(["man", "-w", section, page])
        assert (done.returncode, done.stdout) == (0, f"{path}\n")
