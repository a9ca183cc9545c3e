import torch

from tdabench.harness.plugin.ground_truth import GroundTruthBuilder

GT = {"subsets": 4, "alpha": 0.5, "seeds": 2, "from_checkpoint": False, "finetune_epochs": 2,
      "shard": None, "num_shards": 1}


def test_outcomes_shape_and_seed_variation(small_digits, tmp_path):
    gt = GroundTruthBuilder(small_digits, GT, tmp_path, log=lambda m: None).build()
    assert gt.masks.shape == (4, 200) and gt.outcomes.shape == (4, 2, 20)
    assert torch.isfinite(gt.outcomes).all()
    # different retraining seeds give different models; different subsets give different outcomes
    assert not torch.allclose(gt.outcomes[:, 0], gt.outcomes[:, 1])
    assert gt.mean_outcomes.std(0).min() > 0


def test_cached_ground_truth_is_reused_without_retraining(small_digits, tmp_path, monkeypatch):
    first = GroundTruthBuilder(small_digits, GT, tmp_path, log=lambda m: None).build()

    def no_training(*a, **k):
        raise AssertionError("retrained although the ground truth is cached")

    monkeypatch.setattr(small_digits, "fit_model", no_training)
    again = GroundTruthBuilder(small_digits, GT, tmp_path, log=lambda m: None).build()
    assert torch.equal(first.outcomes, again.outcomes)


def test_shards_assemble_to_the_unsharded_result(small_digits, tmp_path):
    whole = GroundTruthBuilder(small_digits, GT, tmp_path / "a", log=lambda m: None).build()
    sharded_cfg = dict(GT, num_shards=3)
    b = GroundTruthBuilder(small_digits, sharded_cfg, tmp_path / "b", log=lambda m: None)
    for s in (2, 0, 1):  # any order, any process
        b.compute_shard(s, 3)
    assert torch.equal(b.build().outcomes, whole.outcomes)


def test_corrupted_cache_is_recomputed_not_trusted(small_digits, tmp_path):
    msgs = []
    b = GroundTruthBuilder(small_digits, GT, tmp_path, log=msgs.append)
    good = b.build()
    path = b.dir / "ground_truth.pt"
    path.write_bytes(path.read_bytes()[:100])
    again = GroundTruthBuilder(small_digits, GT, tmp_path, log=msgs.append).build()
    assert torch.equal(good.outcomes, again.outcomes)
    assert any("damaged" in m for m in msgs)


def test_from_checkpoint_option_finetunes(small_digits, tmp_path):
    cfg = dict(GT, from_checkpoint=True, seeds=1)
    gt = GroundTruthBuilder(small_digits, cfg, tmp_path, log=lambda m: None).build()
    assert gt.outcomes.shape == (4, 1, 20) and torch.isfinite(gt.outcomes).all()


def test_vectorized_training_matches_the_loop(small_digits, tmp_path):
    """torch.func training of stacked models gives the loop's models up to float reassociation."""
    loop = GroundTruthBuilder(small_digits, dict(GT, vectorize=False), tmp_path / "a", log=lambda m: None)
    vec = GroundTruthBuilder(small_digits, dict(GT, vectorize=True), tmp_path / "b", log=lambda m: None)
    a, b = loop.build().outcomes, vec.build().outcomes
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()


def test_models_trained_together_are_split_in_halves_when_memory_runs_out(small_digits, monkeypatch):
    from tdabench.harness.plugin import models as models_module

    real = models_module.train_stacked
    sizes = []

    def limited(model, states, *args, **kwargs):
        sizes.append(len(states))
        if len(states) > 2:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return real(model, states, *args, **kwargs)

    idx = torch.stack([torch.randperm(small_digits.n_train, generator=torch.Generator().manual_seed(j))[:100]
                       for j in range(5)])
    whole = small_digits.fit_many(idx, [0, 1, 2, 3, 4])
    monkeypatch.setattr(models_module, "train_stacked", limited)
    logged = []
    monkeypatch.setattr(small_digits, "log", logged.append)
    halves = small_digits.fit_many(idx, [0, 1, 2, 3, 4])
    assert sizes == [5, 2, 2, 1] and "5 models trained together ran out of memory" in logged[0]
    assert small_digits.together_limit == 2
    sizes.clear()
    small_digits.fit_many(idx, [0, 1, 2, 3, 4])  # the limit holds for later batches
    assert sizes == [2, 2, 1]
    monkeypatch.setattr(small_digits, "together_limit", None)
    for a, b in zip(whole, halves):
        for v, w in zip(a.state_dict().values(), b.state_dict().values()):
            torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6)
