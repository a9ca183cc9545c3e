"""tdabench-insight: the three views on a small digits task and the text views on a tiny
text_neox, written as real PNG files."""

from __future__ import annotations

import pytest
import torch

from tdabench.harness.views.insight import main
from tdabench.tasks.data import shared_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

DIGITS = ["task=digits_mlp", "task.n_train=200", "task.n_query=20", "task.hidden=16",
          "task.trajectory_checkpoints=3", "task.recipe.epochs=30", "method=grad_dot",
          "task.method_defaults.bif.burn_in=50"]
TEXT = ["task=text_neox", "task.seq_len=32", "task.n_train=120", "task.n_query=4", "task.n_test=32",
        "task.layers=1", "task.width=32", "task.heads=2", "task.recipe.epochs=3",
        "task.trajectory_checkpoints=2", "method=bif", "+task.method_defaults.bif.burn_in=20",
        "+task.method_defaults.bif.batch_size=32"]


def assert_png(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > min_bytes, path
    from matplotlib.image import imread
    img = imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100 and img[..., :3].std() > 0.01


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_digits_views_from_computed_and_saved_scores(tmp_path, capsys):
    out = tmp_path / "out"
    main([*DIGITS, f"cache_dir={tmp_path / 'cache'}", "--out", str(out), "--queries", "0,3",
          "--top", "5", "--draws", "20", "--kernel-examples", "120", "--stage-top", "4"])
    for name in ("top_examples.png", "bif_kernel.png", "stagewise.png"):
        assert_png(out / name)
    # the top view from a saved scores file, as a tdabench run writes it
    from tdabench.harness.core.storage import save_verified
    scores = torch.randn(20, 200)
    save_verified({"scores": scores, "run_id": "x"}, tmp_path / "scores" / "x.pt")
    main([*DIGITS, f"cache_dir={tmp_path / 'cache'}", "--out", str(tmp_path / "saved"),
          "--views", "top", "--scores", str(tmp_path / "scores" / "x.pt")])
    assert_png(tmp_path / "saved" / "top_examples.png")


def test_bad_queries_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([*DIGITS, f"cache_dir={tmp_path}", "--out", str(tmp_path), "--queries", "99"])
    assert "must lie in 0..19" in capsys.readouterr().err


@pytest.mark.skipif(shared_file("tinyshakespeare.txt") is None,
                    reason="../shared/data/tinyshakespeare.txt is absent")
def test_text_top_examples_with_token_heat_map(tmp_path):
    out = tmp_path / "out"
    main([*TEXT, f"cache_dir={tmp_path / 'cache'}", "--out", str(out), "--views", "top",
          "--queries", "1", "--top", "3", "--chains", "2", "--draws", "10"])
    assert_png(out / "top_examples_q1.png")


def test_bif_keeps_per_draw_training_losses_without_changing_scores(small_digits):
    from tdabench.methods.bif import BIF

    model = small_digits.checkpoint()
    settings = dict(seed=0, chains=2, draws=15, burn_in=20, steps_between_draws=2, eps=3e-4)
    plain, keeping = BIF(**settings), BIF(**settings)
    plain.fit(small_digits, model)
    keep = torch.tensor([3, 7, 11, 150])
    keeping.fit(small_digits, model, keep_train_losses=keep)
    assert plain.train_loss_draws is None
    assert torch.equal(plain.score(small_digits, model), keeping.score(small_digits, model))
    draws = keeping.train_loss_draws
    assert draws.shape == (2 * 15, 4) and torch.isfinite(draws).all() and draws.std(0).min() > 0
    # the kept losses are the ones the covariance was built from: their mean is the
    # accumulator's mean training loss of those examples
    acc = keeping._acc
    mean = (acc.sx / acc.n + acc.shift_x)[keep].float()
    assert torch.allclose(draws.mean(0), mean, atol=1e-5)


def test_token_agreement_of_identical_opposite_and_mismatched_scores():
    from tdabench.harness.views.insight import token_agreement

    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, 40, generator=g)
    same = token_agreement(a, 2 * a + 1)
    assert torch.allclose(torch.from_numpy(same["per_token"]), torch.ones(3, 5, dtype=torch.float64))
    assert same["sequence_mean"] == pytest.approx(1.0) and same["per_token_mean"] == pytest.approx(1.0)
    assert token_agreement(a, -a)["per_token_mean"] == pytest.approx(-1.0)
    # agreement of each token, not of the sequence: independent noise per token averages out of
    # the sequence score, so the sequence agreement is higher than the per-token one
    shared = torch.randn(3, 1, 40, generator=g)
    b1, b2 = shared + torch.randn(3, 5, 40, generator=g), shared + torch.randn(3, 5, 40, generator=g)
    mixed = token_agreement(b1, b2)
    assert 0.2 < mixed["per_token_mean"] < mixed["sequence_mean"]
    with pytest.raises(ValueError, match="same shape"):
        token_agreement(a, a[:, :4])
    with pytest.raises(ValueError, match="per-token"):
        token_agreement(a.mean(1), a.mean(1))


@pytest.mark.skipif(shared_file("tinyshakespeare.txt") is None,
                    reason="../shared/data/tinyshakespeare.txt is absent")
def test_text_token_agreement_view_from_two_saved_score_files(tmp_path, capsys):
    import json

    from tdabench.harness.core.storage import save_verified

    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 32, 120, generator=g)
    b = a + 0.5 * torch.randn(4, 32, 120, generator=g)
    save_verified({"scores": a, "run_id": "a", "method": "bif"}, tmp_path / "scores" / "a.pt")
    save_verified({"scores": b, "run_id": "b", "method": "ekfac"}, tmp_path / "scores" / "b.pt")
    out = tmp_path / "out"
    base = [*TEXT, f"cache_dir={tmp_path / 'cache'}", "--out", str(out), "--views", "tokens",
            "--queries", "0,2"]
    with pytest.raises(SystemExit):
        main([*base, "--scores", str(tmp_path / "scores" / "a.pt")])
    assert "--compare FILE" in capsys.readouterr().err
    main([*base, "--scores", str(tmp_path / "scores" / "a.pt"), "--compare", str(tmp_path / "scores" / "b.pt")])
    assert_png(out / "token_agreement.png")
    summary = json.loads((out / "token_agreement.json").read_text())
    assert summary["methods"] == ["bif", "ekfac"] and summary["shape"] == [4, 32, 120]
    assert 0.75 < summary["per_token_mean"] < 0.95 and summary["sequence_mean"] > summary["per_token_mean"]
    assert len(summary["per_token"]) == 4 and len(summary["per_token"][0]) == 32


def test_sampling_views_find_their_method_by_capability(monkeypatch):
    """The kernel and stagewise views use a method that offers training_loss_draws: the one the
    overrides choose if it does, else the first registered one that does (the BIF among the
    built-ins); no method is looked up by name."""
    from tdabench.harness.core.registry import METHODS
    from tdabench.harness.views.insight import sampler_name
    from tdabench.methods.bif import BIF

    assert sampler_name(["method=grad_dot"]) == sampler_name([]) == "bif"
    assert "training_loss_draws" not in METHODS.get("bif_devinterp").offers

    class PluginSampler(BIF):
        name = "a_plugin_sampler"

    monkeypatch.setitem(METHODS._items, "a_plugin_sampler", PluginSampler)
    assert sampler_name(["method=bif"]) == "bif"
    assert sampler_name(["method=grad_dot"]) == "a_plugin_sampler"
    monkeypatch.setattr(PluginSampler, "offers", frozenset())
    assert sampler_name([]) == "bif"


def test_training_loss_draws_capability_matches_the_kept_losses(small_digits):
    from tdabench.harness.plugin.method import Method
    from tdabench.methods.bif import BIF

    model = small_digits.checkpoint()
    settings = dict(seed=0, chains=2, draws=6, burn_in=5, steps_between_draws=2, eps=3e-4)
    direct, kept = BIF(**settings), BIF(**settings)
    idx = torch.tensor([0, 5, 9])
    losses = direct.training_loss_draws(small_digits, model, idx)
    kept.fit(small_digits, model, keep_train_losses=idx)
    assert losses.shape == (12, 3) and torch.equal(losses, kept.train_loss_draws)
    with pytest.raises(NotImplementedError, match="does not offer training_loss_draws"):
        Method().training_loss_draws(small_digits, model, idx)


def _saved_run(tmp_path, overrides, scores):
    """A results folder holding one ok run of ``overrides`` (its record and scores file), as
    ``tdabench`` writes them."""
    from tdabench.harness.engine.compose import compose
    from tdabench.harness.engine.run import config_hash
    from tdabench.harness.engine.writing import write_result
    from tdabench.harness.read.record import RunRecord

    cfg = compose(overrides)
    record = RunRecord.new(run_id="digits_mlp-grad_dot-0000abcd", task="digits_mlp", method="grad_dot", status="ok",
                           lds=0.3, lds_ci=[0.2, 0.4], config_hash=config_hash(cfg), config=cfg)
    write_result(record, scores, tmp_path / "r", tmp_path / "c")
    return tmp_path / "r" / "scores" / "digits_mlp-grad_dot-0000abcd.pt"


def test_a_scores_file_is_drawn_only_over_its_own_runs_settings(tmp_path, capsys):
    where = [f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}"]
    path = _saved_run(tmp_path, [*DIGITS, *where], torch.randn(20, 200))
    for bad in (["seed=1"], ["task.n_train=150"]):  # other data: refused, one line, nothing drawn
        with pytest.raises(SystemExit) as exc:
            main([*DIGITS, *where, *bad, "--views", "top", "--scores", str(path), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and "digits_mlp-grad_dot-0000abcd" in err[0]
        assert bad[0] in err[0].replace("'", "").replace(" here", "") and not (tmp_path / "o").exists()
    # the file alone, or --run: the settings of the run's record
    main(["--views", "top", "--scores", str(path), "--out", str(tmp_path / "alone"), "--queries", "0"])
    main([f"results_dir={tmp_path / 'r'}", "--run", "digits_mlp-grad_dot-0000abcd", "--views", "top",
          "--out", str(tmp_path / "run"), "--queries", "0"])
    assert_png(tmp_path / "alone" / "top_examples.png") and assert_png(tmp_path / "run" / "top_examples.png")
    # a file without its record and without settings: refused, never read over the default task
    moved = tmp_path / "elsewhere" / "x.pt"
    moved.parent.mkdir()
    for p in (path, path.with_name(path.name + ".sha256")):
        p.rename(moved.parent / (moved.name + p.name[len(path.name):]))
    with pytest.raises(SystemExit):
        main(["--views", "tokens", "--scores", str(moved), "--compare", str(moved), "--out", str(tmp_path / "t")])
    assert "settings are unknown" in capsys.readouterr().err


def test_the_top_view_calls_no_example_harmful_when_every_score_is_negative():
    from tdabench.harness.views.top_examples import top_indices

    helpful, harmful = top_indices(torch.tensor([-0.5, -0.1, -0.003, -0.2]), 3)
    assert helpful == [0, 3, 1] and harmful == []
    helpful, harmful = top_indices(torch.tensor([0.5, -0.1, 0.0, 0.2]), 3)
    assert helpful == [1] and harmful == [0, 3]


def test_insight_help_lists_every_view(capsys):
    from tdabench.harness.views.insight import VIEWS

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "three views" not in text and all(v in text for v in VIEWS) and "--run" in text
