"""How a run record reads: which ground truth it was scored on, which setting of its method it
ran, and what it cost. The leaderboard, the report and wandb tracking all read records through
these functions, so a row, a plot and a wandb run of the same record carry the same names.

* ``ground_truth_label``: task, n_train, subsets x seeds, alpha, observable, the regime of the
  retrained models where the task has one (text_neox's ``scratch`` or ``finetune``; ``from
  checkpoint`` with ``gt.from_checkpoint``) and the first six hex digits of the ground truth's
  content hash (``gt_key``), e.g. ``digits_mlp n=1000 100x3 alpha=0.5 loss #ee711b``. Records
  with different labels were scored against different retraining outcomes and are never ranked
  in one table.
* ``setting``: the method parameters whose values differ from the method's defaults, e.g.
  ``chains=2 draws=50``; empty for a run at the defaults; a tuned record's starts with
  ``tuned (N trials)``. Rows are keyed by the tuning procedure; the shown setting
  (``shown_setting``) also names the values tuning chose (the default's too, when it won), e.g.
  ``tuned (4 trials) damping=0.0312``. The defaults are those of the method class's signature,
  updated by the task's per-method defaults as the task sets them now (its
  ``conf/task`` YAML or its class's ``default_config``; for a task that is not installed, those in
  the record's config), including those a reference implementation shares with its native method
  (``Method.shared_task_defaults``). A record made before a task changed a default is therefore
  labelled by what differs from today's default. ``seed`` is never part of a setting (runs over
  method seeds are one row with a spread). For a method no longer registered (an old record of a
  removed plugin), the defaults are the most common value of each parameter among that method's
  records.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import NamedTuple

from tdabench.harness.read.record import RunRecord, TunedInfo

#: method config keys that never make a setting: the registry name and the method seed
NOT_A_SETTING = ("name", "seed")


def short_hash(gt_key: str | None) -> str:
    """First six hex digits of a ground-truth key ``<task>-<hash>``; '' for None."""
    return (gt_key or "").rsplit("-", 1)[-1][:6]


def ground_truth_prefix(rec: RunRecord) -> str:
    """The readable part of a record's ground-truth label (no hash). A field the record has (even
    None) wins over the config's value."""
    gt = (rec.config or {}).get("gt") or {}
    task, task_cfg = rec.task, rec.task_config
    n_train = rec.n_train if rec.has("n_train") else task_cfg.get("n_train")
    if rec.is_ok and not rec.gt_key and rec.lds is None:
        return f"{task} n={n_train} (cost only)"
    subsets = rec.gt_subsets if rec.has("gt_subsets") else gt.get("subsets")
    seeds = rec.gt_seeds if rec.has("gt_seeds") else gt.get("seeds")
    observable = task_cfg.get("observable", "loss")
    regime = [str(task_cfg["regime"])] if task_cfg.get("regime") else []  # e.g. text_neox: scratch, finetune
    regime += ["from checkpoint"] if gt.get("from_checkpoint") else []
    return " ".join([f"{task} n={n_train} {subsets}x{seeds} alpha={gt.get('alpha', 0.5):g} {observable}", *regime])


def ground_truth_label(rec: RunRecord) -> str:
    """Readable, unique name of the ground truth a record was scored on (see module docstring)."""
    prefix = ground_truth_prefix(rec)
    return f"{prefix} #{short_hash(rec.gt_key)}" if rec.gt_key else prefix


def method_params(rec: RunRecord) -> dict:
    """The record's method parameters (config ``method`` node) without name and seed."""
    return {k: v for k, v in rec.method_config.items() if k not in NOT_A_SETTING}


def signature_defaults(method: str) -> dict | None:
    """Parameter defaults of the registered method class ``method``; None when not registered."""
    from tdabench.harness.core.registry import METHODS, UnknownNameError

    try:
        cls = METHODS.get(method)
    except (UnknownNameError, ImportError):
        return None
    try:
        defaults = cls.defaults()
    except (AttributeError, TypeError):  # not a Method subclass, or a parameter without a default
        return None
    return {k: v for k, v in defaults.items() if k not in NOT_A_SETTING}


def common_values(records: list[RunRecord]) -> dict:
    """Per parameter, its most common value among ``records`` (ties: the value seen first)."""
    counts: dict[str, Counter] = {}
    for rec in records:
        for k, v in method_params(rec).items():
            counts.setdefault(k, Counter())[repr(v)] += 1
    out = {}
    for k, c in counts.items():
        top = c.most_common(1)[0][0]
        out[k] = next(method_params(r)[k] for r in records
                      if k in method_params(r) and repr(method_params(r)[k]) == top)
    return out


def method_defaults(method: str, records: list[RunRecord]) -> dict:
    """Defaults to compare ``method``'s records against: its class signature, or, when the class
    is not registered, the most common values among ``records`` (that method's records)."""
    found = signature_defaults(method)
    return found if found is not None else common_values(records)


def _same(a, b) -> bool:
    """Equal values, numbers compared as floats, and None, '' and empty lists taken as one 'unset'."""
    if a in (None, "", [], ()) and b in (None, "", [], ()):
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b))


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    return str(v)


@functools.lru_cache(maxsize=64)
def current_task_defaults(task: str | None) -> dict | None:
    """``method_defaults`` of task ``task`` as it is configured now (its YAML in conf/task, else
    its class's ``default_config``); None when the task is not installed."""
    from tdabench.harness.core.registry import CONF_DIR, TASKS, UnknownNameError

    if not task:
        return None
    path = CONF_DIR / "task" / f"{task}.yaml"
    if path.exists():
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    else:
        try:
            node = TASKS.get(task).default_config or {}
        except (UnknownNameError, ImportError):
            return None
    return dict(node.get("method_defaults") or {})


def task_method_defaults(rec: RunRecord) -> dict:
    """The task's defaults for the record's method: as the task sets them now (see the module
    docstring), else as the record's config held them; with the keys the method shares from
    another method's task defaults (a reference implementation reading its native method's) and
    the values of the run settings its defaults follow (``Method.follows``, e.g. magic's seeds
    follow ``gt.seeds``)."""
    method = rec.method
    by_method = current_task_defaults(rec.task)
    if by_method is None:
        by_method = rec.task_config.get("method_defaults") or {}
    out = {}
    from tdabench.harness.core.registry import METHODS, UnknownNameError

    try:
        cls = METHODS.get(method)
        shared, follows = cls.shared_task_defaults, cls.follows
    except (UnknownNameError, ImportError, AttributeError):
        shared, follows = {}, {}
    for key, path in follows.items():  # a default that is another setting of the run
        node = rec.config or {}
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            out[key] = node
    for source, keys in shared.items():
        out.update({k: v for k, v in (by_method.get(source) or {}).items() if k in keys})
    out.update(by_method.get(method) or {})
    return out


def tuned_label(tuned: TunedInfo | dict) -> str:
    """The setting of a tuned record: ``tuned (N trials)``, with the per-trial CPU cap and the cap
    of the final choice (the tuned frontier) if any."""
    tuned = tuned if isinstance(tuned, TunedInfo) else TunedInfo.from_dict(tuned)
    parts = [f"{tuned.trials} trials"]
    if tuned.max_cpu_s:
        parts.append(f"<= {tuned.max_cpu_s:g} CPU s per trial")
    if tuned.select_cpu_s:
        parts.append(f"chosen at <= {tuned.select_cpu_s:g} CPU s")
    return f"tuned ({', '.join(parts)})"


def setting(rec: RunRecord, defaults: dict) -> str:
    """``key=value`` pairs (sorted, space-separated) of the record's method parameters that differ
    from ``defaults`` updated by the task's ``method_defaults`` for this method
    (:func:`task_method_defaults`); '' at defaults. A tuned record's setting is its
    :func:`tuned_label` followed by the parameters outside its search space that differ (a rung
    of the cost ladder, e.g. ``tuned (16 trials) chains=2 draws=50``): the tuning procedure, which
    keys a leaderboard row, so that tuned runs over data seeds or sizes share a row label. The
    values it chose are added where a row is shown (:func:`shown_setting`)."""
    base = {**defaults, **task_method_defaults(rec)}
    tuned = rec.tuning
    searched = set((tuned.search_space if tuned else None) or {})
    differ = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(method_params(rec).items())
                      if k not in searched and (k not in base or not _same(v, base[k])))
    return " ".join(filter(None, [tuned_label(tuned) if tuned else "", differ]))


def shown_setting(key_setting: str, rec: RunRecord) -> str:
    """The setting a row shows: its key's (:func:`setting`) and, for a tuned record, every value
    tuning chose (``tuned.best_params``, as the run applied them; the default's too when it won)
    after the tuned label, e.g. ``tuned (16 trials) eps=0.0003 gamma=1234.5 chains=2 draws=50``."""
    tuned = rec.tuning
    label = tuned_label(tuned) if tuned else ""
    if not label or not key_setting.startswith(label):
        return key_setting
    params = method_params(rec)
    chosen = " ".join(f"{k}={_fmt(params.get(k, v))}" for k, v in sorted((tuned.best_params or {}).items()))
    return " ".join(filter(None, [label, chosen, key_setting[len(label):].strip()]))


class RowKey(NamedTuple):
    """What tells leaderboard rows apart: the ground truth's label, the task, the method, its
    setting and the folder (``sweep``, with several folders; else None)."""

    ground_truth: str
    task: str
    method: str
    setting: str
    sweep: str | None


def row_label(key: tuple) -> str:
    """A leaderboard row's name in pairwise tables and plots (``key``: ground truth, task, method,
    setting, sweep): method, [setting], @sweep."""
    _, _, method, setting_, sweep = key
    return method + (f" [{setting_}]" if setting_ else "") + (f" @{sweep}" if sweep else "")


def engineering(value) -> str:
    """A count (FLOPs) in engineering notation, three significant digits and an exponent that is a
    multiple of three: ``2.3e9``, ``776e6``, ``512``; '' for None or NaN."""
    if value is None or value != value:
        return ""
    if value == 0:
        return "0"
    exponent = 3 * math.floor(math.log10(abs(value)) / 3)
    mantissa = float(f"{value / 10 ** exponent:.3g}")
    if abs(mantissa) >= 1000:  # rounding carried into the next group
        mantissa, exponent = mantissa / 1000, exponent + 3
    return f"{mantissa:g}" + (f"e{exponent}" if exponent else "")


def record_setting(rec: RunRecord) -> str:
    """The setting of one record on its own as a row shows it (:func:`shown_setting`; defaults
    from its method's class signature)."""
    return shown_setting(setting(rec, method_defaults(rec.method, [rec])), rec)


def _phase_sum(d: dict | None, phases=("fit", "score")):
    vals = [d.get(p) for p in phases] if d else []
    vals = [v for v in vals if v is not None]
    return sum(vals) if vals else None


def run_cost(rec: RunRecord) -> dict:
    """What a record's setting costs from scratch: fit and score seconds, their sum, their CPU
    seconds (``cpu_s``), the larger of their peak memories (MiB) and, when recorded, their FLOPs
    (fit + score); None where the record has no such measurement. A run that read work an earlier
    run cached (``cached_work``) counts that work at what computing it cost (``cold_cost``,
    :mod:`harness.engine.cold_cost`), where that is known; ``warm_s`` is then its own fit + score
    seconds, the cache read."""
    cold = rec.cold_cost or {}

    def measure(name: str) -> dict:
        """Per phase: from scratch where known; else the run's own value, flagged by
        :func:`fit_from_cache` for seconds, unknown (None) for FLOPs, which nothing flags."""
        own, scratch = getattr(rec, name) or {}, cold.get(name) or {}
        unknown = {p for p in scratch if scratch[p] is None and name == "flops"}
        return {p: None if p in unknown else scratch[p] if scratch.get(p) is not None else own.get(p)
                for p in ("fit", "score") if p in own or p in scratch}

    t, m = measure("time_s"), measure("peak_mem_mb")
    own = rec.time_s or {}
    return {"fit_s": t.get("fit"), "score_s": t.get("score"),
            "total_s": round(sum(t.get(p) or 0 for p in ("fit", "score")), 3) if rec.time_s else None,
            "cpu_s": _phase_sum(measure("cpu_time_s")),
            "peak_mem_mb": max(m.get("fit") or 0, m.get("score") or 0) if rec.peak_mem_mb else None,
            "flops": None if None in (flops := measure("flops")).values() else _phase_sum(flops),
            "warm_s": round(sum(own.get(p) or 0 for p in ("fit", "score")), 3) if read_cached(rec) else None,
            "from_cache": fit_from_cache(rec)}


def read_cached(rec: RunRecord) -> bool:
    """Whether the run's fit or score read work cached by an earlier run (curvature factors,
    ensemble members) instead of computing it."""
    return bool((rec.diagnostics or {}).get("factors_from_cache") or rec.cached_work)


def fit_from_cache(rec: RunRecord) -> bool:
    """Whether the record's cost is partly a file read: it read cached work whose cost is not known
    (cached before costs were kept; a cost that is known is counted, see :func:`run_cost`)."""
    if not read_cached(rec):
        return False
    scratch = (rec.cold_cost or {}).get("time_s") or {}
    return not scratch or any(v is None for v in scratch.values())


def row_cost(rec: RunRecord, recs: list[RunRecord]) -> dict:
    """The cost a leaderboard row shows: that of its shown record ``rec`` (:func:`run_cost`),
    unless it is partly a file read (:func:`fit_from_cache`) and an ok record of the same row
    (``recs``, oldest first) with the same task and method settings has a from-scratch cost: then
    the newest such record's, with ``rec``'s own seconds as ``warm_s``. A rerun that read cached
    work never hides the cost of the run that computed it."""
    cost = run_cost(rec)
    if not fit_from_cache(rec):
        return cost
    same = (rec.task_config, method_params(rec))
    cold = [r for r in recs if r.is_ok and r.time_s and not fit_from_cache(r)
            and (r.task_config, method_params(r)) == same]
    if not cold:
        return cost
    return {**run_cost(cold[-1]), "warm_s": cost["warm_s"]}
