"""DMARC (RFC 9989): `fromheader` finds the author domain, `record` parses policy records, `orgdomain` discovers
the policy and organizational domain (DNS tree walk or public suffix list), `check` computes alignment and the
result."""
