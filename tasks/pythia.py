"""``pythia_scaling``: the Pythia suite's architectures, for measuring what attribution costs as
models grow. It measures cost (fit and score time, peak memory), not LDS: there is no retraining
ground truth, so ``measures_lds`` is False and ``fit_model`` refuses to train.

``task.size`` picks one of the published configurations (Biderman et al. 2023; GPT-NeoX with
parallel residual, rotary embeddings on a quarter of each head, untied embeddings, vocabulary
50,304, MLP width 4x). ``task.pretrained`` (a Hugging Face repository name such as
``EleutherAI/pythia-70m``, downloaded on first use into the Hugging Face cache, or a local folder
written by ``save_pretrained``) with ``task.revision`` (a branch such as ``step143000``) loads
real weights (its own architecture: ``task.size`` is then unused); null gives a seeded random
initialization of the chosen size. Without a network a cached or local checkpoint is read offline,
and any other name is refused before work (:mod:`tasks.checkpoints`).

Data: ``n_train``, ``n_query`` and ``n_test`` sequences of ``seq_len`` tokens. With
``task.text_path`` null they are seeded uniform random tokens (cost does not depend on the
text); otherwise the file's bytes (token ids 0-255), in consecutive chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tdabench.harness.plugin.task import Split, TaskSettings
from tdabench.tasks.checkpoints import local_files_only, pretrained_problems
from tdabench.tasks.lm import CausalLM, LanguageModelTask

VOCAB = 50304
#: size -> (layers, width, heads), as published for the Pythia suite
PYTHIA_SIZES: dict[str, tuple[int, int, int]] = {
    "14m": (6, 128, 4),
    "31m": (6, 256, 8),
    "70m": (6, 512, 8),
    "160m": (12, 768, 12),
    "410m": (24, 1024, 16),
    "1b": (16, 2048, 8),
    "1.4b": (24, 2048, 16),
    "2.8b": (32, 2560, 32),
}


def pythia_config(size: str, max_len: int = 2048):
    """The ``GPTNeoXConfig`` of a published Pythia size."""
    from transformers import GPTNeoXConfig

    layers, width, heads = PYTHIA_SIZES[size]
    return GPTNeoXConfig(vocab_size=VOCAB, hidden_size=width, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=4 * width,
                         max_position_embeddings=max_len, use_parallel_residual=True,
                         tie_word_embeddings=False, attn_implementation="eager")


@dataclass(frozen=True)
class PythiaSettings(TaskSettings):
    size: str = "14m"                # one of PYTHIA_SIZES
    pretrained: str | None = None    # a Hugging Face name or a save_pretrained folder; None: random init
    revision: str | None = None      # with pretrained: a training-step checkpoint, e.g. step143000
    text_path: str | None = None     # None: seeded random tokens; or a file whose bytes are the tokens
    seq_len: int = 128
    n_test: int = 8


class PythiaScaling(LanguageModelTask):
    #: cost-only task: the harness skips the ground truth and the LDS
    measures_lds = False
    capabilities = frozenset({"checkpoint", "ensemble", "per_token"})
    settings_class = PythiaSettings

    @classmethod
    def validate(cls, cfg: dict) -> list[str]:
        problems = super().validate(cfg)
        own = cls.settings_class.of(cfg)
        if own.size not in PYTHIA_SIZES:
            problems.append(f"task.size={own.size!r}: use one of {', '.join(PYTHIA_SIZES)}")
        for key in ("seq_len", "n_test"):
            v = getattr(own, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"task.{key}={v!r} must be a positive integer")
        problems += pretrained_problems(own.pretrained, own.revision)
        text = own.text_path
        if text is not None and not Path(text).is_file():
            problems.append(f"task.text_path={text!r} is not a file; give a text file or null "
                            "(random tokens)")
        if not problems and text is not None:
            need = (cfg["n_train"] + cfg["n_query"] + own.n_test) * (own.seq_len + 1)
            have = Path(text).stat().st_size
            if have < need:
                problems.append(f"task.text_path={text!r} has {have} bytes; {need} are needed for "
                                "n_train + n_query + n_test chunks of seq_len + 1 tokens")
        return problems

    def _hf_config(self):
        own = self.settings
        pre = own.pretrained
        if pre is None:
            return pythia_config(own.size, max(2048, int(own.seq_len)))
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(pre), revision=own.revision,
                                          local_files_only=local_files_only(str(pre)))

    def vocab_size(self) -> int:
        if not hasattr(self, "_vocab"):
            self._vocab = int(self._hf_config().vocab_size)
        return self._vocab

    def load_splits(self) -> tuple[Split, Split, Split]:
        own = self.settings
        t = int(own.seq_len) + 1
        n = self.n_train + self.n_query + int(own.n_test)
        if own.text_path is None:
            g = torch.Generator().manual_seed(self.seed)
            chunks = torch.randint(0, self.vocab_size(), (n, t), generator=g)
        else:
            data = bytearray(Path(own.text_path).read_bytes()[: n * t])
            chunks = torch.frombuffer(data, dtype=torch.uint8).long().view(n, t)
        a, b = self.n_train, self.n_train + self.n_query
        return tuple(Split(c[:, :-1].contiguous(), c[:, 1:].contiguous())
                     for c in (chunks[:a], chunks[a:b], chunks[b:]))

    def build_model(self):
        from transformers import GPTNeoXForCausalLM

        cfg = self._hf_config()
        cfg._attn_implementation = "eager"
        return CausalLM(GPTNeoXForCausalLM(cfg))

    def checkpoint(self):
        """The pretrained model (``task.pretrained`` at ``task.revision``) or, when none is given,
        the seeded random initialization of ``task.size``."""
        pre, revision = self.settings.pretrained, self.settings.revision
        if pre is None:
            model = self.new_model(self.seed)
        else:
            from transformers import GPTNeoXForCausalLM

            self.log(f"loading {pre}" + (f" at {revision}" if revision else ""))
            lm = GPTNeoXForCausalLM.from_pretrained(str(pre), revision=revision,
                                                    attn_implementation="eager",
                                                    local_files_only=local_files_only(str(pre)))
            model = CausalLM(lm).to(self.device)
        model.eval()
        return model

    def ensemble(self, k: int, mode: str = "full"):
        """``k`` models for ensemble methods' cost: the checkpoint, then (random init) other seeds'
        initializations or (pretrained) copies of the same weights. Nothing is trained."""
        models = [self.checkpoint()]
        for m in range(1, k):
            models.append(self.new_model(self.seed + 7919 * m).eval() if self.settings.pretrained is None
                          else self.checkpoint())
        return models

    def fit_model(self, idx, seed, init_state=None, snapshots=0, recipe=None):
        raise RuntimeError(
            "pythia_scaling measures cost only and trains no models, so it has no retraining ground "
            "truth or trajectory; use text_neox for LDS on a language model")
