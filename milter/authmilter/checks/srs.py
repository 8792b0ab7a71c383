"""Sender Rewriting Scheme: recognise SRS0/SRS1 reverse paths, and verify bounces to our own SRS addresses."""

from __future__ import annotations

from dataclasses import dataclass

# CONTRACT (other modules rely on these names; add fields freely, do not rename or remove):


@dataclass(frozen=True, slots=True)
class SrsInfo:
    """A parsed SRS0/SRS1 envelope sender."""

    scheme: str               # "SRS0" or "SRS1"
    forwarder_domain: str     # the domain of the rewritten address (SPF is checked against it)
    original_sender: str      # the decoded original sender, e.g. "user@example.org"

    def log_fields(self) -> dict[str, str]:
        raise NotImplementedError
