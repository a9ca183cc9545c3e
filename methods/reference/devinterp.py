"""``bif_devinterp``: the BIF computed with the devinterp package (reference for ``bif``).

devinterp's high-level ``bif()`` samples causal language models on Hugging Face datasets with an
``input_ids`` column. To run on any task, this adapter uses devinterp's lower-level pieces: its
SGLD chain loop (``devinterp.slt.sampler.sample_single_chain`` with the ``SGMCMC.sgld``
optimizer, localization ``gamma`` set explicitly since devinterp's default is 0) over a dataset of
training-example indices, and its covariance/correlation routine
(``devinterp.slt.covariance.xr_corrcoef_with_torch_backend``) over the stacked draws of all chains.
At each draw a callback records every training loss and every query observable (sequence level;
per-token tasks use their sequence observable, the mean over tokens).

devinterp's high-level ``bif()`` is not used even on the language-model tasks: its observables
are ``batch_size x batches_per_draw`` fixed sequences in a shuffled order, evaluated with the SGLD
batch size, so every training and query set would have to be a multiple of ``batch_size`` and its
scores mapped back to examples through their token ids. The sampler used here runs the same SGLD
update (checked: same scores as ``bif`` on ``text_neox`` up to Monte Carlo noise,
tests/test_bif_devinterp_text.py).

devinterp's covariance or correlation carries no minus sign; the harness score is its negative.
The parameters mirror ``bif`` (same names, same meaning), so the two can be compared directly.
"""

from __future__ import annotations

import torch

from tdabench.harness.plugin.method import Method
from tdabench.methods.bif_spaces import BIF_SPACE, BIF_SPACE_WIDE


class _Indices(torch.utils.data.Dataset):
    """Training-example indices as devinterp batches ``{"input_ids": index}``."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": torch.tensor(i)}


class DevinterpBIF(Method):
    extra = "reference"
    needs_module = "devinterp.slt.sampler"
    shared_task_defaults = {"bif": ("chains", "draws", "burn_in", "steps_between_draws", "eps", "gamma",
                                    "nbeta", "batch_size", "normalize", "draw_batch_size")}
    #: the native BIF's space: the same estimator, tuned the same way
    search_space = BIF_SPACE
    earlier_search_space = BIF_SPACE_WIDE

    def __init__(self, seed: int = 0, chains: int = 4, draws: int = 100, burn_in: int = 100,
                 steps_between_draws: int = 5, eps: float = 1e-4, gamma: float = 100.0,
                 nbeta: float | None = None, batch_size: int = 64, normalize: str = "covariance",
                 draw_batch_size: int = 4096):
        super().__init__(seed)
        self.keep_parameters(locals())
        self._train: torch.Tensor | None = None  # [chains, draws, n_train]
        self._query: torch.Tensor | None = None  # [chains, draws, n_query]

    def check(self, task) -> list[str]:
        p = []
        for key in ("chains", "draws", "steps_between_draws", "batch_size", "draw_batch_size"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < 1:
                p.append(f"method.{key}={v!r} must be a positive integer")
        if self.normalize not in ("covariance", "correlation"):
            p.append(f"method.normalize={self.normalize!r}: use covariance or correlation")
        if not isinstance(self.gamma, (int, float)) or self.gamma <= 0:
            p.append(f"method.gamma={self.gamma!r} must be > 0: devinterp's sampler is not localized "
                     "otherwise (its default localization is 0)")
        return p

    @torch.no_grad()
    def _record(self, task, model, train_out: list, query_out: list) -> None:
        model.eval()
        train, query = task.train_split, task.query_split
        b = self.draw_batch_size
        train_out.append(task.batched(task.per_example_loss, model, train, b).float().cpu())
        query_out.append(task.batched(task.observable, model, query, b).float().cpu())
        model.train()

    def fit(self, task, model) -> None:
        from devinterp.optim import SGMCMC
        from devinterp.slt.sampler import sample_single_chain

        train = task.train_split
        nbeta = float(self.nbeta) if self.nbeta is not None else float(task.n_train)

        def evaluate(m, batch):
            idx = batch["input_ids"].to(train.inputs.device)
            return task.per_example_loss(m, train.inputs[idx], train.targets[idx]), {}

        per_chain = []
        for chain in range(self.chains):
            trains, queries = [], []

            def on_draw(*, model, **_):
                self._record(task, model, trains, queries)

            sample_single_chain(
                ref_model=model, dataset=_Indices(task.n_train), evaluate=evaluate,
                param_masks={k: None for k, p in model.named_parameters() if p.requires_grad},
                num_draws=self.draws, num_burnin_steps=self.burn_in,
                num_steps_bw_draws=self.steps_between_draws, sampling_method=SGMCMC.sgld,
                sampling_method_kwargs={"lr": self.eps, "nbeta": nbeta, "localization": self.gamma},
                chain=chain, seed=self.seed * 1000 + chain, dataloader_seed=self.seed * 1000 + chain,
                device=str(task.device), callbacks=[on_draw],
                batch_size=min(self.batch_size, task.n_train))  # the native BIF's rule: at most all of it
            if len(trains) != self.draws:
                raise FloatingPointError(
                    f"devinterp SGLD chain {chain} stopped after {len(trains)} of {self.draws} draws "
                    f"(non-finite loss); use a smaller method.eps (now {self.eps:g}) or a larger "
                    f"method.gamma (now {self.gamma:g})")
            per_chain.append((torch.stack(trains), torch.stack(queries)))
        self._train = torch.stack([t for t, _ in per_chain])
        self._query = torch.stack([q for _, q in per_chain])

    def score(self, task, model) -> torch.Tensor:
        """Minus devinterp's covariance (or correlation) of query observables with training
        losses over all draws of all chains: ``[n_query, n_train]``."""
        import xarray as xr
        from devinterp.slt.covariance import xr_corrcoef_with_torch_backend

        if self._train is None:
            raise RuntimeError("bif_devinterp.score called before fit")

        def stacked(x: torch.Tensor) -> xr.DataArray:  # [chains, draws, N] -> (batch, chain_draw)
            return xr.DataArray(x.reshape(-1, x.shape[-1]).T.double().numpy(), dims=("batch", "chain_draw"))

        res = xr_corrcoef_with_torch_backend(stacked(self._query), stacked(self._train), device="cpu",
                                             compute_covariance=self.normalize == "covariance")
        nq = task.n_query
        block = res["correlation"].values[:nq, nq:]
        return -torch.as_tensor(block, dtype=torch.float32)
