"""``digits_mlp``: scikit-learn's bundled 8x8 digits (1797 images, no download) with a 64-32-10
tanh MLP. The embedded default task: a full LDS benchmark runs in minutes on a laptop CPU.

Splits are drawn by ``seed`` from disjoint parts of the data: ``n_train`` training images,
``n_query`` query images, and the rest held out for test accuracy. Pixels are scaled to [0, 1].
With the default recipe (SGD + momentum, cosine schedule, 40 epochs, batch 32, weight decay 1e-3)
the 1000-image model reaches about 96% test accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tdabench.harness.plugin.task import Split, Task, TaskSettings

N_DIGITS = 1797
MIN_TEST = 100


@dataclass(frozen=True)
class DigitsSettings(TaskSettings):
    hidden: int = 32   # width of the MLP's hidden layer


class DigitsMLP(Task):
    capabilities = Task.capabilities | {"replayable", "classification"}
    vectorizable = True
    settings_class = DigitsSettings

    @classmethod
    def validate(cls, cfg: dict) -> list[str]:
        problems = super().validate(cfg)
        if not problems and cfg["n_train"] + cfg["n_query"] > N_DIGITS - MIN_TEST:
            problems.append(
                f"task.n_train={cfg['n_train']} with task.n_query={cfg['n_query']} is larger than the "
                f"data: digits has {N_DIGITS} images and keeps {MIN_TEST} for testing; use "
                f"n_train + n_query <= {N_DIGITS - MIN_TEST}")
        hidden = cls.settings_class.of(cfg).hidden
        return problems + cls.positive_int_problems({"hidden": hidden}, {"hidden": "width of the hidden layer"})

    def _order(self, n: int) -> torch.Tensor:
        """The seeded order of the ``n`` digits: training set, then queries, then test split."""
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))

    def heldout_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices into scikit-learn's digits of the test queries and of the test split."""
        from sklearn.datasets import load_digits

        perm = self._order(len(load_digits().target))
        return perm[self.n_train: self.n_train + self.n_query], perm[self.n_train + self.n_query:]

    def load_splits(self) -> tuple[Split, Split, Split]:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32) / 16.0
        y = torch.tensor(data.target, dtype=torch.long)
        perm = self._order(len(x))
        tr = perm[: self.n_train]
        qu = perm[self.n_train: self.n_train + self.n_query]
        te = perm[self.n_train + self.n_query:]
        return Split(x[tr], y[tr]), Split(x[qu], y[qu]), Split(x[te], y[te])

    def build_model(self) -> nn.Module:
        hidden = int(self.settings.hidden)
        return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))
