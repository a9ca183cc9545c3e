"""``text_neox``: a tiny GPT-NeoX (the Pythia architecture) on a plain text file, character or
byte tokens (no tokenizer download).

Data. ``task.text_path`` (null: ``../shared/data/tinyshakespeare.txt``) is tokenized by
character (vocabulary: the sorted characters of the file) or by byte (256 tokens). The first
``1 - heldout_fraction`` of the tokens is the training region, cut into non-overlapping chunks of
``seq_len + 1`` tokens (inputs are the first ``seq_len``, targets the last ``seq_len``);
``n_train`` chunks drawn by ``seed`` are the training examples. Queries (``n_query``) and test
chunks (``n_test``) come from the held-out last part, which no model trains on.

Regimes. ``regime: scratch`` trains from a random initialization. ``regime: finetune`` first
trains a base checkpoint (cached) on up to ``base_examples`` of the other training-region chunks
with ``base_recipe``, and every training run (reference, ensemble, ground truth) then fine-tunes
that base on its subset with ``recipe``: the analogue of attributing a Pythia fine-tune.

Measured with the defaults (2 layers, width 64, 4 heads, 64-token chunks, 500 training chunks,
10 epochs of SGD with a one-cycle rate peaking at 0.5) on one core of this project's shared 2-core
CPU: from scratch the held-out loss falls from log 65 = 4.17 nats to about 2.52 (next-token
accuracy 27%) in 16-30 s per training depending on load; fine-tuning from a base trained on 4000
other chunks reaches about 2.20 (36%); the base itself (4 epochs over 4000 chunks) takes a few
minutes once.

The BIF runs at its own defaults here (4 chains x 100 draws, 5 steps apart after 100 steps of
burn-in), the one setting measured on this task (``results/reference/text_neox``): LDS 0.204 from
scratch and 0.029 fine-tuned, for about 1,000 CPU s of fitting, 13x EK-FAC's; no other setting has
been measured here, so the task sets none (``tune.trials=N`` chooses on a validation ground truth).
Its fit logs its progress every 10 s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from tdabench.harness.core.storage import content_hash, load_or_compute
from tdabench.harness.plugin.task import Split, TaskSettings
from tdabench.harness.plugin.training import Recipe, recipe_problems, train
from tdabench.tasks.data import shared_file
from tdabench.tasks.lm import LanguageModelTask, gpt_neox

CORPUS = "tinyshakespeare.txt"
TOKENIZATIONS = ("char", "byte")


@dataclass(frozen=True)
class TextSettings(TaskSettings):
    text_path: str | None = None     # a plain text file; None: ../shared/data/tinyshakespeare.txt
    tokens: str = "char"             # char or byte
    seq_len: int = 64                # tokens per example (each chunk holds seq_len + 1)
    heldout_fraction: float = 0.1    # last part of the text: queries and test chunks
    n_test: int = 200
    layers: int = 2
    width: int = 64
    heads: int = 4
    regime: str = "scratch"          # scratch or finetune (of a cached base checkpoint)
    base_examples: int = 4000        # chunks the base checkpoint trains on
    base_recipe: dict = field(default_factory=lambda: {
        "epochs": 4, "batch_size": 32, "lr": 0.5, "momentum": 0.9, "weight_decay": 0.0,
        "schedule": "onecycle", "warmup": 0.1})


def resolve_text_path(cfg: dict) -> Path | None:
    path = TextSettings.of(cfg).text_path
    return Path(path) if path is not None else shared_file(CORPUS)


def tokenize(path: Path, kind: str) -> tuple[torch.Tensor, int]:
    """Token ids [N] of the file and the vocabulary size."""
    if kind == "byte":
        return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8).long(), 256
    text = path.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return torch.tensor([index[c] for c in text], dtype=torch.long), len(vocab)


def region_chunks(n_tokens: int, seq_len: int, heldout_fraction: float) -> tuple[int, int]:
    """How many (seq_len + 1)-token chunks the training and held-out regions hold."""
    split = int(round(n_tokens * (1 - heldout_fraction)))
    return split // (seq_len + 1), (n_tokens - split) // (seq_len + 1)


class TextNeoX(LanguageModelTask):
    capabilities = LanguageModelTask.capabilities | {"replayable"}
    settings_class = TextSettings

    @classmethod
    def validate(cls, cfg: dict) -> list[str]:
        problems = super().validate(cfg)
        own = TextSettings.of(cfg)
        kind = own.tokens
        if kind not in TOKENIZATIONS:
            problems.append(f"task.tokens={kind!r}: use char or byte")
        if own.regime not in ("scratch", "finetune"):
            problems.append(f"task.regime={own.regime!r}: use scratch or finetune")
        for key in ("seq_len", "n_test", "layers", "width", "heads"):
            v = getattr(own, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"task.{key}={v!r} must be a positive integer")
        if not problems and own.width % own.heads:
            problems.append(f"task.width={own.width} must be a multiple of task.heads={own.heads}")
        problems += recipe_problems(own.base_recipe, "task.base_recipe")
        problems += cls.positive_int_problems({"base_examples": own.base_examples},
                                              {"base_examples": "chunks the base model trains on"})
        frac = own.heldout_fraction
        if not isinstance(frac, float) or not 0 < frac < 1:
            problems.append(f"task.heldout_fraction={frac!r} must be a fraction strictly between 0 and 1")
        path = resolve_text_path(cfg)
        if path is None:
            problems.append(f"task.text_path is null and ../shared/data/{CORPUS} is absent; set "
                            "task.text_path to a plain text file")
        elif not path.is_file():
            problems.append(f"task.text_path={str(path)!r} is not a file; point it at a plain text file")
        if problems:
            return problems
        n_tokens = (path.stat().st_size if kind == "byte"
                    else len(path.read_text(encoding="utf-8")))
        n_tr, n_ho = region_chunks(n_tokens, own.seq_len, frac)
        need_tr = cfg["n_train"] + (1 if own.regime == "finetune" else 0)
        need_ho = cfg["n_query"] + own.n_test
        if n_tr < need_tr or n_ho < need_ho:
            problems.append(
                f"task.text_path={str(path)!r} is too short: its {n_tokens} tokens give {n_tr} training "
                f"and {n_ho} held-out chunks of {own.seq_len}+1 tokens, but the task needs "
                f"n_train={cfg['n_train']}{' plus base chunks' if need_tr > cfg['n_train'] else ''} "
                f"and n_query + n_test={need_ho}; use a longer text, a shorter task.seq_len or "
                "fewer examples")
        return problems

    # ----- data ----------------------------------------------------------------------------
    def _corpus(self) -> tuple[torch.Tensor, int]:
        if not hasattr(self, "_tokens"):
            path = resolve_text_path(self.cfg)
            problems = self.validate(self.cfg)
            if problems:
                raise ValueError(problems[0])
            self._tokens, self._vocab = tokenize(path, self.settings.tokens)
        return self._tokens, self._vocab

    def vocab_size(self) -> int:
        return self._corpus()[1]

    def decode_tokens(self, ids) -> list[str]:
        """Characters (or bytes below 128; other bytes as a dot) of token ids [T]."""
        if self.settings.tokens == "byte":
            return [chr(int(i)) if int(i) < 128 else "\u00b7" for i in ids]
        vocab = sorted(set(resolve_text_path(self.cfg).read_text(encoding="utf-8")))
        return [vocab[int(i)] for i in ids]

    def _chunks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-region and held-out chunks, each [n, seq_len + 1], in seeded random order."""
        tokens, _ = self._corpus()
        own = self.settings
        t = int(own.seq_len) + 1
        n_tr, n_ho = region_chunks(len(tokens), t - 1, float(own.heldout_fraction))
        split = int(round(len(tokens) * (1 - float(own.heldout_fraction))))
        train_region = tokens[: n_tr * t].view(n_tr, t)
        heldout = tokens[split: split + n_ho * t].view(n_ho, t)
        g = torch.Generator().manual_seed(self.seed)
        return (train_region[torch.randperm(n_tr, generator=g)],
                heldout[torch.randperm(n_ho, generator=g)])

    def load_splits(self) -> tuple[Split, Split, Split]:
        train, heldout = self._chunks()
        q = self.n_query
        parts = (train[: self.n_train], heldout[:q], heldout[q: q + int(self.settings.n_test)])
        return tuple(Split(c[:, :-1].contiguous(), c[:, 1:].contiguous()) for c in parts)

    # ----- model and regimes ---------------------------------------------------------------
    def build_model(self):
        c = self.settings
        return gpt_neox(self.vocab_size(), int(c.layers), int(c.width), int(c.heads), int(c.seq_len))

    def base_state(self) -> dict:
        """The base checkpoint of the fine-tuning regime: trained with ``base_recipe`` on up to
        ``base_examples`` training-region chunks that are not training examples (cached)."""
        def compute():
            train_chunks, _ = self._chunks()
            pool = train_chunks[self.n_train:]
            n = self.settings.base_examples
            pool = pool[: int(n)] if n else pool
            self.log(f"training the {self.name} base checkpoint on {len(pool)} chunks")
            fields = Recipe.__dataclass_fields__
            recipe = Recipe(**{k: v for k, v in (self.settings.base_recipe or {}).items() if k in fields})
            model = self.new_model(self.seed + 1)
            pool = pool.to(self.device)
            train(model, self.per_example_loss, pool[:, :-1], pool[:, 1:], torch.arange(len(pool)),
                  recipe, self.seed + 1)
            return model.state_dict()

        keys = ("text_path", "tokens", "seq_len", "heldout_fraction", "n_train", "layers", "width",
                "heads", "base_examples", "base_recipe")
        key = content_hash({"task": self.name, "seed": self.seed, **{k: self.cfg.get(k) for k in keys}})
        path = self.cache_dir / "models" / f"{self.name}-base-{key}.pt"
        return load_or_compute(path, compute, f"{self.name} base checkpoint", self.log)

    def initial_state(self) -> dict | None:
        """In the fine-tuning regime every training run starts from the base checkpoint."""
        return self.base_state() if self.settings.regime == "finetune" else None
