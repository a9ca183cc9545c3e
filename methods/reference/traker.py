"""``trak_traker``: TRAK computed by the ``traker`` package (MadryLab's reference), on CPU.

traker runs on the same members as the native ``trak`` (``task.ensemble``; member 0 is the
reference checkpoint) with its ``image_classification`` model output (the correct-class margin,
which only needs ``model(inputs)`` [B, C], so flat inputs such as digits work too), its CPU
``BasicProjector`` with Rademacher entries, and float32 (``use_half_precision=False``: float16
Bernoulli sampling is not supported on CPU). Its features, kernels and scores live in a temporary
folder that is removed afterwards.

traker's scores [n_train, n_query] are positive for helpful examples and estimate the effect of
an example on the query's margin; the harness score is their transpose times the sign of
d observable / d margin (minus for the loss observable). traker scales projected gradients by
1/sqrt(n_params) where the native ``trak`` scales them by 1/sqrt(proj_dim), so ``lambda_reg`` is
converted to keep the same meaning in both.

``projector=native`` swaps traker's projection for the native ``trak``'s (same seed, same draw per
model) while keeping the rest of traker's pipeline (gradients, margin, X^T X inverse, Q, ensemble
averaging). With independent projections, one-model TRAK scores at proj_dim 512 on digits agree
with each other only at a per-query Spearman of about 0.24 (projection noise), so comparing the
pipelines themselves needs the same draw.
"""

from __future__ import annotations

import logging
import tempfile

import torch

from tdabench.harness.plugin.method import Method
from tdabench.harness.plugin.training import num_params
from tdabench.methods.trak import TRAK_SPACE, check_trak_settings, member_projector

PROJECTORS = ("basic", "native")
log = logging.getLogger(__name__)


class TrakTraker(Method):
    extra = "reference"
    needs_module = "trak"
    needs_distribution = "traker"
    shared_task_defaults = {"trak": ("models", "proj_dim", "lambda_reg", "batch_size")}
    #: the native TRAK's space: the same estimator, tuned the same way
    search_space = TRAK_SPACE

    def __init__(self, seed: int = 0, models: int = 1, proj_dim: int = 512,
                 lambda_reg: float = 0.0, ensemble_mode: str = "full", projector: str = "basic",
                 batch_size: int = 256):
        super().__init__(seed)
        self.keep_parameters(locals())
        self.requires = frozenset({"checkpoint", "ensemble"} if models > 1 else {"checkpoint"})

    def check(self, task) -> list[str]:
        p = []
        if "per_token" in task.capabilities:
            p.append(f"trak_traker scores classification margins; task {task.name} is a language "
                     "model task: use the native trak (method=trak)")
        p += check_trak_settings(self, task)
        if self.projector not in PROJECTORS:
            p.append(f"method.projector={self.projector!r}: use one of {', '.join(PROJECTORS)}")
        return p

    def trainings(self, task) -> int:
        return self.models

    def _gram_scale(self, dim: int) -> float:
        """traker's X^T X over the native Phi^T Phi: traker divides projected gradients by
        sqrt(dim); BasicProjector's entries are +-1 where the native ones are +-1/sqrt(proj_dim)."""
        return (self.proj_dim if self.projector == "basic" else 1) / dim

    def _batches(self, split):
        for i in range(0, len(split), self.batch_size):
            yield split.inputs[i:i + self.batch_size].cpu(), split.targets[i:i + self.batch_size].cpu()

    def score(self, task, model) -> torch.Tensor:
        from trak import TRAKer
        from trak.projectors import BasicProjector, ProjectionType

        if str(getattr(task, "device", "cpu")) != "cpu":
            log.warning(f"trak_traker computes on the CPU whatever the device (traker's reference pipeline "
                        f"with its CPU projector); the native trak runs on {task.device}")
        members = [model] if self.models == 1 else task.ensemble(self.models, self.ensemble_mode)
        states = [{k: v.cpu() for k, v in m.state_dict().items()} for m in members]
        container = task.new_model(task.seed).cpu()
        dim = num_params(container)
        if self.projector == "basic":
            projector = BasicProjector(grad_dim=dim, proj_dim=self.proj_dim, seed=self.seed,
                                       proj_type=ProjectionType.rademacher, device="cpu")
        else:
            projector = _native_projector(dim, self.proj_dim, self.seed)
        with tempfile.TemporaryDirectory(prefix="traker-") as save_dir:
            traker = TRAKer(model=container, task="image_classification",
                            train_set_size=task.n_train, save_dir=save_dir,
                            device="cpu", projector=projector,
                            use_half_precision=False, logging_level=logging.WARNING,
                            lambda_reg=self.lambda_reg * self._gram_scale(dim))
            for m, state in enumerate(states):
                traker.load_checkpoint(state, model_id=m)
                for x, y in self._batches(task.train_split):
                    traker.featurize(batch=(x, y), num_samples=len(x))
            traker.finalize_features()
            if self.projector == "basic":
                # finalize_features frees the projection matrix, and BasicProjector with a single
                # block (proj_dim <= its block size of 100) never regenerates it: do so here
                projector.generate_sketch_matrix(projector.generator_states[0])
            for m, state in enumerate(states):
                traker.start_scoring_checkpoint("queries", state, model_id=m, num_targets=task.n_query)
                for x, y in self._batches(task.query_split):
                    traker.score(batch=(x, y), num_samples=len(x))
            raw = torch.as_tensor(traker.finalize_scores(exp_name="queries")).clone()
        sign = 1.0 if task.observable_kind == "margin" else -1.0
        return (sign * raw.T).float()


def _native_projector(dim: int, proj_dim: int, seed: int):
    """A traker projector that applies the native ``trak``'s projection of each model id, so the
    two pipelines can be compared draw for draw."""
    from trak.projectors import AbstractProjector, ProjectionType
    from trak.utils import vectorize

    class NativeProjector(AbstractProjector):
        def __init__(self):
            super().__init__(dim, proj_dim, seed, ProjectionType.rademacher, "cpu")
            self.by_model = {}

        def project(self, grads, model_id: int) -> torch.Tensor:
            if isinstance(grads, dict):
                grads = vectorize(grads, device="cpu")
            if model_id not in self.by_model:
                self.by_model[model_id] = member_projector(dim, proj_dim, seed, model_id)
            return self.by_model[model_id](grads.float())

        def free_memory(self):
            pass

    return NativeProjector()
