"""Hostile input for authmilter: a corpus of malformed messages and envelopes, hypothesis strategies, and a
throw-away DKIM signer (see corpus.py, strategies.py, signing.py)."""
