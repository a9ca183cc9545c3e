"""pythia_scaling: published Pythia configurations, loading with save_pretrained/from_pretrained."""

from __future__ import annotations

import pytest
import torch

from tdabench.tasks.pythia import PYTHIA_SIZES, PythiaScaling, pythia_config

#: total parameter counts published with the Pythia suite (embedding and unembedding included)
PUBLISHED = {"14m": 14_067_712, "70m": 70_426_624, "160m": 162_322_944, "410m": 405_334_016,
             "1b": 1_011_781_632, "1.4b": 1_414_647_808, "2.8b": 2_775_208_960}


def pythia_cfg(**over) -> dict:
    cfg = {"name": "pythia_scaling", "size": "14m", "pretrained": None, "revision": None,
           "text_path": None, "seq_len": 16, "n_train": 4, "n_query": 2, "n_test": 2,
           "observable": "loss"}
    cfg.update(over)
    return cfg


def test_14m_builds_with_published_size_and_runs(tmp_path):
    task = PythiaScaling(pythia_cfg(), seed=0, cache_dir=tmp_path, log=lambda m: None)
    model = task.checkpoint()
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED["14m"]
    q = task.query_split
    assert model(q.inputs).shape == (2, 16, 50304)
    assert task.token_observables(model, q.inputs, q.targets).shape == (2, 16)
    assert task.measures_lds is False and "per_token" in task.capabilities


@pytest.mark.parametrize("size", ["70m", "160m", "1.4b"])
def test_larger_configurations_match_published_counts(size):
    from transformers import GPTNeoXForCausalLM

    with torch.device("meta"):  # no memory, no forward
        model = GPTNeoXForCausalLM(pythia_config(size))
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[size]
    layers, width, heads = PYTHIA_SIZES[size]
    assert (model.config.num_hidden_layers, model.config.hidden_size,
            model.config.num_attention_heads) == (layers, width, heads)


def test_save_pretrained_folder_loads_back(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    tiny = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=64))
    tiny.save_pretrained(tmp_path / "tiny")
    task = PythiaScaling(pythia_cfg(pretrained=str(tmp_path / "tiny")), seed=0,
                         cache_dir=tmp_path, log=lambda m: None)
    assert task.validate(task.cfg) == []
    model = task.checkpoint()
    assert task.vocab_size() == 300 and int(task.train_split.inputs.max()) < 300
    for (k, v), ref in zip(model.lm.state_dict().items(), tiny.state_dict().values()):
        assert torch.equal(v, ref), k
    x = task.query_split.inputs
    assert torch.allclose(model(x), tiny(input_ids=x).logits, atol=1e-6)


def test_cost_only_task_refuses_training_and_bad_config(tmp_path):
    task = PythiaScaling(pythia_cfg(), seed=0, cache_dir=tmp_path, log=lambda m: None)
    with pytest.raises(RuntimeError, match="measures cost only"):
        task.fit_model(torch.arange(4), seed=0)
    assert "task.size='3b'" in PythiaScaling.validate(pythia_cfg(size="3b"))[0]
    bad = PythiaScaling.validate(pythia_cfg(pretrained=str(tmp_path / "missing")))
    assert len(bad) == 1 and "save_pretrained" in bad[0]


@pytest.mark.parametrize("pretrained", [True, False, 3, ""])
def test_pretrained_must_be_a_repository_name_or_a_folder(pretrained):
    bad = PythiaScaling.validate(pythia_cfg(pretrained=pretrained))
    assert len(bad) == 1 and "repository name" in bad[0] and "null" in bad[0]


def test_a_pretrained_name_without_a_network_is_refused_at_once(tmp_path, monkeypatch):
    from tdabench.tasks import checkpoints

    monkeypatch.setattr(checkpoints, "is_cached", lambda repo, revision: False)
    checkpoints.hub_unreachable.cache_clear()
    monkeypatch.setattr(checkpoints, "_probe", lambda host, port: "Name or service not known")
    try:
        bad = PythiaScaling.validate(pythia_cfg(pretrained="EleutherAI/pythia-14m", revision="step1000"))
        assert len(bad) == 1 and "cannot be reached" in bad[0] and "huggingface-cli download" in bad[0]
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        checkpoints.hub_unreachable.cache_clear()
        assert "HF_HUB_OFFLINE=1 is set" in PythiaScaling.validate(pythia_cfg(pretrained="EleutherAI/pythia-14m"))[0]
    finally:
        checkpoints.hub_unreachable.cache_clear()


def test_pretrained_and_per_token_refused_before_any_folder_is_made(tmp_path):
    from tdabench.harness.engine.cli import precheck

    where = [f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}", "method=ekfac"]
    for bad in ("task.pretrained=true", "method.per_token=yes"):
        problems = precheck(["task=pythia_scaling", bad, *where])
        assert len(problems) == 1 and bad.partition("=")[0] in problems[0]
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()
