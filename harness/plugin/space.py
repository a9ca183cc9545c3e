"""Search spaces: the tunable parameters of a method, with ranges and scale, for ``tune.trials``.

A method declares ``Method.search_space`` beside its ``cost_ladder``: a dict ``{parameter:
dimension}`` whose dimensions are :class:`Float`, :class:`Int` or :class:`Categorical`. The
tuner (:mod:`tdabench.harness.engine.tuning`) asks Optuna for one value per dimension and sets
the parameter to it. A dimension with ``per_n_train=True`` is tuned as a multiple of the task's
``n_train`` (the parameter is set to ``value * n_train``); its ``null`` says which multiple a
null parameter stands for (the BIF's ``nbeta: null`` means ``n_train``, multiple 1). A dimension
with ``times="other"`` is tuned as the product of its parameter and the parameter ``other`` (another
dimension of the space, as set): the parameter is set to ``value / other``. The BIF tunes its SGLD
step on the mean training loss, ``eps * nbeta``, this way: the product is what makes a chain diverge
or crawl, at every training-set size, while ``eps`` and ``nbeta`` alone are not. The study knows such
a dimension by the name ``"eps*nbeta"`` (:func:`trial_name`), so a study never mixes it with ``eps``.

Cost knobs (chains x draws, ensemble size, examples of the curvature fit) belong to the cost
ladder, not to the search space: tuning chooses how to spend a budget, the ladder sets it.
Every space contains the method's default setting (:func:`space_problems` checks it), so the
first trial, the default, is a point of the space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class _Range:
    """A numeric parameter in [low, high] (both included), sampled log-uniformly when ``log``;
    :class:`Float` and :class:`Int` differ only in the kind of number."""

    low: float
    high: float
    log: bool = False
    per_n_train: bool = False
    null: float | None = None
    times: str | None = None
    integer: ClassVar[bool] = False

    def suggest(self, trial, name: str):
        suggest = trial.suggest_int if self.integer else trial.suggest_float
        return suggest(name, self.low, self.high, log=self.log)

    def distribution(self):
        """The Optuna distribution :meth:`suggest` samples from (to tell a study's space)."""
        from optuna.distributions import FloatDistribution, IntDistribution

        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)

    def draw(self, rng):
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
            return min(max(round(value), self.low), self.high) if self.integer else value
        return rng.randint(self.low, self.high) if self.integer else rng.uniform(self.low, self.high)

    def from_unit(self, u: float):
        """The value at quantile ``u`` in [0, 1) of the dimension's sampling distribution (for
        quasi-random start-up points)."""
        top = self.high + 1 if self.integer else self.high  # an integer owns [k, k + 1)
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(top) - math.log(self.low)))
        else:
            value = self.low + u * (top - self.low)
        value = math.floor(value) if self.integer else value
        return min(max(value, self.low), self.high)

    def contains(self, value) -> bool:
        kinds = int if self.integer else (int, float)
        return isinstance(value, kinds) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> str:
        unit = " x n_train" if self.per_n_train else ""
        unit += f" times {self.times}" if self.times else ""
        span = f"{{{self.low}..{self.high}}}" if self.integer else f"[{self.low:g}, {self.high:g}]"
        return f"{span}{unit}{' log' if self.log else ''}"


class Float(_Range):
    """A real parameter in [low, high], sampled uniformly in log space when ``log``."""


class Int(_Range):
    """An integer parameter in [low, high] (both included), log-uniform when ``log``."""

    integer: ClassVar[bool] = True


@dataclass(frozen=True)
class Categorical:
    """One of ``choices`` (strings, numbers, booleans or None)."""

    choices: tuple
    per_n_train: bool = False
    null: Any = None
    times: None = None  # a categorical dimension is never a product

    def suggest(self, trial, name: str):
        return trial.suggest_categorical(name, list(self.choices))

    def distribution(self):
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(list(self.choices))

    def draw(self, rng):
        return rng.choice(self.choices)

    def from_unit(self, u: float):
        return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]

    def contains(self, value) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return "{" + ", ".join(map(str, self.choices)) + "}"


def space_for(method_cls, task=None, sampler: str = "quasi_tpe") -> dict:
    """The search space a tuned run of ``method_cls`` on ``task`` (a task class or object; None: no
    task) explores: the method's :attr:`search_space` with the dimensions the task redeclares for it
    (``Task.search_spaces[method name]``, where good settings lie elsewhere on that task). With the
    earlier sampler (``tune.sampler=tpe``) the space earlier studies searched: the method's
    ``earlier_search_space`` where its space has changed since (the BIF's), no task's."""
    own = dict(getattr(method_cls, "search_space", {}) or {})
    if sampler == "tpe":
        return dict(getattr(method_cls, "earlier_search_space", None) or own)
    if not own:
        return own
    return {**own, **(getattr(task, "search_spaces", {}) or {}).get(method_cls.name, {})}


def startup_trials(budget: int) -> int:
    """Trials of a study of ``budget`` trials before the model-based sampler takes over: the default
    and quasi-random points, about sqrt(budget) + 1 (8 trials: 4; 16: 5; 64: 9), so a small budget
    keeps most of its trials for the sampler and a large one spreads more points first."""
    return min(budget, max(2, min(round(math.sqrt(budget)) + 1, 16)))


def quasi_random_points(space: dict, count: int, seed: int) -> list[dict]:
    """``count`` points of ``space`` (trial values) from a scrambled Sobol sequence (seeded): spread
    over the space more evenly than independent random draws, the sampler's start-up."""
    if count <= 0 or not space:
        return []
    from scipy.stats import qmc

    names = sorted(space)
    sobol = qmc.Sobol(d=len(names), scramble=True, seed=seed)
    units = sobol.random_base2(max(1, math.ceil(math.log2(count))))[:count]
    return [{k: space[k].from_unit(float(u[i])) for i, k in enumerate(names)} for u in units]


def describe(space: dict) -> dict[str, str]:
    """``{parameter: 'range scale'}`` of a search space, for listings and records."""
    return {k: d.describe() for k, d in space.items()}


def _times(dim) -> str | None:
    """The other parameter of a product dimension (None: not a product)."""
    return getattr(dim, "times", None)


def trial_name(key: str, dim) -> str:
    """The name the study knows dimension ``key`` by: ``key``, or ``"key*other"`` for a product
    with the parameter ``other`` (``dim.times``)."""
    return f"{key}*{dim.times}" if _times(dim) else key


def to_trial_value(dim, value, n_train: int):
    """The value of ``dim`` that the method parameter ``value`` stands for (its multiple of
    ``n_train`` for a ``per_n_train`` dimension; ``dim.null`` for a null value). A product
    dimension's value also needs the other parameter: :func:`default_point`."""
    if value is None:
        return dim.null
    if dim.per_n_train:
        return value / n_train
    return value


def to_param(dim, value, n_train: int):
    """The method parameter set by the trial value ``value`` of ``dim`` (not a product: see
    :func:`to_params`)."""
    if dim.per_n_train and value is not None:
        return value * n_train
    return value


def _as_param(space: dict, key: str, params: dict, n_train: int):
    """The value parameter ``key`` has in ``params``, a null standing for its dimension's ``null``
    (the BIF's ``nbeta: null``: n_train)."""
    value = params.get(key)
    dim = space.get(key)
    if value is None and dim is not None and getattr(dim, "null", None) is not None:
        return to_param(dim, dim.null, n_train)
    return value


def to_params(space: dict, values: dict, n_train: int) -> dict:
    """The method parameters set by the trial ``values`` (``{parameter: value}``) of ``space``: a
    product dimension's parameter is its value over the other parameter as set."""
    params = {k: to_param(space[k], v, n_train) for k, v in values.items() if not _times(space[k])}
    for k, v in values.items():
        if _times(space[k]):
            other = _as_param(space, space[k].times, params, n_train)
            params[k] = v / other
    return params


def default_point(space: dict, params: dict, n_train: int) -> dict:
    """The trial values of the method's current parameters ``params`` (its resolved settings):
    the first trial of every study."""
    point = {}
    for k, d in space.items():
        if _times(d) and params.get(k) is not None:
            point[k] = params[k] * _as_param(space, d.times, params, n_train)
        else:
            point[k] = to_trial_value(d, params.get(k), n_train)
    return point


def accepted_setting(space: dict, params: dict, n_train: int, accepts, draws: int = 64,
                     seed: int = 0) -> dict | None:
    """A setting of ``space`` over ``params`` that ``accepts(setting)`` (the method's cheap
    ``check`` passing) among the default and ``draws`` points drawn at random (seeded); None when
    none is accepted. A tuned run uses it to tell a refused default whose space holds valid
    settings (tuning goes on and avoids the refused region) from a pairing no setting can run."""
    import random

    if accepts(params):
        return params
    rng = random.Random(seed)
    for _ in range(draws):
        point = to_params(space, {k: d.draw(rng) for k, d in space.items()}, n_train)
        if accepts({**params, **point}):
            return {**params, **point}
    return None


def _samples(dim, n_train: int) -> list:
    """Parameter values ``dim`` can set (its bounds, or every choice), to check against the
    constructor's types."""
    values = list(dim.choices) if isinstance(dim, Categorical) else [dim.low, dim.high]
    return [to_param(dim, v, n_train) for v in values]


def space_problems(method_cls, n_train: int = 1000, params: dict | None = None, task=None,
                   sampler: str = "quasi_tpe") -> list[str]:
    """One line per dimension of ``method_cls.search_space`` that is not a :class:`Float`,
    :class:`Int` or :class:`Categorical`, is a product with what is not another numeric dimension,
    names a parameter the method lacks, sets values the
    constructor's type annotation refuses, or whose range misses the method's setting the study
    starts from (``params``: the resolved settings, a task's defaults and explicit values included;
    the class's own defaults by default); with ``task``, the space as that task redeclares it."""
    space = space_for(method_cls, task, sampler)
    known = set(method_cls.parameters())
    params = method_cls.defaults() if params is None else params
    where = f"method {method_cls.name}: search_space"
    problems = [f"{where}[{k!r}] = {d!r} is not a Float, Int or Categorical (tdabench.harness.Float ...)"
                for k, d in space.items() if not isinstance(d, (Float, Int, Categorical))]
    problems += [f"{where} names {k}, not among its parameters ({', '.join(sorted(known))}); rename the "
                 "dimension or the parameter" for k in sorted(set(space) - known)]
    products = [f"{where}[{k!r}] = {d.describe()} is a product with {d.times!r}, which is not a Float or "
                "Int dimension of the space (nor itself a product): declare it, or drop times="
                for k, d in space.items() if _times(d) and (
                    not isinstance(space.get(d.times), (Float, Int)) or space[d.times].times)]
    if products:  # the setting tuning starts from has no value in such a space
        return problems + products
    checks = getattr(method_cls, "parameter_problems", None)
    dims = {k: d for k, d in space.items() if isinstance(d, (Float, Int, Categorical))}
    start = default_point(dims, params, n_train)
    for k, d in dims.items():
        if k not in known:
            continue
        typed = [p for v in _samples(d, n_train) for p in (checks({k: v}) if checks else [])]
        if typed:
            problems.append(f"{where}[{k!r}] = {d.describe()} sets values of the wrong type: {typed[0]}")
            continue
        v = start[k]
        if not d.contains(v) or (isinstance(v, float) and not math.isfinite(v)):
            problems.append(f"{where}[{k!r}] = {d.describe()} does not contain the setting tuning starts "
                            f"from, {k}={params.get(k)!r}"
                            + (f" ({trial_name(k, d)} = {v:.4g})" if d.times and v is not None else "")
                            + ": widen the range or change the default")
    return problems
