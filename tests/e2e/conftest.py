"""The session-scoped `lab` fixture: one namespace with NSD, Unbound, Postfix and the milters for the whole run.

Skipped, with the reason, when not root, when `ip netns` cannot be used, or when a server is not installed.
In CI we are root and the Makefile installs the packages, so the end-to-end tests run there.
"""

from __future__ import annotations

import os

import pytest

from testlab import netns
from testlab.lab import Lab, missing_tools


@pytest.fixture(scope="session")
def lab():
    reason = netns.available() or missing_tools()
    if reason:
        if os.environ.get("CI"):
            # CI installs everything through the Makefile: a lab that cannot start there is a failure, not a skip.
            pytest.fail(f"the end-to-end lab cannot run in CI: {reason}")
        pytest.skip(reason)
    with Lab.start() as running:
        yield running


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the lab's log tails to a failing end-to-end test, where they explain most failures."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "lab" in item.fixturenames:
        running = item.funcargs.get("lab")
        if running is not None:
            report.sections.append(("authmilter e2e lab", running.debug_report()))
