"""End-to-end lab: a real Postfix, NSD and a validating Unbound inside a private network namespace.

See conftest.py for the `lab` fixture and lab.py for what a test can do with it.
"""
