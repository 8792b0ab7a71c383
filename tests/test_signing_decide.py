"""Who gets mail signed (signing/decide.py): the client at MAIL FROM, then the From domain against the keys, the MAIL
FROM domain and [signing] login_domains. The oracle is closed: a relay, a [trust] networks client outside
[signing] networks, and an authenticated client writing From: another domain get no signature."""

from __future__ import annotations

import ipaddress

import pytest

from authmilter.config import parse_config_text
from authmilter.context import Header
from authmilter.signing.decide import SigningClient, signing_client, signing_domain
from authmilter.signing.keys import load_keyring
from tests.signing_support import install_keys


def ip(text: str | None):
    return ipaddress.ip_address(text) if text else None


CLIENT_CASES = [
    # (id, extra config, client IP, SASL login, expected via or None)
    ("loopback", "", "127.0.0.1", None, "network"),
    ("loopback-v6", "", "::1", None, "network"),
    ("loopback-mapped", "", "::ffff:127.0.0.1", None, "network"),
    ("relay", "", "192.0.2.1", None, None),
    ("unknown-client", "", None, None, None),
    ("authenticated", "", "192.0.2.1", "alice", "authenticated"),
    ("authenticated-off", "[signing]\nauthenticated = no\n", "192.0.2.1", "alice", None),
    ("trust-network-is-not-signing", "[trust]\nnetworks = 10.0.0.0/8\n", "10.1.2.3", None, None),
    ("signing-network", "[signing]\nnetworks = 192.0.2.0/24\n", "192.0.2.1", None, "network"),
    ("loopback-removed", "[signing]\nnetworks =\n", "127.0.0.1", None, None),
]


@pytest.mark.parametrize("extra, client_ip, login, via", [case[1:] for case in CLIENT_CASES],
                         ids=[case[0] for case in CLIENT_CASES])
def test_signing_client_at_mail_from(extra, client_ip, login, via):
    cfg = parse_config_text(extra, "F.ini")
    client = signing_client(cfg.signing, ip(client_ip), login)
    assert (client.via if client else None) == via
    if client and login:
        assert client.login == login


@pytest.fixture(scope="module")
def keyring(tmp_path_factory):
    keys = install_keys(tmp_path_factory.mktemp("keys"))
    cfg = parse_config_text("[signing]\nkeys =\n" + "".join(
        f"    {domain} s {keys['rsa']}\n" for domain in ("example.org", "example.com", "sub.example.org",
                                                         "bücher.example")), "F.ini")
    return load_keyring(cfg)


LOGINS = parse_config_text("[signing]\nlogin_domains =\n    web example.com, news.example.org\n", "F.ini").signing
DEFAULT = parse_config_text("", "F.ini").signing
ALICE = SigningClient("authenticated", "alice")
WEB = SigningClient("authenticated", "web")
LOCAL = SigningClient("network")


def froms(*values: str) -> list[Header]:
    return [Header(b"From", b" " + value.encode()) for value in values] + [Header(b"Subject", b" hi")]


DOMAIN_CASES = [
    # (id, section, client, MAIL FROM, From values, signed domain or "", reason contains)
    ("same-domain", DEFAULT, ALICE, "alice@example.org", ["Alice <alice@example.org>"], "example.org", ""),
    ("from-is-parent-of-mail-from", DEFAULT, ALICE, "bounce@sub.example.org", ["alice@example.org"],
     "example.org", ""),
    ("case-and-idn", DEFAULT, LOCAL, "a@BÜCHER.example", ["A <A@Bücher.Example>"], "xn--bcher-kva.example", ""),
    # The closed oracle: From names another domain (even one we hold a key for) than MAIL FROM.
    ("from-other-domain", DEFAULT, ALICE, "alice@example.org", ["ceo@example.com"], "",
     "From domain example.com is not the MAIL FROM domain example.org or a parent of it"),
    ("from-child-of-mail-from", DEFAULT, ALICE, "alice@example.org", ["alice@sub.example.org"], "",
     "From domain sub.example.org is not the MAIL FROM domain example.org"),
    ("from-without-key", DEFAULT, ALICE, "a@nokey.example", ["a@nokey.example"], "", "no key for nokey.example"),
    ("null-mail-from", DEFAULT, LOCAL, "", ["a@example.org"], "", "no MAIL FROM domain"),
    ("two-from-headers", DEFAULT, ALICE, "a@example.org", ["a@example.org", "b@example.org"], "",
     "From: 2 From headers"),
    ("two-authors", DEFAULT, ALICE, "a@example.org", ["a@example.org, b@example.com"], "", "From: "),
    ("no-from", DEFAULT, ALICE, "a@example.org", [], "", "From: no From header"),
    ("address-in-display-name", DEFAULT, ALICE, "a@example.org", ['"ceo@example.com" <a@example.org>'], "",
     "From: "),
    # login_domains: a listed login signs exactly its From domains, whatever its MAIL FROM.
    ("login-listed-domain", LOGINS, WEB, "bounce@example.org", ["news@example.com"], "example.com", ""),
    ("login-unlisted-domain", LOGINS, WEB, "web@example.org", ["web@example.org"], "",
     "login web may not sign for example.org"),
    ("login-not-in-map", LOGINS, ALICE, "alice@example.org", ["alice@example.org"], "example.org", ""),
    ("login-not-in-map-other-domain", LOGINS, ALICE, "alice@example.org", ["x@example.com"], "",
     "is not the MAIL FROM domain"),
    ("network-client-ignores-logins", LOGINS, LOCAL, "root@example.org", ["x@example.com"], "",
     "is not the MAIL FROM domain"),
]


@pytest.mark.parametrize("section, client, mail_from, from_values, domain, reason",
                         [case[1:] for case in DOMAIN_CASES], ids=[case[0] for case in DOMAIN_CASES])
def test_signing_domain_at_end_of_header(keyring, section, client, mail_from, from_values, domain, reason):
    decision = signing_domain(client, section, keyring, mail_from, froms(*from_values), False)
    assert decision.domain == domain
    assert reason in decision.reason
    assert decision.signs == bool(domain)


def test_a_cut_header_is_never_signed(keyring):
    decision = signing_domain(ALICE, DEFAULT, keyring, "a@example.org", froms("a@example.org"), True)
    assert not decision.signs and decision.reason == "header limit"
