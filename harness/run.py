"""One run: config -> task -> ground truth -> method.fit -> method.score -> LDS -> record.

Every run, successful or not, appends one record to ``RESULTS_DIR/runs.jsonl`` and logs a wandb
run. Configuration problems are raised as :class:`ConfigError` before any expensive work; failures
during work are recorded with the phase they happened in and a status (``error``, ``oom``,
``timeout``), so a sweep goes on past them.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch

from harness.config import (ConfigError, UnsupportedPairingError, method_params, resolve_names, validate_method_params,
                            validate_pairing, validate_settings)
from harness.ground_truth import GroundTruthBuilder
from harness.lds import lds
from harness.statistics import noise_ceiling
from harness.profiling import Profiler
from harness.results import append_record, provenance, read_records
from harness.storage import content_hash, save_verified
from harness.tracking import log_run
from methods.gradients import num_params

#: config keys that do not change a run's numbers (left out of its config hash)
NON_DETERMINING = ("results_dir", "cache_dir", "wandb", "limits", "hydra", "force")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class TimeLimitExceeded(Exception):
    pass


@contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`TimeLimitExceeded` after ``seconds`` (main thread only; no-op otherwise)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise TimeLimitExceeded(f"the run exceeded limits.max_seconds={seconds}")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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
        log(f"[tdabench] {warning}")
        out["gt_warning"] = warning
    return out


def config_hash(cfg: dict) -> str:
    return content_hash({k: v for k, v in cfg.items() if k not in NON_DETERMINING})


def prepare(cfg: dict):
    """Validate ``cfg`` and build the task and method objects (cheap). Raises ConfigError."""
    problems = validate_settings(cfg)
    task_cls, method_cls, more = resolve_names(cfg)
    problems += more
    if task_cls is not None:
        problems += task_cls.validate(cfg["task"])
    if method_cls is not None:
        problems += validate_method_params(method_cls, cfg)
    if problems:
        raise ConfigError(problems)
    task = task_cls(cfg["task"], seed=cfg["seed"], cache_dir=cfg["cache_dir"], device=cfg["device"],
                    log=log)
    method = method_cls(**method_params(cfg))
    problems = validate_pairing(task, method)
    if problems:
        raise UnsupportedPairingError(problems)
    return task, method


def record_unsupported(cfg: dict, exc: UnsupportedPairingError, group: str) -> dict:
    """In a sweep, an unsupported pairing is recorded (status ``unsupported``) and skipped."""
    record = {"run_id": f"{cfg['task']['name']}-{cfg['method']['name']}-{uuid.uuid4().hex[:8]}",
              "task": cfg["task"]["name"], "method": cfg["method"]["name"], "status": "unsupported",
              "message": " ".join(exc.problems), "lds": None, "n_train": cfg["task"].get("n_train"),
              "n_query": cfg["task"].get("n_query"), "group": group, "config_hash": config_hash(cfg),
              "config": cfg, "time_s": {}, "peak_mem_mb": {}, **provenance(cfg["device"])}
    append_record(cfg["results_dir"], record)
    log(f"[tdabench] {record['task']} / {record['method']}: unsupported: {record['message']}")
    return record


def _attribute(task, method, builder: GroundTruthBuilder, cfg: dict, record: dict,
               prof: Profiler) -> torch.Tensor:
    """The profiled phases of one run; fills ``record`` and returns the scores. The time limit
    covers the method's own phases (fit and score): the shared ground truth is never cut short."""
    with prof.phase("prepare"):
        model = task.checkpoint()
        record["num_params"] = num_params(model)
        record["model_quality"] = task.evaluate(model)
        record["trainings"] = method.trainings(task)
    if task.measures_lds:
        with prof.phase("ground_truth"):
            record["gt_cached"] = (builder.dir / "ground_truth.pt").exists()
            gt = builder.build()
    with time_limit(cfg["limits"]["max_seconds"]):
        with prof.phase("fit"):
            method.fit(task, model)
        with prof.phase("score"):
            scores = method.score(task, model)
            check_scores(scores, task)
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
            log(f"[tdabench] {len(res.constant_outcome_queries)} queries have constant ground-truth "
                f"outcomes and are left out of the LDS: {res.constant_outcome_queries}")
    return scores


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


def execute(cfg: dict, group: str = "single") -> dict | None:
    """Run one pairing described by the resolved config ``cfg``; return its record.

    With ``gt.shard`` set, only that ground-truth shard is computed and None is returned. A
    pairing that already has an ``ok`` record for the same config hash in ``results_dir`` is
    skipped (its record is returned) unless ``force`` is set. Tasks that measure cost only
    (``measures_lds = False``) skip the ground-truth and LDS phases.
    """
    task, method = prepare(cfg)
    set_threads(cfg.get("threads"))
    builder = GroundTruthBuilder(task, cfg["gt"], cfg["cache_dir"], log)
    if cfg["gt"]["shard"] is not None:
        if not task.measures_lds:
            raise ConfigError([f"task {task.name} measures cost only and has no ground truth; "
                               "leave gt.shard null"])
        builder.compute_shard(cfg["gt"]["shard"], cfg["gt"]["num_shards"])
        log(f"[tdabench] ground truth shard {cfg['gt']['shard']}/{cfg['gt']['num_shards']} is cached")
        return None

    results_dir = Path(cfg["results_dir"])
    chash = config_hash(cfg)
    if not cfg.get("force", False):
        done = [r for r in read_records(results_dir)
                if r.get("config_hash") == chash and r.get("status") == "ok"]
        if done:
            log(f"[tdabench] {task.name} / {method.name}: already done in {results_dir} "
                f"(run {done[-1]['run_id']}: {_summary(done[-1])}); skipped. Use force=true to rerun")
            return done[-1]
    run_id = f"{task.name}-{method.name}-{uuid.uuid4().hex[:8]}"
    prof = Profiler(cfg["device"])
    record = {
        "run_id": run_id, "task": task.name, "method": method.name, "status": "ok",
        "lds": None, "lds_ci": None, "n_train": task.n_train, "n_query": task.n_query,
        "gt_subsets": cfg["gt"]["subsets"], "gt_seeds": builder.seeds, "gt_mode": builder.mode,
        "group": group,
        "config_hash": chash, "gt_key": builder.dir.name if task.measures_lds else None, "config": cfg,
    }
    scores = None
    try:
        scores = _attribute(task, method, builder, cfg, record, prof)
    except TimeLimitExceeded as exc:
        record.update(status="timeout", message=str(exc), failed_phase=prof.current)
    except (torch.OutOfMemoryError, MemoryError) as exc:
        record.update(status="oom", message=f"{type(exc).__name__}: {exc}"[:2000], failed_phase=prof.current)
    except Exception as exc:  # recorded, and the sweep goes on
        record.update(status="error", message=f"{type(exc).__name__}: {exc}"[:2000],
                      failed_phase=prof.current, traceback=traceback.format_exc()[-4000:])
    record["diagnostics"] = getattr(method, "diagnostics", None)
    record["time_s"] = prof.time_s
    record["peak_mem_mb"] = prof.peak_mem_mb
    record.update(provenance(cfg["device"]))
    if record["status"] == "ok":
        path = results_dir / "scores" / f"{run_id}.pt"
        save_verified({"scores": scores.detach().cpu(), "run_id": run_id, "config_hash": chash}, path)
        record["scores_file"] = str(path.relative_to(results_dir))
    append_record(results_dir, record)
    try:
        record["wandb_dir"] = log_run(record, cfg["wandb"], results_dir, group)
    except Exception as exc:  # tracking must never lose a computed result
        log(f"[tdabench] wandb logging failed ({type(exc).__name__}: {exc}); the record is in runs.jsonl")
    log(f"[tdabench] {task.name} / {method.name}: {_summary(record)}")
    return record
