"""DKIM verification (RFC 6376, RFC 8301, RFC 8463): `signature` parses DKIM-Signature fields, `key` fetches and
parses key records, `body` canonicalizes and hashes the streamed body, `check` verifies and gives the result."""
