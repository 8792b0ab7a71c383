"""Outbound DKIM signing: the shell side (key files, key generation, who gets signed, the signer, key checks).

Nothing here is imported by a check. The verifier's body canonicalization (checks.dkim.body) and the strict From
parser (checks.dmarc.fromheader) are reused, so what we sign is read the way receivers will read it.
"""
