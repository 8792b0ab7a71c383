"""Our INI reader reads valid files as configparser does, and reports every mistake of a file at once."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from authmilter.config import SECTIONS, parse_config_text
from authmilter.errors import ConfigError
from authmilter.inifile import inline_comment, read_ini

SAMPLE = Path(__file__).resolve().parent.parent / "config" / "authmilter.ini"

VALID = [
    "[dns]\ntimeout = 3\n",
    "[dns]\ntimeout: 3\n",
    "[dns]\n  timeout   =   3  \n",
    "[milter]\nsocket = inet:8894@127.0.0.1\n",                       # ':' inside the value
    "[trust]\nnetworks =\n",                                          # empty value
    "[srs]\nsecrets =\n    first\n    second\n",                      # a value over several lines
    "[srs]\nsecrets = first\n\n    second\n# a comment\n    third\n\n\n",  # blank and comment lines inside it
    "; top comment\n# another\n[dkim]\n# min_key_bits = 1024\nmin_key_bits = 2048\n",
    "[dkim]\nmin_key_bits = 2048\n[spf]\nenabled = no\n",
    "[dns]\nnameservers = 127.0.0.1,\n  [::1]:5353\ntimeout = 2\n",
    "[dns]\r\ntimeout = 2\r\n",                                       # CRLF line ends
]


@pytest.mark.parametrize("text", VALID + [SAMPLE.read_text(encoding="utf-8")])
def test_valid_text_reads_as_configparser_reads_it(text):
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00none")
    parser.optionxform = str
    parser.read_string(text)
    theirs = {(section, key): value for section in parser.sections() for key, value in parser.items(section)}
    ini = read_ini(text, "F.ini")
    assert ini.problems == ()
    assert {(entry.section, entry.key): entry.value for entry in ini.entries} == theirs


def test_every_mistake_of_a_file_is_reported_in_line_order():
    text = ("[dns]\n"
            "timeout = soon\n"                   # 2: bad value
            "timeot = 3\n"                       # 3: unknown key
            "[nosuch]\n"                         # 4: unknown section
            "x = 1\n"
            "[dkim]\n"
            "min_key_bits = 2048  # stronger\n"  # 7: an inline comment
            "this is not a key\n"                # 8: not key = value
            "[dns]\n"                            # a section again: fine, its keys join [dns]
            "timeout = 4\n")                     # 10: but a key set twice in one file is not
    with pytest.raises(ConfigError) as raised:
        parse_config_text(text, "F.ini")
    assert str(raised.value).splitlines() == [
        "F.ini: [dns] timeout: expected a number, got 'soon'",
        "F.ini: [dns] timeot: unknown key (known: nameservers, timeout, message_deadline, max_queries, trust_ad, "
        "cache_size, cache_max_ttl, early_lookups, workers)",
        f"F.ini: [nosuch]: unknown section (known: {', '.join(SECTIONS)})",
        "F.ini: [dkim] min_key_bits: '# stronger' looks like a comment after the value; comments go on a line of "
        "their own (starting with # or ;), otherwise they are part of the value",
        "F.ini: line 8: cannot parse 'this is not a key' (expected key = value)",
        "F.ini: [dns] timeout: duplicate key (line 10), already set on line 2 of this file; to override a value "
        "of this file, set it in a conf.d/*.ini file beside it",
    ]


def test_a_section_may_appear_again_in_the_same_file():
    """Appending "[dkim] min_key_bits = 2048" to a file that already has a [dkim] section works."""
    cfg = parse_config_text("[dkim]\n#min_key_bits = 1024\nallow_sha1 = no\n[spf]\nenabled = yes\n"
                            "[dkim]\nmin_key_bits = 2048\n", "F.ini")
    assert (cfg.dkim.min_key_bits, cfg.dkim.allow_sha1, cfg.spf.enabled) == (2048, False, True)


@pytest.mark.parametrize("value, comment", [
    ("2048  # stronger", "# stronger"),
    ("2048 ; stronger", "; stronger"),
    ("# nothing", "# nothing"),
    ("127.0.0.1,\n192.0.2.0/24   # office", "# office"),
    ("2048", None),
    ("a#b", None),                     # no white space before it: part of a value, as in a secret
    ("inet:8894@127.0.0.1", None),
])
def test_inline_comment(value, comment):
    assert inline_comment(value) == comment


@pytest.mark.parametrize("text, message", [
    ("[dns] # resolver\ntimeout = 3\n",
     "F.ini: line 1: comments go on a line of their own, not after a [section] header: '# resolver'"),
    ("[dns] timeout = 3\n", "F.ini: line 1: unexpected text after the [section] header: 'timeout = 3'"),
    ("timeout = 1\nretries = 2\n[dns]\n", "F.ini: line 1: expected a [section] header, got 'timeout = 1'"),
    ("[dns]\n= 3\n", "F.ini: line 2: cannot parse '= 3' (expected key = value)"),
])
def test_grammar_mistakes(text, message):
    with pytest.raises(ConfigError) as raised:
        parse_config_text(text, "F.ini")
    assert str(raised.value) == message  # one mistake, one line (lines without a section are one mistake)
