"""The fault-injection suite counts every bad input and fault it tries and prints the total."""

from __future__ import annotations

import pytest

TRIED: list[str] = []


@pytest.fixture
def tried():
    """Call ``tried(label)`` once per bad input or fault a test injects."""
    return TRIED.append


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if TRIED:
        failed = len(terminalreporter.stats.get("failed", []))
        verdict = "all handled" if not failed else f"{failed} test(s) failed"
        terminalreporter.write_line(
            f"reliability: {len(TRIED)} bad inputs and faults tried, {verdict}")
