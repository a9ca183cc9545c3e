"""Plugins from outside the repository: the documentation's example method and task packages
(docs/extending.md) are built, installed (into a folder of their own, so the test environment is
left as it was) and run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMALL = ["gt.subsets=8", "gt.seeds=2", "lds.bootstrap=100", "threads=1", "wandb.mode=disabled"]


def readme_files(section: str) -> dict[str, str]:
    """The code blocks of docs/extending.md's section ``section`` whose first line is ``# <path>``."""
    text = (ROOT / "docs" / "extending.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    files = {}
    for block in re.findall(r"```(?:toml|python)\n(.*?)```", body, re.S):
        first, rest = block.split("\n", 1)
        files[first.lstrip("# ").strip()] = rest
    return files


def install(files: dict[str, str], tmp: Path) -> Path:
    """Write the package, build and install it into its own folder; return that folder."""
    for rel, content in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(content)
    project = tmp / Path(next(iter(files))).parts[0]
    target = tmp / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(project)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return target


def run(args: list[str], site: Path, tmp: Path, check: bool = True):
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}
    out = subprocess.run([str(BIN / "tdabench"), *args, f"cache_dir={tmp / 'cache'}"], cwd=tmp,
                         capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def last_record(results: Path) -> dict:
    return json.loads((results / "runs.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def method_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plugin_method")
    return install(readme_files("Adding a method"), tmp), tmp


def test_documented_plugin_method_takes_parameters_without_plus(method_site):
    site, tmp = method_site
    run(["method=my_method", "method.scale=2.5", "task.n_train=200", "task.n_query=20", *SMALL,
         f"results_dir={tmp / 'r'}"], site, tmp)
    rec = last_record(tmp / "r")
    assert rec["status"] == "ok" and rec["lds"] > 0.1, rec.get("message")
    assert rec["config"]["method"] == {"name": "my_method", "seed": 0, "scale": 2.5}
    assert rec["schema_version"] >= 2


def test_documented_plugin_method_refuses_unknown_and_mistyped_keys(method_site):
    site, tmp = method_site
    out = run(["method=my_method", "method.nope=1", f"results_dir={tmp / 'bad'}"], site, tmp, check=False)
    assert out.returncode == 2 and "nope" in out.stderr and "scale" in out.stderr
    assert "Traceback" not in out.stderr
    out = run(["method=my_method", "method.scale=big", f"results_dir={tmp / 'bad'}"], site, tmp, check=False)
    assert out.returncode == 2 and "method.scale='big' must be a number" in out.stderr


def test_default_sweep_is_the_registry_with_plugins(method_site):
    site, tmp = method_site
    out = run(["--cfg", "all", "--resolve"], site, tmp)  # shows the sweep `tdabench -m` runs
    swept = re.search(r"^\s+method: (\S+,\S+)$", out.stdout, re.M).group(1).split(",")
    assert "my_method" in swept and {"grad_dot", "ekfac", "bif"} <= set(swept)


def test_documented_plugin_task_runs(tmp_path):
    site = install(readme_files("Adding a task"), tmp_path)
    run(["task=blobs", "method=grad_dot", "task.n_train=100", *SMALL, f"results_dir={tmp_path / 'r'}"],
        site, tmp_path)
    rec = last_record(tmp_path / "r")
    assert rec["status"] == "ok" and rec["task"] == "blobs" and rec["n_train"] == 100
    assert rec["model_quality"]["test_acc"] > 0.8 and rec["lds"] > 0.1


def test_broken_and_clashing_plugins_are_reported_not_fatal(tmp_path):
    site = tmp_path / "site"
    (site / "broken_plugin").mkdir(parents=True)
    (site / "broken_plugin" / "__init__.py").write_text("raise ImportError('no such library')\n")
    (site / "clash_plugin.py").write_text("from tdabench.harness import Method\nclass Clash(Method):\n    pass\n")
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tdabench.methods]\nbroken = broken_plugin:Thing\n"
                                           "grad_dot = clash_plugin:Clash\n")
    out = run(["method=grad_dot", "task.n_train=200", "task.n_query=20", *SMALL,
               f"results_dir={tmp_path / 'r'}"], site, tmp_path)
    assert "'broken' from broken_plugin:Thing" in out.stderr and "could not be imported" in out.stderr
    assert "'grad_dot' from clash_plugin:Clash" in out.stderr and "tdabench.methods.baselines:GradDot" in out.stderr
    assert last_record(tmp_path / "r")["status"] == "ok"
