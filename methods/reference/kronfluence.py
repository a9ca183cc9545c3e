"""Reference adapters: kronfluence's EK-FAC and K-FAC influence functions (``ekfac_kronfluence``,
``kfac_kronfluence``), run on the task's device (CPU or GPU) on its checkpoint and data.

kronfluence's pairwise scores are g_q^T (F + lambda)^-1 g_i with g the gradients of the summed
batch loss (positive for helpful examples) and F the mean per-example Fisher; the harness score
d phi_q / d beta_i of the mean training loss is -(1/n) times that. The damping is kronfluence's
heuristic (0.1 x each layer's mean eigenvalue) with ``damping: null``, else the absolute value
given. The layers are chosen with the same name patterns as the native methods. kronfluence's
files go to a temporary folder under the task's cache folder, removed afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from typing import ClassVar

import torch

from tdabench.harness.plugin.method import Method
from tdabench.harness.plugin.space import Categorical
from tdabench.methods.curvature import LayerSelectionError, select_layers


def _kronfluence_task(task, plain_model, module_names: list[str], seed: int):
    """A kronfluence ``Task`` computing the harness task's summed loss and observable. Targets for
    the true Fisher are sampled with ``plain_model``, an untracked copy of the model (a forward
    pass of the tracked one would count twice in kronfluence's covariances)."""
    import kronfluence

    gen = torch.Generator(device=task.device).manual_seed(seed)

    class HarnessTask(kronfluence.Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            if sample:
                y = task.sample_targets(plain_model, x, gen)
            return task.per_example_loss(model, x, y).sum()

        def compute_measurement(self, batch, model):
            x, y = batch
            return task.observable(model, x, y).sum()

        def get_influence_tracked_modules(self):
            return module_names

    return HarnessTask()


def _kronfluence_cpu(task) -> bool:
    """Whether kronfluence computes on the CPU: on the task's device type (a GPU run computes on
    the current GPU). kronfluence keeps its device in a process-wide state made by its first
    analyzer; it is reset when this run's device type differs, as in one process that runs on
    both (benchmarks/gpu_check.py)."""
    from kronfluence.utils.state import State

    cpu = task.device.type != "cuda"
    if State._shared_state and State._shared_state.get("cpu") != cpu:
        State._reset_state()
    return cpu


def _current_gpu(task):
    """The task's GPU made the current one while kronfluence runs (its device is "cuda", the
    current GPU, which with device=cuda:N would differ from the task's); nothing on a CPU."""
    return torch.cuda.device(task.device) if task.device.type == "cuda" else contextlib.nullcontext()


class KronfluenceIF(Method):
    """Shared body of the two adapters; subclasses set ``strategy``."""

    strategy: ClassVar[str] = "ekfac"
    extra = "reference"
    needs_module = "kronfluence"
    #: kronfluence's damping (absolute; null: its own heuristic, 0.1 x the mean eigenvalue): the
    #: heuristic and values a decade apart
    search_space = {"damping": Categorical((None, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1))}

    def __init__(self, seed: int = 0, damping: float | None = None, empirical_fisher: bool = False,
                 layers: list[str] | None = None, exclude: list[str] | None = None,
                 batch_size: int = 256):
        super().__init__(seed)
        self.keep_parameters(locals())
        self._analyzer = None
        self._tmp = None

    def check(self, task) -> list[str]:
        problems = []
        if self.damping is not None and (not isinstance(self.damping, (int, float)) or self.damping < 0):
            problems.append(f"method.damping={self.damping!r} must be null (0.1 x mean eigenvalue) or >= 0")
        try:
            select_layers(task.new_model(task.seed), self.layers, self.exclude)
        except LayerSelectionError as exc:
            problems.append(f"method.layers / method.exclude: {exc}")
        return problems

    def _dataset(self, split):
        # host tensors: kronfluence moves each batch to its device
        return torch.utils.data.TensorDataset(split.inputs.cpu(), split.targets.cpu())

    def fit(self, task, model) -> None:
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments

        names = list(select_layers(model, self.layers, self.exclude))
        ktask = _kronfluence_task(task, model, names, self.seed)
        tracked = prepare_model(copy.deepcopy(model), ktask)  # kronfluence wraps modules in place
        self._tmp = tempfile.TemporaryDirectory(prefix="kronfluence-", dir=task.scratch_dir())
        with _current_gpu(task):
            self._analyzer = Analyzer(analysis_name=task.name, model=tracked, task=ktask,
                                      cpu=_kronfluence_cpu(task), output_dir=self._tmp.name,
                                      disable_tqdm=True, log_level=40)
            torch.manual_seed(self.seed)
            self._analyzer.fit_all_factors(
                factors_name=self.strategy, dataset=self._dataset(task.train_split),
                per_device_batch_size=self.batch_size,
                factor_args=FactorArguments(strategy=self.strategy, use_empirical_fisher=self.empirical_fisher),
                overwrite_output_dir=True)

    def score(self, task, model) -> torch.Tensor:
        from kronfluence.arguments import ScoreArguments

        if self._analyzer is None:
            self.fit(task, model)
        try:
            with _current_gpu(task):
                self._analyzer.compute_pairwise_scores(
                    scores_name="scores", factors_name=self.strategy,
                    query_dataset=self._dataset(task.query_split),
                    train_dataset=self._dataset(task.train_split),
                    per_device_query_batch_size=self.batch_size,
                    per_device_train_batch_size=self.batch_size,
                    score_args=ScoreArguments(damping_factor=self.damping), overwrite_output_dir=True)
            scores = self._analyzer.load_pairwise_scores("scores")["all_modules"]
        finally:
            self._tmp.cleanup()
            self._analyzer = None
        return -scores.float() / task.n_train


class EKFACKronfluence(KronfluenceIF):
    """kronfluence's EK-FAC influence (reference for ``ekfac``)."""

    strategy = "ekfac"
    shared_task_defaults = {"ekfac": ("exclude",)}


class KFACKronfluence(KronfluenceIF):
    """kronfluence's K-FAC influence (reference for ``kfac``)."""

    strategy = "kfac"
    shared_task_defaults = {"kfac": ("exclude",)}
