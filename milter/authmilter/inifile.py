"""The INI grammar of our config files, read line by line so that every mistake of a file is found in one pass.

configparser stops at the first duplicate or missing section header and does not say on which line a key was set;
an operator fixing a file wants every problem at once, and with drop-in files each value must name the file it
came from. The grammar is configparser's, as we used it (delimiters `=` and `:`, full-line comments with `#` or
`;`, values continued on lines indented deeper than their key, no interpolation, case-sensitive keys), and
tests/test_inifile.py checks that both read the same values from the same valid text. Two deliberate
differences: a section header may appear again in the same file (its keys join the section), and text after a
section header's `]` is reported instead of ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COMMENT_PREFIXES = ("#", ";")
_SECTION = re.compile(r"\[(?P<header>.+)\](?P<rest>.*)$")
_OPTION = re.compile(r"(?P<option>.*?)\s*(?P<delimiter>[=:])\s*(?P<value>.*)$")
# A comment character at the start of a value or after white space: configparser keeps it as part of the value,
# which is never what the writer meant (`min_key_bits = 2048  # stronger`).
_INLINE_COMMENT = re.compile(r"(?:^|\s)([#;].*)$")


@dataclass(frozen=True, slots=True)
class Entry:
    section: str
    key: str
    value: str   # stripped; lines of a multi-line value joined with "\n"
    line: int    # where the key is


@dataclass(frozen=True, slots=True)
class IniFile:
    source: str
    sections: tuple[tuple[str, int], ...]   # each [section] header and its line, in file order
    entries: tuple[Entry, ...]              # in file order; a key set twice in one file is only in problems
    problems: tuple[tuple[int, str], ...]   # grammar mistakes: (line, "SOURCE: ..." on one line)


def read_ini(text: str, source: str) -> IniFile:
    sections: list[tuple[str, int]] = []
    problems: list[tuple[int, str]] = []
    values: dict[tuple[str, str], list[str]] = {}   # (section, key) -> value lines, for the entry in progress
    first_line: dict[tuple[str, str], int] = {}
    section: str | None = None
    current: tuple[str, str] | None = None   # the key whose value may continue on indented lines
    key_indent = 0
    missing_header_reported = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(COMMENT_PREFIXES):
            continue  # a comment line neither ends nor continues a value, as in configparser
        if not stripped:
            if current is not None:
                values[current].append("")  # kept only if an indented line follows (trailing ones are dropped)
            continue
        indent = len(line) - len(line.lstrip())
        if current is not None and indent > key_indent:
            values[current].append(stripped)
            continue
        current = None
        key_indent = indent
        header = _SECTION.match(stripped)
        if header:
            section = header.group("header")
            sections.append((section, number))
            rest = header.group("rest").strip()
            if rest:
                problems.append((number, f"{source}: line {number}: {_after_header(rest)}"))
            continue
        if section is None:
            if not missing_header_reported:
                problems.append((number, f"{source}: line {number}: expected a [section] header, got {stripped!r}"))
                missing_header_reported = True
            continue
        option = _OPTION.match(stripped)
        if option is None or not option.group("option"):
            problems.append((number, f"{source}: line {number}: cannot parse {stripped!r} (expected key = value)"))
            continue
        key = option.group("option").rstrip()
        if (section, key) in first_line:
            problems.append((number, f"{source}: [{section}] {key}: duplicate key (line {number}), already set on "
                                     f"line {first_line[(section, key)]} of this file; to override a value of this "
                                     f"file, set it in a conf.d/*.ini file beside it"))
            current = ("", f"duplicate on line {number}")  # swallows its continuation lines; never an entry
            values[current] = []
            continue
        first_line[(section, key)] = number
        current = (section, key)
        values[current] = [option.group("value").strip()]
    entries = tuple(Entry(name, key, "\n".join(values[(name, key)]).rstrip(), number)
                    for (name, key), number in first_line.items())
    return IniFile(source, tuple(sections), entries, tuple(problems))


def _after_header(rest: str) -> str:
    if rest.startswith(COMMENT_PREFIXES):
        return f"comments go on a line of their own, not after a [section] header: {rest!r}"
    return f"unexpected text after the [section] header: {rest!r}"


def inline_comment(value: str) -> str | None:
    """The comment someone wrote after a value (`2048  # stronger` -> "# stronger"), or None."""
    for line in value.split("\n"):
        found = _INLINE_COMMENT.search(line)
        if found:
            return found.group(1)
    return None
