"""One run: config -> task -> ground truth -> method.fit -> method.score -> LDS -> record.

Every run, successful or not, appends one record to ``RESULTS_DIR/runs.jsonl`` and logs a wandb
run. Configuration problems are raised as :class:`ConfigError` before any expensive work; failures
during work are recorded with the phase they happened in and a status (``error``, ``oom``,
``timeout``, ``degenerate_model``) and a message giving the cause, so a sweep goes on past them.
That includes ``SystemExit`` and ``KeyboardInterrupt`` raised by a method's own code; Ctrl-C from
the user (SIGINT) raises :class:`UserInterrupt` instead, which stops the sweep.

A reference model no better than chance stops the run before the ground truth (status
``degenerate_model``); tasks that measure cost only are exempt. An LDS that is not finite is never
``ok``. The "already done" check and the computation of a pairing hold a per-pairing lock, so two
identical sweeps compute each pairing once (the lock lives in the cache folder; a result kept aside
for a full ``results_dir`` counts as done). Scores and the record are written inside the error
handling: when ``results_dir`` is full or read-only they are kept under ``cache_dir/pending`` (or a
private per-user folder in the system's temporary folder) and the next run on that ``results_dir``
writes them.
"""

from __future__ import annotations

import copy
import logging
import math
import traceback
import uuid
from pathlib import Path

import torch

from tdabench.harness.core.data_paths import set_data_root
from tdabench.harness.core.storage import (
    content_hash,
    exclusive_lock,
    recompute_caches,
    record_cache_misses,
    record_cache_reads,
)
from tdabench.harness.engine.config import (
    ConfigError,
    UnsupportedPairingError,
    method_params,
    resolve_names,
    subset_problems,
    validate_method_params,
    validate_pairing,
    validate_settings,
)
from tdabench.harness.engine.ground_truth import GroundTruthBuilder
from tdabench.harness.engine.interrupts import TimeLimitExceeded, UserInterrupt, time_limit, user_interrupts
from tdabench.harness.engine.ladder import apply_level
from tdabench.harness.engine.profiling import Profiler, warm_up
from tdabench.harness.engine.quality import (
    MAX_DEGENERATE_SHARE,
    DegenerateModelError,
    degenerate_model_message,
    degenerate_reason,
)
from tdabench.harness.engine.training import num_params
from tdabench.harness.engine.writing import complete_pending_writes, pending_records, write_result
from tdabench.harness.read.lds import lds
from tdabench.harness.read.record import new_record
from tdabench.harness.read.results import provenance, read_records
from tdabench.harness.read.statistics import noise_ceiling
from tdabench.harness.read.tracking import log_run

#: config keys that do not change a run's numbers (left out of its config hash)
#: (``frontier`` only selects method parameters, which ``config.method`` holds as applied)
NON_DETERMINING = ("results_dir", "cache_dir", "data_root", "wandb", "limits", "hydra", "force", "sweep_name",
                   "frontier")


log = logging.getLogger(__name__)


class InvalidScoresError(ValueError):
    pass


class NonFiniteLDSError(ValueError):
    """The LDS came out NaN or infinite; the message gives the cause."""


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


def ceiling_fields(outcomes: torch.Tensor, lds_value: float, cfg: dict) -> dict:
    """Ground-truth reliability, LDS ceiling and normalized LDS, with a warning when the ground
    truth is too noisy to separate methods."""
    c = noise_ceiling(outcomes.numpy(), cfg["lds"]["bootstrap"], cfg["seed"])
    out = {"gt_reliability": c.reliability, "gt_reliability_ci": c.reliability_ci,
           "lds_ceiling": c.ceiling, "lds_ceiling_ci": c.ceiling_ci,
           "normalized_lds": lds_value / c.ceiling if c.ceiling else None}
    warning = c.message
    if c.ceiling is not None:
        lo, hi = c.ceiling_ci
        if c.ceiling < cfg["lds"]["min_ceiling"] or hi - lo > cfg["lds"]["max_ceiling_ci_width"]:
            warning = (f"the ground truth is noisy: LDS ceiling {c.ceiling:.3f} [{lo:.3f}, {hi:.3f}]; "
                       "differences between methods below that noise are not meaningful. Raise "
                       "gt.seeds (reliability) or gt.subsets / task.n_query (narrower interval)")
    if warning:
        log.warning(warning)
        out["gt_warning"] = warning
    return out


def _metric_names(cfg: dict) -> list[str]:
    names = cfg.get("metric", "lds")
    return [names] if isinstance(names, str) else list(names)


def config_hash(cfg: dict) -> str:
    """The hash of the settings that determine a run's numbers. Settings added after records were
    first hashed (``metric``, ``loo``, ``mislabel``, ``tune``) count only where they change the
    run, so a run at their defaults keeps the hash of a record written before them."""
    metrics = _metric_names(cfg)
    unused = {"metric"} if metrics == ["lds"] else set()
    unused |= {"loo"} if "loo" not in metrics else set()
    unused |= {"mislabel"} if "mislabel_auc" not in metrics else set()
    unused |= {"tune"} if not (cfg.get("tune") or {}).get("trials") else set()
    return content_hash({k: v for k, v in cfg.items() if k not in NON_DETERMINING and k not in unused})


def config_problems(cfg: dict) -> tuple[type | None, type | None, list[str]]:
    """The task and method classes of ``cfg`` and every problem of its settings, task and method
    parameters, found without building anything or creating a file (the command line runs it
    before Hydra creates a folder, :func:`prepare` again before a run)."""
    problems = validate_settings(cfg)
    set_data_root(cfg.get("data_root"))
    task_cls, method_cls, more = resolve_names(cfg)
    problems += more
    if task_cls is not None:
        task_problems = task_cls.validate(cfg["task"])
        problems += task_problems
        if task_cls.measures_lds and not task_problems:
            problems += subset_problems(cfg)
    if method_cls is not None:
        problems += validate_method_params(method_cls, cfg)
    return task_cls, method_cls, problems


def prepare(cfg: dict):
    """Validate ``cfg`` and build the task and method objects (cheap). Raises ConfigError."""
    task_cls, method_cls, problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems)
    missing = method_cls.available()
    if missing:  # a sweep records it as unsupported and goes on
        raise UnsupportedPairingError([missing])
    task = task_cls(cfg["task"], seed=cfg["seed"], cache_dir=cfg["cache_dir"], device=cfg["device"])
    method = method_cls(**method_params(cfg))
    problems = validate_pairing(task, method)
    if problems:
        raise UnsupportedPairingError(problems)
    return task, method


def record_unsupported(cfg: dict, exc: UnsupportedPairingError, group: str) -> dict:
    """In a sweep, an unsupported pairing is recorded (status ``unsupported``) and skipped."""
    record = new_record(**{"run_id": f"{cfg['task']['name']}-{cfg['method']['name']}-{uuid.uuid4().hex[:8]}",
              "task": cfg["task"]["name"], "method": cfg["method"]["name"], "status": "unsupported",
              "message": " ".join(exc.problems), "lds": None, "n_train": cfg["task"].get("n_train"),
              "n_query": cfg["task"].get("n_query"), "group": group, "config_hash": config_hash(cfg),
              "config": cfg, **Profiler(cfg["device"]).fields(), **provenance(cfg["device"])})
    write_result(record, None, Path(cfg["results_dir"]), cfg["cache_dir"])
    log.info(f"{record['task']} / {record['method']}: unsupported: {record['message']}")
    return record


def _attribute(task, method, builder: GroundTruthBuilder, cfg: dict, record: dict,
               prof: Profiler) -> torch.Tensor:
    """The profiled phases of one run; fills ``record`` and returns the scores. The time limit
    covers the method's own phases (fit and score): the shared ground truth is never cut short.

    The shared machinery is warmed up first (untimed), so a phase's cost does not depend on what
    ran before it in the process. Time spent waiting for another run's ground-truth lock is
    recorded as ``gt_wait_s`` and left out of the ground_truth phase's time; ``gt_cached`` says
    whether the ground truth was read as computed and assembled by an earlier or another run."""
    warm_up(cfg["device"])
    with prof.phase("prepare"):
        model = task.checkpoint()
        record["num_params"] = num_params(model)
        record["model_quality"] = task.evaluate(model)
        record["trainings"] = method.trainings(task)
    if task.measures_lds:
        reason = degenerate_reason(record["model_quality"])
        if reason:
            raise DegenerateModelError(degenerate_model_message(task.name, reason))
        with prof.phase("ground_truth"):
            waited = builder.wait_s
            gt = builder.build()
            prof.exclude(builder.wait_s - waited)
        record["gt_cached"] = not builder.produced
        record["gt_wait_s"] = round(builder.wait_s, 4)
        share = record["gt_degenerate_share"] = gt.degenerate_share
        if share is not None and share > MAX_DEGENERATE_SHARE:
            raise DegenerateModelError(
                f"{share:.0%} of the ground truth's {gt.degenerate.numel()} retrained models are no "
                f"better than chance (at most {MAX_DEGENERATE_SHARE:.0%} allowed): subsets of "
                f"gt.alpha={cfg['gt']['alpha']} x task.n_train={task.n_train} examples are too small "
                "for the task's recipe; raise gt.alpha or task.n_train, or fix the recipe")
    else:
        record["quality_check"] = "exempt: the task measures cost only"
        log.info(f"{task.name} measures cost only: its model is not checked against chance "
            "(it may be untrained on purpose)")
    count = cfg.get("cost", {}).get("count", "separate")
    separate = count == "separate"
    before = copy.deepcopy(method) if separate else None
    rng = torch.get_rng_state()
    with time_limit(cfg["limits"]["max_seconds"]), record_cache_misses() as computed, \
            record_cache_reads() as reads:
        with prof.phase("fit", count=count == "inline"):
            method.fit(task, model)
        with prof.phase("score", count=count == "inline"):
            scores = method.score(task, model)
            if isinstance(scores, torch.Tensor) and scores.device.type != "cpu":
                scores = scores.cpu()  # LDS, storage and the checks work on the host
            check_scores(scores, task)
    earlier = sorted({what for path, what in reads if path not in computed})
    if earlier:  # work an earlier run paid for: this run's fit and score seconds leave it out
        record["cached_work"] = earlier
    if separate:
        _count_replay(before, task, model, rng, computed, prof)
    if task.measures_lds:
        with prof.phase("lds"):
            res = lds(scores, gt.masks, gt.mean_outcomes, cfg["lds"]["bootstrap"], cfg["seed"])
            if builder.mode == "same_seed":  # deterministic retraining: no noise, ceiling 1
                record.update(gt_reliability=1.0, gt_reliability_ci=[1.0, 1.0], lds_ceiling=1.0,
                              lds_ceiling_ci=[1.0, 1.0], normalized_lds=res.lds)
            else:
                record.update(ceiling_fields(gt.outcomes, res.lds, cfg))
        record.update(lds=res.lds, lds_ci=list(res.ci),
                      lds_per_query=[None if v != v else round(float(v), 6) for v in res.per_query],
                      constant_outcome_queries=res.constant_outcome_queries,
                      constant_prediction_queries=res.constant_prediction_queries)
        if res.constant_outcome_queries:
            log.info(f"{len(res.constant_outcome_queries)} queries have constant ground-truth "
                f"outcomes and are left out of the LDS: {res.constant_outcome_queries}")
        if res.constant_prediction_queries:
            log.info(f"{method.name} predicts the same outcome for every subset on "
                f"{len(res.constant_prediction_queries)} queries; they count as LDS 0: "
                f"{res.constant_prediction_queries}")
        if not (math.isfinite(res.lds) and all(math.isfinite(v) for v in res.ci)):
            raise NonFiniteLDSError(
                f"the LDS is {res.lds} [{res.ci[0]}, {res.ci[1]}]: no query has both a varying "
                f"ground-truth outcome and a defined correlation ({len(res.constant_outcome_queries)} "
                f"of {task.n_query} queries have constant outcomes); raise task.n_query or gt.subsets")
    return scores


def _count_replay(method, task, model, rng: torch.Tensor, computed: set[str], prof: Profiler) -> None:
    """Replay fit and score untimed, to count their FLOPs and tensor-level peak memory
    (``cost.count: separate``): ``method`` is a copy of the method as it was before the timed fit,
    the global random state is the one the timed fit started from, and caches the timed pass
    computed (``computed``) are computed again rather than read. The random state after the
    timed pass is restored afterwards. A replay that fails leaves the two phases uncounted."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(rng)
        try:
            with recompute_caches(computed):
                with prof.counting("fit"):
                    method.fit(task, model)
                with prof.counting("score"):
                    method.score(task, model)
        except Exception as exc:  # noqa: BLE001 - the timed run already succeeded
            log.warning(f"counting FLOPs and memory of {method.name} failed, the record has none "
                        f"for fit and score: {type(exc).__name__}: {exc}")
            for phase in ("fit", "score"):
                prof.flops.pop(phase, None)
                prof.peak_mem_mb[phase] = None


def _summary(record: dict) -> str:
    if record["status"] != "ok":
        return f"{record['status']}: {record.get('message')}"
    if record["lds"] is None:
        t, m = record["time_s"], record["peak_mem_mb"]
        return f"cost only: fit {t['fit']:.1f} s, score {t['score']:.1f} s, peak {max(m.values()):.0f} MiB"
    return f"LDS {record['lds']:.4f} [{record['lds_ci'][0]:.3f}, {record['lds_ci'][1]:.3f}]"


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def _failure(exc: BaseException) -> str:
    """What a method's ``SystemExit`` or ``KeyboardInterrupt`` says, in one line."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the method's code called sys.exit()"
    return f"KeyboardInterrupt: raised by the method's own code ({exc or 'no message'})"


def execute(cfg: dict, group: str = "single") -> dict | None:
    """Run one pairing described by the resolved config ``cfg``; return its record.

    With ``gt.shard`` set, only that ground-truth shard is computed and None is returned. A
    pairing that already has an ``ok`` record for the same config hash in ``results_dir`` is
    skipped (its record is returned) unless ``force`` is set; the check and the computation hold
    a lock per pairing, so a concurrent identical run waits and then reports the same record.
    Tasks that measure cost only (``measures_lds = False``) skip the ground-truth and LDS phases.
    Ctrl-C raises :class:`UserInterrupt` (nothing is recorded; cached work is kept).
    With ``frontier.level`` set, the rung of the method's cost ladder is applied to
    ``cfg['method']`` (a config from :func:`harness.cli.compose` has it applied already, after
    refusing conflicts with explicit values); past the ladder's end ``LevelBeyondLadder`` is raised.
    """
    cfg = apply_level(cfg)
    task, method = prepare(cfg)
    set_threads(cfg.get("threads"))
    with user_interrupts():
        builder = GroundTruthBuilder(task, cfg["gt"], cfg["cache_dir"])
        if cfg["gt"]["shard"] is not None:
            if not task.measures_lds:
                raise ConfigError([f"task {task.name} measures cost only and has no ground truth; "
                                   "leave gt.shard null"])
            builder.compute_shard(cfg["gt"]["shard"], cfg["gt"]["num_shards"])
            log.info(f"ground truth shard {cfg['gt']['shard']}/{cfg['gt']['num_shards']} is cached")
            return None

        results_dir = Path(cfg["results_dir"])
        chash = config_hash(cfg)
        complete_pending_writes(results_dir, cfg["cache_dir"])
        with exclusive_lock(pairing_lock(cfg["cache_dir"], results_dir, chash), f"{task.name} / {method.name}",
                            log.warning):
            if not cfg.get("force", False):
                done = [r for r in read_records(results_dir) + pending_records(results_dir, cfg["cache_dir"])
                        if r.get("config_hash") == chash and r.get("status") == "ok"]
                if done:
                    log.info(f"{task.name} / {method.name}: already done in {results_dir} "
                        f"(run {done[-1]['run_id']}: {_summary(done[-1])}); skipped. Use force=true to rerun")
                    return done[-1]
            return _run(task, method, builder, cfg, group, chash)


def pairing_lock(cache_dir: str | Path, results_dir: Path, chash: str) -> Path:
    """The lock file of the pairing ``chash`` written to ``results_dir``: in the cache folder (where
    it is not deleted with the results' housekeeping), one folder per results folder."""
    return Path(cache_dir) / "locks" / content_hash(str(results_dir.resolve())) / f"{chash}.lock"


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: on a GPU, or on the CPU, where torch raises a
    RuntimeError from its allocator (``DefaultCPUAllocator: can't allocate memory``)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "DefaultCPUAllocator" in text)


def _run(task, method, builder: GroundTruthBuilder, cfg: dict, group: str, chash: str) -> dict:
    results_dir = Path(cfg["results_dir"])
    run_id = f"{task.name}-{method.name}-{uuid.uuid4().hex[:8]}"
    prof = Profiler(cfg["device"])
    record = new_record(**{
        "run_id": run_id, "task": task.name, "method": method.name, "status": "ok",
        "lds": None, "lds_ci": None, "n_train": task.n_train, "n_query": task.n_query,
        "gt_subsets": cfg["gt"]["subsets"], "gt_seeds": builder.seeds, "gt_mode": builder.mode,
        "group": group,
        "config_hash": chash, "gt_key": builder.dir.name if task.measures_lds else None, "config": cfg,
    })
    scores = None
    try:
        scores = _attribute(task, method, builder, cfg, record, prof)
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
    if record["status"] != "ok":  # no result: neither scores nor a (non-finite) LDS is kept
        scores = None
        record.update(lds=None, lds_ci=None)
    record["diagnostics"] = getattr(method, "diagnostics", None)
    record.update(prof.fields())
    record.update(provenance(cfg["device"]))
    if write_result(record, scores, results_dir, cfg["cache_dir"]):
        try:
            record["wandb_dir"] = log_run(record, cfg["wandb"], results_dir, group)
        except Exception as exc:  # tracking must never lose a computed result
            log.warning(f"wandb logging failed ({type(exc).__name__}: {exc}); the record is in runs.jsonl")
    log.info(f"{task.name} / {method.name}: {_summary(record)}")
    return record
