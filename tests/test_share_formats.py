"""The field's formats: dattri's benchmark layout written from a tdabench ground truth (dattri's own
``lds`` on it gives the record's LDS) and read as a run's ground truth (made here by dattri's own
retraining and ground-truth functions, rows checked against its subset models), and TRAK's
datamodels arrays read with their observable named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.config import ConfigError
from tdabench.harness.engine.run import execute
from tdabench.harness.read.lds import lds
from tdabench.harness.share.export import build_task, export_results

pytestmark = pytest.mark.reference
dattri_metric = pytest.importorskip("dattri.metric")

BASE = ["task=digits_mlp", "seed=5", "task.n_train=100", "task.n_query=12", "gt.subsets=10", "gt.seeds=2",
        "threads=1", "wandb.mode=disabled", "cost.count=off", "lds.bootstrap=50", "method=grad_dot"]


def run(tmp: Path, *extra: str) -> dict:
    return execute(compose([*BASE, f"cache_dir={tmp / 'cache'}", f"results_dir={tmp / 'results'}", *extra]))


def scores_of(results: Path, record: dict) -> torch.Tensor:
    s = torch.load(results / record["scores_file"], weights_only=True)
    return s["scores"] if isinstance(s, dict) else s


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("formats")
    record = run(tmp, "metric=[lds,loo]", "loo.samples=20")
    assert record["status"] == "ok" and record["metrics"]["loo"]["status"] == "ok"
    return tmp, record


def test_dattri_export_scored_by_dattri_gives_the_record(scored):
    tmp, record = scored
    [folder] = export_results(tmp / "results", tmp / "dattri", fmt="dattri", log=lambda m: None)
    indices = torch.load(folder / "lds" / "indices_lds.pt", weights_only=True)
    targets = torch.load(folder / "lds" / "target_values_lds.pt", weights_only=True)
    assert indices.shape == (10, 50) and targets.shape == (10, 12)
    per_query = dattri_metric.lds(-scores_of(tmp / "results", record).T.float(), (targets, indices))[0]
    assert float(torch.nanmean(per_query)) == pytest.approx(record["lds"], abs=1e-6)
    assert json.loads((folder / "tdabench.json").read_text())["gt_key"] == record["gt_key"]
    # the leave-one-out pair, scored by dattri's loo_corr on the left-out examples' scores
    removed = torch.load(folder / "loo" / "indices_loo.pt", weights_only=True)
    loo_values = torch.load(folder / "loo" / "target_values_loo.pt", weights_only=True)
    assert removed.shape == (20,) and loo_values.shape == (20, 12)
    predicted = -scores_of(tmp / "results", record)[:, removed].T.double()
    corr = dattri_metric.loo_corr(predicted, (loo_values.double(), removed))[0]
    assert float(torch.nanmean(corr)) == pytest.approx(record["metrics"]["loo"]["value"], abs=1e-6)
    # read back as a ground truth: outcomes are averaged, so the LDS is the record's again
    again = run(tmp, f"gt.from=dattri:{folder}", "results_dir=" + str(tmp / "r-dattri"))
    assert again["lds"] == pytest.approx(record["lds"], abs=1e-12)
    assert again["gt_source"]["format"] == "dattri" and again["gt_source"]["models_full_0"] == "matches"


def _dattri_miniature(task, folder: Path, subsets: int = 6) -> None:
    """A dattri benchmark folder made by dattri's own retrain_lds and calculate_lds_ground_truth on
    the task's data: models_half/<i>/model_weights_0.pt, lds/indices_lds.pt, lds/target_values_lds.pt."""
    from dattri.metric import calculate_lds_ground_truth
    from dattri.model_util.retrain import retrain_lds
    from torch.utils.data import DataLoader, TensorDataset

    train, query = task.train_split, task.query_split

    def train_func(loader, seed=None):
        model = task.new_model(seed or 0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(5):
            for x, y in loader:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        return model

    def target_func(ckpt_path, loader):
        model = task.new_model(0)
        model.load_state_dict(torch.load(ckpt_path, weights_only=True))
        model.eval()
        with torch.no_grad():
            return torch.cat([torch.nn.functional.cross_entropy(model(x), y, reduction="none") for x, y in loader])

    retrain_lds(train_func, DataLoader(TensorDataset(train.inputs, train.targets), batch_size=32),
                str(folder / "models_half"), num_subsets=subsets, seed=0)
    targets, indices = calculate_lds_ground_truth(
        target_func, str(folder / "models_half"), DataLoader(TensorDataset(query.inputs, query.targets), batch_size=64))
    (folder / "lds").mkdir()
    torch.save(indices, folder / "lds" / "indices_lds.pt")
    torch.save(targets, folder / "lds" / "target_values_lds.pt")


def test_a_dattri_benchmark_is_read_and_its_rows_checked(scored, tmp_path):
    tmp, record = scored
    cfg = compose([*BASE, f"cache_dir={tmp / 'cache'}"])
    task = build_task(cfg, tmp / "cache")
    folder = tmp_path / "mnist_mini"
    _dattri_miniature(task, folder)
    got = run(tmp, f"gt.from=dattri:{folder}", f"results_dir={tmp_path / 'r'}")
    assert got["status"] == "ok" and got["gt_source"]["rows_checked_against_models_half"] == 6
    indices = torch.load(folder / "lds" / "indices_lds.pt", weights_only=True)
    targets = torch.load(folder / "lds" / "target_values_lds.pt", weights_only=True)
    masks = torch.zeros(6, 100, dtype=torch.bool).scatter_(1, indices, True)
    scores = scores_of(tmp / "results", record)
    assert got["lds"] == pytest.approx(lds(scores, masks, -targets).lds, abs=1e-12)
    dattri_value = float(torch.nanmean(dattri_metric.lds(-scores.T, (targets, indices))[0]))
    assert got["lds"] == pytest.approx(dattri_value, abs=1e-6)
    # dattri issue #189: rows that belong to other models are refused, naming the row
    torch.save(targets[[1, 0, *range(2, 6)]], folder / "lds" / "target_values_lds.pt")
    with pytest.raises(ConfigError, match="row 0 is not what models_half/0 gives"):
        run(tmp, f"gt.from=dattri:{folder}", f"results_dir={tmp_path / 'r2'}")


def test_trak_datamodels_arrays_are_read_with_their_observable(scored, tmp_path):
    tmp, _ = scored
    cfg = compose([*BASE, "task.observable=margin", f"cache_dir={tmp / 'cache'}"])
    task = build_task(cfg, tmp / "cache")
    rng = np.random.default_rng(0)
    masks = np.stack([rng.permutation(100) < 50 for _ in range(8)])  # [models, n_train] bool
    margins = np.stack([task.query_observables(task.fit_model(torch.from_numpy(np.flatnonzero(m)), seed=j).model)
                        .numpy() for j, m in enumerate(masks)])  # [models, n_query]
    np.save(tmp_path / "mask.npy", masks)
    np.save(tmp_path / "val_margins.npy", margins.astype(np.float32))
    got = run(tmp, "task.observable=margin", f"gt.from=trak:{tmp_path}", f"results_dir={tmp_path / 'r'}")
    assert got["status"] == "ok" and got["gt_source"]["observable"] == "margin"
    assert got["gt_subsets"] == 8 and got["gt_seeds"] == 1
    outcomes = torch.from_numpy(margins.astype(np.float32))
    expected = lds(scores_of(tmp_path / "r", got), torch.from_numpy(masks), outcomes)
    assert got["lds"] == pytest.approx(expected.lds, abs=1e-12)
    with pytest.raises(ConfigError, match="set task.observable=margin"):
        run(tmp, f"gt.from=trak:{tmp_path}", f"results_dir={tmp_path / 'r2'}")
