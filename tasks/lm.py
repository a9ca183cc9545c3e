"""What every causal language-model task shares: the logits wrapper, per-token losses, the
sequence observable and evaluation. (``Task.sample_targets`` already draws one token per position
from logits [B, T, V], which is what the true Fisher of a causal LM needs.)

Examples are token sequences: ``inputs`` [N, T] token ids and ``targets`` [N, T] the next tokens
(``targets[:, t] = sequence[:, t + 1]``). ``model(inputs)`` returns logits [B, T, V].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tdabench.harness.plugin.task import Task


class CausalLM(nn.Module):
    """A Hugging Face causal LM as a plain function of token ids [B, T] -> logits [B, T, V], so
    ``torch.func.functional_call`` and ``vmap`` see an ordinary module."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


def gpt_neox(vocab: int, layers: int, width: int, heads: int, max_len: int,
             intermediate: int | None = None) -> CausalLM:
    """A randomly initialized GPT-NeoX (the Pythia architecture: parallel residual, rotary on a
    quarter of each head, untied embeddings) with the given sizes."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate or 4 * width,
                        max_position_embeddings=max_len, attn_implementation="eager")
    return CausalLM(GPTNeoXForCausalLM(cfg))


class LanguageModelTask(Task):
    """Base of the causal-LM tasks; subclasses provide the data and the model.

    Training loss and observable are both the mean next-token cross-entropy of a sequence (nats
    per token); ``token_observables`` gives the per-token losses whose mean is that observable.
    """

    capabilities = Task.capabilities | {"per_token"}

    @classmethod
    def validate(cls, cfg: dict) -> list[str]:
        problems = super().validate(cfg)
        if cfg.get("observable", "loss") != "loss":
            problems = [p for p in problems if not p.startswith("task.observable")]
            problems.append(f"task.observable={cfg.get('observable')!r}: language-model tasks use "
                            "loss (mean token loss per sequence)")
        return problems

    def vocab_size(self) -> int:
        raise NotImplementedError

    def token_losses(self, model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy of every position: [B, T] (nats)."""
        logits = model(inputs)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)

    def per_example_loss(self, model, inputs, targets):
        """Mean token loss of each sequence: [B]."""
        return self.token_losses(model, inputs, targets).mean(dim=1)

    def observable(self, model, inputs, targets):
        """Mean token loss of each query sequence: [B]."""
        return self.per_example_loss(model, inputs, targets)

    def token_observables(self, model, inputs, targets):
        """Per-token losses of each query sequence: [B, T]; their mean over T is the observable."""
        return self.token_losses(model, inputs, targets)

    @torch.no_grad()
    def evaluate(self, model, batch_size: int = 64) -> dict:
        """Held-out mean token loss (nats) and, for scale, the loss of a uniform guess (log V),
        plus next-token accuracy (``test_acc``)."""
        model.eval()
        test = self.test_split
        total, correct, count = 0.0, 0, 0
        for i in range(0, len(test), batch_size):
            x, y = test.inputs[i:i + batch_size], test.targets[i:i + batch_size]
            logits = model(x)
            total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            count += y.numel()
        return {"test_loss": total / count, "uniform_loss": math.log(self.vocab_size()),
                "test_acc": correct / count}
