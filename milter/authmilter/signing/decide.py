"""Who gets mail signed. A signature makes a message pass DMARC for its domain everywhere, so a signer is an oracle:
this is decided narrowly, apart from who is exempt from verification ([trust] networks, where operators put gateways
and backup MXs, grants nothing here).

Two steps, as the facts arrive:
  at MAIL FROM      `signing_client`: the client is in [signing] networks, or SASL-authenticated (Postfix's
                    {auth_authen}) while [signing] authenticated = yes. Anyone else is a relay, never signed.
  end of headers    `signing_domain`: the From header names exactly one author whose domain has a key, and that
                    domain is the MAIL FROM domain or a parent of it (Postfix's reject_sender_login_mismatch ties
                    MAIL FROM to the login; this ties From to MAIL FROM). A login listed in [signing] login_domains
                    may instead sign for exactly the From domains listed for it, whatever its MAIL FROM.
The From header is read by the strict parser DMARC uses (checks.dmarc.fromheader): the domain we sign for is the one
every receiver's DMARC check will read, and an ambiguous From is never signed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from authmilter.checks.dmarc.fromheader import parse_from_headers
from authmilter.config import SigningSection
from authmilter.context import HEADER_LIMIT, Header, IPAddress, unmapped
from authmilter.signing.keylines import domain_a_labels
from authmilter.signing.keys import Keyring


@dataclass(frozen=True, slots=True)
class SigningClient:
    """Why this transaction's client may have its mail signed."""

    via: str          # "authenticated" or "network"
    login: str = ""   # the SASL login, when authenticated

    def log_fields(self) -> list[tuple[str, str]]:
        fields = [("signing_client", self.via)]
        if self.login:
            fields.append(("login", self.login))
        return fields


@dataclass(frozen=True, slots=True)
class SigningDomain:
    """The d= domain a message is signed for, or why it is not signed."""

    domain: str = ""
    reason: str = ""

    @property
    def signs(self) -> bool:
        return bool(self.domain)


def signing_client(section: SigningSection, client_ip: IPAddress | None,
                   auth_user: str | None) -> SigningClient | None:
    """At MAIL FROM: may this client's mail be signed at all? None: a relay, whose mail is verified instead."""
    if auth_user and section.authenticated:
        return SigningClient("authenticated", auth_user)
    address = unmapped(client_ip)
    if address is not None and any(address in network for network in section.networks):
        return SigningClient("network")
    return None


def signing_domain(client: SigningClient, section: SigningSection, keyring: Keyring, mail_from: str,
                   headers: Sequence[Header], headers_truncated: bool) -> SigningDomain:
    """At the end of the header: the domain to sign for, or the reason not to."""
    if headers_truncated:
        return SigningDomain(reason=HEADER_LIMIT)  # a second From may lie past the cap
    author = parse_from_headers([header for header in headers if header.is_named("From")])
    if not author.ok:
        return SigningDomain(reason=f"From: {author.error}")
    domain = author.domain
    if not keyring.has_domain(domain):
        return SigningDomain(reason=f"no key for {domain}")
    granted = _login_domains(section, client.login)
    if granted is not None:
        if domain in granted:
            return SigningDomain(domain)
        return SigningDomain(reason=f"login {client.login} may not sign for {domain}")
    envelope_domain = _mail_from_domain(mail_from)
    if not envelope_domain:
        return SigningDomain(reason="no MAIL FROM domain")
    if envelope_domain == domain or envelope_domain.endswith("." + domain):
        return SigningDomain(domain)
    return SigningDomain(reason=f"From domain {domain} is not the MAIL FROM domain {envelope_domain} "
                                f"or a parent of it")


def _login_domains(section: SigningSection, login: str) -> tuple[str, ...] | None:
    if not login:
        return None
    for entry in section.login_domains:
        if entry.login == login:
            return entry.domains
    return None


def _mail_from_domain(mail_from: str) -> str:
    _, at, domain = mail_from.rpartition("@")
    if not at:
        return ""
    try:
        return domain_a_labels(domain)
    except ValueError:
        return ""
