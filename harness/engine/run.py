"""One run: config -> task -> ground truth -> method.fit -> method.score -> metrics -> record.

The metrics are plugins (:mod:`harness.plugin.metric`): the LDS by default, any list of
registered ones with ``metric=[...]``; each is stored under ``record.metrics[name]``.

Every run, successful or not, appends one record to ``RESULTS_DIR/runs.jsonl`` and logs a wandb
run. Configuration problems are raised as :class:`ConfigError` before any expensive work; failures
during work are recorded with the phase they happened in and a status (``error``, ``oom``,
``timeout``, ``degenerate_model``) and a message giving the cause, so a sweep goes on past them.
That includes ``SystemExit`` and ``KeyboardInterrupt`` raised by a method's own code; Ctrl-C from
the user (SIGINT) raises :class:`UserInterrupt` instead, which stops the sweep.

A reference model no better than chance stops the run before the ground truth (status
``degenerate_model``); tasks that measure cost only are exempt. An LDS that is not finite is never
``ok``. The "already done" check and the computation of a pairing hold a per-pairing lock, so two
identical sweeps compute each pairing once (the lock lives in the results folder, shared by runs
with other caches too; a result kept aside for a full ``results_dir`` counts as done).
Scores and the record are written inside the error handling: when ``results_dir`` is full or
read-only they are kept under ``cache_dir/pending`` (or a
private per-user folder in the system's temporary folder) and the next run on that ``results_dir``
writes them.
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
import uuid
from dataclasses import asdict
from pathlib import Path

import torch

from tdabench.harness.core.data_paths import set_data_root
from tdabench.harness.core.logs import RESULT, silenced
from tdabench.harness.core.registry import METRICS
from tdabench.harness.core.settings import RunSettings, settings_of, typed_settings
from tdabench.harness.core.storage import (
    content_hash,
    exclusive_lock,
    recompute_caches,
    record_cache_misses,
    record_cache_reads,
)
from tdabench.harness.engine.cold_cost import cold_cost, uncounted
from tdabench.harness.engine.config import (
    ConfigError,
    UnsupportedPairingError,
    reproducible_device,
    resolve_names,
    subset_problems,
    validate_method_params,
    validate_pairing,
    validate_settings,
)
from tdabench.harness.engine.gt_from import (
    adopt_settings,
    from_problems,
    ground_truth_source,
    run_artifacts,
    without_null_gt_from,
)
from tdabench.harness.engine.interrupts import TimeLimitExceeded, UserInterrupt, time_limit, user_interrupts
from tdabench.harness.engine.ladder import apply_level
from tdabench.harness.engine.profiling import Profiler, warm_up
from tdabench.harness.engine.tuning import compute_validation_shard, tune, tuning_finds_a_setting
from tdabench.harness.engine.writing import complete_pending_writes, pending_records, write_result
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.harness.plugin.metric import (
    MetricRun,
    evaluate_metrics,
    metric_problems,
    needs_ground_truth,
    wants_token_scores,
)
from tdabench.harness.plugin.quality import (  # noqa: F401 - check_scores is imported from here too
    MAX_DEGENERATE_SHARE,
    DegenerateModelError,
    InvalidScoresError,
    check_scores,
    degenerate_model_message,
    degenerate_reason,
)
from tdabench.harness.plugin.space import space_problems
from tdabench.harness.plugin.training import num_params
from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.record_view import run_cost
from tdabench.harness.read.results import provenance, read_records
from tdabench.harness.read.tracking import log_run

#: config keys left out of the config hash: they do not change a run's numbers (``frontier`` picks parameters)
NON_DETERMINING = ("results_dir", "cache_dir", "data_root", "wandb", "limits", "hydra", "force", "sweep_name",
                   "frontier")


log = logging.getLogger(__name__)


def config_hash(cfg: RunSettings | dict) -> str:
    """The hash of the settings that determine a run's numbers. Settings added after records were
    first hashed (``metric``, ``loo``, ``mislabel``, ``removal``, ``tune``) count only where they change the
    run, so a run at their defaults keeps the hash of a record written before them."""
    s = settings_of(cfg)
    read_by = {"loo": "loo", "mislabel": "mislabel_auc", "removal": "removal"}  # setting: its metric
    unused = {k for k, m in read_by.items() if m not in s.metrics} | ({"metric"} if s.metrics == ["lds"] else set())
    unused |= {"tune"} if not s.tune.trials else set()
    return content_hash({k: v for k, v in _hashed(s.config).items() if k not in {*NON_DETERMINING, *unused}})


def study_key(cfg: RunSettings | dict) -> str:
    """The hash of the settings that define a tuned pairing's Optuna study: those of
    :func:`config_hash` with every ``tune`` setting but the trial count, the storage and the cap
    of the final choice (``select_cpu_s``: every cap chooses from the same study); the ``removal``
    settings, which tuning never reads, are left out (studies made before them continue)."""
    s = settings_of(cfg)
    hashed = _hashed({**s.config, "tune": asdict(s.tune)})
    kept = {k: v for k, v in hashed.items() if k not in NON_DETERMINING and k not in ("tune", "removal")}
    tune_cfg = {k: v for k, v in hashed["tune"].items() if k not in ("trials", "storage", "select_cpu_s")}
    return content_hash({**kept, "tune": tune_cfg})


def _hashed(cfg: dict) -> dict:
    """``cfg`` as the hashes see it: without ``gt.from`` where null and ``tune.sampler`` where ``tpe``
    (they came after records were first hashed: runs not using them keep those runs' hashes)."""
    cfg, tune = without_null_gt_from(cfg), cfg.get("tune")
    if isinstance(tune, dict) and tune.get("sampler") == "tpe":
        cfg = {**cfg, "tune": {k: v for k, v in tune.items() if k != "sampler"}}
    return cfg


def config_problems(cfg: dict, device_here: bool = True) -> tuple[type | None, type | None, list[str]]:
    """The task and method classes of ``cfg`` and every problem of its settings, task and method
    parameters, found without building anything or creating a file (the command line runs it
    before Hydra creates a folder, :func:`prepare` again before a run; ``device_here`` False when
    a launcher submits the run to another machine, where :func:`prepare` checks the device)."""
    s, problems = typed_settings(cfg.config if isinstance(cfg, RunSettings) else settings_of(cfg).config)
    problems += validate_settings(s, device_here) + metric_problems(s.config) + from_problems(s)
    set_data_root(s.data_root)
    task_cls, method_cls, more = resolve_names(s)
    problems += more
    if task_cls is not None:
        task_problems = task_cls.validate(s.task)
        problems += task_problems
        if task_cls.measures_lds and not task_problems:
            problems += subset_problems(s)
        if not task_cls.measures_lds and s.tune.trials:
            problems.append(f"tune.trials={s.tune.trials}: task {task_cls.name} measures cost only "
                            "and has no ground truth to tune on; use tune.trials=0")
    if method_cls is not None:
        more = validate_method_params(method_cls, s)
        if not more and s.tune.trials:  # the study starts from these settings
            more = space_problems(method_cls, s.task.get("n_train") or 1000, s.method_params, task_cls,
                                  s.tune.sampler)
        problems += more
    return task_cls, method_cls, problems


def prepare(cfg: RunSettings | dict):
    """Validate ``cfg`` and build the task and method objects (cheap). Raises ConfigError."""
    task_cls, method_cls, problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems)
    s = settings_of(cfg)
    missing = method_cls.available()
    if missing:  # a sweep records it as unsupported and goes on
        raise UnsupportedPairingError([missing])
    task = task_cls(s.task, seed=s.seed, cache_dir=s.cache_dir, device=s.device)
    task.token_scores_wanted = wants_token_scores(s.config)
    method = method_cls(**s.method_params)
    problems = validate_pairing(task, method)
    if problems and tuning_finds_a_setting(task, method_cls, s):
        log.info(f"{task.name} / {method.name}: the default setting is refused ({'; '.join(problems)}); "
                 "tuning goes on, since other settings of its search space pass (refused trials score -1)")
        problems = []
    if problems:
        raise UnsupportedPairingError(problems)
    return task, method


def record_unsupported(cfg: RunSettings | dict, exc: UnsupportedPairingError, group: str) -> dict:
    """In a sweep, an unsupported pairing is recorded (status ``unsupported``) and skipped."""
    s = settings_of(cfg)
    task, method = s.task_name, s.method_name
    record = RunRecord.new(run_id=f"{task}-{method}-{uuid.uuid4().hex[:8]}", task=task, method=method,
                        status="unsupported", message=" ".join(exc.problems), lds=None,
                        n_train=s.task.get("n_train"), n_query=s.task.get("n_query"), group=group,
                        config_hash=config_hash(s), config=s.config, **Profiler(s.device).fields(),
                        **provenance(s.device))
    write_result(record, None, Path(s.results_dir), s.cache_dir)
    log.log(RESULT, f"{record.task} / {record.method}: unsupported: {record.message}")
    return record.as_dict()


def _attribute(task, method, builder: GroundTruthBuilder, s: RunSettings, record: RunRecord,
               prof: Profiler) -> torch.Tensor:
    """The profiled phases of one run; fills ``record`` and returns the scores. The time limit
    covers the method's own phases (fit and score): the shared ground truth is never cut short.

    The shared machinery is warmed up first (untimed), so a phase's cost does not depend on what
    ran before it in the process. Time spent waiting for another run's ground-truth lock is
    recorded as ``gt_wait_s`` and left out of the ground_truth phase's time; ``gt_cached`` says
    whether the ground truth was read as computed and assembled by an earlier or another run."""
    warm_up(s.device)
    gt = None
    with prof.phase("prepare"):
        model = task.checkpoint()
        record.update(num_params=num_params(model), model_quality=task.evaluate(model),
                      trainings=method.trainings(task))
    if task.measures_lds:
        record.update(query_ids=task.query_ids())
        reason = degenerate_reason(record.model_quality)
        if reason:
            raise DegenerateModelError(degenerate_model_message(task.name, reason))
        if needs_ground_truth(s.config):
            with prof.phase("ground_truth"):
                waited = builder.wait_s
                gt = builder.build()
                prof.exclude(builder.wait_s - waited)
            record.update(gt_cached=not builder.produced, gt_models_together=getattr(builder, "models_together", None))
            if getattr(builder, "source", None):
                record.update(gt_source=builder.source)
            share = gt.degenerate_share
            record.update(gt_wait_s=round(builder.wait_s, 4), gt_degenerate_share=share)
            if share is not None and share > MAX_DEGENERATE_SHARE:
                raise DegenerateModelError(
                    f"{share:.0%} of the ground truth's {gt.degenerate.numel()} retrained models are no "
                    f"better than chance (at most {MAX_DEGENERATE_SHARE:.0%} allowed): subsets of "
                    f"gt.alpha={s.gt.alpha} x task.n_train={task.n_train} examples are too small "
                    "for the task's recipe; raise gt.alpha or task.n_train, or fix the recipe")
    else:
        record.update(quality_check="exempt: the task measures cost only")
        log.info(f"{task.name} measures cost only: its model is not checked against chance "
            "(it may be untrained on purpose)")
    count = s.cost.count
    separate = count == "separate"
    before = copy.deepcopy(method) if separate else None
    rng = torch.get_rng_state()
    with time_limit(s.limits.max_seconds):  # fit, score and their counting replay
        with record_cache_misses() as computed, record_cache_reads() as reads:
            with prof.phase("fit", count=count == "inline"), record_cache_reads() as fit_reads:
                method.fit(task, model)
            with prof.phase("score", count=count == "inline"):
                scores = method.score(task, model)
                if isinstance(scores, torch.Tensor) and scores.device.type != "cpu":
                    scores = scores.cpu()  # LDS, storage and the checks work on the host
                check_scores(scores, task)
        reads = {(path, what) for path, what in reads if path not in computed}
        recount = uncounted(reads) if separate and not s.limits.max_seconds else set()
        if reads:  # work an earlier run paid for: this run's fit and score seconds leave it out
            record.update(cached_work=sorted({what for _, what in reads}))
        if separate:
            record.update(count_replay_s=_count_replay(before, task, model, rng, computed | recount, prof))
        if reads:  # what the setting costs from scratch: its own cost and that of the work it read
            record.update(cold_cost=cold_cost(prof.fields(), {"fit": reads & fit_reads, "score": reads - fit_reads},
                                              recount))
    if task.measures_lds:
        run = MetricRun(task, method, model, scores, s.config, gt, builder.mode if gt is not None else None,
                        lambda: type(method)(**s.method_params))
        record.update(metrics=evaluate_metrics(run, record, prof.phase))
    return scores


def _count_replay(method, task, model, rng: torch.Tensor, computed: set[str], prof: Profiler) -> float:
    """Replay fit and score untimed, to count their FLOPs and tensor-level peak memory
    (``cost.count: separate``): ``method`` is a copy of the method as it was before the timed fit,
    the global random state is the one the timed fit started from, and caches the timed pass
    computed (``computed``) are computed again rather than read. The random state after the
    timed pass is restored afterwards. A replay that fails leaves the two phases uncounted.

    The replay is announced once; the messages of the work it repeats (the method's, the caches')
    were shown by the timed pass and are hidden, errors excepted. ``limits.max_seconds`` covers it
    (a TimeLimitExceeded passes through). Returns the replay's wall seconds."""
    started = time.perf_counter()
    log.info(f"{method.name}: untimed replay of fit and score, counting FLOPs and memory (cost.count=separate)")
    failure = None
    with torch.random.fork_rng(devices=[]), silenced():
        torch.set_rng_state(rng)
        try:
            with recompute_caches(computed):
                with prof.counting("fit"):
                    method.fit(task, model)
                with prof.counting("score"):
                    method.score(task, model)
        except TimeLimitExceeded:
            raise
        except Exception as exc:  # noqa: BLE001 - the timed run already succeeded
            failure = exc
    if failure is not None:
        log.warning(f"counting FLOPs and memory of {method.name} failed, the record has none "
                    f"for fit and score: {type(failure).__name__}: {failure}")
        for phase in ("fit", "score"):
            prof.flops.pop(phase, None)
            prof.peak_mem_mb[phase] = None
    return round(time.perf_counter() - started, 3)


def _summary(record: RunRecord) -> str:
    if not record.is_ok:
        return f"{record.status}: {record.message}"
    if record.lds is None:  # the peak of fit and score, as the leaderboard shows it (set-up is no method cost)
        t, peak = record.time_s, run_cost(record)["peak_mem_mb"]
        return f"cost only: fit {t['fit']:.1f} s, score {t['score']:.1f} s, peak {peak or 0:.0f} MiB"
    parts = [f"LDS {record.lds:.4f} [{record.lds_ci[0]:.3f}, {record.lds_ci[1]:.3f}]"]
    for name, m in record.metric_entries.items():  # every other metric the run computed
        if name != "lds":
            ok = m.is_ok and m.value is not None and m.ci
            parts.append(f"{name} {m.value:.4f} [{m.ci[0]:.3f}, {m.ci[1]:.3f}]" if ok else f"{name} {m.status}")
    return "; ".join(parts)


def set_threads(threads: int | None, device: str = "cpu") -> None:
    reproducible_device(device)  # on a GPU: deterministic kernels, no TF32 (nothing changes on the CPU)
    if threads:
        torch.set_num_threads(threads)


def _failure(exc: BaseException) -> str:
    """What a method's ``SystemExit`` or ``KeyboardInterrupt`` says, in one line."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the method's code called sys.exit()"
    return f"KeyboardInterrupt: raised by the method's own code ({exc or 'no message'})"


def execute(cfg: RunSettings | dict, group: str = "single") -> dict | None:
    """Run one pairing described by the resolved config ``cfg``; return its record.

    With ``gt.shard`` set, only that ground-truth shard is computed and None is returned. A
    pairing that already has an ``ok`` record for the same config hash in ``results_dir`` is
    skipped (its record is returned) unless ``force`` is set; the check and the computation hold
    a lock per pairing, so a concurrent identical run waits and then reports the same record.
    Tasks that measure cost only (``measures_lds = False``) skip the ground-truth and LDS phases.
    Ctrl-C raises :class:`UserInterrupt` (nothing is recorded; cached work is kept).
    With ``frontier.level`` set, the rung of the method's cost ladder is applied to the method's
    parameters (a config from :func:`harness.cli.compose` has it applied already, after
    refusing conflicts with explicit values); past the ladder's end ``LevelBeyondLadder`` is raised.
    """
    resolved = cfg.config if isinstance(cfg, RunSettings) else cfg
    s = adopt_settings(RunSettings.from_config(apply_level(resolved)))  # the settings of the whole run
    task, method = prepare(s)
    set_threads(s.threads, s.device)
    with user_interrupts():
        builder = ground_truth_source(task, s)
        shard, num_shards = s.gt.shard, s.gt.num_shards
        if shard is not None:
            if not task.measures_lds:
                raise ConfigError([f"task {task.name} measures cost only and has no ground truth; "
                                   "leave gt.shard null"])
            if needs_ground_truth(s.config):
                builder.compute_shard(shard, num_shards)
            if s.tune.trials:  # the tuner's share
                compute_validation_shard(task, s, shard)
            for name in s.metrics:
                METRICS.get(name)().compute_shard(task, s.config, shard, num_shards)
            log.info(f"ground truth shard {shard}/{num_shards} is cached")
            return None

        results_dir = Path(s.results_dir)
        chash = config_hash(s)
        complete_pending_writes(results_dir, s.cache_dir)
        with exclusive_lock(pairing_lock(s.cache_dir, results_dir, chash), f"{task.name} / {method.name}",
                            log.warning):
            if not s.force:
                pending = pending_records(results_dir, s.cache_dir)
                done = [r for r in read_records(results_dir) + pending if r.config_hash == chash and r.is_ok]
                if done:
                    log.log(RESULT, f"{task.name} / {method.name}: already done in {results_dir} "
                        f"(run {done[-1].run_id}: {_summary(done[-1])}); skipped. Use force=true to rerun")
                    return done[-1].as_dict()  # the record's JSON object, as a fresh run returns it
            return _run(task, method, builder, s, group, chash)


def pairing_lock(cache_dir: str | Path, results_dir: Path, chash: str) -> Path:
    """The lock file of the pairing ``chash`` (its config hash, which names its ground truth) written
    to ``results_dir``: in the results folder, which every run writing there shares whatever its
    cache folder; in the cache folder (one folder per results folder) only when the results folder
    cannot be written, where the result waits as pending anyway."""
    locks = Path(results_dir) / ".locks"
    try:
        locks.mkdir(parents=True, exist_ok=True)
    except OSError:
        locks = Path(cache_dir) / "locks" / content_hash(str(Path(results_dir).resolve()))
    return locks / f"{chash}.lock"


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: on a GPU, or on the CPU, where torch raises a
    RuntimeError from its allocator (``DefaultCPUAllocator: can't allocate memory``)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "DefaultCPUAllocator" in text)


def _run(task, method, builder: GroundTruthBuilder, s: RunSettings, group: str, chash: str) -> dict:
    """The run itself: fills its :class:`RunRecord`, writes it and returns its JSON object."""
    started = time.perf_counter()
    results_dir = Path(s.results_dir)
    run_id = f"{task.name}-{method.name}-{uuid.uuid4().hex[:8]}"
    prof = Profiler(s.device)
    record = RunRecord.new(
        run_id=run_id, task=task.name, method=method.name, status="ok", lds=None, lds_ci=None,
        n_train=task.n_train, n_query=task.n_query, gt_subsets=s.gt.subsets, gt_seeds=builder.seeds,
        gt_mode=builder.mode, group=group, split="test", config_hash=chash,
        gt_key=builder.dir.name if task.measures_lds else None, config=s.config)
    scores = None
    try:
        if s.tune.trials and not type(method).search_space:
            log.info(f"{method.name} has no search space: tune.trials={s.tune.trials} is ignored and "
                     "the run is untuned (no validation ground truth)")
        elif s.tune.trials:  # trials on validation; the record is the test run
            warm_up(s.device)  # start-up falls on no trial (the first is the default setting)
            tuned = tune(task, type(method), s, study_key(s))
            s = s.replace(method={**s.method, **tuned.params})
            method = type(method)(**s.method_params)
            record.update(tuned=tuned.info.as_dict(), config=s.config)
        scores = _attribute(task, method, builder, s, record, prof)
    except UserInterrupt:
        raise
    except DegenerateModelError as exc:
        record.update(status="degenerate_model", message=str(exc), failed_phase=prof.current)
    except TimeLimitExceeded as exc:
        record.update(status="timeout", message=str(exc), failed_phase=prof.current)
    except Exception as exc:  # recorded, and the sweep goes on
        if out_of_memory(exc):
            record.update(status="oom", message=f"{type(exc).__name__}: {exc}"[:2000], failed_phase=prof.current)
        else:
            record.update(status="error", message=f"{type(exc).__name__}: {exc}"[:2000],
                          failed_phase=prof.current, traceback=traceback.format_exc()[-4000:])
    except (SystemExit, KeyboardInterrupt) as exc:  # from the method's code, not from the user
        record.update(status="error", message=_failure(exc), failed_phase=prof.current,
                      traceback=traceback.format_exc()[-4000:])
    if not record.is_ok:  # no result: neither scores nor a (non-finite) LDS is kept
        scores = None
        record.update(lds=None, lds_ci=None)
    record.update(diagnostics=getattr(method, "diagnostics", None))
    record.update(prof.fields())
    record.update(provenance(s.device))
    if write_result(record, scores, results_dir, s.cache_dir):
        try:
            record.update(wandb_dir=log_run(record, asdict(s.wandb), results_dir, group,
                                            run_artifacts(record, s, results_dir, task, builder)))
        except Exception as exc:  # tracking must never lose a computed result
            log.warning(f"wandb logging failed ({type(exc).__name__}: {exc}); the record is in runs.jsonl")
    replay = record.count_replay_s
    summary = _summary(record)
    log.log(RESULT, f"{task.name} / {method.name}: {summary} ({time.perf_counter() - started:.1f} s"
                    + (f", {replay:.1f} s of it the counting replay)" if replay else ")"))
    return record.as_dict()
