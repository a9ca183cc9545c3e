"""The fault-injection suite: a small digits configuration and a finished run shared by its
modules; it counts the distinct bad inputs and faults it tries and prints the total (checks of
normal behaviour, such as determinism, are not counted)."""

from __future__ import annotations

import signal

import pytest

from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.run import execute

TRIED: set[str] = set()
SMALL = ["task.n_train=150", "task.n_query=15", "task.hidden=16", "task.recipe.epochs=15",
         "gt.subsets=6", "gt.seeds=2", "lds.bootstrap=100", "wandb.mode=disabled"]


def small_cfg(tmp_path, *extra):
    return compose([*SMALL, f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}", *extra])


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished small grad_dot run (its cache and results folders) and its record."""
    base = tmp_path_factory.mktemp("done")
    rec = execute(small_cfg(base, "method=grad_dot"))
    assert rec["status"] == "ok"
    return base, rec


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


def terminal_sigint() -> None:
    """``preexec_fn`` of a command-line process that is sent a simulated Ctrl-C: SIGINT handled as
    at a terminal, also when the tests themselves run as a background job (whose processes start
    with SIGINT ignored, so the harness rightly leaves it alone)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
