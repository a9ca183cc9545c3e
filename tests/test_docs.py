"""The documentation does not drift: the generated reference pages match the registry and
conf/config.yaml, every console example in docs/ and README.md prints what it shows, and the README
stays a front page."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]


def test_generated_reference_pages_are_up_to_date():
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "generate.py"), "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def console_examples() -> list[tuple[str, str, str]]:
    """(page, command, the output shown) for every ``$ tdabench...`` line of a ```console block."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```console\n(.*?)```", page.read_text(), re.S):
            for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
                command, _, shown = chunk.partition("\n")
                found.append((page.name, command, shown.rstrip("\n")))
    return found


def test_the_docs_have_console_examples():
    assert len(console_examples()) >= 2


@pytest.mark.parametrize("page, command, shown", console_examples())
def test_console_example_prints_what_the_docs_show(page, command, shown):
    argv = shlex.split(command)
    out = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "WANDB_MODE": "disabled"})
    assert (out.stdout + out.stderr).rstrip("\n") == shown, f"{page}: {command}"


def test_readme_is_a_front_page_that_links_the_docs():
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 12_000
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / target).exists(), target


def test_readme_demo_table_is_the_reference_leaderboard():
    import pandas as pd

    text = (ROOT / "README.md").read_text()
    table = text[text.index("## The demo's leaderboard"):text.index("## What the numbers mean")]
    shown = {m: float(lds) for m, lds in re.findall(r"^\| (\w+) \| (-?[\d.]+) \|", table, re.M)}
    board = pd.read_csv(ROOT / "results" / "reference" / "demo" / "leaderboard.csv")
    assert shown == {m: pytest.approx(v, abs=5e-4) for m, v in zip(board["method"], board["lds"])}


def test_a_method_count_the_docs_quote_is_the_registered_one():
    from tdabench.harness.core.registry import METHODS

    count = re.compile(r"\b(\d+) (?:registered methods|methods of the default sweep|methods are registered)")
    quoted = [(page.name, m.group(0)) for page in PAGES for m in count.finditer(page.read_text())]
    assert all(int(text.split()[0]) == len(METHODS.names()) for _, text in quoted), quoted


def test_results_page_reads_whole_without_the_site_builder():
    text = (ROOT / "docs" / "results.md").read_text()
    assert "--8<--" not in text and "### CIFAR-10 at CPU scale" in text


def test_gpu_requirements_are_the_project_dependencies_a_gpu_check_imports():
    """benchmarks/gpu_requirements.txt (what gpu_check.py needs besides PyTorch) keeps up with
    pyproject.toml: every dependency but torch, torchvision, wandb and the joblib launcher."""
    import re
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]

    def name(spec: str) -> str:
        return re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0].lower()

    deps = {name(d) for d in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]}
    listed = [line for line in (root / "benchmarks" / "gpu_requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert {name(s) for s in listed} == deps - {"torch", "torchvision", "wandb", "hydra-joblib-launcher"}
