"""The fault-injection suite counts the distinct bad inputs and faults it tries and prints the
total (checks of normal behaviour, such as determinism, are not counted)."""

from __future__ import annotations

import pytest

TRIED: set[str] = set()


@pytest.fixture
def tried():
    """Call ``tried(label)`` once per distinct bad input or fault a test injects."""
    return TRIED.add


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if TRIED:
        failed = len(terminalreporter.stats.get("failed", []))
        verdict = "all handled" if not failed else f"{failed} test(s) failed"
        terminalreporter.write_line(
            f"reliability: {len(TRIED)} distinct bad inputs and faults tried, {verdict}")
