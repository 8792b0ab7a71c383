"""Render man/authmilter.ini.5 from man/authmilter.ini.5.in: `make man` (tests/test_manpages.py checks it is current).

The keys, their sections and their order come from the parser (authmilter.config.documented_keys()); each key's
default and explanation come from the sample config/authmilter.ini, which a test already holds to the parser's
keys and true defaults and which carries the longer explanations an operator reads. So the page cannot miss a key,
nor show a default other than the one the parser applies.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "man" / "authmilter.ini.5.in"
SAMPLE = ROOT / "config" / "authmilter.ini"
PAGE = ROOT / "man" / "authmilter.ini.5"
MARKER = '.\\" GENERATED KEYS\n'

_SECTION = re.compile(r"^\[([a-z_]+)\]\s*$")
_KEY_LINE = re.compile(r"^#([a-z][a-z0-9_]*) =(.*)$")
_RULE = re.compile(r"^# ?-{10,}$")


@dataclass
class KeyText:
    default: str | None = None
    examples: list[str] = field(default_factory=list)
    prose: list[str] = field(default_factory=list)


@dataclass
class SectionText:
    intro: list[str] = field(default_factory=list)
    keys: dict[str, KeyText] = field(default_factory=dict)


def read_sample(text: str) -> dict[str, SectionText]:
    """section -> its introduction and, per key, the paragraph of comments that documents it.

    In the sample, a section's introduction is the comment block between the ruler line and the [section]
    header; inside a section, each key has one paragraph (comment lines up to a blank line) whose first
    "#key = value" line is the default and whose later "#key = value" lines are examples.
    """
    sections: dict[str, SectionText] = {}
    current: SectionText | None = None
    pending_intro: list[str] = []
    paragraph: list[str] = []

    def close_paragraph() -> None:
        if current is None or not paragraph:
            paragraph.clear()
            return
        text = KeyText()
        owner = None
        for line in paragraph:
            if match := _KEY_LINE.match(line):
                owner = owner or match.group(1)
                value = match.group(2).strip()
                if match.group(1) == owner and text.default is None:
                    text.default = value
                else:
                    text.examples.append(f"{match.group(1)} = {value}".rstrip())
            else:
                text.prose.append(line[1:].strip())
        if owner:
            current.keys.setdefault(owner, text)
        paragraph.clear()

    for raw in text.splitlines():
        line = raw.rstrip()
        if match := _SECTION.match(line):
            close_paragraph()
            current = sections.setdefault(match.group(1), SectionText(intro=pending_intro))
            pending_intro = []
        elif _RULE.match(line):
            close_paragraph()
            current = None  # what follows introduces the next section
            pending_intro = []
        elif line.startswith("#"):
            if current is None:
                pending_intro.append(line[1:].strip())
            else:
                paragraph.append(line)
        elif not line:
            close_paragraph()
    close_paragraph()
    return sections


def escape(text: str) -> str:
    """Plain text for a roff text line: backslashes, a leading control character, and non-ASCII as \\[uXXXX]."""
    text = text.replace("\\", "\\e")
    text = "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in text)
    if text[:1] in (".", "'"):
        text = "\\&" + text
    return text


def as_sentence(line: str) -> str:
    """The one-line doc opens the paragraph: the sample writes it as a lower-case phrase without a full stop."""
    line = line[:1].upper() + line[1:]
    return line if line.endswith((".", ":")) else line + "."


def render_keys(documented: dict[str, dict[str, str]], sample: dict[str, SectionText]) -> str:
    out: list[str] = []
    for section, keys in documented.items():
        found = sample.get(section, SectionText())
        out.append(f'.SS "[{section}]"')
        if found.intro:
            out.extend(escape(line) for line in found.intro if line)
        for key, doc in keys.items():
            text = found.keys.get(key)
            if text is None or text.default is None:
                raise SystemExit(f"{SAMPLE}: [{section}] {key}: no '#{key} = default' line to take the default from")
            out.append(".TP")
            default = f"\\fI{escape(text.default)}\\fR" if text.default else "(empty)"
            out.append(f"\\fB{escape(key)}\\fR = {default}")
            prose = [line for line in text.prose if line] or [doc]
            out.extend(escape(line) for line in [as_sentence(prose[0]), *prose[1:]])
            for example in text.examples:
                out.append(".br")
                out.append(f"Example: \\fI{escape(example)}\\fR")
    return "\n".join(out) + "\n"


def render() -> str:
    sys.path.insert(0, str(ROOT / "milter"))
    from authmilter.config import documented_keys

    template = TEMPLATE.read_text(encoding="utf-8")
    if MARKER not in template:
        raise SystemExit(f"{TEMPLATE}: no {MARKER.strip()!r} line")
    keys = render_keys(documented_keys(), read_sample(SAMPLE.read_text(encoding="utf-8")))
    return template.replace(MARKER, keys)


def main() -> int:
    PAGE.write_text(render(), encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
