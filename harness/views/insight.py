"""The ``tdabench-insight`` command: four views (top, kernel, stagewise, tokens) of what a method
and the BIF see, as PNG files.

    tdabench-insight task=digits_mlp method=bif --out results/reference/insight/digits_mlp
    tdabench-insight --scores results/scores/<run_id>.pt --views top --out DIR
    tdabench-insight --run <run_id> results_dir=results --views top --out DIR

Positional arguments are Hydra overrides, composed as ``tdabench`` composes them.

``top`` (``top_examples.png`` or ``top_examples_q<Q>.png``): for each chosen query, its most
helpful training examples (most negative scores: up-weighting them lowers the query loss) and
its most harmful ones (most positive), with labels and scores. Images for vision tasks (inputs
of 64 values as 8x8, 3x32x32 as colour); highlighted text for language tasks, with the per-token
influence of the most helpful and most harmful example as a heat map over the query's tokens when
the scores are per token ([n_query, T, n_train], from ``bif`` on ``per_token`` tasks). Scores
come from ``--scores FILE`` (a ``RESULTS_DIR/scores/<run_id>.pt`` of a ``tdabench`` run) or
``--run RUN_ID`` (its scores file), or are computed now with the method of the overrides. A saved
file is drawn only over the data it was computed on: without overrides the run's settings come
from its record (``RESULTS_DIR/runs.jsonl``); overrides whose task, seed or method settings differ
from the run's are refused in one line (:mod:`harness.views.scores_source`). A side with no
example of its sign (every score negative: nothing raises the query's loss) says so instead of
showing the least helpful examples as harmful.

``kernel`` (``bif_kernel.png``): the BIF kernel of Adam et al. (2025), the correlation over SGLD
draws of the training losses of every pair of training examples ([n, n], by ``methods/bif.py``'s
sampler), shown sorted by class and embedded in 2-D by PCA and t-SNE (each example is its row of
the kernel; t-SNE uses the distance 1 - correlation), coloured by class (language tasks: by the
example's loss at the checkpoint).

``stagewise`` (``stagewise.png``): stagewise attribution (Lee et al. 2025), BIF scores of one
query at every snapshot of the reference run (``task.trajectory()``; more snapshots with
``task.trajectory_checkpoints=N``), for the examples with the largest influence at any stage and
those whose sign flips most strongly; crosses mark sign flips between consecutive snapshots and
stars each curve's peak.

``tokens`` (``token_agreement.png`` and ``token_agreement.json``): how far two methods' per-token
scores agree, e.g. the BIF's and EK-FAC's on the same queries of a language task. For every query
token, the Spearman correlation over training examples of the two methods' scores of that token
(``--scores`` and ``--compare``, both ``[n_query, T, n_train]``), against the same correlation of
their sequence scores (the mean over tokens): a histogram over all query tokens and, for the chosen
queries, the query text coloured by each token's agreement. The JSON file holds the summary
(mean, quantiles, per query) and the matrix of per-token correlations.

The views that sample (``kernel``, ``stagewise``, and ``top`` with ``method=bif``) use the task's
BIF settings with ``--chains`` x ``--draws`` (default 4 x 50: seconds per checkpoint on
``digits_mlp``). Runs on one thread unless ``threads=N`` is given.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from tdabench.harness.read.results import one_line_errors
from tdabench.harness.views.posterior import kernel_view, stagewise_view
from tdabench.harness.views.scores_source import (
    NEUTRAL_KEYS,
    ScoresMismatch,
    check_belongs,
    run_scores_file,
    same_queries,
    scores_record,
)
from tdabench.harness.views.token_agreement import token_agreement, token_agreement_view
from tdabench.harness.views.top_examples import top_examples_view

__all__ = ["main", "make_sampler", "run", "token_agreement"]

VIEWS = ("top", "kernel", "stagewise", "tokens")
#: the method capability the sampling views need (see ``Method.offers``)
LOSS_DRAWS = "training_loss_draws"


def sampler_name(overrides: list[str]) -> str:
    """The method the sampling views use: the one the overrides choose if it offers
    ``training_loss_draws``, else the first registered method (by name) that offers it."""
    from tdabench.harness.core.registry import METHODS

    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("method=")]
    if chosen and chosen[-1] in METHODS.names() and LOSS_DRAWS in METHODS.get(chosen[-1]).offers:
        return chosen[-1]
    offering = sorted(n for n in METHODS.names() if LOSS_DRAWS in METHODS.get(n).offers)
    if not offering:
        _fail(f"the kernel and stagewise views sample with a method that offers {LOSS_DRAWS} and none is "
              "registered; install one (bif is built in) or choose --views top,tokens")
    return offering[0]


def sampler_params(cfg: dict, name: str) -> dict:
    """The parameters of method ``name`` in the resolved config ``cfg``: the config's own when it
    chose ``name``, else the defaults the task sets for ``name`` (resolved as ``tdabench`` would
    compose ``method=name`` with the same task and seed)."""
    from omegaconf import OmegaConf

    from tdabench.harness.core.registry import METHODS
    from tdabench.harness.core.settings import settings_of
    from tdabench.harness.engine.compose import register_resolvers

    if cfg["method"]["name"] == name:
        return settings_of(cfg).method_params
    register_resolvers()
    node = {k: f"${{tdabench.default:{name},{k}}}" for k in METHODS.get(name).defaults()}
    root = OmegaConf.create({**{k: v for k, v in cfg.items() if k != "method"}, "method": node})
    return OmegaConf.to_container(root.method, resolve=True)


def make_sampler(cfg: dict, chains: int, draws: int):
    """The sampling views' method (:func:`sampler_name`) with the settings of ``cfg`` for it (its
    ``method`` node when ``cfg`` chose it, else the task's defaults), sampling ``chains`` x
    ``draws`` (the constructor parameters every method offering ``training_loss_draws`` has)."""
    from tdabench.harness.core.registry import METHODS

    name = sampler_name([f"method={cfg['method']['name']}"])
    params = sampler_params(cfg, name)
    params.update(chains=chains, draws=draws)
    return METHODS.get(name)(**params)


# ----- command line ----------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tdabench-insight", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. task=digits_mlp method=bif")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("--views", default="top,kernel,stagewise",
                   help=f"comma list of {', '.join(VIEWS)} (default: all but tokens)")
    p.add_argument("--queries", default="0,1,2", help="query indices for the top view")
    p.add_argument("--top", type=int, default=8, help="examples per side in the top view")
    p.add_argument("--scores", help="scores file RESULTS_DIR/scores/<run_id>.pt of a tdabench run instead of "
                   "computing them; without overrides the run's settings are taken from its record, with "
                   "overrides the file is refused unless they match the run's")
    p.add_argument("--run", help="RUN_ID of a run in results_dir (default: results): its scores file and "
                   "the settings of its record")
    p.add_argument("--compare", help="a second scores file for the tokens view (per-token scores "
                   "of another method on the same queries)")
    p.add_argument("--chains", type=int, default=4, help="SGLD chains of the sampling views")
    p.add_argument("--draws", type=int, default=50, help="SGLD draws per chain of the sampling views")
    p.add_argument("--kernel-examples", type=int, default=0,
                   help="training examples in the kernel (0: all)")
    p.add_argument("--stage-query", type=int, default=None,
                   help="query of the stagewise view (default: the first of --queries)")
    p.add_argument("--stage-top", type=int, default=6, help="examples in the stagewise view")
    return p.parse_args(argv)


def _fail(msg: str) -> None:
    print(f"tdabench-insight: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _keys(overrides: list[str]) -> set[str]:
    return {o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] for o in overrides}


def settings(args: argparse.Namespace) -> tuple[dict, dict | None]:
    """The resolved config the views use and the content of the ``--scores`` file (None without
    one). With ``--run`` or ``--scores`` and no overrides that change scores (:data:`NEUTRAL_KEYS`
    aside), the run's record gives the settings; with such overrides they are composed and the
    scores file must belong to them. Raises ScoresMismatch."""
    from tdabench.harness.engine.compose import compose
    from tdabench.harness.engine.run import config_hash

    given = [o for o in args.overrides if not _keys([o]) <= set(NEUTRAL_KEYS)]
    if not (args.run or args.scores):
        return compose(args.overrides), None
    neutral = compose([o for o in args.overrides if o not in given])
    record = None
    if args.run:
        if args.scores:
            raise ScoresMismatch("give --run RUN_ID or --scores FILE, not both")
        record, path = run_scores_file(args.run, neutral["results_dir"])
        args.scores = str(path)
    data, found = scores_record(args.scores, neutral["results_dir"])
    record = record or found
    if not given:
        if record is None or not isinstance(record.config, dict):
            raise ScoresMismatch(f"--scores {args.scores}: the record of its run {data.get('run_id')!r} is not in "
                                 f"{Path(args.scores).resolve().parent.parent / 'runs.jsonl'}, so its settings are "
                                 "unknown; give them as overrides (task=... seed=... method=...)")
        cfg = copy.deepcopy(record.config)
        cfg.update({k: neutral[k] for k in _keys(args.overrides) if k in neutral})
        return cfg, data
    cfg = compose(args.overrides)
    check_belongs(f"--scores {args.scores}", cfg, data, record, config_hash(cfg))
    return cfg, data


def checked(scores: torch.Tensor, task, what: str) -> torch.Tensor:
    """``scores`` when they fit ``task`` (shape, finite values); else one error line."""
    from tdabench.harness.engine.run import InvalidScoresError, check_scores

    try:
        check_scores(scores, task)
    except InvalidScoresError as exc:
        _fail(f"{what}: {exc}")
    return scores


def run(args: argparse.Namespace) -> list[Path]:
    """Produce the chosen views; returns the written files."""
    from tdabench.harness.engine.config import ConfigError
    from tdabench.harness.engine.run import prepare

    views = [v for v in args.views.split(",") if v]
    bad = [v for v in views if v not in VIEWS]
    if bad:
        _fail(f"--views {','.join(bad)}: choose from {', '.join(VIEWS)}")
    try:
        queries = [int(q) for q in args.queries.split(",") if q != ""]
    except ValueError:
        _fail(f"--queries {args.queries!r}: give comma-separated query indices, e.g. 0,1,2")
    try:
        cfg, scores = settings(args)
    except ScoresMismatch as exc:
        _fail(str(exc))
    torch.set_num_threads(cfg.get("threads") or 1)
    try:
        task, method = prepare(cfg)
    except ConfigError as exc:
        _fail("; ".join(exc.problems))
    if any(not 0 <= q < task.n_query for q in queries) or not queries:
        _fail(f"--queries {args.queries!r}: indices must lie in 0..{task.n_query - 1}")
    stage_q = queries[0] if args.stage_query is None else args.stage_query
    if not 0 <= stage_q < task.n_query:
        _fail(f"--stage-query {stage_q}: must lie in 0..{task.n_query - 1}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    model = None

    def make():
        return make_sampler(cfg, args.chains, args.draws)

    if "top" in views:
        if scores is not None:
            top_scores = checked(scores["scores"].float(), task, f"--scores {args.scores}")
        else:
            model = task.checkpoint()
            method = make() if LOSS_DRAWS in method.offers else method
            method.fit(task, model)
            top_scores = method.score(task, model).detach().float().cpu()
        written += top_examples_view(task, top_scores, queries, args.top, out)
        task.log(f"insight: top examples -> {', '.join(map(str, written))}")

    if "tokens" in views:
        if not (args.scores and args.compare):
            _fail("--views tokens compares two saved per-token score files: give --scores FILE "
                  "and --compare FILE (RESULTS_DIR/scores/<run_id>.pt of two runs on the same task)")
        try:
            other, other_record = scores_record(args.compare, cfg.get("results_dir"))
            same_queries(f"--compare {args.compare}", cfg, other_record)
        except ScoresMismatch as exc:
            _fail(str(exc))
        files = [scores, other]
        pair = [checked(f["scores"].float(), task, f"--{k} {p}")
                for f, k, p in zip(files, ("scores", "compare"), (args.scores, args.compare))]
        names = tuple(str(f.get("method") or Path(p).stem) for f, p in zip(files, (args.scores, args.compare)))
        try:
            written += token_agreement_view(task, pair[0], pair[1], names, queries, out)
        except ValueError as exc:
            _fail(str(exc))
        task.log(f"insight: per-token agreement -> {written[-2]}")

    if "kernel" in views:
        model = model if model is not None else task.checkpoint()
        written.append(kernel_view(task, make(), model, out, args.kernel_examples, cfg["seed"]))
        task.log(f"insight: BIF kernel -> {written[-1]}")
    if "stagewise" in views:
        written.append(stagewise_view(task, make, stage_q, args.stage_top, out))
        task.log(f"insight: stagewise attribution -> {written[-1]}")
    return written


@one_line_errors("tdabench-insight")
def main(argv: list[str] | None = None) -> None:
    import os

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    from tdabench.harness.core.logs import setup as setup_logging
    from tdabench.harness.core.logs import take_verbosity_flags

    verbosity, rest = take_verbosity_flags(sys.argv[1:] if argv is None else argv)
    setup_logging(verbosity)
    for path in run(parse_args(rest)):
        print(path)


if __name__ == "__main__":
    main()
