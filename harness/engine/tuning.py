"""Tuning (``tune.trials=N``): one Optuna study per pairing on the validation ground truth.

A run with ``tune.trials > 0`` first tunes its method, then evaluates the best setting once on the
test ground truth; that evaluation is the run's record (``split: test``), and the trials are never
written as records. Tuning sees only the task's validation view (:meth:`Task.validation_view`:
queries disjoint from the test queries) and its own ground truth (``tune.val_subsets`` x
``tune.val_seeds``, subsets and retraining seeds drawn from another seed, cached under its own
key); it never builds or reads the test ground truth.

The study: Optuna's TPE sampler, seeded from the run's seed and the number of trials the study
already holds (a resumed study draws new points, not the first ones again; studies that differ
only in a cost rung draw the same first random points, common random numbers across the rungs of a
tuned frontier); the first trial is the
method's own setting (enqueued), so the tuned setting is never worse than the default on
validation. Only the method's :attr:`Method.search_space` is searched; a method without one is not
tuned (the run says so and evaluates its setting on test, with no validation ground truth), and
a space is checked before any work (:func:`~tdabench.harness.engine.space.space_problems`). A
setting the method refuses before any work (its ``check``, e.g. TRAK's
projection larger than the training set without a ridge) completes with the worst LDS, -1, and
the user attribute ``refused``, so that the sampler learns to avoid the region instead of proposing
it again; it is never chosen and does not count as completed. A trial is failed (not scored) when
fit or score raises, or when its fit + score CPU seconds exceed ``tune.max_cpu_s`` (the trial is
stopped when it reaches the cap, so a trial over it costs no more than the cap).

The tuned frontier: with ``tune.select_cpu_s`` set, the setting evaluated on test is the best
trial whose fit + score took at most that many CPU seconds. The cap is not part of the study's
name, so a ladder of caps (for example 1, 3, 10, 30 and 100 times EK-FAC's CPU seconds) chooses
from one study: matched tuning effort at every cost. A trial's CPU seconds are those it measured;
work it read from a cache written by an earlier trial (curvature factors, ensemble members) is
named in its ``cached_work`` attribute.

Where studies live: ``tune.storage`` null keeps them in ``<results_dir>/studies.db`` (SQLite, one
machine; a worker waits for another's write instead of failing); a path ending in ``.journal``
uses Optuna's journal file (workers on a shared file system); any other URL is passed to Optuna.
Workers sharing a study stop at its budget together, and each waits for the others' running trials
before it chooses, so every worker's choice sees every trial. A study is named
``<task>-<method>-<hash>``, the hash of every setting that determines the run except the trial
count, so rerunning with more trials continues the study and runs only the missing trials. Inspect
one with ``optuna-dashboard sqlite:///results/studies.db`` or ``optuna.load_study(study_name=...,
storage=...)``; each trial carries user attributes ``cpu_s``, ``wall_s``, ``peak_mem_mb`` and, if
it failed, ``error``. A trial stopped by Ctrl-C is marked ``interrupted`` and does not count: the
resumed study runs its place again; so is a trial whose worker was killed, marked failed when a
worker resumes. """

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from tdabench.harness.core.settings import GroundTruthSettings, RunSettings, settings_of
from tdabench.harness.core.storage import record_cache_misses, record_cache_reads
from tdabench.harness.engine.interrupts import CpuLimitExceeded, UserInterrupt, cpu_limit, time_limit
from tdabench.harness.engine.profiling import Profiler
from tdabench.harness.engine.studies import fail_killed_trials, sqlite_storage, worker_gone, worker_id
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.harness.plugin.quality import (
    DegenerateModelError,
    check_scores,
    degenerate_model_message,
    degenerate_reason,
)
from tdabench.harness.plugin.space import (
    accepted_setting,
    default_point,
    describe,
    quasi_random_points,
    space_for,
    startup_trials,
    to_params,
    trial_name,
)
from tdabench.harness.read.lds import lds
from tdabench.harness.read.record import TunedInfo

log = logging.getLogger(__name__)


class TuningFailed(RuntimeError):
    """No trial of the study succeeded; the message gives the first trial's error."""


class SettingRefused(ValueError):
    """The method refused the trial's setting before any work (its ``check``)."""


#: the value a refused setting reports to the sampler: the lowest LDS there is
REFUSED_VALUE = -1.0


class CostCapExceeded(RuntimeError):
    """A trial's fit + score CPU seconds exceeded ``tune.max_cpu_s``."""


@dataclass
class Tuned:
    params: dict  # the method parameters of the best trial (the tuned ones only)
    info: TunedInfo  # the record's ``tuned`` field


def tuning_finds_a_setting(task, method_cls, s: RunSettings) -> bool:
    """Whether a tuned run (``tune.trials > 0``) whose default setting the method's ``check``
    refuses can still run: the task provides what the method requires and some setting of its
    search space passes the check (the tuner then scores refused trials -1 and avoids them). A
    pairing no setting can run is still refused here, before any ground truth is built."""
    space = space_for(method_cls, task, s.tune.sampler)
    if not s.tune.trials or not space or set(method_cls.requires) - set(task.capabilities):
        return False
    return accepted_setting(space, s.method_params, task.n_train,
                            lambda params: not method_cls(**params).check(task), seed=s.seed) is not None


def make_sampler(kind: str, budget: int, seed: int):
    """The Optuna sampler of a study of ``budget`` trials. ``quasi_tpe`` (default): after the
    default and the quasi-random start-up points that :func:`tune` enqueues
    (:func:`~tdabench.harness.plugin.space.startup_trials` in all), multivariate TPE (Falkner et al.
    2018's joint density, so settings that act together, such as the BIF's eps and nbeta, are
    modelled together). ``tpe``: independent TPE after random start-up draws (a third of the budget,
    2 to 10), as studies before ``quasi_tpe`` ran."""
    import warnings

    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, budget // 3)))
    with warnings.catch_warnings():  # multivariate TPE is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(budget), multivariate=True)


def validation_gt(s: RunSettings) -> GroundTruthSettings:
    """The ``gt`` settings of the validation ground truth: the run's, at ``tune.val_subsets`` x
    ``tune.val_seeds``, in the run's ``gt.num_shards`` shards (at most one per subset)."""
    return replace(s.gt, subsets=s.tune.val_subsets, seeds=s.tune.val_seeds, shard=None,
                   num_shards=min(s.gt.num_shards, s.tune.val_subsets))


def compute_validation_shard(task, s: RunSettings, shard: int) -> None:
    """Compute and cache shard ``shard`` of the validation ground truth of a tuned run (a ``gt.shard``
    run with ``tune.trials`` set does its share of both ground truths, so shard jobs leave the tuner
    nothing to retrain); nothing when the validation ground truth has fewer shards than that."""
    vgt = validation_gt(s)
    if shard < vgt.num_shards:
        GroundTruthBuilder(task.validation_view(), vgt, s.cache_dir).compute_shard(shard, vgt.num_shards)
        log.info(f"validation ground truth shard {shard}/{vgt.num_shards} is cached")


def storage_of(s: RunSettings):
    """The Optuna storage of the run's studies, and how a record names it (a URL, or the journal
    file's absolute path)."""
    where = s.tune.storage
    if where is None:
        folder = Path(s.results_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        where = f"sqlite:///{folder / 'studies.db'}"
    if where.startswith("sqlite:///"):
        return sqlite_storage(where), where
    if where.endswith(".journal") and "://" not in where:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(where).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), str(path)
    return where, where


def _counted(study) -> int:
    """Trials that count against the budget: every trial but those a user interrupted or whose
    worker was killed (a trial left running by a worker on another host counts: it may be alive) and
    those enqueued that have not started (the start-up points still waiting)."""
    import optuna

    return sum(not t.user_attrs.get("interrupted") and t.state != optuna.trial.TrialState.WAITING
               for t in study.trials)


#: how long a choice waits for another worker's trial when neither limits.max_seconds nor
#: tune.max_cpu_s bounds a trial's wall time (a trial a killed worker left running never ends)
DEFAULT_PATIENCE_S = 6 * 3600.0


def patience_s(s: RunSettings) -> float:
    """The longest wall time a running trial of another worker is waited for: the trial's own
    wall-clock limit (``limits.max_seconds``), else 4 x its CPU cap (``tune.max_cpu_s``; wall
    time on a loaded machine runs ahead of CPU time), else :data:`DEFAULT_PATIENCE_S`."""
    if s.limits.max_seconds:
        return float(s.limits.max_seconds) + 60.0
    if s.tune.max_cpu_s:
        return 4.0 * float(s.tune.max_cpu_s) + 60.0
    return DEFAULT_PATIENCE_S


def wait_for_other_workers(study, name: str, patience: float, poll_s: float = 10.0) -> None:
    """Wait until no trial of ``study`` is running (workers sharing a study finish its last
    trials at different times, and the choice must see all of them). A trial whose worker process
    on this host is gone, or that has run longer than ``patience`` seconds (a killed worker on
    another host), was left behind and is not waited for."""
    import optuna

    told = False
    while True:
        now = datetime.now()
        running = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                   if not worker_gone(t)
                   and (t.datetime_start is None or (now - t.datetime_start).total_seconds() < patience)]
        if not running:
            return
        if not told:
            log.info(f"study {name}: waiting for trial {', '.join(str(t.number) for t in running)} of "
                     f"another worker before choosing (up to {patience:.0f} s from its start)")
            told = True
        time.sleep(poll_s)


def _evaluate(method_cls, params: dict, view, gt, s: RunSettings, trial) -> float:
    """Fit and score one setting on the validation view; its validation LDS. Raises on failure."""
    method = method_cls(**params)
    problems = method.check(view)
    if problems:
        raise SettingRefused("; ".join(problems))
    model = view.checkpoint()
    prof = Profiler(s.device, count=False)
    cap = s.tune.max_cpu_s
    over = f"fit + score reached tune.max_cpu_s={cap} CPU s and was stopped"
    with time_limit(s.limits.max_seconds), record_cache_misses() as computed, \
            record_cache_reads() as reads:
        try:
            with cpu_limit(cap, over):
                with prof.phase("fit"):
                    method.fit(view, model)
                with prof.phase("score"):
                    scores = method.score(view, model)
        except CpuLimitExceeded as exc:
            trial.set_user_attr("cpu_s", cap)
            raise CostCapExceeded(str(exc)) from None
    earlier = sorted({what for path, what in reads if path not in computed})
    if earlier:
        trial.set_user_attr("cached_work", earlier)
    scores = scores.cpu() if isinstance(scores, torch.Tensor) else scores
    check_scores(scores, view)
    # on a GPU the host's CPU seconds count kernel launches, not work: the cost of a trial (its cap
    # and the tuned frontier's) is then its synchronized wall seconds
    cpu = sum((prof.time_s if prof.on_gpu else prof.cpu_time_s).values())
    trial.set_user_attr("cpu_s", round(cpu, 3))
    trial.set_user_attr("wall_s", round(sum(prof.time_s.values()), 3))
    trial.set_user_attr("peak_mem_mb", max(prof.peak_mem_mb.values()))
    if cap is not None and cpu > cap:
        raise CostCapExceeded(f"fit + score took {cpu:.1f} CPU s, over tune.max_cpu_s={cap}")
    value = lds(scores, gt.masks, gt.mean_outcomes, 1, s.seed).lds
    if not math.isfinite(value):
        raise ValueError(f"the validation LDS is {value}")
    return value


def enqueue_missing(study, planned: list[dict]) -> None:
    """Enqueue each point of ``planned`` (the default, then the start-up points) that no trial of
    ``study`` ran, runs or waits for: a fresh study gets them all, a resumed one those a user
    interrupted (workers sharing the study enqueue each once)."""
    held = [t.system_attrs.get("fixed_params") or dict(t.params) for t in study.trials
            if not t.user_attrs.get("interrupted")]
    for point in planned:
        if point in held:
            held.remove(point)
        else:
            study.enqueue_trial(point)


def changed_dimensions(study, space: dict) -> str:
    """'' when every trial of ``study`` drew its values from ``space``; else what differs: a name
    the space lacks, or a dimension whose range has changed."""
    wanted = {trial_name(k, d): d.distribution() for k, d in space.items()}
    drawn = {p: dist for t in study.trials for p, dist in t.distributions.items()}
    other = sorted(set(drawn) - set(wanted))
    if other:
        return f"its trials name {', '.join(other)}; the space now names {', '.join(sorted(wanted))}"
    return next((f"its trials drew {p} from {dist}; the space now has {wanted[p]}"
                 for p, dist in drawn.items() if dist != wanted[p]), "")


def trial_log(study) -> list[dict]:
    """Every trial of ``study`` as JSON: number, state, search-space values, their Optuna
    distributions (JSON), validation LDS (None unless complete), CPU seconds and whether it was
    refused; the record keeps them, so what the settings did is read without the study file."""
    from optuna.distributions import distribution_to_json

    return [{"number": t.number, "state": t.state.name, "params": dict(t.params),
             "distributions": {k: distribution_to_json(d) for k, d in t.distributions.items()},
             "value": t.value if t.state.name == "COMPLETE" and "refused" not in t.user_attrs else None,
             "cpu_s": t.user_attrs.get("cpu_s"), "refused": "refused" in t.user_attrs,
             "default": bool(t.user_attrs.get("default"))}
            for t in study.trials if t.state.name != "WAITING"]


def tune(task, method_cls, cfg: RunSettings | dict, study_key: str) -> Tuned:
    """Run (or continue) the pairing's study up to ``tune.trials`` trials on the validation view
    of ``task``; the best setting and the record's ``tuned`` field. ``study_key``: the hash of the
    settings that define the pairing (not the trial count). The search space is the method's as the
    task redeclares it, or the earlier one with ``tune.sampler=tpe`` (:func:`space_for`)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = settings_of(cfg)
    trials = s.tune.trials
    space = space_for(method_cls, task, s.tune.sampler)
    view = task.validation_view()
    builder = GroundTruthBuilder(view, validation_gt(s), s.cache_dir)
    gt = builder.build()
    reason = degenerate_reason(task.evaluate(task.checkpoint()))
    if reason:  # checked before any trial, as the run checks it before the test ground truth
        raise DegenerateModelError(degenerate_model_message(task.name, reason))
    storage, where = storage_of(s)
    name = f"{task.name}-{method_cls.name}-{study_key}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    other = changed_dimensions(study, space)
    if other:  # the study ran over another space (the method's has changed since): its trials do not mix
        raise TuningFailed(f"study {name} in {where} was run over another search space ({other}): delete the "
                           "study or give tune.storage another file")
    budget = trials if space else 1  # a direct call without a space: its one setting
    fail_killed_trials(study, name)
    held = _counted(study)
    seed = int(np.random.SeedSequence([s.seed, len(study.trials)]).generate_state(1)[0])
    study.sampler = make_sampler(s.tune.sampler, budget, seed)
    base = s.method_params
    first = default_point(space, base, task.n_train)
    quasi = s.tune.sampler == "quasi_tpe"  # its start-up: the default, then quasi-random points
    startup = [first, *(quasi_random_points(space, startup_trials(budget) - 1, s.seed) if quasi else [])]
    enqueue_missing(study, [{trial_name(k, space[k]): v for k, v in p.items()} for p in startup])

    def objective(trial) -> float:
        trial.set_user_attr("worker", worker_id())  # lets another worker tell a dead trial from a running one
        values = {k: d.suggest(trial, trial_name(k, d)) for k, d in space.items()}
        if values == first:
            trial.set_user_attr("default", True)  # the method's own setting: the gain is against it
        params = {**base, **to_params(space, values, task.n_train)}
        shown = {trial_name(k, space[k]): v for k, v in values.items()}  # as the study names them
        try:
            value = _evaluate(method_cls, params, view, gt, s, trial)
        except UserInterrupt:  # not counted: a resumed study runs this trial's place again
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("default", False)  # its rerun is the default's trial
            raise
        except SettingRefused as exc:
            trial.set_user_attr("refused", str(exc)[:1000])
            log.info(f"{name} trial {trial.number} {shown}: refused: {exc}")
            return REFUSED_VALUE
        except Exception as exc:  # a failed trial, counted in the budget
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
            log.info(f"{name} trial {trial.number} {shown}: failed: {type(exc).__name__}: {exc}")
            return float("nan")
        log.info(f"{name} trial {trial.number} {shown}: validation LDS {value:.4f}")
        return value

    if budget > held:
        log.info(f"tuning {method_cls.name} on {task.name}: {budget - held} of {budget} trials to run "
                 f"(study {name} in {where})")
        def enough(study, _trial) -> None:  # workers sharing the study stop at the budget together
            if _counted(study) >= budget:
                study.stop()

        study.optimize(objective, n_trials=budget - held, callbacks=[enough])
    wait_for_other_workers(study, name, patience_s(s))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and "refused" not in t.user_attrs]
    if not done:
        errors = [e for t in study.trials if (e := t.user_attrs.get("error") or t.user_attrs.get("refused"))]
        raise TuningFailed(f"no trial of study {name} succeeded ({len(study.trials)} trials); first error: "
                           f"{errors[0] if errors else 'none recorded'}")
    select = s.tune.select_cpu_s
    within = [t for t in done if select is None or t.user_attrs.get("cpu_s", math.inf) <= select]
    if not within:
        cheapest = min(t.user_attrs.get("cpu_s", math.inf) for t in done)
        raise TuningFailed(f"no trial of study {name} took at most tune.select_cpu_s={select} CPU s (the "
                           f"cheapest took {cheapest:.3g}); raise the cap or add trials")
    best = max(within, key=lambda t: (t.value, -t.number))  # the earliest of equal values
    params = to_params(space, {k: best.params[trial_name(k, d)] for k, d in space.items()}, task.n_train)
    info = TunedInfo(trials=trials, search_space=describe(space), best_params=params, best_trial=best.number,
                     val_lds=best.value, val_gt_key=builder.dir.name, val_query_ids=view.query_ids(),
                     val_subsets=s.tune.val_subsets, val_seeds=s.tune.val_seeds, max_cpu_s=s.tune.max_cpu_s,
                     select_cpu_s=select, best_cpu_s=best.user_attrs.get("cpu_s"), completed_trials=len(done),
                     refused_trials=sum("refused" in t.user_attrs for t in study.trials), study=name,
                     storage=where, trials_cpu_s=round(sum(t.user_attrs.get("cpu_s", 0.0) for t in study.trials), 3),
                     trial_log=trial_log(study))
    log.info(f"{task.name} / {method_cls.name}: best of {len(study.trials)} trials {params}, "
             f"validation LDS {best.value:.4f}")
    return Tuned(params, info)
