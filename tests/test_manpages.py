"""The man pages: authmilter.ini(5) documents every key of the parser, authmilter(8) every command and option of
the command line, and groff has nothing to say about either."""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from authmilter.cli import build_parser
from authmilter.config import documented_keys

ROOT = Path(__file__).resolve().parent.parent
MAN8 = ROOT / "man" / "authmilter.8"
MAN5 = ROOT / "man" / "authmilter.ini.5"

_PAGE_SECTION = re.compile(r'^\.SS "\[([a-z_]+)\]"$')
_PAGE_KEY = re.compile(r"^\\fB([a-z][a-z0-9_]*)\\fR = ")


def ini_page_keys() -> dict[str, set[str]]:
    """section -> keys, as authmilter.ini(5) lists them (a ".SS [section]" heading, then "key = default" tags)."""
    found: dict[str, set[str]] = {}
    section = None
    for line in MAN5.read_text(encoding="utf-8").splitlines():
        if match := _PAGE_SECTION.match(line):
            section = match.group(1)
            found.setdefault(section, set())
        elif line.startswith(".SH"):
            section = None
        elif section and (match := _PAGE_KEY.match(line)):
            found[section].add(match.group(1))
    return found


def test_ini_page_documents_every_key_in_its_section():
    page = ini_page_keys()
    missing = [f"[{section}] {key}" for section, keys in documented_keys().items() for key in keys
               if key not in page.get(section, set())]
    assert missing == [], f"keys missing from {MAN5} (run `make man`): {missing}"


def test_ini_page_names_no_key_that_does_not_exist():
    known = documented_keys()
    extra = [f"[{section}] {key}" for section, keys in ini_page_keys().items() for key in keys
             if key not in known.get(section, {})]
    assert extra == []


def test_ini_page_is_current():
    """The committed page is what `make man` renders from its template, the sample config and the parser."""
    spec = importlib.util.spec_from_file_location("render_ini_manpage", ROOT / "man" / "render_ini_manpage.py")
    renderer = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = renderer  # its dataclasses look their module up there
    spec.loader.exec_module(renderer)
    assert MAN5.read_text(encoding="utf-8") == renderer.render(), f"{MAN5} is stale: run `make man`"


@pytest.mark.parametrize("page", [MAN8, MAN5], ids=lambda page: page.name)
def test_groff_finds_nothing_to_warn_about(page):
    done = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


# ---------------------------------------------------------------- authmilter(8) and the command line

def _plain(roff: str) -> str:
    """Roff source as words: no font escapes, no macro names, real hyphens."""
    text = re.sub(r"\\f[BIRP]", "", roff).replace("\\-", "-").replace("\\~", " ")
    return re.sub(r"^\.(?:B|I|BR|RB|BI|IB|IR|RI)\s+", "", text, flags=re.MULTILINE).replace('"', "")


def command_blocks() -> dict[str, str]:
    """command -> the text of its entry under COMMANDS: a .TP tag naming the command, then everything up to the next
    .TP at the same level (an option list sits inside .RS/.RE)."""
    source = MAN8.read_text(encoding="utf-8")
    commands_section = source.split("\n.SH COMMANDS\n", 1)[1].split("\n.SH ", 1)[0]
    entries: list[list[str]] = []
    depth = 0
    for line in commands_section.splitlines():
        if line.startswith(".RS"):
            depth += 1
        elif line.startswith(".RE"):
            depth -= 1
        if line == ".TP" and depth == 0:
            entries.append([])
        elif entries:
            entries[-1].append(line)
    blocks: dict[str, str] = {}
    for entry in entries:
        tag = _plain(entry[0]).strip() if entry else ""
        if tag and not tag.startswith("-"):
            blocks[tag.split()[0]] = _plain("\n".join(entry))
    return blocks


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def _long_options(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"]


def test_man_page_has_an_entry_for_every_command():
    assert sorted(command_blocks()) == sorted(_subcommands())


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_man_page_describes_every_option_of_every_command(command):
    block = command_blocks().get(command, "")
    missing = [option for option in _long_options(_subcommands()[command]) if option not in block]
    assert missing == [], f"{MAN8}: `{command}` options not described: {missing}"


def test_man_page_describes_the_program_options():
    text = _plain(MAN8.read_text(encoding="utf-8"))
    assert [option for option in _long_options(build_parser()) if option not in text] == []
