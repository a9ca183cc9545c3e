"""Is a model better than chance? The check that keeps degenerate models out of the benchmark.

A task's ``evaluate(model)`` returns the model's quality on held-out data: ``test_acc`` and
``test_loss`` (nats), and where the task knows them ``chance_acc`` (the accuracy of always
predicting the most frequent test class), ``uniform_loss`` (the loss of a uniform prediction,
log of the number of classes) and ``n_test`` (held-out examples). A model is degenerate when its
loss is not below the uniform prediction's, or its accuracy is not clearly above chance: within
three binomial standard errors of it (and at least one percentage point). The LDS of such a model
says nothing about the methods, so it is never benchmarked; the ground truth reports the share of
its retrained models that are degenerate and is refused above :data:`MAX_DEGENERATE_SHARE`.

Scores get their own check (:func:`check_scores`): the right shape, finite, not constant.
"""

from __future__ import annotations

import math

import torch

#: largest share of degenerate retrained models a ground truth may hold
MAX_DEGENERATE_SHARE = 0.1


class DegenerateModelError(RuntimeError):
    """The model being attributed, or too many ground-truth models, are no better than chance."""


def chance_margin(chance: float, n_test: int | None) -> float:
    """How far above ``chance`` an accuracy on ``n_test`` examples must be to count as better."""
    if not n_test:
        return 0.01
    return max(0.01, 3 * math.sqrt(chance * (1 - chance) / n_test))


def degenerate_reason(quality: dict) -> str | None:
    """Why the model with this ``evaluate`` result is no better than chance, or None."""
    loss, uniform = quality.get("test_loss"), quality.get("uniform_loss")
    acc, chance = quality.get("test_acc"), quality.get("chance_acc")
    if loss is not None and not math.isfinite(loss):
        return f"its test loss is {loss}"
    if loss is not None and uniform is not None and loss >= uniform:
        return (f"its test loss {loss:.3f} is not below {uniform:.3f}, the loss of a uniform "
                "prediction")
    if acc is not None and chance is not None:
        bar = chance + chance_margin(chance, quality.get("n_test"))
        if acc <= bar:
            return (f"its test accuracy {acc:.1%} is not clearly above chance ({chance:.1%}, the "
                    f"most frequent class; needs more than {bar:.1%})")
    return None


def degenerate_model_message(task_name: str, reason: str) -> str:
    """The one-line refusal of a reference model that is no better than chance."""
    return (f"the reference {task_name} model is no better than chance: {reason}. Its LDS would "
            "say nothing about the methods; fix the task's training recipe or model (for example "
            "a smaller task.recipe.lr, more task.recipe.epochs, a larger model) before "
            "benchmarking")


class InvalidScoresError(ValueError):
    pass


def check_scores(scores: torch.Tensor, task) -> None:
    """Refuse scores of the wrong shape, with non-finite entries, or constant everywhere."""
    ok_shapes = ((task.n_query, task.n_train),)
    if not isinstance(scores, torch.Tensor) or (
            tuple(scores.shape) not in ok_shapes
            and not (scores.dim() == 3 and scores.shape[0] == task.n_query and scores.shape[2] == task.n_train)):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise InvalidScoresError(
            f"scores have shape {shape}; expected [n_query={task.n_query}, n_train={task.n_train}] "
            "or [n_query, query_len, n_train]")
    bad = (~torch.isfinite(scores)).sum().item()
    if bad:
        raise InvalidScoresError(f"{bad} of {scores.numel()} scores are NaN or infinite")
    if scores.numel() > 1 and bool((scores == scores.reshape(-1)[0]).all()):
        raise InvalidScoresError("every score is the same value; the method produced no ranking")
