"""ARC (RFC 8617): chain structure, seal and message-signature verification, the result, the hop's recorded
results (for the trusted-sealer override in policy.py)."""
